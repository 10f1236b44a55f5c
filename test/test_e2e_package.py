"""Forged and damaged offline packages (marker e2e; test/e2e.sh runs it after packing).

The installers read the tarball beside the unpacked folder, so each forgery is a tarball: one packed again
and signed with an attacker's key, one packed again under the vendor's own signature, one cut short; and
tarballs the vendor's key did sign whose contents do not match their own SHA256SUMS (a build mistake).
Each is refused by install.sh (and load-images.sh) before `docker load` runs, with one sentence, and
nothing on the host changes: no install folder, no new image, no private copy left. Needs Docker, openssl
and CHEXNET_E2E_TARBALL (the packed tarball), CHEXNET_E2E_VENDOR (the folder holding vendor_package.crt,
package_signing.key and vendor_public.pem that signed it).
"""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from guide import as_run, blocks
from package_helpers import pack, vendor_sign

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
FORGED_IMAGE = "chexnet-forged:e2e"


def _env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: these tests run against a packed tarball (test/e2e.sh)")
    return Path(value)


@pytest.fixture(scope="module")
def tarball() -> Path:
    return _env("CHEXNET_E2E_TARBALL")


@pytest.fixture(scope="module")
def vendor() -> Path:
    return _env("CHEXNET_E2E_VENDOR")


@pytest.fixture(scope="module")
def genuine(tarball, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("genuine")
    with tarfile.open(tarball) as archive:
        archive.extractall(out, filter="tar")
    (package,) = out.iterdir()
    return package


@pytest.fixture
def package(genuine, tarball, tmp_path) -> Path:
    """A copy of the genuine unpacked package to forge (hard links: a file to change is replaced, never
    written in place), with the genuine tarball and its signature beside it, as the guide leaves them."""
    copy = tmp_path / genuine.name
    subprocess.run(["cp", "-al", str(genuine), str(copy)], check=True)
    for name in (tarball.name, f"{tarball.name}.sig"):
        try:
            os.link(tarball.parent / name, tmp_path / name)
        except OSError:  # another file system
            shutil.copy(tarball.parent / name, tmp_path / name)
    return copy


def replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def images() -> str:
    return subprocess.run(
        ["docker", "image", "ls", "-q", "--no-trunc"], check=True, capture_output=True, text=True
    ).stdout


def refused(package: Path, tmp_path: Path, *key_args: str, script: str = "install.sh") -> str:
    """Run the package's installer (or loader); assert it refused and changed nothing; return its message."""
    before = images()
    site = tmp_path / "site"
    command = [str(package / script), *key_args]
    if script == "install.sh":
        command += ["--dir", str(site), "--uuid-file", str(tmp_path / "uuid")]
    (tmp_path / "uuid").write_text("4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stderr
    assert "docker load" not in result.stderr, result.stderr
    assert not site.exists(), "the installer created the install folder before refusing"
    assert images() == before, "an image was loaded or removed"
    assert not list(Path("/var/tmp").glob("chexnet-package.*")), "a private copy was left behind"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr  # one sentence, not a trace
    return errors[0]


def resign(package: Path, signing_dir: Path) -> None:
    sums = subprocess.run(
        "find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum",
        shell=True,
        cwd=package,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    replace(package / "SHA256SUMS", sums.encode())
    vendor_sign(signing_dir, package / "SHA256SUMS")


@pytest.fixture(scope="module")
def attacker(tmp_path_factory) -> Path:
    """An attacker's own package-signing key and licence key."""
    out = tmp_path_factory.mktemp("attacker")
    python = str(ROOT / ".venv/bin/python")
    for command in ("keygen", "package-keygen"):
        subprocess.run(
            [python, "-m", "licensing", command, "--out", str(out)], check=True, capture_output=True, cwd=ROOT
        )
    return out


def test_resigned_package_with_a_swapped_licence_key_is_refused(package, tmp_path, vendor, attacker):
    (key,) = (package / "license/keys").iterdir()
    replace(key, (attacker / "vendor_public.pem").read_bytes())
    replace(package / "vendor_package.crt", (attacker / "vendor_package.crt").read_bytes())
    resign(package, attacker)
    pack(package, attacker)
    assert "does not verify" in refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))
    fingerprint = (
        subprocess.run(
            ["openssl", "x509", "-in", str(vendor / "vendor_package.crt"), "-noout", "-fingerprint", "-sha256"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.split("=", 1)[1]
        .strip()
    )
    assert "does not match the fingerprint" in refused(package, tmp_path, "--vendor-fingerprint", fingerprint)
    assert "does not verify" in refused(
        package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"), script="scripts/load-images.sh"
    )


def test_unlisted_image_is_refused(package, tmp_path, vendor):
    subprocess.run(
        f"tar -cf - --files-from /dev/null | docker import - {FORGED_IMAGE} >/dev/null && "
        f"docker save {FORGED_IMAGE} | gzip > {package / 'images/extra.tar.gz'} && docker rmi {FORGED_IMAGE} >/dev/null",
        shell=True,
        check=True,
    )
    pack(package, None)
    assert "does not verify" in refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))
    pack(package, vendor)  # the vendor's own build, with an image its list does not name
    message = refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))
    assert "images/extra.tar.gz" in message and "does not list" in message
    assert subprocess.run(["docker", "image", "inspect", FORGED_IMAGE], capture_output=True).returncode != 0


