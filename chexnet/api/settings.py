"""Service settings: the CHEXNET_* variables (DESIGN.md "Settings"), read once into one typed,
validated object. A bad value stops start-up with one sentence that names the variable."""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import PYDICOM_ROOT_UID

from chexnet.cpu import available_cores, engine_layout
from chexnet.engines import DEFAULT_ENGINE, DEVICES, ENGINES, PRECISIONS
from chexnet.imaging.gate import default_concurrency
from chexnet.imaging.types import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


_UID_ROOT = re.compile(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$")


@dataclass(frozen=True)
class Layout:
    cores: int
    engine_workers: int
    engine_threads: int  # per worker
    decode_concurrency: int
    http_threads: int  # waitress


class SettingsError(Exception):
    """A CHEXNET_* variable has a value the service cannot run with."""


@dataclass(frozen=True)
class Settings:
    license_keys: str
    models_dir: str = "models"
    models: tuple[str, ...] = ()  # empty: every bundle in models_dir
    default_model: str | None = None
    engine: str = DEFAULT_ENGINE  # each image declares its own (CHEXNET_ENGINE in its Dockerfile)
    device: str = "auto"
    product_uuid_file: str = "/sys/class/dmi/id/product_uuid"
    node_name: str = ""  # in a cluster: this node's hostname, whose line of product_uuid_file is read
    revocation_list: str | None = None
    revocation_state: str | None = None  # None: revocation-state.json beside the audit log
    license_leeway_s: int = 120
    max_upload_mb: int = DEFAULT_MAX_BYTES // 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    audit_log: str = "logs/audit.jsonl"
    host: str = "0.0.0.0"
    port: int = 8080
    threads: int = 0  # waitress threads; 0: enough to keep every engine worker and decode slot busy
    max_batch: int = 1  # CPU: batching measured slower (BENCHMARKS.md); the GPU image sets 32
    engine_workers: int = 0  # 0: from the cores the container is given (chexnet.cpu.engine_layout)
    engine_threads: int = 0  # 0: the same
    batch_wait_ms: float = 3.0
    queue_size: int = 32
    request_timeout_s: float = 60.0
    decode_concurrency: int = 0  # 0: sized for the machine (chexnet.imaging.gate.default_concurrency)
    decode_wait_s: float = 10.0
    precision: str = "fp32"
    log_level: str = "INFO"
    dicom_uid_root: str = PYDICOM_ROOT_UID  # new UIDs of DICOM results; a site sets its registered root

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        def get(name: str, default=None):
            value = env.get(f"CHEXNET_{name}")
            return default if value is None or value.strip() == "" else value.strip()

        def bounded(name: str, low, high, parse=int):
            default = getattr(cls, name.lower())
            raw = get(name, str(default))
            try:
                value = parse(raw)
            except ValueError:
                kind = "a whole number" if parse is int else "a number"
                raise SettingsError(f"CHEXNET_{name} must be {kind}, not '{raw}'.") from None
            if not low <= value <= high:
                raise SettingsError(f"CHEXNET_{name} must be between {low} and {high}, not {value}.")
            return value

        def integer(name: str, low: int, high: int) -> int:
            return bounded(name, low, high, int)

        def number(name: str, low: float, high: float) -> float:
            return bounded(name, low, high, float)

        def choice(name: str, allowed) -> str:
            value = get(name, getattr(cls, name.lower()))
            if value not in allowed:
                raise SettingsError(f"CHEXNET_{name} must be one of {', '.join(allowed)}, not '{value}'.")
            return value

        license_keys = get("LICENSE_KEYS")
        if not license_keys:
            raise SettingsError("CHEXNET_LICENSE_KEYS must name the vendor public key file or a directory of <kid>.pem files.")
        models_dir = get("MODELS_DIR", cls.models_dir)
        if not Path(models_dir).is_dir():
            raise SettingsError(f"CHEXNET_MODELS_DIR '{models_dir}' is not a directory of model bundles.")
        models = tuple(m.strip() for m in (get("MODELS", "") or "").split(",") if m.strip())
        uid_root = get("DICOM_UID_ROOT", cls.dicom_uid_root).rstrip(".") + "."
        if not _UID_ROOT.match(uid_root) or len(uid_root) > 40:
            raise SettingsError(f"CHEXNET_DICOM_UID_ROOT must be a UID root of digits and dots (at most 40 "
                                f"characters, e.g. 1.2.826.0.1.3680043.8.498), not '{uid_root[:64]}'.")
        return cls(
            license_keys=license_keys, models_dir=models_dir, models=models, default_model=get("DEFAULT_MODEL"),
            engine=choice("ENGINE", tuple(ENGINES)), device=choice("DEVICE", DEVICES),
            product_uuid_file=get("PRODUCT_UUID_FILE", cls.product_uuid_file),
            node_name=get("NODE_NAME", cls.node_name).strip(),
            revocation_list=get("REVOCATION_LIST"), revocation_state=get("REVOCATION_STATE"),
            license_leeway_s=integer("LICENSE_LEEWAY_S", 0, 3600),
            max_upload_mb=integer("MAX_UPLOAD_MB", 1, 1024),
            max_pixels=integer("MAX_PIXELS", 1_000_000, 400_000_000),
            audit_log=get("AUDIT_LOG", cls.audit_log), host=get("HOST", cls.host),
            port=integer("PORT", 1, 65535), threads=integer("THREADS", 0, 512),
            max_batch=integer("MAX_BATCH", 1, 256), engine_workers=integer("ENGINE_WORKERS", 0, 64),
            engine_threads=integer("ENGINE_THREADS", 0, 256), batch_wait_ms=number("BATCH_WAIT_MS", 0.0, 1000.0),
            queue_size=integer("QUEUE_SIZE", 1, 100_000),
            request_timeout_s=number("REQUEST_TIMEOUT_S", 1.0, 3600.0),
            decode_concurrency=integer("DECODE_CONCURRENCY", 0, 64),
            decode_wait_s=number("DECODE_WAIT_S", 0.0, 600.0),
            precision=choice("PRECISION", PRECISIONS),
            log_level=choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")),
            dicom_uid_root=uid_root,
        )

    @property
    def layout(self) -> "Layout":
        """The worker and thread counts actually used: the settings, or derived from the cores."""
        cores = available_cores()
        workers, threads = engine_layout(cores)
        workers = self.engine_workers or workers
        threads = self.engine_threads or (threads if not self.engine_workers else max(1, cores // workers))
        decodes = self.decode_concurrency or default_concurrency(cores)
        return Layout(cores, workers, threads, decodes, self.threads or max(8, 2 * workers + decodes))

    @property
    def revocation_state_file(self) -> str:
        """Where the newest accepted revocation list is recorded: persisted with the audit log."""
        return self.revocation_state or str(Path(self.audit_log).parent / "revocation-state.json")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024
