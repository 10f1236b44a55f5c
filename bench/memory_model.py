"""The figures behind the start-up memory check (chexnet/service/memory.py), measured.

1. One decode per kind of file: each file decoded in a fresh subprocess (codecs loaded by a first
   decode), the peak resident set (VmHWM, reset through /proc/self/clear_refs) above the start, in
   bytes per pixel of the image; the upload is already held and not counted here.
2. The runtime and bundles: `python -m chexnet serve` with one and with every bundle in --models-dir,
   resident after warm-up traffic (clients posting a 1024x1024 PNG with heatmaps=all).
3. The whole: a server with the default settings under a mix of worst-case uploads within the limits,
   its peak against what the check estimates for it.

    python bench/memory_model.py --models-dir models --write BENCHMARKS.md
"""

import argparse
import datetime as dt
import io
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import requests
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "test"))
import hostile_files  # noqa: E402
from common import machine, write_section  # noqa: E402
from dicom_factory import make_dicom  # noqa: E402
from http_load import serving  # noqa: E402

CHILD = r"""
import re, sys
from pathlib import Path
import chexnet
chexnet.configure()  # the product's codecs, decode bounds and log redaction, as its entry points set them
from chexnet.imaging import DecodeLimits, decode_image
def held(key): return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
data = Path(sys.argv[1]).read_bytes()
limits = DecodeLimits(max_bytes=len(data), max_pixels=int(sys.argv[2]))
decode_image(data, limits)
Path("/proc/self/clear_refs").write_text("5")
start = held("VmRSS")
decode_image(data, limits)
print(held("VmHWM") - start)
"""


def status_mib(pid: int, key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def _dicom(pixels: np.ndarray, syntax=None, frame: bytes | None = None, **elements) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels if pixels.ndim == 2 else pixels[..., 0], **elements)))
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    if frame is not None:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def decode_files(side: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 4096, (side, side), dtype=np.uint16)
    smooth = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
    rgb = np.stack([(smooth % 256).astype(np.uint8)] * 3, axis=-1)
    j2k = dict(level=0, codecformat="J2K", reversible=True, bitspersample=12)
    return {
        "uncompressed 16-bit": make_dicom(noise),
        "deflated 16-bit": _dicom(smooth, DeflatedExplicitVRLittleEndian),
        "JPEG 2000 lossless 16-bit, smooth": _dicom(
            smooth, JPEG2000Lossless, imagecodecs.jpeg2k_encode(smooth, **j2k), BitsStored=12
        ),
        "JPEG 2000 lossless 16-bit, noise": _dicom(
            noise, JPEG2000Lossless, imagecodecs.jpeg2k_encode(noise, **j2k), BitsStored=12
        ),
        "JPEG-LS 16-bit, noise": _dicom(noise, JPEGLSLossless, imagecodecs.jpegls_encode(noise), BitsStored=12),
        "RLE 16-bit": _dicom(smooth, RLELossless),
        "16-bit PNG": hostile_files.png16(side, side),
        "colour JPEG baseline (not budgeted)": _dicom(rgb, JPEGBaseline8Bit, imagecodecs.jpeg8_encode(rgb, level=90)),
    }


def decode_rows(side: int) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in decode_files(side).items():
            path = Path(scratch) / "file"
            path.write_bytes(data)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(side * side)], capture_output=True, text=True, check=True
            )
            peak = int(out.stdout)
            rows.append(f"| {name} | {len(data) / 2**20:.1f} | {peak / 2**20:.0f} | {peak / side**2:.1f} |")
            print(rows[-1], flush=True)
    return rows


