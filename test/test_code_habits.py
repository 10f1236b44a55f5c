"""The code habits, enforced where CI looks (make test): ruff's lint and format check over the code, mypy
on chexnet and licensing, and the import-linter contracts that pin the layers (README "Layout").
Their settings are pyproject.toml's [tool.ruff], [tool.mypy] and [tool.importlinter]."""

import subprocess
import sys
from pathlib import Path

import pytest

from sample_data import ROOT

CODE = ["chexnet", "licensing", "test", "bench"]
BIN = Path(sys.executable).parent  # the environment's console scripts (the test extra installs all three)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "ruff", "check", *CODE], id="ruff-check"),
        pytest.param(
            [sys.executable, "-m", "ruff", "format", "--check", "--output-format", "concise", *CODE], id="ruff-format"
        ),
        pytest.param([sys.executable, "-m", "mypy"], id="mypy"),  # files: [tool.mypy]
        pytest.param([str(BIN / "lint-imports"), "--no-logo"], id="import-linter"),
    ],
)
def test_the_code_keeps_the_habits(command):
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, (
        f"{' '.join(command[1:] if command[0] == sys.executable else command)}:\n{run.stdout}{run.stderr}"
    )
