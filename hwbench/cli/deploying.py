"""Commands on a trained network: ``verify``, ``trim``, ``export``, ``compare``."""

from __future__ import annotations

import json
import os
import sys

import click

from hwbench.cli.app import cli
from hwbench.cli.options import (
    CHECKER_NAME,
    GRAPH_RUNTIME_NAMES,
    device_option,
    json_option,
    runtime_option,
)
from hwbench.cli.verdicts import on_runtime, print_final, trim_moves, trim_verdict, verdict_text
from hwbench.deploy.verdict import EXIT_CODES, exit_help


@cli.command(epilog=exit_help((0, 4, 5, 2)))
@click.option("--pattern", "pattern_path", required=True, type=click.Path(dir_okay=False),
              help="The learned pattern (models/<run>.json).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="The run's checkpoint.pt; without it the pattern is realised on an "
                   "untrained network (same shapes, same gate statistics).")
@click.option("--target-latency", required=True,
              help="e.g. 5ms, 0.005s, 500us, or 0.7x (of the dense network measured alongside).")
@device_option()
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]), help="Percentile the target bounds.")
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False),
              help="Profile for the prediction. [default: the matching one in profiles/]")
@click.option("--max-time", "max_time_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of measuring at most.")
@click.option("--allow-foreign-profile", "allow_foreign", is_flag=True,
              help="Accept a --profile of another device (its prediction is then not about "
                   "this one).")
@runtime_option("What runs the network: the compact engine (eager) or the graph ONNX Runtime / "
                   "OpenVINO compiled (CPU, fp32); the profile must be of the same runtime.")
@json_option()
def verify(pattern_path, checkpoint, target_latency, device, percentile, profile_path,
           max_time_s, allow_foreign, runtime, as_json) -> None:
    """Measure a learned network on this device: target vs predicted vs measured. It lands when
    the measured latency is within [0.90, 1.00] x the target: far under it is UNDERSHOT.
    """
    from hwbench.deploy.verify import run_verify
    from hwbench.engine.runtimes.deployment import deploy_on
    from hwbench.pattern.gate_pattern import load_pattern
    from hwbench.pick.goal import measuring_goal

    on = deploy_on(device, runtime)
    pattern = load_pattern(pattern_path)
    goal = measuring_goal(target_latency, on, pattern.arch, pattern.stem, pattern.input_size,
                          percentile, profile_path, allow_foreign)
    res = run_verify(pattern_path, goal, checkpoint, max_time_s)
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        on = on_runtime(res)
        click.echo(f"{res['device']} ({res['mode']} {'mode' + on if on else 'engine'}, batch 1, "
                   f"{res['inputs']['n']} {res['inputs']['source']} images): {verdict_text(res)}")
        click.echo(f"gated/dense: latency {res['latency_ratio_p50']:.3f} (p50) vs MACs "
                   f"{res['macs_ratio']:.3f}; {res['dynamic_share']:.0%} of the gated channels "
                   f"are data-dependent; {'plan' if on else 'engine plan'} "
                   f"{','.join(res['plan'])}")
        if res.get("profile_stale"):
            click.echo(res["profile_stale"]["note"])
        if res["advice"]:
            click.echo(res["advice"])
    sys.exit(EXIT_CODES[res["verdict"]])


