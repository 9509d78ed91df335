"""Layout proof: pyvfio._uapi against the real Linux 7.3 uAPI headers.

Every struct and union of linux/vfio.h and linux/iommufd.h, each of their
members, every integer macro (ioctl numbers and other constants) and every
enumerator is enumerated from the kernel headers and measured by the C
compiler (see tests/uapi_headers.py).  The tests here compare that
reference with what ``pyvfio._uapi`` declares:

* structs:   present, same size and alignment;
* members:   present, same offset, same kind of type (integer, pointer,
             which struct; array shape), size (of one element for flexible
             array members) and signedness; no member the kernel lacks;
* ioctls:    present, same number;
* constants: present, same value;
* enums:     every enumerator present with the same value, every named
             enum type declared;
* extras:    no struct, union or constant that the kernel headers lack
             (pyvfio's own PYVFIO_* constants excepted).

Each category is one test that lists all of its problems at once.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cffi
import pytest
import uapi_headers
from uapi_headers import (
    INTEGER,
    POINTER,
    Headers,
    Member,
    Reference,
    find_headers,
    load_reference,
)

from pyvfio._uapi import ffi, lib

# cffi objects are untyped: an FFI (compiled or not) and its library.
FFI = Any
Lib = Any
Check = Callable[[Reference, FFI, Lib], list[str]]

#: Names pyvfio adds to the library on its own behalf (not kernel uAPI).
OWN_PREFIX = "PYVFIO_"

#: What a correct enumeration of the Linux 7.3 headers finds.  A line-based
#: count gives 55 ioctl numbers: it misses IOMMU_IOAS_CHANGE_PROCESS, whose
#: definition continues on a second line ("#define ... \" + "_IO(...)").
#: The headers define 56 ioctl macros (44 distinct numbers: several legacy
#: VFIO ioctls share numbers, e.g. VFIO_IOMMU_GET_INFO and
#: VFIO_IOMMU_SPAPR_TCE_GET_INFO).
LINUX_7_3_COUNTS = {"structs": 90, "members": 381, "ioctls": 56}


# ---------------------------------------------------------------------------
# Fixtures: the reference, computed once per session
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel_headers() -> Headers:
    return find_headers()


@pytest.fixture(scope="session")
def reference(kernel_headers: Headers, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return load_reference(kernel_headers, tmp_path_factory.mktemp("uapi_probe"))


# ---------------------------------------------------------------------------
# The comparison: each check returns every problem it finds
# ---------------------------------------------------------------------------


def _declared(ffi: FFI) -> dict[str, set[str]]:
    """Names of the structs and of the unions the FFI knows, by kind."""
    _typedefs, structs, unions = ffi.list_types()
    return {"struct": set(structs), "union": set(unions)}


def check_structs(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    problems: list[str] = []
    declared = _declared(ffi)
    for agg in ref.inventory.aggregates:
        if agg.name not in declared[agg.kind]:
            problems.append(f"{agg.c_name}: missing ({agg.header})")
            continue
        expected = ref.layouts[agg.c_name]
        try:
            size, align = ffi.sizeof(agg.c_name), ffi.alignof(agg.c_name)
        except ffi.error as exc:
            problems.append(f"{agg.c_name}: declared without a body ({exc})")
            continue
        if size != expected.size:
            problems.append(f"{agg.c_name}: sizeof {size}, kernel {expected.size}")
        if align != expected.align:
            problems.append(f"{agg.c_name}: alignment {align}, kernel {expected.align}")
    return problems


_FLOATING = frozenset({"float", "double", "long double", "float _Complex", "double _Complex"})


def _innermost(ctype: Any) -> Any:
    """The element type of a (possibly multi-dimensional) array type."""
    while ctype.kind == "array":
        ctype = ctype.item
    return ctype


def _same_type(ctype: Any, member: Member) -> bool:
    """Whether a cffi member type has the kernel member's array shape and
    kind of element type (see Member.element)."""
    flexible = ctype.kind == "array" and ctype.length is None
    rank, element = 0, ctype
    while element.kind == "array":
        rank, element = rank + 1, element.item
    if (rank, flexible) != (member.array_rank, member.flexible):
        return False
    if element.kind == "enum" or (element.kind == "primitive" and element.cname not in _FLOATING):
        return member.element == INTEGER
    if element.kind == "pointer":
        return member.element == POINTER
    if element.kind in ("struct", "union"):
        # An untagged kernel struct ("struct") matches any struct.
        return member.element in (element.cname, element.kind)
    return member.element == "other"


def check_members(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    problems: list[str] = []
    declared = _declared(ffi)
    for agg in ref.inventory.aggregates:
        if agg.name not in declared[agg.kind]:
            count = len(agg.members)
            problems.append(f"{agg.c_name}: missing, so its {count} member{'s' * (count != 1)} "
                            "went unchecked")
            continue
        # cffi lists the members of anonymous structs/unions in place, as C does.
        fields = dict(ffi.typeof(agg.c_name).fields or ())
        expected = ref.layouts[agg.c_name].members
        for member in agg.members:
            where = f"{agg.c_name}.{member.name}"
            field = fields.get(member.name)
            if field is None:
                problems.append(f"{where}: missing (kernel: {member.declaration})")
                continue
            want = expected[member.name]
            if field.offset != want.offset:
                problems.append(f"{where}: offset {field.offset}, kernel {want.offset}")
            cname = field.type.cname
            if not _same_type(field.type, member):
                problems.append(f"{where}: type {cname}, kernel {member.declaration}")
                continue  # sizes and signedness of different kinds of type mean little
            size = ffi.sizeof(field.type.item if member.flexible else field.type)
            if size != want.size:
                what = "element size" if member.flexible else "size"
                problems.append(f"{where}: {what} {size}, kernel {want.size}")
            if want.signed is not None:
                signed = int(ffi.cast(_innermost(field.type), -1)) < 0
                if signed != want.signed:
                    sign = {True: "signed", False: "unsigned"}
                    problems.append(f"{where}: {sign[signed]} ({cname}), "
                                    f"kernel {sign[want.signed]} ({member.declaration})")
        for extra in fields.keys() - {m.name for m in agg.members}:
            problems.append(f"{agg.c_name}.{extra}: not in the kernel header")
    return problems


def _check_values(names: tuple[str, ...], ref: Reference, lib: Lib, number: str) -> list[str]:
    problems: list[str] = []
    for name in names:
        try:
            value = getattr(lib, name)
        except AttributeError:
            problems.append(f"{name}: missing")
            continue
        want = ref.values[name]
        if value != want:
            problems.append(f"{name}: {value:{number}}, kernel {want:{number}}")
    return problems


def check_ioctls(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    return _check_values(ref.inventory.ioctls, ref, lib, "#x")


def check_constants(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    return _check_values(ref.inventory.constants, ref, lib, "#x")


def check_enums(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    problems = _check_values(ref.inventory.enumerators, ref, lib, "d")
    for tag in ref.inventory.enum_tags:
        try:
            ffi.typeof(f"enum {tag}")
        except ffi.error:
            problems.append(f"enum {tag}: type missing")
    return problems


def check_extras(ref: Reference, ffi: FFI, lib: Lib) -> list[str]:
    """Names the binding declares but the kernel headers do not (typos)."""
    problems: list[str] = []
    for kind, names in _declared(ffi).items():
        kernel = {a.name for a in ref.inventory.aggregates if a.kind == kind}
        problems += [f"{kind} {name}: not in the kernel headers" for name in sorted(names - kernel)]
    for name in dir(lib):
        if (isinstance(getattr(lib, name), int) and name not in ref.values
                and not name.startswith(OWN_PREFIX)):
            problems.append(f"{name}: not in the kernel headers")
    return problems


CHECKS: dict[str, Check] = {
    "structs": check_structs,
    "members": check_members,
    "ioctls": check_ioctls,
    "constants": check_constants,
    "enums": check_enums,
    "extras": check_extras,
}


def compare(ref: Reference, ffi: FFI, lib: Lib) -> dict[str, list[str]]:
    """Every problem of every category."""
    return {category: check(ref, ffi, lib) for category, check in CHECKS.items()}


def report(category: str, problems: list[str], ref: Reference) -> str:
    return (f"{category}: {len(problems)} problem(s) in pyvfio._uapi against "
            f"{ref.headers.origin}, Linux {ref.headers.version_text}:\n"
            + "".join(f"  {p}\n" for p in problems))


# ---------------------------------------------------------------------------
# The proof
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("category", CHECKS)
def test_layout(category: str, reference: Reference) -> None:
    problems = CHECKS[category](reference, ffi, lib)
    if problems:
        pytest.fail(report(category, problems, reference), pytrace=False)


@pytest.mark.parametrize("ci, outcome", [("", pytest.skip.Exception),
                                         ("true", pytest.fail.Exception)], ids=["local", "ci"])
def test_missing_headers_skip_locally_but_fail_in_ci(
        ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> Headers:
        raise uapi_headers.HeadersUnavailable("no network")

    monkeypatch.setattr(uapi_headers, "locate_headers", unavailable)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="uAPI headers unavailable: no network"):
        find_headers()


def test_enumeration_is_complete(reference: Reference) -> None:
    """Guards against an enumerator that finds (almost) nothing and so
    lets the comparison pass vacuously."""
    inv = reference.inventory
    found = {"structs": len(inv.aggregates), "members": inv.member_count,
             "ioctls": len(inv.ioctls)}
    if reference.headers.version[:2] == (7, 3):
        assert found == LINUX_7_3_COUNTS
    else:  # a newer uAPI only ever adds
        assert all(found[k] >= LINUX_7_3_COUNTS[k] for k in found), found
    assert len(inv.constants) > 100 and len(inv.enumerators) > 100, inv
    assert {"VFIO_API_VERSION", "VFIO_TYPE", "IOMMUFD_TYPE"} <= set(inv.constants)
    assert {"VFIO_DEVICE_STATE_VALID", "VFIO_DEVICE_API_PCI_STRING"} <= set(inv.skipped_macros)


# ---------------------------------------------------------------------------
# The proof can fail: a synthetic header against bindings with known flaws
# ---------------------------------------------------------------------------

# Stands in for linux/vfio.h: one of each kind of item, including the
# tricky ones (anonymous union, flexible array, ioctl via another macro,
# negative value, macros that are not integer constants).
DEMO_HEADER = """\
#ifndef DEMO_VFIO_H
#define DEMO_VFIO_H
#include <linux/types.h>
#include <linux/ioctl.h>

