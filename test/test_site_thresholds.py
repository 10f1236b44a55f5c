"""The service with a site's thresholds (CHEXNET_SITE_THRESHOLDS, from python -m chexnet calibrate run on the real
sample radiographs): applied when the bundle loads, named in every response, audit row and SR; refused, with one
sentence naming the file and what differs, for another bundle version, manifest or precision, while the other
models load; refused at start when the file is not one calibrate wrote or was edited since."""

import json
import os
import shutil

import pytest

from api_helpers import conforms, make_env, predict, ready_app
from calibration_helpers import ANY_FINDING, cxr10_labels, run_calibrate
from chexnet.dicom_results import ResultSettings, result_objects
from chexnet.options import PredictOptions
from chexnet.service import Settings
from chexnet.service.settings import SettingsError
from chexnet.site_thresholds import MAX_BYTES, SiteThresholdsError, read_site_thresholds, with_hash
from dicom_tools import dciodvfy_errors


@pytest.fixture(scope="module")
def site_file(tmp_path_factory, demo_bundle, nih_dir):
    root = tmp_path_factory.mktemp("site")
    cxr10_labels(nih_dir, root / "labels.csv")
    proc = run_calibrate(
        "--bundle", demo_bundle.path, "--images", nih_dir, "--labels", root / "labels.csv",
        "--target", "youden", "--bootstrap", "200", "--out", root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return root / "site-thresholds.json"


@pytest.fixture(scope="module")
def site(site_file):
    document = json.loads(site_file.read_text())
    classes = {c["code"]: c for c in document["classes"]}
    assert classes[ANY_FINDING]["source"] == "site"
    return document, classes, "site@" + document["content_sha256"][:12]


@pytest.fixture(scope="module")
def site_env(tmp_path_factory, demo_bundle, site_file):
    return make_env(tmp_path_factory.mktemp("api"), demo_bundle.path, CHEXNET_SITE_THRESHOLDS=str(site_file))


@pytest.fixture(scope="module")
def site_app(site_env):
    return ready_app(site_env)


def test_the_site_thresholds_decide_and_every_response_says_so(site_app, site_env, site, nih_sample):
    document, classes, tag = site
    client = site_app.test_client()
    assert client.get("/api/v1/ready").status_code == 200
    response = predict(client, site_env, nih_sample[0].read_bytes())
    body = conforms(response, "/api/v1/predict", "post")
    assert body["model"]["thresholds"] == tag
    for finding in body["findings"]:
        assert finding["threshold"] == classes[finding["code"]]["threshold"]
        assert finding["positive"] == (finding["probability"] >= finding["threshold"])
    assert next(f for f in body["findings"] if f["code"] == ANY_FINDING)["threshold"] != 0.5  # moved by the site
    models = conforms(client.get("/api/v1/models", headers=site_env.auth()), "/api/v1/models")["models"]
    assert models[0]["thresholds"] == tag
    assert {label["code"]: label["threshold"] for label in models[0]["labels"]} == {
        code: entry["threshold"] for code, entry in classes.items()
    }
    rows = [json.loads(line) for line in (site_env.root / "audit.jsonl").read_text().splitlines()]
    assert rows[-1]["model"]["thresholds"] == tag


def test_the_sr_names_the_site_thresholds(site_app, site, dicom_dir, tmp_path):
    _, classes, tag = site
    service = site_app.extensions["chexnet"]
    predictor = service.models["cxr10"].predictor
    data = (dicom_dir / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm").read_bytes()
    prediction = predictor.predict(lambda: data, PredictOptions.parse(output="dicom", heatmaps="none"))
    sr = result_objects(ResultSettings(), prediction)[0]
    texts = [str(element.value) for element in sr.iterall() if element.keyword == "TextValue"]
    assert f"thresholds={tag}" in texts  # among the algorithm's parameters
    assert dciodvfy_errors(sr, tmp_path) == []


def test_without_the_setting_the_bundle_thresholds_decide(app, env, nih_sample):
    body = conforms(predict(app.test_client(), env, nih_sample[0].read_bytes()), "/api/v1/predict", "post")
    assert body["model"]["thresholds"] == "bundle"


def _variant(site_file, tmp_path, **bundle_changes):
    document = json.loads(site_file.read_text())
    document["bundle"].update(bundle_changes)
    path = tmp_path / "site-thresholds.json"
    path.write_text(json.dumps(with_hash(document)))
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"version": "2.0.0"}, "version 2.0.0, not 0.0.0-demo"),
        ({"precision": "int8"}, "precision int8, not fp32"),
        ({"manifest_sha256": "0" * 64}, "another manifest.json"),
    ],
)
def test_thresholds_for_another_bundle_keep_that_model_out_and_say_why(
    change, expected, site_file, demo_bundle, tmp_path
):
    path = _variant(site_file, tmp_path, **change)
    # a second bundle (the same weights under another id) is not what the file was made for: it still loads
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_SITE_THRESHOLDS=str(path))
    other = tmp_path / "models" / "other"
    shutil.copytree(demo_bundle.path, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "id": "other"}))
    client = ready_app(env).test_client()
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503
    (reason,) = ready.get_json()["reasons"]
    assert str(path) in reason and "CHEXNET_SITE_THRESHOLDS" in reason and expected in reason
    service = client.application.extensions["chexnet"]
    assert list(service.models) == ["other"]
    assert service.models["other"].predictor.model_info.thresholds == "bundle"


