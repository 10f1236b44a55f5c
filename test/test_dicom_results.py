"""DICOM results over REST (DESIGN.md "DICOM results and the DICOM node"): a Comprehensive SR (TID 1500),
heatmap secondary captures and Parametric Maps (CHEXNET_DICOM_MAPS), filed with the source study, valid per
dciodvfy (dicom3tools) whatever character set the source declares or fails to declare, and eligibility
warnings from the tags."""

import email
import email.policy
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage, generate_uid

from api_helpers import assert_error, make_env, predict, ready_app
from chexnet.dicom_results import ResultSettings, result_objects
from chexnet.options import PredictOptions
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


def test_one_dicom_result_is_built_at_a_time(app, env, dicom_dir, monkeypatch):
    """Parametric Maps make a result's building memory-heavy: concurrent output=dicom requests take turns."""
    from chexnet.service import service as service_module

    active, most = [0], [0]
    lock = threading.Lock()

    def counted(settings, prediction):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            threading.Event().wait(0.2)  # long enough for the other requests to arrive meanwhile
            return result_objects(settings, prediction)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(service_module, "result_objects", counted)
    data = (dicom_dir / "RG1_J2KR.dcm").read_bytes()

    def call(_):
        return predict(app.test_client(), env, data, "?output=dicom")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert most[0] == 1


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm"])
def test_accept_multipart_related_returns_a_valid_sr_and_capture_in_the_source_study(
    client, env, dicom_dir, tmp_path, name
):
    source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
    response = predict(client, env, (dicom_dir / name).read_bytes(), headers={**env.auth(), "Accept": DICOM_ACCEPT})
    sr, capture, parametric_map = dicom_parts(response)

    for ds in (sr, capture, parametric_map):
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

    assert parametric_map.SOPClassUID == ParametricMapStorage
    assert (parametric_map.Rows, parametric_map.Columns) == (source.Rows, source.Columns)
    assert "NOT FOR DIAGNOSIS" in parametric_map.SeriesDescription and "DEMO" in parametric_map.ContentLabel
    derivation = parametric_map.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert derivation.SourceImageSequence[0].SpatialLocationsPreserved == "YES"
    mapping = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    top = json_body["findings"]
    assert (quantity.CodingSchemeDesignator, quantity.CodeValue) == (
        "99CHEXNET",
        max(top, key=lambda f: f["probability"])["code"],
    )
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    values = parametric_map.pixel_array
    assert values.dtype == np.float32 and 0.0 <= values.min() <= values.max() <= 1.0


def test_output_option_and_every_heatmap(client, env, dicom_dir):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    parts = dicom_parts(predict(client, env, data, query="?output=dicom&heatmaps=all"))
    assert [p.SOPClassUID for p in parts] == (
        [ComprehensiveSRStorage] + [SecondaryCaptureImageStorage] * 10 + [ParametricMapStorage] * 10
    )
    assert len({p.SOPInstanceUID for p in parts}) == 21
    assert [p.InstanceNumber for p in parts[1:11]] == [p.InstanceNumber for p in parts[11:]] == list(range(1, 11))


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
    parts = dicom_parts(predict(client, env, data, query="?output=dicom"))
    for ds in parts:
        assert dciodvfy_errors(ds, tmp_path) == []
        assert "PatientAge" not in ds and "PatientBirthDate" in ds and not ds.PatientBirthDate  # type 3 out, 2 empty


def test_patient_data_reach_the_results_but_never_the_audit_file_or_logs(client, env, dicom_dir, capsys):
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    sr = dicom_parts(
        predict(client, env, data, headers={**env.auth(), "Accept": DICOM_ACCEPT, "X-Request-ID": "dicom-audit-1"})
    )[0]
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
        {"PatientOrientation": ["L", "L"]},
        {"PatientOrientation": ["A", "P"]},
        {
            "FrameOfReferenceUID": "1.2.3",
            "ImagePositionPatient": [0, 0, 0],
            "ImageOrientationPatient": [0, 0, 0, 0, 0, 0],
            "PixelSpacing": [0.1, 0.1],
        },
        {
            "FrameOfReferenceUID": "1.2.3",
            "ImagePositionPatient": [0, 0, 0],
            "ImageOrientationPatient": [1, 0, 0, 1, 0, 0],
            "PixelSpacing": [0.1, 0.1],
        },
        {
            "FrameOfReferenceUID": "1.2.3",
            "ImagePositionPatient": ["nan", 0, 0],
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "PixelSpacing": [0.1, 0.1],
        },
        {"PixelSpacing": ["1e400", 1]},
    ],
    ids=[
        "iso2022-japanese",
        "utf8",
        "gb18030",
        "overlong",
        "bad-codes",
        "control-characters",
        "orientation-twice-the-same",
        "orientation-opposite",
        "plane-of-zeros",
        "plane-not-orthogonal",
        "position-nan",
        "spacing-infinite",
    ],
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


