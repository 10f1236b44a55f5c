"""A configured API for tests: demo bundle, vendor key, host identity, tokens, a live waitress server; requests
through Flask's test client and their answers checked against the OpenAPI document."""

import io
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import waitress
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chexnet.api import create_app
from chexnet.api.openapi import openapi_document
from chexnet.service import Settings
from licensing_helpers import HOST_UUID, claims_for, sign

DOC = openapi_document()


@dataclass
class ApiEnv:
    root: Path
    key: Ed25519PrivateKey
    settings: Settings

    def token(self, **claims) -> str:
        return sign(self.key, claims_for(**claims))

    def auth(self, **claims) -> dict:
        return {"Authorization": f"Bearer {self.token(**claims)}"}


def make_env(root: Path, bundle_path: Path, **overrides) -> ApiEnv:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / bundle_path.name).exists():
        shutil.copytree(bundle_path, models / bundle_path.name)
    key = Ed25519PrivateKey.generate()
    (root / "vendor_public.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (root / "product_uuid").write_text(HOST_UUID + "\n")
    env = {
        "CHEXNET_MODELS_DIR": str(models),
        "CHEXNET_LICENSE_KEYS": str(root / "vendor_public.pem"),
        "CHEXNET_PRODUCT_UUID_FILE": str(root / "product_uuid"),
        "CHEXNET_AUDIT_LOG": str(root / "audit.jsonl"),
        "CHEXNET_ENGINE": "onnxruntime",
    }
    env.update(overrides)
    return ApiEnv(root, key, Settings.from_env(env))


def ready_app(env: ApiEnv):
    app = create_app(env.settings)
    assert app.extensions["chexnet"].wait_loaded(120), "models did not load in time"
    return app


class LiveServer:
    """waitress on an ephemeral 127.0.0.1 port in a thread; always closed by the fixture."""

    def __init__(self, app, threads: int = 8):
        self.server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        time.sleep(0.1)

    def close(self):
        self.server.close()


def conforms(response, path: str, method: str = "get"):
    """Validate a real response body against the OpenAPI document's schema for its status."""
    spec = DOC["paths"][path][method]["responses"][str(response.status_code)]
    schema = spec["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": DOC["components"]}).validate(response.get_json())
    return response.get_json()


def assert_error(response, status, code, path="/api/v1/predict", method="post"):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = conforms(response, path, method)
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    assert body["error"]["message"].endswith((".", ")"))
    return body


def predict(client, env, data: bytes, query: str = "", headers=None, **form):
    return client.post(
        f"/api/v1/predict{query}",
        headers=headers or env.auth(),
        data={"image": (io.BytesIO(data), "upload.bin"), **form},
        content_type="multipart/form-data",
    )
