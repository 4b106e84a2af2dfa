"""The ``hwbench`` command: a thin click layer over the library.

Every user error is printed as one line (``hwbench: error: ...``) with a non-zero exit code;
tracebacks are reserved for bugs.
"""

from __future__ import annotations

import json
import os
import sys

import click

from hwbench import __version__
from hwbench.errors import HwbenchError, UsageError
from hwbench.recipe import RECIPES, apply_recipe, format_recipe
from hwbench.verdict import EXIT_CODES, exit_help

# hwbench.ssl.knn.KNN_PROTOCOLS and hwbench.data.VIEWS, spelled out: --help imports no torch
KNN_PROTOCOL_NAMES = ("reference", "online", "cosine")
VIEW_NAMES = ("hwbench", "reference")
RUNTIME_NAMES = ("eager", "onnxruntime", "openvino")  # hwbench.engine.runtimes.RUNTIMES


class _Group(click.Group):
    """A click group that turns every expected failure into a single line on stderr."""

    def main(self, args=None, prog_name=None, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("hwbench: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"hwbench: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except HwbenchError as exc:
            click.echo(f"hwbench: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hwbench")
def cli() -> None:
    """Hardware-aware benchmarking and co-training of channel-gated networks (SSL).

    Counts are MACs (multiply-accumulates; 1 MAC = 2 FLOPs) unless a column says otherwise.
    """


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def flops(arch, stem, input_size, pattern_path, t_d, gate, save_pattern, tile, as_json) -> None:
    """Exact MACs of the dense network, and of a gate pattern (--pattern or --t-d).

    Counted as in the paper: every conv (stem, blocks, downsample) plus, in the gated network,
    the gates' 1x1 convs; BN, ReLU, pooling and the head are not counted. A width-gated
    pattern's MACs are exact from its per-layer histograms of kept widths.
    """
    from hwbench.flops import dense_report, pattern_report
    from hwbench.io import check_writable
    from hwbench.nets.gate import parse_gate
    from hwbench.nets.geometry import arch_spec
    from hwbench.patterns import load_pattern, synthesise

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


@cli.command()
@click.option("--pattern", "pattern_path", required=True, type=click.Path(dir_okay=False),
              help="Gate-pattern JSON file; its arch, stem and input size are used.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
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
@click.option("--exec", "execution", default="eager", show_default=True,
              type=click.Choice(["eager", "graphs", "compile"]),
              help="Run every mode eagerly, replayed from CUDA graphs (CUDA only) or through "
                   "torch.compile.")
@click.option("--tile", type=int, default=None,
              help="Pad kept channels up to a multiple of N (zero channels, exact): 8 (bf16) or "
                   "16 suit tensor cores. [default: the pattern's, 1]")
@click.option("--runtime", default="eager", show_default=True,
              type=click.Choice(["eager", "onnxruntime", "openvino"]),
              help="What runs every mode: hwbench's engine, or the exported graph on ONNX "
                   "Runtime or OpenVINO (CPU, fp32; extras hwbench[onnx], hwbench[openvino]).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (raw samples too).")
def speedup(pattern_path, device, batch_size, threads, dtype, max_time_s, min_runs, warmup,
            dynamic_policy, backend, execution, tile, runtime, as_json) -> None:
    """Latency of the dense, masked, static and dynamic engines for one pattern, interleaved.

    speedup = dense p50 / mode p50; efficiency = speedup / (dense MACs / mode MACs).
    """
    from hwbench.speedup import SpeedupConfig, run_speedup, validate

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
    d = result.device
    if result.runtime == "eager":
        return f"{d['backend']}, {result.execution}"
    return f"{d['runtime']} {d['runtime_version']}, {d['provider']}"


def _print_speedup(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.flops import format_macs

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
    if result.execution != "eager" or result.runtime != "eager":
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def env(device_spec, as_json) -> None:
    """Detected devices, energy sources (and why one is unavailable), versions."""
    import os
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
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
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
@click.option("--exec", "execution", default="eager", show_default=True,
              type=click.Choice(["eager", "graphs", "compile"]),
              help="Time the engines eagerly, replayed from CUDA graphs (CUDA only) or through "
                   "torch.compile; recorded in the fingerprint.")
@click.option("--tile", type=int, default=1, show_default=True,
              help="Round kept channels up to a multiple of N (patterns and engine): 8 (bf16) "
                   "or 16 suit tensor cores.")
@click.option("--energy-cooldown", "energy_cooldown_s", type=float, default=None,
              help="Idle seconds before each energy setting. [default: 2 on CUDA, 0 on CPU]")
@click.option("--runtime", default="eager", show_default=True, type=click.Choice(RUNTIME_NAMES),
              help="What runs the networks: the compact engine (eager) or the exported graph "
                   "compiled by ONNX Runtime or OpenVINO (CPU, fp32); recorded in the "
                   "fingerprint with its version, provider and threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
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

    from hwbench.profiler import ProfileConfig, Profiler
    from hwbench.profiles import profile_filename, save_profile

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
        from hwbench.profiler import summary_rows

        click.echo(json.dumps({"profile": str(written), "valid": result["valid"],
                               "table_valid": result["table"]["valid"],
                               "runtime": _runtime_of(result),
                               "validation": {k: result["validation"][k] for k in
                                              ("n", "within_5pct", "within_10pct")},
                               "sweep": summary_rows(result)}, indent=2))
    else:
        _print_profile(result, written)


def _print_profile(p: dict, path) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.profiler import summary_rows

    fp, e = p["fingerprint"], p.get("energy", {})
    t = Table(title=f"{fp['arch']} · {fp['stem']} stem · {fp['input_size']} px · batch "
                    f"{fp['batch_size']} · {fp['dtype']} · {fp['name']} ({fp['threads']} threads)"
                    f" · runtime {_runtime_of(p)}")
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


def _runtime_of(profile: dict) -> str:
    """The profile's runtime and its version ('eager' for a profile without the key)."""
    fp = profile["fingerprint"]
    rt = fp.get("runtime", "eager")
    return rt if rt == "eager" else f"{rt} {fp.get('runtime_version')}"


def _runtime_option(f):
    return click.option("--runtime", default=None, type=click.Choice(RUNTIME_NAMES),
                        help="The runtime the latency is for; refused when the profile was "
                             "measured on another. [default: the profile's]")(f)


def _load_checked_profile(profile_path, runtime):
    """The profile, refused in one line when ``runtime`` is given and not the profile's."""
    from hwbench.locate import check_profile_runtime
    from hwbench.profiles import load_profile

    prof = load_profile(profile_path)
    if runtime is not None:
        check_profile_runtime(prof, runtime, str(profile_path))
    return prof


def _load_profile_and_pattern(profile_path, pattern_path, runtime=None):
    from hwbench.patterns import load_pattern
    from hwbench.profiles import Predictor

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
@_runtime_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def predict(profile_path, pattern_path, runtime, as_json) -> None:
    """Predicted p50/p90 latency (ms) of a pattern on the profiled device, from the table alone."""
    from hwbench.flops import pattern_report

    prof, pred, pattern = _load_profile_and_pattern(profile_path, pattern_path, runtime)
    fp = prof["fingerprint"]
    out = {"p50_ms": pred.predict(pattern, "p50"), "p90_ms": pred.predict(pattern, "p90"),
           "p99_ms": pred.predict(pattern, "p99"), "macs_ratio": pattern_report(pattern).ratio,
           "device": fp["name"], "batch_size": fp["batch_size"], "mode": "dynamic",
           "runtime": fp.get("runtime", "eager"), "runtime_version": fp.get("runtime_version"),
           "source": "predicted from the profile's latency table"}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"predicted on {fp['name']} (batch {fp['batch_size']}, dynamic mode, runtime "
                   f"{_runtime_of(prof)}): "
                   f"p50 {out['p50_ms']:.3f} ms, p90 {out['p90_ms']:.3f} ms "
                   f"(MACs ratio {out['macs_ratio']:.3f})")


@cli.command()
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
              help="A device profile (profiles/*.json).")
@click.option("--target-latency", required=True,
              help="Latency target with a unit: 5ms, 5 ms, 0.005s, 500us.")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]))
