"""The node's spool directory: what it holds is what it owes.

    incoming/   instances received and acknowledged, not yet predicted
    outgoing/   result objects (SR, secondary captures) not yet stored at the destination
    rejected/   instances the core refused (a 4xx: damaged file, unsupported syntax), kept for a person

Every file is written to a temporary name, fsynced, renamed and its directory fsynced before anyone is
told it exists, so a crash leaves either the whole file or nothing under the final name. Results are
staged before their source is removed, so a crash between the two only repeats work; the result UIDs
are derived from the source instance, so a repeat is the same instance again, not a duplicate.
"""

import os
import time
import uuid
from pathlib import Path

QUEUES = ("incoming", "outgoing", "rejected")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        for queue in QUEUES:
            (self.root / queue).mkdir(parents=True, exist_ok=True, mode=0o700)
            for partial in (self.root / queue).glob("*.tmp"):  # never acknowledged: the sender will retry
                partial.unlink()

    def _write(self, queue: str, name: str, data: bytes) -> Path:
        final = self.root / queue / name
        partial = final.with_name(final.name + ".tmp")
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
        _fsync_dir(final.parent)
        return final

    def accept(self, data: bytes) -> Path:
        """Keep a received instance; returns only once it is on disk."""
        return self._write("incoming", f"{time.time_ns():020d}-{uuid.uuid4().hex}.dcm", data)

    def files(self, queue: str) -> list[Path]:
        """Oldest first (names start with the time they were written)."""
        return sorted(p for p in (self.root / queue).iterdir() if p.suffix == ".dcm")

    def stage_results(self, source: Path, results: list[bytes]) -> None:
        """The results of ``source`` into outgoing/, then ``source`` out of incoming/."""
        for number, data in enumerate(results):
            self._write("outgoing", f"{source.stem}-{number:03d}.dcm", data)
        self.discard(source)

    def reject(self, source: Path) -> Path:
        target = self.root / "rejected" / source.name
        os.replace(source, target)
        _fsync_dir(source.parent)
        return target

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def depth(self, queue: str) -> int:
        return len(self.files(queue))
