"""DICOM results over REST (DESIGN.md "DICOM results and the DICOM node"): a Comprehensive SR (TID 1500)
and heatmap secondary captures, filed with the source study, valid per dciodvfy (dicom3tools), and
eligibility warnings from the tags."""

import email
import email.policy
import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, generate_uid

from api_helpers import assert_error, make_env, predict, ready_app
from chexnet.service import SettingsError
from dicom_factory import make_dicom
from dicom_tools import dciodvfy_errors
from image_helpers import png_bytes

DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


@pytest.fixture()
def client(app):
    return app.test_client()


def dicom_parts(response) -> list[pydicom.Dataset]:
    """Parse a multipart/related response as a DICOMweb client does."""
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + response.data, policy=email.policy.HTTP
    )
    parts = list(message.iter_parts())
    assert parts and all(p.get_content_type() == "application/dicom" for p in parts)
    return [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts]


def content_items(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from content_items(child)


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"])
def test_accept_multipart_related_returns_a_valid_sr_and_capture_in_the_source_study(
    client, env, dicom_dir, tmp_path, name
):
    source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
    response = predict(client, env, (dicom_dir / name).read_bytes(), headers={**env.auth(), "Accept": DICOM_ACCEPT})
    sr, capture = dicom_parts(response)

    for ds in (sr, capture):
        assert dciodvfy_errors(ds, tmp_path) == []
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, ds.PatientName) == (source.PatientID, source.PatientName)
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID.startswith(env.settings.dicom_uid_root)

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = list(content_items(sr))
    texts = [str(i.get("TextValue", "")) for i in items]
    assert "CheXNet cxr10" in texts and "demo=true" in texts
    assert any("NOT FOR DIAGNOSIS" in t for t in texts) and "NOT FOR DIAGNOSIS" in sr.SeriesDescription
    groups = [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group"]
    assert len(groups) == 10
    first = list(content_items(groups[0]))
    probabilities = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in first
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Probability"
    ]
    thresholds = [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in first
        if i.ConceptNameCodeSequence[0].CodeValue == "threshold"
    ]
    presence = [
        i.ConceptCodeSequence[0].CodeMeaning
        for i in first
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "atelectasis"
    ]
    assert len(probabilities) == len(thresholds) == len(presence) == 1
    assert presence[0] == ("Present" if probabilities[0] >= thresholds[0] else "Absent")

    json_body = predict(client, env, (dicom_dir / name).read_bytes()).get_json()
    assert probabilities[0] == pytest.approx(json_body["findings"][0]["probability"], abs=1e-6)

    assert capture.SOPClassUID == SecondaryCaptureImageStorage
    assert capture.PhotometricInterpretation == "RGB" and capture.BitsAllocated == 8
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in capture.DerivationDescription
    assert capture.pixel_array.shape == (capture.Rows, capture.Columns, 3)


def test_output_option_and_every_heatmap(client, env, dicom_dir):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    parts = dicom_parts(predict(client, env, data, query="?output=dicom&heatmaps=all"))
    assert [p.SOPClassUID for p in parts] == [ComprehensiveSRStorage] + [SecondaryCaptureImageStorage] * 10
    assert len({p.SOPInstanceUID for p in parts}) == 11
    assert [p.InstanceNumber for p in parts[1:]] == list(range(1, 11))


def test_output_param_beats_accept_and_json_is_the_default(client, env, dicom_dir):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    response = predict(client, env, data, headers={**env.auth(), "Accept": DICOM_ACCEPT}, output="json")
    assert response.get_json()["warnings"] == []
    assert predict(client, env, data, headers={**env.auth(), "Accept": "application/json"}).is_json


def test_dicom_output_for_a_png_is_422_with_a_sentence(client, env, nih_sample):
    body = assert_error(predict(client, env, nih_sample[0].read_bytes(), query="?output=dicom"), 422, "invalid_option")
    assert "DICOM" in body["error"]["message"]
    assert_error(predict(client, env, nih_sample[0].read_bytes(), output="hl7"), 422, "invalid_option")


def test_a_source_without_study_uids_is_400_for_dicom_output_but_still_predicts_as_json(client, env):
    data = make_dicom(np.tile(np.arange(256, dtype=np.uint8), (256, 1)))
    body = assert_error(predict(client, env, data, query="?output=dicom"), 400, "invalid_image")
    assert "StudyInstanceUID" in body["error"]["message"]
    assert predict(client, env, data).status_code == 200


def test_invalid_source_values_are_left_empty_not_copied(client, env, tmp_path):
    data = make_dicom(
        np.tile(np.arange(256, dtype=np.uint8), (256, 1)),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientAge="62",
        PatientBirthDate="1970-01-01",
    )
    sr, capture = dicom_parts(predict(client, env, data, query="?output=dicom"))
    for ds in (sr, capture):
        assert dciodvfy_errors(ds, tmp_path) == []
    assert not sr.get("PatientAge") and not sr.get("PatientBirthDate")


