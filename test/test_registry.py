"""The vendor's token registration service: sign-in, CSRF, audit rows, revocation list."""

import hashlib
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
    settings = RegistrySettings(
        private_key_path=str(keys[0]),
        users={"alice": generate_password_hash(PASSWORD)},
        db_path=str(tmp_path / "registry.sqlite3"),
        session_cookie_secure=False,
    )
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
    server = client.post(
        "/api/servers",
        headers=headers,
        json={"customer": "General", "site": "Radiology", "product_uuid": HOST_UUID.upper()},
    )
    assert server.status_code == 201 and server.get_json()["product_uuid"] == HOST_UUID
    duplicate = client.post(
        "/api/servers", headers=headers, json={"customer": "Other", "site": "X", "product_uuid": HOST_UUID}
    )
    assert duplicate.status_code == 422
    issued = client.post(
        "/api/tokens",
        headers=headers,
        json={"server_id": server.get_json()["id"], "subject": "pacs-1", "features": "cxr10,cxr25", "days": 30},
    )
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
    response = client.post(
        "/servers", data={"customer": "General", "site": "ER", "product_uuid": HOST_UUID, "csrf_token": csrf_from(page)}
    )
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert HOST_UUID in page
    issued = client.post(
        "/tokens",
        data={"server_id": "1", "subject": "pacs-9", "features": "cxr10", "days": "7", "csrf_token": csrf_from(page)},
    )
    assert issued.status_code == 200 and "Token issued" in issued.get_data(as_text=True)
    assert "token.issue" in client.get("/audit").get_data(as_text=True)


def test_bad_input_is_a_sentence(app):
    client = app.test_client()
    login(client)
    response = client.post(
        "/api/servers", headers=api_csrf(client), json={"customer": "G", "site": "R", "product_uuid": "not-a-uuid"}
    )
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


# --- attacks on the registration service ------------------------------------------------------


def _login_as(client, user, password):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token})


def test_unknown_user_costs_a_password_hash_like_a_known_one(app, monkeypatch):
    """Attack: tell user names apart by response time. Both paths run the same password check."""
    import licensing.registry.app as registry_app

    checked = []
    real = registry_app.check_password_hash
    monkeypatch.setattr(registry_app, "check_password_hash", lambda h, p: checked.append(h.split("$")[0]) or real(h, p))
    client = app.test_client()
    assert _login_as(client, "nobody", "whatever password").status_code == 401
    assert _login_as(client, "alice", "wrong password!").status_code == 401
    assert len(checked) == 2 and checked[0] == checked[1], "the unknown user skipped the hash or used another method"


def test_password_guessing_is_throttled_then_refused_even_with_the_right_password(app):
    client = app.test_client()
    for _ in range(5):
        assert _login_as(client, "alice", "guess " * 3).status_code == 401
    response = _login_as(client, "alice", PASSWORD)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in response.get_data(as_text=True)
    app.extensions["registry"]["throttle"].succeeded("alice")  # the window passing, for the rest of the test
    assert _login_as(client, "alice", PASSWORD).status_code == 302
    actions = [row["action"] for row in client.get("/api/audit").get_json()["audit"]]
    assert "login.throttled" in actions


def test_guessing_across_many_user_names_is_throttled_per_address(app):
    client = app.test_client()
    for n in range(20):
        assert _login_as(client, f"user{n}", "guess guess guess").status_code == 401
    assert _login_as(client, "alice", PASSWORD).status_code == 429


def test_cookie_copied_before_sign_out_is_dead_afterwards(app):
    client = app.test_client()
    login(client)
    stolen = client.get_cookie("session").value
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    response = thief.get("/api/tokens")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "login_required"


@pytest.mark.parametrize("elapsed, idle", [(31 * 60, True), (13 * 3600, False)], ids=["idle", "absolute"])
def test_sessions_end_after_idle_and_absolute_lifetimes(app, monkeypatch, elapsed, idle):
    import licensing.registry.store as store_module

    client = app.test_client()
    login(client)
    start = store_module.time.time()
    if not idle:  # keep the session busy every 20 minutes: only the absolute lifetime can end it
        for step in range(1, 12 * 3):  # up to 11 h 40 min
            monkeypatch.setattr(store_module.time, "time", lambda t=start + step * 1200: t)
            assert client.get("/api/tokens").status_code == 200
    monkeypatch.setattr(store_module.time, "time", lambda: start + elapsed)
    assert client.get("/api/tokens").status_code == 401


