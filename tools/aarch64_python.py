#!/usr/bin/env python3
"""An aarch64 CPython on an x86_64 machine, to run the aarch64 wheel.

    python tools/aarch64_python.py [--cache DIR]   # prints the command to run it

QEMU's user-mode emulator (``qemu-aarch64-static``) runs Debian's arm64
Python 3.11 from a directory of unpacked packages (a sysroot, given to QEMU
with ``-L``); cffi's aarch64 wheel is unpacked beside it.  Nothing is
installed on the machine: the packages come from the machine's Debian
mirror through ``apt-get download`` with a private package index, and are
unpacked with ``dpkg-deb -x``.  Needs apt-get (Debian), about 80 MB of
downloads once; kept under ``<cache>/aarch64-python`` (``$PYVFIO_CACHE_DIR``
or ``~/.cache/pyvfio``).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

#: Debian's arm64 Python and the libraries its modules load.
ARM64_PACKAGES = ("libc6", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
                  "libffi8", "zlib1g", "libexpat1", "libssl3", "libbz2-1.0", "liblzma5",
                  "libuuid1", "libtirpc3", "libnsl2")
#: The emulator, for the machine's own architecture.
HOST_PACKAGES = ("qemu-user-static",)
#: PyPI wheels the wheel under test needs (its dependencies).
PYPI = ("cffi", "pycparser")
VERSION = 1  # bump to rebuild the cache


def cache_root() -> Path:
    env = os.environ.get("PYVFIO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pyvfio"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        raise SystemExit(f"aarch64_python: {' '.join(cmd[:3])} ... failed "
                         f"({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def prepare(cache: Path | None = None) -> list[str]:
    """Make (once) the emulated Python; returns its command line, to which
    arguments are appended.  ``PYTHONPATH`` must name the wheels to test and
    :func:`site_dir` (cffi)."""
    base = (cache or cache_root()) / f"aarch64-python-{VERSION}"
    base.parent.mkdir(parents=True, exist_ok=True)
    with open(base.parent / ".aarch64-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "complete").exists():
            _build(base)
    return [str(base / "qemu" / "usr" / "bin" / "qemu-aarch64-static"), "-L",
            str(base / "root"), str(base / "root" / "usr" / "bin" / "python3.11")]


def site_dir(cache: Path | None = None) -> Path:
    """Where cffi and pycparser for aarch64 are unpacked."""
    return (cache or cache_root()) / f"aarch64-python-{VERSION}" / "site"


def _apt(base: Path) -> list[str]:
    """apt-get with the private index under ``base`` (the machine's sources,
    both architectures): the machine's own apt state and configured
    architectures stay untouched."""
    state = base / "apt-state"
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip() or "amd64"
    return ["apt-get", "-q", "-o", f"Dir::State={state}", "-o", f"Dir::State::status={state}/status",
            "-o", f"Dir::Cache={base / 'apt-cache'}", "-o", f"APT::Architecture={host}",
            "-o", f"APT::Architectures::={host}", "-o", "APT::Architectures::=arm64",
            "-o", "APT::Sandbox::User=root"]


def extract_arm64(packages: list[str], dest: Path, cache: Path | None = None) -> None:
    """Download Debian's arm64 ``packages`` through the private index of
    :func:`prepare` and unpack them into ``dest`` (nothing is installed)."""
    prepare(cache)
    base = (cache or cache_root()) / f"aarch64-python-{VERSION}"
    with open(base.parent / ".aarch64-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        debs = base / "extra-debs"
        shutil.rmtree(debs, ignore_errors=True)
        for d in (debs, base / "apt-cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        try:
            _run([*_apt(base), "download", *(f"{p}:arm64" for p in packages)], cwd=debs)
            for deb in sorted(debs.glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(dest)])
        finally:
            shutil.rmtree(debs, ignore_errors=True)
            shutil.rmtree(base / "apt-cache", ignore_errors=True)


def _build(base: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SystemExit("aarch64_python: needs apt-get and dpkg-deb (a Debian machine)")
    shutil.rmtree(base, ignore_errors=True)
    state, debs = base / "apt-state", base / "debs"
    for d in (state / "lists" / "partial", base / "apt-cache" / "archives" / "partial", debs):
        d.mkdir(parents=True)
    (state / "status").touch()
    apt = _apt(base)
    _run([*apt, "update"])
    _run([*apt, "download", *HOST_PACKAGES, *(f"{p}:arm64" for p in ARM64_PACKAGES)], cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        target = base / ("qemu" if deb.name.startswith("qemu-user-static_") else "root")
        _run(["dpkg-deb", "-x", str(deb), str(target)])
    for other in (base / "qemu").rglob("*"):  # one emulator of the package's dozens
        if other.is_file() and other.name != "qemu-aarch64-static":
            other.unlink()
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
          "--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--python-version",
          "3.11", "-d", str(wheels), *PYPI])
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(base / "site")
    shutil.rmtree(debs)
    shutil.rmtree(base / "apt-cache")
    (base / "complete").write_text("ok\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="cache root (default ~/.cache/pyvfio)")
    args = ap.parse_args()
    command = prepare(args.cache)
    print(f"PYTHONPATH=<unpacked wheels>:{site_dir(args.cache)} {' '.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
