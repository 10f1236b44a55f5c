"""DICOM end to end per transfer syntax, full decode ("before") against decoding at the resolution the
model needs ("after", the product's path: chexnet.imaging.reduced), through the one prediction path
(decode → preprocess → forward → one JPEG heatmap), ONNX Runtime fp32 on all the cores.

The CR of ../shared/data/dicom/RG1_* (1841×1955, 15-bit, windowed) as stored (uncompressed, JPEG 2000
lossless) and re-encoded here (JPEG 2000 lossy, JPEG lossless with GDCM, RLE); JPEG baseline is the
8-bit RSNA file (1024², no window), against its own uncompressed copy.

    python bench/dicom_syntaxes.py --models-dir models --samples ../shared/data/dicom --write BENCHMARKS.md
"""

import argparse
import copy
import datetime as dt
import io
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import gdcm
import numpy as np
import pydicom
from pydicom.uid import JPEG2000, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chexnet
from chexnet.bundle import load_bundle  # noqa: E402
from chexnet.engines import create_engine  # noqa: E402
from chexnet.predictor import Predictor  # noqa: E402
from common import machine, median, timed, write_section  # noqa: E402


def _saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _encoded(source: Path, syntax, **kwargs) -> bytes:
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds = copy.deepcopy(ds)
    ds.compress(syntax, **kwargs)
    return _saved(ds)


def _gdcm(source: Path, syntax: int) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
        if not (reader.Read() and (change.SetInput(reader.GetImage()) or change.Change())):
            raise SystemExit(f"GDCM could not transcode {source}")
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(Path(scratch) / "out.dcm"))
        if not writer.Write():
            raise SystemExit(f"GDCM could not write {source}")
        return (Path(scratch) / "out.dcm").read_bytes()


def _uncompressed(source: Path) -> bytes:
    ds = pydicom.dcmread(source)
    ds.decompress()
    return _saved(ds)


def inputs(samples: Path) -> list[tuple[str, str, bytes]]:
    """(syntax, reference row, file bytes)."""
    cr = samples / "RG1_UNCR.dcm"
    rsna = samples / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"
    return [
        ("uncompressed (RG1_UNCR)", "cr", cr.read_bytes()),
        ("JPEG 2000 lossless (RG1_J2KR)", "cr", (samples / "RG1_J2KR.dcm").read_bytes()),
        ("JPEG 2000 lossy (20:1)", "cr", _encoded(cr, JPEG2000, j2k_cr=[20])),
        ("JPEG lossless SV1 (GDCM)", "cr", _gdcm(cr, gdcm.TransferSyntax.JPEGLosslessProcess14_1)),
        ("RLE lossless", "cr", _encoded(cr, RLELossless)),
        ("uncompressed (RSNA, decompressed)", "rsna", _uncompressed(rsna)),
        ("JPEG baseline (RSNA)", "rsna", rsna.read_bytes()),
    ]


def _reader(data: bytes) -> Callable[[], bytes]:
    """What Predictor.predict reads the file with: hands back the same bytes each time."""
    return lambda: data


def main() -> int:
    chexnet.configure()  # the product's codecs, decode bounds and log redaction, as its entry points set them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--samples", type=Path, default=Path("../shared/data/dicom"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    bundle = load_bundle(args.models_dir / "cxr10")
    predictor = Predictor(bundle, create_engine(bundle, "onnxruntime"))
    reduced = predictor.decode_size
    rows, reference = [], {}
    for name, group, data in inputs(args.samples):
        read = _reader(data)
        results = {}
        for label, size in (("before", None), ("after", reduced)):
            predictor.decode_size = size
            results[label] = (
                median(timed(lambda read=read: predictor.predict(read), args.repeat)),
                np.array([f.probability for f in predictor.predict(read).findings]),
            )
        reference.setdefault(group, results)
        base = reference[group]
        delta = np.abs(results["after"][1] - results["before"][1]).max()
        row = (
            f"| {name} | {results['before'][0]:.0f} | {results['before'][0] / base['before'][0]:.1f}x | "
            f"{results['after'][0]:.0f} | {results['after'][0] / base['after'][0]:.1f}x | {delta:.1e} |"
        )
        print(row, flush=True)
        rows.append(row)
    predictor.decode_size = reduced
    body = "\n".join(
        [
            f"## DICOM per transfer syntax (`bench/dicom_syntaxes.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. In-process, the prediction path (decode → preprocess → ONNX Runtime fp32 forward → "
            f"one JPEG heatmap), cxr10 demo bundle, 224 px; medians of {args.repeat}. Before: every pixel decoded; "
            f"after: decoded at the coarsest resolution whose short side is ≥ 224 and long side ≥ 512 (JPEG 2000 levels, "
            "JPEG DCT scaling) where the header fixes the display window. Ratio: against the uncompressed copy of the "
            "same image. Δp: the largest probability difference between before and after.",
            "",
            "| transfer syntax | before ms | before ratio | after ms | after ratio | max Δp |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "dicom", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
