"""``python -m chexnet calibrate``: the bundle runs over the site's labelled images through the predictor's own
steps (the service's decode, preprocessing and engine, in the engine and precision given), then each class gets
the threshold that meets its target, with bootstrap intervals, and site-thresholds.json and the report are
written, each through a temporary file renamed into place once everything has been computed."""

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from chexnet.bundle import load_bundle
from chexnet.bundle.manifest import DEMO_NOTICE
from chexnet.calibration.labels_file import CalibrationInputError, read_labels
from chexnet.calibration.statistics import INTERVAL, ClassStatistics, Target, class_statistics, histogram, roc_curve
from chexnet.engines import create_engine
from chexnet.errors import ServiceError
from chexnet.predictor import Predictor
from chexnet.site_thresholds import SCHEMA, manifest_sha256, with_hash, write_atomic

log = logging.getLogger(__name__)

MIN_POSITIVES = 10  # fewer positive (or negative) images than this keep the bundle's threshold
MIN_NEGATIVES = 10
HISTOGRAM_BINS = 20
THRESHOLDS_FILE = "site-thresholds.json"
REPORT_FILE = "calibration-report.html"


@dataclass(frozen=True)
class Targets:
    default: Target | None = None
    per_class: dict[str, Target] = field(default_factory=dict)

    def for_class(self, code: str) -> Target | None:
        return self.per_class.get(code, self.default)

    @classmethod
    def parse(cls, texts: list[str], codes: list[str], bundle_id: str) -> "Targets":
        """'sensitivity=0.90', 'specificity=0.95' or 'youden' for every class, 'code:...' for one."""
        default, per_class = None, {}
        for text in texts:
            code, sep, goal = text.partition(":")
            try:
                target = Target.parse(goal if sep else text)
            except ValueError as exc:
                raise CalibrationInputError(f"--target {exc}.") from None
            if not sep:
                if default is not None:
                    raise CalibrationInputError(
                        f"--target gives two targets for every class ({default} and {target}); give one, "
                        "and code:target for the classes that need another."
                    )
                default = target
                continue
            code = code.strip()
            if code not in codes:
                raise CalibrationInputError(
                    f"--target {text}: {code} is not a label code of {bundle_id} (its codes: {', '.join(codes)})."
                )
            if code in per_class:
                raise CalibrationInputError(f"--target gives {code} two targets; give one.")
            per_class[code] = target
        if default is None and not per_class:
            raise CalibrationInputError("Give at least one --target (sensitivity=0.90, specificity=0.95 or youden).")
        return cls(default, per_class)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _interval(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [round(pair[0], 4), round(pair[1], 4)]


def _class_entry(label, scores: np.ndarray, truth: np.ndarray | None, target: Target | None, boot: dict) -> dict:
    """One class of site-thresholds.json (and what the report draws)."""
    entry: dict = {
        "code": label.code,
        "name": label.name.en,
        "bundle_threshold": label.threshold,
        "target": str(target) if target else None,
        # the calibration set's score distribution, the monitor's reference (equal bins over [0, 1])
        "histogram": histogram(scores, HISTOGRAM_BINS),
    }
    stats: ClassStatistics | None = None
    if truth is None:
        reason = "The labels file has no column for it."
        positives = negatives = None
    else:
        positives, negatives = int(truth.sum()), int((~truth).sum())
        entry["histogram_positive"] = histogram(scores[truth], HISTOGRAM_BINS)
        entry["histogram_negative"] = histogram(scores[~truth], HISTOGRAM_BINS)
        if not positives or not negatives:
            reason = (
                f"AUROC is undefined: all {len(truth)} images are {'negative' if not positives else 'positive'} "
                "for it in the labels file."
            )
        elif positives < MIN_POSITIVES or negatives < MIN_NEGATIVES:
            reason = (
                f"Too few images to set a threshold: {positives} positive and {negatives} negative "
                f"(at least {MIN_POSITIVES} of each needed)."
            )
        elif target is None:
            reason = "No target was given for it."
        else:
            reason = None
        if positives and negatives:
            chosen = target if reason is None else None
            stats = class_statistics(scores, truth, None if chosen else label.threshold, chosen, **boot)
    site = stats is not None and reason is None
    entry.update(
        source="site" if site else "bundle",
        reason=reason,
        threshold=stats.threshold if site and stats else label.threshold,  # decides the calibration images as reported
        threshold_interval=_interval(stats.threshold_interval) if site and stats else None,
        positives=positives,
        negatives=negatives,
    )
    for name in ("sensitivity", "specificity", "auroc"):
        estimate = getattr(stats, name) if stats else None
        entry[name] = _round(estimate.value) if estimate else None
        entry[f"{name}_interval"] = _interval(estimate.interval) if estimate else None
    if stats is not None and truth is not None:
        curve = roc_curve(scores, truth)
        entry["_curve"] = (curve.sensitivity, curve.specificity)  # for the report only
    return entry


def calibrate(
    bundle_path: str,
    images: str,
    labels: str,
    targets: list[str],
    out: str,
    engine: str,
    device: str = "auto",
    precision: str = "fp32",
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[Path, Path]:
    try:  # matplotlib (the 'report' extra, in both images): fail before the images run when it is missing
        from chexnet.calibration import report
    except ImportError as exc:
        raise CalibrationInputError(
            f"The report needs matplotlib, which is not installed here ({exc}); run calibrate in the API image, "
            "or install the 'report' extra."
        ) from None

    images_dir, labels_path = Path(images), Path(labels)
    if not images_dir.is_dir():
        raise CalibrationInputError(f"--images {images} is not a folder of images.")
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    goal = Targets.parse(targets, m.codes, m.id)
    labelled = read_labels(labels_path, images_dir, m.codes, m.id)
    predictor = Predictor(bundle, create_engine(bundle, engine, device, precision))
    scores = np.zeros((len(labelled.files), len(m.labels)), dtype=np.float32)
    for i, path in enumerate(labelled.files):
        try:
            prepared = predictor.prepare(path.read_bytes())
        except ServiceError as exc:
            raise CalibrationInputError(f"Image {path} cannot be used: {exc.message} Fix or remove its row.") from None
        except OSError as exc:
            raise CalibrationInputError(f"Image {path} cannot be read ({exc.strerror}).") from None
        scores[i] = predictor.forward_one(prepared.tensor).probabilities
        if (i + 1) % 50 == 0:
            print(f"{i + 1} of {len(labelled.files)} images", file=sys.stderr, flush=True)
    boot = {"resamples": resamples, "seed": seed}
    classes = [
        _class_entry(label, scores[:, j], labelled.truth.get(label.code), goal.for_class(label.code), boot)
        for j, label in enumerate(m.labels)
    ]
    curves = {c["code"]: c.pop("_curve") for c in classes if "_curve" in c}
    info = predictor.model_info
    document = with_hash(
        {
            "schema": SCHEMA,
            "bundle": {
                "id": m.id,
                "version": m.version,
                "precision": info.precision,
                "manifest_sha256": manifest_sha256(bundle),
                "demo": m.demo,
            },
            "engine": info.engine,
            "device": info.device,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images": len(labelled.files),
            "labels_sha256": labelled.sha256,
            "targets": {
                "all": str(goal.default) if goal.default else None,
                "per_class": {code: str(t) for code, t in goal.per_class.items()},
            },
            "histogram": {"bins": HISTOGRAM_BINS, "range": [0.0, 1.0]},
            "rules": {
                "positive": "probability >= threshold",
                "min_positives": MIN_POSITIVES,
                "min_negatives": MIN_NEGATIVES,
                "bootstrap": {
                    "resamples": resamples,
                    "seed": seed,
                    "interval": INTERVAL,
                    "method": "stratified (positives and negatives resampled apart), percentile",
                },
            },
            **({"notice": DEMO_NOTICE} if m.demo else {}),
            "classes": classes,
        }
    )
    html = report.render(document, curves)
    out_dir = Path(out)
    thresholds_path, report_path = out_dir / THRESHOLDS_FILE, out_dir / REPORT_FILE
    write_atomic(report_path, html.encode("utf-8"))
    write_atomic(thresholds_path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    for entry in classes:
        if entry["source"] == "bundle":
            log.warning("%s keeps the bundle's threshold %s: %s", entry["code"], entry["threshold"], entry["reason"])
    return thresholds_path, report_path
