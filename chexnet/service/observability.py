"""JSON logs on stdout and Prometheus metrics: what every transport of the service shares (the audit log is chexnet.service.audit).

Logs and audit records carry request ids, token subjects, model ids and input hashes, never
patient identifiers: nothing from a DICOM header other than pixel geometry leaves the decoder.
"""

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from licensing.revocation import REFUSAL_REASONS, RevocationWatcher

# The id of the request being served on this thread, set by the transport (the REST API per request).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id.get():
            entry["request_id"] = request_id.get()
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            # The exception type only: a traceback may quote request data.
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class Metrics:
    """Prometheus metrics on a registry of the app's own (no process globals, so tests can make many apps)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chexnet_requests_total",
            "HTTP requests by endpoint, status and error code",
            ["endpoint", "status", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chexnet_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.stage = Histogram(
            "chexnet_stage_seconds",
            "Latency per inference stage",
            ["model", "stage"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.stage_cpu = Histogram(
            "chexnet_stage_cpu_seconds",
            "CPU time per stage of the thread that ran it (parse, decode, preprocess, heatmap, response, audit); "
            "the forward pass runs on the engine's threads and is not counted here",
            ["model", "stage"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_size = Histogram(
            "chexnet_batch_size",
            "Images per engine call",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.priority = Counter(
            "chexnet_priority",
            "Predictions by model and study-level triage priority (CHEXNET_PRIORITY_RULES)",
            ["model", "priority"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "chexnet_queue_depth", "Images waiting for the engine", ["model"], registry=self.registry
        )

    def observe_stage(self, model: str, stage: str, wall_ms: float, cpu_ms: float | None = None) -> None:
        """One stage of one request: its wall time, and the CPU time of the thread that ran it where measured."""
        self.stage.labels(model, stage).observe(wall_ms / 1000.0)
        if cpu_ms is not None:
            self.stage_cpu.labels(model, stage).observe(cpu_ms / 1000.0)

    def watch_revocations(self, watcher: Callable[[], RevocationWatcher | None]) -> None:
        """The revocation list's state, read at each scrape (the watcher exists once the keys load)."""
        self.registry.register(RevocationCollector(watcher))


class RevocationCollector(Collector):
    """chexnet_revocation_sequence (the list in force, 0: none), chexnet_revocation_refused{reason} (1 while
    a list is refused for that reason, an earlier one possibly still in force) and
    chexnet_revocation_refusals_total{reason}; nothing while no revocation list is configured."""

    def __init__(self, watcher: Callable[[], RevocationWatcher | None]):
        self._watcher = watcher

    def collect(self) -> Iterator[Metric]:
        watcher = self._watcher()
        if watcher is None:
            return
        current, standing, counts = watcher.current, watcher.standing_refusals(), dict(watcher.refusals)
        yield GaugeMetricFamily(
            "chexnet_revocation_sequence",
            "Sequence of the revocation list in force (0: none)",
            value=current.seq if current else 0,
        )
        refused = GaugeMetricFamily(
            "chexnet_revocation_refused", "1 while a revocation list is refused for this reason", labels=["reason"]
        )
        total = CounterMetricFamily(
            "chexnet_revocation_refusals", "Revocation lists refused, by reason", labels=["reason"]
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], 1 if reason in standing else 0)
            total.add_metric([reason], counts.get(reason, 0))
        yield refused
        yield total
