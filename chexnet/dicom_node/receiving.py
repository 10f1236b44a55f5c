"""Where a C-STORE data set is written while it arrives (DESIGN.md "DICOM results and the DICOM node", the
node's bounds): pynetdicom streams it into ``spool/receiving/`` (never into memory) through a
:class:`CappedFile` that stops writing at the instance cap, or when free disk under the spool falls below
the floor; the C-STORE handler then answers a failure status.

Each file belongs to the connection that opened it (the connection's reader thread). A file its
connection no longer needs is deleted: when the same connection starts its next message (a conforming
peer waits for each answer, so the previous file has been kept or dropped by then), when the connection
closes, and by :meth:`ReceivedFiles.sweep` once its reader thread has ended. So what lies in receiving/
is at most one file per open connection, each within the cap, whatever a peer sends or leaves unfinished.
"""

import shutil
import tempfile
import threading
from pathlib import Path

from pynetdicom import _config, dimse_messages


class CappedFile:
    """What pynetdicom writes a received data set to: writes stop at ``cap`` bytes, or when the disk has
    fallen below its floor (checked every DISK_CHECK_BYTES written, so many connections writing at once
    cannot run it past the floor); the file is then emptied, so the disk is given back at once, and the
    refusal is recorded for the C-STORE handler."""

    DISK_CHECK_BYTES = 4 << 20

    def __init__(self, file, cap: int, disk_full):
        self._file, self._cap, self._written, self._disk_full = file, cap, 0, disk_full
        self.name = file.name
        self.file = file.file
        self.refusal: str | None = None
        if disk_full():
            self._refuse("disk_full")

    def _refuse(self, reason: str) -> None:
        self.refusal = reason
        self._file.truncate(0)

    def write(self, data: bytes) -> int:
        if self.refusal:
            return len(data)
        before, self._written = self._written, self._written + len(data)
        if self._written > self._cap:
            self._refuse("too_large")
        elif before // self.DISK_CHECK_BYTES != self._written // self.DISK_CHECK_BYTES and self._disk_full():
            self._refuse("disk_full")
        else:
            self._file.write(data)
        return len(data)

    def close(self) -> None:
        self._file.close()


class ReceivedFiles:
    def __init__(self, folder: Path, cap_bytes: int, min_free_bytes: int):
        self.folder, self.cap_bytes, self.min_free_bytes = folder, cap_bytes, min_free_bytes
        self._files: dict[str, tuple[threading.Thread, CappedFile]] = {}  # path → (its reader thread, file)
        self._lock = threading.Lock()

    def install(self) -> None:
        """Route pynetdicom's received C-STORE data sets through :meth:`open` (the node's process only)."""
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = self.open  # type: ignore[assignment]  # takes what pynetdicom passes

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def open(self, **kwargs) -> CappedFile:
        """Called by pynetdicom, on the connection's reader thread, when a C-STORE data set begins."""
        reader = threading.current_thread()
        self.drop(lambda owner: owner is reader)
        file = CappedFile(
            tempfile.NamedTemporaryFile(dir=self.folder, **kwargs),
            self.cap_bytes,
            lambda: self.free_bytes() < self.min_free_bytes,
        )
        with self._lock:
            self._files[file.name] = (reader, file)
        return file

    def refusal(self, path: Path) -> str | None:
        """Why the data set at ``path`` was not kept (``too_large``, ``disk_full``), or None."""
        with self._lock:
            entry = self._files.get(str(path))
        return entry[1].refusal if entry else None

    def kept(self, path: Path) -> None:
        """``path`` has been moved into the spool: it is no longer this module's to delete."""
        with self._lock:
            self._files.pop(str(path), None)

    def drop(self, whose) -> None:
        """Delete the files whose reader thread ``whose(thread)`` selects."""
        with self._lock:
            doomed = [name for name, (reader, _) in self._files.items() if whose(reader)]
            for name in doomed:
                del self._files[name]
        for name in doomed:
            Path(name).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Delete the files of connections whose reader thread has ended (however it ended)."""
        self.drop(lambda reader: not reader.is_alive())
