"""Named training recipes and where each value comes from.

``paper``: the values the paper's official pre-training scripts set (KrishnaTarun/Unification,
commit f0fe435), per data set, each with the ``file:line`` it was read from. Paths are relative
to that repository; ``<ds>.sh:N`` is line N of ``bash_files/pretrain/<ds>/vicreg_gating.sh``.
Only values hwbench has an equivalent for are here; ``fixed`` lists what the reference sets that
hwbench always does (no option), and ``not_set`` what the reference leaves to a sweep.

``resolve_recipe`` merges a recipe with the options given explicitly and hwbench's defaults and
says, for every value, which of the four it came from: ``flag`` (given explicitly: always wins),
``reference`` (the script, with its line), ``preset`` (hwbench's choice where the reference has
no value that works here) or ``default`` (hwbench's own default).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace

from hwbench.errors import UsageError

REFERENCE = "KrishnaTarun/Unification@f0fe435"
RECIPES = ("paper",)
PAPER_DATASETS = ("cifar10", "cifar100", "stl10", "imagenet100")
SOURCE_KINDS = ("flag", "reference", "preset", "default")

# The values a recipe may set, in the order ``format_recipe`` prints them.
FIELDS = ("method", "arch", "epochs", "batch_size", "lr", "schedule", "warmup_epochs",
          "warmup_start_lr", "weight_decay", "eta", "gate_lr_mult", "lam", "gamma", "alpha",
          "t_d", "proj_dims", "amp", "seed", "views", "knn", "shared_downsample_bn",
          "vicreg_gather", "gate_noise_anneal", "gate_bias", "gate_warmup")

# Defaults of fields that other parts of issue 15 add to TrainConfig (the shared names); used
# where the caller passes no defaults for them.
EXTRA_DEFAULTS = {"views": "hwbench", "knn": "cosine", "schedule": "hwbench",
                  "warmup_start_lr": 0.003, "shared_downsample_bn": True, "vicreg_gather": False}


@dataclass(frozen=True)
class Source:
    """Where a resolved value came from: ``kind`` (one of SOURCE_KINDS) and the detail."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}" if self.where else self.kind


# Line of each option in each data set's script (the four scripts differ by a line or two).
_LINES = {
    "cifar10": dict(backbone=11, epochs=15, gpus=16, sync_bn=18, precision=19, optimizer=20,
                    scheduler=21, lars=22, clip=23, eta=24, exclude=25, lr=26, wd=27, batch=28,
                    crop=30, min_scale=31, gaussian=37, td=4, lbda=44, gamma=45, alpha=46,
                    method=47, proj_hidden=49, proj_out=50, sim=51, cov=53, separate_bn=56),
    "cifar100": dict(backbone=12, epochs=16, gpus=17, sync_bn=19, precision=20, optimizer=21,
                     scheduler=26, lars=22, clip=23, eta=24, exclude=25, lr=27, wd=28, batch=29,
                     crop=31, min_scale=32, gaussian=38, td=5, lbda=45, gamma=46, alpha=47,
                     method=48, proj_hidden=50, proj_out=51, sim=52, cov=54, separate_bn=57),
    "stl10": dict(backbone=13, epochs=17, gpus=18, sync_bn=20, precision=21, optimizer=22,
                  scheduler=27, lars=23, clip=24, eta=25, exclude=26, lr=29, wd=30, batch=31,
                  crop=33, min_scale=34, gaussian=40, td=6, lbda=47, gamma=48, alpha=49,
                  method=50, proj_hidden=52, proj_out=53, sim=54, cov=56, separate_bn=58),
    "imagenet100": dict(backbone=13, epochs=17, gpus=18, sync_bn=20, precision=21, optimizer=22,
                        scheduler=27, lars=23, clip=24, eta=25, exclude=26, lr=29, wd=30,
                        batch=31, crop=33, min_scale=34, gaussian=40, td=6, lbda=47, gamma=48,
                        alpha=49, method=50, proj_hidden=52, proj_out=53, sim=54, cov=56,
                        separate_bn=59),
}
# bash_files/knn/<ds>/knn.sh: the lines of --feature_type backbone, --distance_function
# euclidean and --k 1 (the protocol of the kNN numbers the paper reports)
_KNN_LINES = {"cifar10": (19, 23, 24), "cifar100": (20, 24, 25), "stl10": (24, 28, 29),
              "imagenet100": (20, 24, 25)}
PER_GPU_BATCH, GPUS = 256, 2


