"""Build the ``pyvfio._uapi`` extension (cffi API mode).

The declarations in ``cdefs/*.h`` are written in a subset of C that serves
two readers at once:

* the C compiler, which compiles them verbatim into the extension so that
  every struct layout and every constant is computed by the compiler, and
* cffi's ``cdef`` parser, which gets the same text after two mechanical
  rewrites: comments are dropped and every ``#define NAME value`` becomes
  ``#define NAME ...`` (the value is then taken from the compiled module).

Allowed in the declaration files: struct/union/enum declarations using the
``__u8``..``__u64``/``__s8``..``__s64``/``__aligned_u64`` types, and
``#define NAME <integer expression>`` lines (``_IO``/``_IOR``/``_IOW``/
``_IOWR`` may be used in the expression).  Nothing else from the
preprocessor.
"""

from __future__ import annotations

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

# Declaration files, in dependency order.
DECLARATION_FILES = ("vfio.h", "iommufd.h")
HELPER_CDEF = "helpers.cdef"
HELPER_SOURCE = "helpers.c"

# The kernel's fixed-width types come from <linux/types.h> (any version:
# only the basic types are used).  ``__aligned_u64`` is 8-byte aligned on
# every architecture; it differs from __u64 only on 32-bit x86.
C_PRELUDE = """
#include <stdint.h>
#include <stddef.h>
#include <linux/ioctl.h>
#include <linux/types.h>  /* __u8 .. __u64, __s8 .. __s64, __aligned_u64 */
"""

CDEF_PRELUDE = """
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef unsigned long long __aligned_u64;
"""

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]+.*$", re.M)


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def cdef_text(c_text: str) -> str:
    """Turn a declaration file into text for :meth:`FFI.cdef`."""
    text = _COMMENT.sub(" ", c_text)
    # Join continued #define lines before rewriting them.
    text = re.sub(r"\\\n", " ", text)
    return _DEFINE.sub(lambda m: f"#define {m.group(1)} ...", text)


def make_ffibuilder() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF_PRELUDE)
    sources = [C_PRELUDE]
    for name in DECLARATION_FILES:
        c_text = _read(name)
        ffibuilder.cdef(cdef_text(c_text))
        sources.append(c_text)
    ffibuilder.cdef(_read(HELPER_CDEF))
    sources.append(_read(HELPER_SOURCE))
    ffibuilder.set_source("pyvfio._uapi", "\n".join(sources))
    return ffibuilder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
