"""Site calibration (python -m chexnet calibrate): the ROC statistics on synthetic scores, where the right answer
is known by brute force; then the command on the real sample radiographs with the demo bundle (AUROC near 0.5:
the mechanics and the intervals are checked, not the values); then every bad input, one sentence and exit 2 with
nothing written."""

import base64
import json
import os
import re
import threading

import numpy as np
import pytest

from calibration_helpers import ANY_FINDING, CONSTANT, cxr10_labels, run_calibrate, write_csv
from chexnet.calibration import labels_file
from chexnet.calibration.statistics import Target, auroc, choose_threshold, class_statistics, histogram, roc_curve
from chexnet.cli import main
from chexnet.predictor import Predictor
from chexnet.site_thresholds import apply_site_thresholds, read_site_thresholds


def _scores(seed: int, positives: int = 60, negatives: int = 140, ties: bool = False):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.beta(4, 3, positives), rng.beta(3, 4, negatives)]).astype(np.float32)
    if ties:
        scores = np.round(scores, 1).astype(np.float32)  # many equal scores across both groups
    truth = np.concatenate([np.ones(positives, bool), np.zeros(negatives, bool)])
    return scores, truth


def _rates(scores, truth, threshold):
    positive = np.float32(scores) >= threshold  # as the predictor decides: float32 probability >= threshold
    return positive[truth].mean(), (~positive[~truth]).mean()


# --- statistics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_is_the_share_of_positive_negative_pairs_ordered_right(ties):
    scores, truth = _scores(1, ties=ties)
    pos, neg = scores[truth][:, None], scores[~truth][None, :]
    pairs = (pos > neg).mean() + 0.5 * (pos == neg).mean()
    assert auroc(scores, truth) == pytest.approx(pairs, abs=1e-12)
    assert auroc(scores, np.zeros_like(truth)) is None and auroc(scores, np.ones_like(truth)) is None


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("goal", [0.8, 0.9, 0.95, 1.0])
def test_a_sensitivity_target_gets_the_highest_threshold_that_meets_it(goal, ties):
    scores, truth = _scores(2, ties=ties)
    threshold = choose_threshold(scores, truth, Target("sensitivity", goal))
    assert _rates(scores, truth, threshold)[0] >= goal
    lowest_called = scores[scores >= threshold].min()
    stricter = np.nextafter(lowest_called, np.float32(2))  # one image fewer called positive
    assert _rates(scores, truth, stricter)[0] < goal
    assert len(repr(threshold)) <= 10  # a short decimal, e.g. 0.4547


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("goal", [0.8, 0.95, 1.0])
def test_a_specificity_target_gets_the_lowest_threshold_that_meets_it(goal, ties):
    scores, truth = _scores(3, ties=ties)
    threshold = choose_threshold(scores, truth, Target("specificity", goal))
    assert _rates(scores, truth, threshold)[1] >= goal
    highest_not_called = scores[scores < threshold].max()
    assert _rates(scores, truth, highest_not_called)[1] < goal  # one image more called positive misses it


def test_youden_maximises_sensitivity_plus_specificity():
    scores, truth = _scores(4)
    threshold = choose_threshold(scores, truth, Target("youden"))
    best = max(sum(_rates(scores, truth, t)) for t in np.unique(scores))
    assert sum(_rates(scores, truth, threshold)) == pytest.approx(best)


def test_roc_curve_runs_from_everything_positive_to_nothing_positive():
    scores, truth = _scores(5)
    curve = roc_curve(scores, truth)
    assert (curve.sensitivity[0], curve.specificity[0]) == (1.0, 0.0)
    assert (curve.sensitivity[-1], curve.specificity[-1]) == (0.0, 1.0)
    assert np.all(np.diff(curve.sensitivity) <= 0) and np.all(np.diff(curve.specificity) >= 0)


