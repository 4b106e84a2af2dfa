"""The per-block channel gate of Krishna et al. (BMVC 2023).

avg-pool(block input) -> 1x1 conv (C_in -> C_in/4) -> BN -> ReLU -> 1x1 conv (-> gated width)
-> Gumbel-sigmoid (temperature 2/3), hard threshold at 0.5 with a straight-through gradient in
training; in eval the hard threshold is taken on the logits (logit >= 0), with no noise.

``--gate width:G`` (``GateSpec``) keeps the same head, noise and temperature but outputs one
logit per group of G channels and nests the decisions, so each input keeps a prefix of its
block's channels (``nested_st``): what an engine can run without gathering weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from hwbench.errors import UsageError
from hwbench.nets.geometry import GATE_REDUCTION

GATE_TEMPERATURE = 2.0 / 3.0


def logistic_noise(logits: torch.Tensor, scale: float | torch.Tensor = 1.0,
                   eps: float = 1e-8) -> torch.Tensor:
    """Logistic noise log(u) - log(1 - u) (the difference of two Gumbels) shaped like
    ``logits``, times ``scale`` (a float or a 0-dim tensor: 0 gives the noise-free decision;
    the random draw is taken either way, so the random stream does not depend on it)."""
    u = torch.rand_like(logits)
    return (torch.log(u + eps) - torch.log1p(-u + eps)) * scale


def gumbel_sigmoid_st(logits: torch.Tensor, temperature: float = GATE_TEMPERATURE,
                      eps: float = 1e-8, noise_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Hard {0, 1} sample of a Gumbel-sigmoid with a straight-through gradient.

    Logistic noise (``logistic_noise``, times ``noise_scale``) is added to the logits; the
    forward value is 1[sigmoid((logits + noise) / T) >= 0.5], the backward pass is the gradient
    of the soft sigmoid. At ``noise_scale`` 0 the value is the deployed decision 1[logit >= 0].
    """
    soft = torch.sigmoid((logits + logistic_noise(logits, noise_scale, eps)) / temperature)
    hard = (soft >= 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


SURROGATES = ("sigmoid", "linear")


def deterministic_st(logits: torch.Tensor, temperature: float = GATE_TEMPERATURE,
                     surrogate: str = "sigmoid") -> torch.Tensor:
    """The noise-free decision the deployed network takes, 1[logit >= 0], with a
    straight-through gradient: what a budget on the *deployed* network differentiates.

    ``sigmoid``: the soft sigmoid's gradient, which vanishes once a gate saturates (|logit| a
    few temperatures from 0), so a saturated gate can no longer be moved by the budget.
    ``linear``: the sigmoid's slope at 0, 1 / (4 T), everywhere (the plain straight-through
    estimator): a budget keeps reaching gates that the rest of training has pinned on. (A gate
    with ``surrogate = "linear"`` also stops this gradient at its input: ``ChannelGate``.)"""
    hard = (logits >= 0).to(logits.dtype)
    if surrogate == "linear":
        lin = logits / (4.0 * temperature)
        return hard + (lin - lin.detach())
    soft = torch.sigmoid(logits / temperature)
    return hard + (soft - soft.detach())


SUBSET, PREFIX = "subset", "prefix"  # what one decision keeps: any subset, or a prefix


@dataclass(frozen=True)
class GateKind:
    """A kind of gate, registered once in ``KINDS``: the only place kind names are written.

    The kind is a strategy with two parts. Its gate-level part is here: the decisions
    (``ChannelGate.forward``), the starting bias, the step, how thinner widths round. Each
    stage above (pattern, engine, predictor, budget, trim) holds its own part in a table keyed
    by ``keeps`` and reads it through ``strategy``: code elsewhere never compares a name or
    branches on a kind. A kind whose decisions keep a subset or a prefix needs one line here;
    one of a new shape needs one class per stage."""

    name: str
    keeps: str  # SUBSET: any subset of a block's channels per input; PREFIX: a prefix [0, k*G)
    default_step: int  # the step a bare name means (``hwbench compare``'s rows)
    thin_multiple: int | None  # thinner dense widths round to this (None: to the gate's step)
    learned_bias: bool  # the bias is the starting width: it must train (not --gate-bias none)

    @property
    def nested(self) -> bool:
        return self.keeps == PREFIX


KINDS = {k.name: k for k in (
    GateKind("channel", SUBSET, default_step=1, thin_multiple=16, learned_bias=False),
    GateKind("width", PREFIX, default_step=16, thin_multiple=None, learned_bias=True))}
GATE_KINDS = tuple(KINDS)
AUTO_STEP = ("width", "width:auto")  # ``--gate`` values whose step is read from a profile

T = TypeVar("T")


def kind_texts(keeps: str | None = None) -> str:
    """The registered kinds as ``--gate`` texts ("'channel' or 'width:G'"), those whose
    decisions keep ``keeps`` only when given: error messages name what the registry holds."""
    return " or ".join(f"'{k.name}:G'" if k.nested else f"'{k.name}'" for k in KINDS.values()
                       if keeps is None or k.keeps == keeps)


def strategy(table: Mapping[str, T], spec: GateSpec, stage: str) -> T:
    """A stage's part of ``spec``'s kind: ``table`` maps what a decision keeps (SUBSET,
    PREFIX) to the stage's strategy; a kind of a shape the stage has none for: a one-line
    UsageError (the stage cannot run it), never a silent fallback."""
    part = table.get(KINDS[spec.kind].keeps)
    if part is None:
        raise UsageError(f"{stage} has no strategy for {spec.kind} gates "
                         f"(decisions that keep a {KINDS[spec.kind].keeps})")
    return part


@dataclass(frozen=True)
class GateSpec:
    """How a block's gate decides: ``channel`` (the paper's: any subset of channels, per input)
    or ``width`` with step G (a prefix ``[0, k*G)`` per input: nested decisions over C/G groups,
    so a kept set is a contiguous slice of the weights, cheap to run)."""

    kind: str = GATE_KINDS[0]
    step: int = 1

    @classmethod
    def of(cls, kind: str, step: int | None = None) -> GateSpec:
        """The spec of a registered kind (``step``: its default when None; 1 when not nested)."""
        k = KINDS[kind]
        return cls(kind, (step or k.default_step) if k.nested else 1)

    @property
    def nested(self) -> bool:
        """True when a decision keeps a prefix of the channels (width gates); read in this
        module only: the stages ask ``strategy``."""
        return KINDS[self.kind].nested

    @property
    def thin_multiple(self) -> int:
        """The multiple a thinner dense network's widths round to (``--width-mult``)."""
        return KINDS[self.kind].thin_multiple or self.step

    @property
    def learned_bias(self) -> bool:
        """True when the gate's bias is its starting width (it must train)."""
        return KINDS[self.kind].learned_bias

    @property
    def text(self) -> str:
        return self.kind if not self.nested else f"{self.kind}:{self.step}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step}

    def groups(self, channels: int) -> int:
        """Decisions a block of ``channels`` takes: one per channel, or one per G channels."""
        return channels // self.step if self.nested else channels

    def check_widths(self, widths) -> GateSpec:
        bad = sorted({int(w) for w in widths if int(w) % self.step})
        if bad:
            raise UsageError(f"--gate {self.text}: every gated width must be a multiple of "
                             f"{self.step}, and these are not: {', '.join(map(str, bad))}")
        return self


CHANNEL = GateSpec()


def parse_gate(text) -> GateSpec:
    """``channel`` | ``width:G`` (G a positive integer) -> GateSpec; a dict from a pattern file
    or checkpoint ({"kind", "step"}) too. Anything else: a one-line UsageError."""
    if isinstance(text, GateSpec):
        return text
    if text is None:
        return CHANNEL
    if isinstance(text, dict):
        kind = KINDS.get(text.get("kind"))
        text = text.get("kind") if kind is not None and not kind.nested else \
            f"{text.get('kind')}:{text.get('step')}"
    name, sep, step = str(text).strip().partition(":")
    kind = KINDS.get(name)
    if kind is not None and not kind.nested and not sep:
        return GateSpec.of(name)
    if kind is not None and kind.nested and sep and step.isdigit() and int(step) >= 1:
        return GateSpec.of(name, int(step))
    raise UsageError(f"--gate {text!r}: use {kind_texts()} with G a positive integer "
                     f"(e.g. {GateSpec.of(GATE_KINDS[-1]).text})")


def step_from_profile(text: str) -> bool:
    """``--gate width`` without G: the step is read from the target device's profile."""
    return text in AUTO_STEP


def nested_st(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Nested group decisions (B, n): group j is on only if groups 0..j are (the cumulative
    product of the hard decisions). Straight-through: the backward pass is the gradient of the
    cumulative product of the *soft* values, which reaches every group (the hard product's
    gradient is zero past the first group that is off)."""
    soft_cum = _cumprod_no_sync(soft)
    return torch.cumprod(hard.detach(), dim=1) + (soft_cum - soft_cum.detach())


def _cumprod_no_sync(soft: torch.Tensor) -> torch.Tensor:
    """cumprod along dim 1 of values in (0, 1], as exp(cumsum(log)): the same gradient as
    ``torch.cumprod`` (cumprod_j / soft_i for i <= j), without its backward's host read (it
    checks the input for zeros with ``.item()``: a sync per gate per step on a GPU). A value
    that underflowed to 0 is taken as 1e-30 (its gate saturated off; only the gradient is used:
    ``nested_st`` cancels the value)."""
    logs = torch.log(soft.float().clamp_min(1e-30))
    return torch.exp(torch.cumsum(logs, dim=1)).to(soft.dtype)


def expand_groups(mask: torch.Tensor, step: int) -> torch.Tensor:
    """(B, n) group mask -> (B, n * step) channel mask."""
    return mask if step == 1 else mask.repeat_interleave(step, dim=1)


def kept_groups(logits: torch.Tensor) -> torch.Tensor:
    """(B, n) width-gate logits -> (B,) groups kept at deployment (noise-free, nested)."""
    return torch.cumprod((logits >= 0).to(torch.int32), dim=1).sum(dim=1)


class ChannelGate(nn.Module):
    """Decides per sample which of ``gated_channels`` intermediate channels are computed.

    ``forward(x)`` takes the block input (B, C_in, H, W) and returns a mask (B, gated_channels)
    of zeros and ones (differentiable straight-through in training).
    """

    def __init__(self, in_channels: int, gated_channels: int,
                 temperature: float = GATE_TEMPERATURE, spec: GateSpec = CHANNEL):
        super().__init__()
        hidden = max(1, in_channels // GATE_REDUCTION)
        self.temperature, self.spec = temperature, spec.check_widths([gated_channels])
        outputs = spec.groups(gated_channels)
        self.fc1 = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        # The reference has no bias here; hwbench adds one (initialised to 0, so the network
        # starts identical) because a bias is what lets a pattern file be realised without training.
        self.fc2 = nn.Conv2d(hidden, outputs, kernel_size=1, bias=True)
        self.init_bias()
        self.deployed: torch.Tensor | None = None
        self.surrogate = "sigmoid"  # the deployed decisions' gradient (deterministic_st)
        # the training noise's scale (1: the paper's; 0: the deployed decisions), set per step
        # by the training loop (``set_gate_noise``); a buffer so that a compiled step reads a
        # new value without recompiling; not saved: the schedule sets it
        self.register_buffer("noise_scale", torch.ones(()), persistent=False)
        self.channels = gated_channels
        # the gate warm-up (``set_gates_open``): every channel computed, no decision taken
        self.open = False

    @torch.no_grad()
    def init_bias(self) -> None:
        """Channel gates: 0 (each channel on for about half the samples, as the reference).
        Width gates: log(2n - 1) for n groups, i.e. each group on with probability 1 - 1/(2n)
        under the training noise: with a zero bias the nested product would keep about one
        group (sum of 0.5^j); with this one the deployed network starts at full width and a
        sampled one keeps all n groups with probability ~e^-0.5, and the budget pulls it down
        from there (as the channel gates start near MACs 0.5 and are pulled to t_d). A width
        gate's last conv starts at zero weights, so this bias is its decision at first (the
        random head's output, many units wide at initialisation, would otherwise decide); its
        gradient still reaches the weights through the hidden features."""
        n = self.fc2.out_channels
        if not self.spec.nested:
            self.fc2.bias.zero_()
            return
        self.fc2.weight.zero_()
        self.fc2.bias.fill_(math.log(2 * n - 1) if n > 1 else 2.0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Gate logits (B, gated_channels) from the block input (B, C_in, H, W)."""
        z = x.mean(dim=(2, 3), keepdim=True)
        z = self.relu(self.bn(self.fc1(z)))
        return self.fc2(z).flatten(1)

    def _logits_gate_only(self, x: torch.Tensor) -> torch.Tensor:
        """The training logits again, differentiable in the gate's parameters only (the input
        detached; BatchNorm on batch statistics without touching its running averages)."""
        z = self.fc1(x.detach().mean(dim=(2, 3), keepdim=True))
        z = F.batch_norm(z, None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)
        return self.fc2(F.relu(z)).flatten(1)

    def _nested(self, z: torch.Tensor, surrogate: str = "sigmoid") -> torch.Tensor:
        """Width gates: the (B, channels) mask of nested decisions 1[z >= 0] on group logits
        ``z`` (noise already added), straight-through with the cumulative product of
        sigmoid(z / T) (its gradient the sigmoid's, or the constant 1 / (4 T) for ``linear``)."""
        soft = torch.sigmoid(z / self.temperature)
        if surrogate == "linear":
            lin = z / (4.0 * self.temperature)
            soft = soft.detach() + (lin - lin.detach())
        hard = (z >= 0).to(z.dtype)
        return expand_groups(nested_st(hard, soft), self.spec.step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.open:
            self.deployed = x.new_ones(x.shape[0], self.channels)
            return self.deployed
        logits = self.logits(x)
        if self.spec.nested:
            return self._forward_width(x, logits)
        # the last pass's noise-free decisions (straight-through in training), for budgets on
        # the deployed network (hwbench.train.budget); read through GatedForward.deployed_masks
        if self.training:
            if self.surrogate == "linear":
                # the budget moves the gates, not the features: its strong, non-vanishing
                # gradient stops at the gate's input (into the backbone it collapsed the SSL
                # features: kNN 92 -> 54 in 4 epochs)
                self.deployed = deterministic_st(self._logits_gate_only(x), self.temperature,
                                                 "linear")
            else:
                self.deployed = deterministic_st(logits, self.temperature)
            return gumbel_sigmoid_st(logits, self.temperature, noise_scale=self.noise_scale)
        self.deployed = (logits >= 0).to(logits.dtype)
        return self.deployed

    def _forward_width(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The same decisions as ``forward``, over groups and nested: the same logistic
        noise and temperature in training, 1[logit >= 0] deployed."""
        if not self.training:
            self.deployed = self._nested(logits)
            return self.deployed
        if self.surrogate == "linear":
            self.deployed = self._nested(self._logits_gate_only(x), "linear")
        else:
            self.deployed = self._nested(logits)
        return self._nested(logits + logistic_noise(logits, self.noise_scale))


def set_gate_noise(net: nn.Module, scale: float) -> None:
    """Set the training noise of every gate in ``net`` (1: the paper's Gumbel-sigmoid; 0: the
    gates train on the decisions the deployed network takes). In place, on the device: no
    host sync."""
    for m in net.modules():
        if isinstance(m, ChannelGate):
            m.noise_scale.fill_(float(scale))


def set_gates_open(net: nn.Module, on: bool) -> None:
    """Open (``on``) or close every gate in ``net``: an open gate computes every channel and
    decides nothing (no gradient reaches it), the gate warm-up's gated stream (the reference's
    ``warmup_gate``: solo/methods/base_gating.py:644-646)."""
    for m in net.modules():
        if isinstance(m, ChannelGate):
            m.open = bool(on)


def freeze_gate_bias(net: nn.Module) -> None:
    """The gates' last layer without a trainable bias, as the reference's (its fc2 has none:
    solo/methods/ResCg/mask.py:54): each channel gate's bias set to 0 and frozen. The parameter
    stays, so a pattern can still be realised into it (``hwbench.engine.realise``)."""
    for m in net.modules():
        if isinstance(m, ChannelGate):
            with torch.no_grad():
                m.fc2.bias.zero_()
            m.fc2.bias.requires_grad_(False)
