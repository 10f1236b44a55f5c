"""The node's network edge, bounded before any peer can make it allocate (DESIGN.md "DICOM results and
the DICOM node", the node's bounds).

* :class:`BoundedServer` admits a TCP connection only while its peer address holds fewer than
  ``per_peer`` connections and the node fewer than ``total``; it refuses the rest by closing them at
  once, before any thread is started. Connections are handed over synchronously (the association's
  thread exists before the next ``accept``), so the counts are exact. A peer that connects and sends
  nothing is dropped when the ACSE timeout (the ARTIM timer) expires.
* :func:`bound_pdus` (on each new connection) refuses a PDU whose header announces more than
  :data:`MAX_PDU_BYTES`, or that trickles in slower than a deadline: pynetdicom would otherwise buffer
  whatever length a peer declares (up to 4 GiB, before it has even associated), and wait for it for ever.
  The node advertises 16 KiB PDUs, so a conforming peer never comes near either bound.
* :class:`ReceivedFiles` makes pynetdicom stream every C-STORE data set into ``spool/receiving/`` (never
  into memory) through a writer that stops writing at the instance cap, and that writes nothing when
  free disk under the spool is below the floor. The C-STORE handler then answers a failure status.
"""

import logging
import shutil
import socketserver
import tempfile
import threading
import time
from pathlib import Path

from pynetdicom import _config, dimse_messages
from pynetdicom.transport import AssociationServer

from chexnet.dicom_node.peers import shown

log = logging.getLogger("chexnet.dicom_node")
_REFUSAL_LOG_EVERY_S = 10.0
MAX_PDU_BYTES = 1 << 20  # an A-ASSOCIATE-RQ with hundreds of presentation contexts is a few tens of KiB


def bound_pdus(deadline_s: float):
    """An EVT_CONN_OPEN handler: each read of a PDU (its header, then its body) on that connection gets at
    most MAX_PDU_BYTES and ``deadline_s`` from its first byte; a longer or slower one reads as a connection
    closed mid-PDU, which ends the association before anything more is buffered or a slot is held."""

    def on_open(event) -> None:
        raw = event.assoc.dul.socket.socket

        def bounded(nr_bytes: int) -> bytearray:
            if nr_bytes > MAX_PDU_BYTES:
                return _closed(event, "a PDU longer than the node reads", nr_bytes)
            data, deadline, previous = bytearray(), time.monotonic() + deadline_s, raw.gettimeout()
            try:
                while len(data) < nr_bytes:
                    raw.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = raw.recv(min(65536, nr_bytes - len(data)))
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                return _closed(event, "a PDU slower than the node waits for", nr_bytes)
            finally:
                raw.settimeout(previous)
            return data

        event.assoc.dul.socket.recv = bounded

    return on_open


def _closed(event, why: str, announced: int) -> bytearray:
    log.warning(f"closed a connection: {why}", extra={"fields": {
        "peer": shown(event.address[0]), "announced_bytes": announced, "max_bytes": MAX_PDU_BYTES}})
    return bytearray()


class BoundedServer(AssociationServer):
    def __init__(self, *args, total: int, per_peer: int, on_refused, **kwargs):
        self.total, self.per_peer, self.on_refused = total, per_peer, on_refused
        self._last_logged: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        peers = [assoc.requestor.address for assoc in self.active_associations]
        address = client_address[0]
        if len(peers) < self.total and peers.count(address) < self.per_peer:
            return True
        reason = "total" if len(peers) >= self.total else "per_peer"
        self.on_refused(reason)
        now = time.monotonic()
        if now - self._last_logged.get(address, 0.0) >= _REFUSAL_LOG_EVERY_S:  # a flood logs once per interval
            self._last_logged = {a: t for a, t in self._last_logged.items() if now - t < _REFUSAL_LOG_EVERY_S}
            self._last_logged[address] = now
            log.warning("refused a connection: too many associations", extra={"fields": {
                "peer": shown(address), "limit": reason, "open": len(peers), "from_peer": peers.count(address),
                "max_total": self.total, "max_per_peer": self.per_peer}})
        return False

    def handle_error(self, request, client_address) -> None:
        """One log line instead of socketserver's traceback on stderr (e.g. no thread could be started)."""
        log.error("could not take a connection", extra={"fields": {"peer": shown(client_address[0])}},
                  exc_info=True)

    def shutdown(self) -> None:
        socketserver.TCPServer.shutdown(self)
        self.server_close()


class CappedFile:
    """What pynetdicom writes a received data set to: writes stop at ``cap`` bytes (the file is emptied,
    so the disk is given back at once) and the refusal is recorded for the C-STORE handler."""

    def __init__(self, file, cap: int, refusal: str | None, refusals: dict, lock: threading.Lock):
        self._file, self._cap, self._written = file, cap, 0
        self._refusals, self._lock = refusals, lock
        self.name = file.name
        self.file = file.file
        if refusal:
            self._refuse(refusal)

    def _refuse(self, reason: str) -> None:
        with self._lock:
            self._refusals[self.name] = reason
        self._file.truncate(0)

    def write(self, data: bytes) -> int:
        if self.name in self._refusals:
            return len(data)
        self._written += len(data)
        if self._written > self._cap:
            self._refuse("too_large")
            return len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()


class ReceivedFiles:
    def __init__(self, folder: Path, cap_bytes: int, min_free_bytes: int):
        self.folder, self.cap_bytes, self.min_free_bytes = folder, cap_bytes, min_free_bytes
        self._refusals: dict[str, str] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        """Route pynetdicom's received C-STORE data sets through :meth:`open` (the node's process only)."""
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = self.open

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def open(self, **kwargs) -> CappedFile:
        refusal = "disk_full" if self.free_bytes() < self.min_free_bytes else None
        file = tempfile.NamedTemporaryFile(dir=self.folder, **kwargs)
        return CappedFile(file, self.cap_bytes, refusal, self._refusals, self._lock)

    def refusal(self, path: Path) -> str | None:
        """Why the data set at ``path`` was not kept (``too_large``, ``disk_full``), or None."""
        with self._lock:
            return self._refusals.pop(str(path), None)
