"""Licensing: the RFC 8725 attack list against token_required, host binding, revocation, keys."""

import fcntl
import hashlib
import hmac
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing import revocation
from licensing.cli import main as licensing_main
from licensing.errors import LicenseConfigError
from licensing.host import read_host_uuid, same_host, swap_endian
from licensing.keys import TrustedKeys, generate, key_id, load_private_key
from licensing.revocation import RevocationWatcher, sign_revocation_list, verify_revocation_list
from licensing.tokens import REQUIRED_CLAIMS, TokenVerifier, issue_token
from licensing_helpers import HOST_UUID, OTHER_UUID, b64, claims_for, make_app, raw_jwt, sign, start_together


@pytest.fixture(scope="module")
def vendor_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def previous_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory, vendor_key, previous_key):
    """Directory mode (key rotation): <kid>.pem for the current and the previous vendor key."""
    directory = tmp_path_factory.mktemp("keys")
    for key in (vendor_key, previous_key):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (directory / f"{key_id(key.public_key())}.pem").write_bytes(pem)
    return directory


@pytest.fixture()
def verifier(key_dir):
    return TokenVerifier(TrustedKeys(key_dir), HOST_UUID, leeway=60)


@pytest.fixture()
def client(verifier):
    return make_app(verifier).test_client()


def call(client, token=None, header=None, path="/license"):
    headers = (
        {"Authorization": header if header is not None else f"Bearer {token}"} if (token or header is not None) else {}
    )
    return client.get(path, headers=headers) if path.startswith("/license") else client.post(path, headers=headers)


def assert_refused(response, status, code):
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["message"].endswith(".")
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_genuine_token_accepted(client, vendor_key):
    response = call(
        client,
        issue_token(
            vendor_key,
            product_uuid=HOST_UUID.upper(),
            customer="General Hospital",
            subject="pacs-1",
            days=30,
            features=["cxr10", "cxr25"],
        ),
    )
    assert response.status_code == 200
    assert response.get_json() == {"sub": "pacs-1", "customer": "General Hospital", "features": ["cxr10", "cxr25"]}


def test_mixed_endian_host_uuid_accepted(client, vendor_key):
    assert call(client, sign(vendor_key, claims_for(swap_endian(HOST_UUID)))).status_code == 200
    assert same_host(swap_endian(HOST_UUID).upper(), HOST_UUID)


def test_alg_none(client, vendor_key):
    token = raw_jwt({"alg": "none", "typ": "chexnet+jwt", "kid": key_id(vendor_key.public_key())}, claims_for())
    assert_refused(call(client, token), 401, "token_invalid")


def test_hs256_keyed_with_the_public_key(client, vendor_key, key_dir):
    kid = key_id(vendor_key.public_key())
    header, claims = {"alg": "HS256", "typ": "chexnet+jwt", "kid": kid}, claims_for()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    for secret in (
        (key_dir / f"{kid}.pem").read_bytes(),
        vendor_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    ):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert_refused(call(client, f"{signing_input}.{b64(mac)}"), 401, "token_invalid")


def test_rs256_token(client, vendor_key):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        claims_for(), rsa_key, algorithm="RS256", headers={"typ": "chexnet+jwt", "kid": key_id(vendor_key.public_key())}
    )
    assert_refused(call(client, token), 401, "token_invalid")


def test_foreign_ed25519_key_under_a_trusted_kid(client, vendor_key):
    token = sign(Ed25519PrivateKey.generate(), claims_for(), kid=key_id(vendor_key.public_key()))
    response = call(client, token)
    assert_refused(response, 401, "token_invalid")
    assert "signature" in response.get_json()["error"]["message"]


def test_unknown_kid(client):
    assert_refused(call(client, sign(Ed25519PrivateKey.generate(), claims_for())), 401, "token_invalid")


