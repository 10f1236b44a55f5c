"""The REST API through Flask's test client: every endpoint, every error code, the contract shapes."""

import base64
import io
import json
import os
import re
import time

import jsonschema
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from api_helpers import LiveServer, assert_error, conforms, make_env, predict, ready_app
from chexnet.api import create_app, healthcheck
from chexnet.options import PredictOptions
from chexnet.service import Settings, SettingsError
from dicom_factory import make_dicom, undecodable
from hostile_files import png_bomb
from image_helpers import png_bytes
from licensing.keys import TrustedKeys
from licensing.revocation import sign_revocation_list, verify_revocation_list
from licensing_helpers import HOST_UUID, OTHER_UUID, claims_for, sign


@pytest.fixture()
def client(app):
    return app.test_client()


def test_health_and_ready(client):
    assert conforms(client.get("/api/v1/health"), "/api/v1/health") == {"status": "ok"}
    body = conforms(client.get("/api/v1/ready"), "/api/v1/ready")
    assert body["models"] == ["cxr10"] and body["default_model"] == "cxr10"


def test_not_ready_while_loading(env):
    app = create_app(env.settings, start=False)
    client = app.test_client()
    assert client.get("/api/v1/health").status_code == 200
    response = client.get("/api/v1/ready")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "loading" in conforms(response, "/api/v1/ready")["reasons"][0]
    assert_error(predict(client, env, b"x"), 503, "not_ready")


def test_models(client, env):
    body = conforms(client.get("/api/v1/models", headers=env.auth()), "/api/v1/models")
    (model,) = body["models"]
    assert model["id"] == "cxr10" and model["demo"] is True and model["licensed"] is True
    assert model["engine"] == "onnxruntime" and model["device"] == "cpu" and model["input_size"] == 224
    assert model["labels"][0] == {
        "code": "atelectasis",
        "name": {"en": "Atelectasis", "zh": "肺不张"},
        "threshold": 0.5,
    }
    unlicensed = client.get("/api/v1/models", headers=env.auth(features=["cxr25"])).get_json()
    assert unlicensed["models"][0]["licensed"] is False


def test_license(client, env):
    body = conforms(client.get("/api/v1/license", headers=env.auth(features=["cxr10", "cxr25"])), "/api/v1/license")
    assert body["customer"] == "General Hospital" and body["subject"] == "pacs-1"
    assert body["features"] == ["cxr10", "cxr25"] and body["days_left"] == 0  # the test token lives an hour


def test_a_prediction_alone_in_the_service_runs_on_every_engine_core(tmp_path, demo_bundle, nih_sample):
    """Two single-threaded engine workers (the 2-core layout): the one request in the service gets a call over both
    cores; one made while another request is in the service keeps its worker's single thread."""
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_ENGINE_WORKERS="2", CHEXNET_ENGINE_THREADS="1")
    app = ready_app(env)
    service = app.extensions["chexnet"]
    engine = service.models["cxr10"].predictor.engine
    assert service.layout.lone_threads == 2 and engine.lone_session is not engine.session
    calls = []

    class Recorded:
        def __init__(self, session, name):
            self.session, self.name = session, name

        def run(self, *args):
            calls.append(self.name)
            return self.session.run(*args)

    engine.session, engine.lone_session = Recorded(engine.session, "worker"), Recorded(engine.lone_session, "lone")
    client, image = app.test_client(), nih_sample[0].read_bytes()
    alone = predict(client, env, image)
    with service.in_flight.held():  # another request is in the service (decoding, say)
        shared = predict(client, env, image)
    assert (alone.status_code, shared.status_code, calls) == (200, 200, ["lone", "worker"])
    for one, other in zip(alone.get_json()["findings"], shared.get_json()["findings"], strict=True):
        assert one["probability"] == pytest.approx(other["probability"], abs=1e-5)


