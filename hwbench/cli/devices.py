"""Commands about a device and its patterns, before any training: ``env``, ``flops``,
``speedup``, ``profile``, ``predict``, ``pick``."""

from __future__ import annotations

import json
import os
import sys

import click

from hwbench import __version__
from hwbench.cli.app import cli
from hwbench.cli.options import (
    PROFILE_RUNTIME_HELP,
    device_option,
    execution_option,
    json_option,
    runtime_option,
)
from hwbench.errors import UsageError


@cli.command()
@click.option("--arch", default=None, help="Network: resnet18, resnet34, resnet50. "
              "[default: resnet18, or the pattern's]")
@click.option("--stem", default=None, type=click.Choice(["cifar", "imagenet"]),
              help="cifar: 3x3/1 conv, padding 2, no max-pool; imagenet: 7x7/2 conv + 3x3/2 "
                   "max-pool. [default: cifar, or the pattern's]")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Square input side in pixels. [default: 32, or the pattern's]")
@click.option("--pattern", "pattern_path", type=click.Path(dir_okay=False), default=None,
              help="A gate-pattern JSON file (models/*.json): report its expected gated MACs.")
@click.option("--t-d", "t_d", type=float, default=None,
              help="Target MACs ratio in (0, 1]: report the prior pattern synthesised for it.")
@click.option("--gate", default="channel", show_default=True,
              help="With --t-d: the gate kind of the prior, channel or width:G (each input keeps "
                   "a prefix of its block's channels, in steps of G).")
@click.option("--save-pattern", default=None, type=click.Path(dir_okay=False),
              help="With --t-d: write the synthesised prior pattern file here (for speedup, "
                   "profile --patterns, predict).")
@click.option("--tile", type=int, default=1, show_default=True,
              help="With --t-d: kept channels in multiples of N (tensor cores: 8 or 16).")
@json_option("Print one JSON object instead of a table.")
def flops(arch, stem, input_size, pattern_path, t_d, gate, save_pattern, tile, as_json) -> None:
    """Exact MACs of the dense network, and of a gate pattern (--pattern or --t-d).

    Counted as in the paper: every conv (stem, blocks, downsample) plus, in the gated network,
    the gates' 1x1 convs; BN, ReLU, pooling and the head are not counted. A width-gated
    pattern's MACs are exact from its per-layer histograms of kept widths.
    """
    from hwbench.io import check_writable
    from hwbench.nets.gate import parse_gate
    from hwbench.nets.geometry import arch_spec
    from hwbench.pattern.gate_pattern import load_pattern, synthesise
    from hwbench.pattern.macs import dense_report, pattern_report

    gate_spec = parse_gate(gate)
    if pattern_path is not None and t_d is not None:
        raise UsageError("--pattern and --t-d are mutually exclusive")
    if save_pattern is not None:
        if t_d is None:
            raise UsageError("--save-pattern writes the prior of --t-d: give --t-d")
        check_writable(save_pattern)
    if pattern_path is not None:
        pattern = load_pattern(pattern_path)
        given = {"--arch": (arch, pattern.arch), "--stem": (stem, pattern.stem),
                 "--input-size": (input_size, pattern.input_size)}
        for opt, (value, own) in given.items():
            if value is not None and value != own:
                raise UsageError(f"{opt} {value} does not match the pattern's {own} "
                                 f"({pattern_path})")
        report = pattern_report(pattern)
    else:
        arch, stem = arch or "resnet18", stem or "cifar"
        input_size = 32 if input_size is None else input_size
        arch_spec(arch)
        if t_d is not None:
            if not 0 < t_d <= 1:
                raise UsageError(f"--t-d must be in (0, 1], got {t_d}")
            prior = synthesise(arch, stem, input_size, t_d, gate_spec, tile=tile)
            report = pattern_report(prior)
            if save_pattern is not None:
                click.echo(f"wrote {prior.save(save_pattern)}", err=True)
        else:
            report = dense_report(arch, stem, input_size)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_macs_table(report)


def _print_macs_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.pattern.macs import format_macs

    gated = report.gated_macs is not None
    title = (f"{report.arch} · {report.stem} stem · {report.input_size}×{report.input_size} px — "
             f"{'gated (expected per sample)' if gated else 'dense'} MACs")
    table = Table(title=title, caption="MACs = multiply-accumulates (1 MAC = 2 FLOPs); gated "
                  "MACs include the gate modules", caption_justify="left")
    table.add_column("layer")
    table.add_column("channels", justify="right")
    table.add_column("on", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("% of dense", justify="right")
    table.add_row("stem", "64", "64", format_macs(report.stem_macs), "100.0")
    for lm in report.layers:
        table.add_row(lm.name, str(lm.channels), f"{lm.expected_on:.1f}" if gated
                      else str(lm.channels), format_macs(lm.macs), f"{lm.pct_of_dense:.1f}")
    total = report.gated_macs if gated else report.dense_macs
    table.add_row("total", "", "", format_macs(total), f"{100 * total / report.dense_macs:.1f}",
                  style="bold")
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"dense: {report.dense_macs:,} MACs ({format_macs(report.dense_macs)})")
    if gated:
        td = "" if report.t_d is None else f", t_d {report.t_d:g}"
        console.print(f"gated: {report.gated_macs:,.0f} MACs ({format_macs(report.gated_macs)}), "
                      f"ratio gated/dense {report.ratio:.4f}{td}")


@cli.command()
@click.option("--pattern", "pattern_path", required=True, type=click.Path(dir_okay=False),
              help="Gate-pattern JSON file; its arch, stem and input size are used.")
@device_option()
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Images per inference.")
@click.option("--threads", type=int, default=None,
              help="CPU threads (torch.set_num_threads). [default: torch's]")
@click.option("--dtype", default="fp32", show_default=True,
              type=click.Choice(["fp32", "bf16", "fp16"]), help="bf16/fp16 on CUDA only.")
@click.option("--max-time", "max_time_s", type=float, default=8.0, show_default=True,
              help="Seconds of measuring (after warm-up) once every mode has --min-runs.")
@click.option("--min-runs", type=click.IntRange(min=3), default=50, show_default=True,
              help="Samples per mode at least.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Warm-up calls per mode (and at least 0.5 s in all).")
@click.option("--dynamic-policy", default="auto", show_default=True,
              type=click.Choice(["auto", "static", "gather-conv", "gather-gemm", "width"]),
              help="How the dynamic mode runs each block; auto times each way per block. On a "
                   "runtime: auto, static (one masked graph) or width (a graph per width).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "mkldnn", "aten"]),
              help="Conv kernels for every mode: mkldnn (pre-packed oneDNN, CPU fp32) or aten "
                   "(F.conv2d); auto picks mkldnn where it can.")
@execution_option("Run every mode eagerly, replayed from CUDA graphs (CUDA only) or through "
                  "torch.compile.")
@click.option("--tile", type=int, default=None,
              help="Pad kept channels up to a multiple of N (zero channels, exact): 8 (bf16) or "
                   "16 suit tensor cores. [default: the pattern's, 1]")
@runtime_option("What runs every mode: hwbench's engine, or the exported graph on ONNX "
                   "Runtime or OpenVINO (CPU, fp32; extras hwbench[onnx], hwbench[openvino]).")
@json_option("Print one JSON object (raw samples too).")
def speedup(pattern_path, device, batch_size, threads, dtype, max_time_s, min_runs, warmup,
            dynamic_policy, backend, execution, tile, runtime, as_json) -> None:
    """Latency of the dense, masked, static and dynamic engines for one pattern, interleaved.

    speedup = dense p50 / mode p50; efficiency = speedup / (dense MACs / mode MACs).
    """
    from hwbench.profile.speedup import SpeedupConfig, run_speedup, validate

    cfg = SpeedupConfig(pattern=pattern_path, device=device, batch_size=batch_size,
                        threads=threads, dtype=dtype, max_time_s=max_time_s, min_runs=min_runs,
                        warmup=warmup, dynamic_policy=dynamic_policy, backend=backend,
                        execution=execution, tile=tile, runtime=runtime)
    validate(cfg)
    if as_json:
        result = run_speedup(cfg)
        click.echo(json.dumps(result.to_dict()))
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("measuring dense, masked, static and dynamic, interleaved ..."):
        result = run_speedup(cfg)
    _print_speedup(result)


def _ran_on(result) -> str:
    from hwbench.engine.runtimes.registry import is_graph

    d = result.device
    if not is_graph(result.runtime):
        return f"{d['backend']}, {result.execution}"
    return f"{d['runtime']} {d['runtime_version']}, {d['provider']}"


def _print_speedup(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.engine.graphs import DEFAULT_EXECUTION
    from hwbench.engine.runtimes.registry import is_graph
    from hwbench.pattern.macs import format_macs

    p, d = result.pattern, result.device
    table = Table(title=f"{p['arch']} · {p['stem']} stem · {p['input_size']} px · batch "
                        f"{result.batch_size} · {result.dtype} · {d['name']} "
                        f"({d['threads']} threads, {_ran_on(result)})")
    for col in ("mode", "p50 ms", "p90 ms", "samples", "MACs/sample", "MACs ratio", "speedup",
                "efficiency"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    dense_macs = result.modes["dense"].macs
    for name, m in result.modes.items():
        table.add_row(name, f"{m.p50_ms:.3f}", f"{m.p90_ms:.3f}", str(m.samples),
                      format_macs(m.macs), f"{m.macs / dense_macs:.3f}", f"{m.speedup:.2f}",
                      f"{m.efficiency:.2f}")
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(f"pattern MACs ratio (gated/dense, expected): {result.flops_ratio:.3f}; "
                  "efficiency = speedup / (dense MACs / mode MACs); latency measured wall clock")
    console.print(f"dynamic mode: batch strategy: {result.dynamic_batch_strategy}; "
                  f"per-block plan: {', '.join(result.dynamic_plan)}")
    if result.execution != DEFAULT_EXECUTION or is_graph(result.runtime):
        what = {"graphs": "capture", "compile": "compilation"}.get(result.execution,
                                                                    "export + compile")
        console.print(f"{what} per mode (s, wall clock): " + ", ".join(
            f"{m} {t:.1f}" for m, t in result.setup_s.items()))
    if p.get("tile", 1) != 1:
        ex = {k: result.modes[k].macs_executed / dense_macs for k in ("static", "dynamic")}
        console.print(f"tile {p['tile']}: executed MACs ratio (zero padding included) static "
                      f"{ex['static']:.3f}, dynamic {ex['dynamic']:.3f}")


@cli.command()
@click.option("--device", "device_spec", default=None,
              help="Also check this device's energy sources (cpu, cuda, cuda:N).")
@json_option()
def env(device_spec, as_json) -> None:
    """Detected devices, energy sources (and why one is unavailable), versions."""
    import platform

    import torch

    from hwbench.engine import mkldnn_available
    from hwbench.measure.device import cpu_model, parse_device
    from hwbench.measure.energy import detect_sources

    devices = [{"device": "cpu", "name": cpu_model(), "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "onednn": mkldnn_available()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
                            "cuda": torch.version.cuda})
    targets = [parse_device(device_spec)] if device_spec else \
        [torch.device(d["device"]) for d in devices]
    energy = {str(d): [s.__dict__ for s in detect_sources(d)] for d in targets}
    info = {"hwbench": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "zeus": _dist_version("zeus"), "cuda_available": torch.cuda.is_available(),
            "devices": devices, "energy": energy}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"hwbench {__version__} · torch {torch.__version__} · python "
               f"{platform.python_version()} · zeus {info['zeus'] or 'not installed'} · CUDA "
               f"{'yes' if torch.cuda.is_available() else 'no'}")
    for d in devices:
        extra = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("device", "name"))
        click.echo(f"  {d['device']:7s} {d['name']} ({extra})")
    click.echo("energy sources:")
    for dev, sources in energy.items():
        for src in sources:
            mark = "yes" if src["available"] else "no "
            click.echo(f"  {dev:7s} {src['method']:20s} {mark}  {src['reason']}")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _t_d_list(ctx, param, value):
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise click.BadParameter(f"values must be in (0, 1], got {value!r}")
    return vals


@cli.command()
@device_option()
@click.option("--arch", default="resnet18", show_default=True,
              help="Network: resnet18, resnet34, resnet50.")
@click.option("--stem", default="cifar", show_default=True,
              type=click.Choice(["cifar", "imagenet"]), help="Network stem (see `flops`).")
@click.option("--input-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Square input side in pixels.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per inference.")
@click.option("--dtype", default="fp32", show_default=True,
              type=click.Choice(["fp32", "bf16", "fp16"]), help="bf16/fp16 on CUDA only.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (torch.set_num_threads). [default: torch's]")
@click.option("--t-d", "t_d", callback=_t_d_list, default=None,
              help="Comma-separated budgets to sweep. [default: 0.1,0.2,...,1.0]")
@click.option("--patterns", "patterns", multiple=True, type=click.Path(dir_okay=False),
              help="A pattern file to measure and store too; repeatable.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Profile path. [default: profiles/<device>_<conditions>.json]")
@click.option("--energy/--no-energy", default=True, show_default=True,
              help="Measure energy per inference (NVML, RAPL, or a labelled codecarbon estimate).")
@click.option("--max-time", "max_time_s", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, help="Seconds per measured group before a result that misses "
                                      "the CI target is marked INVALID.")
@click.option("--min-runs", type=click.IntRange(min=8), default=64, show_default=True,
              help="Samples per pattern at least.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Warm-up calls per pattern (and at least 1 s in all).")
@click.option("--validation", type=click.IntRange(min=0), default=20, show_default=True,
              help="Random patterns measured against the predictor.")
@click.option("--grid", type=click.IntRange(min=1), default=32, hidden=True)
@click.option("--table-rounds", type=click.IntRange(min=1), default=15, hidden=True)
@execution_option("Time the engines eagerly, replayed from CUDA graphs (CUDA only) or through "
                  "torch.compile; recorded in the fingerprint.")
@click.option("--tile", type=int, default=1, show_default=True,
              help="Round kept channels up to a multiple of N (patterns and engine): 8 (bf16) "
                   "or 16 suit tensor cores.")
@click.option("--energy-cooldown", "energy_cooldown_s", type=float, default=None,
              help="Idle seconds before each energy setting. [default: 2 on CUDA, 0 on CPU]")
@runtime_option("What runs the networks: the compact engine (eager) or the exported graph "
                   "compiled by ONNX Runtime or OpenVINO (CPU, fp32); recorded in the "
                   "fingerprint with its version, provider and threads.")
@json_option("Print the summary as JSON.")
def profile(device, arch, stem, input_size, batch_size, dtype, threads, t_d, patterns, out,
            energy, max_time_s, min_runs, warmup, validation, grid, table_rounds,
            execution, tile, energy_cooldown_s, runtime, as_json) -> None:
    """Measure latency, energy and MACs of gate patterns here; write a device profile.

    Latencies are of the compact engine in dynamic mode, or of the --runtime's compiled
    networks (dense and masked stored as references), each pattern timed per inference,
    interleaved with the dense reference, until the median's 95% CI half-width is within 2% or
    --max-time runs out (then marked INVALID).
    """
    from pathlib import Path

    from hwbench.profile.build import ProfileConfig, Profiler
    from hwbench.profile.predictor import profile_filename, save_profile

    cfg = ProfileConfig(device=device, arch=arch, stem=stem, input_size=input_size,
                        batch_size=batch_size, dtype=dtype, threads=threads,
                        t_d=t_d or ProfileConfig.t_d, patterns=tuple(patterns), energy=energy,
                        max_time_s=max_time_s, min_runs=min_runs, warmup=warmup,
                        validation=validation, grid=grid, table_rounds=table_rounds,
                        execution=execution, tile=tile, energy_cooldown_s=energy_cooldown_s,
                        runtime=runtime)
    from hwbench.io import check_writable

    if out:
        check_writable(out)  # a bad --out fails now, not after minutes of measuring
    profiler = Profiler(cfg)  # validates everything before any measuring
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("profiling", total=1.0)
        profiler.progress = lambda phase, frac: bar.update(task, completed=frac,
                                                           description=phase)
        result = profiler.run()
    target = Path(out) if out else Path("profiles") / profile_filename(result["fingerprint"])
    written = save_profile(result, target)
    if as_json:
        from hwbench.profile.build import summary_rows

        click.echo(json.dumps({"profile": str(written), "valid": result["valid"],
                               "table_valid": result["table"]["valid"],
                               "runtime": runtime_of(result),
                               "validation": {k: result["validation"][k] for k in
                                              ("n", "within_5pct", "within_10pct")},
                               "sweep": summary_rows(result)}, indent=2))
    else:
        _print_profile(result, written)


def _print_profile(p: dict, path) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.profile.build import summary_rows

    fp, e = p["fingerprint"], p.get("energy", {})
    t = Table(title=f"{fp['arch']} · {fp['stem']} stem · {fp['input_size']} px · batch "
                    f"{fp['batch_size']} · {fp['dtype']} · {fp['name']} ({fp['threads']} threads)"
                    f" · runtime {runtime_of(p)}")
    label = e.get("method", "none") + ("" if e.get("measured") else ", ESTIMATED")
    for col in ("t_d", "MACs ratio", "p50 ms", "p90 ms", "p99 ms", "predicted p50",
                "vs dense", f"J/inference ({label})", "valid"):
        t.add_column(col, justify="right")
    for r in summary_rows(p):
        t.add_row(f"{r['t_d']:g}", f"{r['macs_ratio']:.3f}", f"{r['p50_ms']:.3f}",
                  f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['predicted_p50_ms']:.3f}",
                  f"{r['ratio_to_dense']:.3f}",
                  "-" if r["energy_j"] is None else f"{r['energy_j']:.4f}",
                  "VALID" if r["valid"] else "INVALID")
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
    console.print(t)
    tab = p["table"]
    if "entries" in tab:
        bad = len(tab["invalid"])
        console.print(f"latency table: {len(tab['entries'])} networks, {tab['rounds']} rounds, "
                      + (f"{bad} without a valid median (listed in table.invalid)" if bad
                         else "every median valid"))
    v = p["validation"]
    if v["n"]:
        console.print(f"predictor: {v['n']} random patterns, {100 * v['within_5pct']:.0f}% within "
                      f"±5% and {100 * v['within_10pct']:.0f}% within ±10% of the measured p50 "
                      "(as ratios to the dense probe; in raw ms across phases: "
                      f"{100 * v['within_5pct_abs']:.0f}% / {100 * v['within_10pct_abs']:.0f}%)")
    by_code: dict[str, list] = {}
    for w in p["warnings"]:
        by_code.setdefault(w["code"], []).append(w)
    for code, ws in by_code.items():
        where = ", ".join(w["where"] for w in ws[:4]) + (f" and {len(ws) - 4} more"
                                                         if len(ws) > 4 else "")
        console.print(f"warning {code} ({where}): {ws[0]['advice']}")
    from hwbench.measure.load import describe

    if describe(p.get("load")):
        console.print(f"warning BUSY: {describe(p.get('load'))}; profile again on an idle "
                      "machine")
    console.print(f"wrote {path} in {p['duration_s']:.0f} s")


