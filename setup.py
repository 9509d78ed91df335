"""Build hook: compiles the uAPI declarations into ``pyvfio._uapi``.

The extension uses only CPython's stable ABI (cffi defines
``Py_LIMITED_API``), so one wheel, tagged ``cp310-abi3``, serves Python 3.10
and every later version.  Binary wheels for x86_64 and aarch64 are built by
``tools/build_wheels.py``; a source build needs a C compiler, the Python
headers and the Linux uAPI headers, and says so in one line when one is missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

#: Debian/Ubuntu package names (gcc brings libc6-dev and the Linux uAPI
#: headers); Fedora's are gcc, python3-devel and kernel-headers.
INSTALL_HINT = "apt-get install gcc python3-dev"


def missing_build_tool() -> str | None:
    """What a source build of the bindings lacks, as one line, or None."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(compiler)
    if not words or shutil.which(words[0]) is None:
        return ("pyvfio: building the bindings needs a C compiler "
                f"({words[0] if words else 'CC is empty'} not found): {INSTALL_HINT} "
                "(or use a binary wheel: pip install --only-binary=pyvfio pyvfio)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return (f"pyvfio: building the bindings needs the Python headers "
                f"({include}/Python.h not found): {INSTALL_HINT}")
    return None


class BuildUapi(build_ext):
    """``build_ext`` that checks for the compiler first, so that a machine
    without one gets a line saying what to install instead of a traceback."""

    def run(self) -> None:
        problem = missing_build_tool()
        if problem:
            raise SystemExit(problem)
        try:
            super().run()
        except CompileError as exc:
            raise SystemExit(
                "pyvfio: compiling the bindings failed (the compiler's message is above): "
                f"it needs the C library, Linux uAPI and Python headers: {INSTALL_HINT}"
            ) from exc


# One wheel for CPython 3.10 and later (the stable ABI); a free-threaded
# interpreter has no stable ABI, so it gets a version-specific wheel.
options = {} if sysconfig.get_config_var("Py_GIL_DISABLED") else {
    "bdist_wheel": {"py_limited_api": "cp310"}}

setup(cffi_modules=["cdefs/build_uapi.py:ffibuilder"], cmdclass={"build_ext": BuildUapi},
      options=options)
