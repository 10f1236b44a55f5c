"""Inference engines behind one interface (:class:`chexnet.engines.base.Engine`), named in one table
that the settings, the CLI choices and the OpenAPI document all read.

``onnxruntime`` (the fp32 reference) and ``openvino`` (fp32, and the bundle's validated bf16/int8
variants) are the CPU image's engines; ``torch`` is the GPU image's (CPU or CUDA). Each image
declares its engine (``CHEXNET_ENGINE`` in its Dockerfile); each engine is imported only when
chosen, so the CPU image needs no PyTorch.
"""

import importlib
import importlib.util
from dataclasses import dataclass

from chexnet.bundle import Bundle
from chexnet.engines.base import Engine, EngineOutput
from chexnet.errors import EngineUnavailable


@dataclass(frozen=True)
class EngineKind:
    module: str  # ours, imported only when chosen
    cls: str
    requires: str  # the third-party package it runs on
    precisions: tuple[str, ...]
    lone: bool = False  # runs a call made while no other prediction is in the service on lone_threads


ENGINES = {
    "onnxruntime": EngineKind("chexnet.engines.onnx_runtime", "OnnxRuntimeEngine", "onnxruntime", ("fp32",), lone=True),
    "openvino": EngineKind("chexnet.engines.openvino", "OpenVinoEngine", "openvino", ("fp32", "bf16", "int8")),
    "torch": EngineKind("chexnet.engines.pytorch", "TorchEngine", "torch", ("fp32", "fp16")),
}
DEFAULT_ENGINE = "onnxruntime"
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = tuple(dict.fromkeys(p for kind in ENGINES.values() for p in kind.precisions))


def create_engine(
    bundle: Bundle,
    engine: str = DEFAULT_ENGINE,
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    concurrency: int = 1,
    lone_threads: int = 0,
) -> Engine:
    """threads: CPU threads per engine call (default: the cores); concurrency: how many calls the service
    makes at once (its engine workers; OpenVINO gives each a stream of its own); lone_threads: the threads of a
    call made while no other prediction is in the service (infer(lone=True); 0: threads), where the engine
    can run one (ONNX Runtime)."""
    kind = ENGINES.get(engine)
    if kind is None:
        raise EngineUnavailable(f"Unknown engine '{engine}'; use one of: {', '.join(ENGINES)}.")
    if device not in DEVICES:
        raise EngineUnavailable(f"Unknown device '{device}'; use one of: {', '.join(DEVICES)}.")
    if precision not in kind.precisions:
        raise EngineUnavailable(f"The {engine} engine runs {', '.join(kind.precisions)}, not {precision}.")
    if importlib.util.find_spec(kind.requires) is None:
        raise EngineUnavailable(f"The {engine} engine is not installed in this image.")
    engine_class = getattr(importlib.import_module(kind.module), kind.cls)
    return engine_class(
        bundle, device=device, precision=precision, threads=threads, concurrency=concurrency, lone_threads=lone_threads
    )


__all__ = ["Engine", "EngineOutput", "create_engine", "DEFAULT_ENGINE", "ENGINES", "DEVICES", "PRECISIONS"]
