"""The service under closed-loop load, for bench/gpu_check.py: ``python -m chexnet serve`` in a child process
with a throw-away licence, N client threads each sending the next 1024² PNG as soon as the last is answered,
and around each row what the service and the machine did: Prometheus deltas (stage times, batch sizes), the
server's and the client's CPU, and the GPU's utilisation (nvidia-smi). From these, the resource closest to
saturation is named as the bottleneck (:func:`bottleneck`)."""

import base64
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import concurrently, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOST_UUID = "4c4c4544-0047-3510-8051-b4c04f4e4e32"


class Licence:
    """A throw-away vendor key, the host identity file and one token, made once per run."""

    def __init__(self, scratch: Path, features: str):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from licensing.tokens import issue_token

        key = Ed25519PrivateKey.generate()
        self.public_key = scratch / "vendor_public.pem"
        self.public_key.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.uuid_file = scratch / "product_uuid"
        self.uuid_file.write_text(HOST_UUID + "\n")
        self.token = issue_token(
            key, product_uuid=HOST_UUID, customer="bench", subject="gpu-check", days=1, features=features.split(",")
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(models_dir: Path, licence: Licence, env: dict, ready_s: float = 300):
    """A server on a free port: yields (url, process). Not ready in time: RuntimeError with /ready's reasons."""
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        full_env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            CHEXNET_MODELS_DIR=str(models_dir),
            CHEXNET_LICENSE_KEYS=str(licence.public_key),
            CHEXNET_PRODUCT_UUID_FILE=str(licence.uuid_file),
            CHEXNET_AUDIT_LOG=f"{logs}/audit.jsonl",
            CHEXNET_HOST="127.0.0.1",
            CHEXNET_PORT=str(port),
            CHEXNET_LOG_LEVEL="WARNING",
            **env,
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "chexnet", "serve"],
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{logs}/stderr", "wb"),
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, server, ready_s, f"{logs}/stderr")
            yield url, server
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_ready(url: str, server: subprocess.Popen, ready_s: float, stderr: str) -> None:
    end, reasons = time.monotonic() + ready_s, None
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {Path(stderr).read_text()[-600:]}")
        try:
            ready = requests.get(f"{url}/api/v1/ready", timeout=2)
            if ready.status_code == 200:
                return
            reasons = ready.json().get("reasons")
            if reasons and reasons != ["Models are loading and warming up."]:
                raise RuntimeError(f"not ready: {' '.join(reasons)}")
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not ready within {ready_s:.0f} s ({reasons})")


def models(url: str, token: str) -> list[dict]:
    return requests.get(f"{url}/api/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()[
        "models"
    ]