#define DEMO_TYPE (';')
#define DEMO_BASE 100
#define DEMO_FLAG_A (1 << 0)
#define DEMO_FLAG_B (1 << 3)
#define DEMO_NEGATIVE -1
#define DEMO_NAME "demo"
#define DEMO_PLUS(x) ((x) + DEMO_BASE)
#define DEMO_GET_INFO _IO(DEMO_TYPE, DEMO_BASE + 0)
#define DEMO_SET_INFO \\
	_IOW(DEMO_TYPE, DEMO_BASE + 1, struct demo_info)
#define DEMO_ALIAS DEMO_GET_INFO

enum demo_mode { DEMO_MODE_OFF, DEMO_MODE_ON = 5 };

struct demo_cap {
	__u16 id;
	__u16 version;
	__u32 next;
};

struct demo_info {
	__u32 argsz;
	union {
		__u32 in_type;
		__u32 out_type;
	};
	__aligned_u64 addr;
	struct demo_cap cap;
	__s32 fds[];
};

struct demo_only_in_kernel {
	__u32 value;
};
#endif
"""

# Stands in for linux/iommufd.h.
DEMO_HEADER_2 = """\
#include <linux/types.h>
union demo_word { __u64 u64; __u8 bytes[8]; };
struct demo_bitmap {
	__u64 pgsize;
	__u64 *data;
	struct demo_cap cap;
};
"""

# Declarations in pyvfio's cdefs style (compiled in API mode, as
# pyvfio._uapi is); the C text doubles as the cdef after turning every
# "#define NAME value" into "#define NAME ...".
FAITHFUL_BINDING = """\
#define DEMO_TYPE 59
#define DEMO_BASE 100
#define DEMO_FLAG_A 1
#define DEMO_FLAG_B 8
#define DEMO_NEGATIVE -1
#define DEMO_GET_INFO 0x3b64
#define DEMO_SET_INFO 0x40183b65
#define DEMO_ALIAS 0x3b64
#define PYVFIO_DEMO_HELPER 7
enum demo_mode { DEMO_MODE_OFF, DEMO_MODE_ON = 5 };
struct demo_cap { uint16_t id; uint16_t version; uint32_t next; };
struct demo_info {
	uint32_t argsz;
	union { uint32_t in_type; uint32_t out_type; };
	uint64_t addr;
	struct demo_cap cap;
	int32_t fds[];
};
struct demo_only_in_kernel { uint32_t value; };
union demo_word { uint64_t u64; uint8_t bytes[8]; };
struct demo_bitmap { uint64_t pgsize; uint64_t *data; struct demo_cap cap; };
"""

# The same with one flaw of every kind (see FLAWS).
FAULTY_BINDING = """\
#define DEMO_TYPE 59
#define DEMO_BASE 100
#define DEMO_FLAG_A 1
#define DEMO_FLAG_B 4
#define DEMO_NEGATIVE -1
#define DEMO_GET_INFO 0x3b64
#define DEMO_SET_INFO 0x40143b65
#define DEMO_TYPO 1
#define PYVFIO_DEMO_HELPER 7
enum { DEMO_MODE_OFF, DEMO_MODE_ON = 4 };
struct demo_cap { uint16_t id; uint16_t version; uint32_t next; uint32_t spare; };
struct demo_info {
	uint32_t argsz;
	uint32_t in_type;
	uint32_t addr;
	struct demo_cap cap;
	uint32_t fds[];
};
struct demo_typo { uint32_t value; };
union demo_word { uint64_t u64; uint64_t bytes; };
struct demo_bitmap { uint64_t pgsize; uint64_t data; union demo_word cap; };
"""

# What the comparison must report for FAULTY_BINDING, by category.
FLAWS = {
    "structs": [
        "struct demo_cap: sizeof 12, kernel 8",
        "struct demo_info: alignment 4, kernel 8",
        "struct demo_only_in_kernel: missing (linux/vfio.h)",
    ],
    "members": [
        "struct demo_cap.spare: not in the kernel header",
        "struct demo_info.out_type: missing (kernel: __u32 out_type)",
        "struct demo_info.addr: size 4, kernel 8",
        "struct demo_info.cap: offset 12, kernel 16",
        "struct demo_info.cap: size 12, kernel 8",
        "struct demo_info.fds: unsigned (uint32_t[]), kernel signed (__s32 fds[])",
        "struct demo_only_in_kernel: missing, so its 1 member went unchecked",
        "union demo_word.bytes: type uint64_t, kernel __u8 bytes[8]",
        "struct demo_bitmap.data: type uint64_t, kernel __u64 *data",
        "struct demo_bitmap.cap: type union demo_word, kernel struct demo_cap cap",
    ],
    "ioctls": [
        "DEMO_SET_INFO: 0x40143b65, kernel 0x40183b65",
        "DEMO_ALIAS: missing",
    ],
    "constants": [
        "DEMO_FLAG_B: 0x4, kernel 0x8",
    ],
    "enums": [
        "DEMO_MODE_ON: 4, kernel 5",
        "enum demo_mode: type missing",
    ],
    "extras": [
        "struct demo_typo: not in the kernel headers",
        "DEMO_TYPO: not in the kernel headers",
    ],
}


def _build_binding(declarations: str, workdir: Path, module: str) -> tuple[FFI, Lib]:
    """Compile ``declarations`` into a cffi API-mode module and load it."""
    builder = cffi.FFI()
    builder.cdef(re.sub(r"^(#define \w+) .*$", r"\1 ...", declarations, flags=re.M))
    builder.set_source(module, "#include <stdint.h>\n" + declarations)
    path = builder.compile(tmpdir=str(workdir))
    spec = importlib.util.spec_from_file_location(
        module, path, loader=importlib.machinery.ExtensionFileLoader(module, path))
    assert spec is not None and spec.loader is not None
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    return extension.ffi, extension.lib


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The reference measured from the synthetic headers."""
    root = tmp_path_factory.mktemp("demo_headers")
    (root / "linux").mkdir()
    (root / "linux" / "vfio.h").write_text(DEMO_HEADER)
    (root / "linux" / "iommufd.h").write_text(DEMO_HEADER_2)
    # <linux/types.h> and <linux/ioctl.h> (any version) come from the system,
    # as for building pyvfio._uapi itself.
    headers = Headers(root, (0, 0, 0), "synthetic demo headers", ("-I", str(root)))
    return load_reference(headers, root)


