"""ONNX Runtime engine (the CPU image): runs model.onnx; no PyTorch needed."""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import MODEL_ONNX
from chexnet.engines.base import Engine, EngineOutput, cams_from_features, sigmoid
from chexnet.errors import BundleError, EngineUnavailable

CLASSIFIER_WEIGHT = "classifier.weight"


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        if device not in ("cpu", "auto"):
            raise EngineUnavailable(
                "The onnxruntime engine runs on the CPU only; use the torch engine for CUDA."
            )
        self.device = "cpu"
        path = bundle.file(MODEL_ONNX)
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises protobuf DecodeError and others
            raise BundleError(f"Bundle {bundle.id}: {MODEL_ONNX} is not a readable ONNX model ({exc}).") from None
        self.weight = _classifier_weight(model, bundle)
        bundle.check_width(self.weight.shape[0], MODEL_ONNX)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def infer(self, batch: np.ndarray) -> EngineOutput:
        logits, features = self.session.run(["logits", "features"], {"input": batch})
        return EngineOutput(sigmoid(logits), cams_from_features(self.weight, features))


def _classifier_weight(model: onnx.ModelProto, bundle: Bundle) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == CLASSIFIER_WEIGHT:
            weight = numpy_helper.to_array(init).astype(np.float32)
            if weight.ndim == 2 and weight.shape[1] == 1024:
                return weight
    raise BundleError(
        f"Bundle {bundle.id}: {MODEL_ONNX} has no [C, 1024] '{CLASSIFIER_WEIGHT}' initializer; "
        "rebuild the bundle with 'bundle build'."
    )
