"""The REST API service: Flask app factory, settings, micro-batching, observability."""

from chexnet.api.app import create_app
from chexnet.service import Settings, SettingsError

__all__ = ["create_app", "Settings", "SettingsError"]
