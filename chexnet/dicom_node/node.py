"""The DICOM node: listener (C-ECHO, C-STORE SCP), worker (spool → core → results) and sender
(:mod:`chexnet.dicom_node.sender`), each on its own thread around one :class:`Spool`."""

import functools
import hashlib
import ipaddress
import logging
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, start_http_server
from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes these at import

from chexnet.dicom_node.listener import BoundedServer
from chexnet.dicom_node.pdus import PduGuard
from chexnet.dicom_node.peers import shown
from chexnet.dicom_node.receiving import ReceivedFiles
from chexnet.dicom_node.sender import Sender
from chexnet.dicom_node.settings import NodeSettings
from chexnet.dicom_node.spool import QUEUES, Spool
from chexnet.dicom_node.stow import Outcome, StowService, http_server
from chexnet.eligibility import WARNINGS, warnings_for
from chexnet.errors import PayloadTooLarge, ServiceError
from chexnet.imaging.dicom import DECODABLE_SYNTAXES, read_header
from chexnet.options import PredictOptions
from chexnet.service import AuditLog, Metrics, Service, Settings, SettingsError
from licensing.errors import LicenseError, LicenseNotReady

log = logging.getLogger("chexnet.dicom_node")
# What the node accepts: radiographs, and secondary captures of them (as some PACS export CR).
STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# C-STORE and C-ECHO statuses (PS3.4 B.2.3, PS3.7 C)
SUCCESS, PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED, REFUSED_NOT_AUTHORIZED = 0x0000, 0x0110, 0x0122, 0x0124
OUT_OF_RESOURCES, DOES_NOT_MATCH_SOP_CLASS, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_REFUSALS = {  # why a received data set was not kept → (status, the ErrorComment the sender reads)
    "too_large": (OUT_OF_RESOURCES, "Instance larger than this node accepts"),
    "disk_full": (OUT_OF_RESOURCES, "Node spool disk is full; retry later"),
    "busy": (OUT_OF_RESOURCES, "Node is busy; retry later"),
    "class_mismatch": (DOES_NOT_MATCH_SOP_CLASS, "Data set does not match the SOP class"),
    "unreadable": (CANNOT_UNDERSTAND, "Data set cannot be read"),
    "spool_error": (OUT_OF_RESOURCES, "Node cannot write its spool; retry later"),
}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class NodeMetrics:
    def __init__(self, metrics: Metrics, spool: Spool):
        r = metrics.registry
        self.received = Counter("chexnet_dicom_received_total", "Instances received and spooled", registry=r)
        self.refused_stores = Counter(
            "chexnet_dicom_store_refused_total", "C-STOREs answered with a failure", ["reason"], registry=r
        )
        self.refused_connections = Counter(
            "chexnet_dicom_connections_refused_total",
            "Connections closed at once: too many open",
            ["limit"],
            registry=r,
        )
        self.skipped = Counter(
            "chexnet_dicom_skipped_total", "Instances skipped by eligibility", ["reason"], registry=r
        )
        self.rejected = Counter("chexnet_dicom_rejected_total", "Instances the core refused", ["code"], registry=r)
        self.sent = Counter("chexnet_dicom_sent_total", "Result objects stored at the destination", registry=r)
        self.send_failures = Counter("chexnet_dicom_send_failures_total", "Failed attempts to send results", registry=r)
        self.refused = Counter(
            "chexnet_dicom_results_refused_total",
            "Result objects the destination refused for good",
            ["status"],
            registry=r,
        )
        self.thread_failures = Counter(
            "chexnet_dicom_thread_failures_total",
            "Threads ended by an error (a connection's reader on a malformed PDU)",
            registry=r,
        )
        self.io_errors = Counter(
            "chexnet_dicom_io_errors_total", "I/O errors the worker or sender survived", ["thread"], registry=r
        )
        depth = Gauge("chexnet_dicom_queue_depth", "Files waiting in the spool", ["queue"], registry=r)
        for queue in QUEUES:
            depth.labels(queue).set_function(functools.partial(spool.depth, queue))


