"""An ioctl trace: every syscall pyvfio makes, decoded, like strace.

:class:`TraceBackend` wraps another backend (the kernel's or a fake
system's) and writes one line per call: the fd's kind, the ioctl's name,
the argument struct's fields before the call and those the call changed,
the result or the errno's name, and how long the call took::

    pyvfio-trace: iommufd(5) IOMMU_IOAS_MAP {size=40, flags=IOMMU_IOAS_MAP_WRITEABLE|
        IOMMU_IOAS_MAP_READABLE, ioas_id=2, user_va=0x7f3a1c000000, length=0x1000,
        iova=0x0} = 0 -> {iova=0x100000} (0.021 ms)

Ways to turn it on:

* ``PYVFIO_TRACE=1`` in the environment (read once, when the default
  backend is first asked for): every backend :func:`default_backend
  <pyvfio.backend.default_backend>` gives is traced to stderr
  (``PYVFIO_TRACE=log``: to the ``pyvfio.trace`` logger at DEBUG;
  ``PYVFIO_TRACE=/path``: appended to that file);
* :func:`enable` / :func:`disable`: the same, from Python;
* ``with pyvfio.trace(): ...``: objects created in the block with no
  ``backend=`` are traced; ``with pyvfio.trace(system.backend) as b:``
  gives a traced ``b`` to pass explicitly;
* ``TraceBackend(inner)`` directly.

The struct decoding is generic: it walks the cffi type of the argument
(``ffi.typeof``); a raw ``char[]`` buffer (the ioctls whose argument
grows, such as VFIO_DEVICE_GET_INFO) is decoded as the struct the ioctl's
name designates.  ``flags`` fields are shown as the names of their bits.
Memory-mapped register accesses are not syscalls and are not traced.

The wrapper is a plain :class:`~pyvfio.backend.base.Backend`: it offers
no backend-specific fast path, so objects built on it issue every ioctl
through :meth:`TraceBackend.ioctl` and the trace misses none.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import re
import sys
import threading
import time
from typing import IO, Any, Callable

from .base import Backend, DirectAccess, IoctlArg, MemoryMap

__all__ = ["TraceBackend", "TraceMemoryMap", "trace", "enable", "disable", "enabled",
           "enable_from_env", "ioctl_name", "path_kind", "ENV"]

_LOG = logging.getLogger("pyvfio.trace")

#: The environment variable read when the default backend is first made.
ENV = "PYVFIO_TRACE"


# -- where lines go -------------------------------------------------------------------------------
class _Sink:
    """A destination for trace lines: a text file (``None``: the current
    ``sys.stderr``) or a logger (at DEBUG)."""

    def __init__(self, file: IO[str] | None = None,
                 logger: logging.Logger | str | None = None) -> None:
        self.file = file
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._lock = threading.Lock()

    def emit(self, line: str) -> None:
        if self.logger is not None:
            self.logger.debug("%s", line)
            return
        out = self.file if self.file is not None else sys.stderr
        with self._lock:
            out.write(f"pyvfio-trace: {line}\n")
            out.flush()


# -- names of ioctls, errnos and flag bits ---------------------------------------------------------
_ioctl_names: dict[int, list[str]] | None = None


def _file_kind(name: str) -> str:
    """The kind of file an ioctl is issued on, from its name."""
    if name.startswith("IOMMU_"):
        return "iommufd"
    if name.startswith(("VFIO_DEVICE_", "VFIO_MIG_")):
        return "device"
    if name.startswith("VFIO_GROUP_"):
        return "group"
    return "container"


def _names(request: int) -> list[str]:
    global _ioctl_names
    if _ioctl_names is None:
        from .._uapi import lib

        names: dict[int, list[str]] = {}
        for name in sorted(dir(lib)):
            value = getattr(lib, name)
            if name.startswith(("VFIO_", "IOMMU_")) and isinstance(value, int) \
                    and value >> 8 == ord(";"):
                names.setdefault(value, []).append(name)
        for found in names.values():  # the common ioctls before the SPAPR/EEH ones
            found.sort(key=lambda n: re.search("SPAPR|EEH", n) is not None)
        _ioctl_names = names
    return _ioctl_names.get(request, [])


def ioctl_name(request: int, kind: str | None = None, struct: str | None = None) -> str:
    """The uAPI name of ioctl number ``request`` (``"0x3b71"`` when it is
    not a VFIO or iommufd ioctl).  The VFIO numbers are reused across files
    (VFIO_IOMMU_MAP_DMA on a container is VFIO_DEVICE_PCI_HOT_RESET on a
    device): ``kind`` (``"container"``, ``"group"``, ``"device"``,
    ``"iommufd"``) or the argument's ``struct`` type picks the one meant."""
    names = _names(request)
    if not names:
        return f"{request:#x}"
    if len(names) > 1 and struct is not None:
        same = [n for n in names if _struct_of_name(n) == struct]
        names = same or names
    if len(names) > 1 and kind is not None:
        # an iommufd also serves the type1 container ioctls (vfio compat)
        wanted = ("iommufd", "container") if kind == "iommufd" else (kind,)
        for want in wanted:
            mine = [n for n in names if _file_kind(n) == want]
            if mine:
                return mine[0]
    return names[0]


