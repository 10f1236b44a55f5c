"""The REST API (DESIGN.md "REST API", prefix /api/v1), the browser page and the docs page."""

import base64
from concurrent.futures import TimeoutError as FutureTimeout

from flask import Blueprint, Response, current_app, g, jsonify, request, send_from_directory

from chexnet.api.batching import Overloaded
from chexnet.api.openapi import openapi_document
from chexnet.api.service import LoadedModel, Service
from chexnet.errors import InvalidImage, InvalidOption
from chexnet.heatmap import FORMATS
from chexnet.predictor import Prediction, parse_heatmap_spec
from licensing.flask_auth import current_claims, token_required

api = Blueprint("api", __name__, url_prefix="/api/v1")
pages = Blueprint("pages", __name__, static_folder="static", static_url_path="/static")
UPLOAD_FIELDS = ("image", "file")  # "file": the source project's front end


def service() -> Service:
    return current_app.extensions["chexnet"]


@api.get("/health")
def health():
    return jsonify(status="ok")


@api.get("/ready")
def ready():
    problems = service().readiness()
    if not problems:
        return jsonify(status="ready", models=list(service().models), default_model=service().default_model)
    response = jsonify(status="not_ready", reasons=problems,
                       error={"code": "not_ready", "message": problems[0], "request_id": g.get("request_id")})
    response.status_code, response.headers["Retry-After"] = 503, "5"
    return response


@api.get("/models")
@token_required
def models():
    features = set(current_claims().features)
    return jsonify(models=[{**m.info, "licensed": m.info["id"] in features} for m in service().models.values()])


@api.get("/license")
@token_required
def license_info():
    claims = current_claims()
    return jsonify(customer=claims.customer, subject=claims.sub, features=claims.features,
                   expires_at=claims.expires_at, days_left=claims.days_left(), product_uuid=claims.product_uuid)


def _option(name: str, default: str | None = None) -> str | None:
    value = request.form.get(name) if request.mimetype == "multipart/form-data" else None
    return value if value is not None else request.args.get(name, default)


def _upload() -> bytes:
    if request.mimetype == "multipart/form-data":
        for field in UPLOAD_FIELDS:
            if field in request.files:
                return request.files[field].read()
        raise InvalidImage("Send the radiograph in the multipart field 'image'.")
    return request.get_data(cache=False)


def _licensed_model() -> LoadedModel:
    loaded = service().model(_option("model"))
    current_claims().require_feature(loaded.predictor.bundle.id)
    return loaded


def _predict(loaded: LoadedModel, heatmaps: str, heatmap_format: str) -> Prediction:
    predictor, metrics = loaded.predictor, current_app.extensions["chexnet.metrics"]
    spec = parse_heatmap_spec(heatmaps, predictor.bundle.manifest.codes)
    if heatmap_format not in FORMATS:
        raise InvalidOption(f"heatmap_format must be one of {', '.join(FORMATS)}, not '{heatmap_format}'.")
    prepared = predictor.prepare(_upload())
    future = loaded.batcher.submit(prepared.tensor)
    try:
        row = future.result(timeout=service().settings.request_timeout_s)
    except FutureTimeout:
        future.cancel()
        raise Overloaded("The image waited too long for the engine; retry in a few seconds.") from None
    prediction = predictor.report(prepared, row.probabilities, row.cams, row.inference_ms, spec, heatmap_format)
    for stage, ms in prediction.timing_ms.items():
        if stage != "total":
            metrics.stage.labels(predictor.bundle.id, stage).observe(ms / 1000.0)
    current_app.extensions["chexnet.audit"].write({
        "request_id": g.request_id, "sub": current_claims().sub, "customer": current_claims().customer,
        "model": {"id": predictor.bundle.id, "version": predictor.bundle.manifest.version,
                  "demo": predictor.bundle.manifest.demo},
        "input_sha256": prediction.input_sha256, "image": prediction.image,
        "findings": [{k: f[k] for k in ("code", "probability", "positive")} for f in prediction.findings],
    })
    return prediction


@api.post("/predict")
@token_required
def predict():
    prediction = _predict(_licensed_model(), _option("heatmaps", "top"), _option("heatmap_format", "jpeg"))
    return jsonify({"request_id": g.request_id, **prediction.as_dict()})


@api.post("/CXRNet/predict")
@token_required
def cxrnet_predict():
    """The source project's front-end contract: probabilities, one Grad-CAM JPEG, category names."""
    loaded = _licensed_model()
    prediction = _predict(loaded, "top", "jpeg")
    labels = loaded.predictor.bundle.manifest.labels
    (_, overlay), = prediction.heatmaps
    body = {"answer": [f["probability"] for f in prediction.findings],
            "gradcam": base64.b64encode(overlay.data).decode("ascii"),
            "category": [label.name.zh or label.name.en for label in labels],
            "status": "OK", "demo": prediction.model["demo"], "request_id": g.request_id}
    return jsonify(body)


@api.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


@api.get("/docs")
def docs():
    return send_from_directory(pages.static_folder, "docs.html")


@pages.get("/")
def index():
    return send_from_directory(pages.static_folder, "index.html")


@pages.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(current_app.extensions["chexnet.metrics"].registry), mimetype=CONTENT_TYPE_LATEST)