def test_a_cluster_node_reads_its_line_of_the_node_list_and_takes_the_cluster_token(tmp_path, demo_bundle):
    """As in the Swarm stack: CHEXNET_PRODUCT_UUID_FILE is the node list, CHEXNET_NODE_NAME this node's hostname."""
    nodes = tmp_path / "product_uuids"
    nodes.write_text(f"node-a {OTHER_UUID}\nnode-b {HOST_UUID}\n")
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_PRODUCT_UUID_FILE=str(nodes), CHEXNET_NODE_NAME="node-b")
    client = ready_app(env).test_client()
    body = conforms(
        client.get("/api/v1/license", headers=env.auth(product_uuid=[HOST_UUID, OTHER_UUID])), "/api/v1/license"
    )
    assert body["product_uuid"] == [HOST_UUID, OTHER_UUID]
    assert_error(
        client.get("/api/v1/license", headers=env.auth(product_uuid=OTHER_UUID)),
        403,
        "wrong_host",
        "/api/v1/license",
        "get",
    )
    # A node missing from the list stays not ready, and says how to fix it.
    lost = make_env(tmp_path / "c", demo_bundle.path, CHEXNET_PRODUCT_UUID_FILE=str(nodes), CHEXNET_NODE_NAME="node-c")
    ready = ready_app(lost).test_client().get("/api/v1/ready")
    assert ready.status_code == 503 and "no line for node 'node-c'" in json.dumps(ready.get_json())


def test_predict_multipart_png(client, env, nih_sample):
    response = predict(client, env, nih_sample[0].read_bytes(), heatmaps="all", heatmap_format="png")
    body = conforms(response, "/api/v1/predict", "post")
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["model"] == {
        "id": "cxr10",
        "version": "0.0.0-demo",
        "demo": True,
        "engine": "onnxruntime",
        "device": "cpu",
        "precision": "fp32",
        "thresholds": "bundle",
    }
    assert body["image"] == {"format": "png", "width": 1024, "height": 1024}
    assert len(body["findings"]) == 10 and len(body["heatmaps"]) == 10 and "not a diagnosis" in body["notice"]
    image = Image.open(io.BytesIO(base64.b64decode(body["heatmaps"][0]["data"])))
    assert image.format == "PNG" and image.size == (512, 512)


def test_predict_raw_dicom_body_with_query_options(client, env, dicom_dir):
    data = (dicom_dir / "RG3_RLE.dcm").read_bytes()
    response = client.post(
        "/api/v1/predict?heatmaps=mass,fracture&model=cxr10",
        data=data,
        headers={**env.auth(), "Content-Type": "application/dicom"},
    )
    body = conforms(response, "/api/v1/predict", "post")
    assert body["image"]["format"] == "dicom" and [h["code"] for h in body["heatmaps"]] == ["mass", "fracture"]


def test_type_is_sniffed_not_trusted(client, env, nih_sample):
    """A PNG sent as application/dicom with a .dcm name is still read as the PNG it is."""
    response = client.post(
        "/api/v1/predict", data=nih_sample[0].read_bytes(), headers={**env.auth(), "Content-Type": "application/dicom"}
    )
    assert response.status_code == 200 and response.get_json()["image"]["format"] == "png"


def test_same_probabilities_as_the_cli_path(client, env, nih_sample, onnx_predictor):
    data = nih_sample[2].read_bytes()
    api = predict(client, env, data, heatmaps="none").get_json()["findings"]
    direct = onnx_predictor.predict(lambda: data, PredictOptions(heatmaps="none")).findings
    assert [f["probability"] for f in api] == [f.probability for f in direct]


def test_cxrnet_compatibility(client, env, nih_sample):
    response = client.post(
        "/api/v1/CXRNet/predict",
        headers=env.auth(),
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(nih_sample[0].read_bytes()), "x.png")},
    )
    body = conforms(response, "/api/v1/CXRNet/predict", "post")
    assert body["status"] == "OK" and len(body["answer"]) == 10 and body["category"][0] == "肺不张"
    assert Image.open(io.BytesIO(base64.b64decode(body["gradcam"]))).format == "JPEG"


# --- auth ----------------------------------------------------------------------------------


def test_auth_errors(client, env, nih_sample):
    data = nih_sample[0].read_bytes()
    now = int(time.time())
    cases = [
        ({}, 401, "token_missing"),
        ({"Authorization": "Bearer garbage"}, 401, "token_invalid"),
        (
            {"Authorization": f"Bearer {env.token(iat=now - 9000, nbf=now - 9000, exp=now - 3600)}"},
            401,
            "token_expired",
        ),
        (env.auth(product_uuid=OTHER_UUID), 403, "wrong_host"),
        (env.auth(features=["cxr25"]), 403, "model_not_licensed"),
    ]
    for headers, status, code in cases:
        response = client.post("/api/v1/predict", data=data, headers=headers)
        assert_error(response, status, code)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_in_query_refused(client, env):
    token = env.token()
    assert_error(
        client.get(f"/api/v1/license?token={token}", headers=env.auth()), 401, "token_invalid", "/api/v1/license", "get"
    )


