"""What every transport serves (the REST API and the DICOM node alike): the loaded models and the
licence verifier. Each model's pipeline is assembled once, when it loads: engine → micro-batcher →
predictor, with the metrics and the audit log as its observers. Loading runs in the background so
/health answers at once and /ready tells the truth."""

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chexnet.batching import InFlight, MicroBatcher
from chexnet.bundle import Bundle, load_bundle
from chexnet.dicom_results import ResultSettings, encode, result_objects
from chexnet.engines import create_engine
from chexnet.errors import ChexnetError, ModelNotFound, MonitorUnavailable, NotReady
from chexnet.imaging import DecodeLimits
from chexnet.imaging.gate import DecodeGate
from chexnet.options import PredictOptions
from chexnet.predictor import Caller, Prediction, Predictor, Stopwatch, batch_forward
from chexnet.service.atna import AtnaAudit
from chexnet.service.audit import AuditLog
from chexnet.service.monitoring import (
    DriftCollector,
    LoadedInfo,
    MonitorSettings,
    Rollup,
    report,
    site_bundle_version,
    site_reference,
)
from chexnet.service.observability import Metrics
from chexnet.service.settings import Settings
from chexnet.site_thresholds import BUNDLE_THRESHOLDS, apply_site_thresholds
from chexnet.triage import Triage, unknown
from licensing.errors import LicenseError
from licensing.host import read_host_uuid
from licensing.keys import TrustedKeys
from licensing.revocation import RevocationWatcher
from licensing.tokens import Claims, TokenVerifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    batcher: MicroBatcher

    @property
    def id(self) -> str:
        return self.predictor.bundle.id

    @property
    def codes(self) -> list[str]:
        return self.predictor.bundle.manifest.codes

    @property
    def info(self) -> dict:
        m = self.predictor.bundle.manifest
        variants = {
            p: {
                **v.model_dump(include={"max_delta", "max_delta_bound", "flips", "decisions", "images"}),
                "measured": "build",
                "device": v.cpu,
            }
            for p, v in m.variants.items()
        }
        measured = self.predictor.engine.measurement  # fp16: measured on this device at start-up
        if measured is not None:
            variants[measured.precision] = measured.as_dict()
        return {
            **self.predictor.model_info.as_dict(),
            "input_size": m.input_size,
            "description": m.description,
            "variants": variants,
            "labels": [
                {"code": label.code, "name": label.name.model_dump(), "threshold": label.threshold}
                for label in m.labels
            ],
        }


