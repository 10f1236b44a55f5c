"""Inference benchmark: per-stage latency and images/s per engine, batch 1 and 8, input 224 and 512,
from 1024² PNGs; CAM overhead; OpenVINO fp32 and the bundle's validated bf16/int8 variants against fp32.

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
import chexnet
from chexnet.bundle import load_bundle  # noqa: E402
from chexnet.bundle.build import write_demo_bundle  # noqa: E402
from chexnet.engines import create_engine  # noqa: E402
from chexnet.engines.base import cams_from_features  # noqa: E402
from chexnet.heatmap import background, render  # noqa: E402
from chexnet.imaging import decode_image, preprocess  # noqa: E402
from chexnet.options import PredictOptions  # noqa: E402
from chexnet.predictor import Predictor  # noqa: E402
from common import machine, median, timed, write_section  # noqa: E402


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
        "overlay + JPEG encode (one heatmap)": median(timed(lambda: render(background(pixels), cam, "jpeg"), repeat)),
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
            ms = median(timed(lambda engine=engine, x=x: engine.infer(x), max(3, repeat // batch)))
            rows.append(f"| {engine_name} | {m.input_size} | {batch} | {ms:.1f} | {1000 * batch / ms:.1f} |")
    return rows


def variant_rows(bundle, samples: list[bytes], repeat: int) -> list[str]:
    """Each engine and precision the bundle serves, as the service builds it, against the ONNX Runtime
    fp32 reference: forward + CAM at batch 1 on all the cores, and the largest probability difference
    over every sample image and class."""
    m = bundle.manifest
    x = np.stack([preprocess(decode_image(d).pixels, m.input_size, m.mean, m.std) for d in samples])
    reference = create_engine(bundle, "onnxruntime").infer(x).probabilities
    rows = []
    for name, engine in _engines(bundle):
        probabilities = np.concatenate([engine.infer(x[i : i + 1]).probabilities for i in range(len(x))])
        ms = median(timed(lambda engine=engine: engine.infer(x[:1]), repeat))
        flips = int(((probabilities >= 0.5) != (reference >= 0.5)).sum())
        rows.append(f"| {name} | {ms:.1f} | {np.abs(probabilities - reference).max():.2e} | {flips} |")
    return rows


def _engines(bundle):
    yield "onnxruntime fp32 (reference)", create_engine(bundle, "onnxruntime")
    for precision in ("fp32", *bundle.manifest.variants):
        yield f"openvino {precision}", create_engine(bundle, "openvino", precision=precision)
    yield from _cuda_engines(bundle)


def _cuda_engines(bundle):
    """The GPU image's engine on CUDA, fp32 and fp16 autocast (only where a GPU is visible)."""
    import torch

    if not torch.cuda.is_available():
        return
    for precision in ("fp32", "fp16"):
        yield (
            f"torch CUDA {precision} ({torch.cuda.get_device_name(0)})",
            create_engine(bundle, "torch", "cuda", precision),
        )


def main() -> int:
    chexnet.configure()  # the product's codecs, decode bounds and log redaction, as its entry points set them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="../shared/data/nih", type=Path, help="folder of 1024² PNGs")
    parser.add_argument("--models-dir", default="models", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--write", type=Path, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    samples = [p.read_bytes() for p in sorted(args.samples.glob("*.png"))]
    images = samples[:8]
    if not images:
        parser.error(f"no PNG files in {args.samples}")
    with tempfile.TemporaryDirectory() as scratch:
        bundles = {size: bundle_for(size, args.models_dir, Path(scratch)) for size in (224, 512)}
        stages = [r for size in (224, 512) for r in stage_rows(bundles[size], images, args.repeat)]
        throughput = [r for size in (224, 512) for r in throughput_rows(bundles[size], images, args.repeat)]
        variants = variant_rows(bundles[224], samples, args.repeat)
    body = "\n".join(
        [
            f"## Inference core (`bench/inference.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. Demo cxr10 bundle (10 classes); medians of {args.repeat} runs.",
            "",
            "Per-stage latency, batch 1 (ms):",
            "",
            "| input | stage | ms |",
            "| --- | --- | --- |",
            *stages,
            "",
            "Throughput per engine (CPU; forward + CAM for every class):",
            "",
            "| engine | input | batch | ms per batch | images/s |",
            "| --- | --- | --- | --- | --- |",
            *throughput,
            "",
            f"Engines and precisions at 224 px, batch 1, all cores (max |Δp| and decisions flipped at 0.5 over "
            f"{len(samples)} NIH images × 10 classes vs ONNX Runtime fp32; the variants are the bundle's validated ones):",
            "",
            "| engine, precision | ms | max prob. difference | flips |",
            "| --- | --- | --- | --- |",
            *variants,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "inference", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
