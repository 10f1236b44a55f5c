"""The monitoring roll-up behind /monitor (DESIGN.md "Site calibration, monitoring, audit export"): counts and
score histograms per model and hour bucket in a small SQLite file beside the audit log, and the drift of each
class's scores (population stability index, PSI) against a reference, also a Prometheus gauge.

No patient data: what is kept is counts keyed by model, hour and a value from a small fixed set (label
codes, warning and error codes, Modality, ViewPosition, transfer syntax names, size buckets, score bins);
no UID, name, date or hash reaches the file.

Cost per prediction: a few dictionary increments under a lock (measured in test_monitoring.py). A
background thread adds the pending counts to the file every CHEXNET_MONITOR_FLUSH_S seconds, in one
transaction, with no fsync of its own (WAL, synchronous=NORMAL): a crash may lose the last seconds of the
roll-up; the audit log is the durable record. Several processes (API workers, Swarm tasks, the DICOM node)
may share the file: every write adds to the stored counts (upsert), under SQLite's WAL and busy timeout.
"""

import atexit
import functools
import json
import logging
import math
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydicom.uid import UID

from chexnet.predictor import Caller, Prediction

log = logging.getLogger(__name__)

BINS = 20  # equal score bins over [0, 1], as the calibration's reference histograms
# Latency buckets' upper bounds in milliseconds (the last is open); p50/p99 are interpolated inside them.
LATENCY_BOUNDS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
SIZE_BUCKETS = ((1024, "<1024 px"), (2048, "1024-2047 px"), (3072, "2048-3071 px"))
SIZE_LARGEST = ">=3072 px"
MODALITIES = ("CR", "DX", "DR", "SC", "OT", "CT", "MR", "MG", "US", "XA", "RF", "PX")
VIEWS = ("PA", "AP", "LL", "RL", "LATERAL", "LAT")
ABSENT = "(absent)"
OTHER = "other"
PSI_WINDOW_HOURS = 24  # the gauge: the last day against the reference
PSI_MIN_COUNT = 50  # fewer predictions in a window or reference give no PSI (too noisy to alert on)
PSI_FLOOR = 1e-4  # an empty bin counts as this share, so the logarithm stays finite
WINDOWS = {"day": 24, "week": 24 * 7}
ALL_MODELS = ""  # the model key of counts that belong to no model (refusals before a model is chosen)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (hour INTEGER NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, model, kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (hour INTEGER NOT NULL, model TEXT NOT NULL, code TEXT NOT NULL,
    bin INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, model, code, bin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reference (model TEXT NOT NULL, version TEXT NOT NULL, code TEXT NOT NULL,
    bin INTEGER NOT NULL, n INTEGER NOT NULL, first_hour INTEGER NOT NULL, last_hour INTEGER NOT NULL,
    PRIMARY KEY (model, version, code, bin)) WITHOUT ROWID;
"""
_ADD_COUNT = (
    "INSERT INTO counts (hour, model, kind, key, n) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (hour, model, kind, key) DO UPDATE SET n = n + excluded.n"
)
_ADD_SCORE = (
    "INSERT INTO scores (hour, model, code, bin, n) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (hour, model, code, bin) DO UPDATE SET n = n + excluded.n"
)
MAX_PENDING_HOURS = 48  # while the file cannot be written, counts of at most this many hours wait in memory


def score_bin(probability: float) -> int:
    return min(BINS - 1, max(0, int(probability * BINS)))


def latency_bucket(ms: float) -> int:
    """Index into LATENCY_BOUNDS_MS; len(LATENCY_BOUNDS_MS) for the open bucket above the last bound."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS)


def size_bucket(width: int, height: int) -> str:
    side = max(width, height)
    for bound, name in SIZE_BUCKETS:
        if side < bound:
            return name
    return SIZE_LARGEST


def _tag(value: object, known: tuple[str, ...]) -> str:
    text = str(value or "").strip().upper()
    if not text:
        return ABSENT
    return text if text in known else OTHER


@functools.lru_cache(maxsize=256)
def transfer_syntax_name(uid: str | None) -> str:
    if not uid:
        return ABSENT
    syntax = UID(uid)
    return syntax.name if syntax.is_transfer_syntax else OTHER


def _transfer_syntax(source: pydicom.Dataset) -> str | None:
    meta = getattr(source, "file_meta", None)
    return str(meta.get("TransferSyntaxUID") or "") or None if meta is not None else None


