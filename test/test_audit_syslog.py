"""DICOM audit messages to the hospital's audit repository (CHEXNET_AUDIT_SYSLOG): Debian's rsyslogd receives
them over TLS (RFC 5425) as the repository does. They arrive, parse as XML and follow PS3.15 A.5.1's
structure (the schema itself is not available offline: test/syslog_helpers.py says which rules are
checked); they survive a repository outage and a restart of the API, each arriving once; a clear-text URL
or a bad CA stops the start with one sentence; a full queue refuses with a log line and a metric."""

import base64
import hashlib
import http.server
import io
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry

from api_helpers import make_env, predict, ready_app
from chexnet.predictor import Caller
from chexnet.service import SettingsError
from chexnet.service.atna import AuditSource, application_activity, instances_accessed
from chexnet.service.syslog_tls import AuditSyslogSettings, SyslogQueue
from dicom_node_helpers import CHEST, free_port
from dicom_tools import storescu
from image_helpers import png_bytes
from syslog_helpers import Rsyslog, check_audit_message, make_pki, require_rsyslog
from waiting import wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def repository(tmp_path, pki):
    require_rsyslog()
    server = Rsyslog(tmp_path / "repository", pki)
    yield server
    server.stop()


def _syslog_env(repository_url: str, pki, tmp: Path, **more: str) -> dict:
    return {
        "CHEXNET_AUDIT_SYSLOG": repository_url,
        "CHEXNET_AUDIT_SYSLOG_CA": str(pki.ca),
        "CHEXNET_AUDIT_SYSLOG_QUEUE": str(tmp / "audit-queue"),
        "CHEXNET_AUDIT_SOURCE_ID": "chexnet-test-site",
        **more,
    }


def _png(seed: int) -> bytes:
    """A small grayscale PNG of its own (each seed another file, so another SHA-256)."""
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8))


def _ids(messages, event_id: str, detail: str = "request_id") -> list[str]:
    return [m.detail(detail) for m in messages if m.event_id == event_id]


# --- settings: refused at start with one sentence naming the variable -------------------------------------
TLS_URL = "tls://audit.hospital.local:6514"


@pytest.mark.parametrize(
    "values, variable, fragment",
    [
        ({"": "udp://audit.hospital.local:514", "_CA": "{ca}"}, "CHEXNET_AUDIT_SYSLOG", "clear text"),
        ({"": "tcp://audit.hospital.local:514", "_CA": "{ca}"}, "CHEXNET_AUDIT_SYSLOG", "clear text"),
        ({"": "audit.hospital.local:6514", "_CA": "{ca}"}, "CHEXNET_AUDIT_SYSLOG", "tls://host:port"),
        ({"": TLS_URL}, "CHEXNET_AUDIT_SYSLOG_CA", "PEM file"),
        ({"": TLS_URL, "_CA": "{missing}"}, "CHEXNET_AUDIT_SYSLOG_CA", "cannot be read"),
        ({"": TLS_URL, "_CA": "{not_pem}"}, "CHEXNET_AUDIT_SYSLOG_CA", "cannot be read"),
        ({"": TLS_URL, "_CA": "{ca}", "_CERT": "{client_cert}"}, "CHEXNET_AUDIT_SYSLOG_KEY", "must be set too"),
        (
            {"": TLS_URL, "_CA": "{ca}", "_CERT": "{client_cert}", "_KEY": "{server_key}"},
            "CHEXNET_AUDIT_SYSLOG_CERT",
            "cannot be loaded",
        ),
        ({"": TLS_URL, "_CA": "{ca}", "_QUEUE": "{not_pem}/queue"}, "CHEXNET_AUDIT_SYSLOG_QUEUE", "cannot be made"),
    ],
    ids=lambda v: str(v)[:48],
)
def test_a_clear_text_url_or_unusable_tls_file_stops_the_start_with_one_sentence(
    tmp_path, demo_bundle, pki, values, variable, fragment
):
    (tmp_path / "not-a-ca.pem").write_text("this is not a certificate\n")
    files = {
        "ca": str(pki.ca),
        "missing": str(tmp_path / "absent.pem"),
        "not_pem": str(tmp_path / "not-a-ca.pem"),
        "client_cert": str(pki.client_cert),
        "server_key": str(pki.server_key),
    }
    env = {f"CHEXNET_AUDIT_SYSLOG{suffix}": value.format(**files) for suffix, value in values.items()}
    with pytest.raises(SettingsError) as refused:
        make_env(tmp_path, demo_bundle.path, **env)
    message = str(refused.value)
    assert message.startswith(variable + " ") and fragment in message, message
    assert "\n" not in message and message.endswith(".")


