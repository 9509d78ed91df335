"""Packaging metadata and installs: ``pyvfio --version``, the Python versions
claimed, the editable install that mypy can follow, and 3.14 checked statically.

The wheels themselves are tested in tests/test_packaging_wheel.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pyvfio.setup import cli
from test_packaging_wheel import RUN_VERSIONS, cache_root, source_version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = (REPO / "pyproject.toml").read_text()

#: Claimed but not run here: no 3.14 interpreter can be installed on the
#: project's machines (Debian 12 has 3.11, pyenv's builds end at 3.13, PyPI
#: has none).  The abi3 wheel's tag covers it, and the package type-checks
#: against 3.14's standard library (test_python_3_14_type_checks).
STATIC_ONLY = ("3.14",)


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``pyvfio --version`` prints the installed distribution's version and
    exits 0; that version is the source's ``pyvfio.__version__``."""
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"pyvfio {metadata.version('pyvfio')}\n"
    assert metadata.version("pyvfio") == source_version(), \
        "the installed metadata is stale: pip install -e . again"
    assert re.search(r'^dynamic = \["version"\]', PYPROJECT, re.M)
    assert 'version = { attr = "pyvfio.__version__" }' in PYPROJECT


def test_python_versions_claimed_are_tested() -> None:
    """Every Python version in the classifiers is run by the wheel tests or
    listed here with the reason; requires-python starts at the oldest."""
    claimed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', PYPROJECT)
    assert sorted(claimed) == sorted(RUN_VERSIONS + STATIC_ONLY)
    assert re.search(r'^requires-python = ">=%s"$' % re.escape(min(RUN_VERSIONS)), PYPROJECT,
                     re.M)
    assert "3.14 is not run" in (REPO / "CHANGELOG.md").read_text()  # says why


def test_release_files() -> None:
    """LICENSE (MIT), CHANGELOG with an Unreleased section and an entry for
    this version, and the project URLs."""
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the pyvfio authors\n")
    assert 'license = "MIT"' in PYPROJECT and 'license-files = ["LICENSE"]' in PYPROJECT
    changelog = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", changelog, re.M)
    assert headings[0] == "Unreleased" and source_version() in headings
    for name in ("Homepage", "Documentation", "Issues", "Changelog"):
        assert re.search(rf'^{name} = "https://github\.com/pyvfio/pyvfio[^"]*"$', PYPROJECT, re.M)


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary",
                           "--show-error-codes", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def test_mypy_follows_editable_install(tmp_path: Path) -> None:
    """After ``pip install -e <checkout>``, mypy run from another directory
    finds the package and its types (setuptools' import-hook editable
    install left it with "Cannot find implementation or library stub")."""
    src = tmp_path / "checkout"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "docs", "tests", "bench", "examples", "*.so",
        "__pycache__", "*.egg-info", ".mypy_cache", "_uapi.c", "_uapi.o"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "install", "-q", "--disable-pip-version-check", "--no-deps", "-e",
                           str(src)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "use.py").write_text("import pyvfio\nfrom pyvfio import IommuFd\n\n"
                                 "version: int = pyvfio.__version__\n"
                                 "reveal_type(IommuFd.ioas)\n")
    proc = _mypy("--python-executable", str(venv / "bin" / "python"), "--cache-dir",
                 str(tmp_path / "mypy-cache"), "use.py", cwd=work)
    out = proc.stdout + proc.stderr
    assert "Cannot find implementation" not in out and "import-not-found" not in out, out
    assert "import-untyped" not in out, out
    # pyvfio's own annotations reached mypy: the str/int mismatch and the method's type.
    assert re.search(r'use\.py:4: error: Incompatible types in assignment \(expression has type '
                     r'"str", variable has type "int"\)', out), out
    assert re.search(r'use\.py:5: note: Revealed type is "def \(self: pyvfio\.core\.iommufd\.'
                     r'IommuFd', out), out
    # How: a .pth path entry, not an import hook.
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    assert not list(site.glob("__editable__*finder.py")), "an import hook, invisible to mypy"
    pth = [p.read_text().strip() for p in site.glob("__editable__.pyvfio-*.pth")]
    assert pth == [str(src)]


def test_python_3_14_type_checks() -> None:
    """The package passes ``mypy --strict`` against Python 3.14's standard
    library (typeshed's per-version stubs): no API it uses is gone in 3.14.
    The stand-in for running it, which this machine cannot (STATIC_ONLY)."""
    cache = cache_root() / "mypy-3.14"
    proc = _mypy("--python-version", "3.14", "--cache-dir", str(cache), "pyvfio", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_error_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup.py's check, in-process: no compiler, then no Python headers."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pyvfio_setup_py", REPO / "setup.py")
    assert spec and spec.loader
    import setuptools
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("CC", "no-such-compiler -O2")
    assert module.missing_build_tool().startswith(
        "pyvfio: building the bindings needs a C compiler (no-such-compiler not found): "
        "apt-get install gcc")
    monkeypatch.setenv("CC", sys.executable)  # exists
    assert module.missing_build_tool() is None or "Python headers" in module.missing_build_tool()
    monkeypatch.setattr(module.sysconfig, "get_paths", lambda: {"include": os.fspath(REPO)})
    assert module.missing_build_tool() == (
        f"pyvfio: building the bindings needs the Python headers ({REPO}/Python.h not found): "
        "apt-get install gcc python3-dev")
