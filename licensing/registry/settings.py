"""Registration service settings, read once from LICENSING_* variables; a bad value stops start-up
with one sentence naming the variable."""

import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from werkzeug.security import DEFAULT_PBKDF2_ITERATIONS

from licensing.environment import Environment
from licensing.errors import LicenseError
from licensing.keys import load_private_key

MIN_SECRET_KEY_BYTES = 32
# werkzeug's 'method$salt$hash' with a real KDF: scrypt[:n:r:p] or pbkdf2[:sha256|sha512[:iterations]].
SCRYPT = re.compile(r"scrypt(?::(\d{1,10}):(\d{1,4}):(\d{1,4}))?")
PBKDF2 = re.compile(r"pbkdf2(?::(sha256|sha512)(?::(\d{1,10}))?)?")
SALT_AND_DIGEST = re.compile(r"[A-Za-z0-9]{8,}\$(?:[0-9a-f]{64}|[0-9a-f]{128})")
PBKDF2_MIN_ITERATIONS = {"sha256": 600_000, "sha512": 210_000}  # OWASP's floors
MAX_PBKDF2_ITERATIONS = 10_000_000  # above this one sign-in would tie up a thread for seconds
MAX_SCRYPT_COST = 2**21  # n·r·p: 256 MiB per sign-in


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
    users_variable: str = "LICENSING_USERS_FILE"  # where the users came from, for the refusal sentence

    def __post_init__(self):
        if len(self.secret_key.encode()) < MIN_SECRET_KEY_BYTES:
            raise SettingsError(
                f"LICENSING_SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes; "
                "leave it unset for a random one per start."
            )
        if not self.users:
            raise SettingsError(f"{self.users_variable} lists no 'user:hash' lines.")
        for user, password_hash in self.users.items():
            _check_password_hash(self.users_variable, user, password_hash)

    def hash_method(self) -> str:
        """The method and cost most users' hashes name: unknown user names are checked against a hash
        made with it, so they take as long as known ones."""
        return Counter(h.split("$", 1)[0] for h in self.users.values()).most_common(1)[0][0]

    def signing_key(self):
        try:
            return load_private_key(self.private_key_path)
        except LicenseError as exc:
            raise SettingsError(f"LICENSING_PRIVATE_KEY: {exc.message}") from None


def _costly_kdf(method: str) -> bool:
    """METHOD, a werkzeug hash's first field, names scrypt or pbkdf2 at a cost that resists guessing
    without letting one sign-in exhaust the server."""
    if match := SCRYPT.fullmatch(method):
        n, r, p = map(int, match.groups()) if match.group(1) else (2**15, 8, 1)
        return n >= 2**14 and n & (n - 1) == 0 and r >= 8 and p >= 1 and n * r * p <= MAX_SCRYPT_COST
    if match := PBKDF2.fullmatch(method):
        name, iterations = match.group(1) or "sha256", int(match.group(2) or DEFAULT_PBKDF2_ITERATIONS)
        return PBKDF2_MIN_ITERATIONS[name] <= iterations <= MAX_PBKDF2_ITERATIONS
    return False


def _check_password_hash(variable: str, user: str, password_hash: str) -> None:
    """Refuse a plaintext, empty, unknown-method or cheap hash: it would be stored in the clear, or answer
    faster than the others and tell which user names exist. The sentence never shows the hash."""
    method, _, salt_and_digest = password_hash.partition("$")
    if not (_costly_kdf(method) and SALT_AND_DIGEST.fullmatch(salt_and_digest)):
        raise SettingsError(
            f"{variable}: the password hash for user '{user}' is not a werkzeug scrypt or pbkdf2 hash "
            "(method$salt$hash) of sufficient cost; make one with 'python -m licensing hash-password'."
        )


def _users_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"LICENSING_USERS_FILE: cannot read {path} ({exc.strerror}).") from None
    users = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password_hash = (part.strip() for part in line.partition(":"))
        if not colon or not user:
            raise SettingsError(f"LICENSING_USERS_FILE: line {number} is not 'user:hash'.")
        if user in users:
            raise SettingsError(f"LICENSING_USERS_FILE: line {number} lists user '{user}' a second time.")
        users[user] = password_hash
    return users


def _users(env) -> tuple[str, dict[str, str]]:
    """The variable the users come from, and username → hash."""
    if env.get("LICENSING_USERS_FILE"):
        return "LICENSING_USERS_FILE", _users_file(Path(env["LICENSING_USERS_FILE"]))
    if env.get("LICENSING_ADMIN_PASSWORD_HASH"):
        return "LICENSING_ADMIN_PASSWORD_HASH", {"admin": env["LICENSING_ADMIN_PASSWORD_HASH"]}
    raise SettingsError(
        "Set LICENSING_USERS_FILE (lines 'user:hash') or LICENSING_ADMIN_PASSWORD_HASH; "
        "make a hash with 'python -m licensing hash-password'."
    )


def from_env(env=os.environ) -> RegistrySettings:
    read = Environment(env, "LICENSING_", SettingsError)
    key = read.required("PRIVATE_KEY", "must name the vendor's Ed25519 private key file.")
    users_variable, users = _users(env)
    settings = RegistrySettings(
        private_key_path=key,
        users=users,
        users_variable=users_variable,
        db_path=read.text("DB", "registry.sqlite3") or "registry.sqlite3",
        secret_key=read.text("SECRET_KEY") or secrets.token_hex(32),
        host=read.text("HOST", "127.0.0.1") or "127.0.0.1",
        port=read.integer("PORT", 8090, 1, 65535),
        kid=read.text("KID"),
        session_cookie_secure=read.text("INSECURE_COOKIES", "") != "1",
        session_idle_s=60 * read.number("SESSION_IDLE_MIN", 30, 1, 24 * 60),
        session_max_s=3600 * read.number("SESSION_MAX_HOURS", 12, 1, 24 * 7),
    )
    settings.signing_key()  # refuse to start with a key others can read
    return settings
