"""Issue and verify licence tokens (DESIGN.md "Token (licence) contract").

Each check is its own small function raising one specific error; the defaults verify everything.
"""

import datetime as dt
import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from licensing.errors import ModelNotLicensed, TokenExpired, TokenInvalid, TokenRevoked, WrongHost
from licensing.host import normalise, same_host
from licensing.keys import TrustedKeys, key_id

ISSUER = "chexnet-vendor"
AUDIENCE = "chexnet-api"
TOKEN_TYPE = "chexnet+jwt"
ALGORITHMS = ["EdDSA"]  # an allow-list; the token's own "alg" is never trusted
REQUIRED_CLAIMS = ("iss", "aud", "sub", "customer", "product_uuid", "features", "iat", "nbf", "exp", "jti")
MAX_TOKEN_LENGTH = 4096
HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII: nothing a client sends is echoed, but bound it
DEFAULT_LEEWAY_S = 120
# A token's exp and nbf are stretched by the leeway, so the leeway is how long an expired licence keeps
# working. It is there for clock drift between the vendor's clock and this host's, which NTP keeps under a
# second and an unsynchronised hardware clock under a minute a month; five minutes is Kerberos's
# maximum clock skew (RFC 4120), a long-standing bound for the same problem. More is not drift.
MAX_LEEWAY_S = 300
MAX_CLUSTER_NODES = 64


