"""The audit log's promise, kept with group commit: a record is on disk (fsynced) before the response it
records leaves, and concurrent records share one fsync instead of queueing behind each other's."""

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from api_helpers import make_env
from chexnet.service import audit
from chexnet.service.audit import AuditLog
from dicom_node_helpers import free_port
from waiting import wait_until


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_writers_waiting_behind_a_flush_share_the_next_fsync(tmp_path, monkeypatch):
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    synced_sizes: list[int] = []
    first_flush_holds = threading.Event()
    real_fsync = os.fsync

    def fsync(fd):
        if not synced_sizes:
            first_flush_holds.set()
            # Hold the first flush until the eight other writers have queued their records behind it.
            wait_until(lambda: len(log._open.lines) == 8, 30, "eight writers queued")
        real_fsync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(audit.os, "fsync", fsync)
    returned_with: dict[int, int] = {}

    def write(i: int) -> None:
        log.write({"request_id": f"r{i}"})
        returned_with[i] = synced_sizes[-1]

    first = threading.Thread(target=write, args=(0,))
    first.start()
    assert first_flush_holds.wait(30)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(1, 9)))
    first.join(30)

    assert len(synced_sizes) == 2, "the eight queued records took one fsync together"
    content = (tmp_path / "audit.jsonl").read_bytes()
    for i, size in returned_with.items():
        assert f'"request_id": "r{i}"'.encode() in content[:size], f"r{i} returned before its record was synced"
    assert sorted(r["request_id"] for r in records(tmp_path / "audit.jsonl")) == sorted(f"r{i}" for i in range(9))


def test_a_failed_flush_fails_every_writer_it_held_and_the_log_goes_on(tmp_path, monkeypatch):
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    real_fsync = os.fsync
    failing = {"on": True}

    def fsync(fd):
        if failing["on"]:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        log.write({"request_id": "lost"})
    failing["on"] = False
    log.write({"request_id": "kept"})
    assert records(tmp_path / "audit.jsonl")[-1]["request_id"] == "kept"


def test_sigkill_under_load_loses_no_record_of_an_answered_request(tmp_path, demo_bundle, nih_sample):
    """The real server process (python -m chexnet serve) killed by SIGKILL while eight clients keep it busy:
    every request that got its 200 has its audit row."""
    env = make_env(tmp_path, demo_bundle.path)
    port = free_port()
    site = {
        "CHEXNET_MODELS_DIR": env.settings.models_dir,
        "CHEXNET_LICENSE_KEYS": env.settings.license_keys,
        "CHEXNET_PRODUCT_UUID_FILE": env.settings.product_uuid_file,
        "CHEXNET_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "CHEXNET_ENGINE": "onnxruntime",
        "CHEXNET_HOST": "127.0.0.1",
        "CHEXNET_PORT": str(port),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "chexnet", "serve"],
        env={**os.environ, **site},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/v1"
    answered: list[str] = []
    stop = threading.Event()
    image = nih_sample[0].read_bytes()
    headers = {"Authorization": f"Bearer {env.token()}", "Content-Type": "image/png"}

    def client() -> None:
        while not stop.is_set():
            try:
                response = requests.post(f"{url}/predict?heatmaps=none", data=image, headers=headers, timeout=60)
            except requests.RequestException:
                return  # the server is gone
            if response.status_code == 200:
                answered.append(response.json()["request_id"])

    try:
        wait_until(lambda: _ready(url), 180, "the server ready")
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 40, 300, "40 answered requests")
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        stop.set()
        for t in threads:
            t.join(90)
    finally:
        stop.set()
        server.kill()
        server.wait(30)
    recorded = {r.get("request_id") for r in records(tmp_path / "audit.jsonl")}
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit row"


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False