def approximate_quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (milliseconds) from latency bucket counts, linear inside the bucket it falls in; the open
    bucket above the last bound answers that bound. Approximate by construction (bucket resolution)."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            return round(low + (LATENCY_BOUNDS_MS[i] - low) * (rank - seen) / n, 1)
        seen += n
    return float(LATENCY_BOUNDS_MS[-1])


def psi(reference: list[int], current: list[int]) -> float | None:
    """Population stability index of CURRENT against REFERENCE (bin counts); None below PSI_MIN_COUNT on
    either side. 0.1-0.25 is usually read as a moderate shift, above 0.25 as a significant one."""
    ref_total, cur_total = sum(reference), sum(current)
    if ref_total < PSI_MIN_COUNT or cur_total < PSI_MIN_COUNT:
        return None
    value = 0.0
    for r, c in zip(reference, current, strict=True):
        p, q = max(r / ref_total, PSI_FLOOR), max(c / cur_total, PSI_FLOOR)
        value += (q - p) * math.log(q / p)
    return round(value, 6)


def site_reference(path: str | None) -> dict[str, dict[str, list[int]]]:
    """Per model id, per class code: the calibration set's score histogram (BINS counts) from a
    site-thresholds.json (``python -m chexnet calibrate``) whose classes carry a ``histogram``. A file without
    histograms, or none, gives {} and the first days of data become the reference."""
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    bundle = doc.get("bundle") if isinstance(doc, dict) else None
    model = bundle.get("id") if isinstance(bundle, dict) else (doc.get("model") if isinstance(doc, dict) else None)
    classes = doc.get("classes") if isinstance(doc, dict) else None
    if isinstance(classes, list):
        classes = {c.get("code"): c for c in classes if isinstance(c, dict)}
    if not isinstance(model, str) or not isinstance(classes, dict):
        return {}
    found = {}
    for code, entry in classes.items():
        histogram = entry.get("histogram") if isinstance(entry, dict) else None
        if isinstance(code, str) and isinstance(histogram, list) and len(histogram) == BINS:
            if all(isinstance(n, int | float) and n >= 0 for n in histogram):
                found[code] = [int(round(n)) for n in histogram]
    return {model: found} if found else {}