def test_bootstrap_intervals_are_seeded_and_hold_their_estimates():
    scores, truth = _scores(6)
    stats = class_statistics(scores, truth, None, Target("sensitivity", 0.9), resamples=500, seed=7)
    assert stats == class_statistics(scores, truth, None, Target("sensitivity", 0.9), resamples=500, seed=7)
    assert stats != class_statistics(scores, truth, None, Target("sensitivity", 0.9), resamples=500, seed=8)
    assert (stats.positives, stats.negatives) == (60, 140)
    for estimate in (stats.sensitivity, stats.specificity, stats.auroc):
        low, high = estimate.interval
        assert 0 <= low <= estimate.value <= high <= 1 and low < high
    low, high = stats.threshold_interval
    assert low <= stats.threshold <= high
    assert stats.sensitivity.value >= 0.9
    assert (stats.sensitivity.value, stats.specificity.value) == _rates(scores, truth, stats.threshold)


def test_wider_intervals_with_fewer_images():
    small, large = _scores(9, 12, 12), _scores(9, 600, 600)
    width = [np.diff(class_statistics(*s, 0.5, None, resamples=300).auroc.interval)[0] for s in (small, large)]
    assert width[0] > 2 * width[1]


def test_a_kept_threshold_is_measured_not_moved():
    scores, truth = _scores(10)
    stats = class_statistics(scores, truth, 0.5, None, resamples=100)
    assert stats.threshold == 0.5 and stats.threshold_interval is None
    assert (stats.sensitivity.value, stats.specificity.value) == _rates(scores, truth, 0.5)


def test_histogram_counts_every_score_in_twenty_bins():
    counts = histogram(np.array([0.0, 0.04, 0.05, 0.5, 0.99, 1.0], np.float32))
    assert len(counts) == 20 and sum(counts) == 6 and counts[0] == 2 and counts[1] == 1 and counts[-1] == 2


@pytest.mark.parametrize("text", ["sensitivity", "sensitivity=1.5", "specificity=0", "youden=0.5", "accuracy=0.9"])
def test_targets_that_are_not_targets(text):
    with pytest.raises(ValueError):
        Target.parse(text)


# --- the command on the sample radiographs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, demo_bundle, nih_dir):
    root = tmp_path_factory.mktemp("calibrate")
    columns = cxr10_labels(nih_dir, root / "labels.csv")
    proc = run_calibrate(
        "--bundle", demo_bundle.path, "--images", nih_dir, "--labels", root / "labels.csv",
        "--target", "specificity=0.95", "--target", f"{ANY_FINDING}:sensitivity=0.9", "--out", root / "out",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return root / "out", columns, proc


def test_calibrate_writes_thresholds_for_the_bundle_it_ran(calibrated, demo_bundle):
    out, columns, proc = calibrated
    document = json.loads((out / "site-thresholds.json").read_text())
    site = read_site_thresholds(out / "site-thresholds.json")  # the schema and the content hash hold
    assert site.tag == "site@" + document["content_sha256"][:12]
    m = demo_bundle.manifest
    assert document["bundle"]["id"] == m.id and document["bundle"]["version"] == m.version
    assert document["bundle"]["precision"] == "fp32" and document["bundle"]["demo"] is True
    assert document["images"] == 40 and document["engine"] == "onnxruntime"
    classes = {c["code"]: c for c in document["classes"]}
    assert list(classes) == m.codes
    for entry in classes.values():
        assert sum(entry["histogram"]) == 40 and len(entry["histogram"]) == 20


def test_a_class_with_enough_images_gets_a_threshold_that_meets_its_target(calibrated, demo_bundle, nih_dir):
    out, columns, _ = calibrated
    entry = {c["code"]: c for c in json.loads((out / "site-thresholds.json").read_text())["classes"]}[ANY_FINDING]
    assert entry["source"] == "site" and entry["reason"] is None and entry["target"] == "sensitivity=0.9"
    assert (entry["positives"], entry["negatives"]) == (30, 10)
    assert entry["sensitivity"] >= 0.9
    for name in ("threshold", "sensitivity", "specificity", "auroc"):
        low, high = entry[f"{name}_interval"]
        assert low <= round(entry[name], 4) <= high, name
    # the service's own path with the file applied decides the sample images as reported
    site = read_site_thresholds(out / "site-thresholds.json")
    bundle = apply_site_thresholds(site, demo_bundle, "fp32", "test")
    from chexnet.engines import create_engine

    predictor = Predictor(bundle, create_engine(bundle, "onnxruntime", "cpu"), thresholds=site.tag)
    calls = []
    for name in columns["image"]:
        prediction = predictor.predict((nih_dir / name).read_bytes)
        assert prediction.model.thresholds == site.tag
        calls.append(next(f.positive for f in prediction.findings if f.code == ANY_FINDING))
    truth = np.array(columns[ANY_FINDING], bool)
    calls = np.array(calls)
    assert calls[truth].mean() == pytest.approx(entry["sensitivity"], abs=1e-4)
    assert (~calls[~truth]).mean() == pytest.approx(entry["specificity"], abs=1e-4)


def test_classes_without_enough_images_keep_the_bundle_threshold_and_say_why(calibrated, demo_bundle):
    out, columns, proc = calibrated
    classes = {c["code"]: c for c in json.loads((out / "site-thresholds.json").read_text())["classes"]}
    bundle_thresholds = {label.code: label.threshold for label in demo_bundle.manifest.labels}
    for code, entry in classes.items():
        if code == ANY_FINDING:
            continue
        assert entry["source"] == "bundle" and entry["threshold"] == bundle_thresholds[code], code
        assert entry["threshold_interval"] is None
    few = classes["pneumothorax"]
    assert few["positives"] == 3 and "Too few images" in few["reason"] and "3 positive" in few["reason"]
    low, high = few["auroc_interval"]  # still measured at the bundle's threshold
    assert low <= few["auroc"] <= high
    assert classes[CONSTANT]["auroc"] is None and "AUROC is undefined" in classes[CONSTANT]["reason"]
    assert classes[CONSTANT]["positives"] == 0 and classes[CONSTANT]["negatives"] == 40
    assert classes["unspecified_10"]["positives"] is None and "no column" in classes["unspecified_10"]["reason"]
    assert f"{CONSTANT} keeps the bundle's threshold" in proc.stderr


def test_the_report_is_one_readable_page_that_says_demo(calibrated):
    out, _, _ = calibrated
    html = (out / "calibration-report.html").read_text()
    assert "DEMO MODEL — NOT FOR DIAGNOSIS" in html and "Atelectasis" in html
    entry = {c["code"]: c for c in json.loads((out / "site-thresholds.json").read_text())["classes"]}[ANY_FINDING]
    assert f"<b>{entry['threshold']:.6g} (" in html  # the threshold as the service compares it, then its interval
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 8  # every class with positive and negative images: all but the constant and unlabelled
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)


# --- bad input --------------------------------------------------------------------------------------------


def _columns(nih_dir, tmp_path):
    return cxr10_labels(nih_dir, tmp_path / "unused.csv")


BAD_LABELS = {
    "unknown code": (lambda c: {**c, "hernia": [0] * 40}, "not label codes of cxr10: hernia"),
    "missing image": (lambda c: {**c, "image": ["absent.png"] + c["image"][1:]}, "not in"),
    "not 0 or 1": (lambda c: {**c, "mass": ["yes"] + c["mass"][1:]}, "has 'yes' for mass; each label must be 0 or 1"),
    "duplicate row": (lambda c: {k: v[:-1] + v[:1] for k, v in c.items()}, "twice (lines 2 and 41)"),
    "same image spelled twice": (
        lambda c: {k: v[:-1] + (["./" + v[0]] if k == "image" else v[:1]) for k, v in c.items()},
        "twice (lines 2 and 41)",
    ),
    "no image column": (lambda c: {k: v for k, v in c.items() if k != "image"}, "no 'image' column"),
    "outside the folder": (lambda c: {**c, "image": ["../dicom/RG1_UNCR.dcm"] + c["image"][1:]}, "outside"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_a_bad_labels_file_is_one_sentence_exit_2_and_nothing_written(case, demo_bundle, nih_dir, tmp_path, capsys):
    change, expected = BAD_LABELS[case]
    write_csv(tmp_path / "labels.csv", change(_columns(nih_dir, tmp_path)))
    argv = ["calibrate", "--bundle", str(demo_bundle.path), "--images", str(nih_dir)]
    argv += ["--labels", str(tmp_path / "labels.csv"), "--target", "youden", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
    assert not (tmp_path / "out").exists()


def test_a_labels_file_that_is_a_fifo_or_too_large_is_refused_not_waited_on(
    demo_bundle, nih_dir, tmp_path, capsys, monkeypatch
):
    """A named pipe nobody writes to would block a plain open() forever; a huge file would be read whole."""
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    argv = ["calibrate", "--bundle", str(demo_bundle.path), "--images", str(nih_dir)]
    argv += ["--labels", str(fifo), "--target", "youden", "--out", str(tmp_path / "out")]
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    run.start()
    run.join(60)  # a guard against hanging the suite, not a timing: the refusal comes before any image
    assert codes == [2], "calibrate waited on the FIFO"
    assert "is not a regular file; give the CSV file itself" in capsys.readouterr().err
    fifo.unlink()
    fifo.write_bytes(b"image,mass\n" + b"a.png,0\n" * 2**17)  # 1 MiB of rows
    monkeypatch.setattr(labels_file, "MAX_LABELS_BYTES", 2**20)
    assert main(argv) == 2
    assert "is larger than 1 MiB; it needs only one row per image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "targets, expected",
    [
        (["youden", "sensitivity=0.9"], "two targets for every class"),
        (["hernia:sensitivity=0.9"], "hernia is not a label code of cxr10"),
        (["mass:youden", "mass:specificity=0.9"], "gives mass two targets"),
        (["sensitivity=2"], "above 0 and at most 1"),
    ],
)
def test_bad_targets_are_refused_before_any_image(targets, expected, demo_bundle, nih_dir, tmp_path, capsys):
    cxr10_labels(nih_dir, tmp_path / "labels.csv")
    argv = ["calibrate", "--bundle", str(demo_bundle.path), "--images", str(nih_dir), "--labels"]
    argv += [str(tmp_path / "labels.csv"), "--out", str(tmp_path / "out")]
    for target in targets:
        argv += ["--target", target]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_image_that_fails_leaves_the_earlier_files_whole(calibrated, demo_bundle, nih_dir, tmp_path, capsys):
    """A run that stops (here: a file that is no image) replaces nothing: the earlier outputs stay as they were."""
    out, columns, _ = calibrated
    images = tmp_path / "images"
    images.mkdir()
    for name in columns["image"][:5]:
        (images / name).symlink_to(nih_dir / name)
    (images / columns["image"][5]).write_text("not an image")
    write_csv(tmp_path / "labels.csv", {k: v[:6] for k, v in columns.items()})
    target = tmp_path / "out"
    target.mkdir()
    before = {name: (out / name).read_bytes() for name in ("site-thresholds.json", "calibration-report.html")}
    for name, data in before.items():
        (target / name).write_bytes(data)
    argv = ["calibrate", "--bundle", str(demo_bundle.path), "--images", str(images), "--labels"]
    argv += [str(tmp_path / "labels.csv"), "--target", "youden", "--out", str(target)]
    assert main(argv) == 2
    assert f"Image {images / columns['image'][5]} cannot be used" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # no temporary file left either


def test_too_few_bootstrap_resamples_are_refused(demo_bundle, nih_dir, tmp_path, capsys):
    argv = ["calibrate", "--bundle", str(demo_bundle.path), "--images", str(nih_dir), "--labels", "x.csv"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--target", "youden", "--bootstrap", "5", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2 and "must be 100 to 100000 resamples, not 5" in capsys.readouterr().err
