"""DICOMweb in and out of the DICOM node (DESIGN.md "DICOM results and the DICOM node"): a study sent by
STOW-RS to ``python -m chexnet dicom-node`` is spooled before the answer, predicted through the core, and
every result object reaches Debian's Orthanc (with its DICOMweb plugin, on 127.0.0.1) by STOW-RS, where
QIDO-RS finds it in the source study and WADO-RS gives back a file dciodvfy passes. Bad STOW-RS requests
get a 4xx or a failure entry with a sentence, and leave nothing half-written in the spool."""

import http.server
import io
import json
import socket
import ssl
import subprocess
import sys
import threading

import jsonschema
import pydicom
import pytest
import requests
from pydicom.uid import ComprehensiveSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage

from api_helpers import DOC, make_env
from dicom_node_helpers import CHEST, NOT_CHEST, Node, free_port
from dicom_tools import dciodvfy_errors
from orthanc_helpers import Orthanc, stow_body
from syslog_helpers import make_pki
from waiting import wait_until

REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"
SOP_CLASS, SOP_INSTANCE = "00081150", "00081155"
RESULT_CLASSES = {ComprehensiveSRStorage, SecondaryCaptureImageStorage, ParametricMapStorage}  # CHEXNET_DICOM_MAPS=both


@pytest.fixture()
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path)
    yield pacs
    pacs.stop()


@pytest.fixture()
def make_node(tmp_path, demo_bundle):
    """A node factory (not started) with STOW-RS in on a free port; stopped afterwards."""
    nodes = []

    def make(**settings: str) -> Node:
        env = make_env(tmp_path / f"site{len(nodes)}", demo_bundle.path)
        node = Node(env, tmp_path, free_port(), CHEXNET_DICOMWEB_PORT=str(free_port()), **settings)
        node.token, node.stow_url = env.token(), f"http://127.0.0.1:{node.env['CHEXNET_DICOMWEB_PORT']}"
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def stow(node: Node, files: list[bytes], path: str = "/dicomweb/studies", **headers: str) -> requests.Response:
    body, content_type = stow_body(files)
    return requests.post(
        node.stow_url + path,
        data=body,
        headers={"Authorization": f"Bearer {node.token}", "Content-Type": content_type, **headers},
        timeout=120,
    )


def items(answer: requests.Response, sequence: str) -> list[dict]:
    return answer.json().get(sequence, {}).get("Value", [])


def documented(answer: requests.Response, path: str = "/dicomweb/studies") -> dict:
    """The node's real answer against the OpenAPI document's STOW-RS operation (status, content type, body)."""
    spec = DOC["paths"][path]["post"]["responses"][str(answer.status_code)]
    media = answer.headers["Content-Type"].split(";")[0]
    assert media in spec["content"], (answer.status_code, media)
    schema = spec["content"][media]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": DOC["components"]}).validate(answer.json())
    return answer.json()


def half_written(node: Node) -> list:
    return list((node.spool / "receiving").iterdir())