@_runtime_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def pick(profile_path, target_latency, percentile, runtime, as_json) -> None:
    """The largest t_d whose predicted latency meets the target (exit 2 if none does), and the
    widest thinner dense network (--width-mult) predicted to meet it: the baseline."""
    from hwbench.baseline import pick_width_mult
    from hwbench.profiles import Unattainable, pick_t_d
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
        click.echo(json.dumps({**result.to_dict(), "runtime": fp.get("runtime", "eager"),
                               "runtime_version": fp.get("runtime_version"),
                               "thin": thin.to_dict() if thin else None}, indent=2))
    else:
        click.echo(f"t_d {result.t_d:g}: predicted {percentile} {result.predicted_ms:.3f} ms "
                   f"<= target {result.target_ms:g} ms on runtime {_runtime_of(prof)}" +
                   (f" ({result.note})" if result.note else ""))
        click.echo(thin_text)


@cli.command(name="train", epilog=exit_help())
@click.option("--dataset", default="mnist5k", show_default=True,
              help="cifar10, cifar100, stl10, imagenet100, mnist5k, digits or synthetic.")
@click.option("--data-dir", default=None, help="Where CIFAR/STL/ImageNet-100 files are.")
@click.option("--download", is_flag=True, help="Fetch CIFAR/STL-10 into --data-dir.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes per training process (0: none). [default: 0 "
                   "for sets held in memory; for STL-10's unlabeled split and ImageNet-100, "
                   "read from disk, the CPUs less one, at most 8]")
@click.option("--arch", default="resnet18", show_default=True,
              help="Network: resnet18, resnet34, resnet50.")
@click.option("--method", default="co", show_default=True,
              type=click.Choice(["co", "dense", "gated"]),
              help="co: the paper (gated view 1, dense view 2); dense: VICReg; gated: gated only.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs; with --time-budget, the most it may choose. [default: 10; "
                   "with --time-budget, as many as fit]")
@click.option("--time-budget", default=None, help="Wall-clock time for the whole training "
              "(steps, kNN evaluations, final pattern), e.g. 90s, 12min, 1.5h: this machine's "
              "step and evaluation times are measured first and the epochs sized to fit (10% "
              "kept in reserve).")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="Images per step (two views each).")
