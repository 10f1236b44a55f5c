"""The OpenAPI 3.1 document of the REST API. Tests validate real responses against these schemas, and
schemathesis tests the served API against it. Error codes come from the table of error classes the API
answers with (:data:`API_ERRORS`), engines from the engine table, option enums from the options module,
and model ids and label codes from the models the server has loaded."""

from chexnet import __version__, errors
from chexnet.api import errors as api_errors
from chexnet.api.fhir import MEDIA_TYPE as FHIR_JSON
from chexnet.api.fhir import PRIORITY_EXTENSION
from chexnet.api.monitor_schema import MONITOR_DESCRIPTION, MONITOR_PARAMETERS, MONITOR_SCHEMA
from chexnet.eligibility import WARNINGS
from chexnet.engines import DEVICES, ENGINES, PRECISIONS
from chexnet.errors import ErrorProtocol
from chexnet.heatmap import FORMATS
from chexnet.options import HEATMAP_MODES, OUTPUTS
from chexnet.triage import LEVELS, RULE_LEVELS
from licensing import errors as licence_errors

# Every error class the API answers with (a new one is added here; a test checks none is missing).
API_ERRORS: tuple[type[ErrorProtocol], ...] = (
    errors.ServiceError,
    errors.InvalidImage,
    errors.UnsupportedMediaType,
    errors.PayloadTooLarge,
    errors.InvalidOption,
    errors.ModelNotFound,
    errors.BundleError,
    errors.EngineUnavailable,
    errors.Overloaded,
    errors.NotReady,
    api_errors.BadRequest,
    api_errors.NotFound,
    api_errors.MethodNotAllowed,
    errors.MonitorUnavailable,
    licence_errors.TokenMissing,
    licence_errors.TokenInvalid,
    licence_errors.TokenExpired,
    licence_errors.TokenRevoked,
    licence_errors.WrongHost,
    licence_errors.ModelNotLicensed,
    licence_errors.LicenseConfigError,
    licence_errors.LicenseNotReady,
)

# Statuses nginx answers by itself in front of the service (nginx/errors.conf), with their codes.
NGINX_ERRORS = {
    400: ["bad_request"],
    404: ["not_found"],
    405: ["method_not_allowed"],
    413: ["payload_too_large"],
    414: ["uri_too_long"],
    429: ["rate_limited"],
    500: ["internal_error"],
    503: ["overloaded", "not_ready"],
    504: ["overloaded"],
}


def error_codes_by_status() -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    for cls in API_ERRORS:
        found.setdefault(cls.status, set()).add(cls.code)
    for status, codes in NGINX_ERRORS.items():
        found.setdefault(status, set()).update(codes)
    return {status: sorted(codes) for status, codes in sorted(found.items())}


_ERROR_CODES = sorted({code for codes in error_codes_by_status().values() for code in codes})


