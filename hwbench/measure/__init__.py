"""Timers and energy meters behind small window APIs; statistics of raw samples."""

from hwbench.measure.stats import Stats, summarise
from hwbench.measure.timer import time_interleaved

__all__ = ["Stats", "summarise", "time_interleaved"]
