"""A DICOM peer that writes its PDUs byte by byte (PS3.8 section 9.3), so a test can send what no DICOM
library would: oversized or endless messages, stores of the wrong class, unfinished data sets."""

import itertools
import shutil
import socket
import struct
import subprocess
import time

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

VERIFICATION = "1.2.840.10008.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
COMMAND, LAST = 0x01, 0x02  # the message control header's bits


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def associate_rq(calling: str, called: str = "CHEXNET", contexts=((1, CR, (IMPLICIT_LE,)),)) -> bytes:
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += _item(0x10, _uid("1.2.840.10008.3.1.1.1"))
    for context_id, abstract, syntaxes in contexts:
        body += _item(
            0x20,
            bytes([context_id, 0, 0, 0])
            + _item(0x30, _uid(abstract))
            + b"".join(_item(0x40, _uid(s)) for s in syntaxes),
        )
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, _uid("1.2.3.4")))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def command(**elements) -> bytes:
    """A command set (Implicit VR Little Endian) with its group length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    encoded = buffer.getvalue()
    return struct.pack("<HHII", 0, 0, 4, len(encoded)) + encoded


def store_rq(sop_class: str, sop_instance: str) -> bytes:
    return command(
        AffectedSOPClassUID=sop_class,
        CommandField=0x0001,
        MessageID=1,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance,
    )


def read_pdu(sock: socket.socket) -> tuple[int | None, bytes]:
    """(PDU type, body), or (None, b"") when the node closed the connection."""
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return None, b""
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None, b""
        body += chunk
    return kind, body


def connect(port: int, calling: str, source: str = "127.0.0.1", **kwargs) -> socket.socket:
    """An established association (A-ASSOCIATE-AC received) from ``source``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(associate_rq(calling, **kwargs))
    kind, _ = read_pdu(sock)
    assert kind == 0x02, f"the node did not accept the association (PDU type {kind})"
    return sock


def send_until_closed(sock: socket.socket, pdu: bytes, limit: int, pause_s: float = 0.0) -> int:
    """Send ``pdu`` again and again (``pause_s`` apart) until the node closes the connection or ``limit``
    bytes are sent; returns the bytes sent."""
    sent = 0
    try:
        while sent < limit:
            sock.sendall(pdu)
            sent += len(pdu)
            time.sleep(pause_s)
    except OSError:
        pass
    return sent


def status_of(p_data_body: bytes) -> int | None:
    """The Status (0000,0900) of the command set in a P-DATA-TF body (one PDV), or None."""
    command = p_data_body[6:]
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, pos)
        if (group, element) == (0x0000, 0x0900):
            return struct.unpack_from("<H", command, pos + 8)[0]
        pos += 8 + length
    return None


def local_address() -> str | None:
    """An IPv4 address of this machine other than loopback (a peer "from elsewhere"), or None."""
    if shutil.which("ip") is None:
        return None
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False
    ).stdout.split()
    return next((word.split("/")[0] for previous, word in itertools.pairwise(out) if previous == "inet"), None)
