"""Reduced-precision variants, measured before they are written (DESIGN.md "CPU engines and precision").

``bundle build``/``bundle demo --precision bf16|int8|fp16 --calibration DIR`` reads the calibration images
through the service's own decode and preprocessing (chexnet.bundle.calibration). bf16 and int8 are
OpenVINO graphs: each runs (compiled exactly as the service compiles it) against fp32 (ONNX Runtime, the
reference), and the manifest records the largest probability difference and how many threshold decisions
flipped. A variant beyond the bound stops the build: nothing is written. int8 is NNCF post-training
quantization on the same images; the classifier stays fp32 (it is 0.01 % of the compute, and CAM uses its
fp32 weights). fp16 (torch autocast on a GPU) depends on the GPU it runs on, so the build keeps the
calibration images as the model sees them and the bound, and the service measures fp16 on its own GPU at
start-up (chexnet.engines.startup_check).
"""

import logging
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexnet.bundle.calibration import agreement, calibration_tensors, save_inputs
from chexnet.bundle.manifest import (
    BUILD_VARIANTS,
    CALIBRATION_INPUTS,
    DEFAULT_MAX_DELTA,
    MODEL_INT8,
    MODEL_ONNX,
    Label,
    StartupVariant,
    Variant,
)
from chexnet.errors import BundleError

log = logging.getLogger(__name__)

_REFERENCE_BATCH = 8


@dataclass(frozen=True)
class VariantRequest:
    precisions: tuple[str, ...]
    calibration: Path
    max_delta: float = DEFAULT_MAX_DELTA


@dataclass(frozen=True)
class BuiltVariants:
    variants: dict[str, Variant]  # measured here (OpenVINO)
    startup_variants: dict[str, StartupVariant]  # to be measured by the service on its own device
    files: list[str]  # written into the staging directory


def build_variants(
    staging: Path,
    labels: list[Label],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    request: VariantRequest,
) -> BuiltVariants:
    """Write and validate the requested variants in staging."""
    x = calibration_tensors(request.calibration, input_size, mean, std)
    built = BuiltVariants({}, {}, [])
    if "fp16" in request.precisions:
        save_inputs(staging / CALIBRATION_INPUTS, x, mean, std)
        built.files.append(CALIBRATION_INPUTS)
        built.startup_variants["fp16"] = StartupVariant(images=len(x), max_delta_bound=request.max_delta)
        log.info("fp16 variant: %d calibration images kept, to be measured on the serving GPU at start-up", len(x))
    measured = [p for p in request.precisions if p in BUILD_VARIANTS]
    if measured:
        _measure_openvino(staging, labels, x, measured, request.max_delta, built)
    return built


def _measure_openvino(
    staging: Path, labels: list[Label], x: np.ndarray, precisions: list[str], max_delta: float, built: BuiltVariants
) -> None:
    import onnxruntime as ort
    import openvino as ov

    from chexnet.engines.openvino import compile_graph, cpu_runs_bf16

    core = ov.Core()
    if "bf16" in precisions and not cpu_runs_bf16(core):
        raise BundleError(
            "This CPU has neither AMX nor AVX512-BF16, so a bf16 variant cannot be measured here; "
            "build it on such a CPU, or leave out --precision bf16."
        )
    session = ort.InferenceSession(str(staging / MODEL_ONNX), providers=["CPUExecutionProvider"])
    reference = np.concatenate(
        [
            _sigmoid(session.run(["logits"], {"input": x[i : i + _REFERENCE_BATCH]})[0])
            for i in range(0, len(x), _REFERENCE_BATCH)
        ]
    )
    for precision in precisions:
        graph = MODEL_INT8 if precision == "int8" else MODEL_ONNX
        if precision == "int8":
            _quantize(core, staging, x)
            built.files.extend([MODEL_INT8, MODEL_INT8.removesuffix(".xml") + ".bin"])
        compiled = compile_graph(core, staging / graph, precision, threads=len(os.sched_getaffinity(0)))
        infer = compiled.create_infer_request().infer
        probabilities = np.concatenate([_sigmoid(infer({0: x[i : i + 1]})["logits"]) for i in range(len(x))])
        delta, flips = agreement(reference, probabilities, labels)
        log.info("%s variant: max |Δp| %.2e, %d of %d decisions flipped", precision, delta, flips, reference.size)
        if not delta <= max_delta:
            raise BundleError(
                f"The {precision} variant moves probabilities by up to {delta:.4f} on the {len(x)} calibration "
                f"images (limit {max_delta}); bundle not written. Calibrate with more representative "
                f"images, raise --max-delta if that is clinically acceptable, or leave out --precision {precision}."
            )
        built.variants[precision] = Variant(
            graph=graph,
            max_delta=delta,
            max_delta_bound=max_delta,
            flips=flips,
            decisions=int(reference.size),
            images=len(x),
            cpu=core.get_property("CPU", "FULL_DEVICE_NAME") or platform.processor(),
        )


def _quantize(core, staging: Path, x: np.ndarray) -> None:
    # NNCF reports usage to Google Analytics unless a consent file says no; without openvino_telemetry it
    # uses its own no-op stand-in. A bundle build sends nothing anywhere.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: importing it fails
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    quantized = nncf.quantize(
        core.read_model(str(staging / MODEL_ONNX)),
        nncf.Dataset([x[i : i + 1] for i in range(len(x))]),
        subset_size=len(x),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(types=["MatMul"]),
    )  # the classifier (the graph's only MatMul)
    ov.save_model(quantized, str(staging / MODEL_INT8), compress_to_fp16=False)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