@cli.command(name="export")
@click.argument("source", metavar="RUN_OR_CHECKPOINT", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for model.onnx / model.pt and model.json (created; an export "
                   "already there is replaced).")
@click.option("--format", "fmt", default="onnx", show_default=True,
              type=click.Choice(["onnx", "torchscript"]),
              help="onnx: ONNX opset 17, checked with ONNX Runtime (pip install "
                   "'hwbench[onnx]'); torchscript: torch.jit.script, checked with "
                   "torch.jit.load.")
@click.option("--pattern", "pattern_path", default=None, type=click.Path(dir_okay=False),
              help="The gate pattern to deploy. [default: the run's pattern.json; none: the "
                   "dense stream]")
@click.option("--images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Test images of the run's data set the equality check runs.")
@click.option("--check-on", "check_on", default=CHECKER_NAME, show_default=True,
              help=f"Comma-separated runtimes the ONNX file is checked on: "
                   f"{', '.join(GRAPH_RUNTIME_NAMES)} (each needs its extra: pip install "
                   "'hwbench[onnx,openvino]').")
@json_option("Print model.json's contents.")
def export_cmd(source, out, fmt, pattern_path, images, check_on, as_json) -> None:
    """Export a trained run (its folder or checkpoint.pt; RUN/deployed for the deployed
    network), or a pattern file realised on an untrained network, for a runtime: always-off
    channels removed, BN folded, dynamic channels gated as in the static engine. Written only
    if, loaded back, it equals the compact engine within 1e-4 (fp32) on real test images
    (exit 1 and nothing written if not)."""
    from hwbench.deploy.export import export
    from hwbench.nets.gate import parse_gate

    runtimes = tuple(r.strip() for r in check_on.split(",") if r.strip()) \
        if fmt == "onnx" or check_on != CHECKER_NAME else None
    res = export(source, out, fmt, pattern_path, images, runtimes)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    chk, macs = res["check"], res["macs"]
    rt = chk["runtime"]
    what = "dense stream" if res["mode"] == "dense" else \
        f"static engine's network, {parse_gate(res['gate']).text} gates"
    click.echo(f"exported {res['arch']}/{res['stem']} {res['input_size']} px ({what}) as {fmt}: "
               f"{res['written']['model']}")
    click.echo(f"  equal to the compact engine ({res['mode']} mode, fp32): max relative error "
               f"{chk['max_rel_err']:.2e} <= {chk['tolerance']:g} on {chk['images']['n']} "
               f"{chk['images']['source']} images ({rt['name']} {rt['version']})")
    for other in chk.get("on_runtimes", [])[1:]:
        click.echo(f"  and on {other['runtime']['name']} {other['runtime']['version']}: max "
                   f"relative error {other['max_rel_err']:.2e}")
    click.echo(f"  MACs per image: dense {macs['dense']:,}" + (
        f", pattern {macs['pattern']:,.0f} (ratio {macs['ratio']:.3f})" if "pattern" in macs
        else "") + f"; {res['written']['metadata']}")


@cli.command(epilog=exit_help((0, 4, 5, 6, 2)))
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--target-latency", required=True,
              help="5ms, 500us, or 0.6x (of the dense network measured alongside).")
@device_option("This machine's device to measure on: cpu, cuda or cuda:N.")
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False),
              help="This device's profile. [default: the matching one in profiles/]")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]), help="Percentile the target bounds.")
@click.option("--tolerance", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.10, show_default=True,
              help="Land within target x [1 - tolerance, 1], confirmed by repeated "
                   "measurements (the verdict's band too).")
@click.option("--max-time", "max_time_s", type=click.FloatRange(min=0.1), default=6.0,
              show_default=True, help="Seconds of timing per candidate.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Trimmed run folder. [default: RUN_DIR/trim-<target>]")
@click.option("--knn/--no-knn", default=True, show_default=True,
              help="kNN top-1 of the trimmed network.")
@runtime_option("What runs the network while it is measured: the compact engine (eager) or "
                   "the graph ONNX Runtime / OpenVINO compiled (CPU, fp32); the profile is that "
                   "runtime's.")