def _errname(err: int | None) -> str:
    if err is None:
        return "E?"
    if err == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(err, str(err))


_FAMILY_WORDS = frozenset(("vfio", "iommu", "iommufd"))
_struct_cache: dict[str, str | None] = {}
_flag_cache: dict[str, tuple[list[tuple[int, str]], int, str]] = {}


def _tokens(name: str) -> frozenset[str]:
    return frozenset(t.rstrip("s") if t not in ("dma", "caps", "status") else t
                     for t in name.lower().split("_") if t and t != "get" and t != "type1")


def _struct_of_name(name: str) -> str | None:
    """The struct an ioctl's name designates: the struct whose name has the
    same words (plural and ``get`` aside), or those words without the
    second one (``VFIO_DEVICE_GET_REGION_INFO`` -> ``vfio_region_info``)."""
    if name in _struct_cache:
        return _struct_cache[name]
    from .._uapi import ffi

    structs = {_tokens(s): s for s in sorted(ffi.list_types()[1], key=len, reverse=True)}
    words = name.lower().split("_")
    found: str | None = None
    for key in (_tokens(name), _tokens("_".join(words[:1] + words[2:]))):
        if key in structs:
            found = "struct " + structs[key]
            break
    _struct_cache[name] = found
    return found


def _flags_of(struct: str) -> tuple[list[tuple[int, str]], int, str]:
    """``(bits, mask, mask_name)`` for the ``flags`` field of ``struct``:
    the single-bit constants named after the struct (``IOMMU_IOAS_MAP_*``)
    or with a ``*_FLAG_``/``*_FLAGS_`` prefix made of the struct's words
    (``VFIO_DMA_MAP_FLAG_*`` for ``vfio_iommu_type1_dma_map``,
    ``VFIO_DEVICE_FLAGS_*`` for ``vfio_device_info``), the longest prefix
    winning a bit; a ``<STRUCT>_MASK`` constant's bits are a number
    (the feature index of VFIO_DEVICE_FEATURE)."""
    cached = _flag_cache.get(struct)
    if cached is not None:
        return cached
    from .._uapi import lib

    short = struct.split()[-1]
    own = short.upper() + "_"
    words = _tokens(short) - _FAMILY_WORDS
    mask = getattr(lib, own + "MASK", 0) if hasattr(lib, own + "MASK") else 0
    flag_style = any("_FLAG_" in n or "_FLAGS_" in n for n in dir(lib) if n.startswith(own))
    best: dict[int, tuple[int, str]] = {}
    for name in dir(lib):
        value = getattr(lib, name)
        if not isinstance(value, int) or value <= 0 or value & (value - 1) or value & mask:
            continue
        if name.startswith(own):
            # capability IDs and type enums are no flags; where some are
            # called *_FLAG_*, only those are
            if "_CAP_" in name or "_TYPE_" in name \
                    or (flag_style and "_FLAG_" not in name and "_FLAGS_" not in name):
                continue
            prefix_len = 100
        else:
            m = re.match(r"(?:VFIO|IOMMU)_(\w+?)_FLAGS?_", name)
            if m is None:
                continue
            prefix = _tokens(m.group(1))
            if not prefix <= words or not words - prefix <= {"info", "status"}:
                continue
            prefix_len = len(m.group(1))
        if value not in best or best[value][0] < prefix_len:
            best[value] = (prefix_len, name)
    result = (sorted((bit, n) for bit, (_p, n) in best.items()), int(mask),
              own + "MASK" if mask else "")
    _flag_cache[struct] = result
    return result