def _obj(properties: dict, required: list[str] | None = None, extra: bool = True) -> dict:
    schema: dict[str, object] = {"type": "object", "properties": properties, "required": required or list(properties)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_NUMBER01 = {"type": "number", "minimum": 0, "maximum": 1}
_MODEL_REF = _obj(
    {
        "id": {"type": "string"},
        "version": {"type": "string"},
        "demo": {"type": "boolean"},
        "engine": {"enum": list(ENGINES)},
        "device": {"enum": [d for d in DEVICES if d != "auto"]},
        "precision": {"enum": list(PRECISIONS)},
        "thresholds": {
            "type": "string",
            "pattern": "^(bundle|site@[0-9a-f]{12})$",
            "description": "Which thresholds decided positive/negative: the bundle's own, or the site's calibration "
            "(CHEXNET_SITE_THRESHOLDS, python -m chexnet calibrate) named by its content hash.",
        },
    }
)
_LABEL = _obj(
    {
        "code": {"type": "string"},
        "threshold": _NUMBER01,
        "name": _obj({"en": {"type": "string"}, "zh": {"type": ["string", "null"]}}, ["en"]),
    }
)

SCHEMAS = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "code": {"enum": _ERROR_CODES},
                    "message": {"type": "string"},
                    "request_id": {"type": ["string", "null"]},
                }
            )
        }
    ),
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj(
        {
            "status": {"const": "ready"},
            "models": {"type": "array", "items": {"type": "string"}},
            "default_model": {"type": "string"},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Sentences for an operator while ready, e.g. a refused revocation list with the "
                "earlier list still in force; empty when all is well.",
            },
        }
    ),
    "NotReady": _obj(
        {
            "status": {"const": "not_ready"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "error": {"type": "object"},
        }
    ),
    "Models": _obj(
        {
            "models": {
                "type": "array",
                "items": _obj(
                    {
                        **_MODEL_REF["properties"],
                        "input_size": {"type": "integer"},
                        "licensed": {"type": "boolean"},
                        "description": {"type": "string"},
                        "labels": {"type": "array", "items": _LABEL},
                        "variants": {
                            "type": "object",
                            "description": "Validated reduced-precision variants (CHEXNET_PRECISION) "
                            "and how far each moved probabilities from fp32 on the calibration images: bf16 and int8 "
                            "when the bundle was built (measured: build, on that CPU), fp16 on this service's GPU when it "
                            "started, listed only when it is served (measured: start-up).",
                            "additionalProperties": _obj(
                                {
                                    "max_delta": _NUMBER01,
                                    "max_delta_bound": _NUMBER01,
                                    "flips": {"type": "integer"},
                                    "decisions": {"type": "integer"},
                                    "images": {"type": "integer"},
                                    "measured": {"enum": ["build", "start-up"]},
                                    "device": {"type": "string"},
                                },
                                ["max_delta", "flips", "decisions", "images", "measured"],
                            ),
                        },
                    }
                ),
            }
        }
    ),
    "License": _obj(
        {
            "customer": {"type": "string"},
            "subject": {"type": "string"},
            "features": {"type": "array", "items": {"type": "string"}},
            "expires_at": {"type": "string", "format": "date-time"},
            "days_left": {"type": "integer", "minimum": 0},
            # one server's UUID, or a cluster licence's list of its nodes' UUIDs
            "product_uuid": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 2}]
            },
        }
    ),
    "Prediction": _obj(
        {
            "request_id": {"type": "string"},
            "model": _MODEL_REF,
            "image": _obj(
                {
                    "format": {"enum": ["png", "jpeg", "dicom"]},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                }
            ),
            "findings": {
                "type": "array",
                "items": _obj(
                    {
                        "code": {"type": "string"},
                        "name": {"type": "string"},
                        "name_zh": {"type": ["string", "null"]},
                        "probability": _NUMBER01,
                        "threshold": _NUMBER01,
                        "positive": {"type": "boolean"},
                    }
                ),
            },
            "heatmaps": {
                "type": "array",
                "items": _obj(
                    {
                        "code": {"type": "string"},
                        "mime": {"enum": ["image/jpeg", "image/png"]},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "data": {"type": "string", "contentEncoding": "base64"},
                    }
                ),
            },
            "warnings": {
                "type": "array",
                "items": {"enum": list(WARNINGS)},
                "description": "eligibility from the "
                "DICOM's own tags: "
                + "; ".join(f"{code}: {text}" for code, text in WARNINGS.items())
                + " An absent tag, and a PNG or JPEG, give no warning.",
            },
            "timing_ms": _obj(
                {k: {"type": "number"} for k in ("decode", "preprocess", "inference", "heatmap", "total")}
            ),
            "notice": {"type": "string", "description": "present for demo bundles: the output is not a diagnosis"},
            "priority": _ref("Priority"),
        },
        ["request_id", "model", "image", "findings", "heatmaps", "warnings", "priority", "timing_ms"],
    ),
    "Priority": _obj(
        {
            "level": {"enum": list(LEVELS)},
            "rules": {
                "type": "boolean",
                "description": "whether any CHEXNET_PRIORITY_RULES rule applies to this model",
            },
            "demo": {"type": "boolean", "description": "made by a demo bundle: not for triage either"},
            "findings": {
                "type": "array",
                "description": "every rule that met, highest level first: the finding, its probability and the rule",
                "items": _obj(
                    {
                        "code": {"type": "string"},
                        "probability": _NUMBER01,
                        "threshold": _NUMBER01,
                        "level": {"enum": list(RULE_LEVELS)},
                        "rule": {"type": "string", "examples": ["cxr10:pneumothorax>=0.7:stat"]},
                    }
                ),
            },
        },
        extra=False,
    ),
    "FhirDiagnosticReport": {
        "type": "object",
        "description": "output=fhir: a FHIR R4 DiagnosticReport (status preliminary) with one contained "
        "Observation per finding (valueQuantity: probability; referenceRange.high: threshold; interpretation "
        "POS/NEG), the model as a contained Device, the triage priority as the extension "
        + PRIORITY_EXTENSION
        + ", imagingStudy by the Study Instance UID (urn:oid:) for a DICOM input",
        "properties": {
            "resourceType": {"const": "DiagnosticReport"},
            "status": {"const": "preliminary"},
            "contained": {"type": "array", "items": {"type": "object"}},
            "result": {"type": "array", "items": {"type": "object"}},
            "conclusion": {"type": "string"},
        },
        "required": ["resourceType", "status", "code", "contained", "result", "extension", "conclusion"],
    },
    "Monitor": MONITOR_SCHEMA,
    "CXRNetPrediction": _obj(
        {
            "answer": {"type": "array", "items": _NUMBER01},
            "gradcam": {"type": "string", "contentEncoding": "base64"},
            "category": {"type": "array", "items": {"type": "string"}},
            "status": {"const": "OK"},
            "demo": {"type": "boolean"},
            "request_id": {"type": "string"},
        }
    ),
}


