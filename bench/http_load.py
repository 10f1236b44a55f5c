"""HTTP load benchmark: closed loop, 1/4/16 clients, 1024² PNGs, one JPEG heatmap per request.

Starts `python -m chexnet serve` on 127.0.0.1 with a throw-away licence key (or uses --url and
--token), runs each client count for --seconds, prints requests/s and p50/p95/p99, and with
--write puts the table into BENCHMARKS.md.

    python bench/http_load.py --models-dir models --write BENCHMARKS.md
"""

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import concurrently, engine_unavailable, machine, percentile, write_section  # noqa: E402

HOST_UUID = "4c4c4544-0047-3510-8051-b4c04f4e4e32"


def start_server(models_dir: Path, scratch: Path, port: int, extra_env: dict) -> subprocess.Popen:
    python = sys.executable
    subprocess.run([python, "-m", "licensing", "keygen", "--out", str(scratch)], check=True, capture_output=True)
    (scratch / "uuid").write_text(HOST_UUID)
    env = dict(
        os.environ,
        CHEXNET_MODELS_DIR=str(models_dir),
        CHEXNET_LICENSE_KEYS=str(scratch / "vendor_public.pem"),
        CHEXNET_PRODUCT_UUID_FILE=str(scratch / "uuid"),
        CHEXNET_AUDIT_LOG=str(scratch / "audit.jsonl"),
        CHEXNET_HOST="127.0.0.1",
        CHEXNET_PORT=str(port),
        CHEXNET_LOG_LEVEL="WARNING",
        **extra_env,
    )
    return subprocess.Popen([python, "-m", "chexnet", "serve"], env=env, stdout=subprocess.DEVNULL)


def issue(scratch: Path, features: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "licensing",
            "issue",
            "--key",
            str(scratch / "vendor_private.pem"),
            "--product-uuid",
            HOST_UUID,
            "--customer",
            "bench",
            "--subject",
            "bench",
            "--days",
            "1",
            "--features",
            features,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def wait_ready(url: str, deadline_s: float = 180) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if requests.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready within {deadline_s} s")


@contextmanager
def serving(models_dir: Path, port: int, extra_env: dict, features: str):
    """A throw-away server and licence: yields (url, token, server process); stops it afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server = start_server(models_dir, scratch, port, extra_env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url)
            yield url, issue(scratch, features), server
        finally:
            server.terminate()
            server.wait(30)


def run_clients(
    url: str,
    token: str,
    query: str,
    uploads: list[tuple[str, bytes]],
    clients: int,
    seconds: float,
) -> dict:
    """A closed loop: each client posts the next of uploads ((file name, bytes)) as the multipart field 'image'
    to /api/v1/predict?QUERY as soon as its last answer came, until seconds have passed."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        i = index
        while time.monotonic() < stop:
            start = time.perf_counter()
            response = session.post(
                f"{url}/api/v1/predict?{query}", files={"image": uploads[i % len(uploads)]}, timeout=120
            )
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if response.status_code == 200:
                    latencies.append(elapsed)
                else:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1
            i += clients

    wall = concurrently(clients, client)
    return {
        "clients": clients,
        "ok": len(latencies),
        "errors": errors,
        "wall": wall,
        "rps": len(latencies) / wall,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="cxr10")
    parser.add_argument("--samples", type=Path, default=Path("../shared/data/nih"))
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument(
        "--configs",
        default="1:0",
        help="comma list of MAX_BATCH:ENGINE_WORKERS (0: the service's default), one server run each",
    )
    parser.add_argument(
        "--engines",
        default="onnxruntime:fp32,openvino:fp32,openvino:bf16,openvino:int8",
        help="comma list of ENGINE:PRECISION, each run with every config",
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--port", type=int, default=18380)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    images = [("x.png", p.read_bytes()) for p in sorted(args.samples.glob("*.png"))[:16]]
    rows = []
    for engine, precision in (pair.split(":") for pair in args.engines.split(",")):
        why = engine_unavailable(engine, precision, args.models_dir, args.model)
        if why:
            print(f"# {engine} {precision}: not measured, {why}", flush=True)
            continue
        for config in args.configs.split(","):
            max_batch, workers = config.split(":")
            extra = {
                "CHEXNET_ENGINE": engine,
                "CHEXNET_PRECISION": precision,
                "CHEXNET_MAX_BATCH": max_batch,
                "CHEXNET_ENGINE_WORKERS": workers,
                "CHEXNET_MODELS": args.model,
            }
            query = f"heatmaps=top&heatmap_format=jpeg&model={args.model}"
            with serving(args.models_dir, args.port, extra, args.model) as (url, token, _):
                run_clients(url, token, query, images, 2, 3)  # warm-up
                for clients in map(int, args.clients.split(",")):
                    r = run_clients(url, token, query, images, clients, args.seconds)
                    errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
                    row = (
                        f"| {engine} {precision} | {max_batch} | {workers if workers != '0' else 'default'} | "
                        f"{clients} | {r['ok']} | {errors} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                        f"{r['p99']:.0f} |"
                    )
                    print(row, flush=True)
                    rows.append(row)
    body = "\n".join(
        [
            f"## HTTP API, closed loop (`bench/http_load.py`, {dt.date.today().isoformat()})",
            f"Machine: {machine()}. Server: `python -m chexnet serve` (waitress, {args.model} demo bundle, 224 px, "
            f"the bundle's validated variants); client: Python threads on the same machine (they share its cores). "
            f"Each request: a 1024² PNG upload, all findings, one JPEG heatmap. {args.seconds:.0f} s per row. "
            "Engine workers `default`: the service's layout for these cores (chexnet.cpu).",
            "",
            "| engine, precision | max batch | engine workers | clients | requests | errors | requests/s | p50 ms | "
            "p95 ms | p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section(args.write, "http", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
