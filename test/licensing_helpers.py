"""Keys, tokens, a minimal Flask app and a start-up race for licensing tests."""

import base64
import json
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, jsonify, request

from chexnet.api import errors
from licensing.flask_auth import current_claims, init_app, token_required
from licensing.keys import key_id

HOST_UUID = "4c4c4544-0047-3510-8051-b4c04f4e4e32"
OTHER_UUID = "9f2c1e0a-5b7d-4c3e-8f1a-2b3c4d5e6f70"


def claims_for(product_uuid: str = HOST_UUID, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": "chexnet-vendor",
        "aud": "chexnet-api",
        "sub": "pacs-1",
        "customer": "General Hospital",
        "product_uuid": product_uuid,
        "features": ["cxr10"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: Ed25519PrivateKey, claims: dict, **header) -> str:
    headers = {"typ": "chexnet+jwt", "kid": key_id(key.public_key())}
    headers.update(header)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={k: v for k, v in headers.items() if v is not None})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def make_app(verifier) -> Flask:
    app = Flask(__name__)
    init_app(app, verifier)
    errors.init_app(app)

    @app.get("/license")
    @token_required
    def license_view():
        claims = current_claims()
        return jsonify(sub=claims.sub, customer=claims.customer, features=claims.features)

    @app.post("/predict")
    @token_required
    def predict():
        current_claims().require_feature(request.args.get("model", "cxr10"))
        return jsonify(ok=True)

    return app


def start_together(lists: list[str], state: str, key_dir: str, barrier, failures) -> None:
    """One process of a start-up race (a multiprocessing target): for each list in turn, wait for the
    others, then start a watcher on it with the shared state file; put the rounds not in force in failures."""
    from licensing.keys import TrustedKeys
    from licensing.revocation import RevocationWatcher

    keys, missed = TrustedKeys(key_dir), []
    for round_, path in enumerate(lists):
        barrier.wait(timeout=60)
        watcher = RevocationWatcher(path, keys, state)
        if watcher.current is None:
            missed.append((round_, watcher.error))
    failures.put(missed)
