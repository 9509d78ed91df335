"""The package and the example programs type-check with ``mypy --strict``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("target", ["pyvfio", "examples"])
def test_mypy_strict(target: str) -> None:
    import mypy  # noqa: F401  (a test dependency: missing, the test fails)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", target],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
