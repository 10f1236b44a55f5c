"""Audit messages to the hospital's audit record repository: syslog over TLS (RFC 5424 messages, RFC 5425
octet-counting framing), queued on disk while the repository is away (DESIGN.md "audit export").

- Settings (read once, checked at start): CHEXNET_AUDIT_SYSLOG=tls://host:port (nothing else: udp:// and
  tcp:// are clear text), CHEXNET_AUDIT_SYSLOG_CA (the site CA's PEM; the repository's certificate must be
  issued by it for the host named), CHEXNET_AUDIT_SYSLOG_CERT and _KEY (a client certificate for mutual
  TLS, optional), CHEXNET_AUDIT_SYSLOG_QUEUE (the queue folder) and _QUEUE_MAX, CHEXNET_AUDIT_SOURCE_ID.
- Queue: one file per message, the whole RFC 5424 message as it will be sent, written under a temporary
  name and renamed into place (a reader never sees half a message); names sort in the order made. The
  caller only writes the file (no network, no fsync), so a prediction is never held up by the repository
  or the disk; the sender thread fsyncs each new file and the folder as it finds them (a process killed
  loses nothing queued; a power cut, at most what was queued in the moment before it).
  At CHEXNET_AUDIT_SYSLOG_QUEUE_MAX files a new message is refused (dropped: the older ones keep their
  place), with one log line per episode and chexnet_audit_syslog_dropped_total{reason="queue_full"}.
- Sender: one background thread, oldest first, over one kept TLS connection; on any failure it closes
  the connection and waits (1 s doubling to 300 s). Syslog over TLS has no acknowledgement: "sent" means
  the frame was written whole to the TLS socket (sendall returned). Only then is the file removed, and
  that removal is the sent marker: a restarted process sends what is still there and nothing else.
  Guarantee: at least once from the product's side; a message is sent twice only if the process dies
  between the write returning and the removal (one message at most; the folder is fsynced after each
  round of removals, so a power cut repeats at most that round); a message written into a
  connection the repository drops before reading it is lost, which is why the connection is checked for
  a close from the repository before every write (the repository never sends application data).
- Several processes may share a queue folder (only one sends: it holds an flock on ``.lock``).
"""

import fcntl
import logging
import os
import re
import select
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from licensing.environment import Environment

log = logging.getLogger("chexnet.audit_syslog")

PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice), as IHE ITI-20 says
APP_NAME = "chexnet"
MSGID = "IHE+RFC-3881"  # ITI-20: the message is a DICOM (RFC 3881 derived) audit message
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: a UTF-8 MSG starts with the BOM
FIRST_PAUSE_S, MAX_PAUSE_S = 1.0, 300.0
IO_TIMEOUT_S = 10.0
CHECK_WAIT_S = 0.5  # after a new connection, how long to listen for the repository refusing this client
DEFAULT_PORT = 6514
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]+\])(:(?P<port>[0-9]{1,5}))?/?"
)
_PRINTABLE = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True)
class AuditSyslogSettings:
    host: str
    port: int
    ca: str
    cert: str | None = None
    key: str | None = None
    queue: str = "logs/audit-syslog-queue"
    queue_max: int = 10_000
    source_id: str = ""  # AuditSourceID; empty: this machine's name

    @property
    def url(self) -> str:
        return f"tls://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, env: Environment, audit_log: str) -> "AuditSyslogSettings | None":
        """None while CHEXNET_AUDIT_SYSLOG is unset; a value that cannot be used is refused with one sentence
        naming its variable (the TLS files are loaded here, so a bad one stops the start)."""
        raw = env.text("AUDIT_SYSLOG")
        if raw is None:
            return None
        match = _URL.fullmatch(raw)
        if match is None:
            raise env.refuse(
                "AUDIT_SYSLOG", f"must be tls://host:port, e.g. tls://audit.hospital.local:6514, not '{raw[:64]}'."
            )
        if match["scheme"].lower() != "tls":
            raise env.refuse(
                "AUDIT_SYSLOG",
                f"must be tls://host:port (syslog over TLS, RFC 5425), not {match['scheme']}://: audit messages "
                "name who used which study and are never sent in clear text.",
            )
        port = int(match["port"] or DEFAULT_PORT)
        if not 1 <= port <= 65535:
            raise env.refuse("AUDIT_SYSLOG", f"names port {port}; a port is 1 to 65535 (syslog over TLS: 6514).")
        ca = env.required(
            "AUDIT_SYSLOG_CA",
            "must name the PEM file of the CA that issued the audit repository's certificate "
            "(CHEXNET_AUDIT_SYSLOG is set).",
        )
        cert, key = env.text("AUDIT_SYSLOG_CERT"), env.text("AUDIT_SYSLOG_KEY")
        if (cert is None) != (key is None):
            missing = "AUDIT_SYSLOG_KEY" if key is None else "AUDIT_SYSLOG_CERT"
            raise env.refuse(
                missing, "must be set too: a client certificate (CHEXNET_AUDIT_SYSLOG_CERT) needs its key (_KEY)."
            )
        default_queue = str(Path(audit_log).with_suffix("")) + "-syslog-queue"
        settings = cls(
            host=match["host"].strip("[]"),
            port=port,
            ca=ca,
            cert=cert,
            key=key,
            queue=env.text("AUDIT_SYSLOG_QUEUE", default_queue),
            queue_max=env.integer("AUDIT_SYSLOG_QUEUE_MAX", cls.queue_max, 10, 10_000_000),
            source_id=_PRINTABLE.sub("", env.text("AUDIT_SOURCE_ID", "") or "")[:64],
        )
        settings.tls_context(env)  # the TLS files first: nothing is made on disk for settings that are refused
        try:
            Path(settings.queue).mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(settings.queue, os.W_OK | os.X_OK):
                raise PermissionError
            folder = os.lstat(settings.queue)
        except OSError:
            raise env.refuse(
                "AUDIT_SYSLOG_QUEUE",
                f"'{settings.queue}' cannot be made or written; give a folder this process can write "
                "(audit messages wait there while the audit repository is away).",
            ) from None
        # Whatever is queued there is sent to the hospital in this product's name: a folder another user owns,
        # or may write, would let a local user plant audit messages (or remove them before they are sent).
        if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.geteuid():
            raise env.refuse(
                "AUDIT_SYSLOG_QUEUE",
                f"'{settings.queue}' is a link or belongs to another user (uid {folder.st_uid}); give a folder of "
                "this process's own (audit messages queued there are sent in its name).",
            )
        if folder.st_mode & 0o077:
            os.chmod(settings.queue, 0o700)  # this process's own folder: nobody else reads or writes its queue
        return settings

    def tls_context(self, env: Environment | None = None) -> ssl.SSLContext:
        """The client context: TLS 1.2 or later, the server verified against the site CA and its host name."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError):
            raise _refusal(
                env,
                "AUDIT_SYSLOG_CA",
                f"'{self.ca}' cannot be read as PEM CA certificates; give the file of the CA that issued the "
                "audit repository's certificate.",
            ) from None
        if self.cert and self.key:
            try:
                context.load_cert_chain(self.cert, self.key, password=lambda: b"")
            except (OSError, ssl.SSLError):
                raise _refusal(
                    env,
                    "AUDIT_SYSLOG_CERT",
                    f"'{self.cert}' and CHEXNET_AUDIT_SYSLOG_KEY '{self.key}' cannot be loaded as a PEM "
                    "certificate and its unencrypted private key.",
                ) from None
        return context


def _refusal(env: Environment | None, name: str, sentence: str) -> Exception:
    return env.refuse(name, sentence) if env is not None else ValueError(f"CHEXNET_{name} {sentence}")


def _header_field(value: str, limit: int) -> str:
    return _PRINTABLE.sub("", value)[:limit] or "-"


class SyslogQueue:
    """The on-disk queue and its sender thread (see the module's docstring)."""

    def __init__(self, settings: AuditSyslogSettings, registry: CollectorRegistry, hostname: str | None = None):
        self.settings = settings
        self.folder = Path(settings.queue)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._context = settings.tls_context()
        self._hostname = _header_field(hostname or socket.gethostname(), 255)
        self._lock = threading.Lock()
        self._seq = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._conn: ssl.SSLSocket | None = None
        self._lock_file: int | None = None
        self._pause = FIRST_PAUSE_S
        self._down = False
        self._full = False
        self._thread: threading.Thread | None = None
        self._synced: set[str] = set()  # queued files already fsynced by the sender thread
        self._unreadable: set[str] = set()  # queued files that could not be read (logged once each)
        self._clear_temporaries()
        self._depth = len(self._waiting())
        self.sent = Counter(
            "chexnet_audit_syslog_sent_total", "Audit messages written to the audit repository", registry=registry
        )
        self.dropped = Counter(
            "chexnet_audit_syslog_dropped_total",
            "Audit messages not queued (queue_full: CHEXNET_AUDIT_SYSLOG_QUEUE_MAX reached; write_error)",
            ["reason"],
            registry=registry,
        )
        self.failures = Counter(
            "chexnet_audit_syslog_send_failures_total",
            "Failed attempts to reach or write to the audit repository",
            registry=registry,
        )
        Gauge(
            "chexnet_audit_syslog_queue_depth", "Audit messages waiting for the audit repository", registry=registry
        ).set_function(lambda: self._depth)

    # --- the callers' side: never blocks on the network -----------------------------------------------
    def put(self, message: bytes) -> bool:
        """Queue one audit message (the XML); False when it was dropped (queue full, disk error)."""
        framed = self._syslog(message)
        with self._lock:
            full = self._depth >= self.settings.queue_max
            if not full:
                self._depth += 1
                self._seq += 1
                name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:09d}"
        if full:
            self.dropped.labels("queue_full").inc()
            if not self._full:
                self._full = True
                log.error(
                    "the audit repository queue is full; new audit messages are dropped until it drains",
                    extra={"fields": {"queue_max": self.settings.queue_max, "repository": self.settings.url}},
                )
            return False
        temporary = self.folder / f".{name}.tmp"
        try:
            temporary.write_bytes(framed)
            os.replace(temporary, self.folder / f"{name}.msg")
        except OSError as exc:
            with self._lock:
                self._depth -= 1
            temporary.unlink(missing_ok=True)
            self.dropped.labels("write_error").inc()
            log.error(
                "cannot queue an audit message for the audit repository",
                extra={"fields": {"folder": str(self.folder), "error": exc.strerror}},
            )
            return False
        self._wake.set()
        return True

    def _syslog(self, message: bytes) -> bytes:
        """The RFC 5424 message: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
        header = f"<{PRI}>1 {stamp} {self._hostname} {APP_NAME} {os.getpid()} {MSGID} - "
        return header.encode("ascii") + BOM + message

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what waits for up to timeout_s (the repository may be away: the rest stays queued), then end."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s + IO_TIMEOUT_S + 1)

    @property
    def depth(self) -> int:
        return self._depth

    # --- the sender thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._ending():
            try:
                waiting = self._waiting()
                self._depth = len(waiting)
                if self._depth < self.settings.queue_max:
                    self._full = False
                self._persist(waiting)
                if not waiting:
                    self._idle()
                elif not self._hold_lock():
                    self._sleep(5.0)  # another process sends this folder
                else:
                    self._deliver(waiting)
            except OSError as exc:  # ssl.SSLError and socket timeouts included
                self._failed(exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the thread: the queue waits on disk
                log.error("the audit sender hit an error; retrying", extra={"fields": {"error": type(exc).__name__}})
                self._close()
                self._sleep(5.0)
        self._close()
        if self._lock_file is not None:
            os.close(self._lock_file)

    def _persist(self, waiting: list[Path]) -> None:
        """fsync what callers queued (they only write and rename, so as not to wait on the disk): from here on
        a message survives a power cut too. Best effort: a disk error here is the writer's to report."""
        fresh = [path for path in waiting if path.name not in self._synced]
        for path in fresh:
            _fsync(path)
        if fresh:
            _fsync(self.folder)
        self._synced = {path.name for path in waiting}

    def _ending(self) -> bool:
        """Stopping, and nothing left on disk (not the depth counter: a put may be on its way) or no time left."""
        return self._stopping.is_set() and (time.monotonic() >= self._deadline or not self._waiting())

    def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()

    def _idle(self) -> None:
        if not self._stopping.is_set():
            self._wake.wait(30.0)
            self._wake.clear()

    def _waiting(self) -> list[Path]:
        with os.scandir(self.folder) as entries:  # a folder named like a message is none (d_type: no stat each)
            names = [e.name for e in entries if e.name.endswith(".msg") and e.is_file(follow_symlinks=False)]
        return [self.folder / name for name in sorted(names)]

    def _hold_lock(self) -> bool:
        if self._lock_file is None:
            self._lock_file = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _deliver(self, waiting: list[Path]) -> None:
        conn = self._connection()
        for path in waiting:
            if self._stopping.is_set() and time.monotonic() >= self._deadline:
                return
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:  # not the repository's fault: it must not hold up the messages behind it
                if path.name not in self._unreadable:
                    self._unreadable.add(path.name)
                    log.error(
                        "an audit message in the queue cannot be read; it is left there and the others are sent",
                        extra={"fields": {"file": str(path), "error": exc.strerror or type(exc).__name__}},
                    )
                continue
            if _closed_by_peer(conn):
                raise ConnectionResetError("the audit repository closed the connection")
            conn.sendall(f"{len(data)} ".encode("ascii") + data)
            path.unlink(missing_ok=True)  # the sent marker: only after the whole frame was written
            with self._lock:
                self._depth = max(0, self._depth - 1)
            self.sent.inc()
        _fsync(self.folder)  # the removals too: a sent message must not come back after a power cut
        if self._down:
            self._down = False
            log.info("the audit repository is reachable again", extra={"fields": {"repository": self.settings.url}})
        self._pause = FIRST_PAUSE_S

    def _connection(self) -> ssl.SSLSocket:
        if self._conn is not None and not _closed_by_peer(self._conn):
            return self._conn
        self._close()
        raw = socket.create_connection((self.settings.host, self.settings.port), timeout=IO_TIMEOUT_S)
        try:
            self._conn = self._context.wrap_socket(raw, server_hostname=self.settings.host)
        except BaseException:
            raw.close()
            raise
        # In TLS 1.3 the client's handshake ends before the server has checked the client's certificate: a
        # repository that refuses this client closes at once, and that close must be seen before a write.
        if _closed_by_peer(self._conn, wait_s=CHECK_WAIT_S):
            self._close()
            raise ConnectionRefusedError("the audit repository closed the connection after the TLS handshake")
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _failed(self, exc: OSError) -> None:
        self._close()
        self.failures.inc()
        if not self._down:
            self._down = True
            log.warning(
                "cannot reach the audit repository; audit messages wait on disk",
                extra={
                    "fields": {
                        "repository": self.settings.url,
                        "reason": str(exc)[:200] or type(exc).__name__,
                        "waiting": self._depth,
                        "retry_in_s": self._pause,
                    }
                },
            )
        self._sleep(self._pause)
        self._pause = min(self._pause * 2, MAX_PAUSE_S)

    def _clear_temporaries(self) -> None:
        """Half-written files of a process that died while queueing (older than a minute: not in progress)."""
        for path in self.folder.glob(".*.tmp"):
            try:
                if time.time() - path.stat().st_mtime > 60:
                    path.unlink()
            except OSError:
                pass


def _fsync(path: Path) -> None:
    """A queued file, or the folder's entries, to disk; best effort (a disk error is the writer's to report)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        pass


def _closed_by_peer(conn: ssl.SSLSocket, wait_s: float = 0.0) -> bool:
    """Whether the repository has closed the connection (listening up to wait_s for it). It never sends
    application data, so a readable socket holds a close, or TLS 1.3 session tickets, which a non-blocking
    read consumes."""
    deadline = time.monotonic() + wait_s
    while True:
        readable, _, _ = select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return False
        conn.setblocking(False)
        try:
            if conn.recv(4096) == b"":
                return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except OSError:
            return True
        finally:
            conn.settimeout(IO_TIMEOUT_S)
        if time.monotonic() >= deadline:
            return False
