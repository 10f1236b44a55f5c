"""Licence errors. Each carries the REST API error code, the HTTP status and one sentence;
callers catch :class:`LicenseError` once."""


class LicenseError(Exception):
    """Base: a licence failure with a code, an HTTP status and one actionable sentence."""

    code = "token_invalid"
    status = 401

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TokenMissing(LicenseError):
    """No usable ``Authorization: Bearer`` header."""

    code = "token_missing"


class TokenInvalid(LicenseError):
    """Malformed, badly signed, wrong header or claims, or not yet valid."""

    code = "token_invalid"


class TokenExpired(LicenseError):
    """Past its ``exp`` (beyond the clock-drift leeway)."""

    code = "token_expired"


class TokenRevoked(LicenseError):
    """Its ``jti`` or ``sub`` is on the vendor-signed revocation list."""

    code = "token_revoked"


class WrongHost(LicenseError):
    """A genuine token issued for another server's product_uuid."""

    code = "wrong_host"
    status = 403


class ModelNotLicensed(LicenseError):
    """A genuine token whose ``features`` do not include the requested model."""

    code = "model_not_licensed"
    status = 403


class LicenseConfigError(LicenseError):
    """This server's licence setup is unusable (keys, host identity, revocation list)."""

    code = "license_config"
    status = 503
