"""The monitoring roll-up (chexnet.service.monitoring): counts and score histograms per hour from real
predictions, no patient data in the file, several processes adding to one file, retention, the reference
(site calibration or first days) and PSI, the chexnet_score_psi gauge, GET /api/v1/monitor, and the alert rules
file (YAML; promtool where installed)."""

import base64
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pydicom
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from api_helpers import assert_error, conforms, make_env, predict, ready_app
from chexnet.predictor import Caller, Finding, ModelInfo, Prediction
from chexnet.service.monitoring import (
    BINS,
    PSI_MIN_COUNT,
    DriftCollector,
    MonitorSettings,
    Rollup,
    approximate_quantile,
    psi,
    score_bin,
    site_bundle_version,
    site_reference,
)
from sample_data import ROOT

ALERTS = ROOT / "deployment_template" / "prometheus" / "chexnet-alerts.yml"
ALERT_TESTS = ROOT / "deployment_template" / "prometheus" / "chexnet-alerts.test.yml"
HOUR = 3600.0


class Clock:
    def __init__(self, t: float = 1_000 * HOUR):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _prediction(scores: dict[str, float], demo_bundle, version: str = "1.0.0", ms: float = 40.0) -> Prediction:
    """A prediction of the demo bundle's labels with the given scores (others 0.01)."""
    labels = demo_bundle.manifest.labels
    findings = [
        Finding(label, scores.get(label.code, 0.01), scores.get(label.code, 0.01) >= label.threshold)
        for label in labels
    ]
    model = ModelInfo("cxr10", version, True, "onnxruntime", "cpu", "fp32")
    image = {"format": "png", "width": 1024, "height": 1024}
    return Prediction(model, image, findings, [], {"total": ms}, "0" * 64, [])


def _rollup(tmp_path: Path, clock: Clock, **settings) -> Rollup:
    return Rollup(MonitorSettings(str(tmp_path / "monitor.sqlite"), **settings), clock=clock, start_thread=False)


# --- pure functions ---------------------------------------------------------------------------------
def test_score_bins_cover_zero_to_one_like_the_calibration_histogram():
    assert [score_bin(p) for p in (0.0, 0.049, 0.05, 0.5, 0.999, 1.0)] == [0, 0, 1, 10, 19, 19]


def test_psi_is_zero_for_the_same_shape_and_grows_with_a_shift():
    reference = [5] * BINS
    assert psi(reference, [10] * BINS) == 0.0
    shifted = [0] * 10 + [20] * 10
    # half the bins empty (floored at 1e-4), half doubled: sum of (q - p) ln(q / p) over the 20 bins
    expected = 10 * (1e-4 - 0.05) * __import__("math").log(1e-4 / 0.05) + 10 * (0.1 - 0.05) * __import__("math").log(
        0.1 / 0.05
    )
    assert psi(reference, shifted) == pytest.approx(expected, rel=1e-5)
    assert psi(reference, shifted) > 0.25
    assert psi([1] * 2 + [0] * (BINS - 2), [10] * BINS) is None  # too few in the reference


def test_latency_quantiles_interpolate_inside_the_bucket():
    counts = [0] * 12
    counts[2] = 50  # 25..50 ms
    counts[4] = 50  # 100..250 ms
    assert approximate_quantile(counts, 0.5) == 50.0
    assert approximate_quantile(counts, 0.99) == pytest.approx(100 + 150 * 49 / 50, abs=0.1)
    assert approximate_quantile([0] * 12, 0.5) is None
    assert approximate_quantile([0] * 11 + [3], 0.99) == 30000.0  # the open bucket answers its lower bound