# --- what happened during a row -------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the stage and batch-size histograms, from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("chexnet_stage_seconds", "chexnet_batch_size"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                key = sample.name.rsplit("_", 1)[1]
                name = sample.labels.get("stage", "batch")
                out[f"{name}_{key}"] = out.get(f"{name}_{key}", 0.0) + sample.value
    return out


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GpuSampler:
    """nvidia-smi's utilisation every 200 ms while the row runs; None where there is no nvidia-smi."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
                self.samples.append((util, memory))
            except ValueError:
                continue

    def stop(self) -> dict:
        if self.process is None:
            return {"gpu_util_pct": None, "gpu_memory_mib": None}
        self.process.terminate()
        self.process.wait(10)
        samples = self.samples[1:] or self.samples  # the first reading can predate the row
        if not samples:
            return {"gpu_util_pct": None, "gpu_memory_mib": None}
        return {
            "gpu_util_pct": round(sum(u for u, _ in samples) / len(samples), 1),
            "gpu_memory_mib": max(m for _, m in samples),
        }


def closed_loop(url: str, token: str, images: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        i = index
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                response = session.post(
                    f"{url}/api/v1/predict?heatmaps=top&heatmap_format=jpeg",
                    files={"image": ("x.png", images[i % len(images)])},
                    timeout=120,
                )
                status = str(response.status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if status == "200":
                    latencies.append(elapsed)
                else:
                    errors[status] = errors.get(status, 0) + 1
            i += clients

    wall = concurrently(clients, client)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
    }


def measured_row(
    url: str,
    server: subprocess.Popen,
    token: str,
    images: list[bytes],
    clients: int,
    seconds: float,
    decode_slots: int,
    engine_workers: int,
    engine_cpu_threads: int,
) -> dict:
    """One closed-loop row with what the service, the client and the GPU did during it. engine_cpu_threads: the
    CPU threads an engine call keeps busy (0 for a GPU engine, whose calls mostly wait for the device)."""
    before, server_cpu, client_cpu = scrape(url), process_cpu_s(server.pid), _own_cpu_s()
    gpu = GpuSampler()
    row = closed_loop(url, token, images, clients, seconds)
    row.update(gpu.stop())
    after = scrape(url)
    wall = row["seconds"]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("batch_count", 0.0)
    images_done = delta.get("batch_sum", 0.0)
    per_image = {
        stage: delta[f"{stage}_sum"] / delta[f"{stage}_count"] * 1000
        for stage in ("decode", "preprocess", "inference", "heatmap")
        if delta.get(f"{stage}_count")
    }
    row.update(
        {
            "mean_batch": round(images_done / batches, 2) if batches else None,
            "stage_ms": {k: round(v, 2) for k, v in per_image.items()},
            # each image's inference time is its batch's engine call: one call per batch, engine_workers at once
            "engine_busy": round(per_image.get("inference", 0.0) / 1000 * batches / wall / engine_workers, 3)
            if batches
            else None,
            "decode_busy": round(
                (delta.get("decode_sum", 0.0) + delta.get("preprocess_sum", 0.0)) / wall / decode_slots, 3
            ),
            "decode_slots": decode_slots,
            "server_cores": round((process_cpu_s(server.pid) - server_cpu) / wall, 2),
            "client_cores": round((_own_cpu_s() - client_cpu) / wall, 2),
        }
    )
    # the server's CPU less its decoding and its engine calls (C code that releases the GIL): about the Python
    # work (waitress, JSON/base64, heatmap overlays, the batcher), which holds the GIL and so one core bounds
    engine_cores = (row["engine_busy"] or 0) * engine_workers * engine_cpu_threads
    row["python_cores"] = round(max(0.0, row["server_cores"] - row["decode_busy"] * decode_slots - engine_cores), 2)
    return row


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def json_base64_ms(image_png: bytes, findings: int = 10, repeat: int = 50) -> float:
    """What JSON and base64 cost per response (one JPEG heatmap of ~50 KiB), holding the GIL throughout."""
    blob = image_png[:50_000]
    body = {
        "findings": [
            {"code": f"c{i}", "name": "x", "probability": 0.5, "threshold": 0.5, "positive": False}
            for i in range(findings)
        ]
    }
    start = time.perf_counter()
    for _ in range(repeat):
        json.dumps({**body, "heatmaps": [{"data": base64.b64encode(blob).decode("ascii")}]})
    return (time.perf_counter() - start) * 1000 / repeat


def bottleneck(row: dict, max_batch: int, json_ms: float) -> str:
    """The resource closest to saturation during a row, with its figure; the rules are the README's."""
    candidates = {
        "GPU (the forward pass)": (row["gpu_util_pct"] or 0) / 100,
        "the engine workers (engine calls at once)": row["engine_busy"] or 0,
        "decode on CPU (the decode slots)": row["decode_busy"],
        f"the GIL (one Python process: waitress, JSON/base64 {json_ms:.1f} ms a request, heatmap overlays)": row[
            "python_cores"
        ],
        "the load client (Python threads in one process)": row["client_cores"],
    }
    name, level = max(candidates.items(), key=lambda kv: kv[1])
    if level >= 0.8:
        return f"{name}: {level:.0%} busy"
    if row["mean_batch"] is not None and row["clients"] >= 2 * max_batch and row["mean_batch"] < 0.5 * max_batch:
        return f"the batcher: batches of {row['mean_batch']} for a limit of {max_batch} (waitress threads, queue)"
    return f"none saturated (most: {name}, {level:.0%}): latency-bound at {row['clients']} clients"