def runtime_of(profile: dict) -> str:
    """The profile's runtime and its version (the default runtime's name alone, also for a
    profile without the key)."""
    from hwbench.engine.runtimes.registry import label

    return label(profile["fingerprint"])


def _load_checked_profile(profile_path, runtime):
    """The profile, refused in one line when ``runtime`` is given and not the profile's."""
    from hwbench.profile.locate import check_profile_runtime
    from hwbench.profile.predictor import load_profile

    prof = load_profile(profile_path)
    if runtime is not None:
        check_profile_runtime(prof, runtime, str(profile_path))
    return prof


def _load_profile_and_pattern(profile_path, pattern_path, runtime=None):
    from hwbench.pattern.gate_pattern import load_pattern
    from hwbench.profile.predictor import Predictor

    prof = _load_checked_profile(profile_path, runtime)
    pred = Predictor(prof)
    if pattern_path is None:
        return prof, pred, None
    pattern = load_pattern(pattern_path)
    pred.check(pattern, str(pattern_path))
    return prof, pred, pattern


@cli.command()
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
              help="A device profile (profiles/*.json).")
@click.option("--pattern", "pattern_path", required=True, type=click.Path(dir_okay=False),
              help="A gate-pattern file of the profile's arch, stem and input size.")
@runtime_option(PROFILE_RUNTIME_HELP, default=None)
@json_option()
def predict(profile_path, pattern_path, runtime, as_json) -> None:
    """Predicted p50/p90 latency (ms) of a pattern on the profiled device, from the table alone."""
    from hwbench.engine.runtimes.registry import of
    from hwbench.pattern.macs import pattern_report

    prof, pred, pattern = _load_profile_and_pattern(profile_path, pattern_path, runtime)
    fp = prof["fingerprint"]
    out = {"p50_ms": pred.predict(pattern, "p50"), "p90_ms": pred.predict(pattern, "p90"),
           "p99_ms": pred.predict(pattern, "p99"), "macs_ratio": pattern_report(pattern).ratio,
           "device": fp["name"], "batch_size": fp["batch_size"], "mode": "dynamic",
           "runtime": of(fp), "runtime_version": fp.get("runtime_version"),
           "source": "predicted from the profile's latency table"}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"predicted on {fp['name']} (batch {fp['batch_size']}, dynamic mode, runtime "
                   f"{runtime_of(prof)}): "
                   f"p50 {out['p50_ms']:.3f} ms, p90 {out['p90_ms']:.3f} ms "
                   f"(MACs ratio {out['macs_ratio']:.3f})")


