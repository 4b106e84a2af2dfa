"""Co-training runs: a seeded loop over epochs with atomic checkpoints, exact resume, per-epoch
metrics, kNN evaluation of both streams and the run's energy; the learned gate pattern at the end.

Run directory (``results/<run-name>/`` by default): ``config.json`` (resolved), ``metrics.jsonl``
and ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (rewritten atomically every epoch),
``energy.json`` (codecarbon, one segment per launch, labelled measured/estimated) with
codecarbon's ``emissions.csv``, and at the end ``pattern.json`` and ``summary.json``; the pattern
is also saved as ``models/<run-name>.json``.

Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch, rank), and the data
order from (seed, epoch), so ``resume=True`` continues exactly as an uninterrupted run would.
Time budget (``time_budget_s``): real steps, a checkpoint and a kNN evaluation are timed on this
machine and undone, and the epochs (``plan_epochs``) and learning rate (``choose_lr``) sized to
fit; the run is then the one those epochs would give. ``summary['warnings']``: streams whose
final kNN top-1 fell below the randomly initialised network's.
Speed: channels-last activations and autocast (``amp``: bf16 on CPUs with native bf16 and on
GPUs that support it, fp16 + gradient scaling on older GPUs); the losses run in fp32.
Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (SyncBatchNorm
on GPUs; on CPUs, with gloo, BatchNorm statistics stay per process), each process takes its share
of every global batch, VICReg sees each process's own batch (as the reference; ``vicreg_gather``:
the gathered global batch), and rank 0 alone writes files.
Schedules (``schedule``): "hwbench" warms up per step from 0 over ``warmup_epochs`` then decays
per step by a cosine; "reference" is the paper's scripts' (``lr_at``). ``recipe`` names the
preset (hwbench.recipe) the config was resolved from, if any.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hwbench.data import (
    SSL_SPLIT,
    Split,
    TwoViews,
    auto_workers,
    check_files,
    check_views,
    eval_batches,
    info,
    load_split,
    view_transforms,
)
from hwbench.errors import UsageError
from hwbench.io import atomic_torch_save, atomic_write_json, atomic_write_text
from hwbench.nets import list_nets, net_from_config, width_mult_widths
from hwbench.nets.gate import freeze_gate_bias, parse_gate, set_gate_noise, set_gates_open
from hwbench.nets.geometry import net_geometry
from hwbench.patterns import summarise
from hwbench.ssl.knn import KNN_PROTOCOLS, knn_top1
from hwbench.ssl.losses import anneal_p
from hwbench.ssl.model import (
    LARS,
    METHODS,
    CoTrainStep,
    Objective,
    SSLModel,
    lars_param_groups,
    upgrade_lars_state,
)

CHECKPOINT = "checkpoint.pt"
ENERGY = "energy.json"
# what a resumed run must share with the run it continues (else the curve would not continue)
RESUME_KEYS = ("arch", "dataset", "method", "t_d", "epochs", "batch_size", "seed", "lr",
               "warmup_epochs", "alpha", "lam", "gamma", "gate_lr_mult", "proj_dims", "amp",
               "budget", "latency_targets", "budget_shape", "budget_combine", "sparsity_on",
               "surrogate", "time_budget_s", "gate", "widths", "views", "schedule",
               "warmup_start_lr", "shared_downsample_bn", "gate_noise_anneal", "gate_bias",
               "gate_warmup")
# (vicreg_gather is not one: it changes nothing in one process, and a DDP run may switch it)
# what a checkpoint from before a resume key existed ran with (warmup_start_lr: unused by the
# "hwbench" schedule every such checkpoint ran, so today's default)
RESUME_DEFAULTS = {"gate": "channel", "widths": None, "views": "hwbench", "schedule": "hwbench",
                   "warmup_start_lr": 0.003, "shared_downsample_bn": False,
                   "gate_noise_anneal": 0.0, "gate_bias": "learned", "gate_warmup": False}
# the option that gives a resumed run an older checkpoint's value, for the error message
RESUME_HINTS = {"shared_downsample_bn": "--separate-downsample-bn", "schedule": "--schedule"}
SCHEDULES = ("hwbench", "reference")
GATE_BIAS = ("learned", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")


# a preset, not yet measured here (docs/latency-targets.md, "Training what is deployed"):
# issue 23 saw, with the paper's noise to the end, a short run's deployed network at half the
# MACs the training estimate saw and a gated kNN below the randomly initialised network's
GATE_NOISE_ANNEAL = 0.4
FINETUNE_SHARE = 0.25  # --finetune-steps auto: a quarter of the training's steps (a preset)


@dataclass
class TrainConfig:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    arch: str = "resnet18"
    method: str = "co"
    t_d: float = 0.5
    epochs: int = 10  # with time_budget_s: the most the budget may choose
    batch_size: int = 128  # global: split over the processes under DDP
    lr: float | None = None  # base learning rate, scaled by batch_size / 256; None: choose_lr
    weight_decay: float = 1e-4
    eta: float = 0.02
    warmup_epochs: int = 1
    gate_lr_mult: float = 1.0  # the gates' learning rate / the backbone's (reference: 1)
    lam: float = 5.0
    gamma: float = 1.0
    alpha: float = 0.02  # the bound's slack decays as p = exp(-alpha * epoch)
    # the last share of the steps over which the gates' training noise goes to 0 (``noise_at``):
    # the network trained at the end is the one deployed. 0: the paper's noise throughout
    gate_noise_anneal: float = GATE_NOISE_ANNEAL
    # the gates' last layer: "learned" (hwbench's trainable bias) or "none" (fixed at 0, as the
    # reference's bias-free fc2; channel gates only: a width gate's bias is its starting width)
    gate_bias: str = "learned"
    # the reference's warmup_gate: the learning rate's warm-up epochs train the gated stream
    # with every channel on and without the sparsity, bound and latency terms
    gate_warmup: bool = False
    # recovery fine-tuning of the delivered network after a latency target's trim (hwbench.
    # finetune), in steps: 0 none; None FINETUNE_SHARE of the training's steps (the CLI's
    # default for a latency target); a --time-budget run plans for them
    finetune_steps: int | None = 0
    proj_dims: tuple[int, ...] = (2048, 2048, 2048)
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"
    channels_last: bool = True
    out: str | None = None
    run_name: str | None = None
    models_dir: str = "models"
    resume: bool = False
    eval_every: int = 5
    eval_initial: bool = True  # kNN of the randomly initialised network, the floor to beat
    # the per-epoch kNN monitor's protocol (hwbench.ssl.knn): reference (Euclidean, k 1: the
    # paper's numbers), online (the reference's monitor: Euclidean, k 20) or cosine (k 20, T 0.07)
    knn: str = "cosine"
    # the two views' augmentations (hwbench.data.view_transforms): hwbench (ssl_transform, the
    # same for both views) or reference (the reference scripts' per-data-set pipelines)
    views: str = "hwbench"
    energy: bool = True
    country: str = "USA"  # codecarbon's carbon intensity (ISO 3166 alpha-3)
    max_steps_per_epoch: int | None = None  # for smoke tests
    n_synthetic: int = 512
    decision: dict = field(default_factory=dict)  # how t_d was chosen (profile, prediction)
    # --budget latency (hwbench.budget): the sparsity term targets each device's predicted
    # latency; latency_targets holds DeviceTarget dicts (device, profile, target_ms, percentile)
    budget: str = "flops"
    sparsity_on: str = "sampled"  # or "deployed": whose MACs the sparsity term pulls to t_d
    # the gradient of the noise-free decisions the deployed-gate terms read (nets.gate.SURROGATES)
    surrogate: str = "sigmoid"
    latency_targets: tuple = ()
    budget_shape: str = "two-sided"
    budget_combine: str = "max"
    # wall-clock seconds for the whole train() call (steps, kNN evaluations, final pattern):
    # epochs (and, where one epoch does not fit, max_steps_per_epoch) are sized to it
    time_budget_s: float | None = None
    time_budget: dict = field(default_factory=dict)  # what was measured and chosen for it
    lr_reason: str = ""  # how lr was chosen
    # the gates (nets.gate.parse_gate): "channel" (the paper's) or "width:G" (nested prefixes)
    gate: str = "channel"
    # --width-mult m: every block's gated width x m, rounded to a multiple of G (the width
    # gate's step, 16 for channel gates): the thinner dense baseline (--method dense)
    width_mult: float | None = None
    widths: list | None = None  # per-block gated widths (derived from width_mult; recorded)
    # "hwbench": per-step warm-up from 0, per-step cosine; "reference": the paper's (lr_at)
    schedule: str = "hwbench"
    warmup_start_lr: float = 0.003  # "reference" schedule: epoch 0's rate (not batch-scaled)
    # one downsample BN for both streams (the reference's); False: one per stream (before
    # issue 15)
    shared_downsample_bn: bool = True
    vicreg_gather: bool = False  # under DDP: VICReg of the gathered global batch, not per rank
    recipe: str | None = None  # the preset this config was resolved from (hwbench.recipe)
    # DataLoader worker processes per training process (None: data.auto_workers, 0 for sets in
    # memory); the augmentations' random draws depend on it, so resume with the same number
    workers: int | None = None
    # the objective's forward (both streams and the losses) through torch.compile (after DDP
    # wrapping); not a resume key: a run may be resumed with or without it
    compile: bool = False


# --budget latency's own defaults, measured (docs/latency-targets.md, "Training against device
# latency"): with the paper's lambda 5 a latency term moves too slowly for short runs (4 epochs:
# 7.7 -> 6.2 ms predicted for a 2.97 ms target); lambda 50 reaches 4.35 ms in 3 epochs. The
# linear surrogate was measured too and is not the default (docs/latency-targets.md).
LATENCY_DEFAULTS = {"lam": 50.0, "surrogate": "sigmoid"}
PAPER_DEFAULTS = {"lam": 5.0, "surrogate": "sigmoid"}


def budget_defaults(budget: str, lam: float | None = None, surrogate: str | None = None) -> dict:
    """lam and surrogate for ``budget``, where the user gave none."""
    base = LATENCY_DEFAULTS if budget == "latency" else PAPER_DEFAULTS
    return {"lam": base["lam"] if lam is None else lam,
            "surrogate": base["surrogate"] if surrogate is None else surrogate}


def latency_budget(cfg: TrainConfig):
    """The ``--budget latency`` term for ``cfg`` (None for the paper's MACs budget)."""
    if cfg.budget != "latency":
        return None
    from hwbench.budget import LatencyBudget, LatencyEstimate
    from hwbench.profiles import load_profile

    if not cfg.latency_targets:
        raise UsageError("--budget latency needs --target-latency (the latency to train for)")
    meta = info(cfg.dataset)
    estimates = []
    for t in cfg.latency_targets:
        est = LatencyEstimate(load_profile(t["profile"]), t.get("percentile", "p90"),
                              gate=cfg.gate)
        if (est.arch, est.stem, est.input_size) != (cfg.arch, meta.stem, meta.input_size):
            raise UsageError(f"{t['profile']} profiles {est.arch}/{est.stem}/{est.input_size}px; "
                             f"this run trains {cfg.arch}/{meta.stem}/{meta.input_size}px")
        estimates.append(est)
    return LatencyBudget(estimates, [t["target_ms"] for t in cfg.latency_targets],
                         cfg.budget_shape, cfg.budget_combine)


def resolve_net(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its gate in canonical text and ``widths`` derived from ``width_mult`` (the
    step: the width gate's G, or 16 for channel gates); a one-line UsageError for a bad
    ``--gate``, ``--width-mult`` or widths that are not multiples of G."""
    spec = parse_gate(cfg.gate)
    widths = cfg.widths
    if cfg.width_mult is not None:
        step = spec.step if spec.kind == "width" else 16
        derived = width_mult_widths(cfg.arch, cfg.width_mult, step)
        if widths is not None and [int(w) for w in widths] != derived:
            raise UsageError(f"--width-mult {cfg.width_mult:g} gives widths {derived}, the "
                             f"config says {list(widths)}")
        widths = derived
    full = [b.width for b in net_geometry(cfg.arch, "cifar", 32).blocks]
    if widths is not None:
        if len(widths) != len(full) or not all(int(w) >= 1 for w in widths):
            raise UsageError(f"widths: {cfg.arch} needs {len(full)} positive per-block widths, "
                             f"got {list(widths)}")
        widths = [int(w) for w in widths]
    spec.check_widths(full if widths is None else widths)
    return replace(cfg, gate=spec.text, widths=widths)


def validate(cfg: TrainConfig, files: bool = True) -> None:
    """A one-line UsageError for any bad value of ``cfg`` (and, with ``files``, for a data set
    whose files are missing), before any long work."""
    if files:
        check_files(cfg.dataset, cfg.data_dir, cfg.download)
    if cfg.arch not in list_nets():
        raise UsageError(f"unknown network {cfg.arch!r}; registered: {', '.join(list_nets())}")
    resolve_net(cfg)
    if cfg.method not in METHODS:
        raise UsageError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    if not 0 < cfg.t_d <= 1:
        raise UsageError(f"--t-d must be in (0, 1], got {cfg.t_d}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise UsageError("--epochs must be >= 1 and --batch-size >= 2")
    if cfg.finetune_steps is not None and cfg.finetune_steps < 0:
        raise UsageError(f"--finetune-steps must be >= 0 (0: no fine-tuning), got "
                         f"{cfg.finetune_steps}")
    if not (math.isfinite(cfg.gate_noise_anneal) and 0 <= cfg.gate_noise_anneal <= 1):
        raise UsageError(f"--gate-noise-anneal must be in [0, 1], got {cfg.gate_noise_anneal}")
    if cfg.gate_bias not in GATE_BIAS:
        raise UsageError(f"--gate-bias must be one of {', '.join(GATE_BIAS)}, got "
                         f"{cfg.gate_bias!r}")
    if cfg.gate_bias == "none" and parse_gate(cfg.gate).kind != "channel":
        raise UsageError(f"--gate-bias none is for channel gates: a {cfg.gate} gate's bias is "
                         "its starting width: pass --gate-bias learned")
    if cfg.sparsity_on not in ("sampled", "deployed"):
        raise UsageError(f"--sparsity-on must be sampled or deployed, got {cfg.sparsity_on!r}")
    from hwbench.nets.gate import SURROGATES

    if cfg.surrogate not in SURROGATES:
        raise UsageError(f"--surrogate must be one of {', '.join(SURROGATES)}, got "
                         f"{cfg.surrogate!r}")
    if cfg.budget not in ("flops", "latency"):
        raise UsageError(f"--budget must be flops or latency, got {cfg.budget!r}")
    if cfg.budget == "latency" and cfg.method == "dense":
        raise UsageError("--budget latency trains gates: use --method co or gated")
    if cfg.time_budget_s is not None and not (math.isfinite(cfg.time_budget_s)
                                              and cfg.time_budget_s > 0):
        raise UsageError(f"--time-budget must be a positive duration, got {cfg.time_budget_s} s")
    check_views(cfg.dataset, cfg.views)
    if cfg.knn not in KNN_PROTOCOLS:
        raise UsageError(f"--knn must be one of {', '.join(KNN_PROTOCOLS)}, got {cfg.knn!r}")
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                         f"{cfg.schedule!r}")
    if not (math.isfinite(cfg.warmup_start_lr) and cfg.warmup_start_lr >= 0):
        raise UsageError(f"--warmup-start-lr must be >= 0, got {cfg.warmup_start_lr}")
    if cfg.workers is not None and cfg.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    amp_dtype(cfg.amp, torch.device(cfg.device))  # fp16 without CUDA fails here, before any work
    if cfg.compile:
        check_compile(torch.device(cfg.device))


# torch.compile's backend for --compile (tests swap in a faster one to check the wiring)
COMPILE_BACKEND = "inductor"


def check_compile(device: torch.device) -> None:
    """A one-line UsageError where ``--compile`` cannot run on ``device``: no TorchDynamo for
    this Python, a CPU without a C++ compiler, a GPU without Triton, another device type."""
    import shutil

    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        raise UsageError(f"--compile: torch {torch.__version__} has no torch.compile for this "
                         "Python; train without --compile")
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "")
        if not any(shutil.which(c) for c in (cxx, "g++", "c++", "clang++") if c):
            raise UsageError("--compile on a CPU needs a C++ compiler (g++ or clang++; none "
                             "found); install one or train without --compile")
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise UsageError("--compile on a GPU needs Triton (pip install triton); train "
                             "without --compile")
    else:
        raise UsageError(f"--compile runs on cpu or cuda, not {device.type}")


def run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.dataset}_{cfg.arch}_{cfg.method}_td{cfg.t_d:g}_s{cfg.seed}"
    return Path(cfg.out) if cfg.out else Path("results") / name


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32); see ``amp_choice``."""
    return amp_choice(amp, device)[0]


def amp_choice(amp: str, device: torch.device,
               cpuinfo: str | None = None) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32) and why. ``auto`` takes bf16
    where the hardware runs it natively and fast (CPUs whose ``cpuinfo`` flags name AMX,
    GPUs from Ampere), fp16 on older GPUs, and fp32 on other CPUs. ``cpuinfo``: the text of
    /proc/cpuinfo (read when None; tests pass their own)."""
    if amp == "off":
        return None, "--amp off"
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA device (use bf16 on CPUs)")
        return torch.float16, "--amp fp16"
    if amp == "bf16":
        return torch.bfloat16, "--amp bf16"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "--amp auto: the GPU runs bf16 natively"
        return torch.float16, "--amp auto: the GPU has no bf16: fp16 with gradient scaling"
    native, why = cpu_bf16_native(cpuinfo)
    return (torch.bfloat16 if native else None), f"--amp auto: {why}"


# AMX runs bf16 matrix products natively and fast. AVX512-BF16 alone does not pay: on the
# project's 2-core Xeon VM with avx512_bf16 and no AMX, a co-training step (resnet18, batch 128,
# 32 px) took 6.8 s under bf16 autocast against 4.6 s in fp32 (measured 2026-11-30, 3 steps each,
# interleaved). Without either flag bf16 is emulated, about 3x slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16",)


def cpu_bf16_native(cpuinfo: str | None = None,
                    path: str | os.PathLike = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether bf16 autocast pays on this CPU, and why: one of ``BF16_CPU_FLAGS`` (AMX) in every
    x86 ``flags`` line of ``cpuinfo`` (the text; read from ``path`` when None). AVX512-BF16
    without AMX measured slower than fp32, and without either bf16 is emulated (oneDNN's own
    test, ``_is_mkldnn_bf16_supported``, says yes to any AVX-512 CPU). Other CPUs (no x86 flags
    lines) and an unreadable file count as not native."""
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return False, f"cannot read {path} ({exc.__class__.__name__})"
    flag_sets = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                 if ":" in line and line.split(":", 1)[0].strip() == "flags"]
    if not flag_sets:
        return False, "no x86 CPU flags in cpuinfo, so no known native bf16"
    common = set.intersection(*flag_sets)
    native = [f for f in BF16_CPU_FLAGS if f in common]
    if native:
        return True, f"the CPU runs bf16 natively ({', '.join(native)})"
    if "avx512_bf16" in common:
        return False, ("the CPU has avx512_bf16 but no AMX: bf16 training measured slower than "
                       "fp32 on such a CPU (6.8 vs 4.6 s a step)")
    return False, ("the CPU has neither avx512_bf16 nor amx_bf16: bf16 would be emulated, "
                   "slower than fp32")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step``; the peak is the base lr x batch / 256.

    "hwbench": linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0, per step.
    "reference" (the paper's scripts: pl_bolts' LinearWarmupCosineAnnealingLR stepped once per
    epoch), constant within an epoch e: with W = warmup_epochs and E = epochs,
    e < W: warmup_start_lr + e (peak - warmup_start_lr) / max(1, W - 1) (the peak at e = W - 1);
    e >= W: peak (1 + cos(pi (e - W) / (E - W))) / 2. W = 0: the cosine from epoch 0."""
    peak = cfg.lr * cfg.batch_size / 256
    if cfg.schedule == "reference":
        return _reference_lr(peak, cfg.warmup_start_lr, step // max(1, steps_per_epoch),
                             cfg.warmup_epochs, cfg.epochs)
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def noise_at(anneal: float, step: int, total_steps: int) -> float:
    """The gates' training-noise scale at global step ``step`` of ``total_steps``: 1 (the
    paper's Gumbel-sigmoid) until the last ``anneal`` share of the steps, then linearly to 0
    over the first half of that share, and 0 for its second half: the gates train on the
    decisions the deployed network takes, and so does the rest of the network."""
    if anneal <= 0 or total_steps <= 0:
        return 1.0
    start, span = 1.0 - anneal, anneal / 2
    progress = step / total_steps
    return float(min(1.0, max(0.0, 1.0 - (progress - start) / span)))


def _reference_lr(peak: float, start: float, epoch: int, warmup: int, epochs: int) -> float:
    if epoch < warmup:
        return start + epoch * (peak - start) / max(1, warmup - 1)
    return peak * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


PAPER_LR = 0.3
# measured on mnist5k (docs/training.md, "Co-training"): with lr 0.3 the features collapse
# within ~400 steps (kNN 58 % after 4 epochs); lr 0.05 improved the dense kNN by 4.1 points in
# 13 epochs
SHORT_RUN_LR, SHORT_RUN_STEPS = 0.05, 2000


def choose_lr(lr: float | None, steps: int | None, budgeted: bool) -> tuple[float, str]:
    """The base learning rate and why: ``lr`` where given; else 0.05 for a ``--time-budget``
    run of fewer than 2000 steps in all, and the paper's 0.3 otherwise."""
    if lr is not None:
        return lr, "given (--lr)"
    if budgeted and steps is not None and steps < SHORT_RUN_STEPS:
        return SHORT_RUN_LR, (f"a --time-budget run of {steps} steps (< {SHORT_RUN_STEPS}): the "
                              f"paper's {PAPER_LR:g} collapsed the features of short runs "
                              "(docs/training.md)")
    return PAPER_LR, "the paper's" + (f": a --time-budget run of {steps} steps "
                                      f"(>= {SHORT_RUN_STEPS})" if budgeted and steps else "")


BUDGET_MARGIN = 0.10  # of the time budget, left for what the plan does not model
BUDGET_MAX_EPOCHS = 1000  # a --time-budget run without --epochs: in practice, as many as fit


def plan_epochs(budget_s: float, step_s: float, eval_s: float, steps_per_epoch: int,
                eval_every: int, max_epochs: int, *, spent_s: float = 0.0,
                save_s: float = 0.0, final_s: float = 0.0,
                margin: float = BUDGET_MARGIN, extra_share: float = 0.0) -> dict:
    """How many epochs fit a time budget (all times in seconds).

    A run of E epochs of S steps costs E * (S * step_s * (1 + extra_share) + save_s) (steps,
    ``extra_share`` of them again for the fine-tuning after training, and a checkpoint per
    epoch) + ceil(E / eval_every) * eval_s (a kNN evaluation every ``eval_every`` epochs and
    after the last) + final_s (the pattern summary), on top of ``spent_s`` (loading, the
    initial evaluation, the measuring). The plan is the most epochs, at most ``max_epochs``,
    whose total is within (1 - margin) x budget_s; where not one epoch fits, one epoch of as
    many steps as fit. UsageError where not even one step does."""
    usable = budget_s * (1 - margin) - spent_s

    def cost(epochs: int, steps: int) -> float:
        return (epochs * (steps * step_s * (1 + extra_share) + save_s)
                + math.ceil(epochs / eval_every) * eval_s + final_s)

    lo, hi = 0, max_epochs  # cost rises with epochs: the largest that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid, steps_per_epoch) <= usable else (lo, mid - 1)
    epochs, steps = lo, steps_per_epoch
    if epochs == 0:
        epochs = 1
        steps = min(steps_per_epoch,
                    math.floor((usable - save_s - eval_s - final_s)
                               / (step_s * (1 + extra_share))) if step_s > 0
                    else steps_per_epoch)
        while steps >= 1 and cost(1, steps) > usable:  # floor's rounding, the other way
            steps -= 1
        if steps < 1:
            raise UsageError(
                f"--time-budget {budget_s:g} s is too short for this run: after {spent_s:.1f} s "
                f"of loading and measuring, one step ({step_s:.3f} s), one kNN evaluation "
                f"({eval_s:.1f} s) and the rest ({save_s + final_s:.1f} s) do not fit in "
                f"{1 - margin:.0%} of it")
    limited_by = "--epochs" if epochs == max_epochs and steps == steps_per_epoch else "budget"
    return {"budget_s": budget_s, "margin": margin, "spent_s": spent_s, "step_s": step_s,
            "eval_s": eval_s, "save_s": save_s, "final_s": final_s, "max_epochs": max_epochs,
            "epochs": epochs, "steps_per_epoch": steps, "steps": epochs * steps,
            "evaluations": math.ceil(epochs / eval_every), "limited_by": limited_by,
            "finetune_share": extra_share,
            "predicted_s": spent_s + cost(epochs, steps)}


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


@torch.no_grad()
def features(backbone, split: Split, dataset: str, stream: str, device, batch: int = 256,
             amp: torch.dtype | None = None, channels_last: bool = False,
             workers: int = 0) -> torch.Tensor:
    """(N, num_features) fp32 features of one stream over ``split``, in order (eval mode: hard
    gates, running BN)."""
    was = backbone.training
    backbone.eval()
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, _ in eval_batches(split, dataset, batch, workers):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out.append(backbone(x.to(device, memory_format=fmt), stream=stream).float().cpu())
    backbone.train(was)
    return torch.cat(out)


@torch.no_grad()
def eval_macs_ratio(backbone, split: Split, dataset: str, device, batch: int = 256,
                    workers: int = 0) -> float:
    """Mean gated/dense MACs ratio over a data set, hard gates (what the deployed net runs).
    A pass of its own, in fp32 like the deployed engine: under autocast a logit near 0 could
    fall on the other side of the threshold, and this number is judged to +-0.05."""
    was = backbone.training
    backbone.eval()
    total, n = 0.0, 0
    for x, _ in eval_batches(split, dataset, batch, workers):
        r = backbone.forward_gated(x.to(device)).macs_ratio
        total, n = total + float(r.sum()), n + len(r)
    backbone.train(was)
    return total / n


def top1_se(top1_pct: float, n: int) -> float:
    """Binomial standard error (percentage points) of a top-1 measured on ``n`` test images."""
    p = top1_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def streams_of(method: str) -> tuple[str, ...]:
    return {"dense": ("dense",), "gated": ("gated",)}.get(method, ("dense", "gated"))


def evaluate(model: SSLModel, cfg: TrainConfig, train_split: Split, test_split: Split,
             device) -> dict:
    """kNN top-1 (%) of each trained stream by ``cfg.knn``'s protocol (named in the row's
    ``knn_protocol``; its memory bank: the labelled ``train_split``), and the gated MACs ratio
    on the test split.

    In fp32, whatever the training's autocast: that is the precision the deployed network is
    profiled and verified in, and under bf16 gate logits near 0 fall on the other side of the
    threshold often enough to move the gated top-1 by more than a point (measured: 88.6 vs
    90.2 % on one mnist5k run)."""
    res = {}
    workers = cfg.workers or 0
    kw = dict(device=device, amp=None, channels_last=cfg.channels_last, workers=workers)
    for stream in streams_of(cfg.method):
        ftr = features(model.backbone, train_split, cfg.dataset, stream, **kw)
        fte = features(model.backbone, test_split, cfg.dataset, stream, **kw)
        res[f"knn_top1_{stream}"] = knn_top1(ftr, train_split.labels, fte, test_split.labels,
                                             cfg.knn)
    res["knn_test_n"] = len(test_split)
    res["knn_protocol"] = cfg.knn
    if cfg.method != "dense":
        res["eval_macs_ratio"] = eval_macs_ratio(model.backbone, test_split, cfg.dataset, device,
                                                 workers=workers)
    return res


def _param_divergence(model: torch.nn.Module) -> float:
    """Largest |difference| between any process's parameters and rank 0's (0 when DDP keeps
    the replicas in sync, as it must)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, 0)
    div = (flat - ref).abs().max()
    torch.distributed.all_reduce(div, op=torch.distributed.ReduceOp.MAX)
    return float(div)


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    cols = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None,
          energy_factory=None, say: Callable[[str], None] | None = None) -> dict:
    """Co-train per ``cfg``; returns the summary (also written to the run directory).

    ``progress`` is called with epoch, step, steps, epochs, the loss terms, images/s and the
    ETA in seconds after every step on a CPU, and elsewhere every ``READ_EVERY`` steps and
    after an epoch's last (each call reads the terms from the device). ``energy_factory``
    replaces codecarbon (tests). ``say`` takes one-line messages for the user: the precision,
    the ``--time-budget`` plan and the learning rate chosen, and warnings (also in
    ``summary['warnings']``).
    """
    t_start = time.perf_counter()
    validate(cfg)
    # resolved here and below (gate, widths, lr, a time budget's epochs): the caller's stays
    cfg = resolve_net(cfg)
    dist = Dist.from_env()
    device = torch.device(cfg.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if dist.world > 1 and cfg.batch_size % dist.world:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {dist.world} "
                         "processes")
    out = run_dir(cfg)
    own_group = dist.world > 1 and not torch.distributed.is_initialized()
    if own_group:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    run = _Run(cfg, dist, device, out, out / CHECKPOINT, say or (lambda line: None), progress,
               t_start)
    try:
        return _train(run, energy_factory)
    finally:
        if own_group:
            torch.distributed.destroy_process_group()


@dataclass
class _Run:
    """One launch of a training run: what its stages (_train) share."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    ckpt_path: Path
    say: Callable[[str], None]
    progress: Callable[[dict], None] | None
    t_start: float  # time.perf_counter() when train() began (the time budget's clock)
    ck: dict | None = None  # the checkpoint a resumed run continues
    train_split: Split | None = None  # labelled: the kNN memory bank
    test_split: Split | None = None
    amp: torch.dtype | None = None
    amp_reason: str = ""
    fmt: torch.memory_format = torch.contiguous_format
    model: SSLModel | None = None
    objective: torch.nn.Module | None = None
    opt: LARS | None = None
    scaler: torch.amp.GradScaler | None = None
    data: TwoViews | None = None
    steps_per_epoch: int = 0
    start_epoch: int = 0
    history: list = field(default_factory=list)
    initial: dict = field(default_factory=dict)
    segments: list = field(default_factory=list)  # earlier launches' energy
    eval_s: float | None = None  # seconds the initial kNN evaluation took


def _train(run: _Run, energy_factory) -> dict:
    _open_checkpoint(run)
    _setup(run)
    _resume_state(run)
    if run.dist.main and run.cfg.eval_initial and not run.initial:
        t0 = time.perf_counter()
        run.initial = evaluate(run.model, run.cfg, run.train_split, run.test_split, run.device)
        run.eval_s = time.perf_counter() - t0
    _fit_budget(run)
    if run.dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.out / "config.json", {
            **asdict(run.cfg), "world_size": run.dist.world,
            "amp_dtype": str(run.amp).replace("torch.", "") if run.amp else "fp32",
            "amp_reason": run.amp_reason})
    run.dist.barrier()
    meter = None
    if run.dist.main and run.cfg.energy:
        from hwbench.measure.energy import TrainingEnergy

        meter = TrainingEnergy(run.out, run.cfg.country, energy_factory)
        meter.start()
    try:
        _epochs(run)
    finally:
        if meter is not None:
            _save_energy(run, meter.stop())
    return _finish(run)


