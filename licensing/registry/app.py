"""Flask app: staff sign in, register servers, issue, list, search and revoke tokens, download the
signed revocation list. Three blueprints, ``auth`` (sign in and out), ``pages`` (HTML) and ``api`` (JSON
under /api), share one session and CSRF token; every refusal is a :class:`RegistryError` that one handler
answers as JSON under /api and as a page elsewhere. The private key never leaves the process: no route
returns it."""

import functools
import re
import secrets
import sqlite3

import jwt
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash, generate_password_hash

from licensing.host import normalise
from licensing.registry.errors import CsrfFailed, HttpError, InputError, LoginRequired, RegistryError
from licensing.registry.settings import RegistrySettings, SettingsError
from licensing.registry.store import MAX_ACTOR, MAX_TEXT, Store, StoreError, bounded
from licensing.registry.throttle import SignInThrottle
from licensing.revocation import sign_revocation_list
from licensing.tokens import MAX_CLUSTER_NODES, issue_token

MAX_DAYS = 3660
MAX_FEATURES = 32
FEATURE = re.compile(r"[A-Za-z0-9_-]{1,64}")

auth = Blueprint("auth", __name__)
pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__, url_prefix="/api")


def create_app(settings: RegistrySettings) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=1 << 20,
    )
    CSRFProtect(app)
    try:
        store = Store(settings.db_path)
    except StoreError as exc:
        raise SettingsError(f"LICENSING_DB: {exc}") from None
    app.extensions["registry"] = {
        "store": store,
        "key": settings.signing_key(),
        "settings": settings,
        "throttle": SignInThrottle(
            settings.max_failed_per_user, settings.max_failed_per_address, settings.throttle_window_s
        ),
        # Unknown users are checked against this, made like the users' hashes, so they cost the same time.
        "dummy_hash": generate_password_hash(secrets.token_hex(16), method=settings.hash_method()),
    }
    _register_errors(app)
    for blueprint in (auth, pages, api):
        app.register_blueprint(blueprint)
    return app


def _ctx():
    return current_app.extensions["registry"]


def _signed_in_user() -> str | None:
    sid, settings = session.get("sid"), _ctx()["settings"]
    if not isinstance(sid, str):
        return None
    return _ctx()["store"].session_user(sid, settings.session_idle_s, settings.session_max_s)


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        user = _signed_in_user()
        if user is None:
            session.clear()
            raise LoginRequired("Sign in first (POST /login).")
        g.user = user
        return view(*args, **kwargs)

    return wrapper


def error_response(err: RegistryError):
    """The one answer to a refusal: its protocol as JSON under /api (unknown /api paths too), else its page."""
    if request.path.startswith("/api/"):
        return jsonify(error={"code": err.code, "message": err.message}), err.status, err.headers
    return err.page()


def _register_errors(app: Flask) -> None:
    # App-wide, not per blueprint: unknown paths and methods (404, 405) match no blueprint.
    app.register_error_handler(RegistryError, error_response)
    app.register_error_handler(CSRFError, lambda err: error_response(CsrfFailed(err.description)))
    app.register_error_handler(HTTPException, lambda err: error_response(HttpError(err)))


def _page_after_sign_in(target: str) -> str:
    """TARGET rebuilt from the GET route it names in this app's URL map, never echoed; the index for
    anything else (control characters, backslashes, schemes, encoded slashes, unknown paths)."""
    try:
        adapter = current_app.create_url_adapter(request)
        assert adapter is not None  # None only outside a request
        endpoint, values = adapter.match(target, method="GET")
    except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect
        return url_for("pages.index")
    return url_for(endpoint, **values)


@auth.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html")
    ctx, address = _ctx(), request.remote_addr or "?"
    user, password = bounded(request.form.get("username", ""), MAX_ACTOR), request.form.get("password", "")[:1024]
    wait = ctx["throttle"].retry_after(user, address)
    if wait:
        ctx["store"].audit(user or "?", "login.throttled", {"remote": address})
        flash(
            f"Too many failed sign-ins for this user or from this address; try again in {wait // 60 + 1} minutes.",
            "error",
        )
        return render_template("login.html"), 429, {"Retry-After": str(wait)}
    stored = ctx["settings"].users.get(user)
    valid = check_password_hash(stored or ctx["dummy_hash"], password) and stored is not None
    if not valid:
        ctx["throttle"].failed(user, address)
        ctx["store"].audit(user or "?", "login.failed", {"remote": address})
        flash("Unknown user or wrong password.", "error")
        return render_template("login.html"), 401
    ctx["throttle"].succeeded(user)
    session.clear()
    session["sid"] = ctx["store"].create_session(user)  # server-side: sign-out ends it for every copy of the cookie
    ctx["store"].audit(user, "login", {"remote": address})
    return redirect(_page_after_sign_in(request.args.get("next", "")))


@auth.post("/logout")
@login_required
def logout():
    _ctx()["store"].audit(g.user, "logout", {})
    _ctx()["store"].end_session(session["sid"])
    session.clear()
    return redirect(url_for("auth.login"))


def _text(form, name: str) -> str:
    value = str(form.get(name, "")).strip()
    if len(value) > MAX_TEXT:
        raise InputError(f"{name} must be at most {MAX_TEXT} characters.")
    return value


