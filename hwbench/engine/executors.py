"""The engine's per-block executors for channel gates: the gate run on the host side of a block
(``Gate``), weights folded, padded and packed for the device (``Builder``), and one executor per
way to run a block: full width (dense, masked), static (always-off channels removed) and dynamic
(gather the channels on, as convs or as one GEMM), for basic and bottleneck blocks.
``hwbench.engine.compact`` picks among them per block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hwbench.engine.fold import fold_bn
from hwbench.engine.kernels import Conv, channels_last_weights, run_conv
from hwbench.engine.kinds import engine_kind
from hwbench.engine.tiling import pad_to
from hwbench.nets.gate import kept_groups
from hwbench.pattern.gate_pattern import GatePattern, round_to_tile


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


class Gate:
    """The gate, BN folded, as two small matmuls; computes only the ``rows`` it is asked for.

    A width gate (prefix decisions, ``engine.kinds``) outputs one logit per group of G channels and
    its decisions nest: an input keeps channels ``[0, k*G)``, k = the number of leading groups
    whose logit is >= 0 (cumprod of ``logit >= 0``). All its group logits are computed (k needs
    them); the mask is returned for the channel ``rows`` only.
    """

    def __init__(self, gate, rows: torch.Tensor | None = None):
        w1, b1 = fold_bn(gate.fc1.weight.flatten(1), gate.bn)
        w2, b2 = gate.fc2.weight.detach().flatten(1), gate.fc2.bias.detach()
        spec = getattr(gate, "spec", None)
        self.step = None if spec is None else engine_kind(spec).mask_step(spec)
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


def folded_bn(dual, stream: str):
    return dual.dense if stream == "dense" else dual.gated


class Builder:
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

    def gate(self, gate, rows=None) -> Gate:
        g = Gate(gate, rows)
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


def bias_relu(sc: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (sc + bias.view(1, -1, 1, 1)).relu_()


def mid_shape(in_shape, channels: int, out_hw) -> tuple[int, ...]:
    """The shape of a block's intermediate tensor (the input of its second conv)."""
    return (in_shape[0], channels, *out_hw)


class BasicFull:
    """dense (no gate) or masked (full-width convs, then the gate's mask)."""

    def __init__(self, block, stream, b: Builder, in_shape, out_hw, masked: bool):
        s = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, folded_bn(block.bn1, stream))
        w2, b2 = fold_bn(block.conv2.weight, folded_bn(block.bn2, stream))
        self.conv1 = b.conv(w1, b1, s, 1, in_shape)
        self.conv2 = b.conv(w2, b2, 1, 1, mid_shape(in_shape, w1.shape[0], out_hw))
        self.ds = b.shortcut(block, stream, in_shape)
        self.gate = b.gate(block.gate) if masked else None

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        h = self.conv1(x, relu=True)
        if self.gate is not None:
            h = h.mul_(self.gate(x)[:, :, None, None])
        return self.conv2(h, relu=True, add=sc)


class BasicStatic:
    """Kept channels (always-on, then dynamic, then zero padding up to the tile) as two convs;
    the dynamic ones multiplied by their gate's decision."""

    def __init__(self, block, g: ChannelGroups, b: Builder, in_shape, out_hw):
        s = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, block.bn1.gated)
        w2, b2 = fold_bn(block.conv2.weight, block.bn2.gated)
        k = g.kept
        self.a, self.d = len(g.on), len(g.dyn)
        self.computed = b.padded(len(k))  # channels computed: kept + padding
        self.conv1 = b.conv(*b.pad_rows(w1[k], b1[k], len(k)), s, 1, in_shape)
        self.conv2 = b.conv(b.pad_cols(w2[:, k], len(k)), b2, 1, 1,
                            mid_shape(in_shape, self.computed, out_hw))
        self.b2 = b.t(b2)
        self.ds = b.shortcut(block, "gated", in_shape)
        self.gate = b.gate(block.gate, g.dyn) if self.d else None

    def __call__(self, x):
        sc = x if self.ds is None else self.ds(x)
        if self.conv1 is None:
            return bias_relu(sc, self.b2)
        h = self.conv1(x, relu=True)
        if self.gate is not None:
            h[:, self.a:self.a + self.d].mul_(self.gate(x)[:, :, None, None])
        return self.conv2(h, relu=True, add=sc)


