"""What a peer sends (AE titles, addresses, UIDs, error comments) reaches a log line only through
:func:`shown`: bounded, with anything not printable ASCII escaped. pynetdicom's own lines quote peers
too, so :class:`PeerText` does the same to every line it logs."""

import logging


def shown(value: object, limit: int = 64) -> str:
    text = str(value)
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return escaped + ("…" if len(text) > limit else "")


class PeerText(logging.Filter):
    """A handler filter: pynetdicom's log lines bounded and escaped like :func:`shown`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom"):
            record.msg, record.args = shown(record.getMessage(), 500), None
        return True
