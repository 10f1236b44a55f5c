"""STOW-RS out: the sender's transport when CHEXNET_DICOMWEB_DESTINATION is set (instead of C-STORE).

The queue, its order, the per-object retry schedule, the whole-queue backoff and what is set aside are
the C-STORE sender's (:class:`chexnet.dicom_node.sender.Sender`); only ``_send`` differs. Each result
object is one STOW-RS request (``POST {destination}/studies``, one ``application/dicom`` part), so the
destination's answer is about that object alone:

- 200, or a Store Instances Response that lists it in ReferencedSOPSequence: stored, removed from the spool;
- a FailedSOPSequence entry with a permanent reason (0xA9xx, 0xCxxx, 0x01xx, as for C-STORE), or HTTP 400,
  413 or 415 without one: refused for good, set aside in refused/ with an audit row;
- any other failure reason or HTTP status (409 and 5xx included): retried with its own backoff;
- no answer (connection refused, TLS failure, timeout), 401/403 (the credentials) or 404 (the URL): the
  destination cannot take anything now, so the whole queue backs off.

An object is removed only after the destination's answer said it was stored, so a crash between the two
sends it again (the same SOP instance, which a PACS files once), exactly as with C-STORE. The
Authorization header is read from CHEXNET_DICOMWEB_AUTH_FILE for every round (a rotated secret is picked
up) and never logged; https is verified against CHEXNET_DICOMWEB_CA when set, else the system's CAs.
"""

import io
import json
import logging
import uuid
from pathlib import Path

import pydicom
import requests

from chexnet.dicom_node.sender import Sender, Unreachable, is_permanent, is_stored
from chexnet.dicom_node.settings import auth_header

log = logging.getLogger("chexnet.dicom_node")
_TIMEOUT_S = (10, 120)  # connect, then each read: a large capture over a slow link
_PERMANENT_HTTP = (400, 413, 415)
_QUEUE_HTTP = (401, 403, 404, 407)
_REFERENCED, _FAILED, _FAILURE_REASON = "00081199", "00081198", "00081197"
_MAX_ANSWER = 1 << 20  # a Store Instances Response about one object; a longer answer is not read
_NO_REASON = -1  # listed as failed without a FailureReason: retried (0x0110 would be a refusal for good)


class DicomwebSender(Sender):
    def _send(self, paths: list[Path]) -> None:
        web = self.node.dicomweb
        assert web.destination is not None  # chosen by DicomNode only when it is set
        with requests.Session() as session:
            if web.auth_file:
                try:
                    name, value = auth_header(web.auth_file)
                except ValueError:
                    raise Unreachable("CHEXNET_DICOMWEB_AUTH_FILE cannot be read as one header line") from None
                session.headers[name] = value
            for path in paths:
                if self._stop.is_set():
                    return
                self._post(session, f"{web.destination}/studies", path)

    def _post(self, session: requests.Session, url: str, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # taken by a concurrent prune: nothing left to send
            return
        boundary = uuid.uuid4().hex
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        try:
            answer = session.post(
                url,
                data=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
                timeout=_TIMEOUT_S,
                # per request: a session's verify gives way to REQUESTS_CA_BUNDLE in the environment
                verify=self.node.dicomweb.ca or True,
                allow_redirects=False,
                stream=True,  # the answer is read up to _MAX_ANSWER only
            )
            store = _store_response(answer)
        except requests.RequestException as exc:
            raise Unreachable(f"the destination did not answer ({type(exc).__name__})") from None
        status = answer.status_code
        if status in _QUEUE_HTTP:
            raise Unreachable(f"the destination answered HTTP {status} (check the URL and the credentials)")
        reason = _failure_reason(store)
        if reason is None and (status == 200 or _referenced(store)):
            self.spool.discard(path)
            self._retry.pop(path.name, None)
            self.metrics.sent.inc()
            self.on_stored(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
        elif reason is not None and reason != _NO_REASON and is_permanent(reason) and not is_stored(reason):
            self._refused(path, reason, f"STOW-RS FailureReason 0x{reason:04X} (HTTP {status})")
        elif reason is None and status in _PERMANENT_HTTP:
            self._refused(path, status, f"STOW-RS answered HTTP {status}")
        else:
            listed = (
                "" if reason is None else " FailureReason " + ("none" if reason == _NO_REASON else f"0x{reason:04X}")
            )
            self._failed(path, f"STOW-RS HTTP {status}{listed}")


def _store_response(answer: requests.Response) -> dict:
    """The answer's JSON object; {} where it is none, or longer than _MAX_ANSWER (a hostile or broken
    destination must not fill the node's memory or stack)."""
    chunks, size = [], 0
    with answer:
        for chunk in answer.iter_content(64 * 1024):
            size += len(chunk)
            if size > _MAX_ANSWER:
                return {}
            chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def _values(element) -> list:
    """An element's Value in the DICOM JSON model, or [] where the destination's answer has none of that
    shape (a hostile or broken peer must not stop the sender)."""
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _referenced(store: dict) -> bool:
    return any(isinstance(item, dict) for item in _values(store.get(_REFERENCED)))


def _failure_reason(store: dict) -> int | None:
    """The FailureReason of the one object sent, when the destination listed it as failed."""
    for item in _values(store.get(_FAILED)):
        values = _values(item.get(_FAILURE_REASON)) if isinstance(item, dict) else []
        if values and type(values[0]) is int and 0 <= values[0] <= 0xFFFF:
            return values[0]
        return _NO_REASON
    return None