def trim(run_dir, target_latency, device, profile_path, percentile, tolerance, max_time_s, out,
         knn, runtime) -> None:
    """Switch off a trained network's least-used channels, or switch always-off ones back on,
    until its measured latency on this device lands in [1 - tolerance, 1] x the target
    (hwbench.deploy.trim); writes RUN/final.json and exits with its verdict's code.
    """
    from hwbench.deploy.pipeline import trim_run
    from hwbench.engine.runtimes.deployment import deploy_on
    from hwbench.pick.goal import trim_goal

    goal = trim_goal(run_dir, target_latency, deploy_on(device, runtime), percentile,
                     profile_path)
    s = trim_run(run_dir, goal, tolerance, max_time_s, out=out, knn=knn, say=click.echo)
    click.echo(f"trimmed: {trim_moves(s)}; measured anew{on_runtime(s)}: "
               f"{trim_verdict(s)}; MACs ratio {s['macs_ratio']:.3f}")
    if not s["search_hit"]:
        click.echo(f"  the search could not land: {s['search_reason']}")
    click.echo(f"  written to {s['dir']} (checkpoint.pt, pattern.json, trim.json, verify.json) "
               "and final.json in the run")
    sys.exit(print_final(s["delivered"]))


@cli.command(epilog="\b\nExit codes:\n  0  every row written (each row carries its own verdict)\n"
                     "  2  a usage error (one line, before any work)")
@click.option("--targets", default="0.45x,0.6x,0.75x", show_default=True,
              help="Latency targets, ratios of the dense latency measured alongside.")
@click.option("--methods", default="thin,channel,width,pruned", show_default=True,
              help="Some of thin, channel, width, pruned.")
@click.option("--dataset", default="mnist5k", show_default=True)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--time-budget", default="10min", show_default=True,
              help="Wall-clock training budget of every network (0: use --epochs).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of every network, with --time-budget 0.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option(None)
@runtime_option("The runtime every network is measured on (this machine's profile of it).")
@click.option("--out", default="results/compare_mnist5k_cpu.json", show_default=True,
              help="The results file (JSON, rewritten after every row); the figure goes beside "
                   "it (.png).")
@click.option("--work-dir", default=None,
              help="Where the training runs go. [default: <out>_runs]")
@click.option("--resume", is_flag=True,
              help="Keep the rows of --out written with the same settings and skip them.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--n-synthetic", type=click.IntRange(min=8), default=512, hidden=True)
def compare(targets, methods, dataset, arch, time_budget, epochs, seed, device, runtime, out,
            work_dir, resume, batch_size, max_steps_per_epoch, n_synthetic) -> None:
    """At equal measured latency, which network is worth deploying: a thinner dense network,
    channel or width gates, or a structurally pruned dense network (Torch-Pruning)? One network
    per target and method, same data, seed and budget, each landed in the band by its own path,
    measured on real test images, with its kNN top-1."""
    from hwbench.data import info
    from hwbench.deploy.compare import CompareConfig, check_compare, run_compare
    from hwbench.pick.goal import locate, parse_goals
    from hwbench.report.figures import compare_figure
    from hwbench.units import parse_wall_time

    budget = None if str(time_budget).strip() in ("0", "none") else \
        parse_wall_time(time_budget, "--time-budget")
    cc = CompareConfig(targets=_split(targets), methods=_split(methods), dataset=dataset,
                       arch=arch, time_budget_s=budget, epochs=epochs, seed=seed, device=device,
                       runtime=runtime, out=out, work_dir=work_dir, resume=resume,
                       batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch,
                       n_synthetic=n_synthetic, command=" ".join(["hwbench", *sys.argv[2:]])
                       if sys.argv[1:2] == ["compare"] else None)
    goals = parse_goals(cc.targets, device, cc.percentile, runtime, one_per_device=False)
    check_compare(cc, goals)
    meta = info(dataset)  # every target on this machine's profile of the runtime
    goals = locate(goals, arch, meta.stem, meta.input_size, quick=True, say=click.echo)
    results = run_compare(cc, goals, say=click.echo)
    png = compare_figure(results["rows"], os.path.splitext(out)[0] + ".png")
    click.echo(f"written {out}" + (f" and {png}" if png else ""))


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in str(text).split(",") if t.strip())