@click.option("--lr", type=float, default=None,
              help="Base learning rate (x batch/256), LARS, warm-up + cosine. [default: 0.3, the "
                   "paper's; 0.05 for --time-budget runs of fewer than 2000 steps]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds data order, "
              "augmentations, initialisation and gate noise.")
@click.option("--device", default="cpu", show_default=True, help="Where training runs.")
@click.option("--out", default=None, help="Run directory. [default: results/<run-name>/]")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--t-d", "t_d", type=float, default=None, help="Budget (gated/dense MACs) in "
              "(0, 1]. [default: 0.5, or picked by --target-latency]")
@click.option("--target-latency", "target_latency", multiple=True, help="Pick t_d so the gated "
              "network meets this latency on the target device: 5ms, 500us, or 0.65x (of its "
              "dense latency). Repeat with a device prefix for several devices at once: "
              "--target-latency cpu:20ms --target-latency cuda:2ms.")
@click.option("--budget", default="flops", show_default=True,
              type=click.Choice(["flops", "latency"]),
              help="flops: the paper's MACs budget t_d (picked from the profile); latency: train "
                   "against each target device's predicted latency (hwbench.budget).")
@click.option("--sparsity-on", default="sampled", show_default=True,
              type=click.Choice(["sampled", "deployed"]),
              help="The MACs the sparsity term pulls to t_d: those of the Gumbel-noised masks "
                   "the pass ran (the paper), or of the noise-free decisions the deployed "
                   "network takes (short budgets: see docs/training.md).")
@click.option("--budget-shape", default="two-sided", show_default=True,
              type=click.Choice(["two-sided", "one-sided"]),
              help="--budget latency: (pred/target - 1)^2, or only above the target.")
@click.option("--budget-combine", default="max", show_default=True,
              type=click.Choice(["max", "sum"]),
              help="--budget latency with several devices: max or sum of their terms.")
@click.option("--trim/--no-trim", default=None,
              help="After verifying, switch off the least-used channels until the measured "
                   "latency on this machine lands just under the target (`hwbench trim`). "
                   "[default: on with --budget latency]")
@click.option("--target-device", default=None, help="cpu, cuda or a profile JSON (possibly from "
              "another machine). [default: --device]")
@click.option("--runtime", default="eager", show_default=True,
              type=click.Choice(["eager", "onnxruntime", "openvino"]),
              help="What the deployed network runs on (with --target-latency): the compact "
                   "engine (eager) or the graph ONNX Runtime / OpenVINO compiled (CPU, fp32; "
                   "pip install 'hwbench[onnx]' / 'hwbench[openvino]'). The target devices' "
                   "profiles are that runtime's, and the trained network is measured on it.")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]), help="Percentile the target bounds.")
@click.option("--eval-every", type=click.IntRange(min=1), default=5, show_default=True,
              help="kNN top-1 (--knn protocol) of dense and gated features every N epochs and "
                   "at the end.")
@click.option("--amp", default="auto", show_default=True,
              type=click.Choice(["auto", "bf16", "fp16", "off"]),
              help="Autocast: auto = bf16 where the CPU/GPU runs it natively, fp16 on older GPUs.")
@click.option("--energy/--no-energy", default=True, show_default=True,
              help="Track the run's energy with codecarbon (energy.json in the run dir).")
@click.option("--country", default="USA", show_default=True,
              help="ISO 3166 alpha-3 country for codecarbon's carbon intensity.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Linear learning-rate warm-up before the cosine decay.")
@click.option("--bound-alpha", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="The bound's slack decays as p = exp(-alpha * epoch) (the paper: 0.02).")
@click.option("--finetune-steps", default="auto", show_default=True,
              help="With --target-latency: steps of recovery fine-tuning of the delivered "
                   "network (pattern frozen; SSL loss plus distillation from the co-trained "
                   "dense stream), kNN before and after in the summary; auto: a quarter of the "
                   "training's steps, inside --time-budget; 0: none.")
@click.option("--gate-noise-anneal", type=float, default=None,
              help="The last share of the steps over which the gates' training noise goes to "
                   "0, so that the network trained at the end is the one deployed (0: the "
                   "paper's noise to the last step). [default: 0.4; --recipe paper: 0]")
@click.option("--gate-bias", type=click.Choice(["learned", "none"]), default="learned",
              show_default=True,
              help="The gates' last layer: a trained bias (hwbench's) or none (the reference's; "
                   "channel gates only). [--recipe paper: none]")
@click.option("--gate-warmup/--no-gate-warmup", default=False, show_default=True,
              help="Train the --warmup-epochs with every gated channel on and no sparsity, "
                   "bound or latency term (the reference's warmup_gate option).")
@click.option("--gate-lr-mult", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="The gates' learning rate as a multiple of the backbone's.")
@click.option("--sparsity-weight", "lam", type=click.FloatRange(min=0), default=None,
              help="λ, the sparsity (or latency) term's weight. [default: 5, the paper's; 50 "
                   "with --budget latency]")
@click.option("--bound-weight", "gamma", type=click.FloatRange(min=0), default=1.0,
              show_default=True, help="γ, the per-layer bound's weight (the paper: 1).")