def test_anonymous_failed_sign_ins_cannot_write_huge_names(app):
    client = app.test_client()
    _login_as(client, "x" * 500_000, "p")
    login(client)
    actors = [row["actor"] for row in client.get("/api/audit").get_json()["audit"]]
    assert max(map(len, actors)) <= 64


def test_stored_fields_are_bounded(app):
    client = app.test_client()
    login(client)
    response = client.post(
        "/api/servers",
        headers=api_csrf(client),
        json={"customer": "C" * 10_000, "site": "R", "product_uuid": HOST_UUID},
    )
    assert response.status_code == 422 and "customer" in response.get_json()["error"]["message"]


def test_database_is_owner_only_and_holds_no_token(app, tmp_path):
    db = tmp_path / "registry.sqlite3"
    assert db.stat().st_mode & 0o077 == 0
    client = app.test_client()
    login(client)
    headers = api_csrf(client)
    server = client.post(
        "/api/servers", headers=headers, json={"customer": "G", "site": "R", "product_uuid": HOST_UUID}
    )
    issued = client.post(
        "/api/tokens",
        headers=headers,
        json={"server_id": server.get_json()["id"], "subject": "pacs-1", "features": "cxr10", "days": 30},
    )
    token = issued.get_json()["token"]
    assert issued.headers["Cache-Control"] == "no-store"
    signature = token.rsplit(".", 1)[1]
    for path in (db, tmp_path / "registry.sqlite3-wal"):
        if path.exists():
            assert signature.encode() not in path.read_bytes(), f"{path.name} holds the token"
    for page in ("/", "/api/tokens", "/api/audit", "/audit"):
        assert signature not in client.get(page).get_data(as_text=True)


def test_issued_page_shows_the_token_once_with_a_download(app):
    client = app.test_client()
    login(client)
    page = client.get("/").get_data(as_text=True)
    client.post(
        "/servers", data={"customer": "G", "site": "ER", "product_uuid": HOST_UUID, "csrf_token": csrf_from(page)}
    )
    issued = client.post(
        "/tokens",
        data={"server_id": "1", "subject": "pacs-9", "features": "cxr10", "days": "7", "csrf_token": csrf_from(page)},
    ).get_data(as_text=True)
    token = re.search(r"<textarea[^>]*>([^<]+)</textarea>", issued).group(1)
    assert f'href="data:text/plain;charset=us-ascii,{token}"' in issued and "download=" in issued


def test_refuses_to_start_on_a_database_others_can_read(keys, tmp_path):
    db = tmp_path / "registry.sqlite3"
    db.touch(mode=0o644)
    db.chmod(0o644)
    settings = RegistrySettings(
        private_key_path=str(keys[0]),
        users={"alice": generate_password_hash(PASSWORD)},
        db_path=str(db),
        session_cookie_secure=False,
    )
    with pytest.raises(SettingsError, match="readable by other users"):
        create_app(settings)


def test_old_database_with_full_tokens_is_migrated_to_hashes(keys, tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite3"
    db.touch(mode=0o600)
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "CREATE TABLE servers (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, site TEXT NOT NULL, product_uuid TEXT NOT NULL UNIQUE,"
            " created_at TEXT NOT NULL, created_by TEXT NOT NULL);"
            "CREATE TABLE tokens (jti TEXT PRIMARY KEY, server_id INTEGER NOT NULL, subject TEXT NOT NULL, features TEXT NOT NULL,"
            " issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, issued_by TEXT NOT NULL, token TEXT NOT NULL, revoked_at TEXT, revoked_by TEXT);"
            "INSERT INTO servers VALUES (1, 'G', 'R', 'u', 't', 'a');"
            "INSERT INTO tokens VALUES ('j1', 1, 's', 'cxr10', 't', 't', 'a', 'SECRET-TOKEN-TEXT', NULL, NULL);"
        )
    settings = RegistrySettings(
        private_key_path=str(keys[0]),
        users={"alice": generate_password_hash(PASSWORD)},
        db_path=str(db),
        session_cookie_secure=False,
    )
    create_app(settings)
    assert b"SECRET-TOKEN-TEXT" not in db.read_bytes()
    with sqlite3.connect(db) as conn:
        assert (
            conn.execute("SELECT token_sha256 FROM tokens").fetchone()[0]
            == hashlib.sha256(b"SECRET-TOKEN-TEXT").hexdigest()
        )


