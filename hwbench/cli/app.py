"""The ``hwbench`` command group: every expected failure becomes one line and an exit code.

Every user error is printed as one line (``hwbench: error: ...``) with a non-zero exit code;
tracebacks are reserved for bugs.
"""

from __future__ import annotations

import sys

import click

from hwbench import __version__
from hwbench.errors import HwbenchError


class _Group(click.Group):
    """A click group that turns every expected failure into a single line on stderr."""

    def main(self, args=None, prog_name=None, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("hwbench: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"hwbench: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except HwbenchError as exc:
            click.echo(f"hwbench: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hwbench")
def cli() -> None:
    """Hardware-aware benchmarking and co-training of channel-gated networks (SSL).

    Counts are MACs (multiply-accumulates; 1 MAC = 2 FLOPs) unless a column says otherwise.
    """


def main() -> None:
    cli()