def _paper(ds: str) -> dict[str, tuple[object, Source]]:
    s = f"{ds}.sh"
    n = _LINES[ds]
    ref = lambda where: Source("reference", where)  # noqa: E731
    feat, dist, k = _KNN_LINES[ds]
    return {
        "method": ("co", ref(f"{s}:{n['method']} (vicreg_gating: gated view 1, dense view 2; "
                             "solo/methods/base_gating.py:642-674)")),
        "arch": ("resnet18", ref(f"{s}:{n['backbone']}")),
        "epochs": (500, ref(f"{s}:{n['epochs']}")),
        "batch_size": (PER_GPU_BATCH * GPUS, ref(
            f"{s}:{n['batch']} ({PER_GPU_BATCH} per GPU) x {s}:{n['gpus']} ({GPUS} GPUs, "
            f"DDP); hwbench's batch is global")),
        "lr": (0.3, ref(f"{s}:{n['lr']}; peak = lr x global batch / 256 = "
                        f"{0.3 * PER_GPU_BATCH * GPUS / 256:g} (solo/args/utils.py:224)")),
        "schedule": ("reference", ref(
            f"{s}:{n['scheduler']} warmup_cosine: LinearWarmupCosineAnnealingLR "
            "(solo/methods/base_gating.py:518-525), stepped once per epoch (returned without "
            "an interval, base_gating.py:542)")),
        "warmup_epochs": (10, ref("solo/methods/base_gating.py:439 (default; no script sets it)")),
        "warmup_start_lr": (0.003, ref("solo/methods/base_gating.py:438 (default; not scaled "
                                       "by the batch)")),
        "weight_decay": (1e-4, ref(f"{s}:{n['wd']}")),
        "eta": (0.02, ref(f"{s}:{n['eta']} (LARS {s}:{n['lars']}, clipped {s}:{n['clip']}, "
                          f"biases and norms excluded {s}:{n['exclude']})")),
        "gate_lr_mult": (1.0, ref("solo/methods/base_gating.py:469-470 (the gates: the "
                                  "backbone's lr, no weight decay)")),
        "lam": (5.0, ref(f"{s}:{n['lbda']}")),
        "gamma": (1.0, ref(f"{s}:{n['gamma']}")),
        "gate_noise_anneal": (0.0, ref("solo/methods/ResCg/mask.py:30-36 (Gumbel noise in "
                                       "every training step, to the last; none in eval)")),
        "gate_bias": ("none", ref("solo/methods/ResCg/mask.py:42, 54 (bias=-1, the default: "
                                  "the gate's last conv has no bias)")),
        "gate_warmup": (False, ref(f"no --warmup_gate in {s} (solo/methods/base_gating.py:"
                                   "265-267, 644-646: off unless given)")),
        "alpha": (0.02, ref(f"{s}:{n['alpha']} (p = exp(-alpha x epoch), "
                            "solo/methods/base_gating.py:349, 747)")),
        "proj_dims": ((2048, 2048, 2048), ref(
            f"{s}:{n['proj_hidden']}-{n['proj_out']}; two hidden layers "
            "(solo/methods/vicreg_gating.py:78-86)")),
        "amp": ("fp16", ref(f"{s}:{n['precision']} --precision 16")),
        "seed": (5, ref("main_pretrain_prun.py:62")),
        "views": ("reference", ref(f"{s}:{n['crop']}-{n['gaussian']} (crop, colour, "
                                   "solarisation, blur per view)")),
        "knn": ("reference", Source("preset", (
            f"the protocol of the paper's kNN numbers: bash_files/knn/{ds}/knn.sh:{feat} "
            f"backbone features, :{dist} Euclidean, :{k} k 1; the reference's own per-epoch "
            "monitor is 'online' (solo/methods/base_gating.py:355-360)"
            + ("; stl10 pre-trains without one (main_pretrain_prun.py:245-246)"
               if ds == "stl10" else "")))),
        "shared_downsample_bn": (True, ref(
            f"one BN per downsample (solo/methods/ResCg/resnet_gating.py:322-325); "
            f"--separate_bn ({s}:{n['separate_bn']}) duplicates only the blocks' bn1/bn2 "
            "(resnet_gating.py:65-84)")),
        "vicreg_gather": (False, ref(
            "the loss of each GPU's own batch (solo/methods/vicreg_gating.py:172-178; "
            "solo/losses/vicreg.py:82-108 gathers nothing)")),
    }


PAPER = {ds: _paper(ds) for ds in PAPER_DATASETS}


def fixed(ds: str) -> list[tuple[str, str, str]]:
    """What the reference sets that hwbench always does (no option): (name, what, where)."""
    s, n = f"{ds}.sh", _LINES[ds]
    return [
        ("optimizer", "SGD, momentum 0.9, under LARS",
         f"{s}:{n['optimizer']}; solo/args/utils.py:215-216"),
        ("lars", "clipped trust ratio; biases and norms: no LARS, no weight decay",
         f"{s}:{n['lars']}-{n['exclude']}; solo/utils/lars.py:93-131"),
        ("vicreg weights", "25 / 25 / 1", f"{s}:{n['sim']}-{n['cov']}"),
        ("min lr", "0 at the end of the cosine", "solo/methods/base_gating.py:437"),
        ("sync BN", "SyncBatchNorm under DDP on GPUs", f"{s}:{n['sync_bn']}"),
        ("processes", "2: torchrun --nproc-per-node 2 matches (the batch above is global)",
         f"{s}:{n['gpus']}"),
    ]


