"""What a peer sends (AE titles, addresses, UIDs, error comments) reaches a log line only through
:func:`shown`: bounded, with anything not printable ASCII escaped. pynetdicom's own lines quote peers
too, so :class:`PeerText` does the same to every line it logs."""

import logging
import time


def shown(value: object, limit: int = 64) -> str:
    text = str(value)
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return escaped + ("…" if len(text) > limit else "")


class PeerText(logging.Filter):
    """A handler filter: pynetdicom's log lines bounded and escaped like :func:`shown`, and at most
    MAX_LINES_PER_S of them a second (a peer can make it log a line per message it sends)."""

    MAX_LINES_PER_S = 20

    def __init__(self):
        super().__init__()
        self._second, self._lines = 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pynetdicom"):
            return True
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._lines = second, 0
        self._lines += 1
        if self._lines > self.MAX_LINES_PER_S:
            return False
        record.msg, record.args = shown(record.getMessage(), 500), None
        return True
