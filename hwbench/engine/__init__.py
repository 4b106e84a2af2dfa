"""Executing gate patterns fast: masked reference, static compaction, dynamic gather."""

from hwbench.engine.compact import (
    MODES,
    ChannelGroups,
    CompactEngine,
    build_engine,
    channel_groups,
)
from hwbench.engine.inputs import pattern_inputs, synthetic_inputs
from hwbench.engine.kernels import BACKENDS, mkldnn_available, resolve_backend
from hwbench.engine.kinds import BATCH_STRATEGY, WIDTH_BATCH_STRATEGY
from hwbench.engine.realise import realise

__all__ = [
    "BACKENDS", "BATCH_STRATEGY", "MODES", "ChannelGroups", "CompactEngine", "build_engine",
    "channel_groups", "mkldnn_available", "pattern_inputs", "realise", "resolve_backend",
    "synthetic_inputs", "WIDTH_BATCH_STRATEGY",
]
