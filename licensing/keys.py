"""Ed25519 key files: generation (private key owner-only), trusted public keys by ``kid``."""

import hashlib
import os
import re
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from licensing.errors import LicenseConfigError

PRIVATE_NAME = "vendor_private.pem"
PUBLIC_NAME = "vendor_public.pem"
KEY_RING_LINE = re.compile(
    r"^# kid ([A-Za-z0-9._-]{1,128})[ \t]*\r?\n(-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)",
    re.MULTILINE | re.DOTALL,
)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A stable kid: the first 16 hex digits of the sha256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(out_dir: Path) -> tuple[Path, Path, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if private_path.exists():
        raise LicenseConfigError(f"{private_path} already exists; refusing to overwrite a signing key.")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created owner-only from the first byte: no window in which others could read it.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path, key_id(private.public_key())


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise LicenseConfigError(f"Cannot read the signing key {path} ({exc.strerror}).") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LicenseConfigError(
            f"The signing key {path} is readable by other users; run 'chmod 600 {path}' and try again."
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise LicenseConfigError(f"{path} is not an unencrypted PEM private key.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenseConfigError(f"{path} is not an Ed25519 key; generate one with 'licensing keygen'.")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise LicenseConfigError(f"Cannot read the vendor public key {path} ({exc.strerror}).") from None
    except ValueError:
        raise LicenseConfigError(f"{path} is not a PEM public key.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LicenseConfigError(f"{path} is not an Ed25519 public key.")
    return key


class TrustedKeys:
    """The vendor public keys this server trusts.

    A directory holds ``<kid>.pem`` files (key rotation: a token's ``kid`` picks one). A key ring file
    holds the same keys as ``# kid <kid>`` lines each followed by its PEM block (one file where a
    directory cannot be mounted: a Swarm config). Any other single file is one trusted key, whatever
    ``kid`` the token names.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            self.by_kid = {p.stem: load_public_key(p) for p in sorted(path.glob("*.pem"))}
            self.single = None
            if not self.by_kid:
                raise LicenseConfigError(f"The key directory {path} holds no <kid>.pem public keys.")
        elif path.is_file() and KEY_RING_LINE.search(_read_text(path)):
            self.by_kid, self.single = _key_ring(path), None
        elif path.is_file():
            self.by_kid, self.single = {}, load_public_key(path)
        else:
            raise LicenseConfigError(f"The vendor public key {path} does not exist (CHEXNET_LICENSE_KEYS).")

    def for_kid(self, kid: str | None) -> Ed25519PublicKey | None:
        return self.single if self.single is not None else self.by_kid.get(kid or "")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise LicenseConfigError(f"Cannot read the vendor public key {path} ({exc.strerror}).") from None


def _key_ring(path: Path) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for match in KEY_RING_LINE.finditer(_read_text(path)):
        try:
            key = serialization.load_pem_public_key(match.group(2).encode("ascii"))
        except ValueError:
            raise LicenseConfigError(
                f"The key ring {path}: the key for kid {match.group(1)} is not a PEM public key."
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise LicenseConfigError(
                f"The key ring {path}: the key for kid {match.group(1)} is not an Ed25519 public key."
            )
        keys[match.group(1)] = key
    return keys
