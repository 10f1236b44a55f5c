"""bench/gpu_check.py --dry (issue 22): the GPU proof's code paths on the CPU over two images, so the script a
lent GPU machine runs in one command cannot rot. Checks that every section ran and wrote what it measures, in
the JSON and in the markdown that goes into BENCHMARKS.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry(nih_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--samples", str(nih_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), run.stdout


def test_every_section_ran(dry):
    results, _, _ = dry
    for name in ("environment", "bundle", "correctness", "forward", "service", "cpu_engines"):
        assert name in results and "error" not in results[name], (name, results.get(name))
    assert results["dry"] is True


def test_environment_names_the_machine(dry):
    env = dry[0]["environment"]
    assert env["torch"] and env["cores"] >= 1 and env["onnxruntime"]
    assert "sm_75" in env["torch_built_for"] or not env["torch_built_for"]  # a CPU-only torch lists none


def test_correctness_compares_with_onnx_runtime_and_runs_the_fp16_startup_check(dry):
    c = dry[0]["correctness"]
    assert c["images"] == 2 and len(c["samples"]) == 2
    assert c["fp32_ok"] and c["fp32_max_dp"] <= 1e-4 and c["fp32_max_dcam"] <= 1e-4
    assert 0 < c["bf16_autocast_max_dp"] < 0.05
    check = c["fp16_startup_check"]
    assert check["measured"] == "start-up" and check["precision"] == "fp16" and check["images"] == 1
    assert 0 < check["max_delta"] <= check["max_delta_bound"] == 0.01
    assert dry[0]["bundle"]["startup_variants"] == ["fp16"]


def test_forward_measures_each_mode_and_batch(dry):
    rows = dry[0]["forward"]["rows"]
    assert {r["batch"] for r in rows} == {1, 2}
    measured = {r["mode"] for r in rows if r.get("images_per_s", 0) > 0}
    assert measured == {"eager NCHW fp32", "channels_last fp32", "engine.infer fp32 (host↔device, CAMs)"}
    assert {r["mode"] for r in rows if r.get("skipped") == "needs CUDA"} == {
        "CUDA graph, channels_last fp32",
        "channels_last fp16 autocast",
    }


def _complete(row: dict) -> None:
    assert row["requests"] > 0 and row["errors"] == {} and row["requests_per_s"] > 0, row
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["mean_batch"] >= 1 and row["server_cores"] > 0 and row["bottleneck"]
    assert set(row["stage_ms"]) == {"decode", "preprocess", "inference", "heatmap"}


def test_service_rows_under_load(dry):
    s = dry[0]["service"]
    rows = s["rows"]
    assert [(r["max_batch"], r["clients"]) for r in rows] == [(2, 1), (2, 2)]
    for row in rows:
        _complete(row)
        assert row["precision"] == "fp32" and row["gpu_util_pct"] is None  # no nvidia-smi here
        assert row["share_of_engine_rate"] > 0
    assert s["servers"]["fp32, max batch 2"] == {"engine": "torch", "device": "cpu", "precision": "fp32"}
    assert s["json_base64_ms"] > 0


def test_cpu_engine_rows(dry):
    rows = dry[0]["cpu_engines"]["rows"]
    assert [(r["engine"], r["layout"], r["clients"]) for r in rows] == [("onnxruntime", "default (chexnet/cpu.py)", 2)]
    _complete(rows[0])


def test_markdown_has_every_section_and_its_table(dry):
    _, markdown, stdout = dry
    assert markdown.startswith("## GPU check (`bench/gpu_check.py --dry`, CPU only, ")
    for heading, table in (
        ("### Environment", "| torch_built_for |"),
        ("### Bundle", "measured at start-up fp16"),
        ("### Correctness", "| torch fp32 on the device vs ONNX Runtime fp32 (CPU): max abs dp |"),
        ("### Bare forward", "| batch | eager NCHW fp32 | channels_last fp32 |"),
        ("### The service under load", "| max batch | precision | clients | requests/s |"),
        ("### CPU engines on this machine's cores", "| onnxruntime fp32 | 2 × 1 |"),
    ):
        assert heading in markdown and table.split(" 2 × 1")[0] in markdown, heading
    assert "Failed" not in markdown and markdown in stdout
