"""A fake system that keeps its state between ``pyvfio --fake`` commands,
so that ``bind``, ``status``, ``groups`` and ``restore`` rehearse a
workflow as on a machine.

The state of fake machine ``NAME`` is the file
``$XDG_STATE_HOME/pyvfio/fake-NAME.json`` (``~/.local/state`` without
``$XDG_STATE_HOME``; ``--fake-state FILE`` picks another, ``-`` keeps
none): the machine's topology digest and each device's driver and
driver_override.  Next to it, the folder ``fake-NAME.root`` is the fake
machine's host root: the files pyvfio writes for it (the binding state
``run/pyvfio/bindings.json``, the persistent bindings' udev rules
``etc/udev/rules.d``) live there, checked as on a real machine.

A command builds the machine from its topology, then replays the saved
drivers through sysfs (driver_override, unbind, bind), as a boot with the
same persistent settings would; when it is done, it saves the drivers back
if they changed.  A state saved for another topology (the topology file
changed) is not replayed: the session starts over and says so.

The state file is read as untrusted input, like the binding state: opened
without following symbolic links, in a folder of this user that nobody
else may write to, and every value checked (a PCI address of the machine,
a driver name) before it reaches a sysfs path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from typing import Any

from ..core import sysfs
from .binding_state import (
    BindError,
    TempFileError,
    _nofollow_open,
    _show,
    _shown_path,
    is_bdf,
    is_driver_name,
    open_folder_nofollow,
    replace_file,
    set_host_root,
    unsafe,
)

__all__ = ["FakeSession", "FakeStateError", "default_state_path", "open_session", "fake_field",
           "banner"]

_VERSION = 1
_MAX_BYTES = 4 << 20


class FakeStateError(BindError):
    """The fake session's state file cannot be used: unsafe, damaged, or
    its drivers cannot be replayed.  The message names the file and says
    how to start over (``--fake-reset``)."""


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return cleaned.strip(".") or "fake"


def default_state_path(machine: str) -> str:
    """Where the state of fake machine ``machine`` is kept by default:
    ``$XDG_STATE_HOME/pyvfio/fake-<machine>.json``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return os.path.join(base, "pyvfio", f"fake-{_safe_name(machine)}.json")


def _root_of(path: str) -> str:
    stem = path[:-5] if path.endswith(".json") else path
    return stem + ".root"


