"""One JSON error shape for every failure (DESIGN.md): API clients never see HTML or a traceback.

Every failure becomes an error of the product's protocol (:class:`chexnet.errors.ErrorProtocol`): a
:class:`chexnet.errors.ServiceError`, a :class:`licensing.errors.LicensingError`, or one of the classes
below that werkzeug's HTTP errors are mapped to; one handler writes both bases with :func:`error_response`.
"""

import logging

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from chexnet.errors import ErrorProtocol, PayloadTooLarge, ServiceError, error_body
from chexnet.imaging.types import UPLOAD_SETTING
from licensing.errors import LicenseError, LicensingError

log = logging.getLogger(__name__)


class BadRequest(ServiceError):
    """The request itself is malformed (HTTP framing, form encoding)."""

    code = "bad_request"
    status = 400


class NotFound(ServiceError):
    """No such endpoint."""

    code = "not_found"
    status = 404


class MethodNotAllowed(ServiceError):
    """The endpoint exists but not for this HTTP method."""

    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allowed: list[str]):
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


# The bases of the errors the API answers with, each in the same JSON (error_response).
ERROR_BASES: tuple[type[Exception], ...] = (ServiceError, LicensingError)


def error_response(err: ErrorProtocol) -> Response:
    response = jsonify(error_body(err, g.get("request_id")))
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


def _http_error(err: HTTPException) -> Response:
    if err.code == 413:  # the request body is over MAX_CONTENT_LENGTH (the upload limit plus multipart framing)
        limit = g.get("upload_limit_mb")
        return error_response(
            PayloadTooLarge(
                f"The upload is larger than the upload limit of {limit} MiB ({UPLOAD_SETTING})."
                if limit
                else f"The upload is larger than the upload limit ({UPLOAD_SETTING})."
            )
        )
    if err.code == 404:
        return error_response(NotFound("No such endpoint; see /api/v1/docs."))
    if err.code == 405:
        allowed = sorted(getattr(err, "valid_methods", None) or [])
        return error_response(MethodNotAllowed("This endpoint does not accept that HTTP method.", allowed))
    bad = BadRequest(f"The request is malformed ({err.name}); check how it is encoded.")
    if err.code and 400 <= err.code < 500:
        bad.status = err.code  # werkzeug's own 4xx (408, 416, ...) keeps its status
    return error_response(bad)


def _licence_refused(err: LicenseError) -> Response:
    """A token refused with 401 or 403 is also a DICOM audit event for the hospital's audit repository
    (chexnet.service.atna; nothing is sent unless CHEXNET_AUDIT_SYSLOG is set)."""
    service = current_app.extensions.get("chexnet")
    if err.status in (401, 403) and service is not None:
        service.atna.licence_refused(err.status, err.code, request.remote_addr, request.path)
    return error_response(err)


def _unexpected(err: Exception) -> Response:
    log.error("unhandled error: %s", type(err).__name__, exc_info=err)
    return error_response(ServiceError("The server failed on this request; quote the request id to support."))


def init_app(app: Flask) -> None:
    for base in ERROR_BASES:
        app.register_error_handler(base, error_response)
    app.register_error_handler(LicenseError, _licence_refused)  # the more specific class: Flask picks this one
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
