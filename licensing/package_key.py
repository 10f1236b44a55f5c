"""The vendor's offline-package signing key: RSA-3072, signatures RSA-PSS/SHA-256 (salt 32 bytes).

Licence tokens stay Ed25519 (verified inside the container). Packages are verified on the site by
openssl on Linux and by .NET Framework on Windows PowerShell 5.1, which cannot verify Ed25519 and
cannot import a bare public key, so the public half travels as a self-signed X.509 certificate
(``vendor_package.crt``): ``X509Certificate2`` loads it and ``RSACng`` verifies PSS. The
certificate is only a container for the key; its fingerprint (sha256 of its DER) is what the
vendor prints on the delivery note.
"""

import datetime
import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from licensing.errors import LicenseConfigError

PRIVATE_NAME = "package_signing.key"
CERT_NAME = "vendor_package.crt"
KEY_BITS = 3072
VALID_YEARS = 30  # the certificate carries a key; nothing checks its dates


def fingerprint(cert_pem: bytes) -> str:
    """sha256 of the certificate's DER, 64 lower-case hex digits (what install --vendor-fingerprint takes)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def generate_package_key(out_dir: Path) -> tuple[Path, Path, str]:
    """Write package_signing.key (mode 600) and vendor_package.crt; return both paths and the fingerprint."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, cert_path = out_dir / PRIVATE_NAME, out_dir / CERT_NAME
    if private_path.exists():
        raise LicenseConfigError(f"{private_path} already exists; refusing to overwrite a signing key.")
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CheXNet vendor"),
            x509.NameAttribute(NameOID.COMMON_NAME, "CheXNet offline package signing"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365 * VALID_YEARS))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the first byte
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    return private_path, cert_path, fingerprint(cert_pem)