def test_a_study_sent_by_stow_rs_comes_back_to_orthanc_by_stow_rs(make_node, orthanc, dicom_dir, tmp_path):
    node = make_node(CHEXNET_DICOM_DESTINATION="", CHEXNET_DICOMWEB_DESTINATION=orthanc.dicomweb)
    node.start()
    sources = [pydicom.dcmread(dicom_dir / name) for name in (*CHEST, NOT_CHEST)]
    answer = stow(node, [(dicom_dir / name).read_bytes() for name in (*CHEST, NOT_CHEST)])
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/dicom+json")
    documented(answer)
    assert [item[SOP_INSTANCE]["Value"][0] for item in items(answer, REFERENCED)] == [
        ds.SOPInstanceUID for ds in sources
    ]
    assert FAILED not in answer.json() and half_written(node) == []

    # Orthanc is not up yet: the results wait in the spool and the failed sends are counted.
    wait_until(lambda: node.metric("chexnet_dicom_send_failures_total") >= 1, 120, "a failed STOW-RS send")
    orthanc.start()
    wait_until(
        lambda: not node.files("incoming") and not node.files("outgoing"), 180, "every result delivered to Orthanc"
    )
    assert node.files("refused") == [] and node.files("rejected") == []

    arrived = 0
    for source in sources[: len(CHEST)]:
        found = orthanc.instances(source.StudyInstanceUID)
        classes = [item["00080016"]["Value"][0] for item in found]
        assert set(classes) == RESULT_CLASSES, classes
        for item in found:
            data = orthanc.retrieve(source.StudyInstanceUID, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
            assert dciodvfy_errors(ds, tmp_path) == [], ds.SOPClassUID.name
            assert orthanc.origin(ds.SOPInstanceUID) == "Plugins", (
                "stored by the DICOMweb plugin (STOW-RS), not C-STORE"
            )
        arrived += len(found)
    assert arrived == node.metric("chexnet_dicom_sent_total"), "every result object the node made is in Orthanc"
    assert orthanc.instances(sources[-1].StudyInstanceUID) == [], "the tibia is not a chest image: no results"


def test_bad_stow_rs_requests_get_a_sentence_and_leave_nothing_half_written(make_node, dicom_dir, tmp_path):
    node = make_node(CHEXNET_MAX_UPLOAD_MB="5")
    node.start()
    good = (dicom_dir / CHEST[0]).read_bytes()  # 4.1 MiB
    too_large = (dicom_dir / "RG1_UNCR.dcm").read_bytes()  # 6.9 MiB, over the 5 MiB limit
    ct = pydicom.dcmread(dicom_dir / CHEST[1])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ct.save_as(tmp_path / "ct.dcm")
    not_dicom = b"%PDF-1.4 this is a report, not an image\n" * 100

    body, content_type = stow_body([good])
    for headers, status, code in [
        ({"Content-Type": content_type}, 401, "token_missing"),
        ({"Content-Type": content_type, "Authorization": "Bearer not-a-token"}, 401, "token_invalid"),
        ({"Content-Type": "application/dicom", "Authorization": f"Bearer {node.token}"}, 415, None),
        (
            {
                "Content-Type": content_type.replace("application/dicom", "application/dicom+xml"),
                "Authorization": f"Bearer {node.token}",
            },
            415,
            None,
        ),
    ]:
        answer = requests.post(node.stow_url + "/dicomweb/studies", data=body, headers=headers, timeout=60)
        assert answer.status_code == status, answer.text
        error = documented(answer)["error"]
        assert error["message"].endswith(".") and error["request_id"]
        assert code is None or error["code"] == code
    assert requests.get(node.stow_url + "/dicomweb/studies", timeout=10).status_code == 405
    assert node.metric("chexnet_dicom_received_total") == 0

    mixed = stow(node, [not_dicom, good, (tmp_path / "ct.dcm").read_bytes(), too_large])
    assert mixed.status_code == 202, mixed.text
    documented(mixed)
    assert [item[SOP_INSTANCE]["Value"][0] for item in items(mixed, REFERENCED)] == [
        pydicom.dcmread(dicom_dir / CHEST[0], stop_before_pixels=True).SOPInstanceUID
    ]
    assert [item[REASON]["Value"][0] for item in items(mixed, FAILED)] == [0xC000, 0x0122, 0xA700]
    assert items(mixed, FAILED)[1][SOP_CLASS]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    warnings = mixed.headers["Warning"]
    assert "not a DICOM file" in warnings and "SOP class" in warnings and "CHEXNET_MAX_UPLOAD_MB" in warnings
    assert node.metric("chexnet_dicom_received_total") == 1

    none_stored = stow(node, [not_dicom])
    assert none_stored.status_code == 409 and items(none_stored, FAILED)[0][REASON]["Value"] == [0xC000]
    other_study = stow(node, [good], path="/dicomweb/studies/1.2.3.4")
    documented(other_study, "/dicomweb/studies/{study}")
    assert other_study.status_code == 409 and items(other_study, FAILED)[0][REASON]["Value"] == [0xA900]

    body, content_type = stow_body([good, good])
    cut = body[: len(good) + len(good) // 2]  # the second part ends mid-way, with no closing boundary
    truncated = requests.post(
        node.stow_url + "/dicomweb/studies",
        data=cut,
        headers={"Authorization": f"Bearer {node.token}", "Content-Type": content_type},
        timeout=60,
    )
    assert truncated.status_code == 202 and len(items(truncated, REFERENCED)) == 1
    assert node.metric("chexnet_dicom_received_total") == 2
    assert half_written(node) == []
    assert "Traceback" not in node.log.read_text()


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"CHEXNET_DICOMWEB_DESTINATION": "pacs.example/dicom-web"}, "CHEXNET_DICOMWEB_DESTINATION"),
        ({"CHEXNET_DICOMWEB_PORT": "70000"}, "CHEXNET_DICOMWEB_PORT"),
        (
            {
                "CHEXNET_DICOMWEB_DESTINATION": "http://pacs.example/dicom-web",
                "CHEXNET_DICOMWEB_AUTH_FILE": "/etc/hosts",
            },
            "CHEXNET_DICOMWEB_AUTH_FILE is only sent over HTTPS",
        ),
        ({"CHEXNET_DICOMWEB_DESTINATION": "https://pacs.example/dicom-web"}, "both set"),
        (
            {
                "CHEXNET_DICOMWEB_DESTINATION": "https://pacs.example/dicom-web",
                "CHEXNET_DICOMWEB_CA": "/nonexistent.pem",
            },
            "CHEXNET_DICOMWEB_CA",
        ),
    ],
)
def test_bad_dicomweb_settings_stop_the_node_with_a_sentence(make_node, settings, fragment):
    node = make_node()
    run = subprocess.run(
        [sys.executable, "-m", "chexnet", "dicom-node"],
        env={**node.env, **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and fragment in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_stow_rs_port_in_use_stops_the_node_with_a_sentence(make_node):
    node = make_node()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", int(node.env["CHEXNET_DICOMWEB_PORT"])))
        taken.listen()
        run = subprocess.run(
            [sys.executable, "-m", "chexnet", "dicom-node"],
            env=node.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 2 and "CHEXNET_DICOMWEB_PORT" in run.stderr and "Traceback" not in run.stderr, run.stderr


class FakeStowPeer:
    """A DICOMweb STOW-RS endpoint over HTTPS (the test PKI) that records each request and answers per SOP
    class: ``answers[sop_class]`` is a list of (status, FailureReason or None), used in turn, the last kept."""

    def __init__(self, pki):
        self.requests: list[dict] = []
        self.answers: dict[str, list] = {}
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                part = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
                ds = pydicom.dcmread(io.BytesIO(part))
                peer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "class": ds.SOPClassUID}
                )
                queue = peer.answers.get(ds.SOPClassUID, [(200, None)])
                status, reason = queue.pop(0) if len(queue) > 1 else queue[0]
                item = {SOP_CLASS: {"vr": "UI", "Value": [ds.SOPClassUID]}}
                answer = {REFERENCED: {"vr": "SQ", "Value": [item]}} if reason is None else {}
                if reason is not None:
                    answer = {FAILED: {"vr": "SQ", "Value": [{**item, REASON: {"vr": "US", "Value": [reason]}}]}}
                data = json.dumps(answer).encode() if status in (200, 202, 409) else b"busy"
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_stow_rs_out_over_https_with_the_auth_file_retries_and_sets_aside_a_refusal(make_node, dicom_dir, tmp_path):
    pki = make_pki(tmp_path / "pki")
    peer = FakeStowPeer(pki)
    secret = "Bearer pacs-secret-0123456789"
    (tmp_path / "dicomweb-auth").write_text(f"Authorization: {secret}\n")
    peer.answers = {
        ComprehensiveSRStorage: [(409, 0xC000)],  # cannot understand: refused for good
        SecondaryCaptureImageStorage: [(503, None), (200, None)],  # busy once: retried, then stored
    }
    node = make_node(
        CHEXNET_DICOM_DESTINATION="",
        CHEXNET_DICOMWEB_DESTINATION=peer.url,
        CHEXNET_DICOMWEB_AUTH_FILE=str(tmp_path / "dicomweb-auth"),
        CHEXNET_DICOMWEB_CA=str(pki.ca),
    )
    try:
        node.start()
        assert stow(node, [(dicom_dir / CHEST[0]).read_bytes()]).status_code == 200
        wait_until(lambda: not node.files("incoming") and not node.files("outgoing"), 180, "every result answered")
    finally:
        peer.stop()
    classes = [r["class"] for r in peer.requests]
    assert sorted(set(classes)) == sorted(RESULT_CLASSES)
    assert classes.count(SecondaryCaptureImageStorage) == 2 and classes.count(ComprehensiveSRStorage) == 1
    assert {r["path"] for r in peer.requests} == {"/dicom-web/studies"}
    assert {r["auth"] for r in peer.requests} == {secret}
    assert len(node.files("refused")) == 1 and node.metric("chexnet_dicom_sent_total") == 2
    assert '"event": "dicom_result_refused"' in (tmp_path / "audit.jsonl").read_text()
    assert "pacs-secret" not in node.log.read_text(), "the credentials are never logged"


@pytest.mark.parametrize(
    "answer",
    [
        {FAILED: []},
        {REFERENCED: "stored"},
        {FAILED: {"Value": [{REASON: 0xA700}]}},
        {REFERENCED: {"Value": 3}},
        {FAILED: {"Value": [{REASON: {"Value": [-1]}}]}},
        b"[" * 100_000,
        b'{"00081199": {"Value": [{}]}, "padding": "' + b"x" * (2 << 20) + b'"}',
    ],
    ids=[
        "failed-list",
        "referenced-string",
        "reason-no-element",
        "referenced-number",
        "reason-negative",
        "deep",
        "long",
    ],
)
def test_a_store_response_of_another_shape_is_retried_not_an_error(tmp_path, answer):
    """A destination's Store Instances Response that is JSON but not the DICOM JSON model (a broken or hostile
    PACS) is a failure of that object, retried with its own backoff; it raised AttributeError (or, nested
    deep, RecursionError), which the worker's loop caught, so the same object was tried again first every
    5 s and the queue behind it waited. An answer over 1 MiB is not read (it was read whole into memory)."""
    import types

    from chexnet.dicom_node.dicomweb_sender import DicomwebSender
    from chexnet.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    result = spool.root / "outgoing" / "stat-1-000.dcm"
    result.write_bytes(b"DICM")
    counter = types.SimpleNamespace(inc=lambda: None, labels=lambda *a: counter)
    metrics = types.SimpleNamespace(send_failures=counter, sent=counter, refused=counter)
    node = types.SimpleNamespace(retry_max_s=60, dicomweb=types.SimpleNamespace(ca=None))
    sender = DicomwebSender(node, spool, metrics, None, threading.Event(), lambda: None)
    reply = requests.Response()
    reply.status_code, reply.raw = 409, io.BytesIO(answer if isinstance(answer, bytes) else json.dumps(answer).encode())
    session = types.SimpleNamespace(post=lambda *a, **k: reply)
    sender._post(session, "https://pacs.example/dicom-web/studies", result)  # type: ignore[arg-type]
    assert result.exists() and result.name in sender._retry


def _stow_service(spool, cap_bytes: int = 2**20, header=None, accepts_nothing: bool = False):
    """The node's STOW-RS application alone: any token passes, the disk is never short, and parts are checked
    by the core's header reader against the node's classes and syntaxes (or by ``header``, accepting none)."""
    import types

    from chexnet.dicom_node.node import DECODABLE_SYNTAXES, STORAGE_CLASSES
    from chexnet.dicom_node.stow import StowService
    from chexnet.imaging.dicom import read_header
    from chexnet.imaging.types import DecodeLimits

    return StowService(
        verifier=lambda: types.SimpleNamespace(verify=lambda token: {}),  # type: ignore[arg-type,return-value]
        spool=spool,
        cap_bytes=cap_bytes,
        min_free_bytes=0,
        free_bytes=lambda: 2**40,
        header=header or (lambda read: read_header(read(), DecodeLimits())),
        classes=() if accepts_nothing else STORAGE_CLASSES,
        syntaxes=() if accepts_nothing else DECODABLE_SYNTAXES,
        on_part=lambda outcome: None,
    )


def test_a_part_whose_uid_is_overlong_or_quoted_gets_a_warning_header_waitress_can_send(tmp_path):
    """The Warning sentence quotes the part's SOP class (bounded, escaped, cut with an ellipsis): the header
    must be Latin-1 for waitress and a valid quoted-string. An ellipsis made waitress answer a bare 500 and
    log a traceback, so the parts stored before it in the same request were never acknowledged."""

    import numpy as np

    from chexnet.dicom_node.spool import Spool
    from chexnet.dicom_node.stow import http_server
    from dicom_factory import make_dicom

    spool = Spool(tmp_path / "spool")
    app = _stow_service(spool)
    server = http_server(app, "127.0.0.1", 0, 2, 2**24, spool.receiving)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        pixels = np.zeros((16, 16), np.uint8)
        odd = make_dicom(pixels, SOPClassUID='1.2."3.' + "9" * 70, StudyInstanceUID="1.2.3")
        body, content_type = stow_body([make_dicom(pixels, StudyInstanceUID="1.2.3"), odd])
        answer = requests.post(
            f"http://127.0.0.1:{server.effective_port}/dicomweb/studies",
            data=body,
            headers={"Authorization": "Bearer t", "Content-Type": content_type},
            timeout=30,
        )
    finally:
        server.close()
    assert answer.status_code == 202, answer.text
    assert [item[REASON]["Value"][0] for item in items(answer, FAILED)] == [0x0122]
    assert answer.headers["Warning"].startswith('299 chexnet "part 2: SOP class 1.2.\\"3.999')
    assert "..." in answer.headers["Warning"] and answer.headers["Warning"].endswith('secondary capture)."')


def test_a_spool_that_cannot_be_written_is_a_failure_entry_not_a_500(tmp_path):
    """An I/O error while a part is written (no space before the floor's next check, receiving/ gone) is
    0xA700 for that part and the rest, in the Store Instances Response that still lists what was stored."""

    from werkzeug.test import Client

    from chexnet.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    app = _stow_service(spool)
    spool.receiving.rmdir()
    body, content_type = stow_body([b"DICM", b"DICM"])
    answer = Client(app).post(
        "/dicomweb/studies", data=body, headers={"Authorization": "Bearer t", "Content-Type": content_type}
    )
    assert answer.status_code == 409, answer.text
    assert [item[REASON]["Value"][0] for item in answer.json[FAILED]["Value"]] == [0xA700]
    assert "send this part and the rest again later" in answer.headers["Warning"]


def test_a_body_cut_in_its_first_part_says_so(tmp_path):
    """A body that ends inside its first part (no closing boundary) is a 400 saying so, not 'no DICOM part';
    a boundary over RFC 2046's 70 characters is a 400 saying how long one may be, not that there is none."""

    from werkzeug.test import Client

    from chexnet.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    app = _stow_service(spool, header=lambda read: pydicom.Dataset(), accepts_nothing=True)
    body, content_type = stow_body([b"DICM" * 100])
    answer = Client(app).post(
        "/dicomweb/studies",
        data=body[: len(body) // 2],
        headers={"Authorization": "Bearer t", "Content-Type": content_type},
    )
    assert answer.status_code == 400, answer.text
    assert "ended before the first part's closing boundary" in answer.json["error"]["message"]
    answer = Client(app).post(
        "/dicomweb/studies",
        data=body,
        headers={
            "Authorization": "Bearer t",
            "Content-Type": f"{content_type.split('boundary=')[0]}boundary={'b' * 71}",
        },
    )
    assert answer.status_code == 400 and "boundary of 1 to 70 characters" in answer.json["error"]["message"]
    assert list(spool.receiving.iterdir()) == [] and list((spool.root / "incoming").iterdir()) == []


def test_parts_beyond_the_limit_are_one_failure_entry_after_those_stored(tmp_path, dicom_dir, monkeypatch):
    """A request with more parts than MAX_PARTS: the parts read are stored and listed, the rest are one 0xA700
    failure entry saying to send them in another request (it was a 413 error, so a client could not tell
    that the instances before were stored)."""

    from werkzeug.test import Client

    from chexnet.dicom_node import stow as stow_module
    from chexnet.dicom_node.spool import Spool

    monkeypatch.setattr(stow_module, "MAX_PARTS", 2)
    spool = Spool(tmp_path / "spool")
    app = _stow_service(spool, cap_bytes=2**24)
    good = (dicom_dir / CHEST[0]).read_bytes()
    body, content_type = stow_body([good, good, good, good])
    answer = Client(app).post(
        "/dicomweb/studies", data=body, headers={"Authorization": "Bearer t", "Content-Type": content_type}
    )
    assert answer.status_code == 202, answer.text
    assert len(answer.json[REFERENCED]["Value"]) == 2 and len(list((spool.root / "incoming").iterdir())) == 2
    assert [item[REASON]["Value"][0] for item in answer.json[FAILED]["Value"]] == [0xA700]
    assert "part 3: A request may hold at most 2 instances" in answer.headers["Warning"]


def test_an_unexpected_fault_is_the_json_error_and_one_log_line(tmp_path, caplog):
    """A fault the node does not foresee (here its header reader raising RuntimeError) is a JSON 500 with the
    request id and one log line naming the error's type, not waitress's text page and a traceback."""

    from werkzeug.test import Client

    from chexnet.dicom_node.spool import Spool

    def header(read):
        raise RuntimeError("a bug")

    app = _stow_service(Spool(tmp_path / "spool"), header=header, accepts_nothing=True)
    spool = app.spool
    body, content_type = stow_body([b"DICM"])
    answer = Client(app).post(
        "/dicomweb/studies", data=body, headers={"Authorization": "Bearer t", "Content-Type": content_type}
    )
    assert answer.status_code == 500 and answer.json["error"]["code"] == "internal_error"
    assert answer.json["error"]["request_id"] == answer.headers["X-Request-ID"]
    assert [r.getMessage() for r in caplog.records if r.name == "chexnet.dicom_node"] == ["STOW-RS request failed"]
    assert list(spool.receiving.iterdir()) == []