@click.option("--surrogate", type=click.Choice(["sigmoid", "linear"]), default=None,
              help="Gradient of the noise-free gate decisions that --sparsity-on deployed and "
                   "--budget latency read: the sigmoid's (vanishes for saturated gates) or its "
                   "slope at 0 everywhere, stopped at the gate's input. [default: sigmoid]")
@click.option("--gate", default="channel", show_default=True,
              help="channel: the paper's gates (any subset of channels per input); width:G: "
                   "each input keeps a prefix of its block's channels, in steps of G; width: G "
                   "read from the target device's profile (the step of its latency table), "
                   "else 16.")
@click.option("--width-mult", "width_mult", type=float, default=None,
              help="Every block's gated width x m, m in (0, 1], rounded to a multiple of G (the "
                   "width gate's step; 16 for channel gates): with --method dense, the thinner "
                   "static baseline.")
@click.option("--baseline", type=click.Choice(["none", "thin"]), default="none",
              show_default=True,
              help="thin: also train the thinner dense network (--width-mult m, m picked from "
                   "the profile and checked by measuring) for the same budget, land it on the "
                   "same target and put it in final.json beside the gated network. Needs "
                   "--target-latency on this machine.")
@click.option("--views", type=click.Choice(VIEW_NAMES), default="hwbench", show_default=True,
              help="The two views' augmentations. hwbench: hwbench.data.ssl_transform for both "
                   "(digit_transform on mnist5k/digits); reference: the reference scripts' "
                   "per-data-set pipelines (cifar10, cifar100, stl10, imagenet100 only): bicubic "
                   "crops from 0.2 of the area, and for cifar100 blur (p 0.2) on view 2 only.")
@click.option("--knn", type=click.Choice(KNN_PROTOCOL_NAMES), default="cosine",
              show_default=True,
              help="The per-epoch kNN monitor's protocol: reference (Euclidean, k 1: the "
                   "paper's numbers), online (the reference's monitor: Euclidean, k 20) or "
                   "cosine (k 20, T 0.07). `hwbench eval` reports all three.")
@click.option("--schedule", default="hwbench", show_default=True,
              type=click.Choice(["hwbench", "reference"]),
              help="hwbench: warm-up from 0 and cosine, per step; reference: the paper's, warm-up "
                   "from --warmup-start-lr over --warmup-epochs, then cosine to 0, per epoch.")
@click.option("--warmup-start-lr", type=click.FloatRange(min=0), default=0.003,
              show_default=True, help="--schedule reference: epoch 0's learning rate.")
@click.option("--separate-downsample-bn", is_flag=True,
              help="A downsample BN per stream (hwbench before issue 15) instead of one shared "
                   "by both streams (the reference's).")
@click.option("--vicreg-gather", is_flag=True,
              help="Under DDP, VICReg of the gathered global batch instead of each process's "
                   "own (the reference's).")
@click.option("--compile", "compile_step", is_flag=True,
              help="Run the training step's forward (both streams, the losses) through "
                   "torch.compile: minutes of compiling first, faster steps on GPUs.")
