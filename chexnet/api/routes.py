"""The REST API (DESIGN.md "REST API", prefix /api/v1), the browser page and the docs page."""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import swagger_ui_bundle
from flask import Blueprint, Response, current_app, g, jsonify, request, send_from_directory
from werkzeug.exceptions import NotFound

from chexnet.api.fhir import MEDIA_TYPE as FHIR_JSON
from chexnet.api.fhir import diagnostic_report
from chexnet.api.openapi import openapi_document
from chexnet.api.responses import cxrnet_body, multipart_related, prediction_body
from chexnet.errors import InvalidImage, InvalidOption, NotReady
from chexnet.options import PredictOptions
from chexnet.predictor import Prediction, Stopwatch
from chexnet.service import Service
from licensing.flask_auth import current_claims, token_required

api = Blueprint("api", __name__, url_prefix="/api/v1")
# The browser page, the docs page and their files (the folder Flask would make of static_folder="static").
STATIC_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
pages = Blueprint("pages", __name__, static_folder=STATIC_FOLDER, static_url_path="/static")
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
        return jsonify(
            status="ready",
            models=list(service().models),
            default_model=service().default_model,
            warnings=service().warnings(),
        )
    err = NotReady(problems[0])
    response = jsonify(status="not_ready", reasons=problems, **err.body(g.get("request_id")))
    response.status_code = err.status
    response.headers.update(err.headers)
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
    return jsonify(
        customer=claims.customer,
        subject=claims.sub,
        features=claims.features,
        expires_at=claims.expires_at,
        days_left=claims.days_left(),
        product_uuid=claims.product_uuid,
    )


def _option(name: str) -> str | None:
    """One option from the form fields or the query; given more than once, it is ambiguous: 422."""
    values = request.form.getlist(name) if request.mimetype == "multipart/form-data" else []
    values += request.args.getlist(name)
    if len(values) > 1:
        raise InvalidOption(f"{name} is given {len(values)} times (form fields and query together); give it once.")
    return values[0] if values else None


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Time a stage of this request that the core does not see (parsing the upload, making the response body);
    _observe_stages reports them once the request's model is known."""
    clock = Stopwatch()
    try:
        yield
    finally:
        wall, cpu = g.setdefault("stages", {}).get(name, (0.0, 0.0))
        g.stages[name] = (wall + clock.wall_ms(), cpu + clock.cpu_ms())


def _observe_stages(prediction: Prediction) -> None:
    metrics = current_app.extensions["chexnet.metrics"]
    for name, (wall, cpu) in g.get("stages", {}).items():
        metrics.observe_stage(prediction.model.id, name, wall, cpu)


def _upload() -> bytes:
    """The radiograph's bytes; the core calls this inside a decode slot, so waiting uploads stay unread."""
    with _stage("parse"):
        if request.mimetype == "multipart/form-data":
            for field in UPLOAD_FIELDS:
                if field in request.files:
                    return request.files[field].read()
            raise InvalidImage("Send the radiograph in the multipart field 'image'.")
        return request.get_data(cache=False)


_ZERO_Q = re.compile(r"(^|;)\s*q\s*=\s*0(\.0{0,3})?\s*(;|$)", re.IGNORECASE)


def _accepted_output() -> str | None:
    """output=dicom when the client asks as DICOMweb does: Accept: multipart/related; type="application/dicom";
    output=fhir for Accept: application/fhir+json (the first of the two the header names)."""
    for media_range in request.headers.get("Accept", "").split(","):
        kind, _, params = media_range.partition(";")
        if _ZERO_Q.search(params):  # q=0: "not acceptable" (RFC 9110 12.4.2)
            continue
        if kind.strip().lower() == "multipart/related" and "application/dicom" in params.lower():
            return "dicom"
        if kind.strip().lower() == FHIR_JSON:
            return "fhir"
    return None


def _predict(options: PredictOptions) -> Prediction:
    return service().predict(_upload, options, current_claims(), g.request_id)


@api.post("/predict")
@token_required
def predict():
    with _stage("parse"):  # a multipart body is parsed at the first option read from it
        options = PredictOptions.parse(
            _option("model"), _option("heatmaps"), _option("heatmap_format"), _option("output") or _accepted_output()
        )
    prediction = _predict(options)
    with _stage("response"):
        if options.output == "dicom":
            body, content_type = multipart_related(service().dicom_results(prediction))
            response = Response(body, content_type=content_type)
        elif options.output == "fhir":  # errors stay the product's JSON errors (application/json)
            response = jsonify(diagnostic_report(prediction, g.request_id))
            response.mimetype = FHIR_JSON
        else:
            response = jsonify(prediction_body(prediction, g.request_id))
    _observe_stages(prediction)
    return response


@api.post("/CXRNet/predict")
@token_required
def cxrnet_predict():
    """The source project's front-end contract: probabilities, one Grad-CAM JPEG, category names."""
    with _stage("parse"):
        options = PredictOptions.parse(_option("model"), "top", "jpeg")
    prediction = _predict(options)
    with _stage("response"):
        categories = [f.label.name.zh or f.label.name.en for f in prediction.findings]
        response = jsonify(cxrnet_body(prediction, categories, g.request_id))
    _observe_stages(prediction)
    return response


@api.get("/openapi.json")
def openapi():
    """The document, with the enums of what this server has loaded (model ids, label codes)."""
    loaded = {} if service().loading else {m: loaded.codes for m, loaded in service().models.items()}
    return jsonify(openapi_document(loaded))


# Swagger UI's files, from the swagger-ui-bundle package (no CDN: hospitals have no internet).
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-16x16.png", "favicon-32x32.png")


@api.get("/docs")
def docs():
    return send_from_directory(STATIC_FOLDER, "docs.html")


@api.get("/docs/<name>")
def docs_asset(name: str):
    if name not in SWAGGER_UI_FILES:
        raise NotFound()
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, name, max_age=3600)


@pages.get("/")
def index():
    return send_from_directory(STATIC_FOLDER, "index.html")


@pages.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(current_app.extensions["chexnet.metrics"].registry), mimetype=CONTENT_TYPE_LATEST)