class Service:
    def __init__(self, settings: Settings, metrics: Metrics, audit: AuditLog, application: str = "chexnet-api"):
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
        # DICOM audit messages to the hospital's audit repository (CHEXNET_AUDIT_SYSLOG), else a no-op
        self.atna = AtnaAudit.open(settings.audit_syslog, metrics.registry, application)
        self.result_settings = ResultSettings(uid_root=settings.dicom_uid_root, maps=settings.dicom_maps)
        self._results_gate = threading.Lock()  # one DICOM result built at a time (dicom_results)
        self.layout = settings.layout
        self.gate = DecodeGate(self.layout.decode_concurrency, settings.decode_wait_s)
        self.in_flight = InFlight()  # a prediction alone in the service may take every engine core
        self.limits = DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        self.models: dict[str, LoadedModel] = {}
        self.default_model: str | None = None
        self.verifier: TokenVerifier | None = None
        self.revocations: RevocationWatcher | None = None
        self.problems: list[str] = []
        self.rule_problems: list[str] = []  # CHEXNET_PRIORITY_RULES naming codes no loaded model has
        self.loading = True
        self._done = threading.Event()
        metrics.watch_revocations(lambda: self.revocations)
        self.monitor: Rollup | None = None
        self.monitor_problem: str | None = None  # why /monitor has no data: the roll-up's file cannot be used
        self._open_monitor()

    # --- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        self.atna.start()
        threading.Thread(target=self._load, name="loader", daemon=True).start()

    def stop(self) -> None:
        """At the end of the process: the application stop is audited and queued audit messages get a few
        seconds to reach the audit repository (what does not stays queued on disk for the next start)."""
        self.atna.stop()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _load(self) -> None:
        started = time.monotonic()
        try:
            self._load_licence()
            self._load_models()
        finally:
            self.loading = False
            self._done.set()
        for problem in self.problems:
            log.error("not ready: %s", problem)
        log.info(
            "start-up finished",
            extra={
                "fields": {
                    "models": list(self.models),
                    "ready": not self.problems,
                    "seconds": round(time.monotonic() - started, 1),
                }
            },
        )

    def _load_licence(self) -> None:
        s = self.settings
        try:
            keys = TrustedKeys(s.license_keys)
            host = read_host_uuid(s.product_uuid_file, s.node_name)
            if s.revocation_list:
                self.revocations = RevocationWatcher(s.revocation_list, keys, s.revocation_state_file)
            self.verifier = TokenVerifier(keys, host, leeway=s.license_leeway_s, revocations=self.revocations)
            log.info("licence keys loaded", extra={"fields": {"host_product_uuid": host, "node": s.node_name or None}})
        except LicenseError as exc:
            self.problems.append(exc.message)

    def _bundle_dirs(self) -> list[Path]:
        root = Path(self.settings.models_dir)
        if self.settings.models:
            return [root / name for name in self.settings.models]
        return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())

    def _load_models(self) -> None:
        s = self.settings
        self._site_matched = False
        for path in self._bundle_dirs():
            try:
                loaded = self._assemble(load_bundle(path))
            except ChexnetError as exc:
                self.problems.append(exc.message)
                continue
            self.models[loaded.id] = loaded
            log.info("model ready", extra={"fields": loaded.predictor.model_info.as_dict()})
        if s.site is not None and not self._site_matched:
            self.problems.append(
                f"Site thresholds {s.site_thresholds} (CHEXNET_SITE_THRESHOLDS) were made for bundle {s.site.bundle.id}, "
                f"which is not loaded here (loaded: {', '.join(self.models) or 'none'}); load it or remove the setting."
            )
        if not self.models and not self.problems:
            self.problems.append(f"No model bundle found in {s.models_dir} (CHEXNET_MODELS_DIR).")
        wanted = s.default_model or next(iter(self.models), None)
        if wanted is not None and wanted not in self.models:
            self.problems.append(f"CHEXNET_DEFAULT_MODEL '{wanted}' is not among the loaded models.")
        self.default_model = wanted
        # Priority rules' codes can only be checked against the loaded bundles: each mistake is a /ready
        # problem, and predictions are refused (503) until it is fixed rather than triaged by part of the rules.
        self.rule_problems = unknown(s.priority_rules, {m: loaded.codes for m, loaded in self.models.items()})
        self.problems.extend(self.rule_problems)

    def _assemble(self, bundle: Bundle) -> LoadedModel:
        """One model's pipeline, whole: its engine (warmed up), a micro-batcher around the engine's batch
        forward, and the predictor whose forward step is that batcher, observed by the metrics and audit log.
        An engine in a precision that depends on this device (fp16 on the GPU) measures it against fp32 on the
        bundle's calibration images as it is made, and refuses beyond the bundle's bound: the model then does
        not load and /ready gives the engine's sentence (chexnet.engines.startup_check)."""
        s, layout = self.settings, self.layout
        bundle, thresholds = self._site_thresholds(bundle)
        engine = create_engine(
            bundle, s.engine, s.device, s.precision, layout.engine_threads, layout.engine_workers, layout.lone_threads
        )
        engine.warmup(bundle.manifest.input_size)
        batcher = MicroBatcher(
            batch_forward(engine),
            bundle.id,
            s.max_batch,
            s.batch_wait_ms,
            s.queue_size,
            self.metrics,
            layout.engine_workers,
            self.in_flight,
        )
        predictor = Predictor(
            bundle,
            engine,
            self.limits,
            self.gate,
            forward_one=lambda tensor: batcher.run(tensor, s.request_timeout_s),
            thresholds=thresholds,
            triage=Triage.for_model(s.priority_rules, bundle.id, bundle.manifest.codes),
            observers=(
                self._observe_stages,
                self._observe_priority,
                self._audit,
                self._observe_monitor,
                self.atna.prediction,
            ),
        )
        return LoadedModel(predictor, batcher)

    def _site_thresholds(self, bundle: Bundle) -> tuple[Bundle, str]:
        """The bundle with CHEXNET_SITE_THRESHOLDS in its labels where that file was made for it, and the name of
        the thresholds that decide (chexnet.site_thresholds). A file made for this bundle id but another version,
        manifest or precision refuses the model (a /ready problem naming the file and what differs); the other
        models load with their own thresholds."""
        s = self.settings
        if s.site is None or s.site.bundle.id != bundle.id:
            return bundle, BUNDLE_THRESHOLDS
        self._site_matched = True
        assert s.site_thresholds is not None
        bundle = apply_site_thresholds(s.site, bundle, s.precision, f"{s.site_thresholds} (CHEXNET_SITE_THRESHOLDS)")
        log.info("site thresholds applied", extra={"fields": {"model": bundle.id, "thresholds": s.site.tag}})
        return bundle, s.site.tag

    # --- serving ---------------------------------------------------------------------------
    def readiness(self) -> list[str]:
        if self.loading:
            return ["Models are loading and warming up."]
        problems = list(self.problems)
        if self.revocations is not None:
            self.revocations.refresh()
            if self.revocations.current is None:
                problems.append(self.revocations.error or "The configured revocation list is not in force.")
        return problems

    def warnings(self) -> list[str]:
        """What an operator should fix although the service is ready (a refused revocation list)."""
        return self.revocations.warnings if self.revocations is not None else []

    def model(self, model_id: str | None) -> LoadedModel:
        if self.loading:
            raise NotReady("Models are still loading; retry in a few seconds.")
        if self.rule_problems:
            raise NotReady(self.rule_problems[0])
        model_id = model_id or self.default_model
        if model_id not in self.models:
            known = ", ".join(self.models) or "none"
            raise ModelNotFound(f"No model '{model_id}' is loaded here (loaded: {known}).")
        return self.models[model_id]

    def predict(
        self, read: Callable[[], bytes], options: PredictOptions, claims: Claims, request_id: str | None
    ) -> Prediction:
        """The one entry for every transport: the model the options name, licensed by the claims."""
        loaded = self.model(options.model)
        claims.require_feature(loaded.id)
        with self.in_flight.held():
            return loaded.predictor.predict(read, options, Caller(request_id, claims.sub, claims.customer))

    def dicom_results(self, prediction: Prediction) -> list[bytes]:
        """The SR and the heatmaps (secondary captures, Parametric Maps) of a prediction made with output=dicom,
        encoded (PS3.10). One result is made at a time in this process: its Parametric Maps may hold up to
        chexnet.dicom_results.MAP_BUDGET_MIB of float pixels, and about three times that while they are built
        and encoded, which several requests at once would multiply past the container's memory limit."""
        with self._results_gate:
            return [encode(ds) for ds in result_objects(self.result_settings, prediction)]

    # --- monitoring (chexnet.service.monitoring) ---------------------------------------------------
    def _open_monitor(self) -> None:
        """The roll-up in CHEXNET_MONITOR_DB (beside the audit log by default) and the PSI gauge; a file that
        cannot be opened leaves the service serving, and /api/v1/monitor says why."""
        s = self.settings
        path = s.monitor_db_file
        if path is None:
            self.monitor_problem = "Monitoring is off on this server (CHEXNET_MONITOR_DB=off)."
            return
        try:
            self.monitor = Rollup(
                MonitorSettings(path, s.monitor_reference_days, s.monitor_retention_days, s.monitor_flush_s),
                site_reference(getattr(s, "site_thresholds", None)),
                site_bundle_version(getattr(s, "site_thresholds", None)),
            )
        except (OSError, sqlite3.Error) as exc:
            self.monitor_problem = (
                f"The monitoring roll-up {path} cannot be opened ({exc}); check CHEXNET_MONITOR_DB and that "
                "its folder is writable, or move a damaged file aside to start a new roll-up."
            )
            log.error("%s", self.monitor_problem)
            return
        self.metrics.registry.register(DriftCollector(self.monitor, self._loaded_versions))

    def _loaded_versions(self) -> dict[str, str]:
        return {m: loaded.predictor.model_info.version for m, loaded in list(self.models.items())}

    def monitor_report(self, window: str) -> dict:
        """The /monitor data over the last day or week (chexnet.service.monitoring.report)."""
        if self.monitor is None:
            raise MonitorUnavailable(self.monitor_problem or "Monitoring is not available on this server.")
        loaded = {
            m: LoadedInfo(loaded.predictor.model_info.version, loaded.predictor.model_info.demo, tuple(loaded.codes))
            for m, loaded in list(self.models.items())
        }
        try:
            return report(self.monitor, window, loaded)
        except sqlite3.Error as exc:  # damaged, failing or held by another process past the busy timeout
            log.error("monitor roll-up not readable (%s)", exc.__class__.__name__)
            raise MonitorUnavailable(
                f"The monitoring roll-up {self.monitor.settings.path} cannot be read now ({exc}); try again, and if "
                "it persists check CHEXNET_MONITOR_DB's disk or move a damaged file aside to start a new roll-up."
            ) from None

    def _observe_monitor(self, prediction: Prediction, caller: Caller) -> None:
        if self.monitor is not None:
            self.monitor.observe(prediction, caller)

    # --- observers of every prediction ---------------------------------------------------------
    def _observe_stages(self, prediction: Prediction, caller: Caller) -> None:
        for stage, ms in prediction.timing_ms.items():
            if stage != "total":
                self.metrics.observe_stage(prediction.model.id, stage, ms, prediction.cpu_ms.get(stage))

    def _observe_priority(self, prediction: Prediction, caller: Caller) -> None:
        self.metrics.priority.labels(prediction.model.id, prediction.priority.level).inc()

    def _audit(self, prediction: Prediction, caller: Caller) -> None:
        clock = Stopwatch()  # wall: until the flush that holds the record is on disk; CPU: this thread's share
        self.audit.write(
            {
                "request_id": caller.request_id,
                "sub": caller.sub,
                "customer": caller.customer,
                "model": {
                    "id": prediction.model.id,
                    "version": prediction.model.version,
                    "demo": prediction.model.demo,
                    "thresholds": prediction.model.thresholds,
                },
                "input_sha256": prediction.input_sha256,
                "image": prediction.image,
                "findings": [
                    {"code": f.code, "probability": f.probability, "positive": f.positive} for f in prediction.findings
                ],
                "warnings": prediction.warnings,
                "priority": prediction.priority.as_dict(),
            }
        )
        self.metrics.observe_stage(prediction.model.id, "audit", clock.wall_ms(), clock.cpu_ms())
