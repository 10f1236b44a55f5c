"""STOW-RS in (PS3.18 10.5, DESIGN.md "DICOM results and the DICOM node"): ``POST /dicomweb/studies`` and
``POST /dicomweb/studies/{study}`` with a ``multipart/related; type="application/dicom"`` body, served by
waitress in the node's process on CHEXNET_DICOMWEB_PORT (nginx passes ``/dicomweb/`` to it).

The licence token is checked first (``Authorization: Bearer``, the Service's verifier, as the REST API does).
The body is then parsed as it is read (python-multipart's push parser): each part is written straight into
``spool/receiving/`` through the C-STORE path's :class:`CappedFile` (the same instance cap and free-disk
floor), checked like a received C-STORE data set (the core's bounded header reader, an accepted SOP class
and transfer syntax) and moved into ``incoming/`` by :meth:`Spool.accept` (fsynced, renamed) before the
next part is read. So only the part being read is ever on disk unacknowledged, nothing is held in memory
beyond a read chunk, and every instance listed as stored in the answer is on disk before the answer.
Waitress buffers a request body beyond 512 KiB in an unlinked file in ``spool/receiving/`` (never in
/tmp, a tmpfs in the container), bounded by CHEXNET_DICOMWEB_MAX_REQUEST_MB.

The answer is PS3.18's Store Instances Response (``application/dicom+json``): ReferencedSOPSequence for the
stored instances, FailedSOPSequence with a FailureReason for the others, and one ``Warning: 299`` header
per failure with the sentence a person acts on; 200 when all were stored, 202 when some failed, 409 when
none was stored; parts beyond MAX_PARTS are one failure entry. A request that is not a STOW-RS request is
answered with the product's JSON error (400, 401, 404, 405, 415, 503; 500 for a fault the node did not foresee).
"""

import json
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from werkzeug.wrappers import Request, Response

from chexnet.dicom_node.peers import shown
from chexnet.dicom_node.receiving import CappedFile
from chexnet.dicom_node.spool import Spool
from chexnet.errors import PayloadTooLarge, ServiceError, error_body
from licensing.errors import LicenseNotReady, LicensingError, TokenInvalid, TokenMissing
from licensing.tokens import TokenVerifier