def base_rows(models_dir: Path, port: int) -> list[str]:
    png = (ROOT.parent / "shared" / "data" / "nih" / "00000075_000.png").read_bytes()
    bundles = sorted(p.name for p in models_dir.iterdir() if (p / "manifest.json").is_file())
    rows = []
    for engine in ("onnxruntime", "openvino"):
        for models in (bundles[:1], bundles):
            extra = {
                "CHEXNET_MODELS": ",".join(models),
                "CHEXNET_ENGINE": engine,
                "CHEXNET_ENGINE_WORKERS": "1",
                "CHEXNET_ENGINE_THREADS": "1",
                "CHEXNET_THREADS": "8",
            }
            port += 1
            with serving(models_dir, port, extra, ",".join(bundles)) as (url, token, server):
                ready = status_mib(server.pid, "VmRSS")

                def send(i: int, models: list[str] = models) -> int:
                    return requests.post(
                        f"{url}/api/v1/predict?heatmaps=all&model={models[i % len(models)]}",
                        data=png,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=300,
                    ).status_code

                with ThreadPoolExecutor(8) as pool:
                    for _ in range(4):
                        list(pool.map(send, range(24)))
                rows.append(f"| {engine} | {', '.join(models)} | {ready:.0f} | {status_mib(server.pid, 'VmRSS'):.0f} |")
                print(rows[-1], flush=True)
    return rows


def worst_row(models_dir: Path, port: int) -> str:
    """Defaults (40 MP, 64 MiB, the derived layout): JPEG 2000 noise at the pixel limit in the decode slots
    while 40 MP PNGs fill the other threads, twice over."""
    from chexnet.service import Settings

    side = 6324  # 39.99 MP
    noise = np.random.default_rng(1).integers(0, 4096, (side, side), dtype=np.uint16)
    j2k = _dicom(
        noise,
        JPEG2000Lossless,
        imagecodecs.jpeg2k_encode(noise, level=0, codecformat="J2K", reversible=True, bitspersample=12),
        BitsStored=12,
    )
    png = hostile_files.png16(side, side)
    bundles = ",".join(sorted(p.name for p in models_dir.iterdir() if (p / "manifest.json").is_file()))
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "k.pem").write_text("")
        settings = Settings.from_env(
            {"CHEXNET_LICENSE_KEYS": str(Path(scratch) / "k.pem"), "CHEXNET_MODELS_DIR": str(models_dir)}
        )
    layout, need = settings.layout, settings.memory_estimate()
    with serving(models_dir, port, {"CHEXNET_DECODE_WAIT_S": "120"}, bundles) as (url, token, server):
        idle = status_mib(server.pid, "VmRSS")
        uploads = [j2k] * layout.decode_concurrency + [png] * (layout.http_threads - layout.decode_concurrency)

        def send(data: bytes) -> int:
            return requests.post(
                f"{url}/api/v1/predict?heatmaps=all",
                data=data,
                timeout=600,
                headers={"Authorization": f"Bearer {token}"},
            ).status_code

        with ThreadPoolExecutor(len(uploads)) as pool:
            codes = [c for _ in range(2) for c in pool.map(send, uploads)]
        peak = status_mib(server.pid, "VmHWM")
    row = (
        f"| {layout.decode_concurrency} × JPEG 2000 noise {side}² ({len(j2k) / 2**20:.0f} MiB) + "
        f"{len(uploads) - layout.decode_concurrency} × 16-bit PNG {side}², twice | {idle:.0f} | {peak:.0f} | "
        f"{need.total / 2**20:.0f} | {sorted(set(codes))} |"
    )
    print(row, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--side", type=int, default=4000, help="image side for the per-decode rows (default 16 MP)")
    parser.add_argument("--port", type=int, default=18181)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    decode = decode_rows(args.side)
    base = base_rows(args.models_dir, args.port)
    worst = worst_row(args.models_dir, args.port + 10)
    body = "\n".join(
        [
            f"## Memory model of the start-up check (`bench/memory_model.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. The figures in `chexnet/service/memory.py` come from these tables, rounded up.",
            "",
            f"One decode at {args.side}x{args.side}, peak above the upload already held:",
            "",
            "| file | upload MiB | peak MiB | bytes per pixel |",
            "| --- | --- | --- | --- |",
            *decode,
            "",
            "The runtime and bundles (1 engine worker, 8 threads, 8 clients, heatmaps=all):",
            "",
            "| engine | bundles | ready MiB | after traffic MiB |",
            "| --- | --- | --- | --- |",
            *base,
            "",
            "The default settings under worst-case uploads, against the check's estimate:",
            "",
            "| uploads at once | idle MiB | peak MiB | estimate MiB | answers |",
            "| --- | --- | --- | --- | --- |",
            worst,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "memory-model", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
