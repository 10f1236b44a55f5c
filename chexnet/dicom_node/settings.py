"""The DICOM node's own CHEXNET_DICOM_* settings (the model and licence settings are those of
``serve``, :class:`chexnet.service.Settings`). A bad value stops start-up with one sentence."""

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from chexnet.service import SettingsError
from chexnet.options import HEATMAP_MODES

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, at most 16
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeSettings:
    allowed_aes: tuple[str, ...]
    destination: Destination
    token_file: str
    ae_title: str = "CHEXNET"
    port: int = 11112
    spool: str = "spool"
    model: str | None = None  # None: the default model
    heatmaps: str = "top"  # which heatmaps become secondary captures: top | positive | all | none
    retry_max_s: float = 300.0  # the longest pause between two attempts to send
    metrics_port: int = 9102  # Prometheus text on http://<container>:9102/metrics; 0: off
    bind: str = "0.0.0.0"  # the address the listener binds (in a container: all; the host port decides)
    max_associations: int = 32  # open connections in all, associated or not
    max_per_peer: int = 4  # open connections from one peer address (a PACS router may use a few)
    associate_timeout_s: int = 5  # to associate after connecting (ARTIM timer), and to send any one PDU
    network_timeout_s: int = 60  # an associated peer that sends nothing for this long is dropped
    min_free_mb: int = 1024  # C-STORE answers "out of resources" while the spool's disk has less free
    max_attempts: int = 3  # an instance whose processing was started this often without finishing is set aside
    aside_max_mb: int = 2048  # rejected/ and refused/ together; the oldest files go first
    aside_max_days: int = 30
    stall_s: int = 300  # C-ECHO (the healthcheck) fails while work waits and its queue has not moved this long

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "NodeSettings":
        def get(name: str, default=None):
            value = env.get(f"CHEXNET_DICOM_{name}")
            return default if value is None or value.strip() == "" else value.strip()

        def ae_title(name: str, value: str) -> str:
            if not _AE_TITLE.match(value) or not value.strip():
                raise SettingsError(f"CHEXNET_DICOM_{name} must be an AE title of 1 to 16 printable characters "
                                    f"without a backslash, not '{value[:40]}'.")
            return value.strip()

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = get(name, str(default))
            if not raw.isdigit() or not low <= int(raw) <= high:
                raise SettingsError(f"CHEXNET_DICOM_{name} must be a whole number between {low} and {high}, "
                                    f"not '{raw[:40]}'.")
            return int(raw)

        allowed = tuple(ae_title("ALLOWED_AES", a) for a in (get("ALLOWED_AES", "") or "").split(",") if a.strip())
        if not allowed:
            raise SettingsError("CHEXNET_DICOM_ALLOWED_AES must list the calling AE titles (comma separated) of the "
                                "PACS or modalities allowed to send images.")
        raw_destination = get("DESTINATION", "")
        match = _DESTINATION.match(raw_destination)
        if not match or not 1 <= int(match["port"]) <= 65535:
            raise SettingsError("CHEXNET_DICOM_DESTINATION must say where results go as AE@host:port "
                                f"(e.g. PACS@10.0.0.5:104), not '{raw_destination[:80]}'.")
        destination = Destination(ae_title("DESTINATION", match["ae"]), match["host"].strip("[]"), int(match["port"]))
        token_file = get("TOKEN_FILE")
        if not token_file:
            raise SettingsError("CHEXNET_DICOM_TOKEN_FILE must name the file holding the node's licence token.")
        heatmaps = get("HEATMAPS", cls.heatmaps)
        if heatmaps not in HEATMAP_MODES:
            raise SettingsError(f"CHEXNET_DICOM_HEATMAPS must be one of {', '.join(HEATMAP_MODES)}, not '{heatmaps[:40]}'.")
        bind = get("BIND", cls.bind)
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise SettingsError(f"CHEXNET_DICOM_BIND must be an IP address of this host (0.0.0.0 for all), "
                                f"not '{bind[:64]}'.") from None
        max_associations = integer("MAX_ASSOCIATIONS", cls.max_associations, 1, 256)
        return cls(
            allowed_aes=allowed, destination=destination, token_file=token_file, bind=bind,
            max_associations=max_associations,
            max_per_peer=integer("MAX_PER_PEER", cls.max_per_peer, 1, max_associations),
            associate_timeout_s=integer("ASSOCIATE_TIMEOUT_S", cls.associate_timeout_s, 1, 60),
            network_timeout_s=integer("NETWORK_TIMEOUT_S", cls.network_timeout_s, 5, 3600),
            min_free_mb=integer("MIN_FREE_MB", cls.min_free_mb, 0, 1_000_000),
            max_attempts=integer("MAX_ATTEMPTS", cls.max_attempts, 1, 100),
            aside_max_mb=integer("ASIDE_MAX_MB", cls.aside_max_mb, 0, 1_000_000),
            aside_max_days=integer("ASIDE_MAX_DAYS", cls.aside_max_days, 1, 3650),
            stall_s=integer("STALL_S", cls.stall_s, 10, 86400),
            ae_title=ae_title("AE_TITLE", get("AE_TITLE", cls.ae_title)),
            port=integer("PORT", cls.port, 1, 65535), spool=get("SPOOL", cls.spool), model=get("MODEL"),
            heatmaps=heatmaps, retry_max_s=float(integer("RETRY_MAX_S", int(cls.retry_max_s), 1, 3600)),
            metrics_port=integer("METRICS_PORT", cls.metrics_port, 0, 65535),
        )