def _flags_text(struct: str, value: int) -> str:
    bits, mask, mask_name = _flags_of(struct)
    parts = []
    rest = value
    for bit, name in bits:
        if value & bit:
            parts.append(name)
            rest &= ~bit
    if mask and rest & mask:
        parts.append(f"{rest & mask:#x}")
        rest &= ~mask
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts) if parts else "0"


# -- decoding structs -------------------------------------------------------------------------------
_DECIMAL = re.compile(r"(^|_)(argsz|id|ids|index|count|num|nr|fd|type|op|option|"
                      r"version|cap|len|width|depth|entries|pasid|levels)(_|$|s$)"
                      r"|_id$|_fd$")


def _fields(struct: str, cdata: Any, depth: int = 0) -> list[tuple[str, str]]:
    """``(name, text)`` per field of the struct ``cdata`` points to."""
    from .._uapi import ffi

    out: list[tuple[str, str]] = []
    ctype = ffi.typeof(cdata)
    if ctype.kind == "pointer":
        ctype = ctype.item
    for position, (name, field) in enumerate(ctype.fields or ()):
        ftype = field.type
        if ftype.kind == "primitive":
            value = getattr(cdata, name)
            if not isinstance(value, int):
                out.append((name, repr(value)))
            elif position == 0 and depth == 0:  # argsz / size: the struct's size in bytes
                out.append((name, str(value)))
            elif name == "flags" and depth == 0:
                out.append((name, _flags_text(struct, value)))
            elif name.startswith("__reserved") and not value:
                continue
            elif _DECIMAL.search(name) or value < 10:
                out.append((name, str(value)))
            else:
                out.append((name, f"{value:#x}"))
        elif ftype.kind == "array":
            if not ftype.length:  # a flexible array: its length is the call's business
                continue
            item = getattr(cdata, name)
            if ftype.item.cname == "char":
                out.append((name, repr(ffi.string(item).decode("ascii", "replace"))))
                continue
            values = [item[i] for i in range(ftype.length)] if ftype.item.kind == "primitive" \
                else None
            if values is not None and not any(values):
                continue
            if values is not None:
                out.append((name, "[" + ", ".join(f"{v:#x}" for v in values[:8])
                            + (", ..." if len(values) > 8 else "") + "]"))
        elif ftype.kind in ("struct", "union") and depth < 2:
            inner = _fields(struct, getattr(cdata, name), depth + 1)
            out.append((name, "{" + ", ".join(f"{k}={v}" for k, v in inner) + "}"))
    return out