def _options(models: dict[str, list[str]]) -> dict[str, dict]:
    """Each option's schema; with the loaded models, their ids and label codes are enums too."""
    codes = sorted({code for labels in models.values() for code in labels})
    # spaces around modes and codes are ignored ("mass, fracture"), as people type them
    modes, one = "|".join(HEATMAP_MODES), "|".join(codes)
    choice = f"{modes}|({one})(\\s*,\\s*({one}))*" if codes else f"{modes}|[^,]+(,[^,]+)*"
    heatmaps: dict = {"type": "string", "pattern": f"^\\s*({choice})?\\s*$"}
    return {
        "model": {
            "schema": {"enum": ["", *models]} if models else {"type": "string"},
            "description": "bundle id (empty or absent: the server's default model)",
        },
        "heatmaps": {
            "schema": {**heatmaps, "default": "top"},
            "description": f"{' | '.join(HEATMAP_MODES)} | a comma list of label codes of the model; "
            "an empty option means its default",
        },
        "heatmap_format": {"schema": {"enum": ["", *FORMATS], "default": "jpeg"}},
        "output": {
            "schema": {"enum": ["", *OUTPUTS], "default": "json"},
            "description": "dicom: a multipart/related body of DICOM objects (a Comprehensive SR, and per heatmap "
            "a secondary capture and a Parametric Map, as CHEXNET_DICOM_MAPS says) for a DICOM input; the same as "
            'Accept: multipart/related; type="application/dicom". Not for PNG/JPEG (422). '
            "fhir: a FHIR R4 DiagnosticReport (application/fhir+json, no heatmaps), the same as "
            "Accept: application/fhir+json; errors stay this API's JSON errors (application/json).",
        },
    }


def _parameters(options: dict[str, dict], names: tuple[str, ...]) -> list[dict]:
    return [{"name": name, "in": "query", **options[name]} for name in names]


def _upload() -> dict:
    binary = {"type": "string", "format": "binary"}
    form = _obj({"image": {**binary, "description": "the radiograph: PNG, JPEG or DICOM (sniffed from its bytes)"}})
    return {
        "required": True,
        "description": "The options are query parameters; browser forms may send them as "
        "form fields of the same names instead (one place only: both is a 422).",
        "content": {
            "multipart/form-data": {"schema": form},
            **{mime: {"schema": binary} for mime in ("image/png", "image/jpeg", "application/dicom")},
        },
    }


_PREDICTION_EXAMPLE = {
    "request_id": "4f7c0e0b2a5d4c1e9a1b2c3d4e5f6a7b",
    "model": {
        "id": "cxr10",
        "version": "0.0.0-demo",
        "demo": True,
        "engine": "onnxruntime",
        "device": "cpu",
        "precision": "fp32",
        "thresholds": "bundle",
    },
    "image": {"format": "dicom", "width": 1841, "height": 1955},
    "findings": [
        {
            "code": "atelectasis",
            "name": "Atelectasis",
            "name_zh": "肺不张",
            "probability": 0.4873,
            "threshold": 0.5,
            "positive": False,
        }
    ],
    "heatmaps": [{"code": "atelectasis", "mime": "image/jpeg", "width": 482, "height": 512, "data": "/9j/4AAQ…"}],
    "warnings": [],
    "priority": {
        "level": "stat",
        "rules": True,
        "demo": True,
        "findings": [
            {
                "code": "pneumothorax",
                "probability": 0.8123,
                "threshold": 0.7,
                "level": "stat",
                "rule": "cxr10:pneumothorax>=0.7:stat",
            }
        ],
    },
    "timing_ms": {"decode": 57.1, "preprocess": 4.2, "inference": 28.0, "heatmap": 6.3, "total": 95.6},
    "notice": "Demo model with untrained weights: its output is not a diagnosis.",
}
_ERROR_EXAMPLE = {
    "error": {
        "code": "invalid_option",
        "message": "output must be one of json, dicom, not 'hl7'.",
        "request_id": "4f7c0e0b2a5d4c1e9a1b2c3d4e5f6a7b",
    }
}


