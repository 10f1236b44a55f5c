"""Vendor-signed revocation lists: a compact JWS (EdDSA, typ chexnet-revocation+jwt) naming
revoked token ids (jti) and clients (sub), with a signed sequence number (microseconds since the
epoch at signing, always above the list it merges).

The service fails closed (DESIGN.md "Revocation"): while no valid list is in force, every token
check raises :class:`LicenseNotReady`. It reloads the file when it changes; an unsigned or tampered
list is refused and the last good list stays in force, with a warning (``warnings``, shown by /ready)
and a reason code (``refused``, in the metrics), not only a log line. The newest sequence accepted is
a floor: in memory, where nothing on disk lowers it, and in a state file shared by every process of
the host, which is only ever raised. So a genuinely signed but older list (copied back to un-revoke a
token) is refused, live and after a restart, even when the state file is deleted or lowered first."""

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.errors import LicenseConfigError, LicenseNotReady, RevocationListOlder, RevocationStateError
from licensing.keys import TrustedKeys, key_id
from licensing.tokens import ALGORITHMS, AUDIENCE, ISSUER

try:
    import fcntl
except ImportError:  # Windows, where only the vendor's CLI runs: no process there shares a state file
    fcntl = None  # type: ignore[assignment]  # the module or None, as each use checks

REVOCATION_TYPE = "chexnet-revocation+jwt"
RECHECK_INTERVAL_S = 1.0
LOCK_WAIT_S = 2.0
# Why a list was refused: older than the floor, not genuine (signature, format, truncated), not readable
# (missing, permissions), or the state file cannot be read, locked or written (tried again at each check).
REFUSAL_REASONS = ("older", "invalid", "unreadable", "state")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevocationList:
    jtis: frozenset[str]
    subs: frozenset[str]
    issued_at: int
    seq: int  # lists from before seq existed count as iat in microseconds
    list_id: str


def sign_revocation_list(
    private_key: Ed25519PrivateKey, jtis: Iterable[str], subs: Iterable[str], kid: str | None = None, after: int = 0
) -> str:
    """Sign a list whose sequence is above ``after`` (the sequence of the list it replaces)."""
    now = time.time()
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now),
        "jti": str(uuid.uuid4()),
        "seq": max(int(now * 1_000_000), after + 1),
        "revoked_jti": sorted(set(jtis)),
        "revoked_sub": sorted(set(subs)),
    }
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
        claims = jwt.decode(
            text.strip(),
            key,
            algorithms=ALGORITHMS,
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["iat", "revoked_jti", "revoked_sub"]},
        )
    except jwt.InvalidTokenError as exc:
        raise LicenseConfigError(f"The revocation list does not verify ({exc}).") from None
    jtis, subs, seq = claims["revoked_jti"], claims["revoked_sub"], claims.get("seq", int(claims["iat"]) * 1_000_000)
    if not (isinstance(jtis, list) and isinstance(subs, list)):
        raise LicenseConfigError("The revocation list's revoked_jti and revoked_sub must be lists.")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise LicenseConfigError("The revocation list's seq must be a whole number.")
    return RevocationList(
        frozenset(map(str, jtis)), frozenset(map(str, subs)), int(claims["iat"]), seq, str(claims.get("jti", ""))
    )


class Accepted(NamedTuple):
    """A floor: the newest list accepted. The same sequence and id is the same list again."""

    seq: int
    list_id: str


def _newest(*floors: Accepted | None) -> Accepted | None:
    known = [f for f in floors if f is not None]
    return max(known, key=lambda f: f.seq) if known else None


def _stamp(path: Path) -> tuple:
    """What changes when a file is written, replaced or deleted (ctime: mtime can be set back)."""
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino
    except OSError as exc:
        return "missing", exc.strerror


class NewestAccepted:
    """The floor on disk: the sequence and id of the newest list accepted on this host, in a JSON file
    created owner-only. Several processes share it (API, DICOM node, Swarm slots), so it is only ever
    raised: read, compared and written under an exclusive lock on ``<file>.lock`` beside it, through a
    temporary file of the writer's own that replaces it atomically."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def read(self) -> Accepted | None:
        if self.path is None:
            return None
        try:
            data = json.loads(self.path.read_text(encoding="ascii"))
            return Accepted(int(data["seq"]), str(data["list_id"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RevocationStateError(
                f"The revocation state file {self.path} is unreadable ({type(exc).__name__}); install the newest list from "
                "the vendor, then delete that file so the newest list is recorded again."
            ) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[Accepted | None]:
        """Hold the lock (other processes wait) and yield what the file records; write() inside."""
        fd = self._lock(self.path) if self.path is not None else None
        try:
            yield self.read()
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def write(self, accepted: Accepted, issued_at: int | None = None) -> None:
        path = self.path
        if path is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    json.dump({"seq": accepted.seq, "list_id": accepted.list_id, "issued_at": issued_at}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._sync_folder(path.parent)
        except OSError as exc:
            raise RevocationStateError(
                f"The revocation state file {path} cannot be written ({exc.strerror or exc}); "
                "give the service's user write access to its folder."
            ) from None

    def _lock(self, path: Path) -> int | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is None:
                return None
            lock_path = path.with_name(path.name + ".lock")
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
                try:
                    if self._holds(fd, lock_path):
                        return fd
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise RevocationStateError(
                        f"The revocation state file {path} stayed locked by another process for {LOCK_WAIT_S:g} s; "
                        f"it is tried again at the next check (if this lasts, find the process holding {lock_path})."
                    )
                time.sleep(0.01)
        except OSError as exc:
            raise RevocationStateError(
                f"The revocation state file {path} cannot be locked ({exc.strerror or exc}); "
                "give the service's user write access to its folder."
            ) from None

    @staticmethod
    def _holds(fd: int, lock_path: Path) -> bool:
        """Whether ``fd`` now holds the lock of the file at ``lock_path``: one deleted and created again
        meanwhile would let two processes each lock a different file."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            return os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _sync_folder(folder: Path) -> None:
        """The rename itself survives a power cut only once the folder is synced."""
        if not hasattr(os, "O_DIRECTORY"):
            return
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RevocationStateError):
        return "state"
    if isinstance(exc, RevocationListOlder):
        return "older"
    return "invalid" if isinstance(exc, LicenseConfigError) else "unreadable"