class _Decoded:
    """What a trace line says about an ioctl argument, before and after."""

    def __init__(self, request: int, arg: IoctlArg, kind: str | None) -> None:
        from .._uapi import ffi

        self.view: Any = None
        self.struct = ""
        self.text = ""
        self.name = ioctl_name(request, kind)
        if isinstance(arg, int):
            self.text = str(arg) if arg < 10 else f"{arg:#x}"
            return
        ctype = ffi.typeof(arg)
        if ctype.kind == "pointer" and ctype.item.kind in ("struct", "union"):
            self.name = ioctl_name(request, kind, ctype.item.cname)
            self.view, self.struct = arg, ctype.item.cname
        elif ctype.kind == "pointer" and ctype.item.kind == "primitive":
            self.text = f"&{arg[0]}"  # e.g. the container fd of VFIO_GROUP_SET_CONTAINER
            return
        elif ctype.kind == "array" and ctype.item.cname == "char":
            struct = _struct_of_name(self.name)
            size = ffi.sizeof(arg)
            if struct is not None and ffi.sizeof(struct) <= size:
                self.view, self.struct = ffi.cast(struct + " *", arg), struct
            else:
                data = bytes(ffi.buffer(arg, size))
                text = data.split(b"\0", 1)[0]
                self.text = repr(text.decode("ascii", "replace")) if text.isascii() \
                    and text.decode("ascii").isprintable() and text else \
                    "<" + data[:32].hex() + (" ..." if size > 32 else "") + f" {size} bytes>"
                return
        else:
            self.text = f"<{ctype.cname}>"
            return
        self.before = _fields(self.struct, self.view)
        self.text = "{" + ", ".join(f"{k}={v}" for k, v in self.before) + "}"

    def changes(self) -> list[tuple[str, str]]:
        """The fields the call changed."""
        if self.view is None:
            return []
        before = dict(self.before)
        return [(k, v) for k, v in _fields(self.struct, self.view) if before.get(k) != v]


# -- the wrapper -------------------------------------------------------------------------------------
def path_kind(path: str) -> str:
    """The kind of file a trace line names for a file opened at ``path``:
    ``iommufd``, ``container``, ``group``, ``device``, else the base name."""
    if path == "/dev/iommu":
        return "iommufd"
    if path == "/dev/vfio/vfio":
        return "container"
    if path.startswith("/dev/vfio/devices/"):
        return "device"
    if path.startswith("/dev/vfio/"):
        return "group"
    return os.path.basename(path) or path


class TraceMemoryMap(MemoryMap):
    """A :class:`~pyvfio.backend.base.MemoryMap` whose ``close`` (munmap)
    is traced; loads and stores go straight to the wrapped map (they are
    not syscalls).

    Thread safety: as the wrapped map's.
    """

    def __init__(self, inner: MemoryMap, tracer: TraceBackend) -> None:
        self.inner = inner
        self.address = inner.address
        self.length = inner.length
        self._tracer = tracer

    @property
    def closed(self) -> bool:
        """The wrapped map's :attr:`~pyvfio.backend.base.MemoryMap.closed`."""
        return self.inner.closed

    def read(self, offset: int, width: int) -> int:
        """The wrapped map's ``read`` (``width`` bytes at byte ``offset``)."""
        return self.inner.read(offset, width)

    def write(self, offset: int, width: int, value: int) -> None:
        """The wrapped map's ``write`` (``width`` bytes at byte ``offset``)."""
        self.inner.write(offset, width, value)

    def read_bytes(self, offset: int, size: int) -> bytes:
        """The wrapped map's ``read_bytes`` (``size`` bytes at ``offset``)."""
        return self.inner.read_bytes(offset, size)

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """The wrapped map's ``write_bytes``."""
        self.inner.write_bytes(offset, data)

    def buffer(self) -> memoryview:
        """The wrapped map's ``buffer``."""
        return self.inner.buffer()

    def direct_access(self) -> DirectAccess | None:
        """The wrapped map's ``direct_access``."""
        return self.inner.direct_access()

    def close(self) -> None:
        """munmap through the wrapped map, traced (once)."""
        if self.inner.closed:
            self.inner.close()
            return
        self._tracer._call(f"munmap({self.address:#x}, {self.length:#x})", self.inner.close,
                           lambda r: "0")


