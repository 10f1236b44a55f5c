"""The DICOM node's own CHEXNET_DICOM_* settings (the model and licence settings are those of
``serve``, :class:`chexnet.service.Settings`). A bad value stops start-up with one sentence.

The rules an installer also checks are defined here once, and test/test_scripts.py pins the installers'
copies to them: the AE-title pattern and the DICOM port."""

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chexnet.options import HEATMAP_MODES
from chexnet.service import SettingsError
from licensing.environment import Environment

# What install.sh, install.ps1 and .env accept as an AE title, so also what the node takes: 1 to 16 letters,
# digits, '.', '_' or '-' (a subset of DICOM's printable ASCII that no shell, compose or .env line mangles).
AE_TITLE = re.compile(r"[A-Za-z0-9._-]{1,16}")
AE_TITLE_RULE = "an AE title of 1 to 16 letters, digits, '.', '_' or '-'"
DICOM_PORT = 11112  # the node's port, in the container and (DICOM_PORT in .env) on the host
DICOMWEB_PORT = 8042  # the node's STOW-RS port (HTTP) in its container; nginx passes /dicomweb/ to it
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DESTINATION = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DicomwebSettings:
    """The node's DICOMweb side (CHEXNET_DICOMWEB_*): STOW-RS in on ``port`` (0: off), and STOW-RS out to
    ``destination`` instead of C-STORE when it is set."""

    port: int = DICOMWEB_PORT
    threads: int = 4  # waitress threads serving STOW-RS requests
    max_request_mb: int = 1024  # one STOW-RS request body (buffered on the spool's disk, never in memory)
    destination: str | None = None  # the destination's DICOMweb root, e.g. https://pacs/dicom-web
    auth_file: str | None = None  # a file holding the Authorization header sent to the destination
    ca: str | None = None  # the site CA bundle that signs the destination's certificate

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "DicomwebSettings":
        read = Environment(env, "CHEXNET_DICOMWEB_", SettingsError)
        destination = read.text("DESTINATION")
        if destination is not None:
            url = urllib.parse.urlsplit(destination)
            if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
                raise read.refuse(
                    "DESTINATION",
                    "must be the DICOMweb root of the PACS as https://host[:port]/path (e.g. "
                    f"https://pacs.hospital.local/dicom-web), not '{destination[:80]}'.",
                )
            destination = destination.rstrip("/")
        auth_file = read.text("AUTH_FILE")
        if auth_file is not None:
            if destination is None or not destination.startswith("https://"):
                raise read.refuse(
                    "AUTH_FILE",
                    "is only sent over HTTPS: set CHEXNET_DICOMWEB_DESTINATION to an https:// URL, or leave it unset.",
                )
            try:
                auth_header(auth_file)
            except ValueError as exc:
                raise read.refuse("AUTH_FILE", str(exc)) from None
        ca = read.text("CA")
        if ca is not None and not os.path.isfile(ca):
            raise read.refuse("CA", f"must name a readable PEM file of the site CA, not '{ca[:80]}'.")
        return cls(
            port=read.integer("PORT", cls.port, 0, 65535),
            threads=read.integer("THREADS", cls.threads, 1, 64),
            max_request_mb=read.integer("MAX_REQUEST_MB", cls.max_request_mb, 1, 65536),
            destination=destination,
            auth_file=auth_file,
            ca=ca,
        )


def auth_header(path: str) -> tuple[str, str]:
    """The header a DICOMweb auth file holds: 'Authorization: Bearer …', 'Authorization: Basic …', or just
    'Bearer …' / 'Basic …' (then it is Authorization). Raises ValueError with a sentence (never the secret)."""
    try:
        line = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise ValueError(
            f"must name a readable ASCII file holding the Authorization header, not '{path[:80]}'."
        ) from None
    name, colon, value = line.partition(":")
    if not colon or " " in name.strip():
        name, value = "Authorization", line
    name, value = name.strip(), value.strip()
    if not value or "\n" in line or not _HEADER_NAME.fullmatch(name) or _CONTROL.search(value):
        raise ValueError(
            "must hold one header line such as 'Authorization: Bearer <token>' or 'Authorization: Basic <base64>'."
        )
    return name, value


