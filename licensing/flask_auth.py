"""``token_required`` for Flask: ``Authorization: Bearer`` only. Failures raise :class:`LicenseError`;
the application's one error handler turns them into JSON (``chexnet.api.errors``).

    licensing.flask_auth.init_app(app, verifier)          # a TokenVerifier, or
    licensing.flask_auth.init_app(app, lambda: verifier)  # a provider: None while the keys load
    @app.get("/api/v1/license")
    @token_required
    def view(): claims = current_claims()
"""

import functools
from collections.abc import Callable

from flask import Flask, current_app, g, request

from licensing.errors import LicenseNotReady, TokenInvalid, TokenMissing
from licensing.tokens import Claims, TokenVerifier

EXTENSION = "licensing"
QUERY_TOKEN_PARAMS = ("token", "access_token", "jwt", "bearer", "auth")
VerifierProvider = Callable[[], TokenVerifier | None]


def init_app(app: Flask, verifier: TokenVerifier | VerifierProvider) -> None:
    app.extensions[EXTENSION] = verifier if callable(verifier) else (lambda: verifier)


def verifier() -> TokenVerifier:
    current = current_app.extensions[EXTENSION]()
    if current is None:
        raise LicenseNotReady("The licence keys are not loaded yet; see /api/v1/ready.")
    return current


def bearer_token() -> str:
    if any(name in request.args for name in QUERY_TOKEN_PARAMS):
        raise TokenInvalid("Tokens in the URL are refused (URLs end up in logs); send 'Authorization: Bearer <token>'.")
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise TokenMissing("This endpoint needs a licence token: send 'Authorization: Bearer <token>'.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise TokenMissing("That Authorization scheme is not accepted; send 'Authorization: Bearer <token>'.")
    token = token.strip()
    if not token:
        raise TokenMissing("The Authorization header says Bearer but carries no token.")
    return token


def token_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.license = verifier().verify(bearer_token())
        return view(*args, **kwargs)

    return wrapper


def current_claims() -> Claims:
    return g.license