def test_a_cluster_licence_is_one_token_for_several_servers_of_one_customer(app, keys):
    from licensing_helpers import OTHER_UUID

    client = app.test_client()
    login(client)
    headers = api_csrf(client)
    ids = [
        client.post("/api/servers", headers=headers, json={"customer": c, "site": s, "product_uuid": u}).get_json()[
            "id"
        ]
        for c, s, u in (
            ("Region", "node-a", HOST_UUID),
            ("Region", "node-b", OTHER_UUID),
            ("Elsewhere", "x", "0b5c6d7e-8f90-4a1b-9c2d-3e4f5a6b7c8d"),
        )
    ]
    issued = client.post(
        "/api/tokens", headers=headers, json={"server_ids": ids[:2], "subject": "pacs", "features": "cxr10", "days": 30}
    )
    assert issued.status_code == 201
    token = issued.get_json()["token"]
    assert issued.get_json()["claims"]["product_uuid"] == sorted([HOST_UUID, OTHER_UUID])
    for node in (HOST_UUID, OTHER_UUID):
        assert TokenVerifier(TrustedKeys(keys[1]), node).verify(token).sub == "pacs"
    # Listed once, with both servers; found by either node's UUID.
    for query in (HOST_UUID[:8], OTHER_UUID[:8], "node-b"):
        listed = client.get(f"/api/tokens?q={query}").get_json()["tokens"]
        assert [t["jti"] for t in listed] == [issued.get_json()["claims"]["jti"]]
        assert set(listed[0]["product_uuid"].split()) == {HOST_UUID, OTHER_UUID}
    # Servers of two customers, unknown servers and non-numbers are one sentence each.
    for body, sentence in (
        ({"server_ids": [ids[0], ids[2]]}, "one customer"),
        ({"server_ids": [ids[0], 999]}, "999"),
        ({"server_ids": ["x"]}, "a list of them"),
        ({"server_ids": []}, "1 to 64"),
    ):
        refused = client.post(
            "/api/tokens", headers=headers, json={**body, "subject": "s", "features": "cxr10", "days": 1}
        )
        assert refused.status_code == 422 and sentence in refused.get_json()["error"]["message"]
    # The page's form takes the ids as a comma list.
    page = client.get("/").get_data(as_text=True)
    form = client.post(
        "/tokens",
        data={
            "server_ids": f"{ids[0]}, {ids[1]}",
            "subject": "pacs-2",
            "features": "cxr10",
            "days": "7",
            "csrf_token": csrf_from(page),
        },
    )
    assert form.status_code == 200 and OTHER_UUID in form.get_data(as_text=True)
    audit = [row for row in client.get("/api/audit").get_json()["audit"] if row["action"] == "token.issue"]
    assert all(str(ids[1]) in row["detail"] for row in audit)


# --- open redirect after sign-in, weak user hashes, short session secret ----------------------