def test_revoked_token(tmp_path, demo_bundle, nih_sample):
    env = make_env(tmp_path, demo_bundle.path)
    claims = claims_for()
    (tmp_path / "revocations.jwt").write_text(sign_revocation_list(env.key, [claims["jti"]], []))
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_REVOCATION_LIST=str(tmp_path / "revocations.jwt"))
    env_key_token = sign(env.key, claims)
    (tmp_path / "revocations.jwt").write_text(sign_revocation_list(env.key, [claims["jti"]], []))
    client = ready_app(env).test_client()
    assert_error(
        client.post(
            "/api/v1/predict", data=nih_sample[0].read_bytes(), headers={"Authorization": f"Bearer {env_key_token}"}
        ),
        401,
        "token_revoked",
    )
    assert client.get("/api/v1/license", headers=env.auth()).status_code == 200


@pytest.mark.parametrize("content", [None, "not.a.list"], ids=["missing", "tampered"])
def test_revocation_list_not_in_force_fails_closed(tmp_path, demo_bundle, nih_sample, content):
    if content is not None:
        (tmp_path / "revocations.jwt").write_text(content)
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_REVOCATION_LIST=str(tmp_path / "revocations.jwt"))
    client = ready_app(env).test_client()
    response = client.get("/api/v1/ready")
    assert response.status_code == 503 and "Revocation list" in response.get_json()["reasons"][0]
    for call in (
        lambda: client.get("/api/v1/license", headers=env.auth()),
        lambda: client.post("/api/v1/predict", data=nih_sample[0].read_bytes(), headers=env.auth()),
    ):
        assert_error(call(), 503, "not_ready")
    assert (tmp_path / "revocation-state.json").exists() is False
    (tmp_path / "revocations.jwt").write_text(sign_revocation_list(env.key, [], []))
    assert client.get("/api/v1/ready").status_code == 200
    assert client.get("/api/v1/license", headers=env.auth()).status_code == 200
    assert (tmp_path / "revocation-state.json").stat().st_mode & 0o077 == 0, (
        "the state beside the audit log is owner-only"
    )


def _revocation_metrics(client) -> dict:
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.name, sample.labels.get("reason")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("chexnet_revocation")
        for sample in family.samples
    }


def test_a_refused_newer_list_shows_in_ready_metrics_and_healthcheck(tmp_path, demo_bundle, monkeypatch, capsys):
    """The state file cannot be read, so a newer list that revokes a token is refused while the earlier
    list stays in force: /ready stays 200 but warns, the metrics give the reason, the healthcheck prints it."""
    lists, state = tmp_path / "revocations.jwt", tmp_path / "revocation-state.json"
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_REVOCATION_LIST=str(lists))
    first = sign_revocation_list(env.key, [], [])
    first_seq = verify_revocation_list(first, TrustedKeys(tmp_path / "vendor_public.pem")).seq
    lists.write_text(first)
    app = ready_app(env)
    client = app.test_client()
    assert conforms(client.get("/api/v1/ready"), "/api/v1/ready")["warnings"] == []
    claims = claims_for()
    token = {"Authorization": f"Bearer {sign(env.key, claims)}"}

    state.write_text("{not json")
    lists.write_text(sign_revocation_list(env.key, [claims["jti"]], [], after=first_seq))
    later = time.time_ns() + 10**9
    os.utime(lists, ns=(later, later))
    body = conforms(client.get("/api/v1/ready"), "/api/v1/ready")
    (warning,) = body["warnings"]
    assert "state file" in warning and f"sequence {first_seq} stays in force" in warning
    assert client.get("/api/v1/license", headers=token).status_code == 200, "the earlier list is the one in force"
    metrics = _revocation_metrics(client)
    assert (
        metrics[("chexnet_revocation_refused", "state")] == 1 and metrics[("chexnet_revocation_refused", "older")] == 0
    )
    assert metrics[("chexnet_revocation_refusals_total", "state")] == 1
    assert metrics[("chexnet_revocation_sequence", None)] == first_seq

    server = LiveServer(app)
    try:
        monkeypatch.setenv("CHEXNET_PORT", server.url.rsplit(":", 1)[1])
        capsys.readouterr()
        assert healthcheck.main() == 0, "ready: a list is in force"
        assert f"warning: {warning}" in capsys.readouterr().out
        state.unlink()  # what the warning says to do: the running service writes it again, then takes the newer list
        assert healthcheck.main() == 0 and "warning" not in capsys.readouterr().out
    finally:
        server.close()
    assert conforms(client.get("/api/v1/ready"), "/api/v1/ready")["warnings"] == []
    assert_error(client.get("/api/v1/license", headers=token), 401, "token_revoked", "/api/v1/license", "get")
    metrics = _revocation_metrics(client)
    assert (
        metrics[("chexnet_revocation_refused", "state")] == 0
        and metrics[("chexnet_revocation_sequence", None)] > first_seq
    )


