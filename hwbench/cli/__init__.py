"""The ``hwbench`` command: a thin click layer over the library, one module per command group.

``app``: the group and its one-line errors; ``options``: the options several commands share;
``devices`` (env, flops, speedup, profile, predict, pick), ``training`` (train), ``deploying``
(verify, trim, export, compare), ``reporting`` (eval, report); ``verdicts``: how a verdict is
printed. Importing this package registers every command; ``--help`` imports no torch.
"""

from hwbench.cli import deploying, devices, reporting, training  # noqa: F401  (registers them)
from hwbench.cli.app import cli, main

__all__ = ["cli", "main"]
