"""The bundle's model.onnx as the CPU engines read it: the graph and its [C, 1024] classifier weight,
which CAM needs (DESIGN.md "Heatmaps")."""

import numpy as np
import onnx
from onnx import numpy_helper

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import MODEL_ONNX
from chexnet.errors import BundleError

CLASSIFIER_WEIGHT = "classifier.weight"


def read_onnx(bundle: Bundle) -> tuple[onnx.ModelProto, np.ndarray]:
    """(the graph, the classifier weight), or a BundleError naming what is wrong."""
    try:
        model = onnx.load(str(bundle.file(MODEL_ONNX)))
    except BundleError:
        raise
    except Exception as exc:  # onnx raises protobuf DecodeError and others
        raise BundleError(f"Bundle {bundle.id}: {MODEL_ONNX} is not a readable ONNX model ({exc}).") from None
    for init in model.graph.initializer:
        if init.name == CLASSIFIER_WEIGHT:
            weight = numpy_helper.to_array(init).astype(np.float32)
            if weight.ndim == 2 and weight.shape[1] == 1024:
                bundle.check_width(weight.shape[0], MODEL_ONNX)
                return model, weight
    raise BundleError(
        f"Bundle {bundle.id}: {MODEL_ONNX} has no [C, 1024] '{CLASSIFIER_WEIGHT}' initializer; "
        "rebuild the bundle with 'bundle build'."
    )