log = logging.getLogger("chexnet.dicom_node")
_ROUTE = re.compile(r"/dicomweb/studies(?:/(?P<study>[0-9.]{1,64}))?/?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CHUNK = 64 * 1024
MAX_PARTS = 1000  # instances in one request; a larger study is sent in several requests
_MAX_WARNINGS = 20
# PS3.18 Table 10.5.3-3 (PS3.4 B.2.3) failure reasons
OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
SOP_CLASS_NOT_SUPPORTED, SYNTAX_NOT_SUPPORTED, PROCESSING_FAILURE = 0x0122, 0xC122, 0x0110


class StowError(ServiceError):
    """A request the node cannot take as STOW-RS at all; its status says why."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self._headers = status, code, headers or {}

    @property
    def headers(self) -> dict[str, str]:
        return self._headers


class _TooManyParts(Exception):
    """A part beyond MAX_PARTS began: the body is not read further."""


@dataclass
class Outcome:
    """One part of the request: stored, or failed with a reason code and a sentence."""

    number: int
    sop_class: str | None = None
    sop_instance: str | None = None
    failure: int | None = None
    reason: str = ""  # the refusal's short name, for metrics and the log
    sentence: str = ""


@dataclass
class _Part:
    number: int
    headers: dict[str, str] = field(default_factory=dict)
    name: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)
    file: CappedFile | None = None
    outcome: Outcome | None = None


class StowService:
    """The WSGI application. ``header(read)`` is the node's bounded header reader (in a decode slot);
    ``on_part(outcome)`` counts and wakes the worker."""

    def __init__(
        self,
        *,
        verifier: Callable[[], TokenVerifier | None],
        spool: Spool,
        cap_bytes: int,
        min_free_bytes: int,
        free_bytes: Callable[[], int],
        header: Callable[[Callable[[], bytes]], Dataset],
        classes: Iterable[str],
        syntaxes: Iterable[str],
        on_part: Callable[[Outcome], None],
    ):
        self.verifier, self.spool, self.cap_bytes, self.min_free_bytes = verifier, spool, cap_bytes, min_free_bytes
        self.free_bytes, self.header, self.on_part = free_bytes, header, on_part
        self.classes, self.syntaxes = frozenset(classes), frozenset(syntaxes)

    def __call__(self, environ, start_response):
        request = Request(environ)
        sent = request.headers.get("X-Request-ID", "")
        request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        try:
            response = self._handle(request, request_id)
        except (ServiceError, LicensingError) as exc:
            response = Response(status=exc.status, headers=exc.headers, mimetype="application/json")
            response.set_data(_json(error_body(exc, request_id)))
        except Exception as exc:  # noqa: BLE001 - a bug is one log line and the JSON error, not waitress's page
            log.error(
                "STOW-RS request failed", extra={"fields": {"request_id": request_id, "error": type(exc).__name__}}
            )
            failure = ServiceError(
                "The DICOM node failed on this request (logged under its request id); send it again, and tell "
                "the administrator if it keeps failing."
            )
            response = Response(status=500, mimetype="application/json")
            response.set_data(_json(error_body(failure, request_id)))
        response.headers["X-Request-ID"] = request_id
        return response(environ, start_response)

    # --- the request -----------------------------------------------------------------------------
    def _handle(self, request: Request, request_id: str) -> Response:
        route = _ROUTE.fullmatch(request.path)
        if route is None:
            raise StowError(404, "not_found", "No such endpoint; STOW-RS is POST /dicomweb/studies.")
        if request.method != "POST":
            raise StowError(405, "method_not_allowed", "This endpoint takes POST only (STOW-RS).", {"Allow": "POST"})
        self._authorise(request)
        boundary = self._boundary(request.headers.get("Content-Type", ""))
        outcomes, complete = self._store(request, boundary, route["study"])
        if not outcomes:
            raise StowError(
                400, "bad_request", "The body holds no DICOM part; send each instance as an application/dicom part."
            )
        stored = [o for o in outcomes if o.failure is None]
        failed = [o for o in outcomes if o.failure is not None]
        if not complete:
            failed.append(
                Outcome(
                    len(outcomes) + 1,
                    failure=CANNOT_UNDERSTAND,
                    reason="truncated",
                    sentence="The body ended before its closing boundary; "
                    "the parts before it are answered here, send the rest again.",
                )
            )
        log.info(
            "STOW-RS request",
            extra={"fields": {"request_id": request_id, "stored": len(stored), "failed": len(failed)}},
        )
        response = Response(
            _json(_store_response(stored, failed)),
            status=200 if not failed else 202 if stored else 409,
            mimetype="application/dicom+json",
        )
        for outcome in failed[:_MAX_WARNINGS]:
            response.headers.add("Warning", f'299 chexnet "part {outcome.number}: {_quoted(outcome.sentence)}"')
        return response

    def _authorise(self, request: Request) -> None:
        """The REST API's check (licensing.flask_auth): a Bearer token the Service's verifier accepts."""
        if any(name in request.args for name in ("token", "access_token", "jwt", "bearer", "auth")):
            raise TokenInvalid(
                "Tokens in the URL are refused (URLs end up in logs); send 'Authorization: Bearer <token>'."
            )
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenMissing("STOW-RS needs a licence token: send 'Authorization: Bearer <token>'.")
        verifier = self.verifier()
        if verifier is None:
            raise LicenseNotReady("The licence keys are not loaded yet; retry in a few seconds.")
        verifier.verify(token.strip())

    @staticmethod
    def _boundary(content_type: str) -> bytes:
        kind, options = parse_options_header(content_type)
        wanted = 'send multipart/related; type="application/dicom" (PS3.18 STOW-RS).'
        if kind != b"multipart/related":
            raise StowError(415, "unsupported_media_type", f"The body is not multipart/related; {wanted}")
        part_type = options.get(b"type", b"application/dicom").lower()
        if part_type != b"application/dicom":
            raise StowError(
                415,
                "unsupported_media_type",
                f"Parts of type {part_type.decode('latin-1')[:60]} are not accepted; {wanted}",
            )
        boundary = options.get(b"boundary", b"")
        if not 1 <= len(boundary) <= 70:
            raise StowError(
                400, "bad_request", f"The Content-Type has no multipart boundary of 1 to 70 characters; {wanted}"
            )
        return boundary

    # --- the body, a part at a time ------------------------------------------------------------
    def _store(self, request: Request, boundary: bytes, study: str | None) -> tuple[list[Outcome], bool]:
        """Every part stored or failed as it ends; True when the closing boundary was read."""
        outcomes: list[Outcome] = []
        state: dict = {"part": None, "ended": False}

        def begin() -> None:
            if len(outcomes) >= MAX_PARTS:
                raise _TooManyParts
            state["part"] = _Part(len(outcomes) + 1)

        def header_field(data: bytes, start: int, end: int) -> None:
            state["part"].name += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            state["part"].value += data[start:end]

        def header_end() -> None:
            part = state["part"]
            part.headers[part.name.decode("latin-1").strip().lower()] = part.value.decode("latin-1").strip()
            part.name, part.value = bytearray(), bytearray()

        def headers_finished() -> None:
            part = state["part"]
            kind = parse_options_header(part.headers.get("content-type", "application/dicom"))[0]
            if kind != b"application/dicom":
                part.outcome = Outcome(
                    part.number,
                    failure=CANNOT_UNDERSTAND,
                    reason="unreadable",
                    sentence="This part is not application/dicom; send each instance as a DICOM file (PS3.10).",
                )
                return
            part.file = CappedFile(
                tempfile.NamedTemporaryFile(dir=self.spool.receiving, prefix="stow-", suffix=".dcm", delete=False),
                self.cap_bytes,
                lambda: self.free_bytes() < self.min_free_bytes,
            )

        def data(chunk: bytes, start: int, end: int) -> None:
            part = state["part"]
            if part.file is not None:
                part.file.write(chunk[start:end])

        def part_end() -> None:
            part, state["part"] = state["part"], None
            outcome = part.outcome or self._keep(part, study)
            outcomes.append(outcome)
            self.on_part(outcome)

        def ended() -> None:
            state["ended"] = True

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": begin,
                "on_header_field": header_field,
                "on_header_value": header_value,
                "on_header_end": header_end,
                "on_part_data": data,
                "on_headers_finished": headers_finished,
                "on_part_end": part_end,
                "on_end": ended,
            },
        )
        stream = request.stream
        try:
            while chunk := stream.read(_CHUNK):
                parser.write(chunk)
                if state["ended"]:
                    break
            if state["part"] is not None and not outcomes:
                raise StowError(
                    400,
                    "bad_request",
                    "The body ended before the first part's closing boundary, so nothing was stored; "
                    "send the whole body again.",
                )
        except MultipartParseError:
            if not outcomes:
                raise StowError(
                    400, "bad_request", "The multipart body is malformed; check its boundary and part headers."
                ) from None
        except _TooManyParts:  # the parts read are answered; the rest are one failure entry
            failed = Outcome(len(outcomes) + 1)
            _fail(
                failed,
                OUT_OF_RESOURCES,
                "too_many_parts",
                f"A request may hold at most {MAX_PARTS} instances; this part and the rest were not read, "
                "send them in another request.",
            )
            outcomes.append(failed)
            self.on_part(failed)
            state["ended"] = True
        except OSError as exc:  # a part's file cannot be made or written (no space, I/O error)
            log.error("cannot spool a STOW-RS instance", extra={"fields": {"error": exc.strerror}})
            failed = Outcome(len(outcomes) + 1)
            _fail(
                failed,
                OUT_OF_RESOURCES,
                "spool_error",
                "The node cannot write its spool; send this part and the rest again later.",
            )
            outcomes.append(failed)
            self.on_part(failed)
            state["ended"] = True  # every part read is answered: the rest with this one
        finally:
            self._drop(state["part"])
        return outcomes, state["ended"]

    @staticmethod
    def _drop(part: _Part | None) -> None:
        """A part the body ended in the middle of: never acknowledged, so deleted."""
        if part is not None and part.file is not None:
            try:
                part.file.close()
            except OSError:  # its last bytes cannot be written: it is deleted anyway
                pass
            Path(part.file.name).unlink(missing_ok=True)

    def _keep(self, part: _Part, study: str | None) -> Outcome:
        """Check a whole part as a received C-STORE data set is checked; into incoming/ when it passes."""
        assert part.file is not None  # set when its headers said application/dicom
        part.file.close()
        path = Path(part.file.name)
        outcome = Outcome(part.number)
        try:
            self._check(path, part.file.refusal, outcome, study)
            if outcome.failure is None:
                self.spool.accept(path)
        except OSError as exc:
            log.error("cannot spool a STOW-RS instance", extra={"fields": {"error": exc.strerror}})
            _fail(outcome, OUT_OF_RESOURCES, "spool_error", "The node cannot write its spool; retry later.")
        finally:  # what is still here was not kept (refused, or a fault): a stored one is in incoming/ now
            path.unlink(missing_ok=True)
        return outcome

    def _check(self, path: Path, refusal: str | None, outcome: Outcome, study: str | None) -> None:
        if refusal == "too_large":
            mb = self.cap_bytes // 2**20
            return _fail(
                outcome,
                OUT_OF_RESOURCES,
                refusal,
                f"The instance is larger than the {mb} MiB this node accepts (CHEXNET_MAX_UPLOAD_MB).",
            )
        if refusal or self.free_bytes() < self.min_free_bytes:
            return _fail(outcome, OUT_OF_RESOURCES, "disk_full", "The node's spool disk is full; retry later.")
        try:
            header = self.header(path.read_bytes)
            syntax = pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
        except PayloadTooLarge:
            return _fail(outcome, OUT_OF_RESOURCES, "too_large", "The instance is larger than this node accepts.")
        except ServiceError as exc:
            if exc.status == 503:
                return _fail(outcome, OUT_OF_RESOURCES, "busy", "The node is busy; retry later.")
            return _fail(outcome, CANNOT_UNDERSTAND, "unreadable", "This part is not a DICOM file the node can read.")
        except (InvalidDicomError, OSError, ValueError):
            return _fail(
                outcome, CANNOT_UNDERSTAND, "unreadable", "This part is not a DICOM file (PS3.10) with its file meta."
            )
        outcome.sop_class = str(header.get("SOPClassUID", "")) or None
        outcome.sop_instance = str(header.get("SOPInstanceUID", "")) or None
        if outcome.sop_class is None or outcome.sop_instance is None:
            return _fail(outcome, CANNOT_UNDERSTAND, "unreadable", "The data set has no SOP class or instance UID.")
        if outcome.sop_class not in self.classes:
            return _fail(
                outcome,
                SOP_CLASS_NOT_SUPPORTED,
                "sop_class",
                f"SOP class {shown(outcome.sop_class)} is not one the node takes (CR, DX or secondary capture).",
            )
        if syntax not in self.syntaxes:
            return _fail(
                outcome,
                SYNTAX_NOT_SUPPORTED,
                "syntax",
                f"Transfer syntax {shown(str(syntax))} is not one the node decodes; send it uncompressed.",
            )
        if study is not None and str(header.get("StudyInstanceUID", "")) != study:
            return _fail(
                outcome,
                DOES_NOT_MATCH,
                "study_mismatch",
                "The instance belongs to another study than the one in the URL.",
            )
        return None


def _fail(outcome: Outcome, code: int, reason: str, sentence: str) -> None:
    outcome.failure, outcome.reason, outcome.sentence = code, reason, sentence


def _store_response(stored: list[Outcome], failed: list[Outcome]) -> dict:
    """PS3.18 Table 10.5.3-1, in the DICOM JSON model."""
    response = Dataset()
    if stored:
        response.ReferencedSOPSequence = [_reference(o) for o in stored]
    if failed:
        items = []
        for outcome in failed:
            item = _reference(outcome)
            item.FailureReason = outcome.failure
            items.append(item)
        response.FailedSOPSequence = items
    return response.to_json_dict()


def _reference(outcome: Outcome) -> Dataset:
    item = Dataset()
    if outcome.sop_class:
        item.ReferencedSOPClassUID = outcome.sop_class
    if outcome.sop_instance:
        item.ReferencedSOPInstanceUID = outcome.sop_instance
    return item


def _quoted(sentence: str) -> str:
    """A sentence as the Warning header's quoted-string carries it: printable ASCII (a header is Latin-1 and
    the sentence may quote a sender's UID, cut with an ellipsis), its quotes and backslashes escaped."""
    text = sentence.replace("\u2026", "...").replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def http_server(app: StowService, bind: str, port: int, threads: int, max_request_bytes: int, folder: Path):
    """Waitress serving ``app`` (call ``run()`` on a thread, ``close()`` to stop). Its request bodies
    beyond 512 KiB go to unlinked files in ``folder`` (the spool's receiving/, on the spool's disk)."""
    import waitress.buffers
    from waitress.server import create_server

    def newfile(_buffer):
        return tempfile.TemporaryFile("w+b", dir=folder)

    waitress.buffers.TempfileBasedBuffer.newfile = newfile  # the node's process only, like ReceivedFiles.install
    return create_server(
        app,
        host=bind,
        port=port,
        threads=threads,
        ident="chexnet-dicom-node",
        max_request_body_size=max_request_bytes,
        channel_timeout=60,
        connection_limit=threads * 8,
        clear_untrusted_proxy_headers=True,
    )
