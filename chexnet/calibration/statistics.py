"""ROC statistics for site calibration, numpy only: sensitivity and specificity at every threshold, AUROC
(Mann-Whitney, ties counted half), the threshold that meets a target, and stratified bootstrap intervals.

A score at or above the threshold is positive, exactly as the predictor decides (``p >= threshold``), and every
threshold chosen is one of the scores themselves (or just above the highest), so the decisions it gives on the
calibration images are the ones reported."""

import math
from dataclasses import dataclass

import numpy as np

TARGET_KINDS = ("sensitivity", "specificity", "youden")
INTERVAL = 0.95


@dataclass(frozen=True)
class Target:
    """What a threshold must achieve: sensitivity >= value (the highest such threshold: most specific),
    specificity >= value (the lowest such threshold: most sensitive), or the largest Youden index J."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "Target":
        kind, _, value = text.strip().partition("=")
        kind = kind.strip().lower()
        if kind not in TARGET_KINDS:
            raise ValueError(f"'{text}' is not a target; use sensitivity=0.90, specificity=0.95 or youden")
        if kind == "youden":
            if value:
                raise ValueError(f"'{text}': youden takes no value")
            return cls(kind)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"'{text}' needs a number between 0 and 1, e.g. {kind}=0.90") from None
        if not 0 < number <= 1:
            raise ValueError(f"'{text}' needs a number above 0 and at most 1")
        return cls(kind, number)


@dataclass(frozen=True)
class Curve:
    """Sensitivity and specificity at each candidate threshold (ascending)."""

    thresholds: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray


def _scores(scores: np.ndarray) -> np.ndarray:
    """Scores as the engines give them (float32, which the predictor compares a threshold in), held as float64."""
    return np.asarray(scores, dtype=np.float32).astype(np.float64)


def _above(score: float) -> float:
    """The next float32 above score (at most 1): the lowest threshold that leaves score negative."""
    return min(1.0, float(np.nextafter(np.float32(score), np.float32(np.inf))))


def _split(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _scores(scores)
    truth = np.asarray(truth).astype(bool)
    return np.sort(scores[truth]), np.sort(scores[~truth])


def rates_at(positives: np.ndarray, negatives: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity, specificity) at each threshold, from sorted positive and negative scores (NaN where a group
    is empty)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (positives.size - np.searchsorted(positives, thresholds, "left")) / positives.size
        specificity = np.searchsorted(negatives, thresholds, "left") / negatives.size
    return sensitivity, specificity


def roc_curve(scores: np.ndarray, truth: np.ndarray) -> Curve:
    """Every distinct score, and one just above the highest (nothing positive), as a candidate threshold."""
    positives, negatives = _split(scores, truth)
    candidates = np.unique(_scores(scores))
    top = _above(candidates[-1]) if candidates.size else 1.0
    thresholds = np.append(candidates, top)
    sensitivity, specificity = rates_at(positives, negatives, thresholds)
    return Curve(thresholds, sensitivity, specificity)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a positive scores above a negative, ties counting half; None when
    either group is empty (the area is undefined)."""
    positives, negatives = _split(scores, truth)
    return _auroc_sorted(positives, negatives)