class TraceBackend(Backend):
    """A backend that traces each call to ``inner`` and passes it through
    unchanged (same arguments, results and exceptions).

    ``file``: where lines go (default: ``sys.stderr`` at each write);
    ``logger``: a logger (or its name) to send them to at DEBUG instead.

    Thread safety: as ``inner``'s; lines from several threads are whole
    lines (the file writes are serialised), and the fd-kind table changes
    by single dictionary operations.
    """

    #: Attributes of the wrapped backend that are not syscalls and are
    #: passed through (the fake's system and its file table, for tests).
    _FORWARDED = frozenset(("system", "open_files", "installed_files"))

    def __init__(self, inner: Backend, *, file: IO[str] | None = None,
                 logger: logging.Logger | str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self._sink = _Sink(file, logger)
        self._kinds: dict[int, str] = {}

    def __getattr__(self, attr: str) -> Any:
        if attr in TraceBackend._FORWARDED:
            return getattr(self.inner, attr)
        raise AttributeError(attr)

    def __repr__(self) -> str:
        return f"<TraceBackend of {self.inner!r}>"

    # -- plumbing --------------------------------------------------------------------------------
    def _fd(self, fd: int) -> str:
        return f"{self._kinds.get(fd, 'fd')}({fd})"

    def _call(self, text: str, fn: Callable[[], Any], show: Callable[[Any], str] = repr) -> Any:
        start = time.perf_counter()
        try:
            result = fn()
        except OSError as exc:
            ms = (time.perf_counter() - start) * 1e3
            self._sink.emit(f"{text} = -1 {_errname(exc.errno)} ({exc.strerror}) ({ms:.3f} ms)")
            raise
        ms = (time.perf_counter() - start) * 1e3
        self._sink.emit(f"{text} = {show(result)} ({ms:.3f} ms)")
        return result

    # -- files -----------------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """Traced open(2); remembers what kind of file the fd is."""
        fd: int = self._call(f"open({path!r}, {_open_flags(flags)})",
                             lambda: self.inner.open(path, flags))
        self._kinds[fd] = path_kind(path)
        return fd

    def close(self, fd: int) -> None:
        """Traced close(2)."""
        self._call(f"close({self._fd(fd)})", lambda: self.inner.close(fd), lambda r: "0")
        self._kinds.pop(fd, None)

    def ioctl(self, fd: int, request: int, arg: IoctlArg = 0) -> int:
        """Traced ioctl(2): the decoded argument before the call, the
        result or errno, then the fields the call changed."""
        kind = self._kinds.get(fd)
        try:
            decoded: _Decoded | None = _Decoded(request, arg, kind)
            assert decoded is not None
            text, name = decoded.text, decoded.name
        except Exception as exc:  # pragma: no cover - a trace never breaks a call
            decoded, text, name = None, f"<undecodable: {exc}>", ioctl_name(request, kind)
        if kind is None:  # an fd this trace did not see opened
            kind = _file_kind(name) if not name.startswith("0x") else "fd"
        start = time.perf_counter()
        try:
            result = self.inner.ioctl(fd, request, arg)
        except OSError as exc:
            ms = (time.perf_counter() - start) * 1e3
            self._sink.emit(f"{kind}({fd}) {name} {text} = -1 {_errname(exc.errno)} "
                            f"({exc.strerror}) ({ms:.3f} ms)")
            raise
        ms = (time.perf_counter() - start) * 1e3
        changed = decoded.changes() if decoded is not None else []
        for field, value in changed:  # an fd handed out in a field (fault queues, ...)
            if field.endswith("_fd") and value.isdigit():
                self._kinds[int(value)] = field.removeprefix("out_").removesuffix("_fd")
        if name == "VFIO_GROUP_GET_DEVICE_FD":
            self._kinds[result] = "device"
        after = (" -> {" + ", ".join(f"{k}={v}" for k, v in changed) + "}") if changed else ""
        self._sink.emit(f"{kind}({fd}) {name} {text} = {result}{after} ({ms:.3f} ms)")
        return result

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Traced pread(2)."""
        return bytes(self._call(f"pread({self._fd(fd)}, {size}, {offset:#x})",
                                lambda: self.inner.pread(fd, size, offset), _nbytes))

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Traced pwrite(2)."""
        return int(self._call(f"pwrite({self._fd(fd)}, {_nbytes(data)}, {offset:#x})",
                              lambda: self.inner.pwrite(fd, data, offset)))

    def read(self, fd: int, size: int) -> bytes:
        """Traced read(2)."""
        return bytes(self._call(f"read({self._fd(fd)}, {size})",
                                lambda: self.inner.read(fd, size), _nbytes))

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        """Traced write(2)."""
        return int(self._call(f"write({self._fd(fd)}, {_nbytes(data)})",
                              lambda: self.inner.write(fd, data)))

    def exists(self, path: str) -> bool:
        """The wrapped backend's ``exists`` (not traced: a stat)."""
        return self.inner.exists(path)

    def access(self, path: str, mode: int) -> bool:
        """The wrapped backend's ``access`` (not traced)."""
        return self.inner.access(path, mode)

    # -- memory ----------------------------------------------------------------------------------
    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
             ) -> MemoryMap:
        """Traced mmap(2); the map's ``close`` is a traced munmap."""
        where = "anonymous" if fd < 0 else self._fd(fd)
        inner: MemoryMap = self._call(
            f"mmap({length:#x}, prot={prot:#x}, flags={flags:#x}, {where}, {offset:#x})",
            lambda: self.inner.mmap(length, prot, flags, fd, offset),
            lambda m: f"{m.address:#x}")
        return TraceMemoryMap(inner, self)

    def memfd_create(self, name: str, flags: int = 0) -> int:
        """Traced memfd_create(2)."""
        fd: int = self._call(f"memfd_create({name!r}, {flags:#x})",
                             lambda: self.inner.memfd_create(name, flags))
        self._kinds[fd] = "memfd"
        return fd

    def ftruncate(self, fd: int, length: int) -> None:
        """Traced ftruncate(2)."""
        self._call(f"ftruncate({self._fd(fd)}, {length:#x})",
                   lambda: self.inner.ftruncate(fd, length), lambda r: "0")

    def eventfd(self, initval: int = 0, flags: int = 0) -> int:
        """Traced eventfd(2)."""
        fd: int = self._call(f"eventfd({initval}, {flags:#x})",
                             lambda: self.inner.eventfd(initval, flags))
        self._kinds[fd] = "eventfd"
        return fd

    @property
    def page_size(self) -> int:
        """The wrapped backend's page size in bytes."""
        return self.inner.page_size

    def memlock_limit(self) -> int:
        """The wrapped backend's RLIMIT_MEMLOCK in bytes (not traced)."""
        return self.inner.memlock_limit()

    # -- sysfs -----------------------------------------------------------------------------------
    def sysfs_read(self, path: str) -> str:
        """The wrapped backend's ``sysfs_read`` (not traced: reads are many)."""
        return self.inner.sysfs_read(path)

    def sysfs_write(self, path: str, value: str) -> None:
        """Traced write of a sysfs attribute (each one acts: bind, unbind, ...)."""
        self._call(f"sysfs_write({path!r}, {value!r})",
                   lambda: self.inner.sysfs_write(path, value), lambda r: "0")

    def sysfs_listdir(self, path: str) -> list[str]:
        """The wrapped backend's ``sysfs_listdir`` (not traced)."""
        return self.inner.sysfs_listdir(path)

    def sysfs_readlink(self, path: str) -> str:
        """The wrapped backend's ``sysfs_readlink`` (not traced)."""
        return self.inner.sysfs_readlink(path)


