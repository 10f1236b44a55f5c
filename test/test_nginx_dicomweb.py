"""nginx in front of the DICOM node's STOW-RS (nginx/nginx.conf, errors.conf, entrypoint.sh), with Debian's
nginx on this host: the image's configuration as the entrypoint renders it, only its folders, ports and the
API's address moved into a temporary folder. Without the node (its name does not resolve), /dicomweb/ is a
JSON 503 that says so, never nginx's 502 page; with the node, a STOW-RS request passes through, streamed,
and a body over CHEXNET_DICOMWEB_MAX_REQUEST_MB is nginx's JSON 413 naming that setting."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from api_helpers import LiveServer, make_env, ready_app
from dicom_node_helpers import CHEST, Node, free_port
from orthanc_helpers import stow_body
from sample_data import ROOT
from waiting import wait_until

NGINX = Path("/usr/sbin/nginx")


@pytest.fixture()
def proxy(tmp_path):
    """A function (node_port or None) → the HTTPS base URL of a running nginx and its certificate; stopped
    afterwards."""
    if not NGINX.exists() or shutil.which("dash") is None or shutil.which("openssl") is None:
        pytest.skip("Debian's nginx-light, dash and openssl are not installed here (.ci/run installs them)")
    folder = tmp_path / "nginx"
    for name in ("bin", "certs", "generated", "body", "proxy"):
        (folder / name).mkdir(parents=True)
    (folder / "bin" / "nginx").write_text("#!/bin/sh\nexit 0\n")  # the entrypoint's own 'nginx -t' and exec
    (folder / "bin" / "nginx").chmod(0o755)
    env = {
        "PATH": f"{folder / 'bin'}:/usr/bin:/bin",
        "CHEXNET_NGINX_CERTS": str(folder / "certs"),
        "CHEXNET_NGINX_GENERATED": str(folder / "generated"),
        "CHEXNET_DICOMWEB_MAX_REQUEST_MB": "8",
    }
    rendered = subprocess.run(
        ["dash", str(ROOT / "nginx/entrypoint.sh"), "true"], env=env, capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", "dh.pem"],
        cwd=folder,
        capture_output=True,
        check=True,
    )
    upstream = folder / "generated/upstream.conf"
    compose_upstream = upstream.read_text()
    https_port = free_port()
    started = []

    def start(node_port: int | None, api_port: int, read_timeout_s: int | None = None) -> str:
        upstream.write_text(compose_upstream.replace("server api:8080;", f"server 127.0.0.1:{api_port};"))
        text = (ROOT / "nginx/nginx.conf").read_text()
        for old, new in (
            ("/run/chexnet-nginx/nginx.pid", str(folder / "nginx.pid")),
            ("/run/chexnet-nginx", str(folder / "generated")),
            ("/etc/nginx/certs", str(folder / "certs")),
            ("/etc/nginx/chexnet-errors.conf", str(folder / "errors.conf")),
            ("/etc/nginx/ffdhe2048.pem", str(folder / "dh.pem")),
            ("/var/lib/nginx", str(folder)),
            ("/dev/stdout", str(folder / "access.log")),
            ("listen 8080 default_server", f"listen 127.0.0.1:{free_port()} default_server"),
            ("listen 8443 ssl", f"listen 127.0.0.1:{https_port} ssl"),
        ):
            text = text.replace(old, new)
        if node_port is not None:  # the node on this host instead of Docker's DNS name
            text = text.replace("set $chexnet_dicom_node dicom-node;", "set $chexnet_dicom_node 127.0.0.1;")
            text = text.replace("$chexnet_dicom_node:8042", f"$chexnet_dicom_node:{node_port}")
        if read_timeout_s is not None:  # the API's 300 s, shortened: what happens after it is the same
            text = text.replace("proxy_read_timeout 300s;", f"proxy_read_timeout {read_timeout_s}s;")
        if os.geteuid() == 0:
            text = "user root;\n" + text  # the test's folders are root's alone
        (folder / "nginx.conf").write_text(text)
        errors = (ROOT / "nginx/errors.conf").read_text().replace("/run/chexnet-nginx", str(folder / "generated"))
        (folder / "errors.conf").write_text(errors)
        run = subprocess.run(  # nginx goes to the background: its output to a file, not to a pipe held open
            [str(NGINX), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=open(folder / "nginx.out", "wb"),
            stderr=subprocess.STDOUT,
            check=False,
            timeout=30,
        )
        assert run.returncode == 0, (folder / "nginx.out").read_text() + (folder / "error.log").read_text()
        started.append(True)
        url = f"https://127.0.0.1:{https_port}"
        wait_until(lambda: (folder / "nginx.pid").exists(), 10, "nginx to start")
        return url, str(folder / "certs/server.crt")

    yield start
    if started:
        subprocess.run(
            [str(NGINX), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log"), "-s", "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )


@pytest.fixture()
def api(env, app):
    """The API on this host: nginx asks its GET /api/v1/license whether a STOW-RS caller's token is valid."""
    live = LiveServer(app)
    yield env, live.server.effective_port
    live.close()