def _auroc_sorted(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    if not positives.size or not negatives.size:
        return None
    below = np.searchsorted(negatives, positives, "left")
    tied = np.searchsorted(negatives, positives, "right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (positives.size * negatives.size))


def choose_threshold(scores: np.ndarray, truth: np.ndarray, target: Target) -> float:
    """The threshold meeting the target on these scores (both groups must be non-empty)."""
    positives, negatives = _split(scores, truth)
    return readable(_choose_sorted(positives, negatives, target), positives, negatives)


def readable(threshold: float, positives: np.ndarray, negatives: np.ndarray) -> float:
    """The shortest decimal that decides every one of these scores as threshold does: any value above the highest
    score below it, up to the lowest score at or above it, does; so 0.4547 rather than 0.45465022325515747. Both
    bounds are compared as float32, as the predictor compares."""
    scores = np.concatenate([positives, negatives])
    below, at = scores[scores < threshold], scores[scores >= threshold]
    lower = float(below.max()) if below.size else -1.0
    upper = float(at.min()) if at.size else threshold
    for digits in range(1, 9):
        scale = 10**digits
        candidate = math.floor(upper * scale) / scale
        if lower < float(np.float32(candidate)) <= upper and 0.0 <= candidate <= 1.0:
            return candidate
    return threshold


def _choose_sorted(positives: np.ndarray, negatives: np.ndarray, target: Target) -> float:
    if target.kind == "sensitivity":
        assert target.value is not None
        # the k-th highest positive score: k positives at or above it, the fewest that reach the target
        k = max(1, math.ceil(target.value * positives.size - 1e-9))
        return float(positives[positives.size - k])
    if target.kind == "specificity":
        assert target.value is not None
        # the lowest threshold that leaves at least ceil(value * N) negatives below it
        k = max(1, math.ceil(target.value * negatives.size - 1e-9))
        # the k lowest negatives below it: just above the k-th lowest
        return _above(negatives[min(k, negatives.size) - 1])
    candidates = np.unique(np.concatenate([positives, negatives]))
    sensitivity, specificity = rates_at(positives, negatives, candidates)
    youden = sensitivity + specificity - 1
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    return float(candidates[best[-1]])  # among equals, the highest: fewer false positives


@dataclass(frozen=True)
class Estimate:
    value: float | None
    interval: tuple[float, float] | None

    def as_dict(self) -> dict:
        return {"value": self.value, "interval": list(self.interval) if self.interval else None}


@dataclass(frozen=True)
class ClassStatistics:
    positives: int
    negatives: int
    threshold: float
    threshold_interval: tuple[float, float] | None  # the target re-met on each resample (None: threshold kept)
    sensitivity: Estimate
    specificity: Estimate
    auroc: Estimate


def _percentile(values: np.ndarray) -> tuple[float, float] | None:
    values = values[~np.isnan(values)]
    if not values.size:
        return None
    tail = (1 - INTERVAL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def class_statistics(
    scores: np.ndarray,
    truth: np.ndarray,
    threshold: float | None,
    target: Target | None,
    resamples: int = 1000,
    seed: int = 0,
) -> ClassStatistics:
    """The threshold (met from target, or the given one kept when target is None), its sensitivity and
    specificity, and AUROC, each with a stratified percentile bootstrap interval (positives and negatives are
    resampled apart, so each resample keeps both counts and the area stays defined)."""
    positives, negatives = _split(scores, truth)
    if target is not None:
        threshold = readable(_choose_sorted(positives, negatives, target), positives, negatives)
    assert threshold is not None
    sensitivity, specificity = rates_at(positives, negatives, np.array([threshold]))
    area = _auroc_sorted(positives, negatives)
    rng = np.random.default_rng(seed)
    boot = np.full((4, resamples), np.nan)
    for i in range(resamples):
        pos = np.sort(rng.choice(positives, positives.size)) if positives.size else positives
        neg = np.sort(rng.choice(negatives, negatives.size)) if negatives.size else negatives
        chosen = _choose_sorted(pos, neg, target) if target is not None and pos.size and neg.size else np.nan
        sens, spec = rates_at(pos, neg, np.array([threshold]))
        boot[:, i] = (chosen, sens[0], spec[0], np.nan if (a := _auroc_sorted(pos, neg)) is None else a)

    def _value(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    return ClassStatistics(
        positives=int(positives.size),
        negatives=int(negatives.size),
        threshold=float(threshold),
        threshold_interval=_percentile(boot[0]) if target is not None else None,
        sensitivity=Estimate(_value(sensitivity[0]), _percentile(boot[1])),
        specificity=Estimate(_value(specificity[0]), _percentile(boot[2])),
        auroc=Estimate(area, _percentile(boot[3])),
    )


def histogram(scores: np.ndarray, bins: int = 20) -> list[int]:
    """Counts of scores in equal bins over [0, 1] (the last bin includes 1)."""
    counts, _ = np.histogram(np.clip(np.asarray(scores, dtype=np.float64), 0, 1), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]
