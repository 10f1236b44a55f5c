"""Service settings: the CHEXNET_* variables (DESIGN.md "Settings"), read once into one typed,
validated object. A bad value stops start-up with one sentence that names the variable."""

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from pydicom.uid import PYDICOM_ROOT_UID

from chexnet.cpu import (
    CGROUP_MEMORY_LIMITS,
    MemoryLimit,
    available_cores,
    available_memory,
    engine_layout,
    lone_threads,
)
from chexnet.dicom_results import MAPS
from chexnet.engines import DEFAULT_ENGINE, DEVICES, ENGINES, PRECISIONS
from chexnet.imaging.gate import default_concurrency
from chexnet.imaging.types import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from chexnet.service.memory import MemoryEstimate, estimate, gib
from chexnet.service.syslog_tls import AuditSyslogSettings
from chexnet.site_thresholds import SiteThresholds, SiteThresholdsError, read_site_thresholds
from chexnet.triage import PriorityRulesError, Rule, parse_rules
from licensing.environment import Environment
from licensing.host import DEFAULT_UUID_FILE
from licensing.tokens import DEFAULT_LEEWAY_S, MAX_LEEWAY_S

_UID_ROOT = re.compile(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$")
MAX_LICENSE_LEEWAY_S = MAX_LEEWAY_S


@dataclass(frozen=True)
class Layout:
    cores: int
    engine_workers: int
    engine_threads: int  # per worker
    lone_threads: int  # an engine call's threads while it is the only prediction in the service (0: no more)
    decode_concurrency: int
    http_threads: int  # waitress


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class SettingsError(Exception):
    """A CHEXNET_* variable has a value the service cannot run with."""


@dataclass(frozen=True)
class Workload:
    """What a process runs at once, for the memory check (chexnet.service.memory)."""

    predictions: int | None = None  # predictions in progress at once; None: one per waitress thread
    shared_decode_slots: bool = False  # others use the decode slots too, not only the predictions
    http: bool = True  # waitress's connection buffers count


HTTP_API = Workload()
# The DICOM node: one worker predicts, and the listener reads each received header in a decode slot;
# received data sets stream to the spool on disk.
DICOM_NODE = Workload(predictions=1, shared_decode_slots=True, http=False)


@dataclass(frozen=True)
class Settings:
    license_keys: str
    models_dir: str = "models"
    models: tuple[str, ...] = ()  # empty: every bundle in models_dir
    default_model: str | None = None
    engine: str = DEFAULT_ENGINE  # each image declares its own (CHEXNET_ENGINE in its Dockerfile)
    device: str = "auto"
    product_uuid_file: str = DEFAULT_UUID_FILE
    node_name: str = ""  # in a cluster: this node's hostname, whose line of product_uuid_file is read
    revocation_list: str | None = None
    revocation_state: str | None = None  # None: revocation-state.json beside the audit log
    license_leeway_s: int = DEFAULT_LEEWAY_S
    max_upload_mb: int = DEFAULT_MAX_BYTES // 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    audit_log: str = "logs/audit.jsonl"
    audit_syslog: AuditSyslogSettings | None = None  # CHEXNET_AUDIT_SYSLOG and its TLS files; None: not sent
    host: str = "0.0.0.0"
    port: int = 8080
    threads: int = 0  # waitress threads; 0: enough to keep every engine worker and decode slot busy
    max_batch: int = 1  # CPU: batching measured slower (BENCHMARKS.md); the GPU image sets 32
    engine_workers: int = 0  # 0: from the cores the container is given (chexnet.cpu.engine_layout)
    engine_threads: int = 0  # 0: the same
    lone_engine: bool = True  # a request alone in the service may take every worker's cores; off where memory is short
    batch_wait_ms: float = 3.0
    queue_size: int = 32
    request_timeout_s: float = 60.0
    decode_concurrency: int = 0  # 0: sized for the machine (chexnet.imaging.gate.default_concurrency)
    decode_wait_s: float = 10.0
    precision: str = "fp32"
    log_level: str = "INFO"
    dicom_uid_root: str = PYDICOM_ROOT_UID  # new UIDs of DICOM results; a site sets its registered root
    priority_rules: tuple[Rule, ...] = ()  # CHEXNET_PRIORITY_RULES (chexnet.triage); codes checked once loaded
    monitor_db: str | None = None  # the /monitor roll-up (SQLite); None: monitor.sqlite beside the audit log
    monitor_reference_days: int = 7  # without site calibration histograms: the first days of data are the reference
    monitor_retention_days: int = 400
    monitor_flush_s: float = 10.0  # how often the roll-up is written (a crash loses at most this much of it)
    dicom_maps: str = "both"  # CHEXNET_DICOM_MAPS: heatmaps as secondary captures (sc), Parametric Maps (pm) or both
    site_thresholds: str | None = None  # CHEXNET_SITE_THRESHOLDS: the file python -m chexnet calibrate wrote
    # that file, read and checked (schema, content hash) at start; not compared (nor hashed: it holds lists)
    site: SiteThresholds | None = dataclass_field(default=None, compare=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        *,
        workload: Workload = HTTP_API,
        memory_limit_files: Sequence[Path] = CGROUP_MEMORY_LIMITS,
    ) -> "Settings":
        """The settings, checked against the memory this process is given (read from
        memory_limit_files, chexnet.cpu.available_memory): see :meth:`fitted`."""
        env_ = Environment(env, "CHEXNET_", SettingsError)
        get = env_.text

        def integer(name: str, low: int, high: int) -> int:
            return env_.integer(name, getattr(cls, name.lower()), low, high)

        def number(name: str, low: float, high: float) -> float:
            return env_.number(name, getattr(cls, name.lower()), low, high)

        def choice(name: str, allowed) -> str:
            return env_.choice(name, getattr(cls, name.lower()), allowed)

        license_keys = env_.required(
            "LICENSE_KEYS", "must name the vendor public key file or a directory of <kid>.pem files."
        )
        models_dir = get("MODELS_DIR", cls.models_dir)
        assert models_dir is not None
        if not Path(models_dir).is_dir():
            raise SettingsError(f"CHEXNET_MODELS_DIR '{models_dir}' is not a directory of model bundles.")
        models = tuple(m.strip() for m in (get("MODELS", "") or "").split(",") if m.strip())
        uid_root = (get("DICOM_UID_ROOT", cls.dicom_uid_root) or "").rstrip(".") + "."
        if not _UID_ROOT.match(uid_root) or len(uid_root) > 40:
            raise SettingsError(
                f"CHEXNET_DICOM_UID_ROOT must be a UID root of digits and dots (at most 40 "
                f"characters, e.g. 1.2.826.0.1.3680043.8.498), not '{uid_root[:64]}'."
            )
        site_file = get("SITE_THRESHOLDS") or None
        try:
            site = read_site_thresholds(site_file) if site_file else None
        except SiteThresholdsError as exc:
            raise SettingsError(f"CHEXNET_SITE_THRESHOLDS: {exc.message}") from None
        try:
            priority_rules = parse_rules(get("PRIORITY_RULES"))
        except PriorityRulesError as exc:
            raise SettingsError(str(exc)) from None
        settings = cls(
            license_keys=license_keys,
            models_dir=models_dir,
            models=models,
            default_model=get("DEFAULT_MODEL"),
            engine=choice("ENGINE", tuple(ENGINES)),
            device=choice("DEVICE", DEVICES),
            product_uuid_file=get("PRODUCT_UUID_FILE", cls.product_uuid_file),
            node_name=get("NODE_NAME", cls.node_name) or "",
            revocation_list=get("REVOCATION_LIST"),
            revocation_state=get("REVOCATION_STATE"),
            license_leeway_s=integer("LICENSE_LEEWAY_S", 0, MAX_LICENSE_LEEWAY_S),
            max_upload_mb=integer("MAX_UPLOAD_MB", 1, 1024),
            max_pixels=integer("MAX_PIXELS", 1_000_000, 400_000_000),
            audit_log=get("AUDIT_LOG", cls.audit_log),
            audit_syslog=AuditSyslogSettings.from_env(env_, get("AUDIT_LOG", cls.audit_log)),
            host=get("HOST", cls.host),
            port=integer("PORT", 1, 65535),
            threads=integer("THREADS", 0, 512),
            max_batch=integer("MAX_BATCH", 1, 256),
            engine_workers=integer("ENGINE_WORKERS", 0, 64),
            engine_threads=integer("ENGINE_THREADS", 0, 256),
            batch_wait_ms=number("BATCH_WAIT_MS", 0.0, 1000.0),
            queue_size=integer("QUEUE_SIZE", 1, 100_000),
            request_timeout_s=number("REQUEST_TIMEOUT_S", 1.0, 3600.0),
            decode_concurrency=integer("DECODE_CONCURRENCY", 0, 64),
            decode_wait_s=number("DECODE_WAIT_S", 0.0, 600.0),
            precision=choice("PRECISION", PRECISIONS),
            log_level=choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")),
            dicom_uid_root=uid_root,
            priority_rules=priority_rules,
            monitor_db=get("MONITOR_DB"),
            monitor_reference_days=integer("MONITOR_REFERENCE_DAYS", 1, 365),
            monitor_retention_days=integer("MONITOR_RETENTION_DAYS", 1, 3650),
            monitor_flush_s=number("MONITOR_FLUSH_S", 0.1, 3600.0),
            dicom_maps=choice("DICOM_MAPS", MAPS),
            site_thresholds=site_file,
            site=site,
        )
        if settings.monitor_reference_days > settings.monitor_retention_days:
            raise SettingsError(
                f"CHEXNET_MONITOR_REFERENCE_DAYS ({settings.monitor_reference_days}) must not exceed "
                f"CHEXNET_MONITOR_RETENTION_DAYS ({settings.monitor_retention_days})."
            )
        return settings.fitted(available_memory(memory_limit_files), workload)

    # --- memory (DESIGN.md "Resource bounds") ---------------------------------------------------
    def fitted(self, memory: MemoryLimit, workload: Workload = HTTP_API) -> "Settings":
        """These settings with what was left to be derived lowered until the worst case fits the memory, least
        missed first: waitress threads beyond those that keep every engine worker and decode slot busy, the
        engine's second configuration for a request alone in the service (Layout.lone_threads), the decode
        concurrency, then waitress threads down to one past the decode slots. A combination that still does
        not fit stops start-up with one sentence naming the settings, the estimate, the limit and what to lower."""

        def over(settings: "Settings") -> bool:
            return settings.memory_estimate(workload).total > memory.bytes

        def fewer_threads(settings: "Settings", floor: int) -> "Settings":
            if self.threads or workload.predictions is not None:
                return settings
            while over(settings) and settings.layout.http_threads > floor:
                settings = replace(settings, threads=settings.layout.http_threads - 1)
            return settings

        layout = self.layout
        fitted = fewer_threads(self, 2 * layout.engine_workers + layout.decode_concurrency)
        if over(fitted) and fitted.layout.lone_threads:
            fitted = replace(fitted, lone_engine=False)
        if not self.decode_concurrency:
            while over(fitted) and fitted.layout.decode_concurrency > 1:
                fitted = replace(fitted, decode_concurrency=fitted.layout.decode_concurrency - 1)
        # never fewer threads than decode slots and one request past its decode, so that the decode
        # concurrency asked for (or derived) is what the estimate counts
        fitted = fewer_threads(fitted, fitted.layout.decode_concurrency + 1)
        need = fitted.memory_estimate(workload)
        if need.total > memory.bytes:
            raise SettingsError(fitted._too_much(need, memory, workload))
        return fitted

    def memory_estimate(self, workload: Workload = HTTP_API) -> MemoryEstimate:
        layout = self.layout
        predictions = workload.predictions or layout.http_threads
        decodes = layout.decode_concurrency
        if not workload.shared_decode_slots:
            decodes = min(decodes, predictions)
        return estimate(
            engine=self.engine,
            bundles=self.bundle_count,
            max_pixels=self.max_pixels,
            max_upload_bytes=self.max_upload_bytes,
            decodes=decodes,
            past_decode=predictions if workload.shared_decode_slots else predictions - decodes,
            engine_calls=min(layout.engine_workers, predictions),
            http=workload.http,
            lone=layout.lone_threads > 0,
        )

    @property
    def bundle_count(self) -> int:
        """The bundles the service will load (CHEXNET_MODELS, else every bundle in the directory)."""
        if self.models:
            return len(self.models)
        try:
            return sum(1 for p in Path(self.models_dir).iterdir() if (p / "manifest.json").is_file())
        except OSError:
            return 0

    def _too_much(self, need: MemoryEstimate, memory: MemoryLimit, workload: Workload) -> str:
        layout = self.layout
        given = [
            f"CHEXNET_MAX_PIXELS={self.max_pixels}",
            f"CHEXNET_MAX_UPLOAD_MB={self.max_upload_mb}",
            f"CHEXNET_DECODE_CONCURRENCY={layout.decode_concurrency}",
        ]
        if workload.predictions is None:
            given.append(f"CHEXNET_THREADS={layout.http_threads}")
        given.append(f"CHEXNET_ENGINE_WORKERS={layout.engine_workers}")
        return (
            f"{_listed(given)} need up to {gib(need.total)} of memory at worst "
            f"({need.describe()}), more than the {gib(memory.bytes)} this process is given "
            f"({memory.source}); {self._remedy(memory, workload)}, or give the process more memory."
        )

    def _remedy(self, memory: MemoryLimit, workload: Workload) -> str:
        """What to lower: up to two settings that fit each on its own (with the largest value that fits),
        else the fewest settings, lowered in this order, that fit together."""
        layout = self.layout
        knobs = [("DECODE_CONCURRENCY", "decode_concurrency", 1, layout.decode_concurrency, 1)]
        if workload.predictions is None and self.threads:
            knobs.append(("THREADS", "threads", layout.decode_concurrency + 1, layout.http_threads, 1))
        knobs += [
            ("MAX_PIXELS", "max_pixels", 1_000_000, self.max_pixels, 1_000_000),
            ("MAX_UPLOAD_MB", "max_upload_mb", 1, self.max_upload_mb, 1),
        ]
        if self.engine_workers:
            knobs.append(("ENGINE_WORKERS", "engine_workers", 1, layout.engine_workers, 1))

        def fits(settings: "Settings") -> bool:
            return settings.memory_estimate(workload).total <= memory.bytes

        def changed(settings: "Settings", field: str, value: int) -> "Settings":
            """SETTINGS with the integer FIELD (one of the knobs) set to VALUE."""
            change: dict[str, Any] = {field: value}
            return replace(settings, **change)

        def largest(start: "Settings", field: str, low: int, high: int, step: int) -> int | None:
            """The largest value of field in [low, high) that fits, changing only it; None if none does."""
            if high <= low or not fits(changed(start, field, low)):
                return None
            while high - low > step:  # fits at low, not at high
                middle = low + max(1, (high - low) // 2 // step) * step
                low, high = (middle, high) if fits(changed(start, field, middle)) else (low, middle)
            return low

        alone = [
            f"CHEXNET_{name} to {value}"
            for name, field, low, high, step in knobs
            if (value := largest(self, field, low, high, step)) is not None
        ]
        if alone:
            return "lower " + " or ".join(alone[:2])
        together, current = [], self
        for name, field, low, high, step in knobs:
            value = largest(current, field, low, high, step)
            if value is None and high > low:
                current = changed(current, field, low)
                together.append(f"CHEXNET_{name} to {low}")
            elif value is not None:
                together.append(f"CHEXNET_{name} to {value}")
                return "lower " + _listed(together)
        return "load fewer models (CHEXNET_MODELS) and lower " + _listed(together or ["CHEXNET_MAX_PIXELS"])

    @property
    def layout(self) -> "Layout":
        """The worker and thread counts actually used: the settings, or derived from the cores."""
        cores = available_cores()
        workers, threads = engine_layout(cores)
        workers = self.engine_workers or workers
        threads = self.engine_threads or (threads if not self.engine_workers else max(1, cores // workers))
        decodes = self.decode_concurrency or default_concurrency(cores)
        http = self.threads or max(8, 2 * workers + decodes)
        lone = lone_threads(workers, threads) if self.lone_engine and ENGINES[self.engine].lone else 0
        return Layout(cores, workers, threads, lone, decodes, http)

    @property
    def monitor_db_file(self) -> str | None:
        """The monitoring roll-up's SQLite file, persisted with the audit log; None: CHEXNET_MONITOR_DB=off."""
        if self.monitor_db == "off":
            return None
        return self.monitor_db or str(Path(self.audit_log).parent / "monitor.sqlite")

    @property
    def revocation_state_file(self) -> str:
        """Where the newest accepted revocation list is recorded: persisted with the audit log."""
        return self.revocation_state or str(Path(self.audit_log).parent / "revocation-state.json")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024