@dataclass(frozen=True)
class Claims:
    raw: dict

    sub = property(lambda self: self.raw["sub"])
    customer = property(lambda self: self.raw["customer"])
    product_uuid = property(lambda self: self.raw["product_uuid"])  # one server's, or a cluster's list

    @property
    def product_uuids(self) -> list[str]:
        value = self.raw["product_uuid"]
        return [value] if isinstance(value, str) else list(value)

    def covers(self, host_uuid: str) -> bool:
        return any(same_host(value, host_uuid) for value in self.product_uuids)

    features = property(lambda self: list(self.raw["features"]))
    jti = property(lambda self: self.raw["jti"])
    exp = property(lambda self: int(self.raw["exp"]))

    @property
    def expires_at(self) -> str:
        return dt.datetime.fromtimestamp(self.exp, dt.timezone.utc).isoformat()

    def days_left(self, now: float | None = None) -> int:
        return max(0, int((self.exp - (time.time() if now is None else now)) // 86400))

    def require_feature(self, model_id: str) -> None:
        if model_id not in self.raw["features"]:
            raise ModelNotLicensed(
                f"This token does not license model '{model_id}' (it licenses: {', '.join(self.features) or 'none'})."
            )


def bound_to(product_uuids: Iterable[str]) -> str | list[str]:
    """The product_uuid claim: one server's UUID, or a cluster licence's sorted list of its nodes' UUIDs."""
    values = sorted({normalise(value) for value in product_uuids})
    if not 1 <= len(values) <= MAX_CLUSTER_NODES:
        raise ValueError(f"a licence covers 1 to {MAX_CLUSTER_NODES} servers, not {len(values)}")
    return values[0] if len(values) == 1 else values


def issue_token(
    private_key: Ed25519PrivateKey,
    *,
    product_uuid: str | Iterable[str],
    customer: str,
    subject: str,
    days: float,
    features: Iterable[str],
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """product_uuid: the server's, or every node's of a cluster (one token for the whole cluster)."""
    now = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "customer": customer,
        "product_uuid": bound_to([product_uuid] if isinstance(product_uuid, str) else product_uuid),
        "features": sorted(set(features)),
        "iat": now,
        "nbf": now,
        "exp": now + int(days * 86400),
        "jti": str(uuid.uuid4()),
    }
    headers = {"typ": TOKEN_TYPE, "kid": kid or key_id(private_key.public_key())}
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers=headers)


def _check_header(token: str) -> dict:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:  # DecodeError, and PyJWT's own header type checks (a numeric kid, ...)
        raise TokenInvalid("The bearer token is not a well-formed JWT.") from None
    for name in ("alg", "typ", "kid"):
        value = header.get(name)
        if value is not None and not (isinstance(value, str) and HEADER_VALUE.fullmatch(value)):
            raise TokenInvalid(f"The token header's '{name}' is not a short printable ASCII string.")
    if header.get("alg") not in ALGORITHMS:
        raise TokenInvalid("The token is not signed with EdDSA; only EdDSA licence tokens are accepted.")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenInvalid(f"The token is not a CheXNet licence (its typ must be {TOKEN_TYPE}).")
    return header


def _check_types(claims: dict) -> None:
    strings = ("sub", "customer", "jti")
    if not all(isinstance(claims[k], str) and claims[k] for k in strings):
        raise TokenInvalid("The token's sub, customer and jti must be non-empty strings.")
    bound = claims["product_uuid"]
    if isinstance(bound, list):
        if not 2 <= len(bound) <= MAX_CLUSTER_NODES or not all(isinstance(v, str) and v for v in bound):
            raise TokenInvalid(f"A cluster token's product_uuid must list 2 to {MAX_CLUSTER_NODES} server UUIDs.")
    elif not (isinstance(bound, str) and bound):
        raise TokenInvalid("The token's product_uuid must be a server's UUID or a list of them.")
    features = claims["features"]
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise TokenInvalid("The token's features must be a list of model ids.")


# Each maker is given an exception of its own row's type (hence Any: a list cannot say so).
_DECODE_ERRORS: list[tuple[type[Exception], Callable[[Any], Exception]]] = [
    (jwt.ExpiredSignatureError, lambda e: TokenExpired("The licence token has expired; ask the vendor for a new one.")),
    (jwt.ImmatureSignatureError, lambda e: TokenInvalid("The token is not valid yet; check this server's clock.")),
    (jwt.MissingRequiredClaimError, lambda e: TokenInvalid(f"The token lacks the required claim '{e.claim}'.")),
    (
        jwt.InvalidAudienceError,
        lambda e: TokenInvalid(f"The token is not meant for this API (aud must be {AUDIENCE})."),
    ),
    (jwt.InvalidIssuerError, lambda e: TokenInvalid(f"The token was not issued by the vendor (iss must be {ISSUER}).")),
    (jwt.InvalidSignatureError, lambda e: TokenInvalid("The token's signature does not verify with the vendor's key.")),
    (jwt.InvalidTokenError, lambda e: TokenInvalid(f"The token is invalid ({e}).")),
]


class TokenVerifier:
    """Verifies tokens for this host. Signature checks are cached per token until its expiry, so
    the hot path is a dictionary lookup; host binding and revocation are checked on every call."""

    def __init__(
        self,
        keys: TrustedKeys,
        host_uuid: str,
        *,
        leeway: float = DEFAULT_LEEWAY_S,
        revocations=None,
        cache_size: int = 1024,
    ):
        self.keys = keys
        self.host_uuid = normalise(host_uuid)
        self.leeway = leeway
        self.revocations = revocations
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(self, token: str) -> Claims:
        claims = self._cached(token) or self._decode(token)
        if not claims.covers(self.host_uuid):
            raise WrongHost(
                "This token was issued for another server; request one that lists this server's product_uuid."
            )
        if self.revocations is not None and self.revocations.is_revoked(
            claims.jti, claims.sub
        ):  # raises while no list is in force
            raise TokenRevoked("This token has been revoked by the vendor.")
        return claims

    def _cached(self, token: str) -> Claims | None:
        key = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        with self._lock:
            claims = self._cache.get(key)
            if claims is None:
                return None
            if time.time() > claims.exp + self.leeway:
                del self._cache[key]
                return None  # re-verified below, which raises TokenExpired
            self._cache.move_to_end(key)
            return claims

    def _decode(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid(
                f"The bearer token is longer than {MAX_TOKEN_LENGTH} characters; it is not a licence token."
            )
        header = _check_header(token)
        key = self.keys.for_kid(header.get("kid"))
        if key is None:
            raise TokenInvalid(
                "The token's key id is not one this server trusts; ask the vendor for a token signed with an installed key."
            )
        try:
            raw = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.InvalidTokenError as exc:
            raise next(make(exc) for kind, make in _DECODE_ERRORS if isinstance(exc, kind)) from None
        _check_types(raw)
        claims = Claims(raw)
        with self._lock:
            self._cache[hashlib.sha256(token.encode()).hexdigest()] = claims
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims
