"""The ``hwbench`` command: a thin click layer over the library.

Every user error is printed as one line (``hwbench: error: ...``) with a non-zero exit code;
tracebacks are reserved for bugs.
"""

from __future__ import annotations

import json
import sys

import click

from hwbench import __version__
from hwbench.errors import HwbenchError, UsageError


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def flops(arch, stem, input_size, pattern_path, t_d, as_json) -> None:
    """Exact MACs of the dense network, and of a gate pattern (--pattern or --t-d).

    Counted as in the paper: every conv (stem, blocks, downsample) plus, in the gated network,
    the gates' 1x1 convs; BN, ReLU, pooling and the head are not counted.
    """
    from hwbench.flops import dense_report, pattern_report
    from hwbench.nets.geometry import arch_spec
    from hwbench.patterns import load_pattern, synthesise

    if pattern_path is not None and t_d is not None:
        raise UsageError("--pattern and --t-d are mutually exclusive")
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
            report = pattern_report(synthesise(arch, stem, input_size, t_d))
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
              type=click.Choice(["auto", "static", "gather-conv", "gather-gemm"]),
              help="How the dynamic mode runs each block; auto times each way per block.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "mkldnn", "aten"]),
              help="Conv kernels for every mode: mkldnn (pre-packed oneDNN, CPU fp32) or aten "
                   "(F.conv2d); auto picks mkldnn where it can.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (raw samples too).")
def speedup(pattern_path, device, batch_size, threads, dtype, max_time_s, min_runs, warmup,
            dynamic_policy, backend, as_json) -> None:
    """Latency of the dense, masked, static and dynamic engines for one pattern, interleaved.

    speedup = dense p50 / mode p50; efficiency = speedup / (dense MACs / mode MACs).
    """
    from hwbench.speedup import SpeedupConfig, run_speedup, validate

    cfg = SpeedupConfig(pattern=pattern_path, device=device, batch_size=batch_size,
                        threads=threads, dtype=dtype, max_time_s=max_time_s, min_runs=min_runs,
                        warmup=warmup, dynamic_policy=dynamic_policy, backend=backend)
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


def _print_speedup(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwbench.flops import format_macs

    p, d = result.pattern, result.device
    table = Table(title=f"{p['arch']} · {p['stem']} stem · {p['input_size']} px · batch "
                        f"{result.batch_size} · {result.dtype} · {d['name']} "
                        f"({d['threads']} threads, {d['backend']})")
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
