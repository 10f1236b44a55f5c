"""The OpenAPI 3.1 document of the REST API. Tests validate real responses against these schemas.
Error codes come from the error classes (:func:`chexnet.errors.error_classes`), engines from the
engine table."""

import licensing.errors  # noqa: F401  (defines the licence error classes)
from chexnet import __version__
from chexnet.api import errors as _api_errors  # noqa: F401  (defines the HTTP error classes)
from chexnet.engines import DEVICES, ENGINES
from chexnet.errors import error_classes
from chexnet.heatmap import FORMATS
from chexnet.options import HEATMAP_MODES

# Statuses nginx answers by itself in front of the service (nginx/errors.conf), with their codes.
NGINX_ERRORS = {400: ["bad_request"], 404: ["not_found"], 405: ["method_not_allowed"], 413: ["payload_too_large"],
                414: ["uri_too_long"], 429: ["rate_limited"], 500: ["internal_error"], 502: ["not_ready"],
                503: ["overloaded", "not_ready"], 504: ["overloaded"]}


def error_codes_by_status() -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    for cls in error_classes():
        found.setdefault(cls.status, set()).add(cls.code)
    for status, codes in NGINX_ERRORS.items():
        found.setdefault(status, set()).update(codes)
    return {status: sorted(codes) for status, codes in sorted(found.items())}


_ERROR_CODES = sorted({code for codes in error_codes_by_status().values() for code in codes})


