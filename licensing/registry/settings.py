"""Registration service settings, read once from LICENSING_* variables; a bad value stops start-up
with one sentence naming the variable."""

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from licensing.errors import LicenseError
from licensing.keys import load_private_key


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class RegistrySettings:
    private_key_path: str
    users: dict[str, str]  # username → werkzeug password hash
    db_path: str = "registry.sqlite3"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    host: str = "127.0.0.1"
    port: int = 8090
    kid: str | None = None
    session_cookie_secure: bool = True
    session_idle_s: float = 30 * 60
    session_max_s: float = 12 * 3600
    max_failed_per_user: int = 5
    max_failed_per_address: int = 20
    throttle_window_s: float = 15 * 60

    def signing_key(self):
        try:
            return load_private_key(self.private_key_path)
        except LicenseError as exc:
            raise SettingsError(f"LICENSING_PRIVATE_KEY: {exc.message}") from None


def _users(env) -> dict[str, str]:
    if env.get("LICENSING_USERS_FILE"):
        path = Path(env["LICENSING_USERS_FILE"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"LICENSING_USERS_FILE: cannot read {path} ({exc.strerror}).") from None
        users = dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#") and ":" in line)
    elif env.get("LICENSING_ADMIN_PASSWORD_HASH"):
        users = {"admin": env["LICENSING_ADMIN_PASSWORD_HASH"]}
    else:
        raise SettingsError("Set LICENSING_USERS_FILE (lines 'user:hash') or LICENSING_ADMIN_PASSWORD_HASH; "
                            "make a hash with 'python -m licensing hash-password'.")
    if not users:
        raise SettingsError("LICENSING_USERS_FILE lists no 'user:hash' lines.")
    return users


def from_env(env=os.environ) -> RegistrySettings:
    key = env.get("LICENSING_PRIVATE_KEY")
    if not key:
        raise SettingsError("LICENSING_PRIVATE_KEY must name the vendor's Ed25519 private key file.")
    def number(name: str, default: str, low: float, high: float) -> float:
        try:
            value = float(env.get(name, default))
        except ValueError:
            raise SettingsError(f"{name} must be a number.") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low:g} and {high:g}.")
        return value

    port = int(number("LICENSING_PORT", "8090", 1, 65535))
    settings = RegistrySettings(
        private_key_path=key, users=_users(env), db_path=env.get("LICENSING_DB", "registry.sqlite3"),
        secret_key=env.get("LICENSING_SECRET_KEY") or secrets.token_hex(32),
        host=env.get("LICENSING_HOST", "127.0.0.1"), port=port, kid=env.get("LICENSING_KID") or None,
        session_cookie_secure=env.get("LICENSING_INSECURE_COOKIES", "") != "1",
        session_idle_s=60 * number("LICENSING_SESSION_IDLE_MIN", "30", 1, 24 * 60),
        session_max_s=3600 * number("LICENSING_SESSION_MAX_HOURS", "12", 1, 24 * 7),
    )
    settings.signing_key()  # refuse to start with a key others can read
    return settings