def test_demo_enumeration(demo_reference: Reference) -> None:
    inv = demo_reference.inventory
    assert [a.c_name for a in inv.aggregates] == [
        "struct demo_cap", "struct demo_info", "struct demo_only_in_kernel", "union demo_word",
        "struct demo_bitmap"]
    assert [m.name for m in inv.aggregates[1].members] == [
        "argsz", "in_type", "out_type", "addr", "cap", "fds"]
    assert inv.ioctls == ("DEMO_GET_INFO", "DEMO_SET_INFO", "DEMO_ALIAS")
    assert inv.constants == (
        "DEMO_TYPE", "DEMO_BASE", "DEMO_FLAG_A", "DEMO_FLAG_B", "DEMO_NEGATIVE")
    assert inv.enumerators == ("DEMO_MODE_OFF", "DEMO_MODE_ON") and inv.enum_tags == ("demo_mode",)
    assert set(inv.skipped_macros) == {"DEMO_VFIO_H", "DEMO_NAME", "DEMO_PLUS"}
    assert demo_reference.values["DEMO_NEGATIVE"] == -1
    assert demo_reference.values["DEMO_SET_INFO"] == 0x40183B65  # _IOW: write, 24 bytes


def test_faithful_binding_passes(demo_reference: Reference, tmp_path: Path) -> None:
    binding = _build_binding(FAITHFUL_BINDING, tmp_path, "_layout_demo_faithful")
    assert compare(demo_reference, *binding) == {category: [] for category in CHECKS}


def test_faulty_binding_reports_every_flaw(demo_reference: Reference, tmp_path: Path) -> None:
    binding = _build_binding(FAULTY_BINDING, tmp_path, "_layout_demo_faulty")
    problems = compare(demo_reference, *binding)
    assert {category: sorted(found) for category, found in problems.items()} == {
        category: sorted(flaws) for category, flaws in FLAWS.items()}
    # And each category's message lists all of its problems.
    message = report("members", problems["members"], demo_reference)
    assert message.startswith("members: 10 problem(s)")
    assert all(f"  {p}\n" in message for p in FLAWS["members"])
