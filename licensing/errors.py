"""Licence errors. ``licensing`` stands alone (it imports nothing from ``chexnet``), so it has its own
base, :class:`LicensingError`, with the product's error protocol, the one ``chexnet.errors.ServiceError``
has: a stable ``code``, the HTTP ``status`` an API answers with, one ``message`` a person can act on and
the response ``headers`` it calls for. An API maps both bases to the same JSON error body; callers of the
token checks catch :class:`LicenseError` once."""


class LicensingError(Exception):
    """Base of every ``licensing`` failure: a code, an HTTP status, one actionable sentence and its headers."""

    code = "internal_error"
    status = 500
    retry_after_s: int | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}


class LicenseError(LicensingError):
    """Base: a licence failure with a code, an HTTP status, one actionable sentence and the response
    headers it calls for. No header ever carries client-supplied text."""

    code = "token_invalid"
    status = 401

    @property
    def headers(self) -> dict[str, str]:
        if self.status != 401:
            return super().headers
        return {"WWW-Authenticate": f'Bearer realm="chexnet", error="invalid_token", error_description="{self.code}"'}


class TokenMissing(LicenseError):
    """No usable ``Authorization: Bearer`` header."""

    code = "token_missing"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="chexnet"'}


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


class LicenseNotReady(LicenseError):
    """The licence check cannot decide yet: the keys are still loading, or a configured revocation list is
    not in force (fail closed)."""

    code = "not_ready"
    status = 503
    retry_after_s = 30


class RevocationListOlder(LicenseConfigError):
    """A genuine revocation list at or below the newest one this process or host has accepted."""


class RevocationStateError(LicenseConfigError):
    """The revocation state file cannot be read, locked or written; the next check tries again."""
