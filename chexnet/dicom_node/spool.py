"""The node's spool directory: what it holds is what it owes.

    receiving/  C-STORE data sets as they arrive (never acknowledged; cleared at start)
    incoming/   instances received and acknowledged, not yet predicted
    outgoing/   result objects (SR, secondary captures) not yet stored at the destination
    rejected/   instances the core refused (damaged file, unsupported syntax) or that failed too often
    refused/    result objects the destination refused for good (0xA9xx, 0xCxxx, 0x01xx)

Every file is written to a temporary name, fsynced, renamed and its directory fsynced before anyone is
told it exists, so a crash leaves either the whole file or nothing under the final name. The results of
one instance become visible together (all written, then all renamed), and before their source is
removed, so a crash or a full disk between the steps only repeats work; the result UIDs are derived
from the source instance, so a repeat is the same instance again, not a duplicate.

Poison guard: before an instance is processed, ``begin`` counts the attempt in ``<name>.attempts``;
``end`` removes the count. Only a process that dies mid-processing (a crash, an OOM kill) leaves it
behind, so a count at the limit means this file keeps killing the node, and it goes to rejected/.
What is kept aside (rejected/, refused/) is pruned by age and by total size.

Send order: a result's name starts with its study's triage priority (``stat-``, ``urgent-``, ``routine-``,
chexnet.triage), fixed when it is written, so ``files`` lists outgoing/ by priority (stat first) and then by
age with no rename and no index to lose in a crash; a name without one (written before priorities) is routine.
"""

import os
import time
import uuid
from pathlib import Path

QUEUES = ("incoming", "outgoing", "rejected", "refused")
SEND_ORDER = ("stat", "urgent", "routine")  # the first part of a result's name in outgoing/
_ASIDE = ("rejected", "refused")


def _fsync(path: Path) -> None:
    """A file's data, or a directory's entries, onto the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _send_order(path: Path) -> tuple[int, str]:
    """(the priority's place in SEND_ORDER, the rest of the name: the time it was received first)."""
    first, _, rest = path.name.partition("-")
    if first in SEND_ORDER:
        return SEND_ORDER.index(first), rest
    return SEND_ORDER.index("routine"), path.name


class Spool:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.receiving = self.root / "receiving"
        for folder in (*QUEUES, "receiving"):
            (self.root / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
        for partial in [*self.receiving.iterdir(), *self.root.glob("*/*.tmp")]:  # never acknowledged
            partial.unlink(missing_ok=True)

    def _write_partial(self, queue: str, name: str, data: bytes) -> Path:
        partial = self.root / queue / f"{name}.tmp"
        try:
            with open(partial, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            partial.unlink(missing_ok=True)
            raise
        return partial

    def _publish(self, partials: list[Path]) -> None:
        for partial in partials:
            os.replace(partial, partial.with_suffix(""))
        if partials:
            _fsync(partials[0].parent)

    def accept(self, received: Path) -> Path:
        """Keep a received data set (a file under receiving/); returns only once it is on disk."""
        _fsync(received)
        final = self.root / "incoming" / f"{time.time_ns():020d}-{uuid.uuid4().hex}.dcm"
        os.replace(received, final)
        _fsync(final.parent)
        return final

    def files(self, queue: str) -> list[Path]:
        """Oldest first (names start with the time they were written); results by priority, then oldest."""
        return sorted((p for p in (self.root / queue).iterdir() if p.suffix == ".dcm"), key=_send_order)

    def stage_results(self, source: Path, results: list[bytes], priority: str = "routine") -> None:
        """The results of ``source`` into outgoing/ (all or none), named to be sent in ``priority``'s turn
        (one of SEND_ORDER), then ``source`` out of incoming/."""
        if priority not in SEND_ORDER:
            raise ValueError(f"unknown priority {priority!r}")
        partials: list[Path] = []
        try:
            for number, data in enumerate(results):
                name = f"{priority}-{source.stem}-{number:03d}.dcm"
                partials.append(self._write_partial("outgoing", name, data))
        except OSError:
            for partial in partials:
                partial.unlink(missing_ok=True)
            raise
        self._publish(partials)
        self.discard(source)

    # --- poison guard ----------------------------------------------------------------------------
    def _attempts_file(self, source: Path) -> Path:
        return source.with_suffix(".attempts")

    def attempts(self, source: Path) -> int:
        try:
            return int(self._attempts_file(source).read_text(encoding="ascii") or 0)
        except FileNotFoundError:
            return 0
        except ValueError:  # a count torn by a crash while it was written still counts as an attempt
            return 1

    def begin(self, source: Path) -> int:
        """Count one more attempt at ``source`` (on disk, before the work starts); returns the count."""
        count = self.attempts(source) + 1
        self._publish([self._write_partial("incoming", self._attempts_file(source).name, str(count).encode())])
        return count

    def end(self, source: Path) -> None:
        self._attempts_file(source).unlink(missing_ok=True)

    # --- set aside and discard -------------------------------------------------------------------
    def set_aside(self, path: Path, queue: str) -> Path:
        """Move ``path`` to rejected/ or refused/ (a person may look at it there until it is pruned)."""
        target = self.root / queue / path.name
        os.replace(path, target)
        _fsync(path.parent)
        self.end(path)
        return target

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.end(path)
        _fsync(path.parent)

    def prune(self, max_bytes: int, max_age_s: float) -> int:
        """Delete what was set aside beyond the age limit, then the oldest until the total fits; returns
        how many files went."""
        kept = sorted(
            ((p.stat().st_mtime, p.stat().st_size, p) for q in _ASIDE for p in self.files(q)), key=lambda item: item[0]
        )
        now, total, removed = time.time(), sum(size for _, size, _ in kept), 0
        for mtime, size, path in kept:
            if now - mtime <= max_age_s and total <= max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def depth(self, queue: str) -> float:
        """Files waiting; NaN while the folder cannot be read (metrics still answer)."""
        try:
            return len(self.files(queue))
        except OSError:
            return float("nan")