def test_a_queue_folder_others_could_write_is_closed_and_one_of_another_user_refused(tmp_path, demo_bundle, pki):
    """Queued messages are sent in the product's name: no other local user may plant or remove one."""
    queue = tmp_path / "shared-queue"
    queue.mkdir(mode=0o777)
    queue.chmod(0o777)
    make_env(tmp_path, demo_bundle.path, **_syslog_env(TLS_URL, pki, tmp_path, CHEXNET_AUDIT_SYSLOG_QUEUE=str(queue)))
    assert stat.S_IMODE(queue.stat().st_mode) == 0o700

    link = tmp_path / "linked-queue"
    link.symlink_to(queue)
    theirs = tmp_path / "their-queue"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 12345, 12345)
    for folder in (link, *([theirs] if os.geteuid() == 0 else [])):
        with pytest.raises(SettingsError) as refused:
            make_env(
                tmp_path,
                demo_bundle.path,
                **_syslog_env(TLS_URL, pki, tmp_path, CHEXNET_AUDIT_SYSLOG_QUEUE=str(folder)),
            )
        assert str(refused.value).startswith("CHEXNET_AUDIT_SYSLOG_QUEUE ") and "another user" in str(refused.value)


@pytest.mark.parametrize(
    "command, syslog, ca, refusal",
    [
        ("serve", "udp://audit.hospital.local:514", "ca.pem", "error: CHEXNET_AUDIT_SYSLOG must be tls://"),
        ("dicom-node", "tls://audit.hospital.local:6514", "absent.pem", "error: CHEXNET_AUDIT_SYSLOG_CA '"),
    ],
)
def test_the_api_and_the_node_do_not_start_with_a_clear_text_url_or_a_missing_ca(
    tmp_path, demo_bundle, pki, command, syslog, ca, refusal
):
    env = make_env(tmp_path, demo_bundle.path)
    run = subprocess.run(
        [sys.executable, "-m", "chexnet", command],
        env={
            **os.environ,
            "CHEXNET_MODELS_DIR": env.settings.models_dir,
            "CHEXNET_LICENSE_KEYS": env.settings.license_keys,
            "CHEXNET_PRODUCT_UUID_FILE": env.settings.product_uuid_file,
            "CHEXNET_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            "CHEXNET_PORT": str(free_port()),
            "CHEXNET_AUDIT_SYSLOG": syslog,
            "CHEXNET_AUDIT_SYSLOG_CA": str(pki.ca.parent / ca),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(refusal) and run.stderr.count("\n") == 1, run.stderr


# --- what arrives --------------------------------------------------------------------------------------
def test_the_products_audit_events_arrive_as_dicom_audit_messages(tmp_path, demo_bundle, pki, repository, dicom_dir):
    repository.start()
    env = make_env(tmp_path, demo_bundle.path, **_syslog_env(repository.url, pki, tmp_path))
    app = ready_app(env)
    service = app.extensions["chexnet"]
    client = app.test_client()
    png = _png(0)
    chest = (dicom_dir / CHEST[1]).read_bytes()
    answered = [predict(client, env, png), predict(client, env, chest)]
    assert [r.status_code for r in answered] == [200, 200]
    assert client.post("/api/v1/predict", data=png, content_type="image/png").status_code == 401
    other_model = {"Authorization": f"Bearer {env.token(features=['cxr25'])}"}
    assert predict(client, env, png, headers=other_model).status_code == 403
    service.stop()

    messages = repository.wait_for(6)
    assert len(messages) == 6, [m.event_id for m in messages]
    for message in messages:
        assert (message.app_name, message.msgid) == ("chexnet", "IHE+RFC-3881")
        check_audit_message(message.xml)
        assert message.xml.find("AuditSourceIdentification").get("AuditSourceID") == "chexnet-test-site"
    events = [(m.event_id, m.event_type) for m in messages]
    assert events[0] == ("110100", "110120") and events[-1] == ("110100", "110121"), events

    accessed = {m.detail("request_id"): m for m in messages if m.event_id == "110103"}
    assert set(accessed) == {r.headers["X-Request-ID"] for r in answered}
    png_message, dicom_message = (accessed[r.headers["X-Request-ID"]] for r in answered)
    assert png_message.object_ids() == [hashlib.sha256(png).hexdigest()]
    header = pydicom.dcmread(dicom_dir / CHEST[1], stop_before_pixels=True)
    assert dicom_message.object_ids() == [header.StudyInstanceUID]
    assert [i.get("UID") for i in dicom_message.xml.iter("Instance")] == [header.SOPInstanceUID]
    requestor = dicom_message.xml.find("ActiveParticipant")
    assert requestor.get("UserID") == "pacs-1" and requestor.get("UserIsRequestor") == "true"
    raw = repository.received.read_text(encoding="utf-8")
    for value in (str(header.PatientName), str(header.PatientID)):
        assert not value or value not in raw.replace(header.StudyInstanceUID, "").replace(header.SOPInstanceUID, "")

    refused = {m.event_id: m for m in messages if m.event_id in ("110114", "110113")}
    assert set(refused) == {"110114", "110113"}
    for event_id, code in (("110114", "token_missing"), ("110113", "model_not_licensed")):
        identification = refused[event_id].xml.find("EventIdentification")
        assert identification.get("EventOutcomeIndicator") == "4"
        assert identification.findtext("EventOutcomeDescription") == code
        assert refused[event_id].object_ids() == ["/api/v1/predict"]


def test_messages_made_while_the_repository_is_away_arrive_once_it_is_back(tmp_path, demo_bundle, pki, repository):
    repository.start()
    env = make_env(tmp_path, demo_bundle.path, **_syslog_env(repository.url, pki, tmp_path))
    app = ready_app(env)
    service, client = app.extensions["chexnet"], app.test_client()
    repository.wait_for(1)  # the application start
    repository.stop()

    ids = [predict(client, env, _png(n)).headers["X-Request-ID"] for n in range(3)]
    queue = service.atna.queue
    wait_until(lambda: queue.failures._value.get() >= 1, 60, "a failed attempt to reach the repository")
    assert len(list(Path(queue.settings.queue).glob("*.msg"))) == 3, "they wait on disk"

    repository.start()
    messages = repository.wait_for(4, 120)
    wait_until(lambda: queue.depth == 0, 60, "the queue to drain")
    assert sorted(_ids(messages, "110103")) == sorted(ids), "each prediction's message once, none twice"
    assert len(repository.messages()) == 4
    service.stop()


def test_a_prediction_does_not_wait_for_a_repository_that_never_answers(tmp_path, demo_bundle, pki):
    with socket.socket() as silent:  # accepts the connection and never answers the TLS handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"tls://127.0.0.1:{silent.getsockname()[1]}"
        env = make_env(tmp_path, demo_bundle.path, **_syslog_env(url, pki, tmp_path))
        app = ready_app(env)
        response = predict(app.test_client(), env, _png(0))
        assert response.status_code == 200
        queue = app.extensions["chexnet"].atna.queue
        assert queue.sent._value.get() == 0
        assert len(list(Path(queue.settings.queue).glob("*.msg"))) == 2, "the start and the prediction, queued"


# --- a restart of the API with messages queued ---------------------------------------------------------------
class ApiProcess:
    def __init__(self, env, tmp: Path, extra: dict):
        self.port = free_port()
        self.env = {
            **os.environ,
            "CHEXNET_MODELS_DIR": env.settings.models_dir,
            "CHEXNET_LICENSE_KEYS": env.settings.license_keys,
            "CHEXNET_PRODUCT_UUID_FILE": env.settings.product_uuid_file,
            "CHEXNET_AUDIT_LOG": str(tmp / "audit.jsonl"),
            "CHEXNET_ENGINE": "onnxruntime",
            "CHEXNET_HOST": "127.0.0.1",
            "CHEXNET_PORT": str(self.port),
            **extra,
        }
        self.log = tmp / "api.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chexnet", "serve"],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, 120, "the API to be ready")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the API exited: {self.log.read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/ready", timeout=5).status == 200
        except (urllib.error.URLError, OSError):
            return False

    def predict(self, token: str, data: bytes) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v1/predict?heatmaps=none",
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            return response.headers["X-Request-ID"]

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)
        self.process.wait(60)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_queued_messages_survive_an_api_restart_and_arrive_once(tmp_path, demo_bundle, pki, repository):
    env = make_env(tmp_path, demo_bundle.path)
    api = ApiProcess(env, tmp_path, _syslog_env(repository.url, pki, tmp_path))
    try:
        api.start()  # the repository is not there yet
        ids = [api.predict(env.token(), _png(n)) for n in range(3)]
        api.signal(signal.SIGKILL)  # with the start and three predictions queued
        queued = sorted((tmp_path / "audit-queue").glob("*.msg"))
        assert len(queued) == 4

        repository.start()
        api.start()
        messages = repository.wait_for(5, 120)
        assert sorted(_ids(messages, "110103")) == sorted(ids)
        assert [m.event_type for m in messages].count("110120") == 2, "two starts"
        api.signal(signal.SIGTERM)  # docker stop: the stop is audited and sent before the process ends
        assert api.process is not None and api.process.returncode == 0
        messages = repository.wait_for(6, 60)
        assert messages[-1].event_type == "110121"
        assert len(messages) == 6, "nothing twice"
        assert not list((tmp_path / "audit-queue").glob("*.msg"))
    finally:
        api.close()


