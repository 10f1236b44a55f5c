"""Vendor-signed revocation lists: a compact JWS (EdDSA, typ chexnet-revocation+jwt) naming
revoked token ids (jti) and clients (sub). The service reloads the file when it changes; an
unsigned or tampered list is rejected with a log line and the last good list stays in force."""

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

from licensing.errors import LicenseConfigError
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


def sign_revocation_list(private_key: Ed25519PrivateKey, jtis: Iterable[str], subs: Iterable[str],
                         kid: str | None = None) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time()), "jti": str(uuid.uuid4()),
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
    jtis, subs = claims["revoked_jti"], claims["revoked_sub"]
    if not (isinstance(jtis, list) and isinstance(subs, list)):
        raise LicenseConfigError("The revocation list's revoked_jti and revoked_sub must be lists.")
    return RevocationList(frozenset(map(str, jtis)), frozenset(map(str, subs)), int(claims["iat"]))


class RevocationWatcher:
    """Holds the current list; re-reads the file when its mtime or size changes."""

    def __init__(self, path: str | Path, keys: TrustedKeys):
        self.path = Path(path)
        self.keys = keys
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
                self.current = verify_revocation_list(self.path.read_text(encoding="ascii"), self.keys)
                self.error = None
                log.info("revocation list loaded: %d jti, %d sub", len(self.current.jtis), len(self.current.subs))
            except (OSError, UnicodeDecodeError, LicenseConfigError) as exc:
                self.error = f"Revocation list {self.path} rejected: {getattr(exc, 'message', None) or exc}"
                log.error("%s; %s", self.error,
                          "keeping the previous list" if self.current else "no revocation list is in force")

    def is_revoked(self, jti: str, sub: str) -> bool:
        if time.monotonic() - self._checked >= RECHECK_INTERVAL_S:
            self.refresh()
        current = self.current
        return current is not None and (jti in current.jtis or sub in current.subs)
