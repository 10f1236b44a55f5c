"""Inference benchmark: per-stage latency and images/s per engine, batch 1 and 8, input 224 and 512,
from 1024² PNGs; CAM overhead; OpenVINO (fp32, bf16) and ONNX Runtime int8 against fp32.

    python bench/inference.py --samples ../shared/data/nih --write BENCHMARKS.md

Prints a Markdown table and, with --write, puts it into BENCHMARKS.md with the machine it ran on.
"""

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, timed, write_section  # noqa: E402

from chexnet.bundle import load_bundle  # noqa: E402
from chexnet.bundle.build import write_demo_bundle  # noqa: E402
from chexnet.engines import create_engine  # noqa: E402
from chexnet.engines.base import cams_from_features  # noqa: E402
from chexnet.heatmap import render  # noqa: E402
from chexnet.imaging import decode_image, preprocess  # noqa: E402
from chexnet.options import PredictOptions  # noqa: E402
from chexnet.predictor import Predictor  # noqa: E402


def bundle_for(size: int, models_dir: Path, scratch: Path):
    existing = models_dir / "cxr10"
    if size == 224 and (existing / "manifest.json").exists():
        return load_bundle(existing)
    return load_bundle(write_demo_bundle(scratch / f"cxr10-{size}", "cxr10", input_size=size))


def stage_rows(bundle, images: list[bytes], repeat: int) -> list[str]:
    m = bundle.manifest
    pixels = decode_image(images[0]).pixels
    tensor = preprocess(pixels, m.input_size, m.mean, m.std)
    rows = []
    ort_engine = create_engine(bundle, "onnxruntime")
    logits_only = lambda: ort_engine.session.run(["logits", "features"], {"input": tensor[None]})  # noqa: E731
    _, features = logits_only()
    cam = cams_from_features(ort_engine.weight, features)[0, 0]
    forward = median(timed(logits_only, repeat))
    cam_ms = median(timed(lambda: cams_from_features(ort_engine.weight, features), repeat * 5))
    stages = {
        "decode (1024² PNG)": median(timed(lambda: decode_image(images[0]), repeat)),
        "preprocess": median(timed(lambda: preprocess(pixels, m.input_size, m.mean, m.std), repeat)),
        "forward (onnxruntime)": forward,
        f"CAM, all {len(m.labels)} classes": cam_ms,
        "overlay + JPEG encode (one heatmap)": median(timed(lambda: render(pixels, cam, "jpeg"), repeat)),
    }
    for name, ms in stages.items():
        rows.append(f"| {m.input_size} | {name} | {ms:.2f} |")
    rows.append(f"| {m.input_size} | CAM overhead vs forward | {100 * cam_ms / forward:.2f} % |")
    predictor = Predictor(bundle, ort_engine)
    e2e = median(timed(lambda: predictor.predict(lambda: images[0], PredictOptions()), repeat))
    rows.append(f"| {m.input_size} | **end to end** (decode → JPEG overlay, onnxruntime) | **{e2e:.2f}** |")
    return rows


def throughput_rows(bundle, images: list[bytes], repeat: int) -> list[str]:
    m = bundle.manifest
    tensors = [preprocess(decode_image(d).pixels, m.input_size, m.mean, m.std) for d in images]
    rows = []
    for engine_name in ("onnxruntime", "torch"):
        engine = create_engine(bundle, engine_name, "cpu")
        for batch in (1, 8):
            x = np.stack([tensors[i % len(tensors)] for i in range(batch)])
            ms = median(timed(lambda: engine.infer(x), max(3, repeat // batch)))
            rows.append(f"| {engine_name} | {m.input_size} | {batch} | {ms:.1f} | {1000 * batch / ms:.1f} |")
    return rows


def variant_rows(bundle, images: list[bytes], repeat: int) -> list[str]:
    """OpenVINO fp32/bf16 and ONNX Runtime static int8 against the fp32 ONNX Runtime reference."""
    m = bundle.manifest
    x = np.stack([preprocess(decode_image(d).pixels, m.input_size, m.mean, m.std) for d in images[:8]])
    reference = create_engine(bundle, "onnxruntime")
    ref_probs = reference.infer(x).probabilities
    one = x[:1]
    rows = [f"| onnxruntime fp32 (default) | {median(timed(lambda: reference.infer(one), repeat)):.1f} | 0 |"]
    for name, run in _variants(bundle, x):
        try:
            probs = 1 / (1 + np.exp(-run(x)))
            ms = median(timed(lambda: run(one), repeat))
            rows.append(f"| {name} | {ms:.1f} | {np.abs(probs - ref_probs).max():.2e} |")
        except Exception as exc:  # a benchmark reports a variant that cannot run instead of stopping
            rows.append(f"| {name} | not run: {type(exc).__name__}: {str(exc)[:80]} | |")
    return rows


def _variants(bundle, calibration: np.ndarray):
    onnx_path = str(bundle.path / "model.onnx")
    try:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(onnx_path)
        for hint in ("f32", "bf16"):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
            yield f"OpenVINO {hint}", lambda x, c=compiled: c({"input": x})["logits"]
    except ImportError:
        pass
    yield "onnxruntime int8 (static QDQ, 8 NIH images calibration)", _int8_runner(onnx_path, calibration)
    yield from _cuda_variants(bundle)


def _cuda_variants(bundle):
    """The GPU image's engine on CUDA, fp32 and fp16 autocast (only where a GPU is visible)."""
    import torch

    if not torch.cuda.is_available():
        return
    from chexnet.engines.pytorch import TorchEngine

    for precision in ("fp32", "fp16"):
        engine = TorchEngine(bundle, "cuda", precision)

        def run(x, engine=engine):
            probabilities = engine.infer(x).probabilities.astype(np.float64)
            return np.log(probabilities / (1 - probabilities))  # back to logits for the shared comparison

        yield f"torch CUDA {precision} ({torch.cuda.get_device_name(0)})", run


def _int8_runner(onnx_path: str, calibration: np.ndarray):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    out = Path(tempfile.mkdtemp()) / "model.int8.onnx"
    quantize_static(onnx_path, str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="../shared/data/nih", type=Path, help="folder of 1024² PNGs")
    parser.add_argument("--models-dir", default="models", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--write", type=Path, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.samples.glob("*.png"))[:8]]
    if not images:
        parser.error(f"no PNG files in {args.samples}")
    with tempfile.TemporaryDirectory() as scratch:
        bundles = {size: bundle_for(size, args.models_dir, Path(scratch)) for size in (224, 512)}
        stages = [r for size in (224, 512) for r in stage_rows(bundles[size], images, args.repeat)]
        throughput = [r for size in (224, 512) for r in throughput_rows(bundles[size], images, args.repeat)]
        variants = variant_rows(bundles[224], images, args.repeat)
    body = "\n".join([
        f"## Inference core (`bench/inference.py`, {dt.date.today().isoformat()})",
        f"Machine: {machine()}. Demo cxr10 bundle (10 classes); medians of {args.repeat} runs.",
        "", "Per-stage latency, batch 1 (ms):", "", "| input | stage | ms |", "| --- | --- | --- |", *stages,
        "", "Throughput per engine (CPU; forward + CAM for every class):", "",
        "| engine | input | batch | ms per batch | images/s |", "| --- | --- | --- | --- | --- |", *throughput,
        "", "Precision variants at 224 px, batch 1 (max |Δp| over 8 NIH images × 10 classes vs fp32):", "",
        "| variant | ms | max prob. difference |", "| --- | --- | --- |", *variants,
    ])
    print(body)
    if args.write:
        write_section(args.write, "inference", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
