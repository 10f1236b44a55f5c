"""Flask app: staff sign in, register servers, issue, list, search and revoke tokens, download the
signed revocation list. HTML pages and a JSON API (under /api) share one session and CSRF token.
The private key never leaves the process: no route returns it."""

import functools
import sqlite3

import jwt
from flask import Flask, abort, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash

from licensing.host import normalise
from licensing.registry.settings import RegistrySettings
from licensing.registry.store import Store
from licensing.revocation import sign_revocation_list
from licensing.tokens import issue_token

MAX_DAYS = 3660


class InputError(Exception):
    pass


def create_app(settings: RegistrySettings) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=settings.session_cookie_secure,
                      WTF_CSRF_TIME_LIMIT=None, MAX_CONTENT_LENGTH=1 << 20)
    CSRFProtect(app)
    app.extensions["registry"] = {"store": Store(settings.db_path), "key": settings.signing_key(),
                                  "settings": settings}
    _register_errors(app)
    _register_auth(app)
    _register_pages(app)
    _register_api(app)
    return app


def _ctx():
    from flask import current_app

    return current_app.extensions["registry"]


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not session.get("user"):
            if request.path.startswith("/api/"):
                return jsonify(error={"code": "login_required", "message": "Sign in first (POST /login)."}), 401
            return redirect(url_for("login", next=request.path))
        g.user = session["user"]
        return view(*args, **kwargs)

    return wrapper


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(err):
        if request.path.startswith("/api/"):
            return jsonify(error={"code": "csrf_failed", "message": f"{err.description} Send X-CSRFToken from GET /api/csrf."}), 400
        return render_template("message.html", title="Form expired", message=err.description), 400

    @app.errorhandler(InputError)
    def input_error(err):
        if request.path.startswith("/api/"):
            return jsonify(error={"code": "invalid_input", "message": str(err)}), 422
        flash(str(err), "error")
        return redirect(url_for("index"))

    @app.errorhandler(HTTPException)
    def http_error(err):
        if request.path.startswith("/api/"):
            return jsonify(error={"code": err.name.lower().replace(" ", "_"), "message": err.description}), err.code
        return render_template("message.html", title=err.name, message=err.description), err.code


def _register_auth(app: Flask) -> None:
    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return render_template("login.html")
        user, password = request.form.get("username", ""), request.form.get("password", "")
        stored = _ctx()["settings"].users.get(user)
        if not stored or not check_password_hash(stored, password):
            _ctx()["store"].audit(user or "?", "login.failed", {"remote": request.remote_addr})
            flash("Unknown user or wrong password.", "error")
            return render_template("login.html"), 401
        session.clear()
        session["user"] = user
        _ctx()["store"].audit(user, "login", {"remote": request.remote_addr})
        target = request.args.get("next", "")
        return redirect(target if target.startswith("/") and not target.startswith("//") else url_for("index"))

    @app.post("/logout")
    @login_required
    def logout():
        _ctx()["store"].audit(g.user, "logout", {})
        session.clear()
        return redirect(url_for("login"))


def _server_form(form) -> tuple[str, str, str]:
    customer, site = form.get("customer", "").strip(), form.get("site", "").strip()
    if not customer or not site:
        raise InputError("Customer and site are required.")
    try:
        return customer, site, normalise(form.get("product_uuid", ""))
    except ValueError as exc:
        raise InputError(f"product_uuid: {exc}.") from None


def _issue(form) -> tuple[dict, str]:
    store = _ctx()["store"]
    try:
        server_id, days = int(form.get("server_id", "")), float(form.get("days", ""))
    except ValueError:
        raise InputError("server_id must be a number and days a number of days.") from None
    server = store.server(server_id)
    if server is None:
        raise InputError(f"No registered server has id {server_id}.")
    subject = form.get("subject", "").strip()
    features = [f.strip() for f in str(form.get("features", "")).split(",") if f.strip()]
    if not subject or not features or not 0 < days <= MAX_DAYS:
        raise InputError(f"Subject and at least one feature are required, and days must be 1..{MAX_DAYS}.")
    token = issue_token(_ctx()["key"], product_uuid=server["product_uuid"], customer=server["customer"],
                        subject=subject, days=days, features=features, kid=_ctx()["settings"].kid)
    claims = jwt.decode(token, options={"verify_signature": False})
    store.add_token(g.user, server_id, claims, token)
    return claims, token


