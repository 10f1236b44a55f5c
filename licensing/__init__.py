"""Licensing: vendor-signed Ed25519 JWTs bound to a server's product_uuid (DESIGN.md "Token")."""

from licensing.errors import LicenseError
from licensing.tokens import TokenVerifier, issue_token

__all__ = ["LicenseError", "TokenVerifier", "issue_token"]