def _open_checkpoint(run: _Run) -> None:
    """Refuse a run that would overwrite another or resume nothing; load a resumed run's
    checkpoint and check that this launch continues it (a ``--time-budget`` run keeps the
    epochs, steps and learning rate its first launch chose)."""
    cfg, out, path = run.cfg, run.out, run.ckpt_path
    if cfg.resume and not path.exists():
        raise UsageError(f"--resume: no checkpoint at {path}")
    if not cfg.resume and path.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or --out "
                         "elsewhere")
    if not cfg.resume:
        return
    run.ck = torch.load(path, map_location="cpu", weights_only=False)
    old = run.ck["config"]
    if old.get("time_budget") and cfg.time_budget_s == old.get("time_budget_s"):
        run.cfg = cfg = replace(cfg, epochs=old["epochs"], time_budget=old["time_budget"],
                                max_steps_per_epoch=old["max_steps_per_epoch"],
                                **({"lr": old["lr"], "lr_reason": old.get("lr_reason", "")}
                                   if cfg.lr is None else {}))
        run.say(f"resuming with {cfg.epochs} epochs, as --time-budget "
                f"{cfg.time_budget_s:g} s chose at the start of the run")
    elif old.get("time_budget_s") is not None:
        raise UsageError(f"--resume: {path} was sized by --time-budget "
                         f"{old['time_budget_s']:g} s: resume it with that --time-budget")
    if cfg.lr is None or not cfg.lr_reason:  # not adopted: as a new run without a budget
        lr, why = choose_lr(cfg.lr, None, False)
        run.cfg = cfg = replace(cfg, lr=lr, lr_reason=why)
    for key in RESUME_KEYS:
        if old.get(key, RESUME_DEFAULTS.get(key)) != getattr(cfg, key):
            hint = f" (see {RESUME_HINTS[key]})" if key in RESUME_HINTS else ""
            raise UsageError(f"--resume: {path} was run with "
                             f"{key}={old.get(key, RESUME_DEFAULTS.get(key))!r}, "
                             f"not {getattr(cfg, key)!r}{hint}")


