"""Timers and energy meters behind small window APIs; statistics of raw samples; the one
measurement path (``measure``)."""

from hwbench.measure.protocol import Inputs, Measurement, Protocol, measure
from hwbench.measure.stats import Stats, summarise

__all__ = ["Inputs", "Measurement", "Protocol", "Stats", "measure", "summarise"]
