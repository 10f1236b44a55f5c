"""One JSON error shape for every failure (DESIGN.md): API clients never see HTML or a traceback."""

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from chexnet.errors import ChexnetError
from licensing.errors import LicenseError
from licensing.flask_auth import license_error_response

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "request_id": g.get("request_id")}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _chexnet_error(err: ChexnetError) -> Response:
    headers = {"Retry-After": str(err.retry_after_s)} if hasattr(err, "retry_after_s") else None
    return error_response(err.status, err.code, err.message, headers)


def _http_error(err: HTTPException) -> Response:
    if err.code == 413:
        limit = g.get("upload_limit_mb")
        message = f"The upload is larger than the {limit} MiB limit." if limit else "The upload is too large."
        return error_response(413, "payload_too_large", message)
    message = {404: "No such endpoint; see /api/v1/docs.", 405: "This endpoint does not accept that HTTP method."}.get(
        err.code, err.description or err.name)
    return error_response(err.code or 500, _HTTP_CODES.get(err.code, "http_error"), message)


def _unexpected(err: Exception) -> Response:
    log.error("unhandled error: %s", type(err).__name__, exc_info=err)
    return error_response(500, "internal_error", "The server failed on this request; quote the request id to support.")


def init_app(app: Flask) -> None:
    app.register_error_handler(ChexnetError, _chexnet_error)
    app.register_error_handler(LicenseError, license_error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
