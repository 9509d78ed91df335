"""Where pyvfio remembers each device's original driver while it is bound
to another one: :class:`BindingState`, a JSON file for the real kernel
(``/run/pyvfio/bindings.json``; ``$PYVFIO_STATE_DIR`` overrides the
folder) and memory kept per backend for a fake system.

The file steers later writes to sysfs as root, so it is handled as
untrusted input: its folder must be a real directory owned by this user
(or root) that nobody else may write to (pyvfio creates it 0700); the
file, its lock and its temporary copies are opened without following
symbolic links and created 0600; it is replaced atomically by a rename.
Every value read back is checked against what sysfs accepts (a canonical
PCI address, a driver name) before it names a sysfs path; anything else
is a :class:`BindingStateError` that says which file and what is wrong.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from ..backend import Backend, resolve_backend
from ..errors import VfioError

__all__ = ["BindError", "BindingStateError", "BindingRecord", "BindingState", "STATE_DIR",
           "TempFileError", "replace_file",
           "is_driver_name", "is_bdf", "unsafe", "open_folder_nofollow", "host_root",
           "set_host_root"]

#: Default folder of the state file (``$PYVFIO_STATE_DIR`` overrides it).
STATE_DIR = "/run/pyvfio"
_STATE_FILE = "bindings.json"
#: What ``unbind`` writes to driver_override: no driver has this name, so
#: nothing binds the device again until :func:`restore` (driverctl's "none").
_NO_DRIVER = "none"

#: A PCI address as sysfs spells it (domain, bus, device, function; lower case).
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
#: A driver's name as a folder of /sys/bus/pci/drivers: one path component.
_DRIVER = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: The state file's format version and keys.
_VERSION = 1
_RECORD_KEYS = ("driver", "driver_override", "since")
#: The largest state file read: some ten thousand records, far above any machine's.
_MAX_BYTES = 1 << 20


class BindError(VfioError):
    """Binding, unbinding or restoring a device failed.  The message says
    what the kernel refused and which driver the device was left on."""


class BindingStateError(BindError):
    """The binding state file cannot be trusted or used: its folder or the
    file is unsafe (a symbolic link, someone else's, writable by others)
    or its content is not what pyvfio writes.  The message is one line
    naming the file and what is wrong."""


def is_bdf(value: object) -> bool:
    """Whether ``value`` is a PCI address exactly as sysfs spells it
    (``0000:03:00.0``)."""
    return isinstance(value, str) and _BDF.fullmatch(value) is not None


def is_driver_name(value: object) -> bool:
    """Whether ``value`` can be a PCI driver's name: one component of
    ``/sys/bus/pci/drivers`` (letters, digits, ``_ . -``; not ``.`` or
    ``..``; at most 128 characters)."""
    return (isinstance(value, str) and _DRIVER.fullmatch(value) is not None
            and value not in (".", ".."))


def _show(value: object) -> str:
    """A short, one-line description of a value read from the file."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
    return {"dict": "an object", "list": "a list"}.get(type(value).__name__, type(value).__name__)


def _shown_path(path: str) -> str:
    return path if path.isprintable() else repr(path)


def unsafe(st: os.stat_result, name: str, kind: str) -> tuple[str, int] | None:
    """Why a folder (``kind`` "folder") or file ("regular file") that
    steers root's writes cannot be trusted, with an errno: a symbolic link,
    the wrong kind, someone else's, or writable by others; None when sound."""
    if stat.S_ISLNK(st.st_mode):
        return f"{name} is a symbolic link", errno.ELOOP
    wanted = stat.S_ISDIR if kind == "folder" else stat.S_ISREG
    if not wanted(st.st_mode):
        return f"{name} is not a {kind}", errno.EINVAL
    if st.st_uid not in (os.geteuid(), 0):
        return f"{name} belongs to uid {st.st_uid}, not to this user or root", errno.EPERM
    if st.st_mode & 0o022:
        return (f"{name} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); only "
                "its owner may write to it"), errno.EPERM
    return None


def open_folder_nofollow(folder: str, create: bool, mode: int = 0o700) -> int | None:
    """``folder`` opened as a directory without following a symbolic link
    at its last component (creating it with ``mode`` if ``create``); None
    when it does not exist and ``create`` is false.  OSError otherwise
    (ELOOP or ENOTDIR for a symbolic link)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(folder, flags)
    except FileNotFoundError:
        if not create:
            return None
        os.makedirs(folder, mode=mode, exist_ok=True)
        return os.open(folder, flags)


_host_roots: weakref.WeakKeyDictionary[Backend, str] = weakref.WeakKeyDictionary()


def set_host_root(backend: Backend, root: str | None) -> None:
    """Keep the files pyvfio writes for a fake system's machine (the
    binding state, the persistent bindings' udev rules) below the real
    folder ``root`` (as ``root/run/pyvfio/...``, ``root/etc/udev/...``)
    instead of in memory; None: in memory again."""
    if root is None:
        _host_roots.pop(backend, None)
    else:
        _host_roots[backend] = root


def host_root(backend: Backend) -> str | None:
    """The folder set by :func:`set_host_root` for ``backend``, or None."""
    return _host_roots.get(backend)


_memory_states: weakref.WeakKeyDictionary[Backend, BindingState] = weakref.WeakKeyDictionary()


# -- state ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BindingRecord:
    """What a device was bound to before pyvfio changed it."""

    bdf: str  #: the device's PCI address
    driver: str | None  #: the original driver (None: it had none)
    driver_override: str | None  #: the original driver_override
    since: float = 0.0  #: when the record was made (time.time())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "driver": self.driver,
                "driver_override": self.driver_override, "since": self.since}

    def problem(self) -> str | None:
        """What makes this record unusable for sysfs (a malformed address
        or driver name), or None when it is sound."""
        return _record_problem(self.bdf, self.driver, self.driver_override)


def _record_problem(bdf: object, driver: object, override: object) -> str | None:
    if not is_bdf(bdf):
        return f"{_show(bdf)} is not a PCI address (DDDD:BB:DD.F, lower case)"
    if driver is not None and not is_driver_name(driver):
        return f"{bdf}: driver {_show(driver)} is not a driver name"
    if override not in (None, "") and not is_driver_name(override):
        return f"{bdf}: driver_override {_show(override)} is not a driver name"
    return None


def _parse(data: object) -> dict[str, dict[str, Any]]:
    """The records of a decoded state file; ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"the content is {_show(data)}, not an object")
    extra = sorted(k for k in data if k not in ("version", "devices"))
    if extra:
        raise ValueError(f"unknown key {_show(extra[0])}")
    if "version" not in data:
        raise ValueError("no 'version'")
    version = data["version"]
    if type(version) is not int or version != _VERSION:
        raise ValueError(f"version {_show(version)} is not {_VERSION}")
    if "devices" not in data:
        raise ValueError("no 'devices'")
    devices = data["devices"]
    if not isinstance(devices, dict):
        raise ValueError(f"'devices' is {_show(devices)}, not an object")
    out: dict[str, dict[str, Any]] = {}
    for bdf, raw in devices.items():
        if not is_bdf(bdf):
            raise ValueError(f"device {_show(bdf)} is not a PCI address "
                             "(DDDD:BB:DD.F, lower case)")
        if not isinstance(raw, dict):
            raise ValueError(f"{bdf}: the record is {_show(raw)}, not an object")
        for key in _RECORD_KEYS:
            if key not in raw:
                raise ValueError(f"{bdf}: no {key!r}")
        extra = sorted(k for k in raw if k not in _RECORD_KEYS)
        if extra:
            raise ValueError(f"{bdf}: unknown key {_show(extra[0])}")
        problem = _record_problem(bdf, raw["driver"], raw["driver_override"])
        if problem is not None:
            raise ValueError(problem)
        since = raw["since"]
        if isinstance(since, bool) or not isinstance(since, (int, float)):
            raise ValueError(f"{bdf}: since {_show(since)} is not a time")
        try:
            when = float(since)
        except OverflowError:
            when = math.inf
        if not 0 <= when < 1e12:
            raise ValueError(f"{bdf}: since {_show(since)} is not a time")
        out[bdf] = {"driver": raw["driver"], "driver_override": raw["driver_override"],
                    "since": when}
    return out