def test_patient_data_reach_the_results_but_never_the_audit_file_or_logs(client, env, dicom_dir, capsys):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    sr, _ = dicom_parts(
        predict(client, env, data, headers={**env.auth(), "Accept": DICOM_ACCEPT, "X-Request-ID": "dicom-audit-1"})
    )
    assert str(sr.PatientName) == "CompressedSamples^RG1"
    audit = (env.root / "audit.jsonl").read_text()
    assert "dicom-audit-1" in audit
    captured = capsys.readouterr()
    for secret in ("CompressedSamples", "9RG1", "exam Number", "ward"):
        assert secret not in audit and secret not in captured.out + captured.err


@pytest.mark.parametrize(
    "tags, expected",
    [
        ({}, []),
        ({"Modality": "CT"}, ["not_radiograph"]),
        ({"BodyPartExamined": "KNEE"}, ["not_chest"]),
        ({"BodyPartExamined": "chest "}, []),
        ({"ViewPosition": "LL"}, ["lateral_view"]),
        (
            {"Modality": "MR", "BodyPartExamined": "HEAD", "ViewPosition": "RL"},
            ["not_radiograph", "not_chest", "lateral_view"],
        ),
    ],
)
def test_eligibility_warnings_come_from_the_tags_only(client, env, tags, expected):
    data = make_dicom(np.tile(np.arange(256, dtype=np.uint8), (256, 1)), **tags)
    assert predict(client, env, data).get_json()["warnings"] == expected


def test_eligibility_of_the_real_files(client, env, dicom_dir, nih_sample):
    assert predict(client, env, (dicom_dir / "RG3_RLE.dcm").read_bytes()).get_json()["warnings"] == ["not_chest"]
    assert predict(client, env, (dicom_dir / "RG1_J2KR.dcm").read_bytes()).get_json()["warnings"] == []
    assert predict(client, env, nih_sample[0].read_bytes()).get_json()["warnings"] == []
    record = json.loads((env.root / "audit.jsonl").read_text().splitlines()[-3])
    assert record["warnings"] == ["not_chest"]


def test_uid_root_setting(tmp_path, demo_bundle, dicom_dir):
    with pytest.raises(SettingsError, match="CHEXNET_DICOM_UID_ROOT"):
        make_env(tmp_path, demo_bundle.path, CHEXNET_DICOM_UID_ROOT="1.2.abc")
    with pytest.raises(SettingsError, match="CHEXNET_DICOM_UID_ROOT"):
        make_env(tmp_path, demo_bundle.path, CHEXNET_DICOM_UID_ROOT="1.2.0" + ".12345" * 10)
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_DICOM_UID_ROOT="1.2.3.4")
    client = ready_app(env).test_client()
    parts = dicom_parts(predict(client, env, (dicom_dir / "RG1_UNCR.dcm").read_bytes(), query="?output=dicom"))
    assert all(p.SOPInstanceUID.startswith("1.2.3.4.") and len(p.SOPInstanceUID) <= 64 for p in parts)


def test_png_heatmap_is_unchanged_by_the_dicom_path(client, env):
    pixels = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    body = predict(client, env, png_bytes(pixels)).get_json()
    assert body["heatmaps"][0]["mime"] == "image/jpeg" and body["heatmaps"][0]["data"]


@pytest.mark.parametrize(
    "tags",
    [
        {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": "Yamada^Tarou=山田^太郎"},
        {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "王^小明"},
        {"SpecificCharacterSet": "GB18030", "PatientName": "王^小明"},
        {"PatientID": "X" * 5000, "PatientName": "A" * 10000, "InstitutionName": "I" * 500},
        {"PatientSex": "UNKNOWN", "PatientOrientation": ["Q", "Z"], "Laterality": "B", "StudyTime": "99:99"},
        {"PatientName": "A\x00\x1b[31mB", "PatientID": "id\\x"},
    ],
    ids=["iso2022-japanese", "utf8", "gb18030", "overlong", "bad-codes", "control-characters"],
)
def test_odd_source_headers_give_valid_results(client, env, tmp_path, tags):
    data = make_dicom(
        np.tile(np.arange(256, dtype=np.uint8), (256, 1)),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        **tags,
    )
    for ds in dicom_parts(predict(client, env, data, query="?output=dicom")):
        assert dciodvfy_errors(ds, tmp_path) == []


@pytest.mark.parametrize(
    "tags, fragment",
    [
        ({"SpecificCharacterSet": "ISO_IR 999"}, "Specific Character Set"),
        ({"SOPClassUID": "1.2.3.4"}, "malformed"),
    ],
)
def test_source_headers_results_cannot_carry_are_a_400(client, env, tags, fragment):
    data = make_dicom(
        np.tile(np.arange(256, dtype=np.uint8), (256, 1)),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        **tags,
    )
    body = assert_error(predict(client, env, data, query="?output=dicom"), 400, "invalid_image")
    assert fragment in body["error"]["message"]
