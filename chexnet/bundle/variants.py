"""Reduced-precision variants, measured before they are written (DESIGN.md "CPU engines and precision").

``bundle build``/``bundle demo --precision bf16|int8 --calibration DIR`` reads the calibration images
through the service's own decode and preprocessing, runs fp32 (ONNX Runtime, the reference) and each
variant (OpenVINO, compiled exactly as the service compiles it), and records in the manifest the largest
probability difference and how many threshold decisions flipped. A variant beyond the bound stops the
build: nothing is written. int8 is NNCF post-training quantization on the same images; the classifier
stays fp32 (it is 0.01 % of the compute, and CAM uses its fp32 weights).
"""

import logging
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexnet.bundle.manifest import DEFAULT_MAX_DELTA, MODEL_INT8, MODEL_ONNX, Label, Variant
from chexnet.errors import BundleError, ChexnetError, UnsupportedMediaType
from chexnet.imaging import decode_image, preprocess

log = logging.getLogger(__name__)

_REFERENCE_BATCH = 8


@dataclass(frozen=True)
class VariantRequest:
    precisions: tuple[str, ...]
    calibration: Path
    max_delta: float = DEFAULT_MAX_DELTA


def calibration_tensors(directory: Path, input_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Every PNG, JPEG and DICOM under directory as model inputs [N, 3, S, S]; other files are skipped."""
    if not directory.is_dir():
        raise BundleError(f"--calibration {directory} is not a directory of images.")
    tensors, skipped = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            image = decode_image(path.read_bytes())
        except UnsupportedMediaType:
            skipped += 1
            continue
        except ChexnetError as exc:
            raise BundleError(f"Calibration image {path} cannot be read ({exc.message}); remove it or fix it.") from None
        tensors.append(preprocess(image.pixels, input_size, mean, std))
    if not tensors:
        raise BundleError(f"--calibration {directory} holds no PNG, JPEG or DICOM image.")
    log.info("calibration: %d images from %s (%d other files skipped)", len(tensors), directory, skipped)
    return np.stack(tensors)


def build_variants(staging: Path, labels: list[Label], input_size: int, mean: Sequence[float], std: Sequence[float],
                   request: VariantRequest) -> tuple[dict[str, Variant], list[str]]:
    """Write and validate the requested variants in staging; returns (manifest variants, files written)."""
    import onnxruntime as ort
    import openvino as ov

    from chexnet.engines.openvino import compile_graph, cpu_runs_bf16

    core = ov.Core()
    if "bf16" in request.precisions and not cpu_runs_bf16(core):
        raise BundleError("This CPU has neither AMX nor AVX512-BF16, so a bf16 variant cannot be measured here; "
                          "build it on such a CPU, or leave out --precision bf16.")
    x = calibration_tensors(request.calibration, input_size, mean, std)
    session = ort.InferenceSession(str(staging / MODEL_ONNX), providers=["CPUExecutionProvider"])
    reference = np.concatenate([_sigmoid(session.run(["logits"], {"input": x[i:i + _REFERENCE_BATCH]})[0])
                                for i in range(0, len(x), _REFERENCE_BATCH)])
    thresholds = np.asarray([label.threshold for label in labels], dtype=np.float64)
    variants, written = {}, []
    for precision in request.precisions:
        graph = MODEL_ONNX
        if precision == "int8":
            graph = MODEL_INT8
            _quantize(core, staging, x)
            written += [MODEL_INT8, MODEL_INT8.removesuffix(".xml") + ".bin"]
        compiled = compile_graph(core, staging / graph, precision, threads=len(os.sched_getaffinity(0)))
        infer = compiled.create_infer_request().infer
        probabilities = np.concatenate([_sigmoid(infer({0: x[i:i + 1]})["logits"]) for i in range(len(x))])
        delta = float(np.abs(probabilities - reference).max())
        flips = int(((probabilities >= thresholds) != (reference >= thresholds)).sum())
        log.info("%s variant: max |Δp| %.2e, %d of %d decisions flipped", precision, delta, flips, reference.size)
        if not delta <= request.max_delta:
            raise BundleError(
                f"The {precision} variant moves probabilities by up to {delta:.4f} on the {len(x)} calibration "
                f"images (limit {request.max_delta}); bundle not written. Calibrate with more representative "
                f"images, raise --max-delta if that is clinically acceptable, or leave out --precision {precision}.")
        variants[precision] = Variant(graph=graph, max_delta=delta, max_delta_bound=request.max_delta, flips=flips,
                                      decisions=int(reference.size), images=len(x),
                                      cpu=core.get_property("CPU", "FULL_DEVICE_NAME") or platform.processor())
    return variants, written


def _quantize(core, staging: Path, x: np.ndarray) -> None:
    # NNCF reports usage to Google Analytics unless a consent file says no; without openvino_telemetry it
    # uses its own no-op stand-in. A bundle build sends nothing anywhere.
    sys.modules.setdefault("openvino_telemetry", None)
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    quantized = nncf.quantize(
        core.read_model(str(staging / MODEL_ONNX)), nncf.Dataset([x[i:i + 1] for i in range(len(x))]),
        subset_size=len(x), preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(types=["MatMul"]))  # the classifier (the graph's only MatMul)
    ov.save_model(quantized, str(staging / MODEL_INT8), compress_to_fp16=False)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
