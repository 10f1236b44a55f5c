"""Typed errors. Every error carries a stable ``code`` (the REST API's error code), the HTTP
status an API should answer with, and one sentence a person can act on. Callers catch
:class:`ChexnetError` once."""


class ChexnetError(Exception):
    """Base class: a failure with a code, an HTTP status and one actionable sentence."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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
