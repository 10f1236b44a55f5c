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
* a P-DATA-TF carries more than :data:`MAX_VALUES_PER_PDU` presentation data values;
* more than :data:`MAX_UNANSWERED` messages wait in pynetdicom's queue for an answer (each answer the node
  sends is counted on the way out).

A conforming peer never comes near any of these.
"""

import io
import logging
import struct
import time

from pynetdicom.dsutils import decode

from chexnet.dicom_node.peers import shown

log = logging.getLogger("chexnet.dicom_node")
MAX_ASSOCIATE_RQ_BYTES = 64 * 1024
MAX_PDU_BYTES = 1 << 20
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE-RQ command set is about 200 bytes
MAX_MEMORY_DATA_SET_BYTES = 1 << 20
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_PDU_TYPES = range(0x01, 0x08)  # A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT
_C_STORE_RQ, _NO_DATA_SET = 0x0001, 0x0101
MAX_VALUES_PER_PDU = 256  # presentation data values in one P-DATA-TF (pynetdicom makes objects of each)
MAX_UNANSWERED = 8  # messages received and not yet answered (a peer may have 1 outstanding unless negotiated)


def _command(encoded: bytes) -> tuple[int | None, bool]:
    """(CommandField, whether a data set follows) as pynetdicom itself will read the command set (its own
    decoder, so a repeated or odd element means the same to both); (None, True) when it cannot be read."""
    try:
        command = decode(io.BytesIO(encoded), True, True)
        return int(command.CommandField), int(command.CommandDataSetType) != _NO_DATA_SET
    except Exception:  # noqa: BLE001 - whatever pynetdicom's decoder raises, the data set is not a store's
        return None, True


class PduGuard:
    def __init__(self, event, deadline_s: float):
        self._event, self._deadline_s = event, deadline_s
        self._socket = event.assoc.dul.socket
        self._body_length: int | None = None  # None: a header is due
        self._pdu_type = 0
        self._command, self._store_open, self._in_memory, self._unanswered = bytearray(), False, 0, 0
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
            return self._close(
                "a DIMSE message larger than the node holds in memory, or too many unanswered", len(self._command)
            )
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

    def _follow(self, pdu: bytes | bytearray) -> bool:
        """Account for the presentation data values of a P-DATA-TF; False when a bound is passed. A data set
        fragment goes to a capped file only while a C-STORE's data set is open; any other is held in memory
        by pynetdicom (a data set after a command that announced none included), so it is counted."""
        pos, values = 0, 0
        while pos + 6 <= len(pdu):
            length, control = struct.unpack_from(">I", pdu, pos)[0], pdu[pos + 5]
            fragment_bytes, last, values = max(0, length - 2), bool(control & 2), values + 1
            if values > MAX_VALUES_PER_PDU:
                return False
            if control & 1:  # a command fragment
                self._command += pdu[pos + 6 : pos + 4 + length]
                if len(self._command) > MAX_COMMAND_BYTES:
                    return False
                if last:
                    field, data_follows = _command(bytes(self._command))
                    self._command, self._in_memory = bytearray(), 0
                    self._store_open = data_follows and field == _C_STORE_RQ
                    self._unanswered += not data_follows
            else:  # a data set fragment
                if not self._store_open:
                    self._in_memory += fragment_bytes
                    if self._in_memory > MAX_MEMORY_DATA_SET_BYTES:
                        return False
                if last:
                    self._store_open, self._in_memory = False, 0
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
        log.warning(
            f"closed a connection: {why}", extra={"fields": {"peer": shown(self._event.address[0]), "bytes": size}}
        )
        return bytearray()