# --- TLS: the repository's certificate and mutual TLS ---------------------------------------------------------
def _queue(tmp: Path, url_port: int, ca: Path, registry=None, **tls) -> SyslogQueue:
    settings = AuditSyslogSettings(host="127.0.0.1", port=url_port, ca=str(ca), queue=str(tmp), **tls)
    return SyslogQueue(settings, registry or CollectorRegistry())


def test_mutual_tls_needs_the_client_certificate_and_a_repository_of_the_site_ca(tmp_path, pki):
    require_rsyslog()
    repository = Rsyslog(tmp_path / "repository", pki, mutual=True)
    repository.start()
    source = AuditSource("site", "chexnet-api")
    queues = {
        "no client certificate": _queue(tmp_path / "plain", repository.port, pki.ca),
        "another CA": _queue(
            tmp_path / "other", repository.port, pki.other_ca, cert=str(pki.client_cert), key=str(pki.client_key)
        ),
        "client certificate": _queue(
            tmp_path / "mutual", repository.port, pki.ca, cert=str(pki.client_cert), key=str(pki.client_key)
        ),
    }
    try:
        for queue in queues.values():
            queue.put(application_activity(source, True))
            queue.start()
        wait_until(lambda: queues["client certificate"].depth == 0, 60, "the message with the client certificate")
        for name in ("no client certificate", "another CA"):
            wait_until(lambda q=queues[name]: q.failures._value.get() >= 1, 60, f"a refused connection ({name})")
            assert queues[name].depth == 1 and queues[name].sent._value.get() == 0, name
        assert len(repository.messages()) == 1
    finally:
        for queue in queues.values():
            queue.stop(0)
        repository.stop()