# --- the roll-up -------------------------------------------------------------------------------------
def test_rollup_counts_histograms_positive_rates_and_latency(tmp_path, demo_bundle):
    clock = Clock()
    rollup = _rollup(tmp_path, clock)
    for i in range(10):
        rollup.observe(_prediction({"pneumothorax": 0.9 if i < 3 else 0.12}, demo_bundle, ms=40.0), Caller())
    rollup.refusal("invalid_image")
    rollup.refusal("invalid_image")
    rollup.flush()
    hour = rollup.hour()
    counts = rollup.counts("cxr10", hour, hour)
    assert counts["predictions"][""] == [(hour, 10)]
    assert counts["positive"]["pneumothorax"] == [(hour, 3)]
    assert counts["latency"]["2"] == [(hour, 10)]  # 40 ms: the 25..50 ms bucket
    assert rollup.counts("", hour, hour)["refusal"]["invalid_image"] == [(hour, 2)]
    histogram = rollup.histograms("cxr10", hour, hour)["pneumothorax"]
    assert histogram[score_bin(0.9)] == 3 and histogram[score_bin(0.12)] == 7 and sum(histogram) == 10
    rollup.flush()  # nothing pending: nothing added twice
    assert rollup.counts("cxr10", hour, hour)["predictions"][""] == [(hour, 10)]
    rollup.close()


def _add(path: str, hour: float, count: int, bundle_path: str) -> None:
    """One process's share of the concurrency test: its own roll-up on the shared file."""
    from chexnet.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    rollup = Rollup(MonitorSettings(path, flush_s=0.01), clock=lambda: hour)
    for _ in range(count):
        rollup.observe(_prediction({"atelectasis": 0.7}, bundle))
        if _ % 50 == 0:
            rollup.flush()
    rollup.close()


def test_several_processes_add_to_one_file(tmp_path, demo_bundle):
    path, clock = str(tmp_path / "monitor.sqlite"), Clock()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_add, args=(path, clock.t, 400, str(demo_bundle.path)), daemon=True) for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    rollup = _rollup(tmp_path, clock)
    hour = rollup.hour()
    assert rollup.counts("cxr10", hour, hour)["predictions"][""] == [(hour, 1600)]
    assert sum(rollup.histograms("cxr10", hour, hour)["atelectasis"]) == 1600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_retention_drops_old_hours_but_keeps_the_frozen_reference(tmp_path, demo_bundle):
    clock = Clock()
    rollup = _rollup(tmp_path, clock, reference_days=1, retention_days=2)
    start = rollup.hour()
    for _ in range(PSI_MIN_COUNT):
        rollup.observe(_prediction({"pleural_effusion": 0.3}, demo_bundle))
    rollup.flush()
    clock.t += 30 * HOUR  # the reference day is over: the next read freezes it
    assert rollup.reference("cxr10").complete
    clock.t += 30 * HOUR  # more than 2 days after the first hour
    rollup.observe(_prediction({"pleural_effusion": 0.3}, demo_bundle))
    rollup.flush()  # prunes once per hour
    assert rollup.counts("cxr10", start, start) == {}
    reference = rollup.reference("cxr10")
    assert reference.complete and reference.first_hour == start
    assert sum(reference.histograms["pleural_effusion"]) == PSI_MIN_COUNT


def test_first_days_reference_then_psi_flags_a_shift(tmp_path, demo_bundle):
    clock = Clock()
    rollup = _rollup(tmp_path, clock, reference_days=7)
    for i in range(140):  # a week of reference: scores spread over 0.1..0.5
        clock.t += 1.2 * HOUR
        rollup.observe(_prediction({"pneumothorax": 0.1 + (i % 8) * 0.05}, demo_bundle))
    rollup.flush()
    assert not rollup.reference("cxr10").complete
    assert rollup.drift("cxr10") == {}  # no PSI while the reference is being gathered
    clock.t += 24 * HOUR
    for i in range(100):  # the same population
        rollup.observe(_prediction({"pneumothorax": 0.1 + (i % 8) * 0.05}, demo_bundle))
    rollup.flush()
    same = rollup.drift("cxr10")
    assert same["pneumothorax"] < 0.1
    clock.t += 24 * HOUR
    for _ in range(100):  # scores moved up
        rollup.observe(_prediction({"pneumothorax": 0.85}, demo_bundle))
    rollup.flush()
    assert rollup.drift("cxr10")["pneumothorax"] > 0.25
    # a new model version gathers its own reference
    assert rollup.drift("cxr10", "2.0.0") == {}

    registry = CollectorRegistry()
    registry.register(DriftCollector(rollup, lambda: {"cxr10": "1.0.0"}))
    text = generate_latest(registry).decode()
    value = [line for line in text.splitlines() if line.startswith('chexnet_score_psi{code="pneumothorax"')]
    assert value and float(value[0].split()[-1]) > 0.25