def test_unlisted_licence_key_is_refused(package, tmp_path, vendor, attacker):
    shutil.copy(attacker / "vendor_public.pem", package / "license/keys/0123456789abcdef.pem")
    pack(package, vendor)
    message = refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))
    assert "license/keys/0123456789abcdef.pem" in message and "does not list" in message


def test_symlink_in_the_package_is_refused(package, tmp_path, vendor):
    (package / "docs/passwd").symlink_to("/etc/passwd")
    pack(package, vendor)
    assert "not a plain file" in refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))


def test_altered_listed_file_is_refused(package, tmp_path, vendor):
    compose = package / "docker-compose.yml"
    replace(compose, compose.read_bytes().replace(b"read_only: true", b"read_only: false"))
    pack(package, vendor)
    assert "damaged or missing" in refused(package, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))


def test_missing_vendor_key_argument_is_refused_with_where_to_get_it(package, tmp_path):
    message = refused(package, tmp_path)
    assert "--vendor-key" in message and "licence token" in message
    assert "--vendor-key" in refused(package, tmp_path, script="scripts/load-images.sh")


def test_a_certificate_that_is_not_the_vendors_is_refused(package, tmp_path, attacker):
    assert "does not verify" in refused(package, tmp_path, "--vendor-key", str(attacker / "vendor_package.crt"))


def test_truncated_tarball_fails_the_guides_check_and_the_installer(tarball, vendor, tmp_path):
    carry = tmp_path / "carry"
    carry.mkdir()
    cut = carry / tarball.name
    with open(tarball, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(tarball.stat().st_size // 2))
    shutil.copy(f"{tarball}.sig", carry)
    shutil.copy(vendor / "vendor_package.crt", carry)
    version = tarball.name.removeprefix("chexnet-offline-").removesuffix("-cpu.tar.gz")
    verify, unpack = [
        as_run(b, version, "", None) for b in blocks((ROOT / "deployment_template/README.md").read_text(), "Linux")[:2]
    ]
    check = subprocess.run(["bash", "-c", verify], cwd=carry, capture_output=True, text=True)
    assert check.returncode != 0 and "Verified OK" not in check.stdout
    # An engineer who unpacks it anyway gets a partial folder, whose installer checks the tarball beside it.
    assert subprocess.run(["bash", "-c", unpack.splitlines()[0]], cwd=carry, capture_output=True).returncode != 0
    (partial,) = [p for p in carry.iterdir() if p.is_dir()]
    if (partial / "install.sh").exists():
        assert "does not verify" in refused(partial, tmp_path, "--vendor-key", str(vendor / "vendor_package.crt"))