@click.option("--recipe", default=None, type=click.Choice(list(RECIPES)),
              help="paper: every value of the paper's scripts for --dataset (cifar10, cifar100, "
                   "stl10, imagenet100); options given explicitly override it.")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved values, each with its source (flag, reference script "
                   "and line, preset, default), and exit without training or loading data.")
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--n-synthetic", type=click.IntRange(min=8), default=512, hidden=True)
@click.pass_context
def train_cmd(ctx, dataset, data_dir, download, workers, arch, method, epochs, time_budget,
              batch_size, lr,
              seed, device, out, resume, t_d, target_latency, budget, sparsity_on, budget_shape,
              budget_combine,
              target_device, percentile, eval_every, amp, energy, country, warmup_epochs,
              bound_alpha, finetune_steps, gate_noise_anneal, gate_bias, gate_warmup,
              gate_lr_mult,
              max_steps_per_epoch, n_synthetic, trim, lam, gamma,
              surrogate, gate, width_mult, baseline, views, knn, schedule, warmup_start_lr,
              separate_downsample_bn, vicreg_gather, compile_step, recipe, dry_run,
              runtime) -> None:
    """Co-train a dense encoder and its gated sub-network with VICReg (Krishna et al., 2023).

    With --target-latency, t_d is picked from the target device's profile and, when that device
    is this machine, the learned network is deployed, measured (and, with --trim, trimmed) at
    the end: RUN/final.json holds the verdict on the network delivered (it lands in [0.90,
    1.00] x the target, and its gated kNN top-1 beats the randomly initialised network's), and
    the exit code is the verdict's.

    Defaults that differ from the paper's scripts, sized for short runs on a small CPU (minutes
    on 2 cores, not 500 epochs on 2 GPUs): 10 epochs (paper 500), batch 128 (512), warm-up of 1
    epoch from 0 per step (10 epochs from 0.003 per epoch: --schedule reference), lr 0.05 for
    short --time-budget runs (0.3 collapsed their features), seed 0 (5), --amp auto (fp16).
    --recipe paper sets the paper's values (docs/training.md: "The paper's recipe"); --dry-run shows
    them with their sources.
    """
    from hwbench.measure.device import parse_device
    from hwbench.pipeline import train_to_target
    from hwbench.target import auto_gate, check_target_runtime, parse_device_targets
    from hwbench.train import BUDGET_MAX_EPOCHS, TrainConfig, budget_defaults, validate
    from hwbench.units import parse_wall_time

    if t_d is not None and target_latency:
        raise UsageError("--t-d and --target-latency are mutually exclusive")
    if target_device is not None and not target_latency:
        raise UsageError("--target-device needs --target-latency")
    if runtime != "eager" and not target_latency:
        raise UsageError(f"--runtime {runtime} needs --target-latency (the latency to meet on it)")
    if budget == "latency" and not target_latency:
        raise UsageError("--budget latency needs --target-latency (the latency to train for)")
    if baseline != "none" and not target_latency:
        raise UsageError(f"--baseline {baseline} needs --target-latency (the latency it is "
                         "landed on)")
    parse_device(device)
    budget_s = None if time_budget is None else parse_wall_time(time_budget, "--time-budget")
    if epochs is None:
        epochs = 10 if budget_s is None else BUDGET_MAX_EPOCHS
    # bad values, duplicate devices: fail before anything runs
    targets = parse_device_targets(list(target_latency), target_device)
    check_target_runtime(targets, runtime, device)
    gate = auto_gate(gate, arch, dataset, targets, device, say=click.echo, runtime=runtime)
    cfg = TrainConfig(dataset=dataset, data_dir=data_dir, download=download, workers=workers,
                      arch=arch,
                      method=method, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, out=out, resume=resume, eval_every=eval_every,
                      t_d=0.5 if t_d is None else t_d, amp=amp, energy=energy, country=country,
                      warmup_epochs=warmup_epochs, alpha=bound_alpha, gate_lr_mult=gate_lr_mult,
                      finetune_steps=_finetune_steps(finetune_steps, bool(target_latency)),
                      **({} if gate_noise_anneal is None
                         else {"gate_noise_anneal": gate_noise_anneal}),
                      gate_bias=gate_bias, gate_warmup=gate_warmup,
                      max_steps_per_epoch=max_steps_per_epoch, n_synthetic=n_synthetic,
                      budget=budget,
                      sparsity_on=sparsity_on,
                      budget_shape=budget_shape, budget_combine=budget_combine,
                      **budget_defaults(budget, lam, surrogate), gamma=gamma,
                      time_budget_s=budget_s, gate=gate, width_mult=width_mult, views=views,
                      knn=knn, schedule=schedule, warmup_start_lr=warmup_start_lr,
                      shared_downsample_bn=not separate_downsample_bn,
                      vicreg_gather=vicreg_gather, compile=compile_step)
    cfg, values, sources = apply_recipe(cfg, recipe, _given_fields(ctx))
    validate(cfg, files=not dry_run)  # a dry run reads no data
    if dry_run:
        for line in format_recipe(values, sources, recipe, dataset):
            click.echo(line)
        return
    if out:
        from hwbench.io import check_writable

        check_writable(out, folder=True)  # before any profile, training or measuring
    with _TrainProgress() as bar:
        summary = train_to_target(cfg, percentile=percentile, say=bar.say,
                                  progress=bar.update, targets=targets, trim=trim,
                                  runtime=runtime,
                                  baseline=None if baseline == "none" else baseline)
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    sys.exit(_print_train_summary(summary, country))


def _finetune_steps(text: str, target: bool) -> int | None:
    """--finetune-steps: auto (None: a share of the training's steps) with a latency target, else
    0; an integer >= 0 as given."""
    t = str(text).strip().lower()
    if t == "auto":
        return None if target else 0
    if not t.lstrip("-").isdigit() or int(t) < 0:
        raise UsageError(f"--finetune-steps must be 'auto' or an integer >= 0 (0: no "
                         f"fine-tuning), got {text!r}")
    return int(t)


# train's options whose TrainConfig field has another name
_TRAIN_FIELDS = {"bound_alpha": "alpha", "time_budget": "time_budget_s",
                 "separate_downsample_bn": "shared_downsample_bn"}


def _given_fields(ctx: click.Context) -> dict[str, str]:
    """TrainConfig field -> option, for the options given on the command line (or environment)."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {_TRAIN_FIELDS.get(p.name, p.name): p.opts[0] for p in ctx.command.params
            if p.name in ctx.params and ctx.get_parameter_source(p.name) in given}


def _print_train_summary(summary: dict, country: str) -> int:
    """What ``hwbench train`` prints at the end; the exit code: final.json's verdict's."""
    from hwbench.train import top1_se

    final, init = summary["final"], summary.get("initial", {})
    keys = [k for k in ("loss", "macs_ratio", "eval_macs_ratio") if k in final]
    n = final.get("knn_test_n", 0)
    knn = [f"kNN top-1 {s} {v:.1f} % (± {top1_se(v, n):.1f})"
           for s, v in ((s, final.get(f"knn_top1_{s}")) for s in ("dense", "gated"))
           if v is not None]
    click.echo(f"{summary['run']}: " + ", ".join([f"{k} {final[k]:.3f}" for k in keys] + knn) +
               f" ({final['images_per_s']:.0f} images/s; kNN protocol "
               f"{final.get('knn_protocol', 'cosine')}; ± is one standard error on {n} test "
               "images)")
    if init:
        click.echo("  kNN top-1 of the randomly initialised network: " +
                   ", ".join(f"{k.rsplit('_', 1)[1]} {v:.2f}%" for k, v in init.items()
                             if k.startswith("knn_top1_")))
    if "energy" in summary:
        e = summary["energy"]
        click.echo(f"  training energy: {e['energy_kwh'] * 1e3:.3f} Wh ({e['label']}, codecarbon"
                   f"; {e['emissions_kg_co2e'] * 1e3:.2f} g CO2e, {country})")
    tb = summary.get("time_budget")
    if tb:
        click.echo(f"  time budget {tb['budget_s']:g} s: this launch took {tb['elapsed_s']:.0f} s "
                   f"({tb['epochs']} epochs x {tb['steps_per_epoch']} steps, predicted "
                   f"{tb['predicted_s']:.0f} s)")
    click.echo(f"  run dir {summary['dir']}" +
               (f"; pattern {summary['pattern']}" if "pattern" in summary else ""))
    checks = summary.get("verify_all") or ([summary["verify"]] if "verify" in summary else [])
    for v in checks:
        click.echo(f"  verify on {v['device']}{_on_runtime(v)} (deployed network, "
                   f"{v['inputs']['n']} real "
                   f"{v['inputs']['source']} images): {_verdict(v)}")
        if v.get("profile_stale"):
            click.echo(f"  {v['profile_stale']['note']}")
        if not v["met"] and v.get("advice"):
            click.echo(f"  {v['advice']}")
    _print_fidelity(summary)
    t = summary.get("trim")
    if t:
        click.echo(f"  trimmed ({_trim_moves(t)}), measured anew{_on_runtime(t)}: "
                   f"{_trim_verdict(t)}; {t['dir']}")
        if not t["search_hit"]:
            click.echo(f"  the search could not land: {t['search_reason']}")
    elif summary.get("deployed", {}).get("eval"):
        ev = summary["deployed"]["eval"]
        click.echo(f"  deployed network: kNN top-1 gated {ev['knn_top1_gated']:.1f} % (the compact "
                   "engine that was timed)" + (f", dense {ev['knn_top1_dense']:.1f} %"
                                               if "knn_top1_dense" in ev else ""))
    return _print_final(summary.get("delivered"))


def _print_fidelity(summary: dict) -> None:
    """Training's estimate against the deployed network; the fine-tuning's kNN before/after."""
    fid = summary.get("fidelity") or {}
    rows = [f"{name.replace('_', ' ')} {r['training']:.3f} -> {r['deployed']:.3f} "
            f"({100 * r['gap']:+.1f}%)" for name, r in fid.items() if isinstance(r, dict)]
    if rows:
        click.echo("  training estimate -> deployed network: " + ", ".join(rows) +
                   (" (within 5 %)" if fid.get("within") else " (NOT within 5 %)"))
    ft = (summary.get("trim") or {}).get("finetune")
    if ft:
        before = ft.get("knn_top1_gated_before")
        after = ft.get("knn_top1_gated_after", summary["trim"].get("knn_top1_gated"))
        knn = (f": gated kNN top-1 {before:.1f} -> {after:.1f} %"
               if before is not None and after is not None else "")
        kept = ("; the network before it is delivered (higher kNN)"
                if ft.get("kept") == "before" else "")
        click.echo(f"  fine-tuned {ft['steps']} steps ({ft['seconds']:.0f} s){knn}{kept}")


def _print_final(final: dict | None) -> int:
    """The verdict line of final.json's data (``hwbench.final``); its exit code (0 without one:
    nothing was measured on this machine)."""
    from hwbench.final import baseline_line, line

    if final is None:
        return 0
    click.echo(f"  {final['network']}: {line(final)}")
    extra = baseline_line(final)
    if extra:
        click.echo(f"  {extra}")
    return final["exit_code"]


def _verdict(v: dict) -> str:
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


def _on_runtime(res: dict) -> str:
    """The words ``on onnxruntime 1.x`` for a result measured on a runtime other than eager."""
    rec = res.get("runtime") or {"runtime": "eager"}
    if rec["runtime"] == "eager":
        return ""
    return f" on {rec['runtime']} {rec.get('runtime_version', '')}".rstrip()


def _trim_verdict(t: dict) -> str:
    return (f"{t['measured_ms']:.3f} ms vs target {t['target_ms']:.3f} ms "
            f"({100 * t['error']:+.1f}% in {t['target']['decided_on']})")


def _trim_moves(t: dict) -> str:
    """What trimming changed: channels switched off, or always-off ones restored."""
    if t.get("n_restored"):
        return f"{t['n_restored']} of {t['restore_candidates']} always-off channels restored"
    return f"{t['n_off']} of {t['candidates']} channels switched off"


class _TrainProgress:
    """A rich progress bar on stderr: epoch, step, losses, MACs ratio, images/s, ETA."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=True,
                                 disable=os.environ.get("RANK", "0") != "0")
        self.task = None
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def say(self, line: str) -> None:
        if os.environ.get("RANK", "0") == "0":
            self.console.print(line, highlight=False, soft_wrap=True)

    def update(self, s: dict) -> None:
        eta = int(s["eta_s"])
        info = (f"loss {s['loss']:.3f}" + (f" · MACs {s['macs_ratio']:.3f}" if "macs_ratio" in s
                                           else "") +
                f" · {s['images_per_s']:.0f} img/s · ETA {eta // 60}:{eta % 60:02d}")
        epoch = f"{s['epoch'] + 1}/{s['epochs']}"
        if self.task is None:
            self.task = self.progress.add_task("train", total=s["steps"], epoch=epoch, info=info)
        self.progress.update(self.task, completed=s["step"], total=s["steps"], epoch=epoch,
                             info=info)