def test_site_calibration_histograms_are_the_reference(tmp_path, demo_bundle):
    site = tmp_path / "site-thresholds.json"
    histogram = [0] * BINS
    histogram[2] = 200
    site.write_text(
        json.dumps(
            {
                "bundle": {"id": "cxr10", "version": "1.0.0"},
                "classes": [{"code": "pneumothorax", "threshold": 0.4, "histogram": histogram}],
            }
        )
    )
    reference = site_reference(str(site))
    assert reference == {"cxr10": {"pneumothorax": histogram}}
    rollup = Rollup(
        MonitorSettings(str(tmp_path / "m.sqlite")), reference, site_bundle_version(str(site)), Clock(), False
    )
    for _ in range(PSI_MIN_COUNT):
        rollup.observe(_prediction({"pneumothorax": 0.12}, demo_bundle))  # bin 2, as the calibration set
    rollup.flush()
    assert rollup.reference("cxr10").source == "site"
    assert rollup.drift("cxr10") == {"pneumothorax": 0.0}
    assert rollup.reference("cxr10", "2.0.0").source == "first_days"  # measured on another version
    assert site_reference(str(tmp_path / "absent.json")) == {}
    (tmp_path / "no-histograms.json").write_text(json.dumps({"bundle": {"id": "cxr10"}, "classes": []}))
    assert site_reference(str(tmp_path / "no-histograms.json")) == {}


# --- through the API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monitored(tmp_path_factory, demo_bundle):
    env = make_env(tmp_path_factory.mktemp("monitor"), demo_bundle.path)
    return env, ready_app(env)


def test_monitor_endpoint_needs_a_token_and_a_known_window(monitored):
    env, app = monitored
    client = app.test_client()
    assert_error(client.get("/api/v1/monitor"), 401, "token_missing", "/api/v1/monitor", "get")
    assert_error(
        client.get("/api/v1/monitor?window=year", headers=env.auth()), 422, "invalid_option", "/api/v1/monitor", "get"
    )


def test_monitor_reports_real_predictions_without_patient_data(monitored, nih_sample, dicom_dir):
    env, app = monitored
    client = app.test_client()
    dicoms = sorted(dicom_dir.glob("*.dcm"))
    for path in [*nih_sample[:3], *dicoms]:
        assert predict(client, env, path.read_bytes()).status_code == 200
    assert predict(client, env, b"not an image at all").status_code == 415
    body = conforms(client.get("/api/v1/monitor?window=week", headers=env.auth()), "/api/v1/monitor")
    (model,) = body["models"]
    n = 3 + len(dicoms)
    assert model["id"] == "cxr10" and model["predictions"] == n and model["demo"] is True
    assert len(body["hours"]) == 168 and sum(model["predictions_by_hour"]) == n
    assert all(sum(c["histogram"]) == n for c in model["classes"])
    assert model["input_mix"]["format"] == {"dicom": len(dicoms), "png": 3}
    assert model["input_mix"]["transfer_syntax"]["RLE Lossless"] == 1
    assert model["input_mix"]["transfer_syntax"]["JPEG 2000 Image Compression (Lossless Only)"] == 1
    assert model["input_mix"]["modality"] == {"CR": len(dicoms)}
    assert model["input_mix"]["view"] == {"AP": 2, "PA": 3}
    assert model["warnings"] == {"not_chest": 2}  # RG3: BodyPartExamined EXTREMITY
    assert body["refusals"]["total"] == {"unsupported_media_type": 1}
    assert model["latency_ms"]["approximate"] is True and model["latency_ms"]["p50"] is not None
    assert model["reference"] == {
        "source": "first_days",
        "complete": False,
        "from": model["reference"]["from"],
        "to": model["reference"]["to"],
        "predictions": n,
    }

    # Nothing identifying in the file: no name, id, UID or hash of any sample.
    service = app.extensions["chexnet"]
    dump = "\n".join(sqlite3.connect(service.settings.monitor_db_file).iterdump())
    for path in dicoms:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "AccessionNumber"):
            value = str(ds.get(keyword) or "")
            if value:
                assert value not in dump, keyword
    audit = [json.loads(line) for line in Path(service.settings.audit_log).read_text().splitlines()]
    assert audit and all(record["input_sha256"] not in dump for record in audit)