# --- the queue's bound ------------------------------------------------------------------------------------
def test_a_full_queue_refuses_new_messages_with_one_log_line_and_a_metric(tmp_path, pki, caplog):
    registry = CollectorRegistry()
    queue = _queue(tmp_path / "queue", free_port(), pki.ca, registry, queue_max=10)
    source = AuditSource("site", "chexnet-api")
    with caplog.at_level(logging.ERROR, logger="chexnet.audit_syslog"):
        kept = [queue.put(application_activity(source, True)) for _ in range(12)]
    assert kept == [True] * 10 + [False] * 2
    assert len(list((tmp_path / "queue").glob("*.msg"))) == 10
    assert registry.get_sample_value("chexnet_audit_syslog_dropped_total", {"reason": "queue_full"}) == 2
    assert registry.get_sample_value("chexnet_audit_syslog_queue_depth") == 10
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1 and full[0].fields["queue_max"] == 10


def test_a_queued_message_is_the_whole_rfc5424_message_it_will_send(tmp_path, pki):
    queue = _queue(tmp_path / "queue", free_port(), pki.ca)
    xml = application_activity(AuditSource("site", "chexnet-api"), True)
    queue.put(xml)
    (path,) = (tmp_path / "queue").glob("*.msg")
    header, _, message = path.read_bytes().partition(b"\xef\xbb\xbf")
    pri, stamp, host, app, procid, msgid, sd = header.decode("ascii").split(" ")[:7]
    assert (pri, app, procid, msgid, sd) == ("<85>1", "chexnet", str(os.getpid()), "IHE+RFC-3881", "-")
    assert stamp.endswith("Z") and host and message == xml
    assert base64.b64encode(message)  # bytes as given


