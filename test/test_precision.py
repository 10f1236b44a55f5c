"""The OpenVINO engine and validated bf16/int8 variants (DESIGN.md "CPU engines and precision")."""

import json
import shutil
import subprocess
import sys

import numpy as np
import openvino as ov
import pytest

from api_helpers import make_env, ready_app
from chexnet.bundle import load_bundle
from chexnet.bundle.build import write_demo_bundle
from chexnet.bundle.manifest import MODEL_INT8
from chexnet.bundle.variants import VariantRequest
from chexnet.engines import create_engine
from chexnet.engines.openvino import cpu_runs_bf16
from chexnet.errors import BundleError, EngineUnavailable
from chexnet.heatmap import normalise
from chexnet.predictor import Predictor

BF16_HERE = cpu_runs_bf16(ov.Core())
PRECISIONS_HERE = ("int8", "bf16") if BF16_HERE else ("int8",)


@pytest.fixture(scope="session")
def calibration(nih_dir, tmp_path_factory):
    """Eight NIH images (links to ../shared/data) and a file that is not an image, which is skipped."""
    directory = tmp_path_factory.mktemp("calibration")
    for path in sorted(nih_dir.glob("*.png"))[:8]:
        (directory / path.name).symlink_to(path)
    (directory / "labels.csv").write_text("Image Index,Finding Labels\n")
    return directory


@pytest.fixture(scope="session")
def variant_bundle(tmp_path_factory, calibration):
    """Validated on the 8 images against a bound of 0.05: loose enough for int8 on any CPU (0.006 here)."""
    out = tmp_path_factory.mktemp("variants") / "cxr10"
    return load_bundle(write_demo_bundle(out, "cxr10", variants=VariantRequest(PRECISIONS_HERE, calibration, 0.05)))


def _all_real_images(nih_dir, dicom_dir):
    return sorted(nih_dir.glob("*.png")) + sorted(dicom_dir.glob("*.dcm"))


def test_openvino_fp32_matches_onnxruntime_on_the_real_images(nih_dir, dicom_dir, demo_bundle, onnx_predictor):
    openvino = Predictor(demo_bundle, create_engine(demo_bundle, "openvino", concurrency=2))
    assert openvino.model_info.engine == "openvino" and openvino.model_info.precision == "fp32"
    for path in _all_real_images(nih_dir, dicom_dir):
        x = onnx_predictor.prepare(path.read_bytes()).tensor[None]
        ours, reference = openvino.engine.infer(x), onnx_predictor.engine.infer(x)
        np.testing.assert_allclose(ours.probabilities, reference.probabilities, atol=1e-4, err_msg=path.name)
        for a, b in zip(ours.cams[0], reference.cams[0], strict=True):
            np.testing.assert_allclose(normalise(a), normalise(b), atol=1e-4, err_msg=path.name)


def test_build_records_each_variant_measured_against_fp32(variant_bundle, calibration):
    variants = variant_bundle.manifest.variants
    assert set(variants) == set(PRECISIONS_HERE)
    assert variants["int8"].graph == MODEL_INT8 and {"model-int8.xml", "model-int8.bin"} <= set(
        variant_bundle.manifest.files
    )
    for precision, variant in variants.items():
        assert variant.images == 8 and variant.decisions == 80 and variant.max_delta_bound == 0.05
        assert 0 < variant.max_delta <= 0.05, precision  # reduced precision moves something, within the bound
        assert 0 <= variant.flips <= variant.decisions


@pytest.mark.parametrize("precision", PRECISIONS_HERE)
def test_served_variant_stays_within_its_recorded_bound(variant_bundle, calibration, onnx_predictor, precision):
    served = Predictor(variant_bundle, create_engine(variant_bundle, "openvino", precision=precision, concurrency=2))
    assert served.model_info.precision == precision
    reference = Predictor(variant_bundle, create_engine(variant_bundle, "onnxruntime"))
    deltas = []
    for path in sorted(calibration.glob("*.png")):
        x = reference.prepare(path.read_bytes()).tensor[None]
        deltas.append(np.abs(served.engine.infer(x).probabilities - reference.engine.infer(x).probabilities).max())
    variant = variant_bundle.manifest.variants[precision]
    assert max(deltas) == pytest.approx(variant.max_delta, abs=1e-3)
    assert max(deltas) <= variant.max_delta_bound