def not_set(ds: str) -> dict[str, str]:
    """What the reference sweeps rather than sets, with where."""
    sweep = "0.3-0.5" if ds == "imagenet100" else "0.1-0.5"
    return {"t_d": f"the reference sweeps den-target {sweep} ({ds}.sh:{_LINES[ds]['td']})"}


def recipe_values(recipe: str, dataset: str) -> dict[str, tuple[object, Source]]:
    """``recipe``'s values for ``dataset``: field -> (value, Source); UsageError if unknown."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if dataset not in PAPER:
        raise UsageError(f"--recipe {recipe} has values for {', '.join(PAPER_DATASETS)}; "
                         f"not for {dataset!r}")
    return dict(PAPER[dataset])


def _hwbench_defaults() -> dict:
    from hwbench.train.config import TrainConfig  # loads torch: the CLI reads recipes at --help

    out = dict(EXTRA_DEFAULTS)
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
    return out


def resolve_recipe(recipe: str | None, dataset: str, explicit: dict,
                   defaults: dict | None = None,
                   flags: dict[str, str] | None = None) -> tuple[dict, dict[str, Source]]:
    """(values, sources) of every field in FIELDS: ``explicit`` (field -> value given on the
    command line) wins, then ``recipe``'s value for ``dataset`` (None: no recipe), then
    ``defaults`` (hwbench's: TrainConfig's where None). ``flags``: the option that gave an
    explicit field (e.g. 'lr' -> '--lr'), for its source. The reference's fp16 needs CUDA: on
    another device (``explicit``/``defaults`` 'device') the recipe's amp becomes the preset
    'auto'."""
    table = recipe_values(recipe, dataset) if recipe is not None else {}
    flags = flags or {}
    base = _hwbench_defaults() if defaults is None else {**EXTRA_DEFAULTS, **defaults}
    device = str(explicit.get("device", base.get("device", "cpu")))
    values, sources = {}, {}
    for name in FIELDS:
        if name in explicit:
            values[name], sources[name] = explicit[name], Source("flag", flags.get(name, ""))
        elif name in table:
            values[name], sources[name] = table[name]
        else:
            note = not_set(dataset).get(name, "") if recipe is not None else ""
            values[name], sources[name] = base.get(name), Source("default", note)
    if sources["amp"].kind == "reference" and not device.startswith("cuda"):
        values["amp"] = "auto"
        sources["amp"] = Source("preset", f"the reference trains in fp16 "
                                          f"({table['amp'][1].where}), which needs CUDA; on "
                                          f"{device}: auto")
    return values, sources


# What a value of None means in hwbench's defaults (decided at run time).
NOTES = {"lr": "chosen at run time: 0.3 (the paper's), 0.05 for --time-budget runs of fewer "
               "than 2000 steps"}


def apply_recipe(cfg, recipe: str | None, given) -> tuple[object, dict, dict[str, Source]]:
    """``cfg`` (a TrainConfig built from the options, defaults included) with ``recipe``'s
    values for its data set, except the fields named in ``given`` (set explicitly: they keep
    cfg's value; a dict maps each to the option that set it); returns (cfg, values, sources)
    as ``resolve_recipe``."""
    current = asdict(cfg)
    explicit = {k: current[k] for k in given if k in current}
    flags = dict(given) if isinstance(given, dict) else {}
    values, sources = resolve_recipe(recipe, cfg.dataset, explicit, current, flags)
    known = {f.name for f in fields(cfg)}
    cfg = replace(cfg, **{k: v for k, v in values.items() if k in known})
    if "recipe" in known:
        cfg = replace(cfg, recipe=recipe)
    return cfg, values, sources


def _show(value) -> str:
    if value is None:
        return "auto"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_recipe(values: dict, sources: dict[str, Source], recipe: str | None,
                  dataset: str, notes: dict[str, str] | None = None) -> list[str]:
    """The lines ``hwbench train --dry-run`` prints: one per field (name, value, source; two
    spaces at least between the columns), then what hwbench fixes. ``notes``: a field's text
    for a value of None (decided at run time), e.g. the learning rate."""
    notes = NOTES if notes is None else notes
    head = (f"recipe {recipe} ({REFERENCE}) for {dataset}" if recipe
            else f"hwbench defaults for {dataset} (no --recipe)")
    lines = [head + "; each value: its source (flag > reference > preset > default)"]
    if recipe:
        lines.append(f"  ({dataset}.sh: bash_files/pretrain/{dataset}/vicreg_gating.sh; other "
                     "paths are in the same repository)")
    for name in FIELDS:
        src = sources[name]
        where = src.where or (notes.get(name, "") if values[name] is None else "")
        text = str(Source(src.kind, where))
        lines.append(f"  {name:<21} {_show(values[name]):<18}  {text}")
    if recipe:
        lines.append("fixed in hwbench (no option), as the reference:")
        for name, what, where in fixed(dataset):
            lines.append(f"  {name:<21} {what}  ({where})")
    return lines
