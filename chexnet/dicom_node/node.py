"""The DICOM node: listener (C-ECHO, C-STORE SCP), worker (spool → core → results) and sender
(C-STORE SCU with backoff), each on its own thread around one :class:`Spool`."""

import hashlib
import io
import logging
import threading
from pathlib import Path

import pydicom
from prometheus_client import Counter, Gauge, start_http_server
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    ComprehensiveSRStorage,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from chexnet.api.observability import AuditLog, Metrics
from chexnet.api.service import Service
from chexnet.api.settings import Settings
from chexnet.dicom_node.settings import NodeSettings
from chexnet.dicom_node.spool import QUEUES, Spool
from chexnet.dicom_results import encode
from chexnet.eligibility import WARNINGS, warnings_for
from chexnet.errors import ServiceError
from chexnet.imaging.dicom import DECODABLE_SYNTAXES
from chexnet.options import PredictOptions
from licensing.errors import LicenseError, LicenseNotReady

log = logging.getLogger("chexnet.dicom_node")
# What the node accepts: radiographs, and secondary captures of them (as some PACS export CR).
STORAGE_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage)
RESULT_CLASSES = (ComprehensiveSRStorage, SecondaryCaptureImageStorage)
SUCCESS, REFUSED_NOT_AUTHORIZED, OUT_OF_RESOURCES = 0x0000, 0x0124, 0xA700
_ELIGIBILITY_TAGS = ["Modality", "BodyPartExamined", "ViewPosition"]


class SendFailed(Exception):
    """The destination could not be reached or did not take an object; the spool keeps it."""


class NodeMetrics:
    def __init__(self, metrics: Metrics, spool: Spool):
        r = metrics.registry
        self.received = Counter("chexnet_dicom_received_total", "Instances received and spooled", registry=r)
        self.skipped = Counter("chexnet_dicom_skipped_total", "Instances skipped by eligibility", ["reason"], registry=r)
        self.rejected = Counter("chexnet_dicom_rejected_total", "Instances the core refused", ["code"], registry=r)
        self.sent = Counter("chexnet_dicom_sent_total", "Result objects stored at the destination", registry=r)
        self.send_failures = Counter("chexnet_dicom_send_failures_total", "Failed attempts to send results", registry=r)
        depth = Gauge("chexnet_dicom_queue_depth", "Files waiting in the spool", ["queue"], registry=r)
        for queue in QUEUES:
            depth.labels(queue).set_function(lambda queue=queue: spool.depth(queue))


