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
  width and scattered back (``_WidthBlock``).

``static`` and ``dynamic`` trust the pattern's always-on/always-off groups (true by construction
for a network realised from the pattern; for a trained network, true on the data it was
summarised on). The gates always run: their cost is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hwbench.engine.fold import fold_bn
from hwbench.engine.inputs import pattern_inputs
from hwbench.engine.kernels import Conv, channels_last_weights, resolve_backend, run_conv
from hwbench.engine.tiling import pad_to
from hwbench.errors import UsageError
from hwbench.measure.device import ieee_fp32
from hwbench.nets.gate import kept_groups
from hwbench.nets.resnet import GatedBasicBlock, GatedResNet
from hwbench.patterns import GatePattern, check_tile, round_to_tile

MODES = ("dense", "masked", "static", "dynamic")
BATCH_STRATEGY = "union of the batch's on-channels, then a per-sample mask"
WIDTH_BATCH_STRATEGY = "grouped by width, scattered back"


@dataclass
class ChannelGroups:
    """One block's channel indices: always on, dynamic (the rest are always off)."""

    on: torch.Tensor
    dyn: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.cat([self.on, self.dyn])


def channel_groups(pattern: GatePattern) -> list[ChannelGroups]:
    """Index sets per block: ``on_idx``/``dynamic_idx`` when the pattern has them, else the
    first ``always_on`` channels are on and the next ``dynamic`` ones dynamic."""
    groups = []
    for lp in pattern.layers:
        on = lp.on_idx if lp.on_idx is not None else list(range(lp.always_on))
        if lp.dynamic_idx is not None:
            dyn = lp.dynamic_idx
        else:
            taken = set(on)
            dyn = [c for c in range(lp.channels) if c not in taken][: lp.dynamic]
        groups.append(ChannelGroups(torch.tensor(on, dtype=torch.long),
                                    torch.tensor(dyn, dtype=torch.long)))
    return groups