def _load_data(run: _Run) -> None:
    """The splits (SSL training: ``data.SSL_SPLIT``; kNN: the labelled train and test splits)
    and the DataLoader workers (``run.cfg.workers``, resolved: ``data.auto_workers``)."""
    cfg = run.cfg
    kw = dict(data_dir=cfg.data_dir, download=cfg.download, n_synthetic=cfg.n_synthetic,
              seed=cfg.seed)
    run.train_split = load_split(cfg.dataset, "train", **kw)
    run.test_split = load_split(cfg.dataset, "test", **kw)
    ssl = load_split(cfg.dataset, "ssl", **kw) if cfg.dataset in SSL_SPLIT else run.train_split
    if cfg.workers is None:
        run.cfg = replace(cfg, workers=auto_workers(ssl.lazy, run.dist.world))
    run.data = TwoViews(ssl, *view_transforms(cfg.dataset, cfg.views))


def _setup(run: _Run) -> None:
    """Data, model (a resumed run's weights), objective (DDP-wrapped under torchrun),
    optimiser, gradient scaler, precision and steps per epoch."""
    _load_data(run)
    cfg, device = run.cfg, run.device
    meta = info(cfg.dataset)
    run.amp, run.amp_reason = amp_choice(cfg.amp, device)
    run.say(f"precision: {str(run.amp).replace('torch.', '') if run.amp else 'fp32'} "
            f"({run.amp_reason})")
    run.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    _seed_everything(cfg.seed)
    model = SSLModel(net_from_config(asdict(cfg), meta.stem), tuple(cfg.proj_dims))
    for _, block in model.backbone.blocks():
        block.gate.surrogate = cfg.surrogate
    if run.ck is not None:
        model.load_state_dict(run.ck["model"])
    if cfg.gate_bias == "none":
        freeze_gate_bias(model)
    model = model.to(device, memory_format=run.fmt)
    objective = Objective(model, CoTrainStep(cfg.method, cfg.t_d, cfg.lam, cfg.gamma,
                                             latency=latency_budget(cfg),
                                             sparsity_on=cfg.sparsity_on,
                                             vicreg_gather=cfg.vicreg_gather).to(device))
    if run.dist.world > 1:
        if device.type == "cuda":
            objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
            model = objective.model
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            # co uses both streams' BatchNorms; dense and gated leave the other stream's unused
            find_unused_parameters=cfg.method != "co" or cfg.gate_warmup)
    if cfg.compile:
        # in place, after DDP wrapping: state_dict keys and the wrapper stay as they are
        objective.compile(backend=COMPILE_BACKEND)
    run.model, run.objective = model, objective
    run.opt = LARS(lars_param_groups(model, cfg.gate_lr_mult), lr=0.0,
                   weight_decay=cfg.weight_decay, eta=cfg.eta)
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.amp == torch.float16)
    run.steps_per_epoch = len(run.data) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        run.steps_per_epoch = min(run.steps_per_epoch, cfg.max_steps_per_epoch)
    if run.steps_per_epoch < 1:
        raise UsageError(f"--batch-size {cfg.batch_size} exceeds the {len(run.data)} training "
                         "images")