def site_bundle_version(path: str | None) -> str | None:
    """The bundle version a site-thresholds.json was measured on: its histograms are the reference of that
    version only (a new version gathers its own first days)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None
    bundle = doc.get("bundle") if isinstance(doc, dict) else None
    version = bundle.get("version") if isinstance(bundle, dict) else None
    return version if isinstance(version, str) else None


@dataclass(frozen=True)
class MonitorSettings:
    path: str
    reference_days: int = 7
    retention_days: int = 400
    flush_s: float = 10.0


class Rollup:
    """Counts per (hour, model, kind, key) and score bins per (hour, model, code, bin): gathered in memory by
    :meth:`observe` (an observer of every prediction) and :meth:`refusal`, added to the SQLite file by
    :meth:`flush` (a background thread, at exit, and before every read)."""

    def __init__(
        self,
        settings: MonitorSettings,
        site: dict[str, dict[str, list[int]]] | None = None,
        site_version: str | None = None,
        clock: Callable[[], float] = time.time,
        start_thread: bool = True,
    ):
        self.settings = settings
        self.site = site or {}
        self.site_version = site_version  # None: the site histograms hold for any version
        self.clock = clock
        self._lock = threading.Lock()  # the pending counts
        self._db_lock = threading.Lock()  # the connection
        self._counts: Counter[tuple[int, str, str, str]] = Counter()
        self._scores: Counter[tuple[int, str, str, int]] = Counter()
        self._failing = False
        self._pruned_hour = -1
        Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(settings.path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per transaction (see the module's note)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._stop = threading.Event()
        if start_thread:
            ref = weakref.ref(self)
            threading.Thread(target=_flush_loop, args=(ref, self._stop, settings.flush_s), daemon=True).start()
        atexit.register(self.close)

    # --- writing ---------------------------------------------------------------------------------
    def hour(self) -> int:
        return int(self.clock() // 3600)

    def observe(self, prediction: Prediction, caller: Caller | None = None) -> None:
        """The observer of every prediction: a few counter increments, nothing written here."""
        hour, model = self.hour(), prediction.model.id
        source = prediction.source
        keys = [
            ("predictions", ""),
            ("version", prediction.model.version),
            ("format", str(prediction.image.get("format", OTHER))),
            ("size", size_bucket(int(prediction.image.get("width", 0)), int(prediction.image.get("height", 0)))),
            ("latency", str(latency_bucket(float(prediction.timing_ms.get("total", 0.0))))),
        ]
        if source is not None:
            keys += [
                ("modality", _tag(source.get("Modality"), MODALITIES)),
                ("view", _tag(source.get("ViewPosition"), VIEWS)),
                ("transfer_syntax", transfer_syntax_name(_transfer_syntax(source))),
            ]
        keys += [("warning", code) for code in prediction.warnings]
        keys += [("positive", f.code) for f in prediction.findings if f.positive]
        with self._lock:
            for kind, key in keys:
                self._counts[(hour, model, kind, key)] += 1
            for f in prediction.findings:
                self._scores[(hour, model, f.code, score_bin(f.probability))] += 1

    def refusal(self, code: str, model: str = ALL_MODELS) -> None:
        """A prediction request answered with an error code (the API's error table, the node's skip reasons)."""
        with self._lock:
            self._counts[(self.hour(), model, "refusal", code)] += 1

    def flush(self) -> None:
        """Add the pending counts to the file in one transaction; on failure keep them (a bounded number of
        hours) and say so once until it works again."""
        with self._lock:
            counts, scores = self._counts, self._scores
            self._counts, self._scores = Counter(), Counter()
        if counts or scores:
            try:
                with self._db_lock:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(_ADD_COUNT, [(*k, n) for k, n in counts.items()])
                        self._db.executemany(_ADD_SCORE, [(*k, n) for k, n in scores.items()])
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
            except sqlite3.Error as exc:
                self._keep(counts, scores)
                if not self._failing:
                    log.error("monitor roll-up not written (%s); counts wait in memory", exc.__class__.__name__)
                self._failing = True
                return
            if self._failing:
                log.info("monitor roll-up written again")
            self._failing = False
        self._prune()

    def _keep(self, counts: Counter, scores: Counter) -> None:
        oldest = self.hour() - MAX_PENDING_HOURS
        with self._lock:
            self._counts.update({k: n for k, n in counts.items() if k[0] > oldest})
            self._scores.update({k: n for k, n in scores.items() if k[0] > oldest})

    def _prune(self) -> None:
        hour = self.hour()
        if hour == self._pruned_hour:
            return
        oldest = hour - self.settings.retention_days * 24
        try:
            with self._db_lock:
                self._db.execute("DELETE FROM counts WHERE hour < ?", (oldest,))
                self._db.execute("DELETE FROM scores WHERE hour < ?", (oldest,))
            self._pruned_hour = hour
        except sqlite3.Error as exc:
            log.warning("monitor roll-up not pruned (%s)", exc.__class__.__name__)

    def close(self) -> None:
        self._stop.set()
        try:
            self.flush()
        except sqlite3.ProgrammingError:  # already closed
            return
        with self._db_lock:
            self._db.close()
        atexit.unregister(self.close)

    # --- reading ---------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple) -> list[tuple]:
        with self._db_lock:
            return self._db.execute(sql, args).fetchall()

    def models(self) -> list[str]:
        return [m for (m,) in self._rows("SELECT DISTINCT model FROM counts WHERE model != ? ORDER BY 1", ("",))]

    def histograms(self, model: str, first: int, last: int) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for code, b, n in self._rows(
            "SELECT code, bin, SUM(n) FROM scores WHERE model = ? AND hour BETWEEN ? AND ? GROUP BY code, bin",
            (model, first, last),
        ):
            found.setdefault(code, [0] * BINS)[b] = n
        return found

    def reference(self, model: str, version: str | None = None) -> "Reference":
        """The site calibration's histograms when loaded for this model, else the first reference_days of data
        of the model's current version (frozen in the file once those days are over)."""
        if model in self.site and (self.site_version is None or version in (None, self.site_version)):
            return Reference("site", self.site[model], None, None, True)
        days = self.settings.reference_days
        if version is None:
            newest = self._rows(
                "SELECT key FROM counts WHERE model = ? AND kind = 'version' ORDER BY hour DESC LIMIT 1", (model,)
            )
            if not newest:
                return Reference("first_days", {}, None, None, False)
            version = newest[0][0]
        frozen = self._rows(
            "SELECT code, bin, n, first_hour, last_hour FROM reference WHERE model = ? AND version = ?",
            (model, version),
        )
        if frozen:
            histograms: dict[str, list[int]] = {}
            for code, b, n, _, _ in frozen:
                histograms.setdefault(code, [0] * BINS)[b] = n
            return Reference("first_days", histograms, frozen[0][3], frozen[0][4], True)
        seen = self._rows(
            "SELECT MIN(hour) FROM counts WHERE model = ? AND kind = 'version' AND key = ?", (model, version)
        )
        if not seen or seen[0][0] is None:
            return Reference("first_days", {}, None, None, False)
        first = seen[0][0]
        last = first + days * 24 - 1
        histograms = self.histograms(model, first, last)
        complete = self.hour() > last
        if complete and histograms:
            with self._db_lock:
                self._db.executemany(
                    "INSERT OR IGNORE INTO reference VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (model, version, code, b, n, first, last)
                        for code, bins in histograms.items()
                        for b, n in enumerate(bins)
                    ],
                )
        return Reference("first_days", histograms, first, last, complete)

    def drift(self, model: str, version: str | None = None) -> dict[str, float]:
        """PSI per class of the last PSI_WINDOW_HOURS against the reference, for classes with enough data on
        both sides; nothing while the first-days reference is still being gathered."""
        reference = self.reference(model, version)
        if not reference.complete:
            return {}
        hour = self.hour()
        current = self.histograms(model, hour - PSI_WINDOW_HOURS + 1, hour)
        found = {}
        for code, bins in current.items():
            if code in reference.histograms and (value := psi(reference.histograms[code], bins)) is not None:
                found[code] = value
        return found

    def counts(self, model: str, first: int, last: int) -> dict[str, dict[str, list[tuple[int, int]]]]:
        """kind → key → [(hour, n)] for one model key between two hours."""
        found: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for hour, kind, key, n in self._rows(
            "SELECT hour, kind, key, n FROM counts WHERE model = ? AND hour BETWEEN ? AND ? ORDER BY hour",
            (model, first, last),
        ):
            found.setdefault(kind, {}).setdefault(key, []).append((hour, n))
        return found


