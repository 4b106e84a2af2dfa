"""Inference runtimes: a network of one mode run by ONNX Runtime or OpenVINO instead of the engine.

People deploy on a runtime, not on eager PyTorch, so a latency target is met on a (device,
runtime) pair (nn-Meter, HW-NAS-Bench). ``runnable`` is the one way hwbench builds something to
time: the compact engine (``runtime="eager"``, run as ``execution``: ``hwbench.engine.graphs``)
or a ``RuntimeNet``: the mode's ``deployable`` module exported to ONNX (in memory, fixed input
shape, opset 17) and compiled by the runtime on the CPU, with its intra-op threads pinned to the
run's thread count (``runtime_record`` says what ran; profiles and results carry it).

What each mode is on a runtime (the same functions as the engine's, fp32):

- ``dense``: the dense stream; ``static``: always-off channels removed, dynamic ones masked by
  their gate (one graph); ``masked``: every conv at full width, every channel multiplied by its
  gate's decision (the baseline a zero-masking deployment runs);
- ``dynamic``: a graph cannot skip a channel per input, so channel gates run the static graph
  (``plan`` says ``static``). Width gates at batch 1 have two implementations: the single graph
  with the nested masks (``static``: every kept channel computed), or **one graph per width
  bucket** (``width``): the network is cut at each width block, one graph for the stem up to the
  first width block's gate, then one graph per (width block, width) that runs the block at that
  width and everything up to the next width block's gate; between graphs the host reads the
  width (one small output) and picks the next graph. Only that skips work. ``auto`` times both on
  the tuning inputs and keeps the faster (the issue's "whichever the runtime runs faster:
  measure"); a width not seen before is compiled on first use (``late_compiles``).

``segment_times`` times a network piece by piece (stem, each block, head: each its own compiled
graph, run on the previous piece's output), as the engine's does: the profile's latency table.

Layout: ``base`` (what a runtime is), one module per runtime (``eager``, ``onnxruntime``,
``openvino``), ``registry`` (the runtimes by name: the only list), ``session`` (one compiled
graph), ``net`` (``RuntimeNet``, ``runnable``).

Runtimes are extras (``pip install 'hwbench[onnx]'``, ``'hwbench[openvino]'``); asking for one
that is missing is a one-line error naming the extra, before any work.
"""

from hwbench.engine.runtimes.base import Runtime, require_extra
from hwbench.engine.runtimes.net import (
    POLICIES,
    DeployWidth,
    RuntimeNet,
    masked_pattern,
    runnable,
    width_bounds,
)
from hwbench.engine.runtimes.registry import (
    CHECKER,
    DEFAULT_RUNTIME,
    REGISTRY,
    RUNTIMES,
    check_runtime,
    get,
    is_graph,
    label,
    of,
    runtime_record,
)
from hwbench.engine.runtimes.session import OPSET, Session, compile_module, onnx_bytes

__all__ = [
    "CHECKER", "DEFAULT_RUNTIME", "OPSET", "POLICIES", "REGISTRY", "RUNTIMES", "DeployWidth",
    "Runtime", "RuntimeNet", "Session", "check_runtime", "compile_module", "get", "is_graph",
    "label", "masked_pattern", "of", "onnx_bytes", "require_extra", "runnable", "runtime_record",
    "width_bounds",
]
