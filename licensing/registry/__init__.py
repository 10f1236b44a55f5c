"""The vendor's token registration service (the source project's ``token_generate`` page)."""

from licensing.registry.app import create_app

__all__ = ["create_app"]
