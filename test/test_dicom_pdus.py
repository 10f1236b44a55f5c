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


ECHO = raw.p_data(1, raw.COMMAND | raw.LAST, raw.command(
    AffectedSOPClassUID=raw.VERIFICATION, CommandField=0x0030, MessageID=1, CommandDataSetType=0x0101))
ANSWER = raw.p_data(1, raw.COMMAND | raw.LAST, raw.command(
    AffectedSOPClassUID=raw.VERIFICATION, CommandField=0x8030, MessageIDBeingRespondedTo=1,
    CommandDataSetType=0x0101, Status=0))


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