class BasicDynamic:
    """Always-on part pre-packed; the dynamic channels that are on gathered per call.

    conv2 is split by input channels: out = relu(conv2_on(h_on) + conv2_dyn[idx](h_dyn) + b + sc),
    the dynamic half run first with the bias and shortcut, the packed half adding it in as a
    fused post-op. Dynamic weights are stored so that both gathers read contiguous rows.
    """

    def __init__(self, block, g: ChannelGroups, b: Builder, in_shape, out_hw):
        self.stride = block.conv1.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, block.bn1.gated)
        w2, b2 = fold_bn(block.conv2.weight, block.bn2.gated)
        self.a, self.d, self.backend = len(g.on), len(g.dyn), b.backend
        self.computed_on = b.padded(self.a)  # always-on channels computed: + tile padding
        self.conv1_on = b.conv(*b.pad_rows(w1[g.on], b1[g.on], self.a), self.stride, 1, in_shape)
        self.conv2_on = b.conv(b.pad_cols(w2[:, g.on], self.a), None, 1, 1,
                               mid_shape(in_shape, self.computed_on, out_hw))
        self.b1_dyn = b.t(b1[g.dyn].contiguous())
        self._store_dynamic(w1[g.dyn], w2[:, g.dyn], b)
        self.b2 = b.t(b2)
        self.ds = b.shortcut(block, "gated", in_shape)
        self.gate = b.gate(block.gate, g.dyn) if self.d else None
        self.executed = 0  # dynamic channels computed, summed over calls (when counting)
        self.count = False

    def _store_dynamic(self, w1d: torch.Tensor, w2d: torch.Tensor, b: Builder) -> None:
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
            return bias_relu(sc, self.b2)
        return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=sc, bias=self.b2)


def im2col(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """3x3/pad-1 patches of a channels-last (B, C, H, W) tensor as a (B*Ho*Wo, 9*C) matrix,
    columns ordered (ky, kx, c). One strided copy; no layout change of the weights needed."""
    bsz, c, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # (B, H+2, W+2, C), a view
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    sb, sh, sw, sc = xp.stride()
    patches = xp.as_strided((bsz, ho, wo, 3, 3, c), (sb, sh * stride, sw * stride, sh, sw, sc))
    return patches.reshape(bsz * ho * wo, 9 * c), ho, wo


class BasicGatherGemm(BasicDynamic):
    """Like ``BasicDynamic``, but the gathered dynamic channels run as two GEMMs on plain
    row-major weights (im2col of the input), so gathering costs a row copy and no re-layout.
    Wins where spatial sizes are small and weights large (late layers)."""

    def _store_dynamic(self, w1d: torch.Tensor, w2d: torch.Tensor, b: Builder) -> None:
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
                return bias_relu(sc, self.b2)
            return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=sc, bias=self.b2)
        bsz, c_out = x.shape[0], sc.shape[1]
        cols, ho, wo = im2col(x, self.stride)
        h = torch.addmm(self.b1_dyn.index_select(0, idx), cols,
                        self.w1_dyn.index_select(0, idx).t()).relu_()  # (B*L, n): NHWC
        if bsz > 1:
            h.view(bsz, ho * wo, n).mul_(m.index_select(1, idx).view(bsz, 1, n))
        h = h.view(bsz, ho, wo, n).permute(0, 3, 1, 2)
        cols2, _, _ = im2col(h, 1)
        w2 = self.w2_dyn.index_select(2, idx).view(9 * n, c_out)
        sc_rows = sc.permute(0, 2, 3, 1).reshape(bsz * ho * wo, c_out)
        t = torch.addmm(sc_rows, cols2, w2).view(bsz, ho, wo, c_out).permute(0, 3, 1, 2)
        if self.conv1_on is None:
            return bias_relu(t, self.b2)
        return self.conv2_on(self.conv1_on(x, relu=True), relu=True, add=t, bias=self.b2)


class Bottleneck:
    """ResNet-50 blocks in every mode. The dynamic mode gathers the kept channels of all three
    convs per call (not split into packed + gathered halves as the BasicBlock is: not tuned)."""

    def __init__(self, block, mode: str, g: ChannelGroups | None, b: Builder, in_shape,
                 out_hw):
        stream = "dense" if mode == "dense" else "gated"
        self.mode, self.backend = mode, b.backend
        self.stride = block.conv2.stride[0]
        w1, b1 = fold_bn(block.conv1.weight, folded_bn(block.bn1, stream))
        w2, b2 = fold_bn(block.conv2.weight, folded_bn(block.bn2, stream))
        w3, b3 = fold_bn(block.conv3.weight, folded_bn(block.bn3, stream))
        self.ds = b.shortcut(block, stream, in_shape)
        self.b3 = b.t(b3)
        self.gate, self.a, self.d = None, 0, None
        if mode in ("dense", "masked"):
            w = w1.shape[0]
            self.conv1 = b.conv(w1, b1, 1, 0, in_shape)
            self.conv2 = b.conv(w2, b2, self.stride, 1, mid_shape(in_shape, w, in_shape[2:]))
            self.conv3 = b.conv(w3, b3, 1, 0, mid_shape(in_shape, w, out_hw))
            self.gate = b.gate(block.gate) if mode == "masked" else None
        elif mode == "static":  # kept channels, zero-padded up to the tile
            k, n = g.kept, len(g.kept)
            self.a, self.d, self.computed = len(g.on), len(g.dyn), b.padded(n)
            self.conv1 = b.conv(*b.pad_rows(w1[k], b1[k], n), 1, 0, in_shape)
            self.conv2 = b.conv(*b.pad_rows(b.pad_cols(w2[k][:, k], n), b2[k], n), self.stride,
                                1, mid_shape(in_shape, self.computed, in_shape[2:]))
            self.conv3 = b.conv(b.pad_cols(w3[:, k], n), b3, 1, 0,
                                mid_shape(in_shape, self.computed, out_hw))
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
            return bias_relu(sc, self.b3)
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
            return bias_relu(sc, self.b3)
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