def _resume_state(run: _Run) -> None:
    """A resumed run's optimiser, scaler, epoch, history, initial kNN and energy so far."""
    ck = run.ck
    if ck is None:
        return
    try:  # a checkpoint from before issue 16 has three groups: regrouped as today's four
        run.opt.load_state_dict(upgrade_lars_state(ck["optimizer"], run.model))
    except ValueError as exc:  # e.g. a checkpoint from an older hwbench's parameter groups
        raise UsageError(f"--resume: {run.ckpt_path}'s optimiser state does not fit this "
                         f"version's ({exc})") from None
    if ck.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ck["scaler"])
    run.start_epoch, run.history = ck["epoch"] + 1, ck["history"]
    run.initial = ck.get("initial", {})
    if (run.out / ENERGY).exists():  # the earlier launches' energy: a resumed run adds to it
        run.segments = json.loads((run.out / ENERGY).read_text())["segments"]


def _fit_budget(run: _Run) -> None:
    """Size a new ``--time-budget`` run to this machine: time real steps, a checkpoint and a
    kNN evaluation, choose epochs (``plan_epochs``), then the learning rate for that many
    steps. Other runs only get their learning rate."""
    cfg = run.cfg
    budgeted = cfg.time_budget_s is not None and run.ck is None
    if budgeted:
        step_s, save_s = _measure_step(run)
        plan = None
        if run.dist.main:
            eval_s = run.eval_s if run.eval_s is not None else _estimate_eval_s(run)
            try:
                plan = plan_epochs(cfg.time_budget_s, step_s, eval_s, run.steps_per_epoch,
                                   cfg.eval_every, cfg.epochs,
                                   spent_s=time.perf_counter() - run.t_start, save_s=save_s,
                                   final_s=_final_s(run, eval_s) + step_s * (
                                       cfg.finetune_steps or 0),
                                   extra_share=FINETUNE_SHARE if cfg.finetune_steps is None
                                   else 0.0)
            except UsageError as exc:  # every process must learn of it, not rank 0 alone
                plan = {"error": str(exc)}
        if run.dist.world > 1:  # every process trains rank 0's plan
            box = [plan]
            torch.distributed.broadcast_object_list(box, src=0)
            plan = box[0]
        if "error" in plan:
            raise UsageError(plan["error"])
        if plan["steps_per_epoch"] < run.steps_per_epoch:
            cfg = replace(cfg, max_steps_per_epoch=plan["steps_per_epoch"])
        run.cfg = cfg = replace(cfg, epochs=plan["epochs"], time_budget=plan)
        run.steps_per_epoch = plan["steps_per_epoch"]
        run.say(_plan_line(plan))
    if run.ck is None:  # a resumed run's was settled with its checkpoint (_open_checkpoint)
        steps = cfg.epochs * run.steps_per_epoch
        lr, why = choose_lr(cfg.lr, steps, budgeted)
        ft = (round(FINETUNE_SHARE * steps) if cfg.finetune_steps is None
              else cfg.finetune_steps)
        run.cfg = replace(cfg, lr=lr, lr_reason=why, finetune_steps=ft)
        if budgeted and cfg.lr is None:
            run.say(f"learning rate {lr:g}: {why}")


