"""The real Linux uAPI headers, for the layout proof (tests/test_layout.py).

Three jobs:

1. **Find** kernel headers that hold the full Linux 7.3 VFIO/iommufd uAPI
   (:func:`find_headers`): the system's ``/usr/include`` when it is at least
   7.3, else Debian's ``linux-libc-dev`` 7.3.x from trixie-backports, fetched
   once through a private apt sources list (the system's apt configuration
   and package index are never touched) and cached in
   ``<cache>/headers/<debian version>/usr/include``, where <cache> is
   ``$PYVFIO_CACHE_DIR`` or ``~/.cache/pyvfio``.

2. **Enumerate** what ``linux/vfio.h`` and ``linux/iommufd.h`` declare
   (:func:`enumerate_uapi`), mechanically: the headers are run through the
   C preprocessor once (``gcc -E -dD``), the ``#define`` lines are attributed
   to the header that contains them via the preprocessor's line markers, and
   the remaining C is parsed with pycparser.  Nothing is taken from pyvfio's
   own declarations or from a hand-written list.

3. **Measure** every enumerated item with the C compiler
   (:func:`measure`): a generated C program prints each struct's size and
   alignment, each member's offset, size and signedness and each constant's
   value, exactly as the kernel headers define them.

``python3 tests/uapi_headers.py [-v]`` prints where the headers were found
and what they hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from pycparser import c_ast, c_generator, c_parser

#: The headers whose contents pyvfio binds, relative to an include directory.
UAPI_HEADERS = ("linux/vfio.h", "linux/iommufd.h")
#: Oldest uAPI the bindings follow: (major, minor).
MIN_VERSION = (7, 3)

SYSTEM_INCLUDE = Path("/usr/include")

DEBIAN_PACKAGE = "linux-libc-dev"
DEBIAN_SUITE = "trixie-backports"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
ONE_LINE_SOURCES = Path("/etc/apt/sources.list")
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: Seconds any single apt/dpkg/compiler command may take.
COMMAND_TIMEOUT = 600

# Member element types that are not a struct or union (see _element_type).
INTEGER = "integer"
POINTER = "pointer"

# The ioctl-number macros of <linux/ioctl.h>.
IOCTL_MACROS = frozenset({"_IO", "_IOR", "_IOW", "_IOWR"})

# GNU C extensions that pycparser cannot parse.  They are defined away only
# for the parse, which decides which names exist; every size, offset and
# value is measured by the compiler from the untouched headers.
PARSE_ONLY_DEFINES = (
    "-D__attribute__(x)=",
    "-D__extension__=",
    "-D__signed__=signed",
)


class HeadersUnavailable(Exception):
    """No usable kernel headers: the message says why."""


class CommandError(RuntimeError):
    """A command (apt, dpkg, the compiler, the probe) failed."""


# ---------------------------------------------------------------------------
# Finding the headers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Headers:
    """A set of kernel uAPI headers and how to compile against them."""

    include_dir: Path  # holds linux/vfio.h and linux/iommufd.h
    version: tuple[int, int, int]  # from linux/version.h
    origin: str  # human-readable: where these headers come from
    cflags: tuple[str, ...]  # compiler flags that select them

    def header_path(self, header: str) -> Path:
        return self.include_dir / header

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def find_headers() -> Headers:
    """Headers with the full uAPI, or skip the calling test.

    When none can be found or fetched, the test is skipped with the reason;
    when the ``CI`` environment variable is set, it fails instead, so that
    CI can never pass without having checked the real headers.
    """
    try:
        return locate_headers()
    except HeadersUnavailable as exc:
        reason = f"Linux >= {MIN_VERSION[0]}.{MIN_VERSION[1]} uAPI headers unavailable: {exc}"
        if running_in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def running_in_ci() -> bool:
    """True when ``$CI`` is set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def locate_headers() -> Headers:
    """The system's headers if new enough, else the cached or fetched Debian
    ones.  Raises :class:`HeadersUnavailable`."""
    system = system_headers()
    if system is not None:
        return system
    cache = cache_root() / "headers"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # One process fetches; concurrent test runs wait for it and reuse.
        with _locked(cache / ".lock"):
            return cached_debian_headers(cache) or fetch_debian_headers(cache)
    except (CommandError, OSError) as exc:
        raise HeadersUnavailable(str(exc)) from exc


