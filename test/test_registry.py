"""The vendor's token registration service: sign-in, CSRF, audit rows, revocation list."""

import re

import pytest
from werkzeug.security import generate_password_hash

from licensing.keys import TrustedKeys, generate
from licensing.registry import create_app
from licensing.registry.settings import RegistrySettings, SettingsError, from_env
from licensing.revocation import verify_revocation_list
from licensing.tokens import TokenVerifier
from licensing_helpers import HOST_UUID

PASSWORD = "correct horse battery"


@pytest.fixture()
def keys(tmp_path):
    private, public, _ = generate(tmp_path / "keys")
    return private, public


@pytest.fixture()
def app(tmp_path, keys):
    settings = RegistrySettings(private_key_path=str(keys[0]), users={"alice": generate_password_hash(PASSWORD)},
                                db_path=str(tmp_path / "registry.sqlite3"), session_cookie_secure=False)
    return create_app(settings)


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, password=PASSWORD):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": "alice", "password": password, "csrf_token": token})


def api_csrf(client) -> dict:
    return {"X-CSRFToken": client.get("/api/csrf").get_json()["csrf_token"]}


def test_sign_in_required(app):
    client = app.test_client()
    assert client.get("/").status_code == 302 and "/login" in client.get("/").headers["Location"]
    response = client.get("/api/tokens")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "login_required"
    assert client.get("/revocations.jwt").status_code == 302


def test_wrong_password_refused_and_audited(app):
    client = app.test_client()
    assert login(client, "wrong password!").status_code == 401
    assert login(client).status_code == 302
    actions = [row["action"] for row in client.get("/api/audit").get_json()["audit"]]
    assert actions[:2] == ["login", "login.failed"]


def test_csrf_enforced(app):
    client = app.test_client()
    assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 400
    login(client)
    form = {"customer": "General", "site": "Radiology", "product_uuid": HOST_UUID}
    assert client.post("/servers", data=form).status_code == 400
    refused = client.post("/api/servers", json=form)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "csrf_failed"
    assert client.get("/api/servers").get_json()["servers"] == []


def test_register_issue_search_revoke_with_audit(app, keys):
    client = app.test_client()
    login(client)
    headers = api_csrf(client)
    server = client.post("/api/servers", headers=headers,
                         json={"customer": "General", "site": "Radiology", "product_uuid": HOST_UUID.upper()})
    assert server.status_code == 201 and server.get_json()["product_uuid"] == HOST_UUID
    duplicate = client.post("/api/servers", headers=headers,
                            json={"customer": "Other", "site": "X", "product_uuid": HOST_UUID})
    assert duplicate.status_code == 422
    issued = client.post("/api/tokens", headers=headers, json={
        "server_id": server.get_json()["id"], "subject": "pacs-1", "features": "cxr10,cxr25", "days": 30})
    assert issued.status_code == 201
    token, jti = issued.get_json()["token"], issued.get_json()["claims"]["jti"]

    verifier = TokenVerifier(TrustedKeys(keys[1]), HOST_UUID)
    assert verifier.verify(token).features == ["cxr10", "cxr25"]

    assert [t["jti"] for t in client.get("/api/tokens?q=pacs").get_json()["tokens"]] == [jti]
    assert client.get("/api/tokens?q=nobody").get_json()["tokens"] == []
    assert client.post(f"/api/tokens/{jti}/revoke", headers=headers).get_json() == {"jti": jti, "revoked": True}
    assert client.post("/api/tokens/unknown-jti/revoke", headers=headers).status_code == 404

    revocations = verify_revocation_list(client.get("/revocations.jwt").get_data(as_text=True), TrustedKeys(keys[1]))
    assert jti in revocations.jtis

    audit = client.get("/api/audit").get_json()["audit"]
    actions = [row["action"] for row in audit]
    for action in ("login", "server.register", "token.issue", "token.revoke", "revocations.download"):
        assert action in actions
    assert all(row["actor"] == "alice" for row in audit if row["action"] != "login.failed")


def test_html_pages(app):
    client = app.test_client()
    login(client)
    page = client.get("/").get_data(as_text=True)
    response = client.post("/servers", data={"customer": "General", "site": "ER", "product_uuid": HOST_UUID,
                                              "csrf_token": csrf_from(page)})
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert HOST_UUID in page
    issued = client.post("/tokens", data={"server_id": "1", "subject": "pacs-9", "features": "cxr10", "days": "7",
                                          "csrf_token": csrf_from(page)})
    assert issued.status_code == 200 and "Token issued" in issued.get_data(as_text=True)
    assert "token.issue" in client.get("/audit").get_data(as_text=True)


def test_bad_input_is_a_sentence(app):
    client = app.test_client()
    login(client)
    response = client.post("/api/servers", headers=api_csrf(client),
                           json={"customer": "G", "site": "R", "product_uuid": "not-a-uuid"})
    assert response.status_code == 422 and "product_uuid" in response.get_json()["error"]["message"]


def test_private_key_never_served(app, keys):
    client = app.test_client()
    login(client)
    secret = keys[0].read_text().splitlines()[1]
    for path in ("/", "/audit", "/api/servers", "/api/tokens", "/api/audit", "/revocations.jwt", "/api/revocations"):
        assert secret not in client.get(path).get_data(as_text=True)


def test_refuses_to_start_with_readable_key(keys, tmp_path):
    keys[0].chmod(0o644)
    env = {"LICENSING_PRIVATE_KEY": str(keys[0]), "LICENSING_ADMIN_PASSWORD_HASH": generate_password_hash(PASSWORD)}
    with pytest.raises(SettingsError, match="LICENSING_PRIVATE_KEY: .*chmod 600"):
        from_env(env)
    keys[0].chmod(0o600)
    assert from_env(env).users.keys() == {"admin"}
    with pytest.raises(SettingsError, match="LICENSING_USERS_FILE"):
        from_env({"LICENSING_PRIVATE_KEY": str(keys[0])})