def test_token_of_the_previous_key_still_accepted(client, previous_key, vendor_key):
    """Rotation: each token's kid picks its key; a token naming the other trusted kid fails."""
    assert call(client, sign(previous_key, claims_for())).status_code == 200
    mislabelled = sign(previous_key, claims_for(), kid=key_id(vendor_key.public_key()))
    assert_refused(call(client, mislabelled), 401, "token_invalid")


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_each_required_claim_missing(client, vendor_key, claim):
    response = call(client, sign(vendor_key, claims_for(**{claim: None})))
    assert_refused(response, 401, "token_invalid")


@pytest.mark.parametrize("field, value", [("iss", "someone-else"), ("aud", "other-api")])
def test_wrong_issuer_or_audience(client, vendor_key, field, value):
    assert_refused(call(client, sign(vendor_key, claims_for(**{field: value}))), 401, "token_invalid")


@pytest.mark.parametrize("typ", ["JWT", None, "chexnet-revocation+jwt"])
def test_wrong_typ(client, vendor_key, typ):
    assert_refused(call(client, sign(vendor_key, claims_for(), typ=typ)), 401, "token_invalid")


def test_expired(client, vendor_key):
    now = int(time.time())
    response = call(client, sign(vendor_key, claims_for(iat=now - 7200, nbf=now - 7200, exp=now - 120)))
    assert_refused(response, 401, "token_expired")


def test_expired_within_leeway_accepted(client, vendor_key):
    now = int(time.time())
    assert call(client, sign(vendor_key, claims_for(exp=now - 10))).status_code == 200


def test_not_yet_valid_beyond_leeway(client, vendor_key):
    now = int(time.time())
    assert_refused(call(client, sign(vendor_key, claims_for(nbf=now + 600))), 401, "token_invalid")


def test_tampered_payload_with_old_signature(client, vendor_key):
    header, _, signature = sign(vendor_key, claims_for()).split(".")
    forged = b64(json.dumps(claims_for(features=["cxr10", "cxr25", "chestxray14"])).encode())
    assert_refused(call(client, f"{header}.{forged}.{signature}"), 401, "token_invalid")


def test_token_for_another_host(client, vendor_key):
    assert_refused(call(client, sign(vendor_key, claims_for(OTHER_UUID))), 403, "wrong_host")


def test_model_outside_features(client, vendor_key):
    token = sign(vendor_key, claims_for(features=["cxr10"]))
    assert call(client, token, path="/predict?model=cxr10").status_code == 200
    assert_refused(call(client, token, path="/predict?model=cxr25"), 403, "model_not_licensed")


@pytest.mark.parametrize(
    "header, code",
    [
        ("", "token_missing"),
        ("Bearer", "token_missing"),
        ("Bearer    ", "token_missing"),
        ("Basic dXNlcjpwYXNz", "token_missing"),
        ("Bearer " + "a" * 10_000, "token_invalid"),
        ("Bearer not.a.jwt", "token_invalid"),
        ("Bearer abc", "token_invalid"),
    ],
)
def test_malformed_authorization_headers(client, header, code):
    response = client.get("/license", headers={"Authorization": header})
    assert_refused(response, 401, code)


def test_no_header(client):
    assert_refused(client.get("/license"), 401, "token_missing")


@pytest.mark.parametrize("param", ["token", "access_token"])
def test_token_in_query_string(client, vendor_key, param):
    token = sign(vendor_key, claims_for())
    response = client.get(f"/license?{param}={token}", headers={"Authorization": f"Bearer {token}"})
    assert_refused(response, 401, "token_invalid")
    assert "URL" in response.get_json()["error"]["message"]


def test_signature_verified_once_per_token(verifier, vendor_key, monkeypatch):
    token = sign(vendor_key, claims_for())
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(5):
        assert verifier.verify(token).sub == "pacs-1"
    assert len(calls) == 1