def _digest(topology: dict[str, Any]) -> str:
    text = json.dumps(topology, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class FakeSession:
    """A fake system and where its state is kept (``path`` None: nowhere).

    Thread safety: one per command; not shared between threads.
    """

    def __init__(self, system: Any, digest: str, path: str | None,
                 fallback: bool = False) -> None:
        self.system = system
        self.machine = str(system.topology_name)
        self.path = path
        self.fallback = fallback
        #: Whether a saved state was replayed.
        self.resumed = False
        #: Things to tell the user (a state that was set aside...).
        self.notes: list[str] = []
        self._digest = digest
        #: The drivers as the machine boots, then as last loaded or saved.
        self._loaded = self.snapshot()
        if path is not None:
            set_host_root(system.backend, _root_of(path))

    @property
    def root(self) -> str | None:
        """The fake machine's host root (None without a state file)."""
        return _root_of(self.path) if self.path is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"machine", "state", "root", "fallback", "resumed"}``."""
        return {"machine": self.machine, "state": self.path, "root": self.root,
                "fallback": self.fallback, "resumed": self.resumed}

    # -- the machine's drivers -------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, str | None]]:
        """Each device's driver and driver_override, as sysfs shows them."""
        b = self.system.backend
        out: dict[str, dict[str, str | None]] = {}
        for bdf in sorted(self.system.devices):
            override = sysfs.try_read(b, f"{sysfs.PCI_DEVICES}/{bdf}/driver_override")
            out[bdf] = {"driver": sysfs.device_driver(bdf, b),
                        "driver_override": None if override in (None, "", "(null)") else override}
        return out

    def _replay(self, saved: dict[str, dict[str, str | None]]) -> None:
        b = self.system.backend
        now = self.snapshot()
        for bdf, want in saved.items():
            have = now[bdf]
            if have == want:
                continue
            dev = f"{sysfs.PCI_DEVICES}/{bdf}"
            try:
                if have["driver_override"] != want["driver_override"]:
                    b.sysfs_write(f"{dev}/driver_override", want["driver_override"] or "\n")
                if have["driver"] != want["driver"]:
                    if have["driver"] is not None:
                        b.sysfs_write(f"/sys/bus/pci/drivers/{have['driver']}/unbind", bdf)
                    if want["driver"] is not None:
                        b.sysfs_write(f"/sys/bus/pci/drivers/{want['driver']}/bind", bdf)
            except OSError as e:
                raise self._error(f"{bdf} cannot go back to {want['driver'] or 'no driver'}: "
                                  f"{e.strerror}", e.errno or errno.EIO) from None

    # -- the file --------------------------------------------------------------------------
    def _error(self, problem: str, err: int = errno.EIO) -> FakeStateError:
        return FakeStateError(err, f"fake state {_shown_path(str(self.path))}: {problem} "
                                   "(--fake-reset starts over)")

    def _open_folder(self, create: bool) -> int | None:
        assert self.path is not None
        folder = os.path.dirname(self.path) or "."
        try:
            fd = open_folder_nofollow(folder, create)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder):
                raise self._error("its folder is a symbolic link", errno.ELOOP) from None
            raise self._error(f"its folder: {e.strerror}", e.errno or errno.EIO) from None
        if fd is None:
            return None
        problem = unsafe(os.fstat(fd), "its folder", "folder")
        if problem is not None:
            os.close(fd)
            raise self._error(*problem)
        return fd

    def _parse(self, data: object) -> dict[str, dict[str, str | None]] | None:
        """The saved drivers; None for a state of another topology."""
        if not isinstance(data, dict) or set(data) != {"version", "machine", "topology",
                                                       "devices"}:
            raise ValueError("not a pyvfio fake state (version, machine, topology, devices)")
        if type(data["version"]) is not int or data["version"] != _VERSION:
            raise ValueError(f"version {_show(data['version'])} is not {_VERSION}")
        if data["topology"] != self._digest or data["machine"] != self.machine:
            return None
        devices = data["devices"]
        if not isinstance(devices, dict):
            raise ValueError(f"'devices' is {_show(devices)}, not an object")
        out: dict[str, dict[str, str | None]] = {}
        for bdf, raw in devices.items():
            if not is_bdf(bdf) or bdf not in self.system.devices:
                raise ValueError(f"{_show(bdf)} is no PCI address of machine {self.machine!r}")
            if not isinstance(raw, dict) or set(raw) != {"driver", "driver_override"}:
                raise ValueError(f"{bdf}: not an object with driver and driver_override")
            for key in ("driver", "driver_override"):
                if raw[key] is not None and not is_driver_name(raw[key]):
                    raise ValueError(f"{bdf}: {key} {_show(raw[key])} is not a driver name")
            out[bdf] = {"driver": raw["driver"], "driver_override": raw["driver_override"]}
        return out

    def load(self) -> None:
        """Replay the saved drivers, if a state of this topology is saved."""
        if self.path is None:
            return
        folder = self._open_folder(create=False)
        if folder is None:
            return
        try:
            name = os.path.basename(self.path)
            try:
                fd = _nofollow_open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=folder)
            except FileNotFoundError:
                return
            except OSError as e:
                problem = "it is a symbolic link" if e.errno == errno.ELOOP else str(e.strerror)
                raise self._error(problem, e.errno or errno.EIO) from None
            try:
                problem2 = unsafe(os.fstat(fd), "the file", "regular file")
                if problem2 is not None:
                    raise self._error(*problem2)
                data = os.read(fd, _MAX_BYTES + 1)
            finally:
                os.close(fd)
        finally:
            os.close(folder)
        if len(data) > _MAX_BYTES:
            raise self._error(f"larger than {_MAX_BYTES} bytes")
        try:
            saved = self._parse(json.loads(data.decode("utf-8")))
        except RecursionError:
            raise self._error("the JSON is nested too deeply") from None
        except UnicodeDecodeError as e:
            raise self._error(f"not UTF-8 text (byte {e.start})") from None
        except ValueError as e:
            raise self._error(str(e).splitlines()[0] if str(e) else "not JSON") from None
        if saved is None:
            self.notes.append(f"the state in {self.path} is of another topology: starting over")
            return
        self._replay(saved)
        self._loaded = self.snapshot()
        self.resumed = True

    def save(self) -> bool:
        """Write the drivers back if they changed since :meth:`load`; True
        when the file was written."""
        if self.path is None:
            return False
        now = self.snapshot()
        if now == self._loaded:
            return False
        folder = self._open_folder(create=True)
        assert folder is not None
        text = json.dumps({"version": _VERSION, "machine": self.machine,
                           "topology": self._digest, "devices": now}, indent=1)
        try:
            replace_file(folder, os.path.basename(self.path), (text + "\n").encode(),
                         fsync=False)
        except TempFileError as e:
            raise self._error(f"creating {e.filename}: {e.strerror}", e.errno or errno.EIO) from None
        except OSError as e:
            raise self._error(e.strerror or str(e), e.errno or errno.EIO) from None
        finally:
            os.close(folder)
        self._loaded = now
        self.resumed = True
        return True

    def reset(self) -> list[str]:
        """Forget the saved state: delete the state file and the host root
        (never through a symbolic link).  Returns what was deleted."""
        if self.path is None:
            return []
        gone = []
        root = _root_of(self.path)
        if os.path.lexists(root):
            if os.path.islink(root) or not os.path.isdir(root):
                raise self._error(f"{root} is not a folder; left alone", errno.EINVAL)
            shutil.rmtree(root)
            gone.append(root)
        folder = self._open_folder(create=False)
        if folder is not None:
            try:
                os.unlink(os.path.basename(self.path), dir_fd=folder)
                gone.append(self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(folder)
        return gone


def open_session(spec: str, state: str | None = None, *, fallback: bool = False,
                 reset: bool = False) -> FakeSession:
    """The fake machine ``spec`` (a shipped topology name or a topology
    file) with its saved state replayed.  ``state``: the state file (None:
    :func:`default_state_path`; ``"-"``: keep no state).  ``reset``: delete
    the saved state first.  TopologyError for a bad topology,
    :class:`FakeStateError` for a state that cannot be used."""
    from ..fake import System
    from ..fake.machine.topology import load

    topology = load(spec)
    digest = _digest(topology)
    system = System(topology)
    path = None if state == "-" else (state or default_state_path(system.topology_name))
    session = FakeSession(system, digest, path, fallback)
    if reset:
        session.notes += [f"deleted {p}" for p in session.reset()]
    session.load()
    return session


def fake_field(machine: str | None, session: FakeSession | None,
               fallback: bool) -> dict[str, Any] | None:
    """The ``"fake"`` field of the command's JSON: which fake machine and
    where its state is kept (``state`` None: nowhere); None for the real
    kernel (``machine`` None)."""
    if session is not None:
        return session.as_dict()
    if machine is None:
        return None
    return {"machine": machine, "state": None, "root": None, "fallback": fallback,
            "resumed": False}


def banner(machine: str | None, session: FakeSession | None) -> str:
    """The line a command on a fake machine prints first."""
    state = f"; state: {session.path} (--fake-reset starts over)" \
        if session is not None and session.path is not None else ""
    return f"(FAKE system {machine!r}: nothing on this machine changes{state})"
