"""OpenVINO engine (the CPU image): model.onnx in fp32, or a bf16/int8 variant that ``bundle build``
validated against fp32 (DESIGN.md "CPU engines and precision"). The CAM weight is the fp32 classifier
of model.onnx; the int8 variant keeps the classifier in fp32 too, so both agree.

Build-time validation (chexnet.bundle.variants) compiles with :func:`compile_graph`, the same call the
service uses, so the precision that was measured is the precision that is served.
"""

import os
import threading

import numpy as np
import openvino as ov

from chexnet.bundle import Bundle
from chexnet.bundle.manifest import MODEL_ONNX
from chexnet.engines.base import Engine, EngineOutput, cams_from_features, sigmoid
from chexnet.engines.onnx_graph import read_onnx
from chexnet.errors import BundleError, EngineUnavailable

# OpenVINO's inference precision per product precision. int8: the layers NNCF left unquantized (the
# classifier) run in f32, not in bf16 as OpenVINO would choose on an AMX CPU by itself.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_runs_bf16(core: ov.Core) -> bool:
    """True where the CPU has AMX or AVX512-BF16; elsewhere OpenVINO would emulate bf16 slowly."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_graph(core: ov.Core, path, precision: str, threads: int, streams: int = 1) -> ov.CompiledModel:
    """The one way a graph is compiled, at build-time validation and in the service alike.
    threads: per stream; streams: how many calls may run at once."""
    if precision == "bf16" and not cpu_runs_bf16(core):
        raise EngineUnavailable(
            "This CPU has neither AMX nor AVX512-BF16, so bf16 would run as slow emulation; "
            "set CHEXNET_PRECISION=fp32 (or int8 where the bundle carries it)."
        )
    try:
        model = core.read_model(str(path))
        return core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": _HINTS[precision],
                "NUM_STREAMS": streams,
                "INFERENCE_NUM_THREADS": threads * streams,
            },
        )
    except RuntimeError as exc:
        raise BundleError(f"OpenVINO cannot load {os.path.basename(str(path))} ({str(exc).splitlines()[0]}).") from None


def graph_for(bundle: Bundle, precision: str) -> str:
    """The file that serves a precision: model.onnx for fp32, else the bundle's validated variant."""
    if precision == "fp32":
        return MODEL_ONNX
    variant = bundle.manifest.variants.get(precision)
    if variant is None:
        raise EngineUnavailable(
            f"Bundle {bundle.id} carries no validated {precision} variant; rebuild it with "
            f"'bundle build --precision {precision} --calibration DIR', or set CHEXNET_PRECISION=fp32."
        )
    return variant.graph


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        concurrency: int = 1,
        lone_threads: int = 0,
    ):
        """threads: per call; concurrency: how many calls may run at once (one OpenVINO stream each);
        lone_threads: unused (a lone call runs on its stream's threads)."""
        if device not in ("cpu", "auto"):
            raise EngineUnavailable("The openvino engine runs on the CPU only; use the torch engine for CUDA.")
        self.device = "cpu"
        self.precision = precision
        graph = graph_for(bundle, precision)
        _, self.weight = read_onnx(bundle)
        threads = threads or max(1, len(os.sched_getaffinity(0)) // concurrency)
        self.compiled = compile_graph(ov.Core(), bundle.file(graph), precision, threads, concurrency)
        self._requests = threading.local()  # an infer request serves one call at a time: one per thread

    def infer(self, batch: np.ndarray, lone: bool = False) -> EngineOutput:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({0: batch})
        return EngineOutput(sigmoid(result["logits"]), cams_from_features(self.weight, result["features"]))