@pytest.mark.parametrize(
    "raw_next",
    [
        "/%09/evil.example/",
        "/%0d%0a/evil.example/",
        "/%00/evil.example/",
        "/%5Cevil.example",
        "/\\evil.example",
        "%5C%5Cevil.example",
        "//evil.example/",
        "%2F%2Fevil.example",
        "/%2F/evil.example",
        "%252F%252Fevil.example",
        "https://evil.example/",
        "https:evil.example",
        "javascript:alert(1)",
        "/%E2%80%8B/evil.example",
        "/nowhere",
        "/tokens/x/revoke",
        "/logout",
    ],
)
def test_sign_in_goes_to_the_index_unless_next_is_one_of_its_own_pages(app, raw_next):
    """Attack: a link to /login?next=... that sends the signed-in user to another site."""
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", query_string=f"next={raw_next}", data={"username": "alice", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_sign_in_returns_to_the_page_that_asked_for_it(app):
    client = app.test_client()
    asked = client.get("/audit").headers["Location"]
    token = csrf_from(client.get(asked).get_data(as_text=True))
    response = client.post(asked, data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/audit"


WEAK_HASHES = {
    "plaintext": PASSWORD,
    "empty": "",
    "unknown method": "sha1$abcdefghijklmnop$" + "0" * 40,
    "md5 pbkdf2": "pbkdf2:md5:600000$abcdefghijklmnop$" + "0" * 32,
    "cheap pbkdf2": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000"),
    "cheap scrypt": generate_password_hash(PASSWORD, method="scrypt:1024:1:1"),
    "no salt": "scrypt:32768:8:1$$" + "0" * 128,
    "not hex": "scrypt:32768:8:1$abcdefghijklmnop$" + "z" * 128,
}


@pytest.mark.parametrize("weak", WEAK_HASHES.values(), ids=WEAK_HASHES.keys())
def test_refuses_to_start_with_a_plaintext_or_weak_password_hash(keys, tmp_path, weak):
    """Attack: a plaintext or cheap hash is readable in the file and answers sign-in faster, which tells
    the user names apart. Start-up stops with a sentence naming the variable and user, not the hash."""
    users = tmp_path / "users"
    users.write_text(f"# staff\nalice:{generate_password_hash(PASSWORD)}\nbob:{weak}\n")
    with pytest.raises(SettingsError, match="LICENSING_USERS_FILE: .*user 'bob'") as refused:
        from_env({"LICENSING_PRIVATE_KEY": str(keys[0]), "LICENSING_USERS_FILE": str(users)})
    assert not weak or weak not in str(refused.value)
    with pytest.raises(SettingsError, match="LICENSING_ADMIN_PASSWORD_HASH: .*user 'admin'"):
        from_env({"LICENSING_PRIVATE_KEY": str(keys[0]), "LICENSING_ADMIN_PASSWORD_HASH": weak or " "})


@pytest.mark.parametrize(
    "lines, sentence",
    [
        ("alice\n", "line 1 is not 'user:hash'"),
        (":{hash}\n", "line 1 is not 'user:hash'"),
        ("alice:{hash}\nalice:{hash}\n", "line 2 lists user 'alice' a second time"),
        ("# nobody\n", "lists no 'user:hash' lines"),
    ],
)
def test_users_file_lines_that_are_not_one_user_and_hash_are_refused(keys, tmp_path, lines, sentence):
    users = tmp_path / "users"
    users.write_text(lines.format(hash=generate_password_hash(PASSWORD, method="pbkdf2:sha512:210000")))
    with pytest.raises(SettingsError, match=f"LICENSING_USERS_FILE.*{sentence}"):
        from_env({"LICENSING_PRIVATE_KEY": str(keys[0]), "LICENSING_USERS_FILE": str(users)})


def test_unknown_users_are_checked_with_the_configured_users_method(keys, tmp_path, monkeypatch):
    import licensing.registry.app as registry_app

    method = "pbkdf2:sha512:210000"
    app = create_app(
        RegistrySettings(
            private_key_path=str(keys[0]),
            db_path=str(tmp_path / "registry.sqlite3"),
            users={"alice": generate_password_hash(PASSWORD, method=method)},
        )
    )
    checked = []
    real = registry_app.check_password_hash
    monkeypatch.setattr(registry_app, "check_password_hash", lambda h, p: checked.append(h.split("$")[0]) or real(h, p))
    assert _login_as(app.test_client(), "nobody", "whatever password").status_code == 401
    assert checked == [method]


def test_refuses_a_session_secret_shorter_than_32_bytes(keys):
    env = {"LICENSING_PRIVATE_KEY": str(keys[0]), "LICENSING_ADMIN_PASSWORD_HASH": generate_password_hash(PASSWORD)}
    with pytest.raises(SettingsError, match="LICENSING_SECRET_KEY must be at least 32 bytes") as refused:
        from_env({**env, "LICENSING_SECRET_KEY": "s" * 31})
    assert "s" * 31 not in str(refused.value)
    assert from_env({**env, "LICENSING_SECRET_KEY": "s" * 32}).secret_key == "s" * 32
    assert len(from_env(env).secret_key) >= 32 and from_env(env).secret_key != from_env(env).secret_key
