"""DICOM audit messages (PS3.15 A.5, the IHE ATNA "Record Audit Event" content) for the events the product
audits: application start and stop, a refused licence token, each prediction, results stored at a PACS.

Each builder returns the XML of one ``AuditMessage`` (UTF-8, one line); :class:`AtnaAudit` hands it to the
syslog queue (:mod:`chexnet.service.syslog_tls`). Codes are DICOM's (PS3.16, scheme "DCM"):

- start/stop: Application Activity 110100, type Application Start 110120 / Application Stop 110121.
- a token refused with 401 (missing, malformed, expired, revoked): User Authentication 110114, type Login
  110122, outcome 4 (minor failure); refused with 403 (a genuine token for another host or another model):
  Security Alert 110113, type Use of Restricted Function 110132, outcome 4.
- a prediction: DICOM Instances Accessed 110103, action R: the product reads the image to derive results
  from it (a Query, 110112, is a search for instances, which a prediction is not).
- results stored at the PACS by the DICOM node: DICOM Instances Transferred 110104, action C (the PACS did
  not hold these new SR and capture instances before).

The studies are identified by their Study Instance UID (with the SOP class and instance); no patient name,
ID or birth date is sent (so the Patient participant that PS3.15 A.5.3 lists for 110103/110104 is left out:
the repository joins on the study). A PNG or JPEG input is identified by its SHA-256.
"""

import base64
import datetime as dt
import logging
import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Protocol

import pydicom
from prometheus_client import CollectorRegistry

from chexnet.predictor import Caller, Prediction
from chexnet.service.syslog_tls import AuditSyslogSettings, SyslogQueue

log = logging.getLogger(__name__)

DCM = "DCM"
RFC3881 = "RFC-3881"
# (csd-code, originalText) of the DICOM codes used here (PS3.16 CID 400-405, 7445)
APPLICATION_ACTIVITY = ("110100", "Application Activity")
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
USER_AUTHENTICATION = ("110114", "User Authentication")
LOGIN = ("110122", "Login")
SECURITY_ALERT = ("110113", "Security Alert")
RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
APPLICATION_ROLE = ("110150", "Application")
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")
STUDY_UID = ("110180", "Study Instance UID")
INPUT_SHA256 = ("input-sha256", "SHA-256 of the input file")  # the product's own code (codeSystemName CHEXNET)

SUCCESS, MINOR_FAILURE = "0", "4"
MAX_VALUE = 256  # characters of one attribute value (a UID is at most 64)
_NOT_XML = re.compile("[^\u0020-\u007e\u00a0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
SERVER_PROCESS = "4"  # AuditSourceTypeCode: application server process


@dataclass(frozen=True)
class AuditSource:
    """Who reports: the audit source ID (CHEXNET_AUDIT_SOURCE_ID, default the host name), this process's
    application name (``chexnet-api``, ``chexnet-dicom-node``) and the machine's name."""

    source_id: str
    application: str
    host: str = ""

    @property
    def machine(self) -> str:
        return self.host or socket.gethostname()


def _coded(parent: ET.Element, tag: str, code: tuple[str, str], system: str = DCM) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": system, "originalText": code[1]})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(event: tuple[str, str], action: str, outcome: str, kind: tuple[str, str] | None = None) -> ET.Element:
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {"EventActionCode": action, "EventDateTime": _now(), "EventOutcomeIndicator": outcome},
    )
    _coded(identification, "EventID", event)
    if kind is not None:
        _coded(identification, "EventTypeCode", kind)
    return root