def _error(status: int, description: str) -> dict:
    response = _json("Error", f"{description}; error.code is one of: {', '.join(error_codes_by_status()[status])}")
    response["content"]["application/json"]["example"] = _ERROR_EXAMPLE
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


_AUTH_ERRORS = {
    "401": _error(401, "no token, malformed, bad signature, expired, not yet valid or revoked"),
    "403": _error(403, "a valid token for another host, or for a model it does not license"),
    "503": _error(503, "not ready or overloaded (Retry-After)"),
}
_PREDICT_ERRORS = {
    **_AUTH_ERRORS,
    "400": _error(400, "the file cannot be decoded"),
    "404": _error(404, "unknown model"),
    "413": _error(413, "too many bytes or pixels"),
    "415": _error(415, "not PNG, JPEG or DICOM, or an unsupported DICOM codec"),
    "422": _error(422, "an option has a wrong value"),
    "429": _error(429, "rate limited (nginx)"),
}


def _prediction_ok() -> dict:
    response = _json("Prediction", "findings for every label, heatmaps as asked (JSON, the default)")
    response["content"]["application/json"]["example"] = _PREDICTION_EXAMPLE
    response["content"]['multipart/related; type="application/dicom"'] = {
        "schema": {"type": "string", "format": "binary"},
        "description": "output=dicom: one part per DICOM instance (Content-Type: application/dicom), as DICOMweb "
        "returns instances: the Comprehensive SR (TID 1500), then one secondary capture and then one Parametric "
        "Map per heatmap (CHEXNET_DICOM_MAPS: sc, pm or both), all in the source study and referencing the "
        "source instance",
    }
    response["content"][FHIR_JSON] = {
        "schema": _ref("FhirDiagnosticReport"),
        "description": "output=fhir or Accept: application/fhir+json: a FHIR R4 DiagnosticReport",
    }
    return response


STOW_DESCRIPTION = (
    "STOW-RS (DICOM PS3.18 10.5). Served by the **DICOM node** (Compose profile dicom), not by the API: nginx "
    "passes /dicomweb/ to it; without the node nginx answers 503 (not_ready) with a sentence saying so. "
    'The body is multipart/related; type="application/dicom", one DICOM file (PS3.10) per part: CR, DX or '
    "secondary capture, in a transfer syntax the node decodes, each at most CHEXNET_MAX_UPLOAD_MB, a request at "
    "most CHEXNET_DICOMWEB_MAX_REQUEST_MB and 1000 instances. Each part is checked like a C-STORE and written "
    "to the node's spool before the answer; the results go to the PACS as for C-STORE. The answer is the Store "
    "Instances Response: ReferencedSOPSequence (0008,1199) for the stored instances, FailedSOPSequence "
    "(0008,1198) with FailureReason (0008,1197: 0xA700 too large, disk full or busy, or parts beyond the "
    "1000th, not read; 0xC000 not DICOM; 0x0122 "
    "SOP class not taken; 0xC122 transfer syntax not decoded; 0xA900 another study than the URL's) for the "
    "others, and one Warning header per failure with the sentence to act on."
)


