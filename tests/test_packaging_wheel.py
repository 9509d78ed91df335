"""The binary wheels: built without docker, tagged manylinux, installed and
run where there is no C compiler, on every Python version the package claims.

The sdist and both wheels are built once per source state by
``tools/build_wheels.py`` (Zig's cc, auditwheel; about a minute cold) and
cached under ``$PYVFIO_CACHE_DIR`` or ``~/.cache/pyvfio/wheels/<digest>``.
A missing build tool fails the tests with the tool's name: it comes with
``pip install -e '.[test]'``.  The x86_64 wheel is installed into a fresh
venv of each Python that runs here, with ``PATH`` holding only that venv
(no ``cc``, ``gcc``, ``clang``) and ``CC`` unset; the aarch64 wheel is checked
as an ELF file (machine, libraries, glibc versions) and run under QEMU's
user-mode emulation (tools/aarch64_python.py).
"""

from __future__ import annotations

import ast
import fcntl
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent

#: Python versions whose interpreter the wheel is installed into and run
#: with; pyproject.toml's classifiers may claim only these and
#: STATIC_ONLY (tests/test_packaging.py checks).
RUN_VERSIONS = ("3.10", "3.11", "3.12", "3.13")


def _build_wheels_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_wheels", REPO / "tools" / "build_wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bw = _build_wheels_module()