def _participant(
    root: ET.Element,
    user_id: str,
    requestor: bool,
    *,
    alternative: str | None = None,
    access_point: str | None = None,
    role: tuple[str, str] | None = None,
) -> None:
    attributes = {"UserID": user_id or "-", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attributes["AlternativeUserID"] = alternative
    if access_point:
        attributes["NetworkAccessPointID"] = access_point
        attributes["NetworkAccessPointTypeCode"] = "2" if _is_ip(access_point) else "1"
    element = ET.SubElement(root, "ActiveParticipant", attributes)
    if role is not None:
        _coded(element, "RoleIDCode", role)


def _is_ip(address: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        return False
    return True


def _product(root: ET.Element, source: AuditSource, requestor: bool, role=APPLICATION_ROLE, user=None) -> None:
    """The product itself as an active participant: its application name (or AE title) and process id."""
    _participant(
        root,
        user or source.application,
        requestor,
        alternative=str(os.getpid()),
        access_point=source.machine,
        role=role,
    )


def _finish(root: ET.Element, source: AuditSource) -> ET.Element:
    """The AuditSourceIdentification, which the schema places after the active participants."""
    ET.SubElement(
        ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source.source_id}),
        "AuditSourceTypeCode",
        {"csd-code": SERVER_PROCESS},
    )
    return root


def _detail(parent: ET.Element, name: str, value: str | None) -> None:
    if value:
        encoded = base64.b64encode(_clean(value).encode()).decode()
        ET.SubElement(parent, "ParticipantObjectDetail", {"type": name, "value": encoded})


def _study(
    root: ET.Element, study_uid: str, sop_class: str, instances: list[str], details: dict[str, str | None]
) -> None:
    study = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": study_uid, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"},
    )
    _coded(study, "ParticipantObjectIDTypeCode", STUDY_UID)
    for name, value in details.items():
        _detail(study, name, value)
    description = ET.SubElement(study, "ParticipantObjectDescription")
    sop = ET.SubElement(description, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(len(instances))})
    for uid in instances:
        ET.SubElement(sop, "Instance", {"UID": uid})


def _xml(root: ET.Element) -> bytes:
    """One line of UTF-8 XML. Values that came from outside (a DICOM header's UIDs, a token's subject) lose
    what XML 1.0 cannot carry or a log viewer would act on (control characters) and are cut to a bound."""
    for element in root.iter():
        # a detail's value is base64 already (of a value cleaned in _detail)
        element.attrib = {name: v if name == "value" else _clean(v) for name, v in element.attrib.items()}
        if element.text:
            element.text = _clean(element.text)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True).replace(b"\n", b"")


def _clean(value: str) -> str:
    return _NOT_XML.sub("", value)[:MAX_VALUE].strip()


# --- the events -------------------------------------------------------------------------------------
def application_activity(source: AuditSource, started: bool) -> bytes:
    root = _message(APPLICATION_ACTIVITY, "E", SUCCESS, APPLICATION_START if started else APPLICATION_STOP)
    _product(root, source, requestor=False)
    return _xml(_finish(root, source))


def licence_refused(source: AuditSource, status: int, code: str, client: str | None, path: str) -> bytes:
    """A request refused for its licence token: 401 (authentication) or 403 (not this host or model)."""
    if status == 403:
        root = _message(SECURITY_ALERT, "E", MINOR_FAILURE, RESTRICTED_FUNCTION)
    else:
        root = _message(USER_AUTHENTICATION, "E", MINOR_FAILURE, LOGIN)
    ET.SubElement(root[0], "EventOutcomeDescription").text = code
    # The caller is not authenticated, so it is named by its address only.
    _participant(root, client or "unknown", True, access_point=client)
    _product(root, source, requestor=False)
    _finish(root, source)
    refused = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {"ParticipantObjectID": path, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "13"},
    )
    _coded(refused, "ParticipantObjectIDTypeCode", ("12", "URI"), RFC3881)
    _detail(refused, "error_code", code)
    return _xml(root)