class _Gate:
    """The gate, BN folded, as two small matmuls; computes only the ``rows`` it is asked for.

    A width gate (``gate.spec.kind == "width"``) outputs one logit per group of G channels and
    its decisions nest: an input keeps channels ``[0, k*G)``, k = the number of leading groups
    whose logit is >= 0 (cumprod of ``logit >= 0``). All its group logits are computed (k needs
    them); the mask is returned for the channel ``rows`` only.
    """

    def __init__(self, gate, rows: torch.Tensor | None = None):
        w1, b1 = fold_bn(gate.fc1.weight.flatten(1), gate.bn)
        w2, b2 = gate.fc2.weight.detach().flatten(1), gate.fc2.bias.detach()
        spec = getattr(gate, "spec", None)
        self.step = spec.step if spec is not None and spec.kind == "width" else None
        self.rows = None
        if self.step is not None:
            if rows is not None:
                self.rows = rows.clone()
        elif rows is not None:
            w2, b2 = w2[rows], b2[rows]
        self.w1t, self.b1 = w1.t().contiguous(), b1
        self.w2t, self.b2 = w2.t().contiguous(), b2.clone()
        # width gates run by a width executor: (always-on, always-on + dynamic) of the pattern,
        # the widths the deployed network can take (its static function: always-on channels
        # never gated, always-off ones removed), so every executor computes the same function
        self.bounds: tuple[int, int] | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.addmm(self.b1, x.mean(dim=(2, 3)), self.w1t).relu_()
        return torch.addmm(self.b2, h, self.w2t)

    def width(self, x: torch.Tensor) -> torch.Tensor:
        """Width gates: (B,) channels each input keeps (k * G), within ``bounds``."""
        w = kept_groups(self.logits(x)) * self.step
        return w if self.bounds is None else w.clamp(*self.bounds)

    def width1(self, x: torch.Tensor) -> int:
        """Width gates, batch 1: the channels the input keeps, as a Python int (the leading
        logits >= 0 counted on the host: fewer small ops than ``width``), within ``bounds``."""
        k = 0
        for v in self.logits(x)[0].tolist():
            if v < 0:
                break
            k += 1
        return k * self.step if self.bounds is None else \
            min(max(k * self.step, self.bounds[0]), self.bounds[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, rows) mask of 0/1 in x's dtype."""
        if self.step is None:
            return (self.logits(x) >= 0).to(x.dtype)
        kept = self.width(x)[:, None]
        if self.rows is None:  # all channels: the nested mask, group decisions repeated G times
            return (torch.arange(self.w2t.shape[1] * self.step, device=x.device) < kept
                    ).to(x.dtype)
        return (self.rows[None, :] < kept).to(x.dtype)


def _bn(dual, stream: str):
    return dual.dense if stream == "dense" else dual.gated


class _Builder:
    """Folds and packs the convs of one network for one backend and input shape.

    ``tile``: kept channel counts are padded up to a multiple of it (``padded``, ``pad_rows``,
    ``pad_cols``: zero weights and biases, exact). ``channels_last``: 4-D weights stored
    channels-last (default: aten on CUDA, ``channels_last_weights``)."""

    def __init__(self, backend: str, device: torch.device, dtype: torch.dtype, tile: int = 1,
                 channels_last: bool | None = None):
        self.backend, self.device, self.dtype, self.tile = backend, device, dtype, tile
        self.channels_last = channels_last_weights(backend, device) if channels_last is None \
            else channels_last

    def t(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(self.device, self.dtype)

    def padded(self, k: int) -> int:
        """``k`` kept channels rounded up to the tile (0 stays 0: the block is skipped)."""
        return round_to_tile(k, self.tile)

    def pad_rows(self, w: torch.Tensor, b: torch.Tensor | None, k: int):
        """Output channels (rows of ``w``, entries of ``b``) zero-padded to ``padded(k)``."""
        n = self.padded(k)
        return pad_to(w, n, 0), None if b is None else pad_to(b, n, 0)

    def pad_cols(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """Input channels (columns of ``w``) zero-padded to ``padded(k)``."""
        return pad_to(w, self.padded(k), 1)

    def conv(self, w, b, stride, padding, in_shape) -> Conv | None:
        if w.shape[0] == 0 or w.shape[1] == 0:
            return None
        return Conv.make(self.t(w), self.t(b), stride, padding, self.backend, in_shape,
                         channels_last=self.channels_last)

    def gate(self, gate, rows=None) -> _Gate:
        g = _Gate(gate, rows)
        for k in ("w1t", "b1", "w2t", "b2"):
            setattr(g, k, self.t(getattr(g, k)))
        if g.rows is not None:
            g.rows = g.rows.to(self.device)
        return g

    def shortcut(self, block, stream, in_shape) -> Conv | None:
        if block.downsample is None:
            return None
        w, b = fold_bn(block.downsample.conv.weight, block.downsample.bn_for(stream))
        return self.conv(w, b, block.downsample.conv.stride[0], 0, in_shape)


def _bias_relu(sc: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (sc + bias.view(1, -1, 1, 1)).relu_()


def _mid(in_shape, channels: int, out_hw) -> tuple[int, ...]:
    """The shape of a block's intermediate tensor (the input of its second conv)."""
    return (in_shape[0], channels, *out_hw)


class _BasicFull:
    """dense (no gate) or masked (full-width convs, then the gate's mask)."""

    def __init__(self, block, stream, b: _Builder, in_shape, out_hw, masked: bool):
        s = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, _bn(block.bn1, stream))
        w2, b2 = fold_bn(block.conv2.weight, _bn(block.bn2, stream))
        self.conv1 = b.conv(w1, b1, s, 1, in_shape)
        self.conv2 = b.conv(w2, b2, 1, 1, _mid(in_shape, w1.shape[0], out_hw))
        self.ds = b.shortcut(block, stream, in_shape)
        self.gate = b.gate(block.gate) if masked else None

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        h = self.conv1(x, relu=True)
        if self.gate is not None:
            h = h.mul_(self.gate(x)[:, :, None, None])
        return self.conv2(h, relu=True, add=sc)


class _BasicStatic:
    """Kept channels (always-on, then dynamic, then zero padding up to the tile) as two convs;
    the dynamic ones multiplied by their gate's decision."""

    def __init__(self, block, g: ChannelGroups, b: _Builder, in_shape, out_hw):
        s = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, block.bn1.gated)
        w2, b2 = fold_bn(block.conv2.weight, block.bn2.gated)
        k = g.kept
        self.a, self.d = len(g.on), len(g.dyn)
        self.computed = b.padded(len(k))  # channels computed: kept + padding
        self.conv1 = b.conv(*b.pad_rows(w1[k], b1[k], len(k)), s, 1, in_shape)
        self.conv2 = b.conv(b.pad_cols(w2[:, k], len(k)), b2, 1, 1,
                            _mid(in_shape, self.computed, out_hw))
        self.b2 = b.t(b2)
        self.ds = b.shortcut(block, "gated", in_shape)
        self.gate = b.gate(block.gate, g.dyn) if self.d else None

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        if self.conv1 is None:
            return _bias_relu(sc, self.b2)
        h = self.conv1(x, relu=True)
        if self.gate is not None:
            h[:, self.a:self.a + self.d].mul_(self.gate(x)[:, :, None, None])
        return self.conv2(h, relu=True, add=sc)


class _BasicDynamic:
    """Always-on part pre-packed; the dynamic channels that are on gathered per call.

    conv2 is split by input channels: out = relu(conv2_on(h_on) + conv2_dyn[idx](h_dyn) + b + sc),
    the dynamic half run first with the bias and shortcut, the packed half adding it in as a
    fused post-op. Dynamic weights are stored so that both gathers read contiguous rows.
    """

    def __init__(self, block, g: ChannelGroups, b: _Builder, in_shape, out_hw):
        self.stride = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, block.bn1.gated)
        w2, b2 = fold_bn(block.conv2.weight, block.bn2.gated)
        self.a, self.d, self.backend = len(g.on), len(g.dyn), b.backend
        self.computed_on = b.padded(self.a)  # always-on channels computed: + tile padding
        self.conv1_on = b.conv(*b.pad_rows(w1[g.on], b1[g.on], self.a), self.stride, 1, in_shape)
        self.conv2_on = b.conv(b.pad_cols(w2[:, g.on], self.a), None, 1, 1,
                               _mid(in_shape, self.computed_on, out_hw))
        self.b1_dyn = b.t(b1[g.dyn].contiguous())
        self._store_dynamic(w1[g.dyn], w2[:, g.dyn], b)
        self.b2 = b.t(b2)
        self.ds = b.shortcut(block, "gated", in_shape)
        self.gate = b.gate(block.gate, g.dyn) if self.d else None
        self.executed = 0  # dynamic channels computed, summed over calls (when counting)
        self.count = False

    def _store_dynamic(self, w1d: torch.Tensor, w2d: torch.Tensor, b: _Builder) -> None:
        """Dynamic weights laid out so each gather reads contiguous rows: conv1's rows as they
        are, conv2's input channels first, (d, C_out, 3, 3)."""
        self.w1_dyn = b.t(w1d.contiguous())
        self.w2t_dyn = b.t(w2d.transpose(0, 1).contiguous())

    def _decide(self, x):
        """Gate decisions: (mask (B, d), indices of the dynamic channels to compute, count).
        At B = 1 the sample's on-channels; at B > 1 the union over the batch."""
        if self.gate is None:
            return None, None, 0
        m = self.gate(x)
        sel = m[0] if m.shape[0] == 1 else m.amax(dim=0)
        idx = sel.nonzero().flatten()
        if self.count:
            self.executed += idx.numel()
        return m, idx, idx.numel()

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        m, idx, n = self._decide(x)
        if n:
            h = run_conv(self.backend, x, self.w1_dyn.index_select(0, idx),
                         self.b1_dyn.index_select(0, idx), self.stride, 1, relu=True)
            if m.shape[0] > 1:
                h = h.mul_(m.index_select(1, idx)[:, :, None, None])
            w2 = self.w2t_dyn.index_select(0, idx).transpose(0, 1)
            sc = run_conv(self.backend, h, w2, self.b2, 1, 1, relu=self.conv1_on is None, add=sc)
            if self.conv1_on is None:
                return sc
            return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=sc)
        if self.conv1_on is None:
            return _bias_relu(sc, self.b2)
        return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=sc, bias=self.b2)