def cache_root() -> Path:
    """Where built things are kept (the kernel build uses the same root)."""
    env = os.environ.get("PYVFIO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pyvfio"


def source_version() -> str:
    """``pyvfio.__version__`` read from the source, without importing it."""
    tree = ast.parse((REPO / "pyvfio" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("pyvfio/__init__.py sets no __version__")


@pytest.fixture(scope="session")
def dist() -> Iterator[Path]:
    """A directory with the sdist and both wheels of the current source."""
    out = cache_root() / "wheels" / bw.source_digest()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time
        if not (out / "complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.run([sys.executable, str(REPO / "tools" / "build_wheels.py"),
                                   "--out", str(out)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                pytest.fail(f"tools/build_wheels.py failed:\n{proc.stdout[-4000:]}")
            (out / "complete").write_text(proc.stdout)
    # Keep the cache small: only the newest few source states.
    states = sorted((p for p in out.parent.iterdir() if p.is_dir()),
                    key=lambda p: p.stat().st_mtime)
    for old in states[:-3]:
        shutil.rmtree(old, ignore_errors=True)
    yield out


def wheel_for(dist: Path, arch: str) -> Path:
    (wheel,) = dist.glob(f"pyvfio-*-cp310-abi3-*{arch}*.whl")
    return wheel


def find_python(version: str) -> str:
    """An interpreter of ``version``: this one, ``pythonX.Y`` on PATH, or a
    pyenv installation.  Fails (does not skip) when there is none: the
    package's classifiers claim the version."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return getattr(sys, "_base_executable", sys.executable)
    candidates = [os.path.realpath(p) for p in
                  sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:
        candidates.insert(0, found)
    for candidate in candidates:
        proc = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == str(tuple(map(int, version.split(".")))):
            return candidate
    pytest.fail(f"no Python {version} interpreter here (looked for python{version} on PATH and "
                f"in ~/.pyenv/versions): pyproject.toml's classifiers claim it")


def clean_env(venv: Path) -> dict[str, str]:
    """An environment whose PATH is the venv's bin alone: no C compiler."""
    env = {"PATH": str(venv / "bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE",
                 "PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "http_proxy", "https_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


# -- the wheels -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(bw.MACHINES))
def test_wheel_is_abi3_manylinux(dist: Path, arch: str) -> None:
    """Each wheel is cp310-abi3, manylinux_2_17 (auditwheel show agrees) and
    holds an extension for its architecture needing glibc <= 2.17 only."""
    wheel = wheel_for(dist, arch)
    shown = bw.check_wheel(wheel, arch)
    assert "manylinux" in shown
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"pyvfio-{source_version()}.dist-info/METADATA").decode()
        wheel_info = zf.read(f"pyvfio-{source_version()}.dist-info/WHEEL").decode()
    assert f"Tag: cp310-abi3-manylinux_2_17_{arch}" in wheel_info
    assert "pyvfio/_uapi.abi3.so" in names and "pyvfio/py.typed" in names
    assert "pyvfio/fake/machine/topologies/default.json" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/", "cdefs/"))]
    # The plain install brings the library and the CLI, not the test tools.
    plain = [line for line in metadata.splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert plain == ["Requires-Dist: cffi>=1.16"]
    for extra in ("test", "docs", "numpy"):
        assert f"Provides-Extra: {extra}" in metadata


def test_aarch64_extension_is_aarch64(dist: Path, tmp_path: Path) -> None:
    """The aarch64 extension, read as ELF: AArch64, needs libc only (not
    libpython), every glibc symbol version at most 2.17."""
    with zipfile.ZipFile(wheel_for(dist, "aarch64")) as zf:
        so = Path(zf.extract("pyvfio/_uapi.abi3.so", tmp_path))
    machine, needed, versions = bw.elf_facts(so)
    assert machine == "EM_AARCH64"
    assert needed == ["libc.so.6"]
    assert versions and max(versions) <= (2, 17)


@pytest.mark.parametrize("version", RUN_VERSIONS)
def test_wheel_runs_without_compiler(dist: Path, tmp_path: Path, version: str) -> None:
    """``pip install <wheel>`` into a fresh venv of ``version`` with no
    compiler on PATH and binaries only; then the CLI, the bindings and the
    edu example driver on the fake kernel run from the installed package."""
    python = find_python(version)
    venv = tmp_path / "venv"
    # No pip in the venv (ensurepip is slow); this interpreter's pip installs into it.
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    env = clean_env(venv)
    for compiler in ("cc", "gcc", "clang", "zig"):
        assert shutil.which(compiler, path=env["PATH"]) is None
    work = tmp_path / "elsewhere"  # not the checkout, whose pyvfio/ would be imported
    work.mkdir()
    proc = run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                "--disable-pip-version-check", "--only-binary=:all:",
                str(wheel_for(dist, "x86_64"))], env, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run(["pyvfio", "--version"], env, work)
    assert (proc.returncode, proc.stdout) == (0, f"pyvfio {source_version()}\n"), proc.stderr
    proc = run(["pyvfio", "--fake", "default", "status"], env, work)
    assert proc.returncode == 0, proc.stderr
    assert "FAKE system 'default'" in proc.stdout and "vfio" in proc.stdout

    probe = ("import importlib.util, sys, pyvfio\n"
             "print(pyvfio.__file__)\n"
             "print(pyvfio.ffi.sizeof('struct vfio_device_info'), pyvfio.lib.VFIO_GET_API_VERSION)\n"
             "print(sorted(m for m in ('pytest', 'hypothesis', 'mypy', 'sphinx', 'numpy')"
             " if importlib.util.find_spec(m)))\n")
    proc = run(["python", "-c", probe], env, work)
    assert proc.returncode == 0, proc.stderr
    location, sizes, test_tools = proc.stdout.splitlines()
    assert location.startswith(str(venv / "lib")), location
    assert sizes.split() == ["24", str(0x3B64)]  # VFIO_TYPE << 8 | VFIO_BASE + 0
    assert test_tools == "[]"  # the plain install brings no test tools

    proc = run(["python", str(REPO / "examples" / "edu_dma.py"), "--fake"], env, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edu: all checks passed" in proc.stdout


def test_source_build_without_compiler_says_what_to_install(dist: Path, tmp_path: Path) -> None:
    """Building the sdist where there is no C compiler fails with one line
    naming what to install (not a compiler traceback)."""
    (sdist,) = dist.glob("pyvfio-*.tar.gz")
    env = clean_env(tmp_path / "nothing")  # PATH: an empty directory
    env.pop("CC", None)
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                "-w", str(tmp_path / "out"), str(sdist)], env, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line.strip() for line in output.splitlines() if "pyvfio: building" in line]
    assert len(lines) == 1, output
    assert re.fullmatch(r"pyvfio: building the bindings needs a C compiler \(\S*gcc\S* not found\): "
                        r"apt-get install gcc python3-dev "
                        r"\(or use a binary wheel: pip install --only-binary=pyvfio pyvfio\)",
                        lines[0]), output
    assert not list(tmp_path.rglob("pyvfio-*.whl"))
    assert "Traceback" not in output and not re.search(r"error: command .*gcc", output)


def test_aarch64_wheel_runs_under_emulation(dist: Path, tmp_path: Path) -> None:
    """The aarch64 wheel, unpacked, runs on Debian's arm64 Python 3.11 under
    QEMU user-mode emulation (tools/aarch64_python.py): the CLI, the
    bindings (struct sizes and ioctl numbers as on x86_64) and the edu
    example driver on the fake kernel."""
    spec = importlib.util.spec_from_file_location("aarch64_python",
                                                  REPO / "tools" / "aarch64_python.py")
    assert spec and spec.loader
    emu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)
    try:
        python = emu.prepare(cache_root())
    except SystemExit as exc:
        pytest.fail(str(exc))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel_for(dist, "aarch64")) as zf:
        zf.extractall(site)
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONPATH": f"{site}:{emu.site_dir(cache_root())}"}
    proc = run([*python, "-m", "pyvfio", "--version"], env, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"pyvfio {source_version()}\n"), proc.stderr
    probe = ("import platform, pyvfio\n"
             "print(platform.machine(), pyvfio.__file__)\n"
             "print(pyvfio.ffi.sizeof('struct vfio_device_info'), pyvfio.lib.VFIO_GET_API_VERSION,"
             " pyvfio.ffi.sizeof('struct iommu_ioas_map'), pyvfio.lib.IOMMU_IOAS_MAP)\n")
    proc = run([*python, "-c", probe], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, facts = proc.stdout.splitlines()
    assert where == f"aarch64 {site}/pyvfio/__init__.py"
    import pyvfio  # the host's build: the same layouts and numbers
    assert facts.split() == [str(n) for n in (
        pyvfio.ffi.sizeof("struct vfio_device_info"), pyvfio.lib.VFIO_GET_API_VERSION,
        pyvfio.ffi.sizeof("struct iommu_ioas_map"), pyvfio.lib.IOMMU_IOAS_MAP)]
    proc = run([*python, str(REPO / "examples" / "edu_dma.py"), "--fake"], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edu: all checks passed" in proc.stdout