def test_cached_token_expires(key_dir, vendor_key):
    verifier = TokenVerifier(TrustedKeys(key_dir), HOST_UUID, leeway=0)
    token = sign(vendor_key, claims_for(exp=int(time.time()) + 1))
    verifier.verify(token)
    time.sleep(2.1)
    with pytest.raises(Exception) as err:
        verifier.verify(token)
    assert err.value.code == "token_expired"


# --- revocation -----------------------------------------------------------------------------


def _watcher(tmp_path, key_dir, text):
    path = tmp_path / "revocations.jwt"
    path.write_text(text)
    return path, RevocationWatcher(path, TrustedKeys(key_dir))


def test_revoked_jti_and_sub(tmp_path, key_dir, vendor_key):
    revoked, other = claims_for(), claims_for(sub="pacs-2")
    _, watcher = _watcher(tmp_path, key_dir, sign_revocation_list(vendor_key, [revoked["jti"]], ["pacs-2"]))
    client = make_app(TokenVerifier(TrustedKeys(key_dir), HOST_UUID, revocations=watcher)).test_client()
    assert_refused(call(client, sign(vendor_key, revoked)), 401, "token_revoked")
    assert_refused(call(client, sign(vendor_key, other)), 401, "token_revoked")
    assert call(client, sign(vendor_key, claims_for())).status_code == 200


def test_revocation_list_reloaded_when_file_changes(tmp_path, key_dir, vendor_key):
    claims = claims_for()
    path, watcher = _watcher(tmp_path, key_dir, sign_revocation_list(vendor_key, [], []))
    verifier = TokenVerifier(TrustedKeys(key_dir), HOST_UUID, revocations=watcher)
    token = sign(vendor_key, claims)
    assert verifier.verify(token)  # cached now
    path.write_text(sign_revocation_list(vendor_key, [claims["jti"]], []))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    watcher.refresh()
    with pytest.raises(Exception) as err:
        verifier.verify(token)
    assert err.value.code == "token_revoked"


@pytest.mark.parametrize("tamper", ["unsigned", "payload", "foreign_key"])
def test_tampered_revocation_list_rejected_and_logged(tmp_path, key_dir, vendor_key, caplog, tamper):
    good = sign_revocation_list(vendor_key, ["jti-1"], [])
    path, watcher = _watcher(tmp_path, key_dir, good)
    assert watcher.is_revoked("jti-1", "x") and watcher.error is None
    header, payload, signature = good.split(".")
    bad = {
        "unsigned": raw_jwt({"alg": "none", "typ": "chexnet-revocation+jwt"}, {"revoked_jti": [], "revoked_sub": []}),
        "payload": f"{header}.{b64(json.dumps({'iss': 'chexnet-vendor', 'aud': 'chexnet-api', 'iat': 1, 'revoked_jti': [], 'revoked_sub': []}).encode())}.{signature}",
        "foreign_key": sign_revocation_list(Ed25519PrivateKey.generate(), [], [], kid=key_id(vendor_key.public_key())),
    }[tamper]
    path.write_text(bad)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with caplog.at_level("ERROR", logger="licensing.revocation"):
        watcher.refresh()
    assert watcher.error and "rejected" in watcher.error
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert watcher.is_revoked("jti-1", "x"), "the last good list stays in force"


def _touch_later(path):
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))


