"""FHIR output (issue 23, item 5; DESIGN.md "Triage priority and FHIR"): POST /api/v1/predict with output=fhir or
Accept: application/fhir+json returns a FHIR R4 DiagnosticReport, validated here with fhir.resources (its R4B
models: the only R4-line models that run on pydantic 2; DiagnosticReport, Observation and Device are the same
in R4 and R4B for every element used). The service builds plain dicts; fhir.resources is a test dependency only."""

import dataclasses
import json

import jsonschema
import pydicom
import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from api_helpers import assert_error, make_env, predict, ready_app
from chexnet.api.fhir import ACT_PRIORITY, INTERPRETATION, LABEL_SYSTEM, PRIORITY_EXTENSION, diagnostic_report
from chexnet.options import PredictOptions

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def fhir_env(tmp_path_factory, demo_bundle):
    return make_env(
        tmp_path_factory.mktemp("fhir"), demo_bundle.path, CHEXNET_PRIORITY_RULES="pneumothorax>=0:stat,mass>=1:urgent"
    )


@pytest.fixture(scope="module")
def client(fhir_env):
    return ready_app(fhir_env).test_client()


def report_of(response) -> tuple[dict, DiagnosticReport]:
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.mimetype == FHIR_JSON
    body = json.loads(response.data)
    return body, DiagnosticReport.model_validate(body)


def contained(body: dict, kind: str) -> list[dict]:
    return [r for r in body["contained"] if r["resourceType"] == kind]


def check_report(body: dict, json_body: dict) -> None:
    """The report says what the JSON answer says: one Observation per finding, the model, the priority."""
    assert body["status"] == "preliminary"
    (device,) = contained(body, "Device")
    Device.model_validate(device)
    assert device["version"][0]["value"] == json_body["model"]["version"]
    assert device["identifier"][0]["value"] == json_body["model"]["id"]
    observations = contained(body, "Observation")
    assert [o["code"]["coding"][0]["code"] for o in observations] == [f["code"] for f in json_body["findings"]]
    assert [r["reference"] for r in body["result"]] == [f"#{o['id']}" for o in observations]
    for observation, finding in zip(observations, json_body["findings"], strict=True):
        Observation.model_validate(observation)
        assert observation["code"]["coding"][0]["system"] == LABEL_SYSTEM
        assert observation["valueQuantity"]["value"] == finding["probability"]
        assert observation["referenceRange"][0]["high"]["value"] == finding["threshold"]
        (interpretation,) = observation["interpretation"][0]["coding"]
        assert interpretation["system"] == INTERPRETATION
        assert interpretation["code"] == ("POS" if finding["positive"] else "NEG")
        assert observation["device"] == {"reference": "#model"}
    (extension,) = body["extension"]
    assert extension["url"] == PRIORITY_EXTENSION
    parts = {}
    for part in extension["extension"]:
        parts.setdefault(part["url"], []).append(part)
    level = parts["level"][0]["valueCodeableConcept"]
    assert level["text"] == json_body["priority"]["level"] == "stat"
    assert level["coding"][0] == {"system": ACT_PRIORITY, "code": "S", "display": "stat"}
    assert [p["valueReference"]["reference"] for p in parts["raisedBy"]] == ["#finding-pneumothorax"]
    assert parts["rules"][0]["valueBoolean"] is True


def test_png_as_a_validated_diagnostic_report_with_demo_labelling(client, fhir_env, nih_sample):
    data = nih_sample[0].read_bytes()
    body, _ = report_of(predict(client, fhir_env, data, "?output=fhir"))
    json_body = predict(client, fhir_env, data, "?heatmaps=none").get_json()
    check_report(body, json_body)
    assert "imagingStudy" not in body  # a PNG has no study
    assert body["conclusion"].startswith("DEMO - NOT FOR DIAGNOSIS")
    assert "Triage priority: stat." in body["conclusion"]
    (device,) = contained(body, "Device")
    assert "DEMO - NOT FOR DIAGNOSIS" in device["note"][0]["text"]
    assert all("DEMO" in o["note"][0]["text"] for o in contained(body, "Observation"))
    demo = next(p for p in body["extension"][0]["extension"] if p["url"] == "demo")
    assert demo["valueBoolean"] is True


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"])
def test_dicom_by_accept_header_references_the_study_and_no_patient(client, fhir_env, dicom_dir, name):
    data = (dicom_dir / name).read_bytes()
    source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
    headers = {**fhir_env.auth(), "Accept": f"{FHIR_JSON}, application/json;q=0.5"}
    body, report = report_of(predict(client, fhir_env, data, headers=headers))
    check_report(body, predict(client, fhir_env, data, "?heatmaps=none").get_json())
    (study,) = body["imagingStudy"]
    assert study["type"] == "ImagingStudy"
    assert study["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{source.StudyInstanceUID}"}
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{source.StudyInstanceUID}"
    text = json.dumps(body)
    for identifier in (str(source.get("PatientID") or ""), str(source.get("PatientName") or "")):
        assert not identifier or identifier not in text
    assert "subject" not in body


def test_the_openapi_document_describes_the_fhir_answer(client, fhir_env, nih_sample):
    """The served document lists application/fhir+json for POST /predict, and a real report fits its schema."""
    document = client.get("/api/v1/openapi.json").get_json()
    content = document["paths"]["/api/v1/predict"]["post"]["responses"]["200"]["content"]
    schema = content[FHIR_JSON]["schema"]
    body, _ = report_of(predict(client, fhir_env, nih_sample[0].read_bytes(), "?output=fhir"))
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)
    assert (
        "fhir"
        in next(p for p in document["paths"]["/api/v1/predict"]["post"]["parameters"] if p["name"] == "output")[
            "schema"
        ]["enum"]
    )


def test_errors_for_fhir_requests_stay_json_errors(client, fhir_env):
    response = predict(client, fhir_env, b"not an image", "?output=fhir")
    assert response.mimetype == "application/json"
    assert_error(response, 415, "unsupported_media_type")
    response = predict(client, fhir_env, b"x", "?output=hl7")
    assert_error(response, 422, "invalid_option")
    assert "json, dicom, fhir" in response.get_json()["error"]["message"]


def test_a_non_demo_report_says_no_demo(onnx_predictor, dicom_dir):
    """A bundle with trained weights (demo false): no DEMO note anywhere, the same structure."""
    prediction = onnx_predictor.predict((dicom_dir / "RG1_J2KR.dcm").read_bytes, PredictOptions(output="fhir"))
    trained = dataclasses.replace(
        prediction,
        model=dataclasses.replace(prediction.model, demo=False),
        priority=dataclasses.replace(prediction.priority, demo=False),
    )
    body = diagnostic_report(trained, "r-1")
    DiagnosticReport.model_validate(body)
    assert "DEMO" not in json.dumps(body) and "note" not in contained(body, "Device")[0]
    assert body["conclusion"].startswith(("Above threshold", "No finding")) and body["id"] == "r-1"
    assert prediction.heatmaps == []  # a FHIR report carries no heatmaps, so none were rendered


@pytest.mark.parametrize("accept", [f"{FHIR_JSON};q=0, application/json", f"{FHIR_JSON}; Q=0.000"])
def test_an_accept_header_that_rules_fhir_out_gets_the_json_prediction(client, fhir_env, nih_sample, accept):
    """RFC 9110 12.4.2: q=0 means 'not acceptable', so the media range asks for anything but FHIR."""
    response = predict(client, fhir_env, nih_sample[0].read_bytes(), headers={**fhir_env.auth(), "Accept": accept})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert "findings" in response.get_json()