def _stow(bearer: list) -> dict:
    """The DICOM node's STOW-RS operation (chexnet.dicom_node.stow), documented with the API it sits beside."""
    store_response = {
        "application/dicom+json": {
            "schema": {"type": "object", "description": "DICOM JSON (PS3.18 F.2) Store Instances Response"},
            "example": {
                "00081199": {
                    "vr": "SQ",
                    "Value": [
                        {
                            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1"]},
                            "00081155": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]},
                        }
                    ],
                }
            },
        }
    }
    warning = {
        "Warning": {"description": '299 chexnet "part N: <sentence>" per failed part', "schema": {"type": "string"}}
    }
    operation = {
        "operationId": "stowRs",
        "summary": "store instances by STOW-RS into the DICOM node (predicted; results go to the PACS)",
        "description": STOW_DESCRIPTION,
        "tags": ["DICOM node"],
        "servers": [{"url": "/", "description": "nginx, which passes /dicomweb/ to the DICOM node"}],
        "security": bearer,
        "requestBody": {
            "required": True,
            "content": {
                'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "responses": {
            "200": {"description": "every instance stored", "content": store_response},
            "202": {"description": "some stored, some failed", "headers": warning, "content": store_response},
            "409": {"description": "none stored", "headers": warning, "content": store_response},
            "400": _error(400, "not a multipart body, or no DICOM part in it"),
            "401": _AUTH_ERRORS["401"],
            "403": _AUTH_ERRORS["403"],
            "413": _error(413, "a request over CHEXNET_DICOMWEB_MAX_REQUEST_MB (nginx)"),
            "415": _error(415, 'not multipart/related; type="application/dicom"'),
            "503": _error(503, "the DICOM node is not deployed or not up (nginx), or its licence keys are not loaded"),
        },
    }
    study = {"name": "study", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9.]{1,64}$"}}
    return {
        "/dicomweb/studies": {"post": operation},
        "/dicomweb/studies/{study}": {
            "post": {
                **operation,
                "operationId": "stowRsStudy",
                "summary": "STOW-RS into one study: an instance of another study fails with 0xA900",
                "parameters": [study],
            }
        },
    }


def openapi_document(models: dict[str, list[str]] | None = None) -> dict:
    """models: the loaded models' ids and label codes (they become enums); none: free strings."""
    options = _options(models or {})
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    predict_options = ("model", "heatmaps", "heatmap_format", "output")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CheXNet on-premise API",
            "version": __version__,
            "description": "Chest X-ray findings and Grad-CAM heatmaps. Demo bundles (model.demo = true) "
            "have untrained weights: their output is not a diagnosis.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "the licence token (token.txt) the vendor issued for this server",
                }
            },
        },
        "paths": {
            "/api/v1/health": {
                "get": {
                    "operationId": "health",
                    "summary": "liveness",
                    "responses": {"200": _json("Health", "the process lives")},
                }
            },
            "/api/v1/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "readiness",
                    "responses": {
                        "200": _json("Ready", "models loaded and warmed up, licence keys usable"),
                        "503": _json("NotReady", "not ready, with reasons"),
                    },
                }
            },
            "/api/v1/models": {
                "get": {
                    "operationId": "models",
                    "summary": "loaded models",
                    "security": bearer,
                    "responses": {
                        "200": _json("Models", "every loaded model and whether the token licenses it"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/api/v1/license": {
                "get": {
                    "operationId": "license",
                    "summary": "the caller's licence",
                    "security": bearer,
                    "responses": {"200": _json("License", "claims of the presented token"), **_AUTH_ERRORS},
                }
            },
            "/api/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "findings and heatmaps for one radiograph",
                    "security": bearer,
                    "parameters": _parameters(options, predict_options),
                    "requestBody": _upload(),
                    "responses": {"200": _prediction_ok(), **_PREDICT_ERRORS},
                }
            },
            "/api/v1/CXRNet/predict": {
                "post": {
                    "operationId": "cxrnetPredict",
                    "summary": "the source project's front-end format",
                    "security": bearer,
                    "parameters": _parameters(options, ("model",)),
                    "requestBody": _upload(),
                    "responses": {
                        "200": _json("CXRNetPrediction", "probabilities, one Grad-CAM JPEG, category names"),
                        **_PREDICT_ERRORS,
                    },
                }
            },
            "/api/v1/monitor": {
                "get": {
                    "operationId": "monitor",
                    "summary": "monitoring roll-up: score distributions and drift, positive rates, input mix, latency",
                    "description": MONITOR_DESCRIPTION,
                    "security": bearer,
                    "parameters": MONITOR_PARAMETERS,
                    "responses": {
                        "200": _json("Monitor", "the last day or week, per model and hour"),
                        "401": _AUTH_ERRORS["401"],
                        "403": _AUTH_ERRORS["403"],
                        "422": _error(422, "an unknown window"),
                        "503": _error(503, "monitoring off or its file unusable (monitor_unavailable), or not ready"),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "this document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
            "/api/v1/docs": {
                "get": {
                    "operationId": "docs",
                    "summary": "this reference (Swagger UI, served offline)",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
            **_stow(bearer),
        },
    }