def _plan_line(plan: dict) -> str:
    return (f"time budget {plan['budget_s']:g} s: on this machine a step takes "
            f"{plan['step_s']:.3f} s, a kNN evaluation {plan['eval_s']:.1f} s, a checkpoint "
            f"{plan['save_s']:.2f} s, and {plan['spent_s']:.1f} s went to loading and "
            f"measuring -> {plan['epochs']} epochs x {plan['steps_per_epoch']} steps "
            f"({plan['evaluations']} kNN evaluation{'' if plan['evaluations'] == 1 else 's'}; "
            f"limited by {plan['limited_by']}), predicted "
            f"{plan['predicted_s']:.0f} s, {plan['margin']:.0%} of the budget kept in reserve")


def _measure_step(run: _Run, warmup: int = 2, timed: int = 3) -> tuple[float, float]:
    """Seconds per training step (the mean of ``timed`` real steps after ``warmup``) and per
    checkpoint (rank 0; 0 elsewhere), on this machine. The steps are undone (_undone): the
    run then trains exactly as one started with the chosen epochs."""
    n = warmup + timed
    # any rate times the same: the paper's where the budget is yet to choose one
    cfg = replace(run.cfg, lr=PAPER_LR if run.cfg.lr is None else run.cfg.lr)
    order = _epoch_order(cfg, len(run.data), 0)
    p = anneal_p(0, cfg.alpha)
    save_s = 0.0
    steps = [s % run.steps_per_epoch for s in range(n)]
    with _undone(run):
        run.model.train()
        for s, views in zip(range(n), _batches(run, order, steps, cfg)):
            if s == warmup:
                _sync(run.device)
                t0 = time.perf_counter()
            _step(run, views, 0, steps[s], p, cfg)
        _sync(run.device)
        step_s = (time.perf_counter() - t0) / timed
        if run.dist.main:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                atomic_torch_save(Path(tmp) / CHECKPOINT, _payload(run, 0))
                save_s = time.perf_counter() - t0
    return step_s, save_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _undone(run: _Run):
    """Put back on exit what a training step changes: weights, BatchNorm statistics,
    gradients, optimiser and scaler state, and every RNG."""
    weights = copy.deepcopy(run.objective.state_dict())
    opt_state = copy.deepcopy(run.opt.state_dict())
    scaler_state = copy.deepcopy(run.scaler.state_dict()) if run.scaler.is_enabled() else None
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None)
    try:
        yield
    finally:
        run.objective.load_state_dict(weights)
        run.opt.load_state_dict(opt_state)
        run.opt.zero_grad(set_to_none=True)
        if scaler_state is not None:
            run.scaler.load_state_dict(scaler_state)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state(rng[3], run.device)