@dataclass(frozen=True)
class Reference:
    source: str  # "site": the calibration set (site-thresholds.json); "first_days": the first days of data
    histograms: dict[str, list[int]]
    first_hour: int | None
    last_hour: int | None
    complete: bool


def _flush_loop(ref: "weakref.ref[Rollup]", stop: threading.Event, every_s: float) -> None:
    """Flush every few seconds until the roll-up is closed or gone (the thread holds it only weakly)."""
    while not stop.wait(every_s):
        rollup = ref()
        if rollup is None:
            return
        try:
            rollup.flush()
        except sqlite3.ProgrammingError:  # closed meanwhile
            return
        del rollup


class DriftCollector(Collector):
    """chexnet_score_psi{model,code}: each class's PSI over the last day against its reference, computed at
    scrape time from the roll-up (at most once a minute), absent while there is too little data."""

    def __init__(self, rollup: Rollup, versions: Callable[[], dict[str, str]], cache_s: float = 60.0):
        self._rollup = rollup
        self._versions = versions
        self._cache_s = cache_s
        self._cached: tuple[float, dict[tuple[str, str], float]] | None = None

    def _values(self) -> dict[tuple[str, str], float]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._cache_s:
            self._rollup.flush()
            values = {}
            for model, version in self._versions().items():
                for code, value in self._rollup.drift(model, version).items():
                    values[(model, code)] = value
            self._cached = (now, values)
        return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "chexnet_score_psi",
            f"Population stability index of each class's scores over the last {PSI_WINDOW_HOURS} h against the "
            "reference (site calibration, else the first days of data)",
            labels=["model", "code"],
        )
        try:
            values = self._values()
        except sqlite3.Error as exc:
            log.warning("monitor roll-up not readable for the PSI gauge (%s)", exc.__class__.__name__)
            values = {}
        for (model, code), value in sorted(values.items()):
            gauge.add_metric([model, code], value)
        yield gauge


@dataclass(frozen=True)
class LoadedInfo:
    """What the roll-up does not know of a loaded model: its version, demo flag and label order."""

    version: str
    demo: bool
    codes: tuple[str, ...]


def _iso(hour: int) -> str:
    return time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour * 3600))