@pytest.mark.parametrize("state", ["missing", "truncated", "unsigned", "empty"])
def test_revoked_token_refused_while_the_configured_list_is_not_in_force(tmp_path, key_dir, vendor_key, state):
    """Attack: delete or damage the list before start-up so that a revoked token is served. Fails closed: 503."""
    path = tmp_path / "revocations.jwt"
    good = sign_revocation_list(vendor_key, ["revoked-jti"], [])
    if state != "missing":
        path.write_text(
            {
                "truncated": good[: len(good) // 2],
                "empty": "",
                "unsigned": raw_jwt(
                    {"alg": "none", "typ": "chexnet-revocation+jwt"}, {"revoked_jti": [], "revoked_sub": []}
                ),
            }[state]
        )
    watcher = RevocationWatcher(path, TrustedKeys(key_dir), tmp_path / "state.json")
    client = make_app(TokenVerifier(TrustedKeys(key_dir), HOST_UUID, revocations=watcher)).test_client()
    for claims in (claims_for(jti="revoked-jti"), claims_for()):
        response = call(client, sign(vendor_key, claims))
        assert_refused(response, 503, "not_ready")
        assert response.headers["Retry-After"].isdigit() and "WWW-Authenticate" not in response.headers
    path.write_text(good)  # the genuine list arrives: served again, the revoked token still refused
    _touch_later(path)
    watcher.refresh()
    assert call(client, sign(vendor_key, claims_for())).status_code == 200
    assert_refused(call(client, sign(vendor_key, claims_for(jti="revoked-jti"))), 401, "token_revoked")


def test_older_genuine_list_copied_back_is_refused_live_and_after_restart(tmp_path, key_dir, vendor_key, caplog):
    """Attack: copy an older, genuinely signed list (before the revocation) over the newer one."""
    path, state = tmp_path / "revocations.jwt", tmp_path / "audit" / "revocation-state.json"
    old = sign_revocation_list(vendor_key, [], [])
    new = sign_revocation_list(
        vendor_key, ["revoked-jti"], [], after=verify_revocation_list(old, TrustedKeys(key_dir)).seq
    )
    path.write_text(new)
    watcher = RevocationWatcher(path, TrustedKeys(key_dir), state)
    assert watcher.is_revoked("revoked-jti", "x")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    path.write_text(old)
    _touch_later(path)
    with caplog.at_level("ERROR", logger="licensing.revocation"):
        watcher.refresh()
    assert any("older than the newest list" in r.getMessage() for r in caplog.records)
    assert watcher.is_revoked("revoked-jti", "x"), "live: the newer list stays in force"
    restarted = RevocationWatcher(path, TrustedKeys(key_dir), state)  # a restart with the old list on disk
    client = make_app(TokenVerifier(TrustedKeys(key_dir), HOST_UUID, revocations=restarted)).test_client()
    assert_refused(call(client, sign(vendor_key, claims_for(jti="revoked-jti"))), 503, "not_ready")
    assert "older" in restarted.error
    path.write_text(new)  # the same newest list again is accepted after the restart
    _touch_later(path)
    restarted.refresh()
    assert_refused(call(client, sign(vendor_key, claims_for(jti="revoked-jti"))), 401, "token_revoked")


def test_merged_list_supersedes_the_list_it_merges_whatever_the_clock(tmp_path, key_dir, vendor_key):
    key = tmp_path / "vendor_private.pem"
    key.write_bytes(
        vendor_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    public = tmp_path / "vendor_public.pem"
    public.write_bytes(
        vendor_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    future = sign_revocation_list(vendor_key, ["a"], [], after=10**18)  # signed on a machine whose clock ran ahead
    (tmp_path / "old.jwt").write_text(future)
    assert (
        licensing_main(
            [
                "revoke",
                "--key",
                str(key),
                "--jti",
                "b",
                "--merge",
                str(tmp_path / "old.jwt"),
                "--public-key",
                str(public),
                "--out",
                str(tmp_path / "new.jwt"),
            ]
        )
        == 0
    )
    merged = verify_revocation_list((tmp_path / "new.jwt").read_text(), TrustedKeys(key_dir))
    assert merged.jtis == {"a", "b"} and merged.seq > 10**18


def test_unreadable_state_file_fails_closed(tmp_path, key_dir, vendor_key):
    path, state = tmp_path / "revocations.jwt", tmp_path / "state.json"
    path.write_text(sign_revocation_list(vendor_key, [], []))
    state.write_text("{not json")
    watcher = RevocationWatcher(path, TrustedKeys(key_dir), state)
    assert watcher.current is None and "state file" in watcher.error


def _recorded(state):
    return json.loads(state.read_text())["seq"]


@pytest.mark.parametrize("tamper", ["deleted", "lowered"])
def test_older_list_after_deleting_or_lowering_the_state_file_is_refused_live_and_after_restart(
    tmp_path, key_dir, vendor_key, tamper
):
    """Attack by anything that can write the audit folder, with the service running: delete the state file
    (or write the older sequence into it), then copy an older genuinely signed list back."""
    keys = TrustedKeys(key_dir)
    path, state = tmp_path / "revocations.jwt", tmp_path / "audit" / "revocation-state.json"
    old = sign_revocation_list(vendor_key, [], [])
    old_list = verify_revocation_list(old, keys)
    new = sign_revocation_list(vendor_key, ["revoked-jti"], [], after=old_list.seq)
    new_seq = verify_revocation_list(new, keys).seq
    path.write_text(new)
    watcher = RevocationWatcher(path, keys, state)
    client = make_app(TokenVerifier(keys, HOST_UUID, revocations=watcher)).test_client()
    token = sign(vendor_key, claims_for(jti="revoked-jti"))
    assert_refused(call(client, token), 401, "token_revoked")

    if tamper == "deleted":
        state.unlink()
    else:
        state.write_text(json.dumps({"seq": old_list.seq, "list_id": old_list.list_id}))
    path.write_text(old)
    _touch_later(path)
    watcher.refresh()
    assert_refused(call(client, token), 401, "token_revoked")
    assert _recorded(state) == new_seq, "the state file is written again from memory, never lowered"
    assert watcher.refused == "older" and "older" in watcher.warnings[0] and "stays in force" in watcher.warnings[0]

    restarted = RevocationWatcher(path, keys, state)  # a restart with the older list on disk
    restarted_client = make_app(TokenVerifier(keys, HOST_UUID, revocations=restarted)).test_client()
    assert_refused(call(restarted_client, token), 503, "not_ready")
    assert "older" in restarted.error
    state.unlink()  # again, after the restart: the floor read at start is kept in memory
    _touch_later(path)
    restarted.refresh()
    assert restarted.current is None and _recorded(state) == new_seq
    assert not [p.name for p in state.parent.iterdir() if p.name.endswith(".tmp")]


def test_processes_starting_together_on_one_state_file_all_end_with_the_list_in_force(tmp_path, key_dir, vendor_key):
    """The API, the DICOM node and a Swarm slot start at once, many times, sharing one state file; each
    round brings a newer list, so each round writes the file. Every start-up ends with the list in force."""
    rounds, processes, seq = 60, 3, 0
    lists = []
    for i in range(rounds):
        text = sign_revocation_list(vendor_key, [f"jti-{i}"], [], after=seq)
        seq = verify_revocation_list(text, TrustedKeys(key_dir)).seq
        lists.append(str(tmp_path / f"revocations-{i}.jwt"))
        Path(lists[-1]).write_text(text)
    state = tmp_path / "audit" / "revocation-state.json"
    ctx = multiprocessing.get_context("spawn")
    barrier, failures = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=start_together, args=(lists, str(state), str(key_dir), barrier, failures))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    missed = [failures.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert missed == [[]] * processes
    assert _recorded(state) == seq
    assert not [p.name for p in state.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_refusal_for_the_state_file_is_tried_again_at_the_next_check(tmp_path, key_dir, vendor_key, monkeypatch):
    """A state file that cannot be read or locked refuses the list, but the next check tries again without
    anyone touching the list file."""
    keys = TrustedKeys(key_dir)
    path, state = tmp_path / "revocations.jwt", tmp_path / "revocation-state.json"
    path.write_text(sign_revocation_list(vendor_key, ["revoked-jti"], []))
    state.write_text("{not json")
    watcher = RevocationWatcher(path, keys, state)
    assert watcher.current is None and watcher.refused == "state"
    state.unlink()  # what the message says to do
    watcher.refresh()
    assert watcher.is_revoked("revoked-jti", "x") and watcher.error is None

    monkeypatch.setattr(revocation, "LOCK_WAIT_S", 0.1)
    state.unlink()
    with open(state.with_name(state.name + ".lock"), "a") as held:  # another process holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        restarted = RevocationWatcher(path, keys, state)
        assert restarted.current is None and "locked" in restarted.error
    restarted.refresh()
    assert restarted.is_revoked("revoked-jti", "x") and _recorded(state) == watcher.current.seq


def test_a_refused_newer_list_is_a_warning_with_its_reason(tmp_path, key_dir, vendor_key, caplog):
    """The state file cannot be read, so a newer list that revokes more is refused: the earlier list stays in
    force and says so in warnings (for /ready) and in a reason code (for the metrics), logged once."""
    keys = TrustedKeys(key_dir)
    path, state = tmp_path / "revocations.jwt", tmp_path / "revocation-state.json"
    first = sign_revocation_list(vendor_key, [], [])
    path.write_text(first)
    watcher = RevocationWatcher(path, keys, state)
    assert watcher.warnings == [] and watcher.standing_refusals() == set()
    state.write_text("{not json")
    path.write_text(sign_revocation_list(vendor_key, ["revoked-jti"], [], after=watcher.current.seq))
    _touch_later(path)
    with caplog.at_level("ERROR", logger="licensing.revocation"):
        for _ in range(3):
            watcher.refresh()
    assert not watcher.is_revoked("revoked-jti", "x"), "the earlier list stays in force"
    assert watcher.standing_refusals() == {"state"} and watcher.refusals["state"] == 1
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1, (
        "tried again at each check, logged once"
    )
    (warning,) = watcher.warnings
    assert "state file" in warning and f"sequence {watcher.current.seq} stays in force" in warning
    state.unlink()
    watcher.refresh()
    assert watcher.is_revoked("revoked-jti", "x") and watcher.warnings == [] and watcher.standing_refusals() == set()


@pytest.mark.parametrize(
    "name, value",
    [
        ("kid", 7),
        ("kid", ["a", "b"]),
        ("kid", {"k": 1}),
        ("kid", "caf\u00e9"),
        ("kid", "a\r\nSet-Cookie: x=1"),
        ("kid", "x" * 500),
        ("typ", 1),
        ("alg", ["EdDSA"]),
        ("alg", "EdDSA\n"),
    ],
)
def test_malformed_header_values_are_401_and_never_echoed(client, vendor_key, name, value):
    header = {"alg": "EdDSA", "typ": "chexnet+jwt", "kid": key_id(vendor_key.public_key()), name: value}
    response = call(client, raw_jwt(header, claims_for(), b"\0" * 64))
    assert_refused(response, 401, "token_invalid")
    assert (
        response.headers["WWW-Authenticate"]
        == 'Bearer realm="chexnet", error="invalid_token", error_description="token_invalid"'
    )
    assert "Set-Cookie" not in response.headers and "Set-Cookie" not in response.get_data(as_text=True)


# --- keys and host identity -----------------------------------------------------------------


def test_keygen_private_key_owner_only(tmp_path):
    private, public, kid = generate(tmp_path)
    assert (private.stat().st_mode & 0o777) == 0o600
    assert load_private_key(private) and len(kid) == 16
    with pytest.raises(LicenseConfigError, match="already exists"):
        generate(tmp_path)
    private.chmod(0o644)
    with pytest.raises(LicenseConfigError, match="chmod 600"):
        load_private_key(private)


def test_host_uuid_file(tmp_path):
    f = tmp_path / "product_uuid"
    f.write_text(HOST_UUID.upper() + "\n")
    assert read_host_uuid(f) == HOST_UUID
    with pytest.raises(LicenseConfigError, match="CHEXNET_PRODUCT_UUID_FILE"):
        read_host_uuid(tmp_path / "absent")
    f.write_text("00000000-0000-0000-0000-000000000000\n")
    with pytest.raises(LicenseConfigError, match="placeholder"):
        read_host_uuid(f)
    f.write_text("Not Settable\n")
    with pytest.raises(LicenseConfigError, match="not a UUID"):
        read_host_uuid(f)


def test_host_uuid_unreadable(tmp_path, monkeypatch):
    """As a non-root user reading the root-only sysfs file (simulated: the tests may run as root)."""

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(LicenseConfigError, match="root only"):
        read_host_uuid(tmp_path / "product_uuid")


def test_single_key_file_mode(tmp_path, vendor_key):
    pem = vendor_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "vendor_public.pem").write_bytes(pem)
    verifier = TokenVerifier(TrustedKeys(tmp_path / "vendor_public.pem"), HOST_UUID)
    assert verifier.verify(sign(vendor_key, claims_for(), kid="anything")).sub == "pacs-1"
    with pytest.raises(LicenseConfigError, match="does not exist"):
        TrustedKeys(tmp_path / "nope.pem")


def test_cli_issue_verify_roundtrip(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, "-m", "licensing", *a], capture_output=True, text=True, cwd=root)  # noqa: E731
    assert run("keygen", "--out", str(tmp_path)).returncode == 0
    issued = run(
        "issue",
        "--key",
        str(tmp_path / "vendor_private.pem"),
        "--product-uuid",
        HOST_UUID,
        "--customer",
        "C",
        "--subject",
        "S",
        "--days",
        "1",
        "--features",
        "cxr25",
    )
    token = issued.stdout.strip()
    ok = run("verify", "--public-key", str(tmp_path / "vendor_public.pem"), "--product-uuid", HOST_UUID, token)
    assert ok.returncode == 0 and json.loads(ok.stdout)["features"] == ["cxr25"]
    bad = run("verify", "--public-key", str(tmp_path / "vendor_public.pem"), "--product-uuid", OTHER_UUID, token)
    assert bad.returncode == 1 and "another server" in bad.stderr and "Traceback" not in bad.stderr
    revoked = tmp_path / "rev.jwt"
    assert (
        run(
            "revoke",
            "--key",
            str(tmp_path / "vendor_private.pem"),
            "--jti",
            json.loads(ok.stdout)["jti"],
            "--out",
            str(revoked),
        ).returncode
        == 0
    )
    gone = run(
        "verify",
        "--public-key",
        str(tmp_path / "vendor_public.pem"),
        "--product-uuid",
        HOST_UUID,
        "--revocation-list",
        str(revoked),
        token,
    )
    assert gone.returncode == 1 and "revoked" in gone.stderr
    shown = run("inspect", token)
    assert json.loads(shown.stdout)["verified"] is False


# --- cluster licences, node lists, key rings (the Swarm stack) ----------------------------------

THIRD_UUID = "0b5c6d7e-8f90-4a1b-9c2d-3e4f5a6b7c8d"


def test_a_cluster_token_is_valid_on_each_node_it_lists_and_no_other(key_dir, vendor_key):
    token = issue_token(
        vendor_key,
        product_uuid=[OTHER_UUID, HOST_UUID.upper()],
        customer="Region",
        subject="pacs",
        days=1,
        features=["cxr10"],
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["product_uuid"] == sorted([OTHER_UUID, HOST_UUID])
    for node in (HOST_UUID, OTHER_UUID, swap_endian(OTHER_UUID)):
        assert TokenVerifier(TrustedKeys(key_dir), node).verify(token).product_uuids == sorted([OTHER_UUID, HOST_UUID])
    with pytest.raises(Exception, match="lists this server's product_uuid"):
        TokenVerifier(TrustedKeys(key_dir), THIRD_UUID).verify(token)
    # One server given twice is a one-server token, with the claim as a string as before.
    single = issue_token(
        vendor_key, product_uuid=[HOST_UUID, HOST_UUID.upper()], customer="R", subject="s", days=1, features=["cxr10"]
    )
    assert jwt.decode(single, options={"verify_signature": False})["product_uuid"] == HOST_UUID


@pytest.mark.parametrize(
    "bound",
    [[HOST_UUID], [], [HOST_UUID, 7], [HOST_UUID, ""], [HOST_UUID] * 65, {"a": HOST_UUID}, 3],
    ids=["one-item list", "empty", "number inside", "empty string inside", "65 nodes", "object", "number"],
)
def test_a_malformed_product_uuid_claim_is_refused_with_401(client, vendor_key, bound):
    assert_refused(call(client, sign(vendor_key, claims_for(product_uuid=bound))), 401, "token_invalid")


def test_cli_issues_a_cluster_token(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, "-m", "licensing", *a], capture_output=True, text=True, cwd=root)  # noqa: E731
    assert run("keygen", "--out", str(tmp_path)).returncode == 0
    issued = run(
        "issue",
        "--key",
        str(tmp_path / "vendor_private.pem"),
        "--product-uuid",
        HOST_UUID,
        "--product-uuid",
        OTHER_UUID,
        "--customer",
        "Region",
        "--subject",
        "pacs",
        "--days",
        "1",
    )
    assert issued.returncode == 0, issued.stderr
    for node in (HOST_UUID, OTHER_UUID):
        checked = run(
            "verify", "--public-key", str(tmp_path / "vendor_public.pem"), "--product-uuid", node, issued.stdout.strip()
        )
        assert checked.returncode == 0 and json.loads(checked.stdout)["product_uuid"] == sorted([HOST_UUID, OTHER_UUID])
    refused = run(
        "issue",
        "--key",
        str(tmp_path / "vendor_private.pem"),
        "--product-uuid",
        HOST_UUID,
        "--product-uuid",
        "nope",
        "--customer",
        "R",
        "--subject",
        "s",
        "--days",
        "1",
    )
    assert refused.returncode != 0 and "--product-uuid" in refused.stderr and "not a UUID" in refused.stderr


def test_a_node_reads_its_own_line_of_the_clusters_node_list(tmp_path):
    nodes = tmp_path / "product_uuids"
    nodes.write_text(f"# regional centre\nnode-a {HOST_UUID.upper()}\nNode-B   {OTHER_UUID}  # rack 2\n\n")
    assert read_host_uuid(nodes, "node-a") == HOST_UUID
    assert read_host_uuid(nodes, "node-b") == OTHER_UUID  # host names compare without case
    with pytest.raises(LicenseConfigError, match="no line for node 'node-c'.*add 'node-c <its product_uuid>'"):
        read_host_uuid(nodes, "node-c")
    nodes.write_text(f"node-a {HOST_UUID} extra\n")
    with pytest.raises(LicenseConfigError, match="is not '<node hostname> <product_uuid>'"):
        read_host_uuid(nodes, "node-a")
    nodes.write_text("node-a 00000000-0000-0000-0000-000000000000\n")
    with pytest.raises(LicenseConfigError, match="placeholder"):
        read_host_uuid(nodes, "node-a")


def test_a_key_ring_file_trusts_each_key_by_its_kid(tmp_path, key_dir, vendor_key, previous_key):
    ring = tmp_path / "keys.pem"
    # One file for a key directory: "# kid <kid>" before each <kid>.pem.
    ring.write_text("".join(f"# kid {p.stem}\n{p.read_text()}" for p in sorted(key_dir.glob("*.pem"))))
    verifier = TokenVerifier(TrustedKeys(ring), HOST_UUID)
    for key in (vendor_key, previous_key):
        assert verifier.verify(sign(key, claims_for())).sub == "pacs-1"
    with pytest.raises(Exception, match="key id is not one this server trusts"):
        verifier.verify(sign(vendor_key, claims_for(), kid="someone-else"))
    ring.write_text("# kid k1\n-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(LicenseConfigError, match="kid k1 is not a PEM public key"):
        TrustedKeys(ring)
