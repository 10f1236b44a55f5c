"""The error protocol of the product: every error carries a stable ``code`` (the REST API's error code),
the HTTP ``status`` an API answers with, one ``message`` a person can act on, and the response ``headers``
it calls for (``Retry-After``). :class:`ServiceError` is the base of ``chexnet``'s errors; ``licensing``,
which imports nothing from ``chexnet``, has its own base with the same protocol
(``licensing.errors.LicensingError``). Callers catch a base once; the API turns both into the same JSON
in one place, and the OpenAPI document lists the codes of an explicit table of these classes rather than
a hand-typed list."""

from typing import Protocol


class ErrorProtocol(Protocol):
    """What an API needs of an error to answer with it: :class:`ServiceError` and
    ``licensing.errors.LicensingError`` both have it."""

    code: str
    status: int
    message: str

    @property
    def headers(self) -> dict[str, str]: ...


def error_body(err: ErrorProtocol, request_id: str | None = None) -> dict:
    """The JSON error body of the REST API."""
    return {"error": {"code": err.code, "message": err.message, "request_id": request_id}}


class ServiceError(Exception):
    """Base class: a failure with a code, an HTTP status, one actionable sentence and its headers."""

    code = "internal_error"
    status = 500
    retry_after_s: int | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}

    def body(self, request_id: str | None = None) -> dict:
        return error_body(self, request_id)


class ChexnetError(ServiceError):
    """A failure of the service core (images, options, models, engines)."""


class InvalidImage(ChexnetError):
    """The bytes claim to be an image but cannot be decoded into a radiograph."""

    code = "invalid_image"
    status = 400


class CorruptImage(InvalidImage):
    """The file is truncated or damaged."""


class NoPixelData(InvalidImage):
    """A DICOM object without an image in it (a report, a structured document)."""


class MultiFrameImage(InvalidImage):
    """A multi-frame DICOM; the model reads one projection radiograph."""


class UnsupportedMediaType(ChexnetError):
    """The bytes are not PNG, JPEG or DICOM, or use an encoding nothing here can decode."""

    code = "unsupported_media_type"
    status = 415


class UnsupportedTransferSyntax(UnsupportedMediaType):
    """A DICOM compressed with a codec that is not available."""


class PayloadTooLarge(ChexnetError):
    """Too many bytes, or too many pixels (a decompression bomb)."""

    code = "payload_too_large"
    status = 413


class InvalidOption(ChexnetError):
    """A request option has a value outside its allowed set."""

    code = "invalid_option"
    status = 422


class ModelNotFound(ChexnetError):
    """A request names a model bundle that is not loaded."""

    code = "model_not_found"
    status = 404


class BundleError(ChexnetError):
    """A model bundle is missing, corrupt or inconsistent; it must not be served."""

    code = "bundle_invalid"


class EngineUnavailable(ChexnetError):
    """The requested inference engine or device does not exist on this machine."""

    code = "engine_unavailable"


class Overloaded(ChexnetError):
    """Every decode slot or the inference queue is taken; the client should retry after a pause."""

    code = "overloaded"
    status = 503
    retry_after_s = 2


class NotReady(ChexnetError):
    """Models are still loading, or the service cannot serve (see /api/v1/ready)."""

    code = "not_ready"
    status = 503
    retry_after_s = 5


class MonitorUnavailable(ChexnetError):
    """The monitoring roll-up is off, or its file cannot be used (CHEXNET_MONITOR_DB)."""

    code = "monitor_unavailable"
    status = 503
    retry_after_s = 60
