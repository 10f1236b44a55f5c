"""What one connection may make the node read and hold, checked as the bytes arrive (DESIGN.md "DICOM
results and the DICOM node", the node's bounds).

pynetdicom reads a PDU by trusting the length in its header (up to 4 GiB, even before the peer has
associated), waits for it however slowly it trickles in, and keeps in memory every DIMSE command set and
every data set that is not a C-STORE's (a C-STORE's streams to a capped file, :mod:`receiving`). A
:class:`PduGuard` wraps the reads of each new connection (EVT_CONN_OPEN) and ends the connection, as if
it had closed mid-PDU, when:

* a PDU is of no known type, or announces more than :data:`MAX_ASSOCIATE_RQ_BYTES` (an A-ASSOCIATE-RQ:
  128 presentation contexts of a few transfer syntaxes each are about 40 KiB) or :data:`MAX_PDU_BYTES`
  (any other; the node advertises 16 KiB PDUs);
* a PDU has not arrived ``deadline_s`` after its first byte;
* one message's command set passes :data:`MAX_COMMAND_BYTES`, or a data set held in memory (anything but
  a C-STORE's) passes :data:`MAX_MEMORY_DATA_SET_BYTES`;
* more than :data:`MAX_UNANSWERED` messages wait in pynetdicom's queue for an answer (each answer the node
  sends is counted on the way out).

A conforming peer never comes near any of these.
"""

import logging
import struct
import time

from chexnet.dicom_node.peers import shown

log = logging.getLogger("chexnet.dicom_node")
MAX_ASSOCIATE_RQ_BYTES = 64 * 1024
MAX_PDU_BYTES = 1 << 20
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE-RQ command set is about 200 bytes
MAX_MEMORY_DATA_SET_BYTES = 1 << 20
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_PDU_TYPES = range(0x01, 0x08)  # A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT
_C_STORE_RQ = 0x0001
_COMMAND_FIELD, _DATA_SET_TYPE, _NO_DATA_SET = 0x0100, 0x0800, 0x0101
MAX_UNANSWERED = 8  # messages received and not yet answered (a peer may have 1 outstanding unless negotiated)


def command_value(command: bytes, element: int) -> int | None:
    """A US element (0000,element) of a command set (always Implicit VR Little Endian), or None."""
    pos = 0
    while pos + 8 <= len(command):
        group, found, length = struct.unpack_from("<HHI", command, pos)
        if (group, found) == (0x0000, element) and length == 2 and pos + 10 <= len(command):
            return struct.unpack_from("<H", command, pos + 8)[0]
        pos += 8 + length
    return None


class PduGuard:
    def __init__(self, event, deadline_s: float):
        self._event, self._deadline_s = event, deadline_s
        self._socket = event.assoc.dul.socket
        self._body_length: int | None = None  # None: a header is due
        self._pdu_type = 0
        self._command, self._command_done, self._store, self._in_memory = bytearray(), False, False, 0
        self._unanswered = 0
        self._send = self._socket.send
        self._socket.recv, self._socket.send = self.recv, self.send

    @classmethod
    def on_open(cls, deadline_s: float):
        """The EVT_CONN_OPEN handler that guards each new connection."""
        return lambda event: cls(event, deadline_s)

    def recv(self, nr_bytes: int) -> bytearray:
        """pynetdicom reads a PDU as its 6-byte header, then a body of the length that header gives; the
        header is checked here, and any other read is refused, so the two cannot fall out of step."""
        if self._body_length is None:
            if nr_bytes != 6:
                return self._close("a read that is not a PDU header", nr_bytes)
            data = self._read(6)
            if len(data) == 6:
                kind, _, length = struct.unpack(">BBI", data)
                if kind not in _PDU_TYPES:
                    return self._close("a PDU of an unknown type", kind)
                if length > (MAX_ASSOCIATE_RQ_BYTES if kind == _A_ASSOCIATE_RQ else MAX_PDU_BYTES):
                    return self._close("a PDU longer than the node reads", length)
                self._pdu_type, self._body_length = kind, length
            return data
        expected, self._body_length = self._body_length, None
        if nr_bytes != expected:
            return self._close("a read that is not the PDU's body", nr_bytes)
        data = self._read(nr_bytes)
        if self._pdu_type == _P_DATA_TF and not self._follow(data):
            return self._close("a DIMSE message larger than the node holds in memory, or too many unanswered",
                               len(self._command))
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        raw = self._socket.socket
        data, deadline, previous = bytearray(), time.monotonic() + self._deadline_s, raw.gettimeout()
        try:
            while len(data) < nr_bytes:
                raw.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = raw.recv(min(65536, nr_bytes - len(data)))
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return self._close("a PDU slower than the node waits for", nr_bytes)
        finally:
            raw.settimeout(previous)
        return data

    def _follow(self, pdu: bytes) -> bool:
        """Account for the presentation data values of a P-DATA-TF; False when a bound is passed."""
        pos = 0
        while pos + 6 <= len(pdu):
            length, control = struct.unpack_from(">I", pdu, pos)[0], pdu[pos + 5]
            fragment_bytes, last = max(0, length - 2), bool(control & 2)
            if control & 1:  # a command fragment
                if self._command_done:  # the previous message is over: a new one begins
                    self._command, self._command_done, self._in_memory = bytearray(), False, 0
                self._command += pdu[pos + 6:pos + 4 + length]
                if len(self._command) > MAX_COMMAND_BYTES:
                    return False
                if last:
                    self._command_done = True
                    self._store = command_value(self._command, _COMMAND_FIELD) == _C_STORE_RQ
                    if command_value(self._command, _DATA_SET_TYPE) == _NO_DATA_SET:
                        self._unanswered += 1
            else:  # a data set fragment: a C-STORE's goes to a capped file, any other stays in memory
                if not (self._command_done and self._store):
                    self._in_memory += fragment_bytes
                    if self._in_memory > MAX_MEMORY_DATA_SET_BYTES:
                        return False
                if last:
                    self._command, self._command_done, self._in_memory = bytearray(), False, 0
                    self._unanswered += 1
            pos += 4 + length
        return self._unanswered <= MAX_UNANSWERED

    def send(self, pdu: bytes) -> bool:
        """What the node sends: each DIMSE answer (a P-DATA-TF whose command ends) answers one message."""
        if pdu[:1] == bytes([_P_DATA_TF]):
            pos = 6
            while pos + 6 <= len(pdu):
                if pdu[pos + 5] & 3 == 3:  # the last fragment of a command
                    self._unanswered = max(0, self._unanswered - 1)
                pos += 4 + struct.unpack_from(">I", pdu, pos)[0]
        return self._send(pdu)

    def _close(self, why: str, size: int) -> bytearray:
        log.warning(f"closed a connection: {why}", extra={"fields": {
            "peer": shown(self._event.address[0]), "bytes": size}})
        return bytearray()
