"""The audit log: append-only JSON lines, each record durable (written, flushed and fsynced) before the
response that it records leaves.

Group commit: records that arrive while a flush is under way wait together, and the next flush makes all
of them durable with one ``fsync``; a writer waits only for the flush that covers its own record, never
for every other request's disk flush in turn. A flush that fails raises in every writer whose record it
held, so no response claims an audit record that is not on disk.
"""

import datetime as dt
import json
import os
import threading
from pathlib import Path


class _Batch:
    __slots__ = ("lines", "done", "error")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = False
        self.error: OSError | None = None


class AuditLog:
    def __init__(self, path: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._cond = threading.Condition()
        self._open = _Batch()  # the batch new records join
        self._flushing = False

    def write(self, record: dict) -> None:
        line = json.dumps(
            {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), **record}, ensure_ascii=False
        )
        with self._cond:
            batch = self._open
            batch.lines.append(line)
            while not batch.done:
                if self._flushing:  # a flush is under way: ours is in the next one
                    self._cond.wait()
                    continue
                # Lead the flush of the open batch (ours); later records start a new one meanwhile.
                self._flushing = True
                self._open = _Batch()
                self._cond.release()
                try:
                    self._flush(batch.lines)
                except OSError as exc:
                    batch.error = exc
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    batch.done = True
                    self._cond.notify_all()
        if batch.error is not None:
            raise batch.error

    def _flush(self, lines: list[str]) -> None:
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())