class DicomNode:
    def __init__(self, settings: Settings, node: NodeSettings):
        self.node = node
        self.metrics = Metrics()
        self.audit = AuditLog(settings.audit_log)
        self.service = Service(settings, self.metrics, self.audit)
        self.spool = Spool(node.spool)
        self.node_metrics = NodeMetrics(self.metrics, self.spool)
        self.options = PredictOptions.parse(node.model, node.heatmaps, output="dicom")
        self._stop = threading.Event()
        self._work = threading.Event()
        self._outgoing = threading.Event()
        self._pause = 1.0  # the sender's pause before its next attempt; doubles on each failure
        self._server = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.service.start()
        ae = AE(ae_title=self.node.ae_title)
        ae.require_calling_aet = [*self.node.allowed_aes, self.node.ae_title]  # itself: the healthcheck's C-ECHO
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, DECODABLE_SYNTAXES)
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server(("0.0.0.0", self.node.port), block=False, evt_handlers=handlers)
        if self.node.metrics_port:
            start_http_server(self.node.metrics_port, registry=self.metrics.registry)
        for name, args in (("dicom-worker", ("incoming", self._work, self._predict_waiting)),
                           ("dicom-sender", ("outgoing", self._outgoing, self._send_waiting))):
            thread = threading.Thread(target=self._drain, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("DICOM node listening", extra={"fields": {
            "ae_title": self.node.ae_title, "port": self.node.port, "allowed": list(self.node.allowed_aes),
            "destination": str(self.node.destination), "waiting": {q: self.spool.depth(q) for q in QUEUES}}})

    def stop(self) -> None:
        self._stop.set()
        self._work.set()
        self._outgoing.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait(self) -> None:
        self._stop.wait()

    # --- listener -------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        if calling == self.node.ae_title:
            return REFUSED_NOT_AUTHORIZED  # its own title admits only the healthcheck's C-ECHO
        buffer = io.BytesIO()
        buffer.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(buffer, event.file_meta)
        buffer.write(event.request.DataSet.getvalue())
        try:
            self.spool.accept(buffer.getvalue())
        except OSError as exc:
            log.error("cannot spool a received instance; the sender is told to retry",
                      extra={"fields": {"calling_ae": calling, "error": exc.strerror}})
            return OUT_OF_RESOURCES
        self.node_metrics.received.inc()
        self._work.set()
        return SUCCESS

    # --- worker ---------------------------------------------------------------------------------
    def _drain(self, queue: str, wake: threading.Event, handle) -> None:
        """Hand what waits in the spool folder to ``handle``, oldest first; sleep until woken when empty."""
        while not self._stop.is_set():
            waiting = self.spool.files(queue)
            if waiting:
                handle(waiting)
            else:
                wake.wait(5)
                wake.clear()

    def _predict_waiting(self, waiting: list[Path]) -> None:
        for path in waiting:
            if self._stop.is_set() or not self._process(path):
                self._stop.wait(5)  # not ready or not licensed yet: the file stays, try again later
                return

    def _process(self, path: Path) -> bool:
        """Predict one spooled instance; False when it must wait (the service or licence not ready)."""
        data = path.read_bytes()
        record = {"request_id": f"dicom-{path.stem}", "input_sha256": hashlib.sha256(data).hexdigest()}
        warnings = _eligibility(data)
        if warnings:
            log.info("skipped: not a frontal chest radiograph", extra={"fields": {
                "request_id": record["request_id"], "warnings": warnings,
                "reasons": [WARNINGS[w] for w in warnings]}})
            self.audit.write({**record, "event": "dicom_skipped", "warnings": warnings})
            for warning in warnings:
                self.node_metrics.skipped.labels(warning).inc()
            self.spool.discard(path)
            return True
        try:
            claims = self._claims()
            prediction = self.service.predict(lambda: data, self.options, claims, record["request_id"])
            results = [encode(ds) for ds in self.service.dicom_results(prediction)]
        except (LicenseError, ServiceError) as exc:
            if isinstance(exc, LicenseError) or exc.status == 503:
                log.warning("cannot predict yet; the instance stays in the spool", extra={"fields": {
                    "request_id": record["request_id"], "code": exc.code, "reason": exc.message}})
                return False
            self._reject(path, record, exc.code, exc.message)
            return True
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the queue; the file is kept for a person
            self._reject(path, record, "internal_error", type(exc).__name__)
            return True
        self.spool.stage_results(path, results)
        self._outgoing.set()
        return True

    def _reject(self, path: Path, record: dict, code: str, message: str) -> None:
        kept = self.spool.reject(path)
        log.error("rejected a received instance", extra={"fields": {
            "request_id": record["request_id"], "code": code, "reason": message, "kept": str(kept)}})
        self.audit.write({**record, "event": "dicom_rejected", "code": code})
        self.node_metrics.rejected.labels(code).inc()

    def _claims(self):
        verifier = self.service.verifier
        if verifier is None:
            raise LicenseNotReady("The licence keys are not loaded yet.")
        try:
            token = Path(self.node.token_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise LicenseNotReady(f"The node's token file {self.node.token_file} cannot be read "
                                  "(CHEXNET_DICOM_TOKEN_FILE).") from None
        return verifier.verify(token)

    # --- sender ---------------------------------------------------------------------------------
    def _send_waiting(self, waiting: list[Path]) -> None:
        try:
            self._send(waiting)
            self._pause = 1.0
        except SendFailed as exc:
            self.node_metrics.send_failures.inc()
            log.warning("sending results failed; retrying", extra={"fields": {
                "destination": str(self.node.destination), "reason": str(exc), "retry_in_s": self._pause,
                "waiting": len(waiting)}})
            self._stop.wait(self._pause)
            self._pause = min(self._pause * 2, self.node.retry_max_s)

    def _send(self, paths: list[Path]) -> None:
        destination = self.node.destination
        ae = AE(ae_title=self.node.ae_title)
        for sop_class in RESULT_CLASSES:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            raise SendFailed("the destination did not accept an association")
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(path))
                code = getattr(status, "Status", None)
                if code is None:
                    raise SendFailed("the association ended before the destination answered")
                if code != SUCCESS and code >> 12 != 0xB:  # 0xBxxx: stored with a warning
                    raise SendFailed(f"the destination answered C-STORE status 0x{code:04X}")
                self.spool.discard(path)
                self.node_metrics.sent.inc()
        finally:
            if assoc.is_established:
                assoc.release()


def _eligibility(data: bytes) -> list[str]:
    """Warnings from the header alone; an unreadable header gives none (the core then says why)."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_ELIGIBILITY_TAGS)
    except Exception:  # noqa: BLE001 - any parse failure is the core's to report as a 4xx
        return []
    return warnings_for(header)