def test_thresholds_for_a_bundle_that_is_not_loaded_are_a_ready_problem(site_file, demo_bundle, tmp_path):
    path = _variant(site_file, tmp_path, id="cxr25")
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_SITE_THRESHOLDS=str(path))
    ready = ready_app(env).test_client().get("/api/v1/ready")
    assert ready.status_code == 503
    assert any(
        "made for bundle cxr25, which is not loaded here (loaded: cxr10)" in r for r in ready.get_json()["reasons"]
    )


def _settings(tmp_path, demo_bundle, path):
    env = make_env(tmp_path, demo_bundle.path)
    return Settings.from_env(
        {
            "CHEXNET_MODELS_DIR": str(tmp_path / "models"),
            "CHEXNET_LICENSE_KEYS": str(env.root / "vendor_public.pem"),
            "CHEXNET_SITE_THRESHOLDS": str(path),
        }
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("{not json", "is not readable JSON"),
        ('{"schema": "something else"}', "is not a site thresholds file"),
        ("edited", "was changed after calibrate wrote it"),
        ("no classes", "field 'classes' is invalid"),
    ],
)
def test_a_file_that_calibrate_did_not_write_stops_the_start(content, expected, site_file, demo_bundle, tmp_path):
    path = tmp_path / "thresholds.json"
    if content == "edited":
        document = json.loads(site_file.read_text())
        document["classes"][0]["threshold"] = 0.01
        path.write_text(json.dumps(document))
    elif content == "no classes":
        path.write_text(json.dumps(with_hash({**json.loads(site_file.read_text()), "classes": []})))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as raised:
        _settings(tmp_path, demo_bundle, path)
    message = str(raised.value)
    assert message.startswith("CHEXNET_SITE_THRESHOLDS: ") and expected in message and str(path) in message


def test_predict_on_the_command_line_applies_them_as_the_service_does(site_file, site, demo_bundle, nih_sample, capsys):
    _, classes, tag = site
    from chexnet.cli import main

    assert (
        main(["predict", "--bundle", str(demo_bundle.path), "--site-thresholds", str(site_file), str(nih_sample[0])])
        == 0
    )
    line = json.loads(capsys.readouterr().out)
    assert line["model"]["thresholds"] == tag
    assert {f["code"]: f["threshold"] for f in line["findings"]} == {c: e["threshold"] for c, e in classes.items()}


def test_predict_refuses_thresholds_made_for_another_version(site_file, demo_bundle, nih_sample, tmp_path, capsys):
    from chexnet.cli import main

    path = _variant(site_file, tmp_path, version="2.0.0")
    assert main(["predict", "--bundle", str(demo_bundle.path), "--site-thresholds", str(path), str(nih_sample[0])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "were made for version 2.0.0, not 0.0.0-demo" in captured.err


def test_settings_holding_site_thresholds_compare_and_hash_as_before(site_env):
    settings = site_env.settings
    assert settings.site is not None and hash(settings) == hash(settings)
    assert settings == settings.__class__(**{**settings.__dict__, "site": None})  # the path compares, not the copy


def test_the_monitor_takes_the_calibration_scores_as_its_reference(site_file, demo_bundle):
    from chexnet.service.monitoring import site_reference

    reference = site_reference(str(site_file))
    assert set(reference) == {"cxr10"} and set(reference["cxr10"]) == set(demo_bundle.manifest.codes)
    assert all(len(counts) == 20 and sum(counts) == 40 for counts in reference["cxr10"].values())


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # nested past the decoder's recursion limit
        "NaN",  # a valid file with NaN beside its fields: Python's json reads it, the hash cannot be taken
        "1e400",  # and a number that Python's json reads as inf
        " " * (MAX_BYTES + 1) + "{}",  # far bigger than any such file: not read into memory
    ],
    ids=["deeply-nested", "nan", "inf", "huge"],
)
def test_a_hostile_file_is_one_sentence_not_a_traceback(text, tmp_path):
    path = tmp_path / "thresholds.json"
    if text in ("NaN", "1e400"):
        made_for = {"id": "cxr10", "version": "1", "precision": "fp32", "manifest_sha256": "0" * 64, "demo": True}
        classes = [{"code": "pneumothorax", "threshold": 0.5, "source": "site"}]
        document = with_hash({"schema": "chexnet-site-thresholds/1", "bundle": made_for, "classes": classes})
        text = json.dumps(document)[:-1] + f', "note": {text}}}'
    path.write_text(text)
    with pytest.raises(SiteThresholdsError) as raised:
        read_site_thresholds(path)
    assert str(path) in raised.value.message


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder"])
def test_a_file_that_is_no_regular_file_is_one_sentence_and_no_wait(special, tmp_path):
    path = tmp_path / "thresholds.json"
    if special == "fifo":
        os.mkfifo(path)  # no writer: opening it to read would wait for ever
    elif special == "folder":
        path.mkdir()
    else:
        path = special
    with pytest.raises(SiteThresholdsError) as raised:
        read_site_thresholds(path)
    assert "is not a regular file" in raised.value.message or "not readable" in raised.value.message
