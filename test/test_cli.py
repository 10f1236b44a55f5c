"""``python -m chexnet`` as a newcomer runs it: JSON lines, typed errors, exit codes, no tracebacks."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from chexnet.cli import main
from dicom_factory import undecodable
from sample_data import ROOT


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "chexnet", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_predict_json_lines_with_heatmaps(demo_bundle, nih_sample, dicom_dir, tmp_path):
    images = [nih_sample[0], dicom_dir / "RG3_RLE.dcm"]
    proc = run_cli("predict", "--bundle", demo_bundle.path, "--heatmaps-dir", tmp_path, "--json", *images)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in images]
    for line in lines:
        assert line["model"]["demo"] is True and len(line["findings"]) == 10
        (heat,) = line["heatmaps"]
        assert (tmp_path / heat["path"].split("/")[-1]).stat().st_size > 1000


def test_predict_failure_is_json_and_exit_nonzero(demo_bundle, nih_sample, dicom_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    unknown = tmp_path / "jpip.dcm"
    unknown.write_bytes(undecodable((dicom_dir / "RSNA_pneumonia_16d7f894_CR_SC_jpegbaseline.dcm").read_bytes()))
    proc = run_cli(
        "predict", "--bundle", demo_bundle.path, "--json", unknown, text, tmp_path / "missing.png", nih_sample[0]
    )
    assert proc.returncode == 1
    jpip, txt, missing, ok = [json.loads(line) for line in proc.stdout.splitlines()]
    assert jpip["error"]["code"] == "unsupported_media_type" and "JPIP Referenced" in jpip["error"]["message"]
    assert txt["error"]["code"] == "unsupported_media_type"
    assert missing["error"]["code"] == "unreadable_file"
    assert "findings" in ok and ok["heatmaps"] == []  # no --heatmaps-dir, no --heatmaps: none made
    assert "Traceback" not in proc.stderr


HEATMAP_FORMS = {
    "none": lambda findings: [],
    "top": lambda f: [max(f, key=lambda x: x["probability"])["code"]],
    "positive": lambda f: [x["code"] for x in f if x["positive"]],
    "all": lambda f: [x["code"] for x in f],
    "atelectasis,mass": lambda f: ["atelectasis", "mass"],
}


@pytest.mark.parametrize("with_dir", [True, False], ids=["heatmaps-dir", "inline"])
@pytest.mark.parametrize("form", list(HEATMAP_FORMS))
def test_every_heatmaps_form_with_and_without_a_directory(form, with_dir, demo_bundle, nih_sample, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--bundle", str(demo_bundle.path), "--heatmaps", form, "--json", str(nih_sample[0])]
    assert main(args + (["--heatmaps-dir", str(out)] if with_dir else [])) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert [h["code"] for h in line["heatmaps"]] == HEATMAP_FORMS[form](line["findings"])
    for heat in line["heatmaps"]:
        data = Path(heat["path"]).read_bytes() if with_dir else base64.b64decode(heat["data"])
        assert Image.open(io.BytesIO(data)).size == (heat["width"], heat["height"])
        assert ("path" in heat) == with_dir and ("data" in heat) != with_dir
    assert out.is_dir() == with_dir


def test_unknown_heatmap_code_stops_before_any_image(demo_bundle, nih_sample, capsys):
    assert main(["predict", "--bundle", str(demo_bundle.path), "--heatmaps", "mass,bogus", str(nih_sample[0])]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown: bogus" in captured.err


def test_broken_bundle_is_one_sentence(tmp_path):
    proc = run_cli("predict", "--bundle", tmp_path, "--json", "x.png")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: No manifest.json in {tmp_path}; is this a model bundle directory?"


@pytest.mark.slow
def test_bundle_demo_command(tmp_path):
    proc = run_cli("bundle", "demo", "--labels", "cxr25", "--out", tmp_path / "cxr25", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "cxr25" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["id"] == "cxr25" and manifest["demo"] is True and len(manifest["labels"]) == 25
    assert manifest["labels"][0]["name"] == {"en": "Pneumothorax", "zh": "气胸"}
