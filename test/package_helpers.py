"""Offline packages as the vendor makes them, for the tests that forge them: a file signed with a
package-signing key, and the tarball beside an unpacked package folder packed as package-offline.sh packs it."""

import shutil
import subprocess
from pathlib import Path

PSS = ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]


def vendor_sign(keys: Path, file: Path) -> None:
    """FILE.sig: FILE signed with KEYS/package_signing.key (RSA-PSS, SHA-256), as the vendor signs."""
    Path(f"{file}.sig").unlink(missing_ok=True)
    subprocess.run(
        ["openssl", "dgst", *PSS, "-sign", str(keys / "package_signing.key"), "-out", f"{file}.sig", str(file)],
        check=True,
        capture_output=True,
    )


def pack(package: Path, keys: Path | None) -> Path:
    """<PACKAGE>.tar.gz beside the folder, root's (0:0) and without group/other write, signed with KEYS; with
    KEYS None the .sig already beside it stays (a tarball altered after the vendor signed it)."""
    tarball = package.parent / f"{package.name}.tar.gz"
    tarball.unlink(missing_ok=True)
    compress = ["-I", "pigz -1"] if shutil.which("pigz") else ["-z"]  # a real package holds ~0.5 GB of images
    subprocess.run(
        [
            "tar",
            "-C",
            str(package.parent),
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mode=go-w",
            "--sort=name",
            *compress,
            "-cf",
            str(tarball),
            package.name,
        ],
        check=True,
        capture_output=True,
    )
    if keys is not None:
        vendor_sign(keys, tarball)
    return tarball
