"""Options more than one command takes, defined once. Their choice lists are spelled out here so
that ``--help`` imports no torch; the tests check them against the library's."""

from __future__ import annotations

import click

# hwbench.ssl.knn.KNN_PROTOCOLS, hwbench.data.VIEWS, hwbench.engine.runtimes.RUNTIMES (its
# DEFAULT_RUNTIME first, then CHECKER), hwbench.engine.graphs.EXECUTIONS (DEFAULT_EXECUTION first)
KNN_PROTOCOL_NAMES = ("reference", "online", "cosine")
VIEW_NAMES = ("hwbench", "reference")
RUNTIME_NAMES = ("eager", "onnxruntime", "openvino")
DEFAULT_RUNTIME_NAME, CHECKER_NAME = RUNTIME_NAMES[:2]
GRAPH_RUNTIME_NAMES = RUNTIME_NAMES[1:]
EXECUTION_NAMES = ("eager", "graphs", "compile")

PROFILE_RUNTIME_HELP = ("The runtime the latency is for; refused when the profile was measured "
                        "on another. [default: the profile's]")


def runtime_option(help: str, default: str | None = DEFAULT_RUNTIME_NAME):
    """``--runtime``, one of ``RUNTIME_NAMES`` (``default`` None: the profile's)."""
    return click.option("--runtime", default=default, show_default=default is not None,
                        type=click.Choice(RUNTIME_NAMES), help=help)


def execution_option(help: str):
    """``--exec`` (as ``execution``), one of ``EXECUTION_NAMES``, default the first."""
    return click.option("--exec", "execution", default=EXECUTION_NAMES[0], show_default=True,
                        type=click.Choice(EXECUTION_NAMES), help=help)


def json_option(help: str = "Print one JSON object."):
    """``--json`` (as ``as_json``): machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def device_option(help: str = "cpu, cuda or cuda:N."):
    """``--device``, default cpu."""
    return click.option("--device", default="cpu", show_default=True, help=help)