def _im2col(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """3x3/pad-1 patches of a channels-last (B, C, H, W) tensor as a (B*Ho*Wo, 9*C) matrix,
    columns ordered (ky, kx, c). One strided copy; no layout change of the weights needed."""
    bsz, c, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # (B, H+2, W+2, C), a view
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    sb, sh, sw, sc = xp.stride()
    patches = xp.as_strided((bsz, ho, wo, 3, 3, c), (sb, sh * stride, sw * stride, sh, sw, sc))
    return patches.reshape(bsz * ho * wo, 9 * c), ho, wo


class _BasicGatherGemm(_BasicDynamic):
    """Like ``_BasicDynamic``, but the gathered dynamic channels run as two GEMMs on plain
    row-major weights (im2col of the input), so gathering costs a row copy and no re-layout.
    Wins where spatial sizes are small and weights large (late layers)."""

    def _store_dynamic(self, w1d: torch.Tensor, w2d: torch.Tensor, b: _Builder) -> None:
        """GEMM layouts: conv1 rows as (d, 9*C_in) in (ky, kx, c) order, conv2 as
        (3, 3, d, C_out) so that gathering d and viewing (9*n, C_out) matches im2col."""
        d, c_in = w1d.shape[0], w1d.shape[1]
        self.w1_dyn = b.t(w1d.permute(0, 2, 3, 1).reshape(d, 9 * c_in))
        self.w2_dyn = b.t(w2d.permute(2, 3, 1, 0).contiguous())

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        m, idx, n = self._decide(x)
        if not n:
            if self.conv1_on is None:
                return _bias_relu(sc, self.b2)
            return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=sc, bias=self.b2)
        bsz, c_out = x.shape[0], sc.shape[1]
        cols, ho, wo = _im2col(x, self.stride)
        h = torch.addmm(self.b1_dyn.index_select(0, idx), cols,
                        self.w1_dyn.index_select(0, idx).t()).relu_()  # (B*L, n): NHWC
        if bsz > 1:
            h.view(bsz, ho * wo, n).mul_(m.index_select(1, idx).view(bsz, 1, n))
        h = h.view(bsz, ho, wo, n).permute(0, 3, 1, 2)
        cols2, _, _ = _im2col(h, 1)
        w2 = self.w2_dyn.index_select(2, idx).view(9 * n, c_out)
        sc_rows = sc.permute(0, 2, 3, 1).reshape(bsz * ho * wo, c_out)
        t = torch.addmm(sc_rows, cols2, w2).view(bsz, ho, wo, c_out).permute(0, 3, 1, 2)
        if self.conv1_on is None:
            return _bias_relu(t, self.b2)
        return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=t, bias=self.b2)


