"""Timers and (later) energy meters behind one small window API."""

from hwbench.measure.timer import Summary, summarise_ms, time_interleaved

__all__ = ["Summary", "summarise_ms", "time_interleaved"]