def _eval_images(cfg: TrainConfig, n_train: int, n_test: int) -> int:
    """Images a kNN evaluation runs through the network: both splits per stream, and the
    test split again for the gated MACs ratio."""
    return len(streams_of(cfg.method)) * (n_train + n_test) + (n_test if cfg.method != "dense"
                                                               else 0)


def _estimate_eval_s(run: _Run, n: int = 512) -> float:
    """Seconds a kNN evaluation takes, from a timed one on the first ``n`` images of each
    split, scaled by the images (for runs without the initial evaluation)."""
    tr, te = run.train_split, run.test_split
    part_tr, part_te = tr.subset(range(min(n, len(tr)))), te.subset(range(min(n, len(te))))
    t0 = time.perf_counter()
    evaluate(run.model, run.cfg, part_tr, part_te, run.device)
    dt = time.perf_counter() - t0
    return dt * (_eval_images(run.cfg, len(tr), len(te))
                 / _eval_images(run.cfg, len(part_tr), len(part_te)))


def _final_s(run: _Run, eval_s: float) -> float:
    """Seconds the final pattern summary takes: one gated pass over the test split, costed
    per image like the kNN evaluation."""
    if run.cfg.method == "dense":
        return 0.0
    n_train, n_test = len(run.train_split), len(run.test_split)
    return eval_s * n_test / _eval_images(run.cfg, n_train, n_test)


