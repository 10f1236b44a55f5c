"""Service memory under worst-case uploads within the limits (DESIGN.md "Resource bounds").

Starts `python -m chexnet serve` on 127.0.0.1 (as bench/http_load.py does), warms it up, then for
each scenario resets the server's peak resident set (/proc/PID/clear_refs), sends the uploads
(concurrently where the scenario says so) and reads the peak (VmHWM) back. With --write the table
goes into BENCHMARKS.md; the compose memory limit is sized from it.

    python bench/decode_memory.py --models-dir models --write BENCHMARKS.md
"""

import argparse
import datetime as dt
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "test"))
import hostile_files  # noqa: E402
from common import machine, write_section  # noqa: E402
from dicom_factory import make_dicom  # noqa: E402
from http_load import serving  # noqa: E402


def status_mib(pid: int, key: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def scenario(url: str, token: str, pid: int, uploads: list[bytes]) -> tuple[float, dict]:
    """Peak MiB above the resident set at the start, and the status codes the uploads got."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    start = status_mib(pid, "VmRSS")

    def send(data: bytes) -> int:
        return requests.post(
            f"{url}/api/v1/predict?heatmaps=top", data=data, timeout=300, headers={"Authorization": f"Bearer {token}"}
        ).status_code

    with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        codes = list(pool.map(send, uploads))
    counts: dict = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return status_mib(pid, "VmHWM") - start, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="cxr10")
    parser.add_argument("--samples", type=Path, default=Path("../shared/data"))
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    png36 = hostile_files.png16(6000, 6000)
    largest_dicom = make_dicom(np.tile(np.arange(5600, dtype=np.uint16), (5600, 1)))  # 59.8 MiB, 31 MP
    scenarios = [
        ("one 36 MP 16-bit PNG (82 KiB)", [png36]),
        (f"one uncompressed 16-bit DICOM, 5600x5600 ({len(largest_dicom) / 2**20:.1f} MiB)", [largest_dicom]),
        ("one JPEG 2000 CR, RG1_J2KR.dcm (1841x1955)", [(args.samples / "dicom" / "RG1_J2KR.dcm").read_bytes()]),
        ("one deflated DICOM inflating to 512 MiB (509 KiB)", [hostile_files.deflate_bomb(512)]),
        ("one 48x48 DICOM carrying a 20000x20000 JPEG 2000", [hostile_files.codestream_bomb("j2k")]),
        ("8 concurrent 36 MP 16-bit PNGs", [png36] * 8),
    ]
    configs = [("default", {}), ("8", {"CHEXNET_DECODE_CONCURRENCY": "8"})]
    rows = []
    for label, extra in configs:
        with serving(args.models_dir, args.port, {"CHEXNET_MODELS": args.model, **extra}, args.model) as (
            url,
            token,
            server,
        ):
            scenario(url, token, server.pid, [(args.samples / "nih" / "00000075_000.png").read_bytes()] * 2)
            idle = status_mib(server.pid, "VmRSS")
            for name, uploads in scenarios:
                if label != "default" and len(uploads) == 1:
                    continue  # concurrency only matters for concurrent uploads
                peak, codes = scenario(url, token, server.pid, uploads)
                answered = ", ".join(f"{n}× {code}" for code, n in sorted(codes.items()))
                row = f"| {name} | {label} | {idle:.0f} | {peak:.0f} | {answered} |"
                print(row, flush=True)
                rows.append(row)
    body = "\n".join(
        [
            f"## Decode memory, worst cases within the limits (`bench/decode_memory.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. Server: `python -m chexnet serve` (waitress, 8 threads, ONNX Runtime, {args.model} demo "
            "bundle), default limits (64 MiB uploads, 40 MP). Peak = the server's VmHWM minus its resident set just "
            "before the uploads (reset through /proc/PID/clear_refs each row); idle = resident set after warm-up. "
            "Decode concurrency `default` is one per core, at most 4 (here 2).",
            "",
            "| uploads | decode concurrency | idle MiB | peak above idle, MiB | answers |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "memory", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