@cli.command(epilog=exit_help((0, 4, 5, 2)))
@click.option("--pattern", "pattern_path", required=True, type=click.Path(dir_okay=False),
              help="The learned pattern (models/<run>.json).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="The run's checkpoint.pt; without it the pattern is realised on an "
                   "untrained network (same shapes, same gate statistics).")
@click.option("--target-latency", required=True,
              help="e.g. 5ms, 0.005s, 500us, or 0.7x (of the dense network measured alongside).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]), help="Percentile the target bounds.")
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False),
              help="Profile for the prediction. [default: the matching one in profiles/]")
@click.option("--max-time", "max_time_s", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, help="Seconds of measuring at most.")
@click.option("--allow-foreign-profile", "allow_foreign", is_flag=True,
              help="Accept a --profile of another device (its prediction is then not about "
                   "this one).")
@click.option("--runtime", default="eager", show_default=True,
              type=click.Choice(["eager", "onnxruntime", "openvino"]),
              help="What runs the network: the compact engine (eager) or the graph ONNX Runtime / "
                   "OpenVINO compiled (CPU, fp32); the profile must be of the same runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(pattern_path, checkpoint, target_latency, device, percentile, profile_path,
           max_time_s, allow_foreign, runtime, as_json) -> None:
    """Measure a learned network on this device: target vs predicted vs measured. It lands when
    the measured latency is within [0.90, 1.00] x the target: far under it is UNDERSHOT.
    """
    from hwbench.units import LatencyTarget
    from hwbench.verify import run_verify

    res = run_verify(pattern_path, LatencyTarget.parse(target_latency, percentile), device,
                     checkpoint, percentile, profile_path, max_time_s,
                     allow_foreign=allow_foreign, runtime=runtime)
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        on = _on_runtime(res)
        click.echo(f"{res['device']} ({res['mode']} {'mode' + on if on else 'engine'}, batch 1, "
                   f"{res['inputs']['n']} {res['inputs']['source']} images): {_verdict(res)}")
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
@click.option("--check-on", "check_on", default="onnxruntime", show_default=True,
              help="Comma-separated runtimes the ONNX file is checked on: onnxruntime, "
                   "openvino (pip install 'hwbench[openvino]').")
@click.option("--json", "as_json", is_flag=True, help="Print model.json's contents.")
def export_cmd(source, out, fmt, pattern_path, images, check_on, as_json) -> None:
    """Export a trained run (its folder or checkpoint.pt; RUN/deployed for the deployed
    network), or a pattern file realised on an untrained network, for a runtime: always-off
    channels removed, BN folded, dynamic channels gated as in the static engine. Written only
    if, loaded back, it equals the compact engine within 1e-4 (fp32) on real test images
    (exit 1 and nothing written if not)."""
    from hwbench.export import export
    from hwbench.nets.gate import parse_gate

    runtimes = tuple(r.strip() for r in check_on.split(",") if r.strip()) \
        if fmt == "onnx" or check_on != "onnxruntime" else None
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
@click.option("--device", default="cpu", show_default=True,
              help="This machine's device to measure on: cpu, cuda or cuda:N.")
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
@click.option("--runtime", default="eager", show_default=True,
              type=click.Choice(["eager", "onnxruntime", "openvino"]),
              help="What runs the network while it is measured: the compact engine (eager) or "
                   "the graph ONNX Runtime / OpenVINO compiled (CPU, fp32); the profile is that "
                   "runtime's.")
def trim(run_dir, target_latency, device, profile_path, percentile, tolerance, max_time_s, out,
         knn, runtime) -> None:
    """Switch off a trained network's least-used channels, or switch always-off ones back on,
    until its measured latency on this device lands in [1 - tolerance, 1] x the target
    (hwbench.trim); writes RUN/final.json and exits with its verdict's code.
    """
    from hwbench.pipeline import trim_run
    from hwbench.units import parse_target

    parse_target(target_latency)
    s = trim_run(run_dir, target_latency, device, profile_path, percentile, tolerance,
                 max_time_s, out=out, knn=knn, say=click.echo, runtime=runtime)
    click.echo(f"trimmed: {_trim_moves(s)}; measured anew{_on_runtime(s)}: "
               f"{_trim_verdict(s)}; MACs ratio {s['macs_ratio']:.3f}")
    if not s["search_hit"]:
        click.echo(f"  the search could not land: {s['search_reason']}")
    click.echo(f"  written to {s['dir']} (checkpoint.pt, pattern.json, trim.json, verify.json) "
               "and final.json in the run")
    sys.exit(_print_final(s["delivered"]))


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
@click.option("--device", default="cpu", show_default=True)
@click.option("--runtime", default="eager", show_default=True, type=click.Choice(RUNTIME_NAMES),
              help="The runtime every network is measured on (this machine's profile of it).")
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
    from hwbench.compare import CompareConfig, run_compare
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
    results = run_compare(cc, say=click.echo)
    png = compare_figure(results["rows"], os.path.splitext(out)[0] + ".png")
    click.echo(f"written {out}" + (f" and {png}" if png else ""))


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