class _Bottleneck:
    """ResNet-50 blocks in every mode. The dynamic mode gathers the kept channels of all three
    convs per call (not split into packed + gathered halves as the BasicBlock is: not tuned)."""

    def __init__(self, block, mode: str, g: ChannelGroups | None, b: _Builder, in_shape,
                 out_hw):
        stream = "dense" if mode == "dense" else "gated"
        self.mode, self.backend = mode, b.backend
        self.stride = block.conv2.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, _bn(block.bn1, stream))
        w2, b2 = fold_bn(block.conv2.weight, _bn(block.bn2, stream))
        w3, b3 = fold_bn(block.conv3.weight, _bn(block.bn3, stream))
        self.ds = b.shortcut(block, stream, in_shape)
        self.b3 = b.t(b3)
        self.gate, self.a, self.d = None, 0, None
        if mode in ("dense", "masked"):
            w = w1.shape[0]
            self.conv1 = b.conv(w1, b1, 1, 0, in_shape)
            self.conv2 = b.conv(w2, b2, self.stride, 1, _mid(in_shape, w, in_shape[2:]))
            self.conv3 = b.conv(w3, b3, 1, 0, _mid(in_shape, w, out_hw))
            self.gate = b.gate(block.gate) if mode == "masked" else None
        elif mode == "static":  # kept channels, zero-padded up to the tile
            k, n = g.kept, len(g.kept)
            self.a, self.d, self.computed = len(g.on), len(g.dyn), b.padded(n)
            self.conv1 = b.conv(*b.pad_rows(w1[k], b1[k], n), 1, 0, in_shape)
            self.conv2 = b.conv(*b.pad_rows(b.pad_cols(w2[k][:, k], n), b2[k], n), self.stride,
                                1, _mid(in_shape, self.computed, in_shape[2:]))
            self.conv3 = b.conv(b.pad_cols(w3[:, k], n), b3, 1, 0,
                                _mid(in_shape, self.computed, out_hw))
            self.gate = b.gate(block.gate, g.dyn) if len(g.dyn) else None
        else:
            self.on, self.dyn = b.t(g.on).long(), b.t(g.dyn).long()
            self.w1, self.b1, self.w2, self.b2, self.w3 = (b.t(t) for t in (w1, b1, w2, b2, w3))
            self.gate = b.gate(block.gate, g.dyn) if len(g.dyn) else None
            self.conv1 = None

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        if self.mode == "dynamic":
            return self._dynamic(x, sc)
        if self.conv1 is None:
            return _bias_relu(sc, self.b3)
        m = None if self.gate is None else self.gate(x)[:, :, None, None]
        end = None if self.d is None else self.a + self.d  # masked: every channel
        h = self.conv1(x, relu=True)
        if m is not None:
            h[:, self.a:end].mul_(m)
        h = self.conv2(h, relu=True)
        if m is not None:
            h[:, self.a:end].mul_(m)
        return self.conv3(h, relu=True, add=sc)

    def _dynamic(self, x, sc):
        keep, m = self.on, None
        if self.gate is not None:
            m = self.gate(x)
            sel = m[0] if m.shape[0] == 1 else m.amax(dim=0)
            idx = sel.nonzero().flatten()
            keep = torch.cat([self.on, self.dyn.index_select(0, idx)])
            m = m.index_select(1, idx)[:, :, None, None] if m.shape[0] > 1 else None
        if keep.numel() == 0:
            return _bias_relu(sc, self.b3)
        a, bk = len(self.on), self.backend
        h = run_conv(bk, x, self.w1.index_select(0, keep), self.b1.index_select(0, keep), 1, 0,
                     relu=True)
        if m is not None:
            h[:, a:].mul_(m)
        w2 = self.w2.index_select(0, keep).index_select(1, keep)
        h = run_conv(bk, h, w2, self.b2.index_select(0, keep), self.stride, 1, relu=True)
        if m is not None:
            h[:, a:].mul_(m)
        return run_conv(bk, h, self.w3.index_select(1, keep), self.b3, 1, 0, relu=True, add=sc)