def test_monitor_off_is_a_503_with_the_setting(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_MONITOR_DB="off")
    app = ready_app(env)
    response = app.test_client().get("/api/v1/monitor", headers=env.auth())
    body = assert_error(response, 503, "monitor_unavailable", "/api/v1/monitor", "get")
    assert "CHEXNET_MONITOR_DB" in body["error"]["message"] and response.headers["Retry-After"]


def test_a_damaged_rollup_file_leaves_predictions_working(tmp_path, demo_bundle, nih_sample):
    (tmp_path / "monitor.sqlite").write_bytes(b"not a database, " * 1000)
    env = make_env(tmp_path, demo_bundle.path)
    app = ready_app(env)
    client = app.test_client()
    assert predict(client, env, nih_sample[0].read_bytes()).status_code == 200
    body = assert_error(
        client.get("/api/v1/monitor", headers=env.auth()), 503, "monitor_unavailable", "/api/v1/monitor", "get"
    )
    assert "CHEXNET_MONITOR_DB" in body["error"]["message"] and "monitor.sqlite" in body["error"]["message"]


def test_a_rollup_that_fails_while_serving_is_a_503_not_a_500(tmp_path, demo_bundle, nih_sample, monkeypatch):
    """The file damaged, its disk failing or another process holding it past the busy timeout, after start."""
    import sqlite3

    env = make_env(tmp_path, demo_bundle.path)
    app = ready_app(env)
    client = app.test_client()
    assert predict(client, env, nih_sample[0].read_bytes()).status_code == 200

    def failing(*args):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(app.extensions["chexnet"].monitor, "_rows", failing)
    body = assert_error(
        client.get("/api/v1/monitor", headers=env.auth()), 503, "monitor_unavailable", "/api/v1/monitor", "get"
    )
    assert "CHEXNET_MONITOR_DB" in body["error"]["message"]
    assert predict(client, env, nih_sample[0].read_bytes()).status_code == 200


def test_monitor_settings_are_checked_at_start(tmp_path, demo_bundle):
    from chexnet.service import SettingsError

    with pytest.raises(SettingsError, match="CHEXNET_MONITOR_REFERENCE_DAYS"):
        make_env(tmp_path, demo_bundle.path, CHEXNET_MONITOR_REFERENCE_DAYS="0")
    with pytest.raises(SettingsError, match="must not exceed CHEXNET_MONITOR_RETENTION_DAYS"):
        make_env(tmp_path, demo_bundle.path, CHEXNET_MONITOR_REFERENCE_DAYS="30", CHEXNET_MONITOR_RETENTION_DAYS="7")


