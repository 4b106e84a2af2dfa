"""Recovery fine-tuning of a deployed network: its pattern frozen, a few steps that teach the
gated stream from the dense stream co-trained in the same run (issue 23).

The dense stream shares the gated network's weights and, at short budgets, is far better than
it: a teacher for free. A frozen copy of it (backbone and projector) is taken before the first
step. Each step, on two views v1, v2 of a batch:

    VICReg(P(g(v1)), P_T(T(v2)))  +  distill * mean over v in {v1, v2} of (1 - cos(g(v), T(v)))

g: the gated stream being tuned, with its gates frozen and in eval mode (the deployed,
noise-free decisions; the always-on and always-off channels were closed by ``deploy``, so the
pattern cannot move); P its projector (tuned); T, P_T: the frozen dense stream and projector.
The rest of the gated stream trains (convolutions, its BatchNorms) with LARS, the training's
optimiser, at ``lr_share`` of the run's learning rate: linear warm-up over the first tenth of
the steps, then cosine to 0. The convolutions are shared: the checkpoint's dense stream moves
with them; the teacher's accuracy is the one the run reported.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hwbench.data import SSL_SPLIT, TwoViews, info, load_split, view_transforms
from hwbench.errors import UsageError
from hwbench.nets import net_from_config
from hwbench.ssl.losses import VICRegLoss
from hwbench.ssl.model import LARS, SSLModel, lars_param_groups

# 25: the weight VICReg gives its invariance term, so the two pulls start at one scale (a preset:
# not swept)
DISTILL = 25.0
LR_SHARE = 0.5  # of the run's base learning rate (its schedule ended at 0)
WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int
    distill: float = DISTILL
    lr_share: float = LR_SHARE
    batch_size: int | None = None  # None: the run's
    seed: int = 0

    def check(self) -> FinetuneConfig:
        if self.steps < 0:
            raise UsageError(f"--finetune-steps must be >= 0 (0: no fine-tuning), got "
                             f"{self.steps}")
        if not (math.isfinite(self.distill) and self.distill >= 0):
            raise UsageError(f"the distillation weight must be >= 0, got {self.distill}")
        return self


def load_model(ck: dict) -> SSLModel:
    """The run's backbone and projector from a checkpoint dict (CPU, eval mode)."""
    cfg = ck["config"]
    model = SSLModel(net_from_config(cfg, info(cfg["dataset"]).stem), tuple(cfg["proj_dims"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def freeze_gates(model: SSLModel) -> None:
    """The gates keep their parameters and decide as deployed (eval mode: no noise, running
    BatchNorm statistics)."""
    for _, block in model.backbone.blocks():
        block.gate.requires_grad_(False)
        block.gate.eval()


def step_loss(model: SSLModel, teacher: SSLModel, v1: torch.Tensor, v2: torch.Tensor,
              distill: float, vicreg: VICRegLoss, stream: str = "gated"
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step's loss (the module docstring's; ``stream``: the student's, the gated one but
    for a pruned dense network) and its terms (detached 0-dim tensors on the device: nothing
    here waits for it)."""
    g1, g2 = model.backbone(v1, stream=stream), model.backbone(v2, stream=stream)
    with torch.no_grad():
        t1, t2 = teacher.backbone(v1, stream="dense"), teacher.backbone(v2, stream="dense")
        z_t = teacher.projector(t2)
    vic = vicreg(model.projector(g1).float(), z_t.float())["loss"]
    dist = 0.5 * ((1 - F.cosine_similarity(g1.float(), t1.float())).mean()
                  + (1 - F.cosine_similarity(g2.float(), t2.float())).mean())
    loss = vic + distill * dist
    return loss, {"vicreg": vic.detach(), "distill": dist.detach(), "loss": loss.detach()}


def lr_at(peak: float, step: int, steps: int) -> float:
    warm = max(1, round(WARMUP_SHARE * steps))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _batches(cfg: dict, batch: int, steps: int, seed: int):
    """``steps`` batches (v1, v2) of the run's SSL split, seeded, in this process."""
    kw = dict(data_dir=cfg.get("data_dir"), n_synthetic=cfg.get("n_synthetic", 512),
              seed=cfg.get("seed", 0))
    name = cfg["dataset"]
    split = load_split(name, SSL_SPLIT.get(name, "train"), **kw)
    data = TwoViews(split, *view_transforms(name, cfg.get("views", "hwbench")))
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, len(data))  # lazily loaded sets are read here too: slower, not wrong
    order = torch.randperm(len(data), generator=gen)
    for s in range(steps):
        lo = (s * batch) % max(1, len(data) - batch + 1)
        items = [data[int(i)] for i in order[lo:lo + batch]]
        yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def finetune(ck: dict, fc: FinetuneConfig, device: torch.device,
             amp: torch.dtype | None = None, teacher_ck: dict | None = None,
             stream: str = "gated") -> tuple[SSLModel, dict]:
    """Fine-tune the network of checkpoint dict ``ck`` (a deployed or trimmed run's) for
    ``fc.steps`` steps; returns the tuned model (eval mode, on ``device``) and the record.
    ``teacher_ck``: the teacher's checkpoint (default: ``ck``'s own dense stream); ``stream``:
    the student's (``dense`` for a pruned dense network, taught by the network it was pruned
    from)."""
    fc.check()
    cfg = ck["config"]
    torch.manual_seed(fc.seed)
    model = load_model(ck).to(device)
    teacher = (load_model(teacher_ck).to(device) if teacher_ck is not None
               else copy.deepcopy(model)).eval().requires_grad_(False)
    batch = fc.batch_size or int(cfg.get("batch_size", 128))
    peak = fc.lr_share * float(cfg.get("lr") or 0.05) * batch / 256
    freeze_gates(model)  # their parameters get no gradient: LARS leaves them as they are
    opt = LARS([g for g in lars_param_groups(model) if g["params"]], lr=0.0,
               weight_decay=float(cfg.get("weight_decay", 1e-4)),
               eta=float(cfg.get("eta", 0.02)))
    vicreg, first, last, t0 = VICRegLoss(), None, None, time.perf_counter()
    model.train()
    freeze_gates(model)  # back to eval mode after train()
    for s, (v1, v2) in enumerate(_batches(cfg, batch, fc.steps, fc.seed)):
        for g in opt.param_groups:
            g["lr"] = lr_at(peak, s, fc.steps)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, terms = step_loss(model, teacher, v1.to(device), v2.to(device), fc.distill,
                                    vicreg, stream)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first, last = first or terms, terms
    first, last = ({k: float(v) for k, v in t.items()} if t else None for t in (first, last))
    record = {"steps": fc.steps, "batch_size": batch, "peak_lr": peak, "distill": fc.distill,
              "lr_share": fc.lr_share, "seed": fc.seed, "first": first, "last": last,
              "seconds": time.perf_counter() - t0,
              "student_stream": stream,
              "loss": f"VICReg({stream} view 1, frozen dense view 2) + distill x (1 - cos) to "
                      "the frozen dense stream, both views; gates frozen (deployed decisions)"}
    return model.eval(), record

