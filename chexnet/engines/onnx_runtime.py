"""ONNX Runtime engine (the CPU image's reference): runs model.onnx in fp32; no PyTorch needed."""

import os

import numpy as np
import onnxruntime as ort

from chexnet.bundle import Bundle
from chexnet.engines.base import Engine, EngineOutput, cams_from_features, sigmoid
from chexnet.engines.onnx_graph import read_onnx
from chexnet.errors import EngineUnavailable


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        concurrency: int = 1,
        lone_threads: int = 0,
    ):
        """concurrency: unused, one session serves concurrent calls. lone_threads: a second session over that many
        threads serves the calls made while no other prediction is in the service. Its pool does not spin between
        operators, so a request arriving meanwhile finds a core: on 2 cores (BENCHMARKS.md, issue 26)
        spinning made a lone forward pass 6 % faster (31.7 against 33.7 ms), but two calls sharing a spinning
        two-thread session ran 26.6 forward passes/s against 32.4 without spinning and 35.7 on one thread each."""
        if device not in ("cpu", "auto"):
            raise EngineUnavailable("The onnxruntime engine runs on the CPU only; use the torch engine for CUDA.")
        self.device = "cpu"
        self.precision = precision
        model, self.weight = read_onnx(bundle)
        graph = model.SerializeToString()
        threads = threads or len(os.sched_getaffinity(0))
        self.session = _session(graph, threads)
        # a second copy of the model only where it brings more threads than every call already has
        self.lone_session = _session(graph, lone_threads, spinning=False) if lone_threads > threads else self.session

    def infer(self, batch: np.ndarray, lone: bool = False) -> EngineOutput:
        session = self.lone_session if lone else self.session
        logits, features = session.run(["logits", "features"], {"input": batch})
        return EngineOutput(sigmoid(logits), cams_from_features(self.weight, features))

    def warmup(self, input_size: int) -> None:
        super().warmup(input_size)
        if self.lone_session is not self.session:
            self.infer(np.zeros((1, 3, input_size, input_size), dtype=np.float32), lone=True)


def _session(graph: bytes, threads: int, spinning: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
