"""A prediction as a FHIR R4 DiagnosticReport (POST /api/v1/predict with output=fhir or
Accept: application/fhir+json), built as plain dicts: nothing FHIR-specific ships in the images
(the tests validate it with fhir.resources).

- ``DiagnosticReport``: status ``preliminary`` (an algorithm's output, never a final report), category
  RAD, code LOINC 18748-4 "Diagnostic imaging study", ``issued``, the triage priority as an extension
  (R4's DiagnosticReport has no priority element), ``imagingStudy`` by the DICOM Study Instance UID
  (a logical reference, identifier system ``urn:dicom:uid``, value ``urn:oid:<uid>``) for a DICOM input,
  ``result`` referencing one contained Observation per finding, and a ``conclusion`` that says
  "DEMO - NOT FOR DIAGNOSIS" for a demo bundle.
- ``Observation`` per finding (contained): the label code in the scheme ``urn:chexnet:label``, the
  probability as ``valueQuantity`` (UCUM "1"), the threshold as ``referenceRange.high`` (below it:
  negative), ``interpretation`` POS/NEG (HL7 v3 ObservationInterpretation), ``device`` the model.
- ``Device`` (contained): the model's id, version, engine and precision; a DEMO note for demo bundles.

No patient identifier is copied (no ``subject``): the report is tied to its study by the Study Instance UID.
"""

import datetime as dt
import re

from chexnet.predictor import Finding, Prediction

MEDIA_TYPE = "application/fhir+json"
NOT_FOR_DIAGNOSIS = "DEMO - NOT FOR DIAGNOSIS"
PRIORITY_EXTENSION = "urn:chexnet:fhir:StructureDefinition:triage-priority"
LABEL_SYSTEM = "urn:chexnet:label"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
# The triage level as HL7 v3 ActPriority (the code system FHIR's ServiceRequest.priority draws on).
PRIORITY_CODES = {"routine": ("R", "routine"), "urgent": ("UR", "urgent"), "stat": ("S", "stat")}
UCUM = "http://unitsofmeasure.org"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")  # FHIR's oid type, after urn:oid:
IMAGING = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}
RADIOLOGY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]
}
REPORT_CODE = {
    "coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
    "text": "CheXNet chest radiograph findings",
}


def _observation_id(finding: Finding) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) from the label code (codes may hold underscores)."""
    return f"finding-{finding.code.replace('_', '-')}"[:64]


def _quantity(value: float) -> dict:
    return {"value": value, "unit": "probability", "system": UCUM, "code": "1"}


def _observation(prediction: Prediction, finding: Finding, issued: str) -> dict:
    interpretation = ("POS", "Positive") if finding.positive else ("NEG", "Negative")
    observation = {
        "resourceType": "Observation",
        "id": _observation_id(finding),
        "status": "preliminary",
        "category": [IMAGING],
        "code": {
            "coding": [{"system": LABEL_SYSTEM, "code": finding.code, "display": finding.label.name.en}],
            "text": finding.label.name.en,
        },
        "issued": issued,
        "valueQuantity": _quantity(finding.probability),
        "interpretation": [
            {"coding": [{"system": INTERPRETATION, "code": interpretation[0], "display": interpretation[1]}]}
        ],
        "referenceRange": [
            {
                "high": _quantity(finding.label.threshold),
                "text": f"positive at or above the threshold {finding.label.threshold:g}",
            }
        ],
        "device": {"reference": "#model"},
    }
    if prediction.model.demo:
        observation["note"] = [{"text": f"{NOT_FOR_DIAGNOSIS}: untrained demo weights."}]
    return observation


def _device(prediction: Prediction) -> dict:
    m = prediction.model
    device = {
        "resourceType": "Device",
        "id": "model",
        "identifier": [{"system": "urn:chexnet:model", "value": m.id}],
        "manufacturer": "CheXNet on-premise",
        "deviceName": [{"name": f"CheXNet {m.id}", "type": "model-name"}],
        "version": [{"value": m.version}],
        "property": [
            {"type": {"text": name}, "valueCode": [{"text": value}]}
            for name, value in (("engine", m.engine), ("device", m.device), ("precision", m.precision))
        ],
    }
    if m.demo:
        device["note"] = [{"text": f"{NOT_FOR_DIAGNOSIS}: demo bundle with untrained weights."}]
    return device


def _priority(prediction: Prediction) -> dict:
    priority = prediction.priority
    code, display = PRIORITY_CODES[priority.level]
    parts: list[dict] = [
        {
            "url": "level",
            "valueCodeableConcept": {
                "coding": [{"system": ACT_PRIORITY, "code": code, "display": display}],
                "text": priority.level,
            },
        },
        {"url": "rules", "valueBoolean": priority.rules},
        {"url": "demo", "valueBoolean": priority.demo},
    ]
    for raised in priority.raised:
        parts.append(
            {
                "url": "raisedBy",
                "valueReference": {
                    "reference": f"#{_observation_id(next(f for f in prediction.findings if f.code == raised.code))}",
                    "display": f"{raised.rule.text} (probability {raised.probability:g})",
                },
            }
        )
    return {"url": PRIORITY_EXTENSION, "extension": parts}


def _conclusion(prediction: Prediction) -> str:
    positive = [f.label.name.en for f in prediction.findings if f.positive]
    text = (
        f"Above threshold: {', '.join(positive)}." if positive else "No finding above its threshold."
    ) + f" Triage priority: {prediction.priority.level}."
    if prediction.model.demo:
        text = f"{NOT_FOR_DIAGNOSIS}: demo model with untrained weights, not a diagnosis. {text}"
    return text


def diagnostic_report(prediction: Prediction, request_id: str) -> dict:
    """The FHIR R4 DiagnosticReport of a prediction (JSON-ready dicts)."""
    issued = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    observations = [_observation(prediction, f, issued) for f in prediction.findings]
    report: dict = {
        "resourceType": "DiagnosticReport",
        "id": request_id[:64] if request_id and all(c.isalnum() or c in "-." for c in request_id) else None,
        "contained": [_device(prediction), *observations],
        "extension": [_priority(prediction)],
        "identifier": [{"system": "urn:chexnet:request-id", "value": request_id}] if request_id else None,
        "status": "preliminary",
        "category": [RADIOLOGY],
        "code": REPORT_CODE,
        "issued": issued,
        "result": [{"reference": f"#{o['id']}", "display": o["code"]["text"]} for o in observations],
        "conclusion": _conclusion(prediction),
    }
    source = prediction.source
    study = str(source.get("StudyInstanceUID") or "").strip("\0 ") if source is not None else ""
    if _OID.match(study):  # a malformed UID cannot be an oid: the report then names no study
        report["imagingStudy"] = [
            {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}}
        ]
    return {k: v for k, v in report.items() if v is not None}
