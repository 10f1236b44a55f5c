"""``token_required`` for Flask: ``Authorization: Bearer`` only, JSON errors with the contract codes.

    licensing.flask_auth.init_app(app, verifier)
    @app.get("/api/v1/license")
    @token_required
    def view(): claims = current_claims()
"""

import functools

from flask import Flask, Response, current_app, g, jsonify, request

from licensing.errors import LicenseError, TokenInvalid, TokenMissing
from licensing.tokens import Claims, TokenVerifier

EXTENSION = "licensing"
QUERY_TOKEN_PARAMS = ("token", "access_token", "jwt", "bearer", "auth")


def init_app(app: Flask, verifier: TokenVerifier) -> None:
    app.extensions[EXTENSION] = verifier
    app.register_error_handler(LicenseError, license_error_response)


def license_error_response(err: LicenseError) -> Response:
    body = {"error": {"code": err.code, "message": err.message, "request_id": g.get("request_id")}}
    response = jsonify(body)
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


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
        g.license = current_app.extensions[EXTENSION].verify(bearer_token())
        return view(*args, **kwargs)

    return wrapper


def current_claims() -> Claims:
    return g.license
