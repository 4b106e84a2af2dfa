"""OpenVINO on the CPU: a latency-hinted single-stream compiled model per graph, fp32, its
inference threads pinned. The plugin moves the calling thread's signal stack when it compiles
and frees models: ours is kept (``hwbench.engine.sigstack`` says why a process died without it)."""

from __future__ import annotations

import os
import tempfile

from hwbench.engine.runtimes.base import Runtime
from hwbench.engine.sigstack import keep_signal_stack


def _settings(n: int) -> dict:
    return {"INFERENCE_NUM_THREADS": n, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}


class OpenVino(Runtime):
    def record(self, threads: int) -> dict:
        import openvino as ov  # the optional extra of this runtime

        return {"runtime": self.name, "runtime_version": ov.__version__, "provider": "CPU",
                "runtime_threads": threads, "settings": _settings(threads)}

    def open(self, model: bytes, threads: int):
        import openvino as ov  # the optional extra of this runtime

        with tempfile.TemporaryDirectory() as tmp, keep_signal_stack():
            path = os.path.join(tmp, "m.onnx")  # OpenVINO reads ONNX from a file
            with open(path, "wb") as fh:
                fh.write(model)
            core = ov.Core()
            compiled = core.compile_model(core.read_model(path), "CPU", _settings(threads))
            req = compiled.create_infer_request()
        n = len(compiled.outputs)

        def run(x):  # reads req only: no reference cycle, freed when dropped
            req.infer({0: x})
            return [req.get_output_tensor(i).data.copy() for i in range(n)]

        return run, [req, compiled]


OPENVINO = OpenVino("openvino", extra="openvino", modules=("onnx", "openvino"))
