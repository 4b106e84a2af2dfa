"""The compact engine: run a gated network so that the channels it skips cost nothing.

Modes (all in eval mode, BatchNorm folded into the convs, same kernels):

- ``dense``: the dense stream; no gates.
- ``masked``: the paper's execution: full-width convs, then multiply by the gate's mask. The
  baseline users have today; it can only be slower than ``dense``.
- ``static``: always-off channels physically removed; always-on and dynamic channels computed,
  the dynamic ones multiplied by their gate's decision.
- ``dynamic``: static, and the dynamic channels that are off for this input are not computed
  either. Always-on weights stay pre-packed; only the dynamic channels that are on are gathered
  per call (cost proportional to them alone). Batch size B > 1 uses the **union** of the batch's
  on-channels (one gather per block per batch), then masks each sample: exact, and it loses
  skipping as B grows (at large B ``dynamic`` tends to ``static``).
  Gathering has a price (on oneDNN, gathered weights are re-laid-out on every call), so with
  ``dynamic_policy="auto"`` each block is timed both ways on this device when the engine is
  built, on representative inputs, and runs the faster: ``split`` (skip) or ``static`` (compute
  the dynamic channels and mask them). ``engine.plan`` records the choice per block.
  Width-gated networks (``--gate width:G``: each input keeps a prefix of a block's channels)
  run ``width`` blocks instead: pre-packed convs per width, no gather, a batch grouped by
  width and scattered back (``hwbench.engine.width.WidthBlock``).

``static`` and ``dynamic`` trust the pattern's always-on/always-off groups (true by construction
for a network realised from the pattern; for a trained network, true on the data it was
summarised on). The gates always run: their cost is real.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from hwbench.engine.executors import (  # noqa: F401  (ChannelGroups: re-exported)
    BasicDynamic,
    BasicFull,
    BasicGatherGemm,
    BasicStatic,
    Bottleneck,
    Builder,
    ChannelGroups,
    channel_groups,
)
from hwbench.engine.fold import fold_bn
from hwbench.engine.inputs import pattern_inputs
from hwbench.engine.kernels import resolve_backend
from hwbench.engine.kinds import BY_WIDTH, engine_kind
from hwbench.engine.width import WidthBlock
from hwbench.errors import UsageError
from hwbench.measure.device import ieee_fp32
from hwbench.measure.protocol import TUNING, Inputs, measure
from hwbench.nets.resnet import GatedBasicBlock, GatedResNet
from hwbench.pattern.gate_pattern import GatePattern, check_tile

MODES = ("dense", "masked", "static", "dynamic")


def _computed(blk) -> int | None:
    """Gated channels a block computes per sample where fixed (static: kept + tile padding;
    gather: the always-on part + padding, plus the dynamic ones on); None where not gated."""
    if isinstance(blk, BasicDynamic):
        return blk.computed_on
    return getattr(blk, "computed", None)


# BY_WIDTH (engine.kinds): the executor of a block whose gate keeps a prefix, per input (an
# execution policy, not a gate kind)
DYNAMIC_POLICIES = ("auto", "static", "gather-conv", "gather-gemm", BY_WIDTH)


def _candidates(block, mode, g, b, in_shape, out_hw, policy, lp=None) -> dict:
    """The executors that may run this block in this mode, built only when they can be chosen.
    A width-gated block in dynamic mode runs the width executor under ``auto`` at batch 1 (no
    tuning: each input at its own width, pre-packed weights); at batch > 1 ``auto`` times it
    against ``static`` per block; other policies as asked."""
    basic = isinstance(block, GatedBasicBlock)
    if mode in ("dense", "masked"):
        if not basic:
            return {mode: Bottleneck(block, mode, None, b, in_shape, out_hw)}
        return {mode: BasicFull(block, "dense" if mode == "dense" else "gated", b, in_shape,
                                 out_hw, masked=mode == "masked")}
    makers = {"static": (lambda: BasicStatic(block, g, b, in_shape, out_hw)) if basic else
              (lambda: Bottleneck(block, "static", g, b, in_shape, out_hw))}
    if mode == "dynamic" and len(g.dyn):
        if basic:
            makers["gather-conv"] = lambda: BasicDynamic(block, g, b, in_shape, out_hw)
            makers["gather-gemm"] = lambda: BasicGatherGemm(block, g, b, in_shape, out_hw)
        else:
            makers["gather-conv"] = lambda: Bottleneck(block, "dynamic", g, b, in_shape, out_hw)
        makers = engine_kind(block.gate.spec).executors(
            makers, lambda: WidthBlock(block, lp, b, in_shape, out_hw), policy, in_shape[0])
    return {name: make() for name, make in makers.items()}


class CompactEngine:
    """An inference-only executable of a ``GatedResNet`` in one mode. Call it on (B, 3, H, W).

    ``dynamic_policy`` (dynamic mode only): ``gather-conv`` / ``gather-gemm`` skip the off
    dynamic channels in every block (gathered weights through the conv kernel, or through two
    GEMMs), ``static`` in none; ``width`` (width-gated networks; else as ``gather-conv``) runs
    each input at its own width; ``auto`` times every candidate per block at build time on this
    device and keeps the fastest (``engine.plan`` says which ran where; a width-gated network
    at batch 1 always runs ``width``).

    ``tile`` (None: the pattern's, else 1): every block's kept channels are padded with zero
    channels up to a multiple of it (static executors; the always-on part of gather executors;
    every width of width executors); ``engine.computed`` lists the channels each block computes
    (``engine.kept`` the pattern's), ``hwbench.engine.tiling.executed_macs`` their MACs.
    On CUDA with the aten kernels, weights and activations are channels-last.
    """
    unpermute_per_block = False  # width blocks at batch > 1: restore the order after each block

    def __init__(self, net: GatedResNet, mode: str, pattern: GatePattern | None = None,
                 backend: str = "auto", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, input_size: int | None = None,
                 batch_size: int = 1, dynamic_policy: str = "auto",
                 tune_inputs: torch.Tensor | list[torch.Tensor] | None = None,
                 tile: int | None = None):
        self.tile = check_tile(tile if tile is not None else
                               (pattern.tile if pattern is not None else 1), "tile")
        if dynamic_policy not in DYNAMIC_POLICIES:
            raise UsageError(f"unknown dynamic policy {dynamic_policy!r}; known: "
                             f"{', '.join(DYNAMIC_POLICIES)}")
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if mode in ("static", "dynamic") and pattern is None:
            raise UsageError(f"mode {mode!r} needs a gate pattern")
        if pattern is not None and (pattern.arch, pattern.stem) != (net.arch, net.stem):
            raise UsageError(f"pattern is for {pattern.arch}/{pattern.stem}, the network is "
                             f"{net.arch}/{net.stem}")
        self.device, self.dtype = torch.device(device), dtype
        ieee_fp32(self.device)
        self.backend = resolve_backend(backend, self.device, dtype)
        self.mode, self.arch, self.stem = mode, net.arch, net.stem
        self.gate = net.gate_spec
        if pattern is not None and pattern.gate != net.gate_spec:
            raise UsageError(f"pattern gates are {pattern.gate.text}, the network's "
                             f"{net.gate_spec.text}")
        self.batch_strategy = engine_kind(net.gate_spec).batch_strategy \
            if mode == "dynamic" else None
        net = net.eval()
        size = input_size or (pattern.input_size if pattern is not None else 32)
        geom = net.geometry((size, size))
        b = Builder(self.backend, self.device, dtype, self.tile)
        self.channels_last_weights = b.channels_last
        stem_w, stem_b = fold_bn(net.conv1.weight, net.bn1)
        self.stem_conv = b.conv(stem_w, stem_b, net.conv1.stride[0], net.conv1.padding[0],
                                (batch_size, 3, size, size))
        self.maxpool = net.stem == "imagenet"
        groups = channel_groups(pattern) if mode in ("static", "dynamic") else None
        self.blocks, choices = [], []
        for i, ((_, block), bg) in enumerate(zip(net.blocks(), geom.blocks)):
            in_shape = (batch_size, bg.in_channels, *bg.in_hw)
            g = groups[i] if groups is not None else None
            lp = pattern.layers[i] if pattern is not None else None
            made = _candidates(block, mode, g, b, in_shape, bg.out_hw, dynamic_policy, lp)
            choices.append(made)
        self.plan: list[str] = []
        if any(len(c) > 1 for c in choices):
            if tune_inputs is None:
                xs = [pattern_inputs(batch_size, size, seed=12345)]
            elif isinstance(tune_inputs, torch.Tensor):
                xs = [tune_inputs]
            else:
                xs = list(tune_inputs)
            self._tune(choices, xs)
        else:
            self.blocks = [next(iter(c.values())) for c in choices]
            self.plan = [next(iter(c)) for c in choices]
        self.kept = pattern.kept_channels() if mode in ("static", "dynamic") else None
        self.computed = [_computed(blk) for blk in self.blocks]

    @torch.inference_mode()
    def _tune(self, choices: list[dict], xs: list[torch.Tensor]) -> None:
        """Per block, time each candidate on this block's real inputs (the activations of
        ``xs`` so far, cycled; ``measure`` under the ``TUNING`` protocol); keep the fastest."""
        hs = [self._stem(x) for x in xs]
        for cands in choices:
            if len(cands) > 1:
                # width blocks timed as the engine runs them at batch > 1 (order not restored)
                fns = {k: (lambda h, blk=c: blk.forward_sorted(h)[0])
                       if isinstance(c, WidthBlock) and hs[0].shape[0] > 1 else c
                       for k, c in cands.items()}
                m = measure(fns, Inputs(hs), TUNING, self.device, reference=None)
                best = min(m.results, key=lambda k: m.results[k]["p50_ms"])
            else:
                best = next(iter(cands))
            self.plan.append(best)
            self.blocks.append(cands[best])
            hs = [cands[best](h) for h in hs]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype, memory_format=torch.channels_last)
        x = self.stem_conv(x, relu=True)
        return F.max_pool2d(x, 3, 2, 1) if self.maxpool else x

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features) features, as ``net.forward_features``."""
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``__call__`` without its inference-mode wrapper (what ``torch.compile`` traces)."""
        x = self._stem(x)
        if x.shape[0] == 1 or self.unpermute_per_block:
            for block in self.blocks:
                x = block(x)
            return x.mean(dim=(2, 3))
        perm = None  # perm[i]: the input sample now at batch position i
        for block in self.blocks:
            if isinstance(block, WidthBlock):
                x, order = block.forward_sorted(x)
                if order is not None:
                    perm = order if perm is None else perm.index_select(0, order)
            else:
                x = block(x)
        f = x.mean(dim=(2, 3))
        return f if perm is None else torch.empty_like(f).index_copy_(0, perm, f)

    @torch.inference_mode()
    def segment_times(self, x: torch.Tensor) -> list[float]:
        """One forward pass timed piece by piece, in context: [stem, block 1..L, head] in ms.
        Their sum is the pass's latency (plus ~1 us of clock reads per piece)."""
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" \
            else (lambda: None)
        out = []
        sync()
        t = time.perf_counter_ns()
        h = self._stem(x)
        for block in [None, *self.blocks]:
            if block is not None:
                h = block(h)
            sync()
            now = time.perf_counter_ns()
            out.append((now - t) / 1e6)
            t = now
        h.mean(dim=(2, 3))
        sync()
        out.append((time.perf_counter_ns() - t) / 1e6)
        return out

    def count_executed(self, on: bool) -> list[int]:
        """Turn counting of executed dynamic channels on/off; returns the counts so far (one
        per block that skips: gather executors count the dynamic channels computed per call,
        the width executor the channels past always-on each input ran, w - always_on)."""
        counts = []
        for blk in self.blocks:
            if isinstance(blk, (BasicDynamic, WidthBlock)):
                blk.count = on
                counts.append(blk.executed)
                if on:
                    blk.executed = 0
        return counts


def build_engine(net: GatedResNet, mode: str, pattern: GatePattern | None = None,
                 **kwargs) -> CompactEngine:
    """Build the inference executable of ``net`` in ``mode`` (see the module docstring)."""
    return CompactEngine(net, mode, pattern, **kwargs)
