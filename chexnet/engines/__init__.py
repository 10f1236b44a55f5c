"""Inference engines behind one interface (:class:`chexnet.engines.base.Engine`).

``onnxruntime`` is the CPU image's engine; ``torch`` is the GPU image's (CPU or CUDA). Each is
imported only when chosen, so the CPU image needs no PyTorch.
"""

import importlib.util

from chexnet.bundle import Bundle
from chexnet.engines.base import Engine, EngineOutput
from chexnet.errors import EngineUnavailable

ENGINES = ("onnxruntime", "torch")
DEVICES = ("cpu", "cuda", "auto")


def default_engine() -> str:
    """onnxruntime where it is installed (CPU image), else torch (GPU image)."""
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def create_engine(bundle: Bundle, engine: str | None = None, device: str = "auto", precision: str = "fp32",
                  threads: int | None = None) -> Engine:
    """threads: CPU threads per engine call (onnxruntime; default all cores)."""
    engine = engine or default_engine()
    if engine not in ENGINES:
        raise EngineUnavailable(f"Unknown engine '{engine}'; use one of: {', '.join(ENGINES)}.")
    if device not in DEVICES:
        raise EngineUnavailable(f"Unknown device '{device}'; use one of: {', '.join(DEVICES)}.")
    module = "onnxruntime" if engine == "onnxruntime" else "torch"
    if importlib.util.find_spec(module) is None:
        raise EngineUnavailable(f"The {engine} engine is not installed in this image.")
    if engine == "onnxruntime":
        from chexnet.engines.onnx_runtime import OnnxRuntimeEngine

        if precision != "fp32":
            raise EngineUnavailable("The onnxruntime engine runs fp32 only; fp16 is for the torch engine on CUDA.")
        return OnnxRuntimeEngine(bundle, device, threads)
    from chexnet.engines.pytorch import TorchEngine

    return TorchEngine(bundle, device, precision)


__all__ = ["Engine", "EngineOutput", "create_engine", "default_engine", "ENGINES", "DEVICES"]
