"""Options more than one command takes, defined once. Their choice lists are spelled out here so
that ``--help`` imports no torch; the tests check them against the library's."""

from __future__ import annotations

import click

# hwbench.ssl.knn.KNN_PROTOCOLS, hwbench.data.VIEWS, hwbench.engine.runtimes.RUNTIMES
KNN_PROTOCOL_NAMES = ("reference", "online", "cosine")
VIEW_NAMES = ("hwbench", "reference")
RUNTIME_NAMES = ("eager", "onnxruntime", "openvino")

PROFILE_RUNTIME_HELP = ("The runtime the latency is for; refused when the profile was measured "
                        "on another. [default: the profile's]")


def runtime_option(help: str, default: str | None = "eager"):
    """``--runtime``, one of ``RUNTIME_NAMES`` (``default`` None: the profile's)."""
    return click.option("--runtime", default=default, show_default=default is not None,
                        type=click.Choice(RUNTIME_NAMES), help=help)


def json_option(help: str = "Print one JSON object."):
    """``--json`` (as ``as_json``): machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def device_option(help: str = "cpu, cuda or cuda:N."):
    """``--device``, default cpu."""
    return click.option("--device", default="cpu", show_default=True, help=help)