class DicomNode:
    def __init__(self, settings: Settings, node: NodeSettings):
        self.node = node
        self.metrics = Metrics()
        self.audit = AuditLog(settings.audit_log)
        self.service = Service(settings, self.metrics, self.audit, application="chexnet-dicom-node")
        self.spool = Spool(node.spool)
        self.received = ReceivedFiles(self.spool.receiving, settings.max_upload_bytes, node.min_free_mb * 2**20)
        self.node_metrics = NodeMetrics(self.metrics, self.spool)
        self.options = PredictOptions.parse(node.model, node.heatmaps, output="dicom")
        self._stop = threading.Event()
        self._work = threading.Event()
        self._outgoing = threading.Event()
        self.sender = self._sender()
        self.sender.on_stored = self._audit_stored()
        self._moved = {queue: time.monotonic() for queue in ("incoming", "outgoing")}
        self._thread_failure_logged = 0.0
        self._prune_lock = threading.Lock()
        self._server: BoundedServer | None = None
        self._http: Any = None  # the STOW-RS server (waitress), when CHEXNET_DICOMWEB_PORT is set
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.service.start()
        self.received.install()
        threading.excepthook = self._thread_failed
        self._prune()
        ae = AE(ae_title=self.node.ae_title)
        ae.require_calling_aet = [*self.node.allowed_aes, self.node.ae_title]  # itself: the healthcheck's C-ECHO
        ae.require_called_aet = True
        ae.maximum_associations = self.node.max_associations
        ae.acse_timeout = self.node.associate_timeout_s
        ae.network_timeout = self.node.network_timeout_s
        ae.dimse_timeout = self.node.network_timeout_s
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, DECODABLE_SYNTAXES)
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, PduGuard.on_open(self.node.associate_timeout_s)),
            (evt.EVT_CONN_CLOSE, lambda event: self.received.drop(lambda reader: reader is event.assoc.dul)),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = ae.make_server(
            (self.node.bind, self.node.port),
            evt_handlers=handlers,
            server_class=BoundedServer,
            total=self.node.max_associations,
            per_peer=self.node.max_per_peer,
            on_refused=lambda limit: self.node_metrics.refused_connections.labels(limit).inc(),
        )
        assert isinstance(server, BoundedServer)  # an instance of the server_class given
        self._server = server
        self._start_thread("dicom-listener", server.serve_forever)
        if self.node.dicomweb.port:
            self._start_stow()
        if self.node.metrics_port:
            start_http_server(self.node.metrics_port, registry=self.metrics.registry)
        self._start_thread(
            "dicom-worker", self._drain, "incoming", self._work, self._predict_waiting, self.received.sweep
        )
        self._start_thread("dicom-sender", self._drain, "outgoing", self._outgoing, self.sender.send_waiting)
        log.info(
            "DICOM node listening",
            extra={
                "fields": {
                    "ae_title": self.node.ae_title,
                    "bind": self.node.bind,
                    "port": self.node.port,
                    "allowed": list(self.node.allowed_aes),
                    "destination": str(self.node.destination or self.node.dicomweb.destination),
                    "dicomweb_port": self.node.dicomweb.port or None,
                    "max_associations": self.node.max_associations,
                    "max_per_peer": self.node.max_per_peer,
                    "max_instance_mb": self.received.cap_bytes // 2**20,
                    "min_free_mb": self.node.min_free_mb,
                    "waiting": {q: self.spool.depth(q) for q in QUEUES},
                }
            },
        )

    def _sender(self) -> Sender:
        """C-STORE to CHEXNET_DICOM_DESTINATION, or STOW-RS to CHEXNET_DICOMWEB_DESTINATION."""
        parts = (self.node, self.spool, self.node_metrics, self.audit, self._stop, self._prune)
        if self.node.dicomweb.destination:
            from chexnet.dicom_node.dicomweb_sender import DicomwebSender

            return DicomwebSender(*parts)
        return Sender(*parts)

    def _audit_stored(self):
        """What the sender calls with each result the PACS stored: a DICOM Instances Transferred message for
        the audit repository (chexnet.service.atna), naming the PACS by AE title or by its DICOMweb root."""
        node, atna = self.node, self.service.atna
        if node.destination is not None:
            return functools.partial(atna.results_sent, node.ae_title, node.destination.ae_title, node.destination.host)
        web = node.dicomweb.destination or ""
        return functools.partial(atna.results_sent, node.ae_title, web, urllib.parse.urlsplit(web).hostname or "")

    def _start_stow(self) -> None:
        """STOW-RS in (:mod:`chexnet.dicom_node.stow`): the same spool, bounds and checks as C-STORE."""
        app = StowService(
            verifier=lambda: self.service.verifier,
            spool=self.spool,
            cap_bytes=self.received.cap_bytes,
            min_free_bytes=self.received.min_free_bytes,
            free_bytes=self.received.free_bytes,
            header=self._header,
            classes=STORAGE_CLASSES,
            syntaxes=DECODABLE_SYNTAXES,
            on_part=self._on_stow_part,
        )
        web = self.node.dicomweb
        try:
            server = http_server(
                app, self.node.bind, web.port, web.threads, web.max_request_mb * 2**20, self.spool.receiving
            )
        except OSError as exc:
            raise SettingsError(
                f"CHEXNET_DICOMWEB_PORT {web.port} cannot be opened on {self.node.bind} ({exc.strerror}); "
                "choose a free port, or 0 to turn STOW-RS off."
            ) from None
        self._http = server
        self._start_thread("dicomweb-listener", server.run)

    def _on_stow_part(self, outcome: Outcome) -> None:
        if outcome.failure is None:
            self.node_metrics.received.inc()
            self._work.set()
        else:
            self.node_metrics.refused_stores.labels(outcome.reason).inc()
            log.warning(
                "refused a STOW-RS part",
                extra={"fields": {"reason": outcome.reason, "status": f"0x{outcome.failure:04X}"}},
            )

    def _start_thread(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._work.set()
        self._outgoing.set()
        if self._server is not None:
            self._server.shutdown()
        if self._http is not None:
            self._http.close()
        for thread in self._threads:
            thread.join(timeout=30)
        self.service.stop()

    def wait(self) -> None:
        self._stop.wait()

    # --- health ---------------------------------------------------------------------------------
    def stalled(self) -> str | None:
        """Why the node is not doing its work, or None: a thread has ended, or a queue holds work and
        has not moved for CHEXNET_DICOM_STALL_S."""
        for thread in self._threads:
            if not thread.is_alive():
                return f"the {thread.name} thread has stopped"
        for queue, moved in self._moved.items():
            if time.monotonic() - moved > self.node.stall_s and self.spool.depth(queue):
                return f"{queue}/ has not moved for {self.node.stall_s} s"
        return None

    def _thread_failed(self, failure: threading.ExceptHookArgs) -> None:
        """A thread ended by an exception (pynetdicom's reader on a malformed PDU, say): its connection is
        closed and its received files dropped (its association then ends too), and one JSON line per
        interval replaces a traceback per thread."""
        self.node_metrics.thread_failures.inc()
        if isinstance(failure.thread, DULServiceProvider) and failure.thread.socket is not None:
            failure.thread.socket.close()
            self.received.drop(lambda reader: reader is failure.thread)
        now = time.monotonic()
        if now - self._thread_failure_logged >= 10.0:
            self._thread_failure_logged = now
            log.error(
                "a connection's thread ended with an error",
                extra={
                    "fields": {"thread": shown(getattr(failure.thread, "name", "")), "error": failure.exc_type.__name__}
                },
            )

    # --- listener -------------------------------------------------------------------------------
    def _on_established(self, event) -> None:
        """The node's own title is the healthcheck's, which runs on this machine (over loopback, or to the
        bound address): from elsewhere it is somebody borrowing it to hold an association."""
        assoc = event.assoc
        address = assoc.requestor.address
        if assoc.requestor.ae_title == self.node.ae_title and not (
            ipaddress.ip_address(address).is_loopback or address == self.node.bind
        ):
            log.warning(
                "aborted an association: the node's own AE title from another machine",
                extra={"fields": {"peer": shown(assoc.requestor.address)}},
            )
            assoc.abort()

    def _on_echo(self, event) -> Dataset | int:
        if not isinstance(event.request, C_ECHO):  # a C-STORE naming the Verification class
            return SOP_CLASS_NOT_SUPPORTED
        problem = self.stalled()
        if problem is None:
            return SUCCESS
        log.error("unhealthy: %s", problem)
        return _status(PROCESSING_FAILURE, problem)

    def _on_store(self, event) -> Dataset | int:
        path = Path(event.dataset_path)
        reason = self.received.refusal(path)
        calling = event.assoc.requestor.ae_title
        if calling == self.node.ae_title:
            return REFUSED_NOT_AUTHORIZED  # its own title admits only the healthcheck's C-ECHO
        reason = reason or self._check(event, path)
        if reason is None:
            try:
                self.spool.accept(path)
                self.received.kept(path)
            except OSError as exc:
                log.error("cannot spool a received instance", extra={"fields": {"error": exc.strerror}})
                reason = "spool_error"
        if reason is not None:
            self.node_metrics.refused_stores.labels(reason).inc()
            log.warning(
                "refused a received instance",
                extra={
                    "fields": {
                        "calling_ae": shown(calling),
                        "reason": reason,
                        "peer": shown(event.assoc.requestor.address),
                    }
                },
            )
            return _status(*_REFUSALS[reason])
        self.node_metrics.received.inc()
        self._work.set()
        return SUCCESS

    def _check(self, event, path: Path) -> str | None:
        """Why this data set must not be kept, read through the core's bounded reader; None: keep it."""
        if self.received.free_bytes() < self.received.min_free_bytes:
            return "disk_full"
        try:
            header = self._header(path.read_bytes)
        except PayloadTooLarge:
            return "too_large"
        except ServiceError as exc:
            return "busy" if exc.status == 503 else "unreadable"
        request = event.request
        if not (
            event.context.abstract_syntax == request.AffectedSOPClassUID == header.get("SOPClassUID")
            and request.AffectedSOPInstanceUID == header.get("SOPInstanceUID")
        ):
            return "class_mismatch"
        return None

    def _header(self, read) -> Dataset:
        """``read()`` runs in a decode slot, so data sets waiting for one stay on disk."""
        with self.service.gate.slot():
            return read_header(read(), self.service.limits)

    # --- worker ---------------------------------------------------------------------------------
    def _drain(self, queue: str, wake: threading.Event, handle, chore=lambda: None) -> None:
        """Hand what waits in the spool folder to ``handle``, oldest first; sleep until woken when empty;
        ``chore`` runs on every round. Nothing ends this loop but stop(): an error is logged, counted and
        retried after a pause."""
        while not self._stop.is_set():
            try:
                chore()
                waiting = self.spool.files(queue)
                if waiting:
                    handle(waiting)
                if not waiting or set(waiting) - set(self.spool.files(queue)):
                    self._moved[queue] = time.monotonic()
                if not waiting:
                    wake.wait(5)
                    wake.clear()
            except Exception as exc:  # noqa: BLE001 - a disk error or a bug must not end the thread
                self.node_metrics.io_errors.labels(queue).inc()
                log.error(
                    "the %s queue hit an error; retrying",
                    queue,
                    extra={"fields": {"error": type(exc).__name__, "reason": getattr(exc, "strerror", None)}},
                )
                self._stop.wait(5)

    def _predict_waiting(self, waiting: list[Path]) -> None:
        for path in waiting:
            if self._stop.is_set() or not self._process(path):
                self._stop.wait(5)  # not ready, not licensed or no disk yet: the file stays, try again later
                return

    def _process(self, path: Path) -> bool:
        """Predict one spooled instance; False when it must wait (not ready, not licensed, an I/O error)."""
        record = {"request_id": f"dicom-{path.stem}"}
        if self.spool.begin(path) > self.node.max_attempts:
            self._reject(
                path,
                record,
                "poison",
                f"its processing was started {self.node.max_attempts} times "
                "without finishing (the node crashed or was killed each time)",
            )
            return True
        try:
            done = self._predict(path, record)
        except OSError as exc:
            log.error(
                "an I/O error stopped processing; the instance stays in the spool",
                extra={"fields": {"request_id": record["request_id"], "error": exc.strerror}},
            )
            self.node_metrics.io_errors.labels("incoming").inc()
            done = False
        if not done:
            self.spool.end(path)
        return done

    def _predict(self, path: Path, record: dict) -> bool:
        data = path.read_bytes()
        record["input_sha256"] = hashlib.sha256(data).hexdigest()
        try:
            warnings = warnings_for(self._header(lambda: data))
            if warnings:
                self._skip(path, record, warnings)
                return True
            claims = self._claims()
            prediction = self.service.predict(lambda: data, self.options, claims, record["request_id"])
            results = self.service.dicom_results(prediction)
        except (LicenseError, ServiceError) as exc:
            if isinstance(exc, LicenseError) or exc.status == 503:
                log.warning(
                    "cannot predict yet; the instance stays in the spool",
                    extra={"fields": {"request_id": record["request_id"], "code": exc.code, "reason": exc.message}},
                )
                return False
            self._reject(path, record, exc.code, exc.message)
            return True
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the queue; the file is kept for a person
            self._reject(path, record, "internal_error", type(exc).__name__)
            return True
        self.spool.stage_results(path, results, prediction.priority.level)
        self._outgoing.set()
        return True

    def _skip(self, path: Path, record: dict, warnings: list[str]) -> None:
        log.info(
            "skipped: not a frontal chest radiograph",
            extra={
                "fields": {
                    "request_id": record["request_id"],
                    "warnings": warnings,
                    "reasons": [WARNINGS[w] for w in warnings],
                }
            },
        )
        self.audit.write({**record, "event": "dicom_skipped", "warnings": warnings})
        for warning in warnings:
            self.node_metrics.skipped.labels(warning).inc()
            self._count_refusal(f"dicom_skipped:{warning}")
        self.spool.discard(path)

    def _reject(self, path: Path, record: dict, code: str, message: str) -> None:
        self.audit.write({**record, "event": "dicom_rejected", "code": code})
        kept = self.spool.set_aside(path, "rejected")
        log.error(
            "rejected a received instance",
            extra={
                "fields": {
                    "request_id": record["request_id"],
                    "code": code,
                    "reason": shown(message, 300),
                    "kept": str(kept),
                }
            },
        )
        self.node_metrics.rejected.labels(code).inc()
        self._count_refusal(f"dicom_rejected:{code}")
        self._prune()

    def _count_refusal(self, reason: str) -> None:
        """Into the /monitor roll-up the API shares (beside the audit log), with the API's refusals."""
        if self.service.monitor is not None:
            self.service.monitor.refusal(reason)

    def _prune(self) -> None:
        with self._prune_lock:
            removed = self.spool.prune(self.node.aside_max_mb * 2**20, self.node.aside_max_days * 86400)
        if removed:
            log.info(
                "pruned rejected/ and refused/",
                extra={
                    "fields": {
                        "removed": removed,
                        "max_mb": self.node.aside_max_mb,
                        "max_days": self.node.aside_max_days,
                    }
                },
            )

    def _claims(self):
        verifier = self.service.verifier
        if verifier is None:
            raise LicenseNotReady("The licence keys are not loaded yet.")
        try:
            token = Path(self.node.token_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise LicenseNotReady(
                f"The node's token file {self.node.token_file} cannot be read (CHEXNET_DICOM_TOKEN_FILE)."
            ) from None
        return verifier.verify(token)
