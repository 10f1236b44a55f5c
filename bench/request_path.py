"""CPU milliseconds of each stage of one request's image path, outside the service: decode, resize and
normalise (preprocess), heatmap overlay render, overlay encode (JPEG, the REST default, and PNG).

Each stage runs alone on one Python thread, N times per sample image; the figure is the minimum CPU time
(time.process_time, so threads a library starts are counted), and a row gives the median of those minima
over the images of one input kind. The rows of a run carry its --label; rows of other labels already in
BENCHMARKS.md are kept, so a "before" run and an "after" run of a change sit in one table.

    python bench/request_path.py --samples ../shared/data --label before --write BENCHMARKS.md
"""

import argparse
import functools
import io
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chexnet  # noqa: E402
from chexnet import heatmap  # noqa: E402
from chexnet.imaging import DecodeLimits, DecodeSize, decode_image, preprocess  # noqa: E402
from common import machine, write_section  # noqa: E402

SECTION = "request-path"
SIZE = DecodeSize(224, heatmap.DEFAULT_LONG_SIDE)  # what the predictor asks for at 224 px
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STAGES = ("decode", "preprocess", "overlay render", "JPEG encode", "PNG encode")


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1000.0


def _jpeg(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def inputs(samples: Path, count: int) -> dict[str, list[bytes]]:
    """Input kinds as hospitals send them, from the sample radiographs (nothing written to disk)."""
    nih = sorted((samples / "nih").glob("*.png"))
    gray = [p for p in nih if Image.open(p).mode == "L"][:count]
    dicom = samples / "dicom"
    return {
        "PNG 8-bit gray 1024²": [p.read_bytes() for p in gray],
        "PNG RGBA 1024²": [p.read_bytes() for p in nih if Image.open(p).mode == "RGBA"],
        "JPEG q90 1024²": [_jpeg(p) for p in gray],
        "DICOM 15-bit uncompressed 1841×1955": [(dicom / "RG1_UNCR.dcm").read_bytes()],
        "DICOM JPEG 2000 lossless": [(dicom / "RG1_J2KR.dcm").read_bytes()],
        "DICOM JPEG baseline 1024²": [(dicom / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm").read_bytes()],
    }


def stage_costs(data: bytes, repeat: int) -> dict[str, float]:
    limits = DecodeLimits()
    image = decode_image(data, limits, SIZE)
    cam = np.random.default_rng(0).random((7, 7), dtype=np.float32)
    base = heatmap.background(image.pixels)
    render = cpu_ms(lambda: heatmap.render(base, cam, None), repeat)
    return {
        "decode": cpu_ms(lambda: decode_image(data, limits, SIZE), repeat),
        "preprocess": cpu_ms(lambda: preprocess(image.pixels, 224, MEAN, STD), repeat),
        # One heatmap's render: the request's shrunk background (made once) and the blend.
        "overlay render": cpu_ms(lambda: heatmap.background(image.pixels), repeat) + render,
        # Encoding is rendering with a format, less rendering alone.
        "JPEG encode": max(0.0, cpu_ms(lambda: heatmap.render(base, cam, "jpeg"), repeat) - render),
        "PNG encode": max(0.0, cpu_ms(lambda: heatmap.render(base, cam, "png"), repeat) - render),
    }


def png_decoders(files: list[bytes], repeat: int) -> str:
    """Median over the 8-bit gray PNGs of the minimum CPU ms of each decoder (pyspng where installed)."""
    decoders: dict[str, Callable[[bytes], object]] = {
        "Pillow": lambda d: Image.open(io.BytesIO(d)).load(),
        "OpenCV": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED),
    }
    try:
        import pyspng  # compared only; not a dependency

        decoders["pyspng"] = pyspng.load
    except ImportError:
        pass
    cells = [
        f"{name} {statistics.median(cpu_ms(functools.partial(fn, d), repeat) for d in files):.2f} ms"
        for name, fn in decoders.items()
    ]
    return "PNG decoders alone, 8-bit gray 1024²: " + ", ".join(cells) + "."


def rows(label: str, kinds: dict[str, list[bytes]], repeat: int) -> list[str]:
    out = []
    for kind, files in kinds.items():
        costs = [stage_costs(data, repeat) for data in files]
        medians = {stage: statistics.median(c[stage] for c in costs) for stage in STAGES}
        cells = " | ".join(f"{medians[stage]:.2f}" for stage in STAGES)
        top = medians["decode"] + medians["preprocess"] + medians["overlay render"] + medians["JPEG encode"]
        out.append(f"| {label} | {kind} ({len(files)}) | {cells} | {top:.2f} |")
        print(out[-1], flush=True)
    return out


def body(rows_: list[str], note: str) -> str:
    return "\n".join(
        [
            "## Request path per stage (`bench/request_path.py`)",
            f"Machine: {machine()}. CPU ms per stage, minimum of N single-thread runs per image, median over",
            "the images of a kind (count in brackets); the last column is decode + preprocess + one JPEG",
            "overlay, what `heatmaps=top` costs besides the forward pass. Rows are labelled by the change they measure.",
            "",
            "| code | input | decode | preprocess | overlay render | JPEG encode | PNG encode | top total |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows_,
            "",
            note,
        ]
    )


def kept_rows(path: Path, label: str) -> list[str]:
    """This section's table rows of other labels, from an earlier run."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = re.search(rf"<!-- bench:{SECTION} -->(.*?)<!-- /bench:{SECTION} -->", text, re.S)
    lines = section.group(1).splitlines() if section else []
    return [
        line for line in lines if line.startswith("| ") and not line.startswith(("| code", "| ---", f"| {label} |"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=Path("../shared/data"))
    parser.add_argument("--label", required=True, help="what code this run measures, e.g. before / after")
    parser.add_argument("--images", type=int, default=8, help="PNG and JPEG sample images per kind")
    parser.add_argument("--repeat", type=int, default=15, help="runs per stage and image (the minimum counts)")
    parser.add_argument("--write", type=Path, help="rewrite this section of BENCHMARKS.md")
    args = parser.parse_args()
    chexnet.configure()  # the product's codecs and decode bounds, as its entry points set them
    kinds = inputs(args.samples, args.images)
    new = rows(args.label, kinds, args.repeat)
    note = png_decoders(next(iter(kinds.values())), args.repeat)
    if args.write:
        write_section(args.write, SECTION, body(kept_rows(args.write, args.label) + new, note))
    else:
        print(body(new, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