def _epoch_order(cfg: TrainConfig, n: int, epoch: int) -> torch.Tensor:
    """The epoch's data order: from (seed, epoch) alone, whatever ran before."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))


def _batches(run: _Run, order: torch.Tensor, steps: list[int], cfg: TrainConfig | None = None):
    """(view 1, view 2) of this process's share of each of ``steps``' batches of ``order``,
    on the CPU: made in this process without workers (``cfg.workers`` 0), else by a DataLoader
    whose batch sampler is exactly these index lists (its workers draw their augmentations
    from seeds the DataLoader takes from torch's RNG, reseeded every epoch)."""
    cfg = cfg or run.cfg
    per_rank = cfg.batch_size // run.dist.world
    lo = run.dist.rank * per_rank
    index_lists = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size][lo:lo + per_rank].tolist()
                   for s in steps]
    if not cfg.workers:
        for idx in index_lists:
            items = [run.data[i] for i in idx]
            yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
        return
    loader = DataLoader(run.data, batch_sampler=index_lists, num_workers=cfg.workers,
                        pin_memory=run.device.type == "cuda")
    for v1, v2, _ in loader:
        yield v1, v2


def _step(run: _Run, views: tuple[torch.Tensor, torch.Tensor], epoch: int, s: int, p: float,
          cfg: TrainConfig | None = None) -> dict:
    """Training step ``s`` of ``epoch`` on this process's share of the batch, ``views``
    (``_batches``): the learning rate of ``cfg``'s schedule (the run's by default), one
    optimiser step; returns the loss terms (0-dim device tensors: nothing here waits for the
    device, unless fp16's gradient scaler checks for overflow)."""
    cfg = cfg or run.cfg
    v1 = views[0].to(run.device, memory_format=run.fmt, non_blocking=True)
    v2 = views[1].to(run.device, memory_format=run.fmt, non_blocking=True)
    step = epoch * run.steps_per_epoch + s
    for g in run.opt.param_groups:
        g["lr"] = g["lr_mult"] * lr_at(cfg, step, run.steps_per_epoch)
    set_gate_noise(run.model, noise_at(cfg.gate_noise_anneal, step,
                                       cfg.epochs * run.steps_per_epoch))
    set_warmup(run, cfg.gate_warmup and step < cfg.warmup_epochs * run.steps_per_epoch)
    if run.cfg.compile:  # a tensor: a compiled forward would recompile for each new float
        p = torch.full((), p, dtype=torch.float64, device=run.device)
    with torch.autocast(run.device.type, dtype=run.amp or torch.float32,
                        enabled=run.amp is not None):
        loss, terms = run.objective(v1, v2, p)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    return terms


def set_warmup(run: _Run, on: bool) -> None:
    """Open (``on``) or close the gates for this step: the gate warm-up (``gate_warmup``)."""
    set_gates_open(run.model, on)
    objective = getattr(run.objective, "module", run.objective)  # DDP wraps it
    objective.step.gates_open = on


# On a GPU the loss terms are read to the host (a sync: the host waits for the queued step,
# and the GPU then idles while the host launches the next step's first kernels) once every
# READ_EVERY steps and at an epoch's end, not every step. At 25 that idle gap, at most one
# step's host-side launch time, costs <= 4 % even of a launch-bound step, and the progress bar
# still moves every few seconds at GPU step times (0.05-0.3 s). On a CPU a read is free.
READ_EVERY = 25