# --- inputs ----------------------------------------------------------------------------------

HOSTILE = {
    "zero bytes": (b"", 415, "unsupported_media_type"),
    "text": (b"hello world, definitely not a radiograph", 415, "unsupported_media_type"),
    "pdf": (b"%PDF-1.4\n" + b"0" * 500, 415, "unsupported_media_type"),
    "png bomb 20000x20000": (png_bomb(), 413, "payload_too_large"),
    "multi-frame dicom": (make_dicom(np.zeros((64, 64), np.uint8), frames=2), 400, "invalid_image"),
    "dicom without pixels": (make_dicom(np.zeros((8, 8), np.uint8), with_pixels=False), 400, "invalid_image"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_inputs_get_4xx_and_the_server_keeps_serving(client, env, nih_sample, name):
    data, status, code = HOSTILE[name]
    assert_error(predict(client, env, data), status, code)
    assert predict(client, env, nih_sample[0].read_bytes()).status_code == 200


def test_truncated_png_and_undecodable_dicom(client, env, nih_sample, dicom_dir):
    data = nih_sample[0].read_bytes()
    assert_error(predict(client, env, data[: len(data) // 2]), 400, "invalid_image")
    rsna = (dicom_dir / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm").read_bytes()
    body = assert_error(predict(client, env, undecodable(rsna)), 415, "unsupported_media_type")
    assert "JPIP Referenced" in body["error"]["message"]


def test_missing_image_field(client, env):
    response = client.post(
        "/api/v1/predict",
        headers=env.auth(),
        content_type="multipart/form-data",
        data={"picture": (io.BytesIO(b"x"), "x.png")},
    )
    assert "'image'" in assert_error(response, 400, "invalid_image")["error"]["message"]


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"heatmaps": "bogus"}, "heatmaps"),
        ({"heatmaps": "mass,nope"}, "nope"),
        ({"heatmap_format": "gif"}, "heatmap_format"),
    ],
)
def test_bad_options_are_422_naming_the_option(client, env, nih_sample, options, fragment):
    body = assert_error(predict(client, env, nih_sample[0].read_bytes(), **options), 422, "invalid_option")
    assert fragment in body["error"]["message"]


def test_unknown_model_is_404(client, env, nih_sample):
    body = assert_error(predict(client, env, nih_sample[0].read_bytes(), model="cxr99"), 404, "model_not_found")
    assert "cxr99" in body["error"]["message"]


def test_upload_limit_enforced_before_reading(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_MAX_UPLOAD_MB="1")
    client = ready_app(env).test_client()
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (1400, 1400), dtype=np.uint8))
    assert len(big) > 1024 * 1024
    body = assert_error(
        client.post("/api/v1/predict", data=big, headers={**env.auth(), "Content-Type": "image/png"}),
        413,
        "payload_too_large",
    )
    assert "1 MiB" in body["error"]["message"]
    multipart = predict(client, env, big)
    assert_error(multipart, 413, "payload_too_large")


def test_unknown_path_and_method_are_json(client):
    response = client.get("/api/v1/nope")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    response = client.get("/api/v1/predict")
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


# --- observability ---------------------------------------------------------------------------


def test_request_id_passed_through_or_generated(client):
    assert (
        client.get("/api/v1/health", headers={"X-Request-ID": "nginx-abc.123"}).headers["X-Request-ID"]
        == "nginx-abc.123"
    )
    generated = client.get("/api/v1/health", headers={"X-Request-ID": "bad id; <script>" + "x" * 200}).headers[
        "X-Request-ID"
    ]
    assert len(generated) == 32 and " " not in generated