def _by_hour(points: list[tuple[int, int]], hours: list[int]) -> list[int]:
    found = dict(points)
    return [found.get(h, 0) for h in hours]


def _totals(keyed: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
    return {key: sum(n for _, n in points) for key, points in sorted(keyed.items())}


def report(rollup: Rollup, window: str, loaded: dict[str, LoadedInfo]) -> dict:
    """The JSON behind /monitor: per model, over the last day or week in hour buckets, each class's score
    histogram against its reference (with PSI), positive rates, latency p50/p99 (approximate, from buckets),
    the input mix and eligibility warnings; refusals by error code. Counts only: no patient data."""
    rollup.flush()
    last = rollup.hour()
    hours = list(range(last - WINDOWS[window] + 1, last + 1))
    models = []
    for model in sorted(set(rollup.models()) | set(loaded)):
        models.append(_model_report(rollup, model, loaded.get(model), hours))
    refusals = rollup.counts(ALL_MODELS, hours[0], hours[-1]).get("refusal", {})
    return {
        "window": {"name": window, "hours": len(hours), "from": _iso(hours[0]), "to": _iso(hours[-1] + 1)},
        "hours": [_iso(h) for h in hours],
        "bins": BINS,
        "latency_bounds_ms": list(LATENCY_BOUNDS_MS),
        "psi": {"window_hours": PSI_WINDOW_HOURS, "min_count": PSI_MIN_COUNT},
        "models": models,
        "refusals": {"total": _totals(refusals), "by_hour": {k: _by_hour(v, hours) for k, v in refusals.items()}},
    }


def _model_report(rollup: Rollup, model: str, info: LoadedInfo | None, hours: list[int]) -> dict:
    counts = rollup.counts(model, hours[0], hours[-1])
    per_hour = _by_hour(counts.get("predictions", {}).get("", []), hours)
    histograms = rollup.histograms(model, hours[0], hours[-1])
    reference = rollup.reference(model, info.version if info else None)
    drift = rollup.drift(model, info.version if info else None)
    positives = counts.get("positive", {})
    codes = list(info.codes) if info else sorted(histograms)
    classes = []
    for code in codes:
        positive = _by_hour(positives.get(code, []), hours)
        total = sum(per_hour)
        classes.append(
            {
                "code": code,
                "histogram": histograms.get(code, [0] * BINS),
                "reference": reference.histograms.get(code),
                "psi": psi(reference.histograms[code], histograms[code])
                if reference.complete and code in reference.histograms and code in histograms
                else None,
                "psi_last_day": drift.get(code),
                "positives": sum(positive),
                "positive_rate": round(sum(positive) / total, 4) if total else None,
                "positive_rate_by_hour": [
                    round(p / n, 4) if n else None for p, n in zip(positive, per_hour, strict=True)
                ],
            }
        )
    latency = {int(k): _by_hour(v, hours) for k, v in counts.get("latency", {}).items()}
    buckets = [latency.get(i, [0] * len(hours)) for i in range(len(LATENCY_BOUNDS_MS) + 1)]
    by_hour = [[b[j] for b in buckets] for j in range(len(hours))]
    window_buckets = [sum(b) for b in buckets]
    return {
        "id": model,
        "version": info.version if info else None,
        "demo": info.demo if info else None,
        "loaded": info is not None,
        "predictions": sum(per_hour),
        "predictions_by_hour": per_hour,
        "reference": {
            "source": reference.source,
            "complete": reference.complete,
            "from": _iso(reference.first_hour) if reference.first_hour is not None else None,
            "to": _iso(reference.last_hour + 1) if reference.last_hour is not None else None,
            "predictions": max((sum(h) for h in reference.histograms.values()), default=0),
        },
        "classes": classes,
        "latency_ms": {
            "approximate": True,
            "buckets": window_buckets,
            "p50": approximate_quantile(window_buckets, 0.5),
            "p99": approximate_quantile(window_buckets, 0.99),
            "p50_by_hour": [approximate_quantile(h, 0.5) for h in by_hour],
            "p99_by_hour": [approximate_quantile(h, 0.99) for h in by_hour],
        },
        "input_mix": {
            kind: _totals(counts.get(kind, {})) for kind in ("format", "modality", "transfer_syntax", "view", "size")
        },
        "warnings": _totals(counts.get("warning", {})),
        "refusals": _totals(counts.get("refusal", {})),
    }