def _open_flags(flags: int) -> str:
    names = [("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[flags & os.O_ACCMODE]]
    rest = flags & ~os.O_ACCMODE
    for name in ("O_CLOEXEC", "O_NONBLOCK", "O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND"):
        bit = getattr(os, name, 0)
        if bit and rest & bit:
            names.append(name)
            rest &= ~bit
    return "|".join(names + ([f"{rest:#o}"] if rest else []))


def _nbytes(data: Any) -> str:
    return f"<{len(memoryview(data).cast('B'))} bytes>"


# -- turning it on ----------------------------------------------------------------------------------
def _wrapper(inner: Backend, file: IO[str] | None, logger: logging.Logger | str | None
             ) -> Backend:
    """One TraceBackend per wrapped backend while tracing is on globally
    (so that fd kinds and the fake's per-backend binding state persist)."""
    if isinstance(inner, TraceBackend):
        return inner
    try:
        wrapper = inner.__dict__.get("_pyvfio_trace")
    except AttributeError:  # pragma: no cover - a backend with __slots__
        return TraceBackend(inner, file=file, logger=logger)
    if not isinstance(wrapper, TraceBackend):
        wrapper = TraceBackend(inner, file=file, logger=logger)
        inner.__dict__["_pyvfio_trace"] = wrapper
    return wrapper


def enable(file: IO[str] | None = None, logger: logging.Logger | str | None = None) -> None:
    """Trace every backend :func:`~pyvfio.backend.default_backend` gives
    from now on (objects already made keep theirs), to ``file`` (default
    stderr) or ``logger`` at DEBUG."""
    from . import _set_tracer

    _set_tracer(lambda inner: _wrapper(inner, file, logger))


def disable() -> None:
    """Stop tracing default backends (undoes :func:`enable` and
    ``PYVFIO_TRACE``)."""
    from . import _set_tracer

    _set_tracer(None)


def enabled() -> bool:
    """Whether :func:`enable` (or ``PYVFIO_TRACE``) is in force."""
    from . import _get_tracer

    return _get_tracer() is not None


def enable_from_env() -> bool:
    """Apply ``PYVFIO_TRACE``: ``1``/``stderr`` traces to stderr, ``log``
    to the ``pyvfio.trace`` logger, another value is a file to append to;
    empty or ``0``: nothing.  Returns whether tracing was turned on."""
    value = os.environ.get(ENV, "")
    if value in ("", "0"):
        return False
    if value in ("1", "stderr", "yes", "on"):
        enable()
    elif value == "log":
        enable(logger=_LOG)
    else:
        enable(file=open(value, "a", encoding="utf-8"))  # noqa: SIM115 - lives as long as tracing
    return True


class trace(contextlib.AbstractContextManager["Backend"]):  # noqa: N801 - used like a function
    """Trace the calls of a block, or of one backend.

    ``with pyvfio.trace():`` -- objects created in the block with no
    ``backend=`` use a traced default backend (a context-local override,
    like :func:`~pyvfio.backend.override_default_backend`); the ``as``
    target is that backend.  ``with pyvfio.trace(backend):`` traces
    ``backend`` instead (pass the ``as`` target to objects explicitly; it is
    also the default backend in the block).  ``file``: where lines go
    (default stderr); ``logger``: a logger or its name, at DEBUG.
    :meth:`wrap` gives a traced backend without a block.

    Thread safety: the override holds in the entering thread's context
    only; enter and leave in the same thread.
    """

    def __init__(self, backend: Backend | None = None, *, file: IO[str] | None = None,
                 logger: logging.Logger | str | None = None) -> None:
        self._backend = backend
        self._file = file
        self._logger = logger
        self._stack: list[contextlib.ExitStack] = []

    def wrap(self, backend: Backend | None = None) -> TraceBackend:
        """A :class:`TraceBackend` over ``backend`` (default: the one given
        to the constructor, else the default backend), writing where this
        trace writes."""
        from . import default_backend

        inner = backend or self._backend or default_backend()
        if isinstance(inner, TraceBackend):  # already traced (enable()): not twice
            inner = inner.inner
        return TraceBackend(inner, file=self._file, logger=self._logger)

    def __enter__(self) -> Backend:
        from . import override_default_backend

        traced = self.wrap()
        stack = contextlib.ExitStack()
        stack.enter_context(override_default_backend(traced))
        self._stack.append(stack)
        return traced

    def __exit__(self, *exc: object) -> None:
        self._stack.pop().close()