# --- Parametric Maps (CHEXNET_DICOM_MAPS) ---------------------------------------------------------------
def group_images(sr: pydicom.Dataset) -> dict[str, list[str]]:
    """Each measurement group's finding code → the SOP instances its IMAGE items reference."""
    found = {}
    for group in (i for i in content_items(sr) if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group"):
        items = list(content_items(group))
        code = next(
            str(i.ConceptCodeSequence[0].CodeValue)
            for i in items
            if i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
        )
        found[code] = [
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in items if i.ValueType == "IMAGE"
        ]
    return found


@pytest.mark.parametrize(
    "name",
    [
        "RG1_J2KR.dcm",
        "RG1_UNCR.dcm",
        "RG3_JPLY.dcm",
        "RG3_RLE.dcm",
        "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm",
    ],
)
def test_every_sample_gives_an_sr_capture_and_parametric_map_dciodvfy_accepts(client, env, dicom_dir, tmp_path, name):
    source = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
    parts = dicom_parts(predict(client, env, (dicom_dir / name).read_bytes(), query="?output=dicom"))
    assert [p.SOPClassUID for p in parts] == [
        ComprehensiveSRStorage,
        SecondaryCaptureImageStorage,
        ParametricMapStorage,
    ]
    for ds in parts:
        assert dciodvfy_errors(ds, tmp_path) == [], f"{name}: {ds.SOPClassUID.name}"
        assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)
    sr, _, parametric_map = parts
    # the SR's group of the mapped finding references the source image and the map, and lists both as evidence
    code = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    code = str(code.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue)
    images = group_images(sr)
    assert images[code] == [source.SOPInstanceUID, parametric_map.SOPInstanceUID]
    assert all(refs == [source.SOPInstanceUID] for c, refs in images.items() if c != code)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert evidence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in evidence[1:]] == [
        parametric_map.SOPInstanceUID
    ]
    # a projection radiograph has no frame of reference: the map has its own, on the source's pixel grid
    assert "FrameOfReferenceUID" not in source and parametric_map.FrameOfReferenceUID != ""
    spacing = parametric_map.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    given = [float(v) for v in source.get("PixelSpacing") or [0, 0]]
    assert [float(v) for v in spacing] == (given if min(given) > 0 else [1.0, 1.0])


def test_the_same_input_gives_the_same_instances(client, env, dicom_dir):
    data = (dicom_dir / "RG3_RLE.dcm").read_bytes()
    first, again = (dicom_parts(predict(client, env, data, query="?output=dicom&heatmaps=all")) for _ in range(2))
    assert [p.SOPInstanceUID for p in first] == [p.SOPInstanceUID for p in again]
    assert (
        len({p.SeriesInstanceUID for p in first}) == 3
        and first[-1].FrameOfReferenceUID == again[-1].FrameOfReferenceUID
    )


def test_parametric_map_values_are_the_cam_on_the_source_grid(app, dicom_dir):
    """At the centre of each CAM cell, bilinear resampling gives the cell's value exactly; the nearest pixel
    is at most half a pixel away, where the map changes by at most (cell step ≤ 1)·(cells per pixel)/2: so
    each sampled pixel equals the cell within half the cells-per-pixel ratio (≈0.002 for 1955 rows over 7)."""
    predictor = app.extensions["chexnet"].models["cxr10"].predictor
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    prediction = predictor.predict(lambda: data, PredictOptions(output="dicom", heatmaps="all"))
    objects = result_objects(ResultSettings(maps="pm"), prediction)
    assert [o.SOPClassUID for o in objects] == [ComprehensiveSRStorage] + [ParametricMapStorage] * 10
    for heatmap, parametric_map in zip(prediction.heatmaps, objects[1:], strict=True):
        mapping = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == heatmap.label.code
        values, cam = parametric_map.pixel_array, heatmap.cam
        rows, columns = values.shape
        (h, w), tolerance = cam.shape, 0.5 * max(cam.shape[0] / rows, cam.shape[1] / columns) + 1e-6
        assert 0.0 <= cam.min() <= cam.max() <= 1.0 and (rows, columns) == (1955, 1841)
        centres_y = np.rint((np.arange(h) + 0.5) * rows / h - 0.5).astype(int)
        centres_x = np.rint((np.arange(w) + 0.5) * columns / w - 0.5).astype(int)
        np.testing.assert_allclose(values[np.ix_(centres_y, centres_x)], cam, atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    "maps, classes",
    [
        ("sc", [ComprehensiveSRStorage, SecondaryCaptureImageStorage]),
        ("pm", [ComprehensiveSRStorage, ParametricMapStorage]),
    ],
)
def test_the_maps_setting_chooses_captures_or_parametric_maps(tmp_path, demo_bundle, dicom_dir, maps, classes):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_DICOM_MAPS=maps)
    client = ready_app(env).test_client()
    parts = dicom_parts(predict(client, env, (dicom_dir / "RG3_RLE.dcm").read_bytes(), query="?output=dicom"))
    assert [p.SOPClassUID for p in parts] == classes
    referenced = {uid for refs in group_images(parts[0]).values() for uid in refs}
    assert (parts[1].SOPInstanceUID in referenced) == (maps == "pm")


