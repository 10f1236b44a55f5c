"""The OpenAPI schema of GET /api/v1/monitor (chexnet.service.monitoring.report), kept beside the route's
module so the document (chexnet.api.openapi) stays a table of operations."""

from chexnet.service.monitoring import BINS, LATENCY_BOUNDS_MS, WINDOWS

_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_HOURLY = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_MAYBE_HOURLY = {"type": "array", "items": _MAYBE_NUMBER}
_BINS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": BINS, "maxItems": BINS}
_TIME = {"type": "string", "format": "date-time"}


def _obj(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required}


MONITOR_PARAMETERS = [
    {
        "name": "window",
        "in": "query",
        "schema": {"enum": ["", *WINDOWS], "default": "day"},
        "description": "day: the last 24 hour buckets; week: the last 168 (an empty value means day)",
    }
]

MONITOR_SCHEMA = _obj(
    {
        "window": _obj({"name": {"enum": list(WINDOWS)}, "hours": {"type": "integer"}, "from": _TIME, "to": _TIME}),
        "hours": {"type": "array", "items": _TIME, "description": "the start of each hour bucket (UTC)"},
        "bins": {"const": BINS},
        "latency_bounds_ms": {"type": "array", "items": {"type": "number"}, "minItems": len(LATENCY_BOUNDS_MS)},
        "psi": _obj({"window_hours": {"type": "integer"}, "min_count": {"type": "integer"}}),
        "models": {
            "type": "array",
            "items": _obj(
                {
                    "id": {"type": "string"},
                    "version": {"type": ["string", "null"]},
                    "demo": {"type": ["boolean", "null"]},
                    "loaded": {"type": "boolean"},
                    "predictions": {"type": "integer", "minimum": 0},
                    "predictions_by_hour": _HOURLY,
                    "reference": _obj(
                        {
                            "source": {"enum": ["site", "first_days"]},
                            "complete": {"type": "boolean"},
                            "from": {"type": ["string", "null"], "format": "date-time"},
                            "to": {"type": ["string", "null"], "format": "date-time"},
                            "predictions": {"type": "integer", "minimum": 0},
                        }
                    ),
                    "classes": {
                        "type": "array",
                        "items": _obj(
                            {
                                "code": {"type": "string"},
                                "histogram": _BINS,
                                "reference": {"oneOf": [_BINS, {"type": "null"}]},
                                "psi": _MAYBE_NUMBER,
                                "psi_last_day": _MAYBE_NUMBER,
                                "positives": {"type": "integer", "minimum": 0},
                                "positive_rate": _MAYBE_NUMBER,
                                "positive_rate_by_hour": _MAYBE_HOURLY,
                            }
                        ),
                    },
                    "latency_ms": _obj(
                        {
                            "approximate": {"const": True},
                            "buckets": _HOURLY,
                            "p50": _MAYBE_NUMBER,
                            "p99": _MAYBE_NUMBER,
                            "p50_by_hour": _MAYBE_HOURLY,
                            "p99_by_hour": _MAYBE_HOURLY,
                        }
                    ),
                    "input_mix": _obj({k: _COUNTS for k in ("format", "modality", "transfer_syntax", "view", "size")}),
                    "warnings": _COUNTS,
                    "refusals": _COUNTS,
                }
            ),
        },
        "refusals": _obj({"total": _COUNTS, "by_hour": {"type": "object", "additionalProperties": _HOURLY}}),
    }
)
MONITOR_DESCRIPTION = (
    "Counts and score histograms per model and hour bucket from this server's local roll-up "
    "(CHEXNET_MONITOR_DB), no patient data: per class the score histogram on 20 bins over [0, 1] against the "
    "reference (the site calibration set, else the first CHEXNET_MONITOR_REFERENCE_DAYS days of data) with its "
    "population stability index (psi: this window; psi_last_day: the last 24 h, as the chexnet_score_psi gauge), "
    "positive rates per hour, latency p50/p99 (decode to heatmap, approximate: interpolated in histogram "
    "buckets), the input mix (format, Modality, transfer syntax, ViewPosition, source size), eligibility "
    "warnings, and refused prediction requests by error code. The /monitor page draws it."
)