# --- the DICOM node: results stored at the PACS ------------------------------------------------------------
def test_results_the_node_stores_at_the_pacs_are_audited_as_instances_transferred(
    dicom_site, dicom_dir, pki, repository, tmp_path
):
    env, node, destination = dicom_site
    repository.start()
    destination.start()
    node.env.update(
        _syslog_env(repository.url, pki, tmp_path / "node"), CHEXNET_DICOMWEB_PORT="0", CHEXNET_DICOM_MAPS="sc"
    )
    node.start()
    sent = storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[1])
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(destination.received) >= 2 and not node.files("outgoing"), 120, "every result at the PACS")
    results = len(destination.received)  # the SR and the capture (STOW-RS in and Parametric Maps are off)
    messages = repository.wait_for(2 + results)  # the start, the prediction, one per result
    transferred = [m for m in messages if m.event_id == "110104"]
    assert len(transferred) == results
    study = pydicom.dcmread(dicom_dir / CHEST[1], stop_before_pixels=True).StudyInstanceUID
    assert {uid for m in transferred for uid in m.object_ids()} == {study}
    assert sorted(i.get("UID") for m in transferred for i in m.xml.iter("Instance")) == sorted(
        ds.SOPInstanceUID for ds in destination.received
    )
    for message in transferred:
        check_audit_message(message.xml)
        roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID") for p in message.xml.iter("ActiveParticipant")}
        assert roles == {"110153": "CHEXNET", "110152": "PACS"}
    node.stop()
    assert repository.wait_for(3 + results)[-1].event_type == "110121"


class _StowPeer:
    """A PACS's DICOMweb root that stores every STOW-RS part it is sent (200, no failures), over plain HTTP."""

    def __init__(self):
        self.stored: list[str] = []
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                part = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
                peer.stored.append(pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID)
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_results_the_node_delivers_by_stow_rs_are_audited_with_the_dicomweb_root(
    dicom_site, dicom_dir, pki, repository, tmp_path
):
    env, node, _ = dicom_site
    peer = _StowPeer()
    repository.start()
    node.env.update(
        _syslog_env(repository.url, pki, tmp_path / "node"),
        CHEXNET_DICOMWEB_PORT="0",
        CHEXNET_DICOM_MAPS="sc",
        CHEXNET_DICOM_DESTINATION="",
        CHEXNET_DICOMWEB_DESTINATION=peer.url,
    )
    try:
        node.start()
        assert storescu(node.port, "MODALITY", "CHEXNET", dicom_dir / CHEST[1]).returncode == 0
        wait_until(lambda: len(peer.stored) >= 2 and not node.files("outgoing"), 120, "the results at the PACS")
    finally:
        peer.stop()
    messages = repository.wait_for(2 + len(peer.stored))
    transferred = [m for m in messages if m.event_id == "110104"]
    assert sorted(i.get("UID") for m in transferred for i in m.xml.iter("Instance")) == sorted(peer.stored)
    for message in transferred:
        check_audit_message(message.xml)
        destination = [p for p in message.xml.iter("ActiveParticipant") if p.get("UserIsRequestor") == "false"]
        assert [(p.get("UserID"), p.get("NetworkAccessPointID")) for p in destination] == [(peer.url, "127.0.0.1")]


def test_values_from_a_dicom_header_cannot_break_the_xml_or_leak_patient_data():
    header = pydicom.Dataset()
    with pytest.warns(UserWarning, match="VR UI"):  # pydicom keeps it, as a header read from a file would
        header.StudyInstanceUID = "1.2.3\x01\n<!-- x -->" + "9" * 400
    header.SOPClassUID, header.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4"
    header.PatientName, header.PatientID = "Doe^Jane", "MRN-4711"
    model = SimpleNamespace(id="cxr10", version="1.0.0")
    prediction = SimpleNamespace(model=model, source=header, input_sha256="0" * 64)
    caller = Caller("req-1", "pacs-1\x00\x1b[31m", "General Hospital")
    message = instances_accessed(AuditSource("site", "chexnet-api"), prediction, caller)
    root = ET.fromstring(message)  # well-formed
    check_audit_message(root)
    text = message.decode()
    assert "Doe" not in text and "MRN-4711" not in text and "\x1b" not in text and "\x01" not in text
    (study,) = [o.get("ParticipantObjectID") for o in root.iter("ParticipantObjectIdentification")]
    assert study.startswith("1.2.3<!-- x -->") and len(study) <= 256
    assert root.find("ActiveParticipant").get("UserID") == "pacs-1[31m"


def test_a_folder_or_unreadable_entry_in_the_queue_does_not_hold_up_the_messages_behind_it(tmp_path, pki, repository):
    repository.start()
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / f"{0:020d}-1-000000000.msg").mkdir()  # sorts before every message the queue writes
    queue = _queue(folder, repository.port, pki.ca)
    try:
        assert queue.put(application_activity(AuditSource("site", "chexnet-api"), True))
        queue.start()
        assert len(repository.wait_for(1, 60)) == 1
        wait_until(lambda: queue.depth == 0, 30, "the queue to drain")
    finally:
        queue.stop(0)