def _revoke(jti: str) -> None:
    store = _ctx()["store"]
    if not any(t["jti"] == jti for t in store.tokens(jti)):
        abort(404, description=f"No issued token has jti {jti}.")
    if not store.revoke(g.user, jti):
        raise InputError(f"Token {jti} is already revoked.")


def _revocation_list() -> str:
    store = _ctx()["store"]
    store.audit(g.user, "revocations.download", {"count": len(store.revoked_jtis())})
    return sign_revocation_list(_ctx()["key"], store.revoked_jtis(), [], kid=_ctx()["settings"].kid) + "\n"


def _register_pages(app: Flask) -> None:
    @app.get("/")
    @login_required
    def index():
        store, query = _ctx()["store"], request.args.get("q", "").strip()
        return render_template("index.html", servers=store.servers(), tokens=store.tokens(query), query=query)

    @app.post("/servers")
    @login_required
    def register_server():
        customer, site, product_uuid = _server_form(request.form)
        try:
            _ctx()["store"].add_server(g.user, customer, site, product_uuid)
        except sqlite3.IntegrityError as exc:  # one server per product_uuid
            raise InputError(f"Server {product_uuid} is already registered.") from exc
        flash(f"Registered {customer} / {site}.", "ok")
        return redirect(url_for("index"))

    @app.post("/tokens")
    @login_required
    def issue():
        claims, token = _issue(request.form)
        return render_template("issued.html", claims=claims, token=token)

    @app.post("/tokens/<jti>/revoke")
    @login_required
    def revoke(jti):
        _revoke(jti)
        flash(f"Revoked {jti}. Download the revocation list and install it on the server.", "ok")
        return redirect(url_for("index"))

    @app.get("/revocations.jwt")
    @login_required
    def revocations():
        return _revocation_list(), 200, {"Content-Type": "application/jwt",
                                         "Content-Disposition": "attachment; filename=revocations.jwt"}

    @app.get("/audit")
    @login_required
    def audit():
        return render_template("audit.html", rows=_ctx()["store"].audit_trail())


def _register_api(app: Flask) -> None:
    @app.get("/api/csrf")
    @login_required
    def csrf():
        return jsonify(csrf_token=generate_csrf())

    @app.get("/api/servers")
    @login_required
    def api_servers():
        return jsonify(servers=_ctx()["store"].servers())

    @app.post("/api/servers")
    @login_required
    def api_register_server():
        customer, site, product_uuid = _server_form(request.get_json(silent=True) or {})
        try:
            server_id = _ctx()["store"].add_server(g.user, customer, site, product_uuid)
        except sqlite3.IntegrityError as exc:
            raise InputError(f"Server {product_uuid} is already registered.") from exc
        return jsonify(id=server_id, customer=customer, site=site, product_uuid=product_uuid), 201

    @app.get("/api/tokens")
    @login_required
    def api_tokens():
        return jsonify(tokens=_ctx()["store"].tokens(request.args.get("q", "").strip()))

    @app.post("/api/tokens")
    @login_required
    def api_issue():
        claims, token = _issue(request.get_json(silent=True) or {})
        return jsonify(token=token, claims=claims), 201

    @app.post("/api/tokens/<jti>/revoke")
    @login_required
    def api_revoke(jti):
        _revoke(jti)
        return jsonify(jti=jti, revoked=True)

    @app.get("/api/revocations")
    @login_required
    def api_revocations():
        return jsonify(revocation_list=_revocation_list().strip())

    @app.get("/api/audit")
    @login_required
    def api_audit():
        return jsonify(audit=_ctx()["store"].audit_trail())