def _obj(properties: dict, required: list[str] | None = None, extra: bool = True) -> dict:
    schema = {"type": "object", "properties": properties, "required": required or list(properties)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_NUMBER01 = {"type": "number", "minimum": 0, "maximum": 1}
_MODEL_REF = _obj({"id": {"type": "string"}, "version": {"type": "string"}, "demo": {"type": "boolean"},
                   "engine": {"enum": list(ENGINES)}, "device": {"enum": [d for d in DEVICES if d != "auto"]}})
_LABEL = _obj({"code": {"type": "string"}, "threshold": _NUMBER01,
               "name": _obj({"en": {"type": "string"}, "zh": {"type": ["string", "null"]}}, ["en"])})

SCHEMAS = {
    "Error": _obj({"error": _obj({"code": {"enum": _ERROR_CODES}, "message": {"type": "string"},
                                  "request_id": {"type": ["string", "null"]}})}),
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj({"status": {"const": "ready"}, "models": {"type": "array", "items": {"type": "string"}},
                   "default_model": {"type": "string"}}),
    "NotReady": _obj({"status": {"const": "not_ready"}, "reasons": {"type": "array", "items": {"type": "string"}},
                      "error": {"type": "object"}}),
    "Models": _obj({"models": {"type": "array", "items": _obj({
        **_MODEL_REF["properties"], "input_size": {"type": "integer"}, "licensed": {"type": "boolean"},
        "description": {"type": "string"}, "labels": {"type": "array", "items": _LABEL}})}}),
    "License": _obj({"customer": {"type": "string"}, "subject": {"type": "string"},
                     "features": {"type": "array", "items": {"type": "string"}},
                     "expires_at": {"type": "string", "format": "date-time"},
                     "days_left": {"type": "integer", "minimum": 0}, "product_uuid": {"type": "string"}}),
    "Prediction": _obj({
        "request_id": {"type": "string"}, "model": _MODEL_REF,
        "image": _obj({"format": {"enum": ["png", "jpeg", "dicom"]}, "width": {"type": "integer"},
                       "height": {"type": "integer"}}),
        "findings": {"type": "array", "items": _obj({
            "code": {"type": "string"}, "name": {"type": "string"}, "name_zh": {"type": ["string", "null"]},
            "probability": _NUMBER01, "threshold": _NUMBER01, "positive": {"type": "boolean"}})},
        "heatmaps": {"type": "array", "items": _obj({
            "code": {"type": "string"}, "mime": {"enum": ["image/jpeg", "image/png"]},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "data": {"type": "string", "contentEncoding": "base64"}})},
        "timing_ms": _obj({k: {"type": "number"} for k in ("decode", "preprocess", "inference", "heatmap", "total")}),
        "notice": {"type": "string", "description": "present for demo bundles: the output is not a diagnosis"},
    }, ["request_id", "model", "image", "findings", "heatmaps", "timing_ms"]),
    "CXRNetPrediction": _obj({
        "answer": {"type": "array", "items": _NUMBER01}, "gradcam": {"type": "string", "contentEncoding": "base64"},
        "category": {"type": "array", "items": {"type": "string"}}, "status": {"const": "OK"},
        "demo": {"type": "boolean"}, "request_id": {"type": "string"}}),
}

_OPTIONS = [
    {"name": "model", "in": "query", "schema": {"type": "string"}, "description": "bundle id (default: the server's default model)"},
    {"name": "heatmaps", "in": "query", "schema": {"type": "string", "default": "top"},
     "description": f"{' | '.join(HEATMAP_MODES)} | comma list of label codes"},
    {"name": "heatmap_format", "in": "query", "schema": {"enum": list(FORMATS), "default": "jpeg"}},
]
_UPLOAD = {"required": True, "content": {
    "multipart/form-data": {"schema": _obj({"image": {"type": "string", "format": "binary"},
                                            "model": {"type": "string"}, "heatmaps": {"type": "string"},
                                            "heatmap_format": {"type": "string"}}, ["image"])},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/dicom": {"schema": {"type": "string", "format": "binary"}}}}


def _error(status: int, description: str) -> dict:
    response = _json("Error", f"{description}; error.code is one of: {', '.join(error_codes_by_status()[status])}")
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                               "schema": {"type": "integer"}}}
    return response


_AUTH_ERRORS = {"401": _error(401, "no token, malformed, bad signature, expired, not yet valid or revoked"),
                "403": _error(403, "a valid token for another host, or for a model it does not license"),
                "503": _error(503, "not ready or overloaded (Retry-After)")}
_PREDICT_ERRORS = {**_AUTH_ERRORS, "400": _error(400, "the file cannot be decoded"),
                   "404": _error(404, "unknown model"), "413": _error(413, "too many bytes or pixels"),
                   "415": _error(415, "not PNG, JPEG or DICOM, or an unsupported DICOM codec"),
                   "422": _error(422, "an option has a wrong value"),
                   "429": _error(429, "rate limited (nginx)")}


def openapi_document() -> dict:
    bearer = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "CheXNet on-premise API", "version": __version__,
                 "description": "Chest X-ray findings and Grad-CAM heatmaps. Demo bundles (model.demo = true) "
                                "have untrained weights: their output is not a diagnosis."},
        "servers": [{"url": "/"}],
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "paths": {
            "/api/v1/health": {"get": {"summary": "liveness", "responses": {"200": _json("Health", "the process lives")}}},
            "/api/v1/ready": {"get": {"summary": "readiness", "responses": {
                "200": _json("Ready", "models loaded and warmed up, licence keys usable"),
                "503": _json("NotReady", "not ready, with reasons")}}},
            "/api/v1/models": {"get": {"summary": "loaded models", "security": bearer, "responses": {
                "200": _json("Models", "every loaded model and whether the token licenses it"), **_AUTH_ERRORS}}},
            "/api/v1/license": {"get": {"summary": "the caller's licence", "security": bearer, "responses": {
                "200": _json("License", "claims of the presented token"), **_AUTH_ERRORS}}},
            "/api/v1/predict": {"post": {"summary": "findings and heatmaps for one radiograph", "security": bearer,
                                         "parameters": _OPTIONS, "requestBody": _UPLOAD, "responses": {
                "200": _json("Prediction", "findings for every label, heatmaps as asked"), **_PREDICT_ERRORS}}},
            "/api/v1/CXRNet/predict": {"post": {"summary": "the source project's front-end format", "security": bearer,
                                                "parameters": _OPTIONS[:1], "requestBody": _UPLOAD, "responses": {
                "200": _json("CXRNetPrediction", "probabilities, one Grad-CAM JPEG, category names"),
                **_PREDICT_ERRORS}}},
            "/api/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/api/v1/docs": {"get": {"summary": "offline docs page", "responses": {"200": {"description": "HTML"}}}},
        },
    }