def instances_accessed(source: AuditSource, prediction: Prediction, caller: Caller) -> bytes:
    """One prediction: the client (the token's subject) read the image through the product."""
    root = _message(INSTANCES_ACCESSED, "R", SUCCESS)
    _participant(root, caller.sub or "unknown", True, alternative=caller.customer)
    _product(root, source, requestor=False)
    _finish(root, source)
    details = {"request_id": caller.request_id, "model": f"{prediction.model.id} {prediction.model.version}"}
    header = prediction.source
    study_uid = str(header.get("StudyInstanceUID", "") or "") if header is not None else ""
    if header is not None and study_uid:
        sop_class = str(header.get("SOPClassUID", "") or "")
        instance = str(header.get("SOPInstanceUID", "") or "")
        _study(root, study_uid, sop_class, [instance] if instance else [], details)
    else:
        image = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": prediction.input_sha256,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "4",
            },
        )
        _coded(image, "ParticipantObjectIDTypeCode", INPUT_SHA256, "CHEXNET")
        for name, value in details.items():
            _detail(image, name, value)
    return _xml(root)


def instances_transferred(
    source: AuditSource, ae_title: str, destination_ae: str, destination_host: str, dataset: pydicom.Dataset
) -> bytes:
    """One result object the DICOM node stored at the destination (C-STORE answered success)."""
    root = _message(INSTANCES_TRANSFERRED, "C", SUCCESS)
    _product(root, source, requestor=True, role=SOURCE_ROLE, user=ae_title)
    _participant(root, destination_ae, False, access_point=destination_host, role=DESTINATION_ROLE)
    _finish(root, source)
    _study(
        root,
        str(dataset.get("StudyInstanceUID", "") or "-"),
        str(dataset.get("SOPClassUID", "") or ""),
        [str(dataset.get("SOPInstanceUID", "") or "")],
        {},
    )
    return _xml(root)


# --- what transports call ---------------------------------------------------------------------------
class MessageQueue(Protocol):
    def put(self, message: bytes) -> bool: ...


class AtnaAudit:
    """The product's audit events as DICOM audit messages, each queued for the audit repository; with no
    queue (CHEXNET_AUDIT_SYSLOG unset) every call does nothing. No call raises: an audit message that
    cannot be built or queued is logged and counted, and what was being audited goes on."""

    def __init__(self, source: AuditSource, queue: MessageQueue | None):
        self.source = source
        self.queue = queue

    @classmethod
    def open(cls, settings: AuditSyslogSettings | None, registry: CollectorRegistry, application: str) -> "AtnaAudit":
        """The process's audit trail to CHEXNET_AUDIT_SYSLOG (its queue and sender), or one that does nothing."""
        if settings is None:
            return cls(AuditSource("", application), None)
        source = AuditSource(settings.source_id or socket.gethostname(), application)
        return cls(source, SyslogQueue(settings, registry))

    def start(self) -> None:
        """Start the sender (what an earlier run left queued goes first) and record the application start."""
        if isinstance(self.queue, SyslogQueue):
            self.queue.start()
        self.application_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Record the application stop and give the sender timeout_s to deliver; the rest stays queued."""
        self.application_stop()
        if isinstance(self.queue, SyslogQueue):
            self.queue.stop(timeout_s)

    @property
    def enabled(self) -> bool:
        return self.queue is not None

    def _send(self, build, *args) -> None:
        if self.queue is None:
            return
        try:
            message = build(self.source, *args)
        except Exception as exc:  # noqa: BLE001 - an audit message must never fail what it audits
            log.error(
                "cannot build an audit message",
                extra={"fields": {"event": build.__name__, "error": type(exc).__name__}},
            )
            return
        self.queue.put(message)

    def application_start(self) -> None:
        self._send(application_activity, True)

    def application_stop(self) -> None:
        self._send(application_activity, False)

    def licence_refused(self, status: int, code: str, client: str | None, path: str) -> None:
        self._send(licence_refused, status, code, client, path)

    def prediction(self, prediction: Prediction, caller: Caller) -> None:
        self._send(instances_accessed, prediction, caller)

    def results_sent(self, ae_title: str, destination_ae: str, destination_host: str, dataset: pydicom.Dataset) -> None:
        self._send(instances_transferred, ae_title, destination_ae, destination_host, dataset)
