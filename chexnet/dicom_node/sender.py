"""The node's sender: result objects in outgoing/ to the destination (C-STORE SCU).

Each object has its own retry schedule, so one the destination keeps failing does not hold back the
others. A refusal the destination means for good (PS3.4 B.2.3 / PS3.7 C: 0xA9xx "data set does not
match SOP class", 0xCxxx "cannot understand", 0x01xx failures such as "SOP class not supported") sets
that object aside in refused/ with an audit row; any other failure status is retried with backoff.
When the destination cannot be reached at all, the whole queue backs off."""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from chexnet.dicom_node.peers import shown
from chexnet.dicom_node.settings import NodeSettings
from chexnet.dicom_node.spool import Spool

log = logging.getLogger("chexnet.dicom_node")
RESULT_CLASSES = (ComprehensiveSRStorage, SecondaryCaptureImageStorage, ParametricMapStorage)
NOT_SUPPORTED = 0x0122  # "SOP class not supported": what a class the destination did not accept at association means
SUCCESS = 0x0000
_FIRST_PAUSE_S = 1.0


def is_permanent(status: int) -> bool:
    return status >> 8 in (0xA9, 0x01) or status >> 12 == 0xC


def is_stored(status: int) -> bool:
    return status == SUCCESS or status >> 12 == 0xB  # 0xBxxx: stored with a warning


class Unreachable(Exception):
    """The destination did not accept an association, or ended it before answering."""


class Sender:
    def __init__(self, node: NodeSettings, spool: Spool, metrics, audit, stop: threading.Event, prune):
        self.node, self.spool, self.metrics, self.audit, self._stop = node, spool, metrics, audit, stop
        self._prune = prune  # keeps what is set aside within its bounds
        self._pause = _FIRST_PAUSE_S  # the whole queue's pause after the destination could not be reached
        self._retry: dict[str, tuple[float, float]] = {}  # file name → (its pause, when it is due again)
        # called with each result object the destination stored (the node audits it: chexnet.service.atna)
        self.on_stored: Callable[[pydicom.Dataset], None] = lambda dataset: None

    def send_waiting(self, waiting: list[Path]) -> None:
        now = time.monotonic()
        self._retry = {p.name: self._retry[p.name] for p in waiting if p.name in self._retry}
        due = [p for p in waiting if self._retry.get(p.name, (0.0, 0.0))[1] <= now]
        if not due:
            self._stop.wait(min(5.0, min(due_at for _, due_at in self._retry.values()) - now))
            return
        try:
            self._send(due)
            self._pause = _FIRST_PAUSE_S
        except Unreachable as exc:
            self.metrics.send_failures.inc()
            log.warning(
                "sending results failed; retrying",
                extra={
                    "fields": {
                        "destination": str(self.node.destination or self.node.dicomweb.destination),
                        "reason": str(exc),
                        "retry_in_s": self._pause,
                        "waiting": len(waiting),
                    }
                },
            )
            self._stop.wait(self._pause)
            self._pause = min(self._pause * 2, self.node.retry_max_s)

    def _send(self, paths: list[Path]) -> None:
        destination = self.node.destination
        assert destination is not None  # this transport is chosen only when CHEXNET_DICOM_DESTINATION is set
        ae = AE(ae_title=self.node.ae_title)
        for sop_class in RESULT_CLASSES:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            raise Unreachable("the destination did not accept an association")
        try:
            for path in paths:
                if self._stop.is_set():
                    return
                if not assoc.is_established:
                    raise Unreachable("the destination ended the association")
                self._send_one(assoc, path)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, assoc, path: Path) -> None:
        try:
            dataset = pydicom.dcmread(path)
            accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
            if dataset.SOPClassUID not in accepted:  # e.g. a PACS that takes no Parametric Maps
                comment = f"{dataset.SOPClassUID.name} not accepted; CHEXNET_DICOM_MAPS=sc sends none"
                self._refused(path, NOT_SUPPORTED, comment)
                return
            status = assoc.send_c_store(dataset)
        except (InvalidDicomError, ValueError, EOFError, AttributeError) as exc:  # unreadable, or not sendable as it is
            self._failed(path, type(exc).__name__)
            return
        code = getattr(status, "Status", None)
        if code is None:
            raise Unreachable("the association ended before the destination answered")
        if is_stored(code):
            self.spool.discard(path)
            self._retry.pop(path.name, None)
            self.metrics.sent.inc()
            self.on_stored(dataset)
        elif is_permanent(code):
            self._refused(path, code, str(getattr(status, "ErrorComment", "") or ""))
        else:
            self._failed(path, f"C-STORE status 0x{code:04X}")

    def _failed(self, path: Path, reason: str) -> None:
        """A failure that may pass: this object waits longer each time, the others go on."""
        pause = min(self._retry.get(path.name, (_FIRST_PAUSE_S / 2, 0.0))[0] * 2, self.node.retry_max_s)
        self._retry[path.name] = (pause, time.monotonic() + pause)
        self.metrics.send_failures.inc()
        log.warning(
            "the destination did not store a result; retrying it",
            extra={"fields": {"file": path.name, "reason": reason, "retry_in_s": pause}},
        )

    def _refused(self, path: Path, code: int, comment: str) -> None:
        status = f"0x{code:04X}"
        self.audit.write({"request_id": f"dicom-{path.stem}", "event": "dicom_result_refused", "status": status})
        kept = self.spool.set_aside(path, "refused")
        self._retry.pop(path.name, None)
        self.metrics.refused.labels(status).inc()
        self._prune()
        log.error(
            "the destination refused a result for good; it is kept in refused/",
            extra={"fields": {"file": path.name, "status": status, "comment": shown(comment), "kept": str(kept)}},
        )