def _nofollow_open(name: str, flags: int, *, dir_fd: int) -> int:
    """Open ``name`` in the folder ``dir_fd`` without following a symbolic
    link; a file it creates is 0600 (a umask can only take bits away)."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)


class TempFileError(OSError):
    """:func:`replace_file` could not create its temporary file
    (``filename``: its name)."""


def replace_file(folder: int, name: str, data: bytes, *, mode: int | None = None,
                 fsync: bool = True) -> None:
    """Replace the file ``name`` in the folder open as ``folder`` by one
    holding ``data``, atomically: written to a new temporary file beside it
    (created, never followed as a symlink: O_EXCL | O_NOFOLLOW), made
    ``mode`` (None: 0600 from its creation), synced when ``fsync``, then
    renamed over ``name``.  TempFileError when the temporary file cannot be
    created; any other OSError after removing it."""
    import secrets  # here: its import costs every command a few ms

    tmp = f"{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = _nofollow_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=folder)
    except OSError as e:
        raise TempFileError(e.errno, e.strerror, tmp) from None
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=folder)
        except OSError:
            pass
        raise


class BindingState:
    """Where original drivers are remembered: a JSON file (shared between
    processes, guarded by an flock on ``<file>.lock``) or, with
    ``path=None``, memory."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._memory: dict[str, dict[str, Any]] = {}

    @classmethod
    def default(cls, backend: Backend | None = None) -> BindingState:
        """The state for ``backend``: the state file for the real kernel
        (or below a fake system's :func:`host_root`), memory kept for the
        backend's lifetime otherwise."""
        b = resolve_backend(backend)
        if b.name == "kernel":
            folder = os.environ.get("PYVFIO_STATE_DIR") or STATE_DIR
            return cls(os.path.join(folder, _STATE_FILE))
        root = host_root(b)
        if root is not None:
            return cls(os.path.join(root, STATE_DIR.lstrip("/"), _STATE_FILE))
        state = _memory_states.get(b)
        if state is None:
            state = cls(None)
            _memory_states[b] = state
        return state

    # -- the file ------------------------------------------------------------------------
    def _error(self, what: str, problem: str, err: int = errno.EIO) -> BindingStateError:
        assert self.path is not None
        return BindingStateError(err, f"cannot {what} the binding state "
                                      f"{_shown_path(self.path)}: {problem}")

    def _check_safe(self, st: os.stat_result, name: str, what: str, kind: str) -> None:
        """Refuse a folder or file someone else could have changed."""
        problem = unsafe(st, name, kind)
        if problem is not None:
            raise self._error(what, *problem)

    def _open_folder(self, what: str, create: bool) -> int | None:
        """The state file's folder, opened (creating it 0700 if ``create``)
        and checked; None when it does not exist.  The file, its lock and
        its temporary copies are then reached through this descriptor, so
        the folder cannot be swapped after the check."""
        assert self.path is not None
        folder = os.path.dirname(self.path) or "."
        try:
            fd = open_folder_nofollow(folder, create)
            if fd is None:
                return None
        except ValueError as e:
            raise self._error(what, f"bad path: {e}", errno.EINVAL) from None
        except OSError as e:
            # O_DIRECTORY | O_NOFOLLOW on a symbolic link: ENOTDIR (or ELOOP)
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder):
                raise self._error(what, f"its folder {_shown_path(folder)} is a symbolic link",
                                  errno.ELOOP) from None
            raise BindError(e.errno or errno.EIO,
                            f"cannot {what} the binding state in {_shown_path(folder)}: "
                            f"{e.strerror} (run as root, or set PYVFIO_STATE_DIR)") from None
        try:
            self._check_safe(os.fstat(fd), f"its folder {_shown_path(folder)}", what, "folder")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_file(self, folder: int, what: str) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        name = os.path.basename(self.path)
        try:
            fd = _nofollow_open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            return {}
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._error(what, "the file is a symbolic link", errno.ELOOP) from None
            raise self._error(what, e.strerror or str(e), e.errno or errno.EIO) from None
        try:
            self._check_safe(os.fstat(fd), "the file", what, "regular file")
            chunks = []
            size = 0
            while size <= _MAX_BYTES:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as e:
            if isinstance(e, BindingStateError):
                raise
            raise self._error(what, e.strerror or str(e), e.errno or errno.EIO) from None
        finally:
            os.close(fd)
        if size > _MAX_BYTES:
            raise self._error(what, f"the file is larger than {_MAX_BYTES} bytes")
        try:
            return _parse(json.loads(b"".join(chunks).decode("utf-8")))
        except RecursionError:
            raise self._error(what, "the JSON is nested too deeply") from None
        except UnicodeDecodeError as e:
            raise self._error(what, f"not UTF-8 text (byte {e.start})") from None
        except ValueError as e:  # JSONDecodeError, too long integers, _parse
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise self._error(what, message) from None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._memory
        folder = self._open_folder("read", create=False)
        if folder is None:
            return {}
        try:
            return self._read_file(folder, "read")
        finally:
            os.close(folder)

    def _write_file(self, folder: int, data: dict[str, dict[str, Any]]) -> None:
        assert self.path is not None
        text = json.dumps({"version": _VERSION, "devices": data}, indent=2, sort_keys=True)
        try:
            replace_file(folder, os.path.basename(self.path), (text + "\n").encode())
        except TempFileError as e:
            raise self._error("write", f"creating {_shown_path(str(e.filename))}: {e.strerror}",
                              e.errno or errno.EIO) from None
        except OSError as e:
            raise self._error("write", e.strerror or str(e), e.errno or errno.EIO) from None

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        if self.path is None:
            change(self._memory)
            return
        folder = self._open_folder("write", create=True)
        assert folder is not None
        try:
            try:
                lock = _nofollow_open(os.path.basename(self.path) + ".lock",
                                      os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, dir_fd=folder)
            except OSError as e:
                problem = ("the lock file is a symbolic link" if e.errno == errno.ELOOP
                           else f"the lock file: {e.strerror}")
                raise self._error("write", problem, e.errno or errno.EIO) from None
            try:
                self._check_safe(os.fstat(lock), "the lock file", "write", "regular file")
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self._read_file(folder, "write")
                change(data)
                self._write_file(folder, data)
            finally:
                os.close(lock)
        finally:
            os.close(folder)

    # -- records ---------------------------------------------------------------------------
    def get(self, bdf: str) -> BindingRecord | None:
        """The record of ``bdf``, if pyvfio changed its driver."""
        raw = self._load().get(bdf)
        if raw is None:
            return None
        return BindingRecord(bdf, raw.get("driver"), raw.get("driver_override"),
                             float(raw.get("since", 0.0)))

    def records(self) -> list[BindingRecord]:
        """Every record, by address."""
        data = self._load()
        return [BindingRecord(bdf, raw.get("driver"), raw.get("driver_override"),
                              float(raw.get("since", 0.0)))
                for bdf, raw in sorted(data.items())]

    def remember(self, bdf: str, driver: str | None, override: str | None) -> None:
        """Record the original state, unless a record exists (the first
        record is the original).  BindError when a value could not be
        read back safely (not a PCI address or driver name)."""
        problem = _record_problem(bdf, driver, override)
        if problem is not None:
            raise BindError(errno.EINVAL, f"cannot remember the original driver: {problem}",
                            target=f"device {bdf}")

        def change(data: dict[str, dict[str, Any]]) -> None:
            data.setdefault(bdf, {"driver": driver, "driver_override": override,
                                  "since": time.time()})
        self._update(change)

    def forget(self, bdf: str) -> None:
        """Drop the record of ``bdf``."""
        def change(data: dict[str, dict[str, Any]]) -> None:
            data.pop(bdf, None)
        self._update(change)