def _server_form(form) -> tuple[str, str, str]:
    customer, site = _text(form, "customer"), _text(form, "site")
    if not customer or not site:
        raise InputError("Customer and site are required.")
    try:
        return customer, site, normalise(str(form.get("product_uuid", ""))[:64])
    except ValueError as exc:
        raise InputError(f"product_uuid: {exc}.") from None


def _servers(form) -> list[dict]:
    """The registered servers a token is for: server_id (one server), or server_ids (a cluster licence:
    a JSON list, or a comma list in the page's form), all of one customer."""
    raw = form.get("server_ids", form.get("server_id", ""))
    items = raw if isinstance(raw, list) else str(raw)[:4096].split(",")
    try:
        ids = sorted({int(str(item).strip()) for item in items[: MAX_CLUSTER_NODES + 1] if str(item).strip()})
    except ValueError:
        raise InputError("server_id must be a number, and server_ids a list of them.") from None
    if not 1 <= len(ids) <= MAX_CLUSTER_NODES:
        raise InputError(f"A token covers 1 to {MAX_CLUSTER_NODES} registered servers.")
    servers = [_ctx()["store"].server(server_id) or {"id": server_id} for server_id in ids]
    missing = [str(s["id"]) for s in servers if "customer" not in s]
    if missing:
        raise InputError(f"No registered server has id {', '.join(missing)}.")
    if len({s["customer"] for s in servers}) > 1:
        raise InputError("A cluster licence covers servers of one customer; these are registered to several.")
    return servers


def _issue(form) -> tuple[dict, str]:
    store = _ctx()["store"]
    servers = _servers(form)
    try:
        days = float(form.get("days", ""))
    except (TypeError, ValueError):
        raise InputError("days must be a number of days.") from None
    subject = _text(form, "subject")
    features = [f.strip() for f in str(form.get("features", ""))[:4096].split(",") if f.strip()]
    if len(features) > MAX_FEATURES or not all(FEATURE.fullmatch(f) for f in features):
        raise InputError(f"Features must be at most {MAX_FEATURES} model ids of letters, digits, '_' and '-'.")
    if not subject or not features or not 0 < days <= MAX_DAYS:
        raise InputError(f"Subject and at least one feature are required, and days must be 1..{MAX_DAYS}.")
    token = issue_token(
        _ctx()["key"],
        product_uuid=[s["product_uuid"] for s in servers],
        customer=servers[0]["customer"],
        subject=subject,
        days=days,
        features=features,
        kid=_ctx()["settings"].kid,
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    store.add_token(g.user, [s["id"] for s in servers], claims, token)
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


@pages.get("/")
@login_required
def index():
    store, query = _ctx()["store"], request.args.get("q", "").strip()[:MAX_TEXT]
    return render_template("index.html", servers=store.servers(), tokens=store.tokens(query), query=query)


@pages.post("/servers")
@login_required
def register_server():
    customer, site, product_uuid = _server_form(request.form)
    try:
        _ctx()["store"].add_server(g.user, customer, site, product_uuid)
    except sqlite3.IntegrityError as exc:  # one server per product_uuid
        raise InputError(f"Server {product_uuid} is already registered.") from exc
    flash(f"Registered {customer} / {site}.", "ok")
    return redirect(url_for("pages.index"))


@pages.post("/tokens")
@login_required
def issue():
    claims, token = _issue(request.form)
    # The only time the token is shown: the registry keeps its sha256, never the token.
    return render_template("issued.html", claims=claims, token=token), 200, {"Cache-Control": "no-store"}


@pages.post("/tokens/<jti>/revoke")
@login_required
def revoke(jti):
    _revoke(jti)
    flash(f"Revoked {jti}. Download the revocation list and install it on the server.", "ok")
    return redirect(url_for("pages.index"))


@pages.get("/revocations.jwt")
@login_required
def revocations():
    return (
        _revocation_list(),
        200,
        {"Content-Type": "application/jwt", "Content-Disposition": "attachment; filename=revocations.jwt"},
    )


@pages.get("/audit")
@login_required
def audit():
    return render_template("audit.html", rows=_ctx()["store"].audit_trail())


@api.get("/csrf")
@login_required
def csrf():
    return jsonify(csrf_token=generate_csrf())


@api.get("/servers")
@login_required
def api_servers():
    return jsonify(servers=_ctx()["store"].servers())


@api.post("/servers")
@login_required
def api_register_server():
    customer, site, product_uuid = _server_form(request.get_json(silent=True) or {})
    try:
        server_id = _ctx()["store"].add_server(g.user, customer, site, product_uuid)
    except sqlite3.IntegrityError as exc:
        raise InputError(f"Server {product_uuid} is already registered.") from exc
    return jsonify(id=server_id, customer=customer, site=site, product_uuid=product_uuid), 201


@api.get("/tokens")
@login_required
def api_tokens():
    return jsonify(tokens=_ctx()["store"].tokens(request.args.get("q", "").strip()[:MAX_TEXT]))


@api.post("/tokens")
@login_required
def api_issue():
    claims, token = _issue(request.get_json(silent=True) or {})
    return jsonify(token=token, claims=claims), 201, {"Cache-Control": "no-store"}


@api.post("/tokens/<jti>/revoke")
@login_required
def api_revoke(jti):
    _revoke(jti)
    return jsonify(jti=jti, revoked=True)


@api.get("/revocations")
@login_required
def api_revocations():
    return jsonify(revocation_list=_revocation_list().strip())


@api.get("/audit")
@login_required
def api_audit():
    return jsonify(audit=_ctx()["store"].audit_trail())
