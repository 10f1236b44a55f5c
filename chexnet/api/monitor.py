"""The monitoring page (/monitor) and its data (GET /api/v1/monitor, token), and the refusals of prediction
requests counted into the roll-up. The page is static; it draws with Chart.js, vendored at build time by
scripts/vendor-js.sh into chexnet/api/vendor/ (never fetched at run time)."""

import logging
import os

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory

from chexnet.api.errors import NotFound
from chexnet.api.routes import STATIC_FOLDER, service
from chexnet.errors import InvalidOption
from chexnet.service.monitoring import WINDOWS
from licensing.flask_auth import token_required

log = logging.getLogger(__name__)
monitor = Blueprint("monitor", __name__)
VENDOR_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
CHART_JS = "chart.umd.min.js"
# The requests whose error answers are refusals of a radiograph (404s of stray URLs are not).
PREDICT_RULES = ("/api/v1/predict", "/api/v1/CXRNet/predict")


@monitor.get("/api/v1/monitor")
@token_required
def data():
    given = request.args.getlist("window")
    window = (given[0] if given else "") or "day"  # an empty option means its default, as elsewhere
    if len(given) > 1 or window not in WINDOWS:
        raise InvalidOption(f"window must be one of {', '.join(WINDOWS)}, given once, not '{window[:20]}'.")
    return jsonify(service().monitor_report(window))


@monitor.get("/monitor")
def page():
    return send_from_directory(STATIC_FOLDER, "monitor.html")


@monitor.get("/monitor/chart.js")
def chart_js():
    if not os.path.isfile(os.path.join(VENDOR_FOLDER, CHART_JS)):
        raise NotFound(
            f"The chart library is not in this installation (chexnet/api/vendor/{CHART_JS}); "
            "build the package with scripts/vendor-js.sh first."
        )
    return send_from_directory(VENDOR_FOLDER, CHART_JS, max_age=3600)


def _count_refusal(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule else None
    rollup = current_app.extensions["chexnet"].monitor
    if rule in PREDICT_RULES and response.status_code >= 400 and rollup is not None and response.is_json:
        body = response.get_json(silent=True)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            rollup.refusal(error["code"])
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(monitor)
    app.after_request(_count_refusal)
    if not os.path.isfile(os.path.join(VENDOR_FOLDER, CHART_JS)):
        log.error("the /monitor page cannot draw: %s is missing (scripts/vendor-js.sh)", CHART_JS)
