"""How a verdict on a delivered network is printed (``train``, ``verify``, ``trim``) and the
exit code it gives."""

from __future__ import annotations

import click

from hwbench.cli.options import DEFAULT_RUNTIME_NAME


def print_final(final: dict | None) -> int:
    """The verdict line of final.json's data (``hwbench.deploy.final``); its exit code (0 without
    one: nothing was measured on this machine)."""
    from hwbench.deploy.final import baseline_line, line

    if final is None:
        return 0
    click.echo(f"  {final['network']}: {line(final)}")
    extra = baseline_line(final)
    if extra:
        click.echo(f"  {extra}")
    return final["exit_code"]


def verdict_text(v: dict) -> str:
    """One line: target, measured, score, and the decision (or why there is none)."""
    pct = v["percentile"]
    m = v["measured"]
    rel = v["target"]["ratio"] is not None
    line = (f"target {pct} {v['target']['ratio']:g}x of dense = {v['target_ms']:.3f} ms"
            if rel else f"target {pct} {v['target_ms']:.3f} ms")
    pred = v.get("predicted")
    if pred:
        line += f" · predicted {pred[pct + '_ms']:.3f} ms"
    line += (f" · measured p50 {m['p50_ms']:.3f} / {pct} {m[pct + '_ms']:.3f} ms "
             f"({v['ratio_to_dense']['value']:.3f}x dense) -> ")
    if not v["valid"]:
        return line + "NO DECISION (" + v["reason"] + ")"
    return line + f"{v['verdict']} ({v['verdict_message']})"


def on_runtime(res: dict) -> str:
    """The words ``on onnxruntime 1.x`` for a result measured on a runtime other than eager."""
    rec = res.get("runtime") or {}
    if rec.get("runtime", DEFAULT_RUNTIME_NAME) == DEFAULT_RUNTIME_NAME:
        return ""
    return f" on {rec['runtime']} {rec.get('runtime_version', '')}".rstrip()


def trim_verdict(t: dict) -> str:
    return (f"{t['measured_ms']:.3f} ms vs target {t['target_ms']:.3f} ms "
            f"({100 * t['error']:+.1f}% in {t['target']['decided_on']})")


def trim_moves(t: dict) -> str:
    """What trimming changed: channels switched off, or always-off ones restored."""
    if t.get("n_restored"):
        return f"{t['n_restored']} of {t['restore_candidates']} always-off channels restored"
    return f"{t['n_off']} of {t['candidates']} channels switched off"
