"""``hwbench train``: the options, the recipe, the progress bar and the summary it prints."""

from __future__ import annotations

import os
import sys

import click

from hwbench.cli.app import cli
from hwbench.cli.options import (
    DEFAULT_RUNTIME_NAME,
    KNN_PROTOCOL_NAMES,
    VIEW_NAMES,
    device_option,
    runtime_option,
)
from hwbench.cli.verdicts import on_runtime, print_final, trim_moves, trim_verdict, verdict_text
from hwbench.deploy.verdict import exit_help
from hwbench.errors import UsageError
from hwbench.train.recipe import RECIPES, apply_recipe, format_recipe


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
@device_option("Where training runs.")
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
                   "against each target device's predicted latency (hwbench.train.budget).")
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
@runtime_option("What the deployed network runs on (with --target-latency): the compact "
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
def train_cmd(ctx, **o) -> None:
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
    from hwbench.data import info
    from hwbench.deploy.pipeline import train_to_target
    from hwbench.pick.goal import locate
    from hwbench.train.config import validate
    from hwbench.train.run import Dist

    goals, gate = _check_train_options(o)
    cfg, values, sources = apply_recipe(_train_config(o, gate), o["recipe"], _given_fields(ctx))
    validate(cfg, files=not o["dry_run"])  # a dry run reads no data
    if o["dry_run"]:
        for line in format_recipe(values, sources, o["recipe"], o["dataset"]):
            click.echo(line)
        return
    if o["out"]:
        from hwbench.io import check_writable

        check_writable(o["out"], folder=True)  # before any profile, training or measuring
    meta = info(cfg.dataset)
    with TrainProgress() as bar:
        # the one place the targets' profiles are located (a quick profile is measured when
        # none matches, by a single process only)
        goals = locate(goals, cfg.arch, meta.stem, meta.input_size,
                       quick=Dist.from_env().world == 1, say=bar.say)
        summary = train_to_target(cfg, goals, say=bar.say, progress=bar.update, trim=o["trim"],
                                  baseline=None if o["baseline"] == "none" else o["baseline"])
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    sys.exit(_print_train_summary(summary, o["country"]))


def _check_train_options(o: dict) -> tuple[list, str]:
    """One-line errors for options that do not go together, bad devices and targets, before
    anything runs; the parsed goals (``hwbench.pick.goal``: each target's deployment checked,
    no profile located yet) and the gate kind (``auto_gate``)."""
    from hwbench.data import info
    from hwbench.measure.device import parse_device
    from hwbench.nets.gate import step_from_profile
    from hwbench.pick.goal import on_disk, parse_goals
    from hwbench.pick.target import auto_gate

    target = bool(o["target_latency"])
    if o["t_d"] is not None and target:
        raise UsageError("--t-d and --target-latency are mutually exclusive")
    needs = [("--target-device", o["target_device"] is not None, ""),
             (f"--runtime {o['runtime']}", o["runtime"] != DEFAULT_RUNTIME_NAME,
              " (the latency to meet on it)"),
             ("--budget latency", o["budget"] == "latency", " (the latency to train for)"),
             (f"--baseline {o['baseline']}", o["baseline"] != "none",
              " (the latency it is landed on)")]
    for name, given, why in needs:
        if given and not target:
            raise UsageError(f"{name} needs --target-latency{why}")
    parse_device(o["device"])
    goals = parse_goals(list(o["target_latency"]), o["target_device"] or o["device"],
                        o["percentile"], o["runtime"])
    tp = None
    if goals and step_from_profile(o["gate"]):  # G from the profile on disk
        meta = info(o["dataset"])
        tp = on_disk(goals[0], o["arch"], meta.stem, meta.input_size)
    return goals, auto_gate(o["gate"], tp, say=click.echo)


# options passed to TrainConfig under their own name
_AS_IS = ("dataset", "data_dir", "download", "workers", "arch", "method", "batch_size", "lr",
          "seed", "device", "out", "resume", "eval_every", "amp", "energy", "country",
          "warmup_epochs", "gate_lr_mult", "gate_bias", "gate_warmup", "max_steps_per_epoch",
          "n_synthetic", "budget", "sparsity_on", "budget_shape", "budget_combine", "gamma",
          "width_mult", "views", "knn", "schedule", "warmup_start_lr", "vicreg_gather")


def _train_config(o: dict, gate: str):
    """The TrainConfig the options describe (before the recipe)."""
    from hwbench.train.config import TrainConfig, budget_defaults
    from hwbench.train.schedule import BUDGET_MAX_EPOCHS
    from hwbench.units import parse_wall_time

    budget_s = None if o["time_budget"] is None else parse_wall_time(o["time_budget"],
                                                                     "--time-budget")
    epochs = o["epochs"] if o["epochs"] is not None else \
        (10 if budget_s is None else BUDGET_MAX_EPOCHS)
    anneal = o["gate_noise_anneal"]
    return TrainConfig(**{k: o[k] for k in _AS_IS}, epochs=epochs,
                       t_d=0.5 if o["t_d"] is None else o["t_d"], alpha=o["bound_alpha"],
                       finetune_steps=_finetune_steps(o["finetune_steps"],
                                                      bool(o["target_latency"])),
                       **({} if anneal is None else {"gate_noise_anneal": anneal}),
                       **budget_defaults(o["budget"], o["lam"], o["surrogate"]),
                       time_budget_s=budget_s, gate=gate,
                       shared_downsample_bn=not o["separate_downsample_bn"],
                       compile=o["compile_step"])


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
    from hwbench.train.evaluation import top1_se

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
        click.echo(f"  verify on {v['device']}{on_runtime(v)} (deployed network, "
                   f"{v['inputs']['n']} real "
                   f"{v['inputs']['source']} images): {verdict_text(v)}")
        if v.get("profile_stale"):
            click.echo(f"  {v['profile_stale']['note']}")
        if not v["met"] and v.get("advice"):
            click.echo(f"  {v['advice']}")
    _print_fidelity(summary)
    t = summary.get("trim")
    if t:
        click.echo(f"  trimmed ({trim_moves(t)}), measured anew{on_runtime(t)}: "
                   f"{trim_verdict(t)}; {t['dir']}")
        if not t["search_hit"]:
            click.echo(f"  the search could not land: {t['search_reason']}")
    elif summary.get("deployed", {}).get("eval"):
        ev = summary["deployed"]["eval"]
        click.echo(f"  deployed network: kNN top-1 gated {ev['knn_top1_gated']:.1f} % (the compact "
                   "engine that was timed)" + (f", dense {ev['knn_top1_dense']:.1f} %"
                                               if "knn_top1_dense" in ev else ""))
    return print_final(summary.get("delivered"))


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


class TrainProgress:
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