def test_a_bad_maps_setting_stops_start_with_a_sentence(tmp_path, demo_bundle):
    with pytest.raises(SettingsError, match="CHEXNET_DICOM_MAPS must be one of sc, pm, both"):
        make_env(tmp_path, demo_bundle.path, CHEXNET_DICOM_MAPS="overlay")


# --- character sets that do not lie ----------------------------------------------------------------------
NAME, LATIN1_NAME = b"Mxller^Jxrgen", "Müller^Jürgen".encode("latin-1")
PLACE, LATIN1_PLACE = b"Klinikum Nxrnberg", "Klinikum Nürnberg".encode("latin-1")


def eight_bit_source(**tags) -> bytes:
    """A source whose names are Latin-1 bytes, whatever it declares (as an old modality sends them)."""
    data = make_dicom(
        np.tile(np.arange(256, dtype=np.uint8), (256, 1)),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientName=NAME.decode(),
        InstitutionName=PLACE.decode(),
        **tags,
    )
    return data.replace(NAME, LATIN1_NAME).replace(PLACE, LATIN1_PLACE)


@pytest.mark.parametrize(
    "declared, copied, charset",
    [
        (None, False, None),
        ("ISO_IR 100", True, "ISO_IR 100"),
        ("ISO_IR 192", False, None),
    ],
    ids=["undeclared", "latin1-declared", "latin1-under-utf8"],
)
def test_eight_bit_names_are_copied_only_where_the_declared_set_says_so(
    client, env, tmp_path, caplog, declared, copied, charset
):
    data = eight_bit_source(**({"SpecificCharacterSet": declared} if declared else {}))
    caplog.set_level(logging.WARNING, logger="chexnet.dicom_results")
    parts = dicom_parts(predict(client, env, data, query="?output=dicom"))
    assert [p.SOPClassUID for p in parts] == [
        ComprehensiveSRStorage,
        SecondaryCaptureImageStorage,
        ParametricMapStorage,
    ]
    for ds in parts:
        assert dciodvfy_errors(ds, tmp_path) == [], ds.SOPClassUID.name
        assert ds.get("SpecificCharacterSet") == charset
        if copied:
            assert str(ds.PatientName) == "Müller^Jürgen"
        else:  # type 2: present and empty; InstitutionName (type 3): left out
            assert "PatientName" in ds and not ds.PatientName and "InstitutionName" not in ds
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "chexnet.dicom_results")
    assert ("PatientName" in logged and "InstitutionName" in logged) == (not copied)
    assert "ller" not in logged and "Klinikum" not in logged, "the log names the attribute, never its value"


def test_valid_utf8_names_are_copied_under_iso_ir_192(client, env, tmp_path):
    data = make_dicom(
        np.tile(np.arange(256, dtype=np.uint8), (256, 1)),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Müller^Jürgen",
    )
    for ds in dicom_parts(predict(client, env, data, query="?output=dicom")):
        assert dciodvfy_errors(ds, tmp_path) == []
        assert (str(ds.PatientName), ds.SpecificCharacterSet) == ("Müller^Jürgen", "ISO_IR 192")


def test_parametric_maps_beyond_the_budget_are_a_422_with_the_way_out(client, env):
    # 10 maps of 2,700 x 2,500 float pixels are 257 MiB, over MAP_BUDGET_MIB; the top one alone is not
    data = make_dicom(
        np.zeros((2500, 2700), dtype=np.uint8), StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid()
    )
    body = assert_error(predict(client, env, data, query="?output=dicom&heatmaps=all"), 422, "invalid_option")
    assert "heatmaps=top" in body["error"]["message"] and "CHEXNET_DICOM_MAPS=sc" in body["error"]["message"]
    parts = dicom_parts(predict(client, env, data, query="?output=dicom&heatmaps=top"))
    assert parts[-1].SOPClassUID == ParametricMapStorage and (parts[-1].Rows, parts[-1].Columns) == (2500, 2700)