@dataclass(frozen=True)
class NodeSettings:
    allowed_aes: tuple[str, ...]
    destination: Destination | None  # None: results go by STOW-RS (dicomweb.destination)
    token_file: str
    ae_title: str = "CHEXNET"
    port: int = DICOM_PORT
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
    dicomweb: DicomwebSettings = DicomwebSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "NodeSettings":
        read = Environment(env, "CHEXNET_DICOM_", SettingsError)

        def integer(name: str, low: int, high: int) -> int:
            return read.integer(name, getattr(cls, name.lower()), low, high)

        allowed = read.listed(
            "ALLOWED_AES",
            AE_TITLE,
            f"the calling AE titles of the PACS or modalities allowed to send images, each {AE_TITLE_RULE}",
        )
        if not allowed:
            raise read.refuse(
                "ALLOWED_AES",
                "must list the calling AE titles (comma separated) of the PACS or modalities allowed to send images.",
            )
        dicomweb = DicomwebSettings.from_env(env)
        raw_destination = read.text("DESTINATION", "") or ""
        match = _DESTINATION.fullmatch(raw_destination)
        destination = None
        if dicomweb.destination is not None and raw_destination:
            raise read.refuse(
                "DESTINATION",
                "and CHEXNET_DICOMWEB_DESTINATION are both set; results go to one place: leave one of them empty.",
            )
        if dicomweb.destination is None and (
            not match or not 1 <= int(match["port"]) <= 65535 or not AE_TITLE.fullmatch(match["ae"])
        ):
            raise read.refuse(
                "DESTINATION",
                "must say where results go as AE@host:port (e.g. PACS@10.0.0.5:104) with "
                f"{AE_TITLE_RULE}, not '{raw_destination[:80]}' (or set CHEXNET_DICOMWEB_DESTINATION instead).",
            )
        if match:
            destination = Destination(match["ae"], match["host"].strip("[]"), int(match["port"]))
        token_file = read.required("TOKEN_FILE", "must name the file holding the node's licence token.")
        bind = read.text("BIND", cls.bind) or cls.bind
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise read.refuse(
                "BIND", f"must be an IP address of this host (0.0.0.0 for all), not '{bind[:64]}'."
            ) from None
        max_associations = integer("MAX_ASSOCIATIONS", 1, 256)
        return cls(
            allowed_aes=allowed,
            destination=destination,
            token_file=token_file,
            bind=bind,
            max_associations=max_associations,
            max_per_peer=integer("MAX_PER_PEER", 1, max_associations),
            associate_timeout_s=integer("ASSOCIATE_TIMEOUT_S", 1, 60),
            network_timeout_s=integer("NETWORK_TIMEOUT_S", 5, 3600),
            min_free_mb=integer("MIN_FREE_MB", 0, 1_000_000),
            max_attempts=integer("MAX_ATTEMPTS", 1, 100),
            aside_max_mb=integer("ASIDE_MAX_MB", 0, 1_000_000),
            aside_max_days=integer("ASIDE_MAX_DAYS", 1, 3650),
            stall_s=integer("STALL_S", 10, 86400),
            ae_title=read.matching("AE_TITLE", cls.ae_title, AE_TITLE, AE_TITLE_RULE) or cls.ae_title,
            port=integer("PORT", 1, 65535),
            spool=read.text("SPOOL", cls.spool) or cls.spool,
            model=read.text("MODEL"),
            heatmaps=read.choice("HEATMAPS", cls.heatmaps, HEATMAP_MODES),
            retry_max_s=float(read.integer("RETRY_MAX_S", int(cls.retry_max_s), 1, 3600)),
            metrics_port=integer("METRICS_PORT", 0, 65535),
            dicomweb=dicomweb,
        )