_UNTIL = {
    "invalid": " until the vendor's list is copied there again",
    "unreadable": " until the vendor's list is readable there again",
}


class RevocationWatcher:
    """Holds the list in force; re-reads the file when it changes. The newest sequence seen (accepted, or
    read from the state file) is a floor in memory that nothing on disk lowers; each check re-writes a
    state file found missing or below it. A refusal for the state file's sake is tried again at the next
    check; any other is remembered until the list file changes."""

    def __init__(self, path: str | Path, keys: TrustedKeys, state_file: str | Path | None = None):
        self.path = Path(path)
        self.keys = keys
        self.newest = NewestAccepted(state_file)
        self.current: RevocationList | None = None
        self.floor: Accepted | None = None
        self.error: str | None = None  # why the latest list read was refused: the 503 reason while none is in force
        self.refused: str | None = None  # its reason, one of REFUSAL_REASONS
        self.state_error: str | None = None  # the state file could not be kept at the floor
        self.refusals: Counter[str] = Counter()
        self._stamp: tuple | None = None
        self._state_stamp: tuple | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            self._keep_floor()
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            try:
                self._accept(verify_revocation_list(self.path.read_text(encoding="ascii"), self.keys))
            except (OSError, UnicodeDecodeError, LicenseConfigError) as exc:
                self._refuse(_reason(exc), exc)
                if self.refused == "state":
                    return  # not remembered as seen: the next check tries again
            self._stamp = stamp

    def _accept(self, candidate: RevocationList) -> None:
        offered = Accepted(candidate.seq, candidate.list_id)
        with self.newest.locked() as on_disk:
            self.floor = _newest(self.floor, on_disk)
            if self.floor is not None and offered != self.floor and candidate.seq <= self.floor.seq:
                raise RevocationListOlder(
                    f"it is older than the newest list this server has accepted (sequence {candidate.seq} <= "
                    f"{self.floor.seq}); install the newest list from the vendor"
                )
            if on_disk is None or on_disk.seq < candidate.seq:
                self.newest.write(offered, candidate.issued_at)
        self.floor = offered
        self.current, self.error, self.refused = candidate, None, None
        log.info(
            "revocation list loaded: %d jti, %d sub, sequence %d",
            len(candidate.jtis),
            len(candidate.subs),
            candidate.seq,
        )

    def _keep_floor(self) -> None:
        """Raise the state file back to the floor in memory when it was deleted or lowered; one that cannot be
        read is left for the operator (it may record a newer list than this process knows)."""
        if self.floor is None or self.newest.path is None or _stamp(self.newest.path) == self._state_stamp:
            return
        try:
            with self.newest.locked() as on_disk:
                if on_disk is None or on_disk.seq < self.floor.seq:
                    log.warning(
                        "revocation state file %s %s; writing sequence %d again",
                        self.newest.path,
                        "is missing" if on_disk is None else f"was lowered to {on_disk.seq}",
                        self.floor.seq,
                    )
                    self.newest.write(self.floor)
                self.floor = _newest(self.floor, on_disk)
        except RevocationStateError as exc:
            if exc.message != self.state_error:
                log.error("%s", exc.message)
            self.state_error = exc.message
            return
        self.state_error = None
        self._state_stamp = _stamp(self.newest.path)

    def _refuse(self, reason: str, exc: Exception) -> None:
        message = f"Revocation list {self.path} rejected: {getattr(exc, 'message', None) or exc}"
        if (reason, message) == (self.refused, self.error):
            return  # the same refusal, tried again: counted and logged once
        self.refused, self.error = reason, message
        self.refusals[reason] += 1
        log.error(
            "%s; %s",
            message.rstrip("."),
            f"keeping the list with sequence {self.current.seq}"
            if self.current
            else "no revocation list is in force: token checks answer 503",
        )

    @property
    def warnings(self) -> list[str]:
        """Sentences for /ready while a list is in force: a refused replacement, a state file not kept."""
        if self.current is None:
            return []
        found = []
        if self.error:
            found.append(
                f"{self.error.rstrip('.')}; the list with sequence {self.current.seq} stays in force"
                f"{_UNTIL.get(self.refused or '', '')}."
            )
        if self.state_error and self.refused != "state":
            found.append(
                f"{self.state_error.rstrip('.')}; the list with sequence {self.current.seq} stays in force, "
                "but a restart would not be ready until then."
            )
        return found

    def standing_refusals(self) -> set[str]:
        """The reasons refusing a list right now (metrics: 1 while it stands)."""
        return {r for r in (self.refused, "state" if self.state_error else None) if r}

    def is_revoked(self, jti: str, sub: str) -> bool:
        """Whether the list in force names the token; raises LicenseNotReady while no list is in force."""
        if time.monotonic() - self._checked >= RECHECK_INTERVAL_S:
            self.refresh()
        current = self.current
        if current is None:
            raise LicenseNotReady(
                "The configured revocation list is not in force (missing, unreadable, not genuine or "
                "older than one already accepted), so no token can be accepted; see /api/v1/ready."
            )
        return jti in current.jtis or sub in current.subs
