"""What every transport shares (the REST API in chexnet.api, the DICOM node in chexnet.dicom_node): the
service with its loaded models and licence verifier, its settings, metrics and audit log."""

from chexnet.service.audit import AuditLog
from chexnet.service.observability import Metrics, configure_logging
from chexnet.service.service import LoadedModel, Service
from chexnet.service.settings import DICOM_NODE, HTTP_API, Settings, SettingsError, Workload

__all__ = [
    "AuditLog",
    "Metrics",
    "configure_logging",
    "LoadedModel",
    "Service",
    "DICOM_NODE",
    "HTTP_API",
    "Settings",
    "SettingsError",
    "Workload",
]