@cli.command()
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
              help="A device profile (profiles/*.json).")
@click.option("--target-latency", required=True,
              help="Latency target with a unit: 5ms, 5 ms, 0.005s, 500us.")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]))
@runtime_option(PROFILE_RUNTIME_HELP, default=None)
@json_option()
def pick(profile_path, target_latency, percentile, runtime, as_json) -> None:
    """The largest t_d whose predicted latency meets the target (exit 2 if none does), and the
    widest thinner dense network (--width-mult) predicted to meet it: the baseline."""
    from hwbench.deploy.baseline import pick_width_mult
    from hwbench.engine.runtimes.registry import of
    from hwbench.pick.t_d import Unattainable, pick_t_d
    from hwbench.units import parse_duration

    target = parse_duration(target_latency)
    prof = _load_checked_profile(profile_path, runtime)
    result = pick_t_d(prof, target, percentile)
    try:
        thin = pick_width_mult(prof, target, percentile)
    except Unattainable as exc:
        thin, thin_text = None, f"thin baseline: none ({exc})"
    else:
        thin_text = (f"thin baseline: --width-mult {thin.width_mult:g}: predicted {percentile} "
                     f"{thin.predicted_ms:.3f} ms")
    if as_json:
        fp = prof["fingerprint"]
        click.echo(json.dumps({**result.to_dict(), "runtime": of(fp),
                               "runtime_version": fp.get("runtime_version"),
                               "thin": thin.to_dict() if thin else None}, indent=2))
    else:
        click.echo(f"t_d {result.t_d:g}: predicted {percentile} {result.predicted_ms:.3f} ms "
                   f"<= target {result.target_ms:g} ms on runtime {runtime_of(prof)}" +
                   (f" ({result.note})" if result.note else ""))
        click.echo(thin_text)