class _WidthBlock:
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

    def __init__(self, block, lp, b: _Builder, in_shape, out_hw):
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
                           _mid(self.in_shape, p, self.in_shape[2:])),
                    b.conv(b.pad_cols(w3[:, :w], w), b3, 1, 0, _mid(self.in_shape, p, self.out_hw)))
            else:
                (w1, b1), (w2, b2) = self.w
                self.packs[w] = (b.conv(*b.pad_rows(w1[:w], b1[:w], w), s, 1, self.in_shape),
                                 b.conv(b.pad_cols(w2[:, :w], w), b2, 1, 1,
                                        _mid(self.in_shape, p, self.out_hw)))
        return self.packs[w]

    def _run(self, w: int, x: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        """The block at width ``w`` on ``x`` (any batch size) with shortcut ``sc``. Calls the
        kernel on the packed weights directly (``Conv.__call__`` would re-pack per shape)."""
        convs = self._pack(w)
        if not convs:
            return _bias_relu(sc, self.bias_out)
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


def _computed(blk) -> int | None:
    """Gated channels a block computes per sample where fixed (static: kept + tile padding;
    gather: the always-on part + padding, plus the dynamic ones on); None where not gated."""
    if isinstance(blk, _BasicDynamic):
        return blk.computed_on
    return getattr(blk, "computed", None)


DYNAMIC_POLICIES = ("auto", "static", "gather-conv", "gather-gemm", "width")


def _candidates(block, mode, g, b, in_shape, out_hw, policy, lp=None) -> dict:
    """The executors that may run this block in this mode, built only when they can be chosen.
    A width-gated block in dynamic mode runs the width executor under ``auto`` at batch 1 (no
    tuning: each input at its own width, pre-packed weights); at batch > 1 ``auto`` times it
    against ``static`` per block; other policies as asked."""
    basic = isinstance(block, GatedBasicBlock)
    if mode in ("dense", "masked"):
        if not basic:
            return {mode: _Bottleneck(block, mode, None, b, in_shape, out_hw)}
        return {mode: _BasicFull(block, "dense" if mode == "dense" else "gated", b, in_shape,
                                 out_hw, masked=mode == "masked")}
    makers = {"static": (lambda: _BasicStatic(block, g, b, in_shape, out_hw)) if basic else
              (lambda: _Bottleneck(block, "static", g, b, in_shape, out_hw))}
    if mode == "dynamic" and len(g.dyn):
        if basic:
            makers["gather-conv"] = lambda: _BasicDynamic(block, g, b, in_shape, out_hw)
            makers["gather-gemm"] = lambda: _BasicGatherGemm(block, g, b, in_shape, out_hw)
        else:
            makers["gather-conv"] = lambda: _Bottleneck(block, "dynamic", g, b, in_shape, out_hw)
        width = block.gate.spec.kind == "width"
        if width:
            makers["width"] = lambda: _WidthBlock(block, lp, b, in_shape, out_hw)
        if width and policy == "auto":
            # batch 1: always the width executor; batch > 1: tuned against static per block
            # (grouping splits the batch into smaller, less efficient convs)
            keep = ("width",) if in_shape[0] == 1 else ("width", "static")
            makers = {k: makers[k] for k in keep}
        elif policy != "auto":
            pick = policy if policy in makers else "gather-conv"
            makers = {pick: makers[pick]}
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
        strategy = WIDTH_BATCH_STRATEGY if net.gate_spec.kind == "width" else BATCH_STRATEGY
        self.batch_strategy = strategy if mode == "dynamic" else None
        net = net.eval()
        size = input_size or (pattern.input_size if pattern is not None else 32)
        geom = net.geometry((size, size))
        b = _Builder(self.backend, self.device, dtype, self.tile)
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
        from hwbench.measure.protocol import TUNING, Inputs, measure

        hs = [self._stem(x) for x in xs]
        for cands in choices:
            if len(cands) > 1:
                # width blocks timed as the engine runs them at batch > 1 (order not restored)
                fns = {k: (lambda h, blk=c: blk.forward_sorted(h)[0])
                       if isinstance(c, _WidthBlock) and hs[0].shape[0] > 1 else c
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
            if isinstance(block, _WidthBlock):
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
        import time

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
            if isinstance(blk, (_BasicDynamic, _WidthBlock)):
                blk.count = on
                counts.append(blk.executed)
                if on:
                    blk.executed = 0
        return counts


def build_engine(net: GatedResNet, mode: str, pattern: GatePattern | None = None,
                 **kwargs) -> CompactEngine:
    """Build the inference executable of ``net`` in ``mode`` (see the module docstring)."""
    return CompactEngine(net, mode, pattern, **kwargs)