def read_every(device: torch.device) -> int:
    """Steps between host reads of the loss terms on ``device`` (1 on a CPU)."""
    return 1 if device.type == "cpu" else READ_EVERY


# What the network is at the end of an epoch, for the fidelity check (``pipeline.fidelity``):
# the MACs and latency terms averaged over the epoch's last quarter of steps only (``end_*``),
# not over the whole epoch, in which a short run's network is still moving (the EPYC make run of
# issue 23: 1 epoch of 9 steps; the epoch mean of the predicted p90 was 13 % above the deployed
# network's, at equal MACs).
END_SHARE = 0.25
END_TERMS = ("macs_ratio", "deployed_macs_ratio")


def end_steps(steps_per_epoch: int) -> int:
    """The epoch's last steps whose mean is its ``end_*`` terms."""
    return max(1, math.ceil(END_SHARE * steps_per_epoch))


def _epochs(run: _Run) -> None:
    """The remaining epochs, each reseeded from (seed, epoch, rank), evaluated on its cadence,
    logged and checkpointed. The terms are summed on the device (float64, in step order: the
    same sums as on the host) and read at ``read_every``'s cadence for the progress callback
    and once per epoch for the metrics."""
    cfg, spe = run.cfg, run.steps_per_epoch
    clock = {"done": 0, "total": (cfg.epochs - run.start_epoch) * spe,
             "t_run": time.perf_counter()}
    every = read_every(run.device)
    run.model.train()
    for epoch in range(run.start_epoch, cfg.epochs):
        p = anneal_p(epoch, cfg.alpha)
        _seed_everything(cfg.seed * 100_003 + epoch * 1_009 + run.dist.rank)
        order = _epoch_order(cfg, len(run.data), epoch)
        sums, tail, names = None, None, []
        t0 = time.perf_counter()
        for s, views in zip(range(spe), _batches(run, order, list(range(spe)))):
            terms = _step(run, views, epoch, s, p)
            names, values = list(terms), torch.stack(list(terms.values()))
            sums = values if sums is None else sums + values
            if s >= spe - end_steps(spe):
                tail = values if tail is None else tail + values
            clock["done"] += 1
            if run.progress and run.dist.main and ((s + 1) % every == 0 or s + 1 == spe):
                elapsed = time.perf_counter() - clock["t_run"]
                run.progress({"epoch": epoch, "epochs": cfg.epochs, "step": s + 1, "steps": spe,
                              **dict(zip(names, values.tolist())),
                              "images_per_s": (s + 1) * cfg.batch_size
                              / (time.perf_counter() - t0),
                              "eta_s": elapsed / clock["done"] * (clock["total"] - clock["done"])})
        means = dict(zip(names, (v / spe for v in sums.tolist())))
        means |= {f"end_{k}": v / end_steps(spe) for k, v in zip(names, tail.tolist())
                  if k in END_TERMS or k.startswith("latency_ms_")}
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "p": p, "lr": run.opt.param_groups[0]["lr"], "seconds": dt,
               "images_per_s": spe * cfg.batch_size / dt, **means}
        if run.dist.main:
            _end_epoch(run, epoch, row)
        run.dist.barrier()


def _payload(run: _Run, epoch: int) -> dict:
    return {"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
            "scaler": run.scaler.state_dict(), "epoch": epoch, "history": run.history,
            "initial": run.initial, "config": asdict(run.cfg)}


def _end_epoch(run: _Run, epoch: int, row: dict) -> None:
    """Rank 0: the epoch's kNN evaluation (on its cadence), metrics and checkpoint."""
    cfg = run.cfg
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
        row.update(evaluate(run.model, cfg, run.train_split, run.test_split, run.device))
    run.history.append(row)
    # rewritten whole from the history, like the checkpoint: an interrupted write never leaves
    # a duplicate or half line for the resumed run to append to
    atomic_write_text(run.out / "metrics.jsonl",
                      "".join(json.dumps(r) + "\n" for r in run.history))
    _write_metrics_csv(run.out / "metrics.csv", run.history)
    atomic_torch_save(run.ckpt_path, _payload(run, epoch))


def _save_energy(run: _Run, segment: dict) -> None:
    from hwbench.measure.energy import total_energy

    run.segments.append(segment)
    atomic_write_json(run.out / ENERGY, {
        "schema": "hwbench/training-energy@1", "segments": run.segments,
        "total": total_energy(run.segments),
        "note": "codecarbon: 'measured' components come from hardware counters (RAPL, "
                "NVML); 'estimated' ones from its power model"})


def feature_warnings(initial: dict, final: dict) -> list[str]:
    """A warning for each stream whose final kNN top-1 is below the randomly initialised
    network's: training made its features worse (too short a run, too high a rate)."""
    warnings = []
    n = final.get("knn_test_n", 0)
    for stream in ("dense", "gated"):
        key = f"knn_top1_{stream}"
        if key in final and key in initial and final[key] < initial[key]:
            warnings.append(
                f"WARNING: the {stream} stream's final kNN top-1 ({final[key]:.2f} % "
                f"± {top1_se(final[key], n):.2f}) is below the randomly initialised network's "
                f"({initial[key]:.2f} %): training made its features worse; train longer or "
                "with a lower --lr")
    return warnings


def _finish(run: _Run) -> dict:
    """After the last epoch: warnings, summary.json and (gated runs) the learned pattern."""
    dist, cfg, out = run.dist, run.cfg, run.out
    divergence = _param_divergence(run.model) if dist.world > 1 else 0.0
    if not dist.main:
        return {}
    name = out.name
    summary = {"run": name, "dir": str(out), "config": asdict(cfg), "initial": run.initial,
               "final": run.history[-1], "world_size": dist.world,
               "warnings": feature_warnings(run.initial, run.history[-1])}
    for line in summary["warnings"]:
        run.say(line)
    if dist.world > 1:
        summary["ddp_max_param_divergence"] = divergence
    if (out / ENERGY).exists():
        summary["energy"] = json.loads((out / ENERGY).read_text())["total"]
    if cfg.method != "dense":
        batches = eval_batches(run.test_split, cfg.dataset, 256, cfg.workers or 0)
        pattern = summarise(run.model.backbone, batches, run.device, dataset=cfg.dataset,
                            t_d=cfg.t_d, run=name)
        pattern.t_d = cfg.t_d
        pattern.save(out / "pattern.json")
        pattern.save(Path(cfg.models_dir) / f"{name}.json")
        summary["pattern"] = str(Path(cfg.models_dir) / f"{name}.json")
    if cfg.time_budget:  # this launch's wall time against the plan
        summary["time_budget"] = {**cfg.time_budget,
                                  "elapsed_s": time.perf_counter() - run.t_start}
    atomic_write_json(out / "summary.json", summary)
    return summary
