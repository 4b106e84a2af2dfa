"""Synthetic inputs: for priors and realised (untrained) patterns. Trained networks are timed
on real images of their data set (``hwbench.data.timing_inputs``)."""

from __future__ import annotations

import torch

from hwbench.measure.protocol import Inputs


def pattern_inputs(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) synthetic images whose per-sample colour and contrast vary, so that
    pooled features (and so dynamic gates) differ from sample to sample."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=g)
    scale = 0.5 + torch.rand(n, 3, 1, 1, generator=g)
    offset = torch.randn(n, 3, 1, 1, generator=g)
    return noise * scale + offset


def synthetic_inputs(n: int, size: int, batch_size: int = 1, seed: int = 0) -> Inputs:
    """``n`` batches of ``pattern_inputs``, labelled as synthetic: the inputs for priors and
    realised (untrained) patterns; trained networks are timed on real images."""
    xs = pattern_inputs(n * batch_size, size, seed=seed).split(batch_size)
    return Inputs(list(xs), {"source": "synthetic", "n": n * batch_size, "seed": seed})
