"""ONNX Runtime on the CPU: one sequential session per graph, intra-op threads pinned, idle
threads sleeping (sessions timed interleaved must not spin on the cores the timed one needs)."""

from __future__ import annotations

from hwbench.engine.runtimes.base import Runtime


def _settings(n: int) -> dict:
    return {"intra_op_num_threads": n, "inter_op_num_threads": 1,
            "execution_mode": "sequential", "graph_optimization": "all",
            "intra_op_allow_spinning": 0}


class OnnxRuntime(Runtime):
    def record(self, threads: int) -> dict:
        import onnxruntime as ort  # the optional extra of this runtime

        return {"runtime": self.name, "runtime_version": ort.__version__,
                "provider": "CPUExecutionProvider", "runtime_threads": threads,
                "settings": _settings(threads)}

    def open(self, model: bytes, threads: int):
        import onnxruntime as ort  # the optional extra of this runtime

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # no effect at 1 thread: no pool
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return (lambda x: sess.run(None, {name: x})), [sess]


ONNXRUNTIME = OnnxRuntime("onnxruntime", extra="onnx", modules=("onnx", "onnxruntime"))
