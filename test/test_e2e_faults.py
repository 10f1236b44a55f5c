"""Faults against the deployed stack (marker e2e; test/e2e.sh runs it after the QA script).

Needs Docker, root (to kill the API process as a crash would) and the installed site:
CHEXNET_E2E_SITE (install dir), CHEXNET_QA_URL, CHEXNET_QA_TOKEN_FILE, CHEXNET_QA_CA_CERT,
CHEXNET_QA_EXPIRED_TOKEN_FILE.
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from qa_checks import check_expired_token, check_predict_png, check_ready, context_from
from waiting import wait_until

pytestmark = pytest.mark.e2e


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: these fault tests run against an installed stack (test/e2e.sh)")
    return value


@pytest.fixture(scope="module")
def site() -> Path:
    return Path(_env("CHEXNET_E2E_SITE"))


@pytest.fixture(scope="module")
def qa():
    import argparse

    env = os.environ.get
    return context_from(
        argparse.Namespace(
            url=_env("CHEXNET_QA_URL"),
            token_file=_env("CHEXNET_QA_TOKEN_FILE"),
            ca_cert=env("CHEXNET_QA_CA_CERT"),
            http_url=None,
            wrong_host_token_file=None,
            expired_token_file=env("CHEXNET_QA_EXPIRED_TOKEN_FILE"),
            samples=env("CHEXNET_QA_SAMPLES"),
            max_upload_mb=64,
            conn_limit=32,
        )
    )


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, timeout=300).stdout.strip()


def api_container(site: Path) -> str:
    compose = shutil.which("docker-compose") and ["docker-compose"] or ["docker", "compose"]
    return subprocess.run(
        [*compose, "ps", "-q", "api"], cwd=site, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_killed_api_is_restarted_and_nginx_answers_json_meanwhile(site, qa):
    container = api_container(site)
    restarts = int(docker("inspect", "-f", "{{.RestartCount}}", container))
    os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", container)), signal.SIGKILL)  # a crash, not a stop
    seen = []

    def answered_again():
        try:
            response = qa.get("/api/v1/ready", token=None)
        except requests.RequestException:
            return False
        seen.append((response.status_code, response.headers.get("Content-Type", "")))
        return response.status_code == 200

    wait_until(answered_again, 240, "the API to come back ready")
    outage = [(status, kind) for status, kind in seen if status != 200]
    assert outage, "nginx never answered during the outage (the restart was faster than the first probe?)"
    assert all(status in (502, 503) and kind.startswith("application/json") for status, kind in outage), outage
    assert int(docker("inspect", "-f", "{{.RestartCount}}", container)) == restarts + 1
    check_ready(qa)
    check_predict_png(qa)


def test_corrupted_model_never_turns_ready_and_says_why_once(site, tmp_path):
    image = docker("inspect", "-f", "{{.Config.Image}}", api_container(site))
    scratch = docker("create", image)
    try:
        docker("cp", f"{scratch}:/opt/chexnet/models/cxr10", str(tmp_path / "cxr10"))
    finally:
        docker("rm", scratch)
    with open(tmp_path / "cxr10" / "model.onnx", "r+b") as f:
        f.seek(100_000)
        f.write(b"\x00corrupted\x00")
    os.chmod(tmp_path, 0o755)
    for path in tmp_path.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    name = f"chexnet-corrupt-{os.getpid()}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "-v",
        f"{tmp_path}:/srv/chexnet/models:ro",
        "-v",
        f"{site / 'license'}:/etc/chexnet/license:ro",
        "-v",
        f"{site / 'product_uuid'}:/etc/chexnet/product_uuid:ro",
        "-e",
        "CHEXNET_MODELS_DIR=/srv/chexnet/models",
        "-e",
        "CHEXNET_LICENSE_KEYS=/etc/chexnet/license/keys",
        "-e",
        "CHEXNET_PRODUCT_UUID_FILE=/etc/chexnet/product_uuid",
        image,
    )
    try:
        wait_until(lambda: "start-up finished" in docker("logs", name), 120, "the start-up to finish")
        ready = subprocess.run(["docker", "exec", name, "python", "-m", "chexnet.api.healthcheck"], timeout=60)
        assert ready.returncode == 1, "the API with a corrupted model reports ready"
        logs = docker("logs", name)
        reasons = [line for line in logs.splitlines() if "does not match its sha256" in line]
        assert len(reasons) == 1, logs
        assert "model.onnx" in reasons[0] and "Traceback" not in logs
    finally:
        docker("rm", "-f", name, check=False)


def test_expired_token_is_refused_while_others_work(qa):
    if not qa.expired_token:
        pytest.skip("CHEXNET_QA_EXPIRED_TOKEN_FILE is not set")
    check_expired_token(qa)
