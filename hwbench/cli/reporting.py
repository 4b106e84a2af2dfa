"""Commands that read what was measured and trained: ``eval``, ``report``."""

from __future__ import annotations

import json

import click

from hwbench.cli.app import cli
from hwbench.cli.options import (
    KNN_PROTOCOL_NAMES,
    device_option,
    json_option,
)


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
@device_option()
@click.option("--data-dir", default=None, help="Data set files. [default: the run's]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes. [default: 0 for sets held in memory, else "
                   "the CPUs less one, at most 8]")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the JSON. [default: eval.json next to the checkpoint]")
@json_option()
def eval_cmd(checkpoint, linear, knn, knn_protocols, linear_sgd_epochs, device, data_dir,
             workers, out, as_json) -> None:
    """Top-1 of a run's dense and gated features (kNN by protocol, linear probe, optionally the
    reference's SGD linear evaluation), its measured MACs ratio and per-layer on-ratios."""
    from hwbench.io import check_writable
    from hwbench.measure.device import parse_device
    from hwbench.train.evaluation import run_eval

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
