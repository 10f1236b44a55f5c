"""The per-connection read bounds of the DICOM node (chexnet/dicom_node/pdus.py) fed PDU by PDU, as
pynetdicom's reader calls them: what a peer may leave unanswered, and a header/body pair out of step."""

import struct
from types import SimpleNamespace

import dicom_raw_peer as raw
from chexnet.dicom_node.pdus import MAX_UNANSWERED, PduGuard


class FakeSocket:
    """The AssociationSocket a guard wraps: ``incoming`` is what the peer sent, ``sent`` what the node did."""

    def __init__(self, incoming: bytes):
        self.socket = self
        self.incoming, self.sent = bytearray(incoming), []
        self.recv = None

    def gettimeout(self):
        return None

    def settimeout(self, value):
        pass

    def send(self, pdu: bytes) -> bool:  # replaced by the guard, which calls it
        self.sent.append(pdu)
        return True

    def raw_recv(self, n: int) -> bytes:
        chunk, self.incoming = bytes(self.incoming[:n]), self.incoming[n:]
        return chunk


def guard_for(incoming: bytes) -> tuple[PduGuard, FakeSocket]:
    sock = FakeSocket(incoming)
    event = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=sock)), address=("127.0.0.9", 1))
    guard = PduGuard(event, deadline_s=5)
    sock.socket = SimpleNamespace(gettimeout=lambda: None, settimeout=lambda v: None, recv=sock.raw_recv)
    return guard, sock


def read_pdu(guard: PduGuard) -> bytes:
    """What pynetdicom does: the 6-byte header, then a body of the length it gives."""
    header = guard.recv(6)
    if len(header) < 6:
        return b""
    length = struct.unpack(">I", header[2:])[0]
    body = guard.recv(length)
    return header + body if len(body) == length else b""  # short: pynetdicom closes the connection


ECHO = raw.p_data(
    1,
    raw.COMMAND | raw.LAST,
    raw.command(AffectedSOPClassUID=raw.VERIFICATION, CommandField=0x0030, MessageID=1, CommandDataSetType=0x0101),
)
ANSWER = raw.p_data(
    1,
    raw.COMMAND | raw.LAST,
    raw.command(
        AffectedSOPClassUID=raw.VERIFICATION,
        CommandField=0x8030,
        MessageIDBeingRespondedTo=1,
        CommandDataSetType=0x0101,
        Status=0,
    ),
)


def test_messages_a_peer_leaves_unanswered_are_bounded():
    guard, _ = guard_for(ECHO * (MAX_UNANSWERED + 1))
    for _ in range(MAX_UNANSWERED):
        assert read_pdu(guard) == ECHO
    assert read_pdu(guard) == b"", "one more unanswered message closes the connection"


def test_answered_messages_never_count_against_the_peer():
    guard, sock = guard_for(ECHO * (3 * MAX_UNANSWERED))
    for _ in range(3 * MAX_UNANSWERED):
        assert read_pdu(guard) == ECHO
        guard.send(ANSWER)
    assert len(sock.sent) == 3 * MAX_UNANSWERED


def test_a_body_read_that_does_not_match_its_header_closes_the_connection():
    guard, _ = guard_for(ECHO)
    header = guard.recv(6)
    assert guard.recv(struct.unpack(">I", header[2:])[0] + 1) == b""
    guard, _ = guard_for(b"\x09\x00" + bytes(4) + ECHO)  # a PDU of no known type
    assert guard.recv(6) == b""


def _data_until_closed(guard: PduGuard, pdu: bytes, limit: int) -> int:
    """How many of ``limit`` copies of ``pdu`` the guard lets through before it closes the connection."""
    for passed in range(limit):
        if read_pdu(guard) != pdu:
            return passed
    return limit


DATA = raw.p_data(1, 0, bytes(64 * 1024))  # a data set fragment, never the last


def test_a_data_set_after_a_store_that_announced_none_is_counted_as_held_in_memory():
    store_without_data = raw.command(
        AffectedSOPClassUID=raw.CR,
        CommandField=0x0001,
        MessageID=1,
        Priority=0,
        CommandDataSetType=0x0101,
        AffectedSOPInstanceUID="1.2.3",
    )
    guard, _ = guard_for(raw.p_data(1, raw.COMMAND | raw.LAST, store_without_data) + DATA * 64)
    assert read_pdu(guard)
    assert _data_until_closed(guard, DATA, 64) <= 16, "pynetdicom buffers these in memory: at most 1 MiB"


def test_a_command_set_naming_two_commands_is_read_as_pynetdicom_reads_it():
    store = raw.store_rq(raw.CR, "1.2.3")
    field = struct.pack("<HHI", 0, 0x0100, 2)
    find = store.replace(
        field + struct.pack("<H", 0x0001), field + struct.pack("<H", 0x0001) + field + struct.pack("<H", 0x0020), 1
    )  # CommandField twice: a C-STORE, then a C-FIND
    guard, _ = guard_for(raw.p_data(1, raw.COMMAND | raw.LAST, find) + DATA * 64)
    assert read_pdu(guard)
    assert _data_until_closed(guard, DATA, 64) <= 16, "pynetdicom keeps the last: a C-FIND, in memory"


def test_a_store_data_set_streams_past_the_memory_bound():
    guard, _ = guard_for(raw.p_data(1, raw.COMMAND | raw.LAST, raw.store_rq(raw.CR, "1.2.3")) + DATA * 64)
    assert read_pdu(guard)
    assert _data_until_closed(guard, DATA, 64) == 64, "a C-STORE's data set goes to a capped file, not memory"


def test_a_pdu_of_thousands_of_tiny_values_is_refused():
    values = struct.pack(">IBB", 2, 1, 0) * 5000
    guard, _ = guard_for(struct.pack(">BBI", 0x04, 0, len(values)) + values)
    assert read_pdu(guard) == b""