@cli.command(name="eval")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A run's checkpoint.pt.")
@click.option("--linear/--no-linear", default=True, show_default=True,
              help="Linear probe on frozen features (L-BFGS logistic regression).")
@click.option("--knn/--no-knn", default=True, show_default=True,
              help="kNN top-1 by each --knn-protocol.")
@click.option("--knn-protocol", "knn_protocols", multiple=True,
              type=click.Choice(KNN_PROTOCOL_NAMES),
              help="reference: Euclidean, k 1 (the paper's numbers); online: the reference's "
                   "training monitor (Euclidean, k 20, vote 1/(d + 1e-5)); cosine: k 20, T 0.07. "
                   "Repeat for several. [default: all three]")
@click.option("--linear-sgd-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also the reference's linear evaluation: an SGD linear head (lr 0.3, batch "
                   "128) trained this many epochs on augmented crops through the frozen "
                   "backbone (0: not run).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--data-dir", default=None, help="Data set files. [default: the run's]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes. [default: 0 for sets held in memory, else "
                   "the CPUs less one, at most 8]")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the JSON. [default: eval.json next to the checkpoint]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(checkpoint, linear, knn, knn_protocols, linear_sgd_epochs, device, data_dir,
             workers, out, as_json) -> None:
    """Top-1 of a run's dense and gated features (kNN by protocol, linear probe, optionally the
    reference's SGD linear evaluation), its measured MACs ratio and per-layer on-ratios."""
    from hwbench.evaluate import run_eval
    from hwbench.io import check_writable
    from hwbench.measure.device import parse_device

    parse_device(device)
    if out:
        check_writable(out)
    res = run_eval(checkpoint, linear=linear, knn=knn, device=device, data_dir=data_dir, out=out,
                   knn_protocols=knn_protocols or KNN_PROTOCOL_NAMES,
                   linear_sgd_epochs=linear_sgd_epochs, workers=workers)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{checkpoint} ({res['arch']}, {res['method']}, t_d {res['t_d']:g}, "
               f"{res['dataset']}, epoch {res['epoch']}):")
    labels = [(f"knn_{p}_top1", f"kNN {p}") for p in KNN_PROTOCOL_NAMES] + [
        ("linear_top1", "linear"), ("linear_sgd_top1", "linear SGD")]
    for key, label in labels:
        for stream in ("dense", "gated"):
            if f"{key}_{stream}" in res:
                click.echo(f"  {label} top-1 {stream:5s} {res[f'{key}_{stream}']:6.2f} %")
    if "knn" in res["protocol"]:
        click.echo(f"  (knn_top1_*, the run's own monitor: the {res['protocol']['knn']['knn_top1']}"
                   " protocol)")
    if "eval_macs_ratio" in res:
        click.echo(f"  gated/dense MACs ratio (measured on the test split, hard gates) "
                   f"{res['eval_macs_ratio']:.4f}")
        click.echo("  on-ratio per gated layer: " + ", ".join(
            f"{k} {v:.2f}" for k, v in res["on_ratios"].items()))
    click.echo(f"  written to {res['written']}")


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder (report.md, report.html, figures/, tables/).")
@click.option("--energy-only", is_flag=True,
              help="Only the energy section: inference and training energy, with labels.")
@click.option("--target-latency", "targets", multiple=True,
              help="A latency target (e.g. 5ms) for the summary table; repeatable. Runs with a "
                   "target add theirs.")
@click.option("--percentile", default="p90", show_default=True,
              type=click.Choice(["p50", "p90", "p99"]), help="Percentile of --target-latency.")
@click.option("--title", default="hwbench report", show_default=True)
def report(inputs, out, energy_only, targets, percentile, title) -> None:
    """Figures, tidy CSVs and a self-contained HTML report from device profiles and training
    runs. INPUTS: profile files, run directories, or folders holding them."""
    from hwbench.io import check_writable
    from hwbench.report import build_report
    from hwbench.units import parse_duration

    tgt = [(parse_duration(t), percentile) for t in targets]
    check_writable(out, folder=True)
    res = build_report(list(inputs), out, energy_only=energy_only, targets=tgt, title=title)
    click.echo(f"report of {res.inputs[0]} profile(s) and {res.inputs[1]} run(s): "
               f"{res.out / 'report.html'}")
    for name, state in res.figures.items():
        if state != "drawn":
            click.echo(f"  figure {name}: not drawn ({state})")
    for path, why in res.skipped:
        click.echo(f"  left out {path}: {why}")


def _print_macs_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.flops import format_macs

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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