# --- the alert rules shipped for sites that run Prometheus ------------------------------------------------
def test_alert_rules_are_valid_yaml_on_the_psi_gauge():
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"ChexnetScoreDriftModerate", "ChexnetScoreDriftSignificant"}
    assert all({"expr", "for", "labels", "annotations"} <= set(r) for r in rules)
    assert any("chexnet_score_psi" in r["expr"] for r in rules)


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package)")
def test_alert_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name], capture_output=True, text=True, cwd=ALERT_TESTS.parent
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


# --- the chart library, vendored at build time ----------------------------------------------------------
VENDOR_JS = ROOT / "scripts" / "vendor-js.sh"


def _npm_tarball(licence: str = "MIT", script: bytes = b"window.Chart = function () {};\n") -> bytes:
    """An npm package tarball as the registry serves it (package/ inside)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in (
            ("package/package.json", json.dumps({"name": "fake", "version": "1.0.0", "license": licence}).encode()),
            ("package/dist/chart.umd.min.js", script),
            ("package/LICENSE.md", b"The MIT License\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _vendor(tmp_path: Path, pinned: bytes, served: bytes, licence: str = "MIT") -> subprocess.CompletedProcess:
    """scripts/vendor-js.sh with a list pinning PINNED's integrity and an npm that serves SERVED."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "served.tgz").write_bytes(served)
    npm = tmp_path / "npm"
    npm.write_text(f'#!/bin/sh\ncp "{tmp_path / "served.tgz"}" ./fake-1.0.0.tgz\n')
    npm.chmod(0o755)
    listing = tmp_path / "js-packages.txt"
    listing.write_text(f"# test\nfake 1.0.0 {_integrity(pinned)} dist/chart.umd.min.js {licence}\n")
    env = {
        **os.environ,
        "NPM": str(npm),
        "VENDOR_JS_LIST": str(listing),
        "VENDOR_JS_CACHE": str(tmp_path / "cache"),
        "VENDOR_JS_OUT": str(tmp_path / "vendor"),
    }
    return subprocess.run(["bash", str(VENDOR_JS)], capture_output=True, text=True, env=env, timeout=60)


def test_vendor_js_takes_the_pinned_tarball_once(tmp_path):
    package = _npm_tarball()
    run = _vendor(tmp_path, package, package)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "vendor" / "chart.umd.min.js").read_bytes() == b"window.Chart = function () {};\n"
    assert (tmp_path / "vendor" / "fake.LICENSE.md").read_text().startswith("The MIT License")
    (tmp_path / "served.tgz").write_bytes(b"the registry is gone")  # vendored: nothing is fetched again
    again = _vendor(tmp_path, package, b"the registry is gone")
    assert again.returncode == 0 and "npm pack" not in again.stderr


def test_vendor_js_refuses_other_bytes_and_another_licence(tmp_path):
    pinned = _npm_tarball()
    tampered = _vendor(tmp_path / "a", pinned, _npm_tarball(script=b"alert('changed');\n"))
    assert tampered.returncode != 0 and "does not match the pinned integrity" in tampered.stderr
    assert not (tmp_path / "a" / "vendor" / "chart.umd.min.js").exists()
    gpl = _npm_tarball(licence="GPL-3.0")
    refused = _vendor(tmp_path / "b", gpl, gpl)
    assert refused.returncode != 0 and "declares licence 'GPL-3.0', not the MIT pinned" in refused.stderr
    assert not (tmp_path / "b" / "vendor" / "chart.umd.min.js").exists()


def test_a_build_without_the_chart_library_says_so(monitored, tmp_path, monkeypatch):
    env, app = monitored
    import chexnet.api.monitor as monitor_route

    monkeypatch.setattr(monitor_route, "VENDOR_FOLDER", str(tmp_path))
    body = assert_error(app.test_client().get("/monitor/chart.js"), 404, "not_found")
    assert "scripts/vendor-js.sh" in body["error"]["message"]
    monkeypatch.undo()
    served = app.test_client().get("/monitor/chart.js")
    assert served.status_code == 200 and b"Chart" in served.data[:2000]
