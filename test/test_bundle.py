"""Bundles: demo label sets, every customer checkpoint shape, and refusal of broken bundles."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from chexnet.bundle import load_bundle
from chexnet.bundle.build import demo_state_dict, write_bundle
from chexnet.bundle.checkpoint import read_checkpoint
from chexnet.engines import create_engine
from chexnet.errors import BundleError
from chexnet.labels import apply_thresholds, load_labels
from chexnet.model import CheXNet


@pytest.mark.parametrize(
    "name, count, first, last",
    [
        ("cxr10", 10, ("atelectasis", "肺不张"), ("unspecified_10", None)),
        ("cxr25", 25, ("pneumothorax", "气胸"), ("interstitial_involvement", "间质改变")),
        ("chestxray14", 14, ("atelectasis", None), ("hernia", None)),
    ],
)
def test_builtin_label_sets(name, count, first, last):
    labels = load_labels(name)
    assert len(labels) == count
    for label, (code, zh) in ((labels[0], first), (labels[-1], last)):
        assert label.code == code and label.name.en
        if zh:
            assert label.name.zh == zh


def test_chestxray14_order_matches_nih_labels(nih_dir):
    header = (nih_dir / "labels.csv").read_text().splitlines()[0].split(",")[1:]
    assert [label.code for label in load_labels("chestxray14")] == [h.lower() for h in header]


def test_cxr25_codes_in_design_order():
    codes = [label.code for label in load_labels("cxr25")]
    assert codes[:4] == ["pneumothorax", "emphysema", "calcification", "picc_implant"]
    assert codes[8] == "cardiomegaly" and codes[17] == "pleural_effusion" and codes[23] == "pacemaker_implant"


def test_demo_bundle_manifest(demo_bundle):
    m = demo_bundle.manifest
    assert m.demo is True and m.arch == "densenet121" and m.input_size == 224
    assert set(m.files) == {"weights.pt", "model.onnx"}
    assert m.mean == (0.485, 0.456, 0.406) and m.preprocessing.resize == "pil-bilinear-antialias"
    assert "not for diagnosis" in m.description.lower()


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle.path, tmp_path / "copy")


def test_tampered_weight_is_refused(demo_bundle, tmp_path):
    path = _copy(demo_bundle, tmp_path)
    with open(path / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(path)


def test_missing_file_and_manifest_are_refused(demo_bundle, tmp_path):
    path = _copy(demo_bundle, tmp_path)
    (path / "weights.pt").unlink()
    with pytest.raises(BundleError, match="weights.pt is listed .* but missing"):
        load_bundle(path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="No manifest.json"):
        load_bundle(path)


def test_label_count_mismatch_is_refused(demo_bundle, tmp_path):
    path = _copy(demo_bundle, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["labels"] = manifest["labels"][:9]
    (path / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(path)  # the manifest alone is valid
    for engine in ("onnxruntime", "torch"):
        with pytest.raises(BundleError, match="has 10 outputs but manifest.json lists 9 labels"):
            create_engine(bundle, engine, "cpu")


def test_invalid_manifest_field_named(demo_bundle, tmp_path):
    path = _copy(demo_bundle, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["input_size"] = 100
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'input_size' is invalid"):
        load_bundle(path)


def _legacy(key: str) -> str:
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


CHECKPOINT_SHAPES = {
    "bare": lambda sd: sd,
    "under_state_dict": lambda sd: {"state_dict": sd, "epoch": 7, "best_auc": 0.84},
    "under_model": lambda sd: {"model": sd},
    "dataparallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    # arnoweng/CheXNet: module.densenet121.*, legacy norm.1 names, classifier.0 inside Sequential
    "arnoweng": lambda sd: {
        "state_dict": {
            "module.densenet121." + _legacy(k).replace("classifier.", "classifier.0."): v for k, v in sd.items()
        }
    },
    "legacy_names": lambda sd: {_legacy(k): v for k, v in sd.items()},
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(CHECKPOINT_SHAPES))
def test_each_checkpoint_shape_builds_a_bundle_that_predicts_like_its_source(shape, tmp_path):
    labels = load_labels("chestxray14")
    source = demo_state_dict(len(labels), seed=42)
    wrapped = CHECKPOINT_SHAPES[shape](source)
    if shape in ("arnoweng", "legacy_names"):
        assert any(".norm.1." in k for k in (wrapped.get("state_dict", wrapped)))
    torch.save(wrapped, tmp_path / "model.pth.tar")
    out = write_bundle(
        tmp_path / "bundle",
        read_checkpoint(str(tmp_path / "model.pth.tar")),
        labels,
        bundle_id="customer",
        version="2.1.0",
        input_size=224,
        demo=False,
        description="t",
    )
    bundle = load_bundle(out)
    assert bundle.manifest.demo is False and bundle.manifest.version == "2.1.0"
    model = CheXNet(len(labels)).eval()
    model.load_state_dict(source)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(create_engine(bundle, "onnxruntime").infer(x).probabilities, expected, atol=1e-4)


def test_build_refuses_wrong_label_count_and_writes_nothing(tmp_path):
    torch.save(demo_state_dict(10, seed=0), tmp_path / "ckpt.pth")
    with pytest.raises(BundleError, match="classifier has 10 outputs but 25 labels"):
        write_bundle(
            tmp_path / "out",
            read_checkpoint(str(tmp_path / "ckpt.pth")),
            load_labels("cxr25"),
            bundle_id="x",
            version="1",
            input_size=224,
            demo=False,
            description="",
        )
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "ckpt.pth"]


def test_build_refuses_foreign_checkpoint(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3), "classifier.weight": torch.zeros(10, 1024)}, tmp_path / "x.pth")
    with pytest.raises(BundleError, match="not a densenet121 state_dict .*missing"):
        write_bundle(
            tmp_path / "out",
            read_checkpoint(str(tmp_path / "x.pth")),
            load_labels("cxr10"),
            bundle_id="x",
            version="1",
            input_size=224,
            demo=False,
            description="",
        )


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    (tmp_path / "notes.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(BundleError, match="not a loadable PyTorch state_dict"):
        read_checkpoint(str(tmp_path / "notes.pth"))


def test_thresholds_file(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"mass": 0.3}))
    labels = apply_thresholds(load_labels("cxr10"), str(tmp_path / "t.json"))
    assert {label.code: label.threshold for label in labels}["mass"] == 0.3
    (tmp_path / "bad.json").write_text(json.dumps({"no_such_code": 0.3}))
    with pytest.raises(BundleError, match="no_such_code"):
        apply_thresholds(load_labels("cxr10"), str(tmp_path / "bad.json"))


def test_refuses_to_overwrite_a_bundle(demo_bundle):
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(
            demo_bundle.path,
            demo_state_dict(10, 0),
            load_labels("cxr10"),
            bundle_id="x",
            version="1",
            input_size=224,
            demo=True,
            description="",
        )