def test_precision_needs_a_validated_variant(demo_bundle):
    with pytest.raises(EngineUnavailable, match="no validated int8 variant.*--calibration"):
        create_engine(demo_bundle, "openvino", precision="int8")
    with pytest.raises(EngineUnavailable, match="runs fp32, not bf16"):
        create_engine(demo_bundle, "onnxruntime", precision="bf16")


def test_bf16_refused_on_a_cpu_without_it(demo_bundle, tmp_path, monkeypatch):
    """A bundle built on an AMX server and carried to an older one: refused at start, not emulated."""
    bundle_dir = tmp_path / "cxr10"
    shutil.copytree(demo_bundle.path, bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["variants"] = {
        "bf16": {
            "graph": "model.onnx",
            "max_delta": 0.002,
            "max_delta_bound": 0.01,
            "flips": 0,
            "decisions": 80,
            "images": 8,
            "cpu": "elsewhere",
        }
    }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("chexnet.engines.openvino.cpu_runs_bf16", lambda core: False)
    with pytest.raises(EngineUnavailable, match="neither AMX nor AVX512-BF16.*CHEXNET_PRECISION=fp32"):
        create_engine(load_bundle(bundle_dir), "openvino", precision="bf16")


def test_build_refuses_a_variant_beyond_the_bound(tmp_path, calibration):
    out = tmp_path / "cxr10"
    with pytest.raises(
        BundleError, match=r"int8 variant moves probabilities by up to .* \(limit 1e-06\); bundle not written"
    ):
        write_demo_bundle(out, "cxr10", variants=VariantRequest(("int8",), calibration, max_delta=1e-6))
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no bundle, no staging left behind


def test_a_replaced_int8_graph_is_refused(variant_bundle, tmp_path):
    copy = tmp_path / "cxr10"
    shutil.copytree(variant_bundle.path, copy)
    with open(copy / "model-int8.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    with pytest.raises(BundleError, match="model-int8.bin does not match its sha256"):
        load_bundle(copy)


def test_calibration_must_hold_readable_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(BundleError, match="holds no PNG, JPEG or DICOM image"):
        write_demo_bundle(tmp_path / "a", "cxr10", variants=VariantRequest(("int8",), empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(BundleError, match="Calibration image .*cut.png cannot be read"):
        write_demo_bundle(tmp_path / "b", "cxr10", variants=VariantRequest(("int8",), broken))


def test_cli_precision_needs_calibration(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexnet",
            "bundle",
            "demo",
            "--labels",
            "cxr10",
            "--out",
            str(tmp_path / "x"),
            "--precision",
            "int8",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "--precision needs --calibration DIR" in run.stderr
    assert not (tmp_path / "x").exists()


def test_service_names_engine_and_precision(tmp_path, variant_bundle, nih_sample):
    env = make_env(tmp_path, variant_bundle.path, CHEXNET_ENGINE="openvino", CHEXNET_PRECISION="int8")
    client = ready_app(env).test_client()
    models = client.get("/api/v1/models", headers=env.auth()).get_json()["models"]
    assert models[0]["engine"] == "openvino" and models[0]["precision"] == "int8"
    response = client.post(
        "/api/v1/predict", data=nih_sample[0].read_bytes(), content_type="image/png", headers=env.auth()
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["model"] == {
        "id": "cxr10",
        "version": "0.0.0-demo",
        "demo": True,
        "engine": "openvino",
        "device": "cpu",
        "precision": "int8",
        "thresholds": "bundle",
    }


def test_service_without_the_variant_is_not_ready_and_says_why(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_ENGINE="openvino", CHEXNET_PRECISION="int8")
    client = ready_app(env).test_client()
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503
    assert any("no validated int8 variant" in reason for reason in ready.get_json()["reasons"])
