"""Vendor-signed revocation lists: a compact JWS (EdDSA, typ chexnet-revocation+jwt) naming
revoked token ids (jti) and clients (sub), with a signed sequence number (microseconds since the
epoch at signing, always above the list it merges).

The service fails closed (DESIGN.md "Revocation"): while no valid list is in force, every token
check raises :class:`LicenseNotReady`. It reloads the file when it changes; an unsigned or tampered
list is rejected with a log line and the last good list stays in force. The newest sequence accepted
is persisted in a state file, so a genuinely signed but older list (copied back to un-revoke a
token) is refused, live and after a restart."""

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.errors import LicenseConfigError, LicenseNotReady
from licensing.keys import TrustedKeys, key_id
from licensing.tokens import ALGORITHMS, AUDIENCE, ISSUER

REVOCATION_TYPE = "chexnet-revocation+jwt"
RECHECK_INTERVAL_S = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevocationList:
    jtis: frozenset[str]
    subs: frozenset[str]
    issued_at: int
    seq: int  # lists from before seq existed count as iat in microseconds
    list_id: str


def sign_revocation_list(private_key: Ed25519PrivateKey, jtis: Iterable[str], subs: Iterable[str],
                         kid: str | None = None, after: int = 0) -> str:
    """Sign a list whose sequence is above ``after`` (the sequence of the list it replaces)."""
    now = time.time()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": int(now), "jti": str(uuid.uuid4()),
              "seq": max(int(now * 1_000_000), after + 1),
              "revoked_jti": sorted(set(jtis)), "revoked_sub": sorted(set(subs))}
    headers = {"typ": REVOCATION_TYPE, "kid": kid or key_id(private_key.public_key())}
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers=headers)


def verify_revocation_list(text: str, keys: TrustedKeys) -> RevocationList:
    try:
        header = jwt.get_unverified_header(text.strip())
        if header.get("typ") != REVOCATION_TYPE or header.get("alg") not in ALGORITHMS:
            raise LicenseConfigError("The revocation list is not a vendor-signed EdDSA list.")
        key = keys.for_kid(header.get("kid"))
        if key is None:
            raise LicenseConfigError(f"The revocation list is signed with unknown key id '{header.get('kid')}'.")
        claims = jwt.decode(text.strip(), key, algorithms=ALGORITHMS, audience=AUDIENCE, issuer=ISSUER,
                            options={"require": ["iat", "revoked_jti", "revoked_sub"]})
    except jwt.InvalidTokenError as exc:
        raise LicenseConfigError(f"The revocation list does not verify ({exc}).") from None
    jtis, subs, seq = claims["revoked_jti"], claims["revoked_sub"], claims.get("seq", int(claims["iat"]) * 1_000_000)
    if not (isinstance(jtis, list) and isinstance(subs, list)):
        raise LicenseConfigError("The revocation list's revoked_jti and revoked_sub must be lists.")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise LicenseConfigError("The revocation list's seq must be a whole number.")
    return RevocationList(frozenset(map(str, jtis)), frozenset(map(str, subs)), int(claims["iat"]), seq,
                          str(claims.get("jti", "")))


class NewestAccepted:
    """The sequence and id of the newest list this host accepted, in a JSON file created owner-only."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def read(self) -> tuple[int, str] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="ascii"))
            return int(data["seq"]), str(data["list_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LicenseConfigError(
                f"The revocation state file {self.path} is unreadable ({type(exc).__name__}); install the newest list from "
                "the vendor, then delete that file so the newest list is recorded again.") from None

    def write(self, current: RevocationList) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            json.dump({"seq": current.seq, "list_id": current.list_id, "issued_at": current.issued_at}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class RevocationWatcher:
    """Holds the list in force; re-reads the file when its mtime, size or inode changes."""

    def __init__(self, path: str | Path, keys: TrustedKeys, state_file: str | Path | None = None):
        self.path = Path(path)
        self.keys = keys
        self.newest = NewestAccepted(state_file)
        self.current: RevocationList | None = None
        self.error: str | None = None
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError as exc:
                stamp = ("missing", exc.strerror)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                candidate = verify_revocation_list(self.path.read_text(encoding="ascii"), self.keys)
                self._accept(candidate)
            except (OSError, UnicodeDecodeError, LicenseConfigError) as exc:
                self.error = f"Revocation list {self.path} rejected: {getattr(exc, 'message', None) or exc}"
                log.error("%s; %s", self.error,
                          "keeping the previous list" if self.current else "no revocation list is in force: token checks answer 503")

    def _accept(self, candidate: RevocationList) -> None:
        newest = self.newest.read()
        if newest is not None and (candidate.seq, candidate.list_id) != newest and candidate.seq <= newest[0]:
            raise LicenseConfigError(
                f"it is older than the newest list this server has accepted (sequence {candidate.seq} <= {newest[0]}); "
                "install the newest list from the vendor")
        self.newest.write(candidate)
        self.current, self.error = candidate, None
        log.info("revocation list loaded: %d jti, %d sub, sequence %d", len(candidate.jtis), len(candidate.subs), candidate.seq)

    def is_revoked(self, jti: str, sub: str) -> bool:
        """Whether the list in force names the token; raises LicenseNotReady while no list is in force."""
        if time.monotonic() - self._checked >= RECHECK_INTERVAL_S:
            self.refresh()
        current = self.current
        if current is None:
            raise LicenseNotReady("The configured revocation list is not in force (missing, unreadable, not genuine or "
                                  "older than one already accepted), so no token can be accepted; see /api/v1/ready.")
        return jti in current.jtis or sub in current.subs
