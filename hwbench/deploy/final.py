"""``RUN/final.json``: what a latency-target run delivered, and the verdict on it.

Written at the end of ``hwbench train --target-latency`` (when the target device is this
machine) and of ``hwbench trim``: the delivered network (``trim-<target>`` or ``deployed``), the
verdict (``hwbench.deploy.verdict``) and its exit code, the target and the band, the measurement the
verdict was decided on (``verify.json`` of that network) and the kNN top-1 beside it: the gated
stream the engine timed, the dense stream, and the randomly initialised network's (the floor),
all by one protocol on one test split. ``baseline``: with ``--baseline thin``, the thinner dense
network landed on the same target in the same run (``hwbench.deploy.baseline``), else null. The CLI
prints ``line(final)`` (and ``baseline_line``) and exits with ``exit_code``; it recomputes
nothing.
"""

from __future__ import annotations

from pathlib import Path

from hwbench.deploy.verdict import MET, verdict
from hwbench.engine.runtimes.registry import of
from hwbench.io import atomic_write_json
from hwbench.provenance import source_commit

SCHEMA = "hwbench/final@1"


def final_record(network: str, ver: dict, band: tuple[float, float], knn: dict,
                 random_init: float | None, protocol: str | None) -> dict:
    """The final.json object for ``network`` (its name in the run folder) measured as ``ver``
    (a ``verify.json`` object: score, valid, target, ratio_to_dense, measured, runtime).
    ``knn``: its kNN top-1 (``knn_top1_gated``, ``knn_top1_dense``, ``knn_test_n``; empty when
    not evaluated); ``random_init``: the randomly initialised network's gated kNN top-1 (None
    when the run did not evaluate it: DEGRADED is then not judged)."""
    target = ver["target"]
    pct = target["percentile"]
    gated = knn.get("knn_top1_gated")
    v = verdict(ver["score"], ver["valid"], band, gated, random_init)
    return {"schema": SCHEMA, "network": network, "verdict": v.name, "exit_code": v.exit_code,
            "message": v.message,
            "target": {"percentile": pct, "ratio": target["ratio"], "ms": target["ms"]},
            "band": list(band),
            "measured": {"ratio": ver["ratio_to_dense"]["value"],
                         "ms": ver["measured"][f"{pct}_ms"],
                         "runtime": of(ver.get("runtime") or {}),
                         "valid": ver["valid"]},
            "knn_top1": {"gated": gated, "dense_stream": knn.get("knn_top1_dense"),
                         "random_init": random_init, "protocol": protocol,
                         "n_test": knn.get("knn_test_n")},
            "baseline": None, "commit": source_commit()}


def write_final(run_dir: str | Path, record: dict) -> Path:
    return atomic_write_json(Path(run_dir) / "final.json", record)


def line(final: dict) -> str:
    """One line: the verdict, the measured latency beside the band, the accuracy beside it:
    ``MET: p90 0.65x dense (band 0.60-0.67x) · gated kNN 88.0 % (dense stream 91.3 %, random
    init 48.5 %)``."""
    t, m, (lo, hi) = final["target"], final["measured"], final["band"]
    if t["ratio"] is not None:
        got = f"{m['ratio']:.3f}x dense"
        band = f"band {lo * t['ratio']:.3f}-{hi * t['ratio']:.3f}x"
    else:
        got = f"{m['ms']:.3f} ms"
        band = f"band {lo * t['ms']:.3f}-{hi * t['ms']:.3f} ms"
    text = f"{final['verdict']}: {t['percentile']} {got} ({band})"
    if final["verdict"] != MET:
        text += f"; {final['message']}"
    k = final["knn_top1"]
    if k["gated"] is None:
        return text + " · gated kNN not evaluated"
    others = [f"{name} {k[key]:.1f} %" for name, key in (("dense stream", "dense_stream"),
                                                         ("random init", "random_init"))
              if k[key] is not None]
    return text + f" · gated kNN {k['gated']:.1f} %" + (f" ({', '.join(others)})" if others
                                                         else "")


def baseline_line(final: dict) -> str | None:
    """One line on the baseline beside the delivered network, or None without one:
    ``thin baseline (width x 0.62): p90 0.655x dense, MET · kNN 93.0 % (gated 88.0 %)``."""
    b = final.get("baseline")
    if not b:
        return None
    m, t = b["measured"], final["target"]
    got = f"{m['ratio']:.3f}x dense" if t["ratio"] is not None else f"{m['ms']:.3f} ms"
    knn = "kNN not evaluated" if b.get("knn_top1") is None else f"kNN {b['knn_top1']:.1f} %"
    gated = final["knn_top1"]["gated"]
    return (f"{b['method']} baseline (width x {b['width_mult']:g}): {t['percentile']} {got}, "
            f"{b['verdict']} · {knn}" + ("" if gated is None else f" (gated {gated:.1f} %)"))


GUARD_GAP = 5.0  # kNN points the delivered gated network may trail its own dense stream by


def guard(final: dict | None, gap: float = GUARD_GAP) -> str | None:
    """Why the delivered network is not worth deploying, for CI (None: it is): no final.json,
    DEGRADED, no gated or dense-stream kNN, or a gated kNN top-1 more than ``gap`` points
    under the dense stream's. The latency verdict is left out: machines are noisy."""
    if final is None:
        return "no final.json: the run delivered nothing"
    if final["verdict"] == "DEGRADED":
        return f"DEGRADED: {final['message']}"
    k = final["knn_top1"]
    if k.get("gated") is None or k.get("dense_stream") is None:
        return "final.json has no gated or dense-stream kNN top-1 to judge"
    if k["gated"] < k["dense_stream"] - gap:
        return (f"gated kNN top-1 {k['gated']:.1f} % is more than {gap:g} points under the "
                f"dense stream's {k['dense_stream']:.1f} %")
    return None
