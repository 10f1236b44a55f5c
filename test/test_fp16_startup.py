"""fp16 measured where it runs (issue 22, item 4; DESIGN.md "CPU engines and precision"): a bundle built with
``--precision fp16`` keeps its calibration images as the model sees them, and the torch engine in fp16
measures itself against fp32 on them on its own device as the service starts; beyond the bundle's bound the
service is not ready and /ready says why. Here the device is the CPU, chosen explicitly (CHEXNET_DEVICE=cpu):
the same code path as on a GPU, with CPU autocast."""

import json
import shutil

import numpy as np
import pytest
import torch

from api_helpers import make_env, ready_app
from chexnet.bundle import load_bundle
from chexnet.bundle.build import write_demo_bundle
from chexnet.bundle.calibration import calibration_tensors, load_inputs
from chexnet.bundle.manifest import CALIBRATION_INPUTS
from chexnet.bundle.variants import VariantRequest
from chexnet.engines import create_engine
from chexnet.errors import BundleError, EngineUnavailable

FP16_ON_CPU = {"CHEXNET_ENGINE": "torch", "CHEXNET_DEVICE": "cpu", "CHEXNET_PRECISION": "fp16"}


@pytest.fixture(scope="module")
def calibration(nih_dir, tmp_path_factory):
    """Two NIH images (one of them RGBA) and a file that is not an image."""
    directory = tmp_path_factory.mktemp("fp16-calibration")
    for name in ("00000075_000.png", "00000100_000.png"):
        (directory / name).symlink_to(nih_dir / name)
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory, calibration):
    out = tmp_path_factory.mktemp("fp16") / "cxr10"
    return load_bundle(write_demo_bundle(out, "cxr10", variants=VariantRequest(("fp16",), calibration, 0.01)))


def _with_bound(bundle, root, bound):
    copy = root / bundle.path.name
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["startup_variants"]["fp16"]["max_delta_bound"] = bound
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(copy)


def test_build_keeps_the_calibration_inputs_exactly(fp16_bundle, calibration):
    m = fp16_bundle.manifest
    assert m.variants == {}  # nothing measured at build: fp16 depends on the GPU that serves it
    spec = m.startup_variants["fp16"]
    assert (spec.engine, spec.inputs, spec.images, spec.max_delta_bound) == ("torch", CALIBRATION_INPUTS, 2, 0.01)
    assert CALIBRATION_INPUTS in m.files
    kept = load_inputs(fp16_bundle, spec.inputs, spec.images)
    # what the service measures on is bit for bit what the build read through decode and preprocessing
    assert np.array_equal(kept, calibration_tensors(calibration, m.input_size, m.mean, m.std))


def test_a_calibration_set_that_does_not_match_the_manifest_is_refused(fp16_bundle, tmp_path):
    with pytest.raises(BundleError, match="holds uint8 \\(2, 224, 224\\), not the 3 uint8 224x224 images"):
        load_inputs(fp16_bundle, CALIBRATION_INPUTS, 3)


def test_service_serves_fp16_only_after_measuring_it(tmp_path, fp16_bundle, nih_sample):
    env = make_env(tmp_path, fp16_bundle.path, **FP16_ON_CPU)
    client = ready_app(env).test_client()
    assert client.get("/api/v1/ready").status_code == 200
    model = client.get("/api/v1/models", headers=env.auth()).get_json()["models"][0]
    assert (model["engine"], model["device"], model["precision"]) == ("torch", "cpu", "fp16")
    measured = model["variants"]["fp16"]
    assert measured["measured"] == "start-up" and measured["images"] == 2 and measured["decisions"] == 20
    assert measured["max_delta_bound"] == 0.01
    assert 0 < measured["max_delta"] <= 0.01  # fp16 moves something, within the bound
    assert measured["device"]  # the CPU (on a GPU: its name)
    response = client.post(
        "/api/v1/predict", data=nih_sample[0].read_bytes(), content_type="image/png", headers=env.auth()
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["model"]["precision"] == "fp16"


def test_fp16_beyond_the_bundles_bound_is_not_served(tmp_path, fp16_bundle):
    strict = _with_bound(fp16_bundle, tmp_path / "strict", 1e-9)
    env = make_env(tmp_path, strict.path, **FP16_ON_CPU)
    client = ready_app(env).test_client()
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503
    reasons = ready.get_json()["reasons"]
    assert len(reasons) == 1
    assert reasons[0].startswith("fp16 on this ")
    assert "moves bundle cxr10's probabilities by up to " in reasons[0]
    assert reasons[0].endswith(
        "on its 2 calibration images (limit 1e-09), so it is not served; set CHEXNET_PRECISION=fp32."
    )


def test_fp16_without_calibration_images_is_not_served(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, **FP16_ON_CPU)
    ready = ready_app(env).test_client().get("/api/v1/ready")
    assert ready.status_code == 503
    assert any(
        reason.startswith("Bundle cxr10 carries no calibration images for fp16, so fp16 cannot be measured")
        and "'bundle build --precision fp16 --calibration DIR'" in reason
        for reason in ready.get_json()["reasons"]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: auto resolves to it")
def test_fp16_with_auto_device_and_no_gpu_is_refused(fp16_bundle):
    with pytest.raises(EngineUnavailable, match="fp16 needs a CUDA device and none is visible.*CHEXNET_DEVICE=cpu"):
        create_engine(fp16_bundle, "torch", "auto", "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_the_gpu_is_measured_there(fp16_bundle):
    engine = create_engine(fp16_bundle, "torch", "cuda", "fp16")
    assert engine.measurement.device == torch.cuda.get_device_name(0)
    assert engine.measurement.max_delta <= 0.01