def cache_root() -> Path:
    env = os.environ.get("PYVFIO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pyvfio"


def read_version(include_dir: Path) -> tuple[int, int, int] | None:
    """The kernel version of a header tree, from its linux/version.h."""
    try:
        text = (include_dir / "linux" / "version.h").read_text()
    except OSError:
        return None
    m = re.search(r"^#define\s+LINUX_VERSION_CODE\s+(\d+)", text, re.M)
    if m is None:
        return None
    code = int(m.group(1))
    return code >> 16, (code >> 8) & 0xFF, code & 0xFF


def _has_uapi_headers(include_dir: Path) -> bool:
    return all((include_dir / h).is_file() for h in UAPI_HEADERS)


def system_headers() -> Headers | None:
    """``/usr/include`` if it holds both headers at version >= MIN_VERSION."""
    version = read_version(SYSTEM_INCLUDE)
    if version is None or version[:2] < MIN_VERSION or not _has_uapi_headers(SYSTEM_INCLUDE):
        return None
    # The compiler searches /usr/include (and its multiarch asm/) by itself.
    return Headers(SYSTEM_INCLUDE, version, f"system headers {SYSTEM_INCLUDE}", ())


def _debian_headers(include_dir: Path, debian_version: str) -> Headers:
    """Headers unpacked from a linux-libc-dev package into ``include_dir``.

    The package ships the architecture-specific ``asm/`` headers of every
    architecture under ``<multiarch triplet>/``; the compiler's own triplet
    is put first on the include path, exactly as Debian's gcc does for
    /usr/include.
    """
    version = read_version(include_dir)
    if version is None:
        raise HeadersUnavailable(f"{include_dir} has no readable linux/version.h")
    triplet = _run([*compiler(), "-print-multiarch"]).strip()
    arch_dir = include_dir / triplet
    if not triplet or not (arch_dir / "asm").is_dir():
        raise HeadersUnavailable(
            f"{include_dir} has no asm/ headers for this compiler's target {triplet!r}")
    origin = f"Debian {DEBIAN_PACKAGE} {debian_version} ({include_dir})"
    return Headers(include_dir, version, origin, ("-I", str(arch_dir), "-I", str(include_dir)))


def cached_debian_headers(cache: Path) -> Headers | None:
    """The newest cached Debian 7.3.x header tree, if any."""
    candidates: list[tuple[str, Path]] = []
    for tree in cache.iterdir():
        include_dir = tree / "usr" / "include"
        version = read_version(include_dir)
        if (not tree.name.startswith(".") and version is not None
                and version[:2] == MIN_VERSION and _has_uapi_headers(include_dir)):
            candidates.append((tree.name, include_dir))
    if not candidates:
        return None
    debian_version, include_dir = max(candidates, key=lambda c: _DebianVersion(c[0]))
    return _debian_headers(include_dir, debian_version)


def fetch_debian_headers(cache: Path) -> Headers:
    """Download the newest linux-libc-dev 7.3.x and unpack it into the cache."""
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise HeadersUnavailable(f"cannot fetch {DEBIAN_PACKAGE}: {tool} not found")
    apt = _PrivateApt(cache / ".apt")
    apt.update()
    debian_version = apt.newest_version(DEBIAN_PACKAGE, f"{MIN_VERSION[0]}.{MIN_VERSION[1]}.")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        work = Path(tmp)
        deb = apt.download(DEBIAN_PACKAGE, debian_version, work)
        unpacked = work / "root"
        _run(["dpkg", "-x", str(deb), str(unpacked)])
        if not _has_uapi_headers(unpacked / "usr" / "include"):
            raise HeadersUnavailable(f"{deb.name} does not contain {' and '.join(UAPI_HEADERS)}")
        final = cache / debian_version
        shutil.rmtree(final, ignore_errors=True)  # an unusable leftover
        # Publish atomically: a half-unpacked tree must never look cached.
        unpacked.rename(final)
    return _debian_headers(final / "usr" / "include", debian_version)


class _PrivateApt:
    """apt-get/apt-cache confined to a private one-line sources list.

    The sources list, package index and apt's binary caches all live in
    ``state``; the system's /etc/apt/sources.list*, /var/lib/apt/lists and
    /var/cache/apt are neither read nor written.  (The rest of the system's
    apt configuration, e.g. proxy settings, still applies.)
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.sources = state / "sources.list"
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Acquire::Languages=none",
        ]
        if os.geteuid() == 0:
            # apt's unprivileged download user cannot enter root's home.
            self.options += ["-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        for folder in ("lists/partial", "cache/archives/partial"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)
        uri, keyring = debian_mirror()
        self.sources.write_text(f"deb [signed-by={keyring}] {uri} {DEBIAN_SUITE} main\n")
        # apt-get update succeeds even when nothing could be fetched: check.
        proc = _run_process(["apt-get", *self.options, "-q", "update"])
        if not any("_Packages" in p.name for p in (self.state / "lists").iterdir()):
            raise HeadersUnavailable(f"apt-get update fetched no package index for {uri} "
                                     f"{DEBIAN_SUITE}:\n{_tail(proc.stderr)}")

    def newest_version(self, package: str, prefix: str) -> str:
        """The newest available version of ``package`` starting with ``prefix``."""
        out = _run(["apt-cache", *self.options, "madison", package])
        # Lines look like "linux-libc-dev | 7.3.4-1~bpo13+1 | http://... Packages".
        versions = {cols[1].strip() for line in out.splitlines()
                    if len(cols := line.split("|")) >= 3}
        matching = [v for v in versions if v.startswith(prefix)]
        if not matching:
            found = ", ".join(sorted(versions)) or "nothing"
            raise HeadersUnavailable(f"{DEBIAN_SUITE} offers no {package} {prefix}x ({found})")
        return str(max(matching, key=_DebianVersion))

    def download(self, package: str, version: str, dest: Path) -> Path:
        _run(["apt-get", *self.options, "-q", "download", f"{package}={version}"], cwd=dest)
        debs = list(dest.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise HeadersUnavailable(f"apt-get download {package}={version} produced {debs}")
        return debs[0]


def debian_mirror() -> tuple[str, Path]:
    """(URI, keyring) of the system's Debian archive.

    Taken from the first non-security ``deb`` stanza of debian.sources
    (deb822), else from the first ``deb`` line of sources.list, so that a
    configured mirror or proxy keeps being used.
    """
    try:
        stanzas = DEBIAN_SOURCES.read_text().split("\n\n")
    except OSError:
        stanzas = []
    for stanza in stanzas:
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ", "\t")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
        suites = fields.get("suites", "").split()
        if ("deb" in fields.get("types", "").split() and fields.get("uris")
                and any(not s.endswith("-security") for s in suites)):
            signed_by = Path(fields.get("signed-by", ""))
            keyring = signed_by if signed_by.is_file() else ARCHIVE_KEYRING
            return fields["uris"].split()[0], keyring
    try:
        lines = ONE_LINE_SOURCES.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = re.sub(r"\[[^]]*\]", " ", line).split()  # drop "[options]"
        if len(words) >= 3 and words[0] == "deb" and not words[2].endswith("-security"):
            return words[1], ARCHIVE_KEYRING
    raise HeadersUnavailable(
        f"no Debian archive configured in {DEBIAN_SOURCES} or {ONE_LINE_SOURCES}")


@functools.total_ordering
class _DebianVersion:
    """Sort key ordering Debian version strings as dpkg does."""

    def __init__(self, version: str) -> None:
        self.version = version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _DebianVersion) and self._dpkg("eq", other)

    def __lt__(self, other: _DebianVersion) -> bool:
        return self._dpkg("lt", other)

    def _dpkg(self, op: str, other: _DebianVersion) -> bool:
        cmd = ["dpkg", "--compare-versions", self.version, op, other.version]
        return subprocess.run(cmd, check=False).returncode == 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run a command and return its stdout; raise CommandError on failure."""
    return _run_process(cmd, cwd, stdin).stdout


def _run_process(cmd: list[str], cwd: Path | None = None, stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """Run a command and return it; raise CommandError on failure."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"{shlex.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise CommandError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{_tail(proc.stderr)}")
    return proc


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def compiler() -> list[str]:
    """The C compiler command: ``$CC`` or gcc."""
    return shlex.split(os.environ.get("CC") or "gcc")


# ---------------------------------------------------------------------------
# Enumerating what the headers declare
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A member of a struct or union, addressable by name with offsetof().

    Members of anonymous structs/unions are members of the enclosing one
    (C11); members of a named nested struct belong to that struct only.
    """

    name: str
    array_rank: int  # 0 for a scalar/struct, 1 for m[N] or m[], 2 for m[N][M] ...
    flexible: bool  # flexible array member m[]: its size is that of one element
    element: str  # its (array element) type: see _element_type()
    declaration: str  # after preprocessing, e.g. "__u32 idr[6]" (for messages)

    @property
    def integer(self) -> bool:
        """Whether its (element) type is an integer type: signedness is measured."""
        return self.element == INTEGER


@dataclass(frozen=True)
class Aggregate:
    """A struct or union defined (with a body) in one of the uAPI headers."""

    kind: str  # "struct" or "union"
    name: str
    header: str  # e.g. "linux/vfio.h"
    members: tuple[Member, ...]

    @property
    def c_name(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Inventory:
    """Everything linux/vfio.h and linux/iommufd.h declare, in header order."""

    aggregates: tuple[Aggregate, ...]
    ioctls: tuple[str, ...]  # macros whose expansion uses _IO/_IOR/_IOW/_IOWR
    constants: tuple[str, ...]  # the other integer-valued object-like macros
    enumerators: tuple[str, ...]
    enum_tags: tuple[str, ...]  # names of the named enums
    skipped_macros: Mapping[str, str]  # macro -> why it is not an integer constant

    @property
    def member_count(self) -> int:
        return sum(len(a.members) for a in self.aggregates)

    @property
    def values(self) -> tuple[str, ...]:
        """Every name that has an integer value."""
        return self.ioctls + self.constants + self.enumerators


@dataclass(frozen=True)
class _Macro:
    name: str
    params: str | None  # "(x)" for a function-like macro
    body: str
    header: str


_LINEMARKER = re.compile(r'^# \d+ "((?:[^"\\]|\\.)*)"')
_DEFINE = re.compile(r"^#define ([A-Za-z_]\w*)(\([^)]*\))?(?: (.*))?$")
_UNDEF = re.compile(r"^#undef ([A-Za-z_]\w*)")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_C_GENERATOR = c_generator.CGenerator()


def enumerate_uapi(headers: Headers) -> Inventory:
    """Enumerate the structs, members, macros and enumerators of the headers."""
    source = "".join(f"#include <{h}>\n" for h in UAPI_HEADERS)
    preprocessed = _run([*compiler(), "-E", "-dD", *headers.cflags, *PARSE_ONLY_DEFINES,
                         "-x", "c", "-"], stdin=source)
    header_of = _HeaderMap(headers)
    macros, c_code = _split_macros(preprocessed, header_of)
    ast = c_parser.CParser().parse(c_code, "<uapi>")
    aggregates, enumerators, enum_tags = _declarations(ast, header_of)
    ioctls, constants, skipped = _classify_macros(macros)
    return Inventory(tuple(aggregates), tuple(ioctls), tuple(constants),
                     tuple(enumerators), tuple(enum_tags), skipped)


class _HeaderMap:
    """Maps a file name from a preprocessor line marker to "linux/vfio.h" or
    "linux/iommufd.h", or None for every other file."""

    def __init__(self, headers: Headers) -> None:
        self._ours = {headers.header_path(h).resolve(): h for h in UAPI_HEADERS}
        self._cache: dict[str, str | None] = {}

    def __call__(self, filename: str | None) -> str | None:
        if filename is None:
            return None
        if filename not in self._cache:
            self._cache[filename] = self._ours.get(Path(filename).resolve())
        return self._cache[filename]


def _split_macros(preprocessed: str, header_of: _HeaderMap) -> tuple[list[_Macro], str]:
    """Separate ``gcc -E -dD`` output into our headers' macros and plain C.

    Directive lines are blanked rather than removed so that pycparser's
    line numbers stay right.
    """
    macros: dict[str, _Macro] = {}
    current: str | None = None
    lines = preprocessed.splitlines()
    for i, line in enumerate(lines):
        if m := _LINEMARKER.match(line):
            current = header_of(re.sub(r"\\(.)", r"\1", m.group(1)))  # unescape
        elif m := _DEFINE.match(line):
            if current is not None:
                name, params, body = m.group(1), m.group(2), (m.group(3) or "").strip()
                macros[name] = _Macro(name, params, body, current)
            lines[i] = ""
        elif m := _UNDEF.match(line):
            macros.pop(m.group(1), None)
            lines[i] = ""
    return list(macros.values()), "\n".join(lines)


def _classify_macros(macros: list[_Macro]) -> tuple[list[str], list[str], dict[str, str]]:
    """Split macros into ioctl numbers, other integer constants and the rest."""
    skipped: dict[str, str] = {}
    integer: list[_Macro] = []
    for macro in macros:
        if macro.params is not None:
            skipped[macro.name] = "function-like macro"
        elif not macro.body:
            skipped[macro.name] = "empty (include guard)"
        elif '"' in macro.body:
            skipped[macro.name] = f"string literal {macro.body}"
        else:
            integer.append(macro)
    # An ioctl number expands to _IO*(), directly or through another ioctl macro.
    ioctl_names: set[str] = set()
    changed = True
    while changed:
        changed = False
        for macro in integer:
            used = set(_IDENTIFIER.findall(macro.body))
            if macro.name not in ioctl_names and used & (IOCTL_MACROS | ioctl_names):
                ioctl_names.add(macro.name)
                changed = True
    ioctls = [m.name for m in integer if m.name in ioctl_names]
    constants = [m.name for m in integer if m.name not in ioctl_names]
    return ioctls, constants, skipped


def _declarations(ast: c_ast.FileAST, header_of: _HeaderMap
                  ) -> tuple[list[Aggregate], list[str], list[str]]:
    """Structs/unions with bodies, enumerators and enum tags of our headers."""
    typedefs = {node.name: node.type for node in ast.ext if isinstance(node, c_ast.Typedef)}
    aggregates: list[Aggregate] = []
    enumerators: list[str] = []
    enum_tags: list[str] = []
    for node in _walk(ast):
        header = header_of(node.coord.file if node.coord else None)
        if header is None:
            continue
        if isinstance(node, (c_ast.Struct, c_ast.Union)) and node.name and node.decls is not None:
            kind = "struct" if isinstance(node, c_ast.Struct) else "union"
            members = tuple(_members(node.decls, typedefs))
            aggregates.append(Aggregate(kind, node.name, header, members))
        elif isinstance(node, c_ast.Enum) and node.values is not None:
            enumerators.extend(e.name for e in node.values.enumerators)
            if node.name:
                enum_tags.append(node.name)
    return aggregates, enumerators, enum_tags


def _walk(node: c_ast.Node) -> Iterator[c_ast.Node]:
    """Every node of the tree, parents before children (declaration order)."""
    for _, child in node.children():
        yield child
        yield from _walk(child)


def _members(decls: Iterable[c_ast.Decl], typedefs: Mapping[str, c_ast.Node]) -> Iterator[Member]:
    for decl in decls:
        if decl.name is None:
            # An untagged struct/union without a declarator is an anonymous
            # member: its members are addressed through the enclosing struct.
            inner = decl.type
            if isinstance(inner, (c_ast.Struct, c_ast.Union)) and not inner.name and inner.decls:
                yield from _members(inner.decls, typedefs)
            continue  # anything else unnamed (padding bit-fields) has no name to check
        rank, flexible, element = 0, False, decl.type
        while isinstance(element, c_ast.ArrayDecl):
            flexible = flexible or (rank == 0 and element.dim is None)
            rank += 1
            element = element.type
        yield Member(decl.name, rank, flexible, _element_type(element, typedefs),
                     _C_GENERATOR.visit(decl))


def _element_type(node: c_ast.Node, typedefs: Mapping[str, c_ast.Node]) -> str:
    """What a (non-array) declarator's type is, following typedefs:
    INTEGER, POINTER, "struct <tag>" / "union <tag>" (tag "" if untagged)
    or "other" (floating point, function)."""
    while True:
        if isinstance(node, c_ast.PtrDecl):
            return POINTER
        if not isinstance(node, c_ast.TypeDecl):
            return "other"
        inner = node.type
        if isinstance(inner, c_ast.Enum):
            return INTEGER
        if isinstance(inner, (c_ast.Struct, c_ast.Union)):
            kind = "struct" if isinstance(inner, c_ast.Struct) else "union"
            return f"{kind} {inner.name or ''}".rstrip()
        names = inner.names  # an IdentifierType
        if len(names) == 1 and names[0] in typedefs:
            node = typedefs[names[0]]
            continue
        return "other" if {"float", "double", "void"} & set(names) else INTEGER


# ---------------------------------------------------------------------------
# Measuring with the C compiler
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberLayout:
    offset: int
    size: int  # of the member; of one element for a flexible array member
    signed: bool | None  # None unless the (element) type is an integer type


@dataclass(frozen=True)
class AggregateLayout:
    size: int
    align: int
    members: Mapping[str, MemberLayout]


@dataclass(frozen=True)
class Reference:
    """What the kernel headers say: the expected side of the layout proof."""

    headers: Headers
    inventory: Inventory
    layouts: Mapping[str, AggregateLayout]  # by Aggregate.c_name
    values: Mapping[str, int]  # macro or enumerator -> value


_PROBE_PRELUDE = """\
/* Generated by tests/uapi_headers.py: prints every struct layout and
 * constant value of the uAPI headers, as the compiler sees them. */
#include <stddef.h>
#include <stdio.h>
{includes}
#define AGGREGATE(type) \\
    printf("A %s %zu %zu\\n", #type, sizeof(type), _Alignof(type))
#define MEMBER(type, m, sized, signedness) \\
    printf("M %s %s %zu %zu %d\\n", #type, #m, offsetof(type, m), \\
           sizeof(((type *)0)->sized), signedness)
#define SIGNED(type, element) ((__typeof__(((type *)0)->element))-1 < 0)
#define VALUE(name) ((name) < 0 \\
    ? printf("V %s %lld\\n", #name, (long long)(name)) \\
    : printf("V %s %llu\\n", #name, (unsigned long long)(name)))

int main(void)
{{
"""


def probe_source(inventory: Inventory) -> str:
    """A C program printing one line per struct, member and value.

    ``A <struct|union> <name> <size> <align>``,
    ``M <struct|union> <name> <member> <offset> <size> <signed: 1/0/-1>``,
    ``V <name> <value>``.
    """
    out = [_PROBE_PRELUDE.format(includes="".join(f"#include <{h}>\n" for h in UAPI_HEADERS))]
    for agg in inventory.aggregates:
        out.append(f"    AGGREGATE({agg.c_name});\n")
        for m in agg.members:
            element = m.name + "[0]" * m.array_rank
            sized = m.name + ("[0]" if m.flexible else "")  # an open array has no size
            signedness = f"SIGNED({agg.c_name}, {element})" if m.integer else "-1"
            out.append(f"    MEMBER({agg.c_name}, {m.name}, {sized}, {signedness});\n")
    out.extend(f"    VALUE({name});\n" for name in inventory.values)
    out.append("    return 0;\n}\n")
    return "".join(out)


def measure(headers: Headers, inventory: Inventory, workdir: Path) -> Reference:
    """Compile and run the probe program against ``headers``."""
    source = workdir / "uapi_probe.c"
    binary = workdir / "uapi_probe"
    source.write_text(probe_source(inventory))
    _run([*compiler(), "-std=gnu11", "-O0", *headers.cflags, "-o", str(binary), str(source)])
    output = _run([str(binary)])

    sizes: dict[str, tuple[int, int]] = {}
    members: dict[str, dict[str, MemberLayout]] = {}
    values: dict[str, int] = {}
    for line in output.splitlines():
        tag, *words = line.split()
        if tag == "A":
            kind, name, size, align = words
            sizes[f"{kind} {name}"] = (int(size), int(align))
        elif tag == "M":
            kind, name, member, offset, size, signed = words
            members.setdefault(f"{kind} {name}", {})[member] = MemberLayout(
                int(offset), int(size), None if signed == "-1" else signed == "1")
        elif tag == "V":
            values[words[0]] = int(words[1])
    layouts = {agg.c_name: AggregateLayout(*sizes[agg.c_name], members.get(agg.c_name, {}))
               for agg in inventory.aggregates}
    measured = sum(len(layout.members) for layout in layouts.values())
    if measured != inventory.member_count or set(values) != set(inventory.values):
        raise CommandError(f"{binary} did not print every enumerated item:\n{output}")
    return Reference(headers, inventory, layouts, values)


def load_reference(headers: Headers, workdir: Path) -> Reference:
    """Enumerate and measure the uAPI of ``headers``."""
    return measure(headers, enumerate_uapi(headers), workdir)


def main(argv: list[str]) -> int:
    """Print where the headers are and a summary (``-v``: every item)."""
    try:
        headers = locate_headers()
    except HeadersUnavailable as exc:
        print(f"headers unavailable: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_reference(headers, Path(tmp))
    inv = ref.inventory
    print(f"{headers.origin}: Linux {headers.version_text}")
    print(f"  {len(inv.aggregates)} structs/unions, {inv.member_count} members, "
          f"{len(inv.ioctls)} ioctl numbers, {len(inv.constants)} other constants, "
          f"{len(inv.enumerators)} enumerators in {len(inv.enum_tags)} named enums "
          f"(+ anonymous ones), {len(inv.skipped_macros)} macros skipped")
    if "-v" in argv:
        for agg in inv.aggregates:
            layout = ref.layouts[agg.c_name]
            print(f"{agg.c_name} size={layout.size} align={layout.align} ({agg.header})")
            for m in agg.members:
                ml = layout.members[m.name]
                print(f"    {m.name} offset={ml.offset} size={ml.size} signed={ml.signed}")
        for name in inv.values:
            print(f"{name} = {ref.values[name]:#x}")
        for name, why in inv.skipped_macros.items():
            print(f"skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
