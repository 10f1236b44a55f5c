"""``create_app(settings)``: the Flask application factory (tests pass their own settings)."""

import logging
import time

from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider

from chexnet.api import errors, monitor, routes
from chexnet.api.observability import REQUEST_ID_HEADER, request_id_from_headers
from chexnet.runtime import configure
from chexnet.service import AuditLog, Metrics, Service, Settings
from chexnet.service.observability import request_id
from licensing import flask_auth

access_log = logging.getLogger("chexnet.access")
# Room for multipart framing around a file of exactly the upload limit.
MULTIPART_OVERHEAD = 1 << 20


def create_app(settings: Settings, *, start: bool = True) -> Flask:
    configure()  # an application made here reads DICOM however it is served (idempotent)
    app = Flask(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_upload_bytes + MULTIPART_OVERHEAD, JSON_SORT_KEYS=False)
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own, whose options these are
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    metrics = Metrics()
    service = Service(settings, metrics, AuditLog(settings.audit_log))
    app.extensions.update({"chexnet": service, "chexnet.metrics": metrics})
    flask_auth.init_app(app, lambda: service.verifier)  # None until the licence keys load
    errors.init_app(app)
    app.register_blueprint(routes.api)
    app.register_blueprint(routes.pages)
    monitor.init_app(app)  # /monitor, its data, and refused predictions counted into the roll-up
    _register_request_hooks(app, metrics, settings)
    if start:
        service.start()
    return app


def _register_request_hooks(app: Flask, metrics: Metrics, settings: Settings) -> None:
    @app.before_request
    def begin():
        g.request_id = request_id_from_headers()
        g.request_id_token = request_id.set(g.request_id)  # for the service's log lines of this request
        g.started = time.perf_counter()
        g.upload_limit_mb = settings.max_upload_mb

    @app.after_request
    def finish(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        code = _error_code(response)
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.requests.labels(endpoint, str(response.status_code), code).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        access_log.info(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "error_code": code or None,
                    "ms": round(elapsed * 1000, 1),
                    "sub": g.license.sub if g.get("license") else None,
                }
            },
        )
        return response

    @app.teardown_request
    def forget(_exc):
        if "request_id_token" in g:
            request_id.reset(g.request_id_token)


def _error_code(response) -> str:
    if response.status_code < 400 or not response.is_json:
        return ""
    body = response.get_json(silent=True) or {}
    return str((body.get("error") or {}).get("code", "")) if isinstance(body, dict) else ""
