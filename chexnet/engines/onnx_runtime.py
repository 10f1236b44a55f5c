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
    ):
        """concurrency: unused, one session serves concurrent calls."""
        if device not in ("cpu", "auto"):
            raise EngineUnavailable("The onnxruntime engine runs on the CPU only; use the torch engine for CUDA.")
        self.device = "cpu"
        self.precision = precision
        model, self.weight = read_onnx(bundle)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def infer(self, batch: np.ndarray) -> EngineOutput:
        logits, features = self.session.run(["logits", "features"], {"input": batch})
        return EngineOutput(sigmoid(logits), cams_from_features(self.weight, features))
