"""The node's listening socket, bounded before any peer can make it start a thread (DESIGN.md "DICOM
results and the DICOM node", the node's bounds).

:class:`BoundedServer` admits a TCP connection only while its peer address holds fewer than ``per_peer``
connections and the node fewer than ``total``; it refuses the rest by closing them at once, before any
thread is started. Connections are handed over synchronously (the association's thread exists before
the next ``accept``), so the counts are exact. A peer that connects and sends nothing is dropped when the
ACSE timeout (the ARTIM timer) expires; what a connection may send is bounded by :mod:`pdus`.
"""

import logging
import socketserver
import time

from pynetdicom.transport import AssociationServer

from chexnet.dicom_node.peers import shown

log = logging.getLogger("chexnet.dicom_node")
_REFUSAL_LOG_EVERY_S = 10.0


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
            log.warning(
                "refused a connection: too many associations",
                extra={
                    "fields": {
                        "peer": shown(address),
                        "limit": reason,
                        "open": len(peers),
                        "from_peer": peers.count(address),
                        "max_total": self.total,
                        "max_per_peer": self.per_peer,
                    }
                },
            )
        return False

    def handle_error(self, request, client_address) -> None:
        """One log line instead of socketserver's traceback on stderr (e.g. no thread could be started)."""
        log.error("could not take a connection", extra={"fields": {"peer": shown(client_address[0])}}, exc_info=True)

    def shutdown(self) -> None:
        socketserver.TCPServer.shutdown(self)
        self.server_close()
