"""The engine's executor for a width-gated block (``--gate width:G``): each input keeps a prefix
of the block's channels, so the convs are pre-packed once per width and a batch is grouped by
width and scattered back; at batch 1 no gather and no copy."""

from __future__ import annotations

import torch

from hwbench.engine.executors import Builder, bias_relu, mid_shape
from hwbench.engine.fold import fold_bn
from hwbench.engine.kernels import run_conv
from hwbench.nets.resnet import GatedBasicBlock


class WidthBlock:
    """Width-gated blocks (BasicBlock and Bottleneck) in dynamic mode: each input runs at its
    own width w (a prefix of the gated channels) through convs pre-packed for that width (conv1
    keeps output channels [:w], conv2 input channels [:w]; a Bottleneck's conv2 [:w, :w] and
    conv3 input channels [:w]). No gather, no per-call re-layout; width 0 is shortcut + bias +
    ReLU. Widths in the pattern's histogram are packed at build time, any other width on first
    use (then cached).

    Batch > 1 (``forward_sorted``): the samples are sorted by width, gathered once, and each
    width's samples run as one contiguous sub-batch (a slice: no per-group gather or scatter).
    The engine keeps the batch in that order from block to block (composing the orders) and
    restores the input order once, on the features; ``__call__`` alone restores it per block.
    Packing: one pack per width, chosen for the batch-1 input shape and used
    at every group size. Measured once on a loaded 2-core Xeon (fp32, oneDNN, 3x3 convs of
    128-512 channels, groups of 5-32 inputs; noisy): mostly within noise of packs chosen per
    group size (some sizes 0.7-1.4x), while re-packing for a new size costs 3-15 ms and aten /
    unpacked oneDNN were up to 1.5-5x slower; so no per-(width, group size) packs (their count
    grows with the batch). At batch > 1, ``dynamic_policy="auto"`` also times ``static`` per
    block and keeps the faster (benchmarks/width_engine.py measures the grouped path alone).
    """

    def __init__(self, block, lp, b: Builder, in_shape, out_hw):
        self.bottleneck = not isinstance(block, GatedBasicBlock)
        self.stride = (block.conv2 if self.bottleneck else block.conv1).stride[0]
        convs = (block.conv1, block.conv2, block.conv3) if self.bottleneck else (
            block.conv1, block.conv2)
        bns = (block.bn1, block.bn2, block.bn3) if self.bottleneck else (block.bn1, block.bn2)
        self.w = [fold_bn(c.weight, bn.gated) for c, bn in zip(convs, bns)]
        self.b, self.always_on = b, lp.always_on
        self.in_shape, self.out_hw = (1, *in_shape[1:]), out_hw
        self.bias_out = b.t(self.w[-1][1])
        self.ds = b.shortcut(block, "gated", self.in_shape)
        self.gate = b.gate(block.gate)
        self.gate.bounds = (lp.always_on, lp.always_on + lp.dynamic)
        self.packs: dict[int, tuple] = {}
        for w, _ in lp.widths():
            self._pack(w)
        self.executed = 0  # dynamic channels computed (w - always_on per input), when counting
        self.count = False

    # never traced: a width first met inside a compiled forward must be packed eagerly, or its
    # cached weights would be tensors that reduce-overhead's CUDA graphs later overwrite
    @torch.compiler.disable
    def _pack(self, w: int) -> tuple:
        """The convs of width ``w`` (an empty tuple for width 0), cached; the ``w`` channels
        zero-padded up to the tile."""
        if w not in self.packs:
            b, s, p = self.b, self.stride, self.b.padded(w)
            if w == 0:
                self.packs[w] = ()
            elif self.bottleneck:
                (w1, b1), (w2, b2), (w3, b3) = self.w
                self.packs[w] = (
                    b.conv(*b.pad_rows(w1[:w], b1[:w], w), 1, 0, self.in_shape),
                    b.conv(*b.pad_rows(b.pad_cols(w2[:w, :w], w), b2[:w], w), s, 1,
                           mid_shape(self.in_shape, p, self.in_shape[2:])),
                    b.conv(b.pad_cols(w3[:, :w], w), b3, 1, 0,
                           mid_shape(self.in_shape, p, self.out_hw)))
            else:
                (w1, b1), (w2, b2) = self.w
                self.packs[w] = (b.conv(*b.pad_rows(w1[:w], b1[:w], w), s, 1, self.in_shape),
                                 b.conv(b.pad_cols(w2[:, :w], w), b2, 1, 1,
                                        mid_shape(self.in_shape, p, self.out_hw)))
        return self.packs[w]

    def _run(self, w: int, x: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        """The block at width ``w`` on ``x`` (any batch size) with shortcut ``sc``. Calls the
        kernel on the packed weights directly (``Conv.__call__`` would re-pack per shape)."""
        convs = self._pack(w)
        if not convs:
            return bias_relu(sc, self.bias_out)
        h = x
        for c in convs[:-1]:
            h = run_conv(c.backend, h, c.packed, c.bias, c.stride, c.padding, relu=True)
        c = convs[-1]
        return run_conv(c.backend, h, c.packed, c.bias, c.stride, c.padding, relu=True, add=sc)

    def run_at(self, w: int, x: torch.Tensor) -> torch.Tensor:
        """The block at width ``w`` chosen by the caller (no gate, no host read): what a CUDA
        graph of one width bucket captures (``hwbench.engine.graphs``)."""
        return self._run(w, x, x if self.ds is None else self.ds(x))

    def __call__(self, x):
        """The block on ``x``, samples in their order (batch > 1: ``forward_sorted``, then the
        output scattered back once)."""
        if x.shape[0] == 1:
            sc = x if self.ds is None else self.ds(x)
            w = self.gate.width1(x)
            if self.count:
                self.executed += w - self.always_on
            return self._run(w, x, sc)
        y, order = self.forward_sorted(x)
        if order is None:
            return y
        out = torch.empty_like(y)
        _nhwc(out).index_copy_(0, order, _nhwc(y))
        return out

    def forward_sorted(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch > 1: ``(y, order)``, ``y[i]`` the block's output for ``x[order[i]]``: the
        samples sorted by width (stable), gathered once, each width's samples one contiguous
        sub-batch through that width's convs, written into one output. ``order`` is None when
        every sample has the same width (nothing gathered). One host read per block: the count
        of samples per width (a fixed-size ``bincount``)."""
        widths = self.gate.width(x)
        # a fixed-size count per width with index_add_ (on CUDA, bincount reads its min and
        # max to the host first: two more syncs per block)
        groups = widths // self.gate.step
        counts = torch.zeros(self.gate.w2t.shape[1] + 1, dtype=groups.dtype,
                             device=groups.device).index_add_(0, groups,
                                                               torch.ones_like(groups)).tolist()
        present = [(k * self.gate.step, c) for k, c in enumerate(counts) if c]
        if self.count:
            self.executed += sum(w * c for w, c in present) - self.always_on * x.shape[0]
        if len(present) == 1:
            return self._run(present[0][0], x, x if self.ds is None else self.ds(x)), None
        order = torch.sort(widths, stable=True).indices
        xs = _take(x, order)
        sc = xs if self.ds is None else self.ds(xs)
        out, start = torch.empty_like(sc), 0
        for w, c in present:
            out[start:start + c] = self._run(w, xs[start:start + c], sc[start:start + c])
            start += c
        return out, order


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) tensor viewed (B, H, W, C): contiguous when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1)


def _take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x[order]`` along the batch in one copy, channels-last (gathered as NHWC rows)."""
    return _nhwc(x).index_select(0, order).permute(0, 3, 1, 2)
