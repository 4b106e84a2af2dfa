"""hwbench: hardware-aware benchmarking and co-training of channel-gated SSL networks."""

__version__ = "0.1.0"