def test_without_the_node_dicomweb_is_a_json_503_that_says_so(proxy, api):
    env, api_port = api
    url, cert = proxy(None, api_port)
    answer = _stow(url, cert, [b"x"], env.auth())
    assert answer.status_code == 503 and answer.headers["Content-Type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "not_ready" and "DICOM node" in error["message"] and error["request_id"]


def test_an_api_that_does_not_answer_is_a_json_503_with_retry_after(proxy):
    """Restarting, or a Swarm task replaced before nginx re-resolved the tasks: a 503 the contract says to send
    again after Retry-After, as the API's own not_ready; it was a 502 no client was told to retry."""
    url, cert = proxy(None, free_port())  # nothing listens there
    answer = requests.post(f"{url}/api/v1/predict", data=b"x", verify=cert, timeout=30)
    assert answer.status_code == 503 and answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "2" and answer.json()["error"]["code"] == "not_ready"
    assert "not answering" in answer.json()["error"]["message"]


def test_an_api_that_accepts_no_connection_is_a_json_503_with_retry_after(proxy):
    """A Swarm task gone (crashed, or its node lost) that DNS still names: the connection is not refused but
    unanswered, and nginx's connect timeout was a 504 'overloaded'; the request never reached an API, so it is
    the 503 to retry that a refused connection is (seen on three test nodes: two 504s when a node was lost)."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=0)
    held = socket.create_connection(silent.getsockname())  # the one connection its queue holds; later SYNs drop
    try:
        url, cert = proxy(None, silent.getsockname()[1])
        answer = requests.post(f"{url}/api/v1/predict", data=b"x", verify=cert, timeout=60)
    finally:
        held.close()
        silent.close()
    assert answer.status_code == 503 and answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "2" and answer.json()["error"]["code"] == "not_ready"


def test_an_api_that_took_the_request_and_did_not_answer_is_a_json_504(proxy):
    """An API that accepted the connection and the request but did not answer in time: overloaded, Retry-After 5
    (the prediction may still be running there)."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nothing answers
    try:
        url, cert = proxy(None, silent.getsockname()[1], read_timeout_s=1)
        answer = requests.post(f"{url}/api/v1/predict", data=b"x", verify=cert, timeout=60)
    finally:
        silent.close()
    assert answer.status_code == 504 and answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "5" and answer.json()["error"]["code"] == "overloaded"


def test_a_caller_without_a_valid_token_never_reaches_the_node(proxy, api):
    """The token is checked before nginx reads the body: no connection to the node, nothing spooled."""
    env, api_port = api
    node = socket.create_server(("127.0.0.1", 0))  # stands in for the node: counts who connects
    node.setblocking(False)
    try:
        url, cert = proxy(node.getsockname()[1], api_port)
        parts = [b"\0" * (4 << 20)]
        for headers, code in (
            ({}, "token_missing"),
            ({"Authorization": "Bearer not-a-token"}, "token_invalid"),
            (env.auth(exp=int(time.time()) - 3600), "token_invalid"),  # expired an hour ago
        ):
            answer = _stow(url, cert, parts, headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), answer.text
            error = answer.json()["error"]
            assert error["code"] == code and "Authorization: Bearer" in error["message"] and error["request_id"]
        other_host = env.auth(product_uuid="0f0e0d0c-0b0a-0908-0706-050403020100")
        answer = _stow(url, cert, parts, other_host)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "wrong_host", answer.text
        with pytest.raises(BlockingIOError):
            node.accept()
    finally:
        node.close()


def test_with_the_node_stow_rs_passes_through_and_an_oversized_body_is_nginxs_json_413(
    proxy, tmp_path, demo_bundle, dicom_dir
):
    env = make_env(tmp_path / "site", demo_bundle.path)
    live = LiveServer(ready_app(env))  # the API that checks the token for nginx
    node = Node(env, tmp_path, free_port())
    node.start()
    try:
        url, cert = proxy(int(node.env["CHEXNET_DICOMWEB_PORT"]), live.server.effective_port)
        answer = _stow(url, cert, [(dicom_dir / CHEST[1]).read_bytes(), b"not a DICOM file"], env.auth())
        assert answer.status_code == 202, answer.text
        assert "part 2:" in answer.headers["Warning"] and answer.headers["X-Request-ID"]
        assert node.metric("chexnet_dicom_received_total") == 1

        answer = _stow(url, cert, [b"\0" * (9 << 20)], env.auth())  # over the 8 MiB rendered for /dicomweb/
        assert answer.status_code == 413, answer.text
        assert "(CHEXNET_DICOMWEB_MAX_REQUEST_MB)" in answer.json()["error"]["message"]
        assert node.metric("chexnet_dicom_received_total") == 1
    finally:
        node.stop()
        live.close()


def _stow(url: str, cert: str, parts: list[bytes], headers: dict) -> requests.Response:
    """A STOW-RS request of these parts through nginx."""
    body, content_type = stow_body(parts)
    return requests.post(
        f"{url}/dicomweb/studies", data=body, headers={"Content-Type": content_type, **headers}, verify=cert, timeout=60
    )