def test_audit_log_has_no_patient_identifiers(client, env, nih_sample, capsys):
    pixels = np.asarray(Image.open(nih_sample[0]).convert("L"))
    dicom = make_dicom(pixels, PatientName="Doe^Jane", PatientID="PID-12345", PatientBirthDate="19700101")
    response = predict(client, env, dicom, headers={**env.auth(), "X-Request-ID": "audit-check-1"})
    assert response.status_code == 200
    lines = (env.root / "audit.jsonl").read_text().splitlines()
    record = json.loads(next(line for line in lines if "audit-check-1" in line))
    assert record["sub"] == "pacs-1" and record["model"] == {
        "id": "cxr10",
        "version": "0.0.0-demo",
        "demo": True,
        "thresholds": "bundle",
    }
    assert len(record["input_sha256"]) == 64 and len(record["findings"]) == 10
    body = {k: v for k, v in response.get_json().items() if k != "heatmaps"}
    everything = (env.root / "audit.jsonl").read_text() + capsys.readouterr().out + json.dumps(body)
    for identifier in ("Doe", "Jane", "PID-12345", "19700101"):
        assert identifier not in everything


def test_audit_log_survives_restart(tmp_path, demo_bundle, nih_sample):
    env = make_env(tmp_path, demo_bundle.path)
    for _ in range(2):  # two app instances on the same file: records are appended, never truncated
        client = ready_app(env).test_client()
        assert predict(client, env, nih_sample[0].read_bytes()).status_code == 200
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2


def test_metrics(client, env, nih_sample):
    predict(client, env, nih_sample[0].read_bytes())
    client.get("/api/v1/license")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'chexnet_requests_total{code="token_missing",endpoint="/api/v1/license",status="401"}' in text
    assert 'chexnet_stage_seconds_count{model="cxr10",stage="inference"}' in text
    assert "chexnet_batch_size_bucket" in text and "chexnet_queue_depth" in text
    # each stage's wall time, and the CPU time of the thread that ran it where one did (bench/request_cost.py)
    for stage in ("parse", "decode", "preprocess", "heatmap", "response", "audit"):
        for family in ("chexnet_stage_seconds", "chexnet_stage_cpu_seconds"):
            assert f'{family}_count{{model="cxr10",stage="{stage}"}}' in text
    assert 'chexnet_stage_cpu_seconds_count{model="cxr10",stage="inference"}' not in text  # the engine's threads


def test_openapi_and_docs_pages(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1") and "/api/v1/predict" in doc["paths"]
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["Prediction"])
    assert "/static/docs.js" in client.get("/api/v1/docs").get_data(as_text=True)
    for asset in ("/api/v1/docs", "/static/docs.js", "/static/app.js", "/static/style.css", "/"):
        response = client.get(asset)
        assert response.status_code == 200
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", response.get_data(as_text=True)), (
            "nothing loads from outside"
        )


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("CHEXNET_MAX_UPLOAD_MB", "lots", "CHEXNET_MAX_UPLOAD_MB must be a whole number"),
        ("CHEXNET_ENGINE", "tensorrt", "CHEXNET_ENGINE must be one of"),
        ("CHEXNET_DEVICE", "tpu", "CHEXNET_DEVICE must be one of"),
        ("CHEXNET_PORT", "70000", "CHEXNET_PORT must be between"),
        ("CHEXNET_MODELS_DIR", "/nonexistent", "CHEXNET_MODELS_DIR"),
        ("CHEXNET_LICENSE_KEYS", "", "CHEXNET_LICENSE_KEYS"),
    ],
)
def test_bad_settings_name_the_variable(env, name, value, fragment):
    base = {"CHEXNET_MODELS_DIR": env.settings.models_dir, "CHEXNET_LICENSE_KEYS": env.settings.license_keys}
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({**base, name: value})


def test_corrupted_bundle_never_ready(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path)
    with open(tmp_path / "models" / "cxr10" / "model.onnx", "r+b") as f:
        f.seek(4096)
        f.write(b"corrupt")
    response = ready_app(env).test_client().get("/api/v1/ready")
    assert response.status_code == 503
    assert response.get_json()["reasons"] == [
        "Bundle cxr10: model.onnx does not match its sha256 in manifest.json; the file is corrupt or was replaced, copy the bundle again."
    ]


def test_missing_host_identity_not_ready(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_PRODUCT_UUID_FILE=str(tmp_path / "absent"))
    client = ready_app(env).test_client()
    reasons = client.get("/api/v1/ready").get_json()["reasons"]
    assert "CHEXNET_PRODUCT_UUID_FILE" in reasons[0]
    assert_error(client.get("/api/v1/license", headers=env.auth()), 503, "not_ready", "/api/v1/license", "get")
