"""Bindings that survive a reboot: one udev rule per device, as
``driverctl`` keeps its overrides.

``pyvfio bind`` (unless ``--nosave``) writes, for each device it bound,
``/etc/udev/rules.d/70-pyvfio-<address>.rules``::

    ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:03:00.0", ATTR{driver_override}="vfio-pci", RUN{builtin}+="kmod load vfio_pci"
    ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:03:00.0", DRIVER=="?*", DRIVER!="vfio-pci", RUN+="/bin/sh -c '...unbind; ...drivers_probe'"

When the device appears (at boot, when ``udevadm trigger`` replays the
events, or on hotplug), udevd sets its ``driver_override`` and loads the
driver's module; a driver that had already taken the device (a built-in
one, or a module that another device's event loaded first) is unbound and
the bus probes the device again, so only the overriding driver can take it.
``pyvfio unbind`` and ``pyvfio restore`` delete the file.

Why a udev rule and not a systemd unit: the rule acts on the add event of
this one device, hotplug included, before the 80-drivers.rules step that
loads the device's own driver module; it needs nothing but udev (no
pyvfio, no Python, no unit ordering at boot), and one file per device can
be written and removed atomically without touching any other device's.
driverctl gets the same effect through a rule that starts a per-device
systemd unit running its script.

The rule files steer what root writes to sysfs, so they are handled like
the binding state (:mod:`pyvfio.setup.binding_state`): the folder must be
a real directory of this user or root that nobody else may write to; files
are opened without following symbolic links, written 0644 to a temporary
name and renamed into place; a file read back must be exactly the rule
pyvfio writes for a canonical PCI address and a driver name, else a
:class:`PersistError` names it.

For a fake system the rules live in memory, or below the fake session's
host root (:func:`pyvfio.setup.binding_state.host_root`); :func:`apply_rules`
does to a machine what udevd does with the rules when the devices appear.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..backend import Backend, resolve_backend
from ..core import sysfs
from .binding_state import (
    BindError,
    TempFileError,
    _nofollow_open,
    _show,
    _shown_path,
    host_root,
    is_bdf,
    is_driver_name,
    open_folder_nofollow,
    replace_file,
    unsafe,
)

__all__ = ["RULES_DIR", "PersistError", "PersistentBinding", "PersistentRules", "rule_text",
           "parse_rule", "apply_rules", "report", "format_report", "Changes"]

#: The folder of the rules (``$PYVFIO_RULES_DIR`` overrides it): the
#: administrator's udev rules, which udev reads after /usr/lib's.
RULES_DIR = "/etc/udev/rules.d"
#: Rules files are read in lexical order: 70 comes before 80-drivers.rules,
#: whose step loads each device's own driver module.
_PREFIX = "70-pyvfio-"
_SUFFIX = ".rules"
_NAME = re.compile(re.escape(_PREFIX) + r"(.*)" + re.escape(_SUFFIX))
_OVERRIDE = re.compile(r'ATTR\{driver_override\}="([^"\n]*)"')
#: The largest rule file read (pyvfio's are some 600 bytes).
_MAX_BYTES = 4096


class PersistError(BindError):
    """A persistent binding cannot be written, read or removed: the rules
    folder or a rule file is unsafe (a symbolic link, someone else's,
    writable by others), or a file named like pyvfio's is not the rule
    pyvfio writes.  The message is one line naming the file."""


@dataclass(frozen=True)
class PersistentBinding:
    """A device that udev binds to ``driver`` whenever it appears.

    Thread safety: immutable.
    """

    bdf: str  #: the device's PCI address
    driver: str  #: the driver its rule sets as driver_override
    path: str | None  #: the rule file (None for rules kept in memory)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "driver": self.driver, "path": self.path}


def _module(driver: str) -> str:
    """The module a driver comes in, as modprobe names it (``vfio-pci`` ->
    ``vfio_pci``; kmod treats ``-`` and ``_`` alike)."""
    return driver.replace("-", "_")


def rule_text(bdf: str, driver: str) -> str:
    """The rule file that keeps PCI device ``bdf`` on ``driver``.
    ValueError for a malformed address or driver name (both end up in
    sysfs paths and a shell command)."""
    if not is_bdf(bdf):
        raise ValueError(f"{_show(bdf)} is not a PCI address (DDDD:BB:DD.F, lower case)")
    if not is_driver_name(driver):
        raise ValueError(f"{_show(driver)} is not a driver name")
    match = f'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="{bdf}"'
    dev = f"/sys/bus/pci/devices/{bdf}"
    return (
        f"# Written by `pyvfio bind`: PCI device {bdf} goes to {driver} whenever it appears.\n"
        f"# `pyvfio unbind {bdf}` or `pyvfio restore {bdf}` deletes this file.\n"
        # driver_override first: from then on only `driver` may take the device
        f'{match}, ATTR{{driver_override}}="{driver}", '
        f'RUN{{builtin}}+="kmod load {_module(driver)}"\n'
        # a driver that took the device before the override lets go of it
        f'{match}, DRIVER=="?*", DRIVER!="{driver}", '
        f"RUN+=\"/bin/sh -c 'echo {bdf} > {dev}/driver/unbind; "
        f"echo {bdf} > /sys/bus/pci/drivers_probe'\"\n")


def parse_rule(name: str, text: str) -> tuple[str, str]:
    """(address, driver) of the rule file ``name`` with contents ``text``.
    ValueError saying what is wrong unless it is exactly the rule
    :func:`rule_text` writes for a canonical address and a driver name."""
    m = _NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"{_show(name)} is not named {_PREFIX}<PCI address>{_SUFFIX}")
    bdf = m.group(1)
    if not is_bdf(bdf):
        raise ValueError(f"{_show(bdf)} in its name is not a PCI address (DDDD:BB:DD.F, lower case)")
    found = _OVERRIDE.search(text)
    if found is None:
        raise ValueError("it sets no driver_override")
    driver = found.group(1)
    if not is_driver_name(driver):
        raise ValueError(f"driver_override {_show(driver)} is not a driver name")
    if text != rule_text(bdf, driver):
        raise ValueError(f"it is not the rule pyvfio writes for {bdf} (edited by hand?)")
    return bdf, driver


_memory_rules: weakref.WeakKeyDictionary[Backend, PersistentRules] = weakref.WeakKeyDictionary()


class PersistentRules:
    """The persistent bindings: rule files in ``folder`` or, with
    ``folder=None``, memory.

    Thread safety: each call opens, checks and closes the folder itself;
    a rule is replaced by an atomic rename, so concurrent callers (threads
    or processes) never see half a file; the last writer of a device's
    rule wins.
    """

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        self._memory: dict[str, str] = {}

    @classmethod
    def default(cls, backend: Backend | None = None) -> PersistentRules:
        """The rules of ``backend``'s machine: :data:`RULES_DIR` (or
        ``$PYVFIO_RULES_DIR``) for the real kernel; for a fake system, the
        folder below its session's host root, else memory kept for the
        backend's lifetime."""
        b = resolve_backend(backend)
        if b.name == "kernel":
            return cls(os.environ.get("PYVFIO_RULES_DIR") or RULES_DIR)
        root = host_root(b)
        if root is not None:
            return cls(os.path.join(root, RULES_DIR.lstrip("/")))
        rules = _memory_rules.get(b)
        if rules is None:
            rules = _memory_rules[b] = cls(None)
        return rules

    # -- the folder ----------------------------------------------------------------------
    def _error(self, what: str, problem: str, err: int = errno.EIO,
               name: str | None = None) -> PersistError:
        if name is not None:  # about one file: name it whole
            path = _shown_path(os.path.join(str(self.folder), name))
            return PersistError(err, f"cannot {what} the persistent binding {path}: {problem}")
        return PersistError(err, f"cannot {what} the persistent bindings in "
                                 f"{_shown_path(str(self.folder))}: {problem}")

    def _open(self, what: str, create: bool) -> int | None:
        assert self.folder is not None
        try:
            # udevd (root) reads the folder; only its owner may write to it
            fd = open_folder_nofollow(self.folder, create, 0o755)
        except ValueError as e:
            raise self._error(what, f"bad path: {e}", errno.EINVAL) from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.folder):
                raise self._error(what, "the folder is a symbolic link", errno.ELOOP) from None
            hint = " (run as root, or set PYVFIO_RULES_DIR)" \
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
            raise self._error(what, f"{e.strerror}{hint}", e.errno or errno.EIO) from None
        if fd is None:
            return None
        problem = unsafe(os.fstat(fd), "the folder", "folder")
        if problem is not None:
            os.close(fd)
            raise self._error(what, *problem)
        return fd

    def check_writable(self) -> None:
        """PersistError unless rules can be written (the folder is safe and
        a file can be created in it: permissions, a read-only file system),
        checked before any device moves, so that a bind does not half
        succeed."""
        if self.folder is None:
            return
        fd = self._open("write", create=True)
        assert fd is not None
        probe = f".{_PREFIX}probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(_nofollow_open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=fd))
            os.unlink(probe, dir_fd=fd)
        except OSError as e:
            hint = " (run as root, or set PYVFIO_RULES_DIR)" \
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
            raise self._error("write", f"{e.strerror}{hint}", e.errno or errno.EIO) from None
        finally:
            os.close(fd)

    def _read(self, folder: int, name: str) -> str | None:
        try:
            fd = _nofollow_open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as e:
            problem = "it is a symbolic link" if e.errno == errno.ELOOP else str(e.strerror)
            raise self._error("read", problem, e.errno or errno.EIO, name) from None
        try:
            problem2 = unsafe(os.fstat(fd), "the file", "regular file")
            if problem2 is not None:
                raise self._error("read", *problem2, name)
            data = os.read(fd, _MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_BYTES:
            raise self._error("read", f"larger than {_MAX_BYTES} bytes", errno.EIO, name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error("read", f"not UTF-8 text (byte {e.start})", errno.EIO,
                              name) from None

    def _binding(self, name: str, text: str) -> PersistentBinding:
        try:
            bdf, driver = parse_rule(name, text)
        except ValueError as e:
            raise self._error("read", str(e), errno.EINVAL, name) from None
        return PersistentBinding(bdf, driver, os.path.join(str(self.folder), name))

    # -- the rules -----------------------------------------------------------------------
    def list(self) -> list[PersistentBinding]:
        """Every persistent binding, by address.  PersistError for a file
        named like pyvfio's rules that is unsafe or not pyvfio's rule."""
        if self.folder is None:
            return [PersistentBinding(bdf, drv, None) for bdf, drv in sorted(self._memory.items())]
        fd = self._open("read", create=False)
        if fd is None:
            return []
        try:
            out = []
            for name in sorted(os.listdir(fd)):
                if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
                    text = self._read(fd, name)
                    if text is not None:
                        out.append(self._binding(name, text))
            return out
        finally:
            os.close(fd)

    def get(self, bdf: str) -> PersistentBinding | None:
        """The persistent binding of ``bdf``, if there is one."""
        if not is_bdf(bdf):
            raise ValueError(f"{_show(bdf)} is not a PCI address (DDDD:BB:DD.F, lower case)")
        if self.folder is None:
            drv = self._memory.get(bdf)
            return PersistentBinding(bdf, drv, None) if drv is not None else None
        fd = self._open("read", create=False)
        if fd is None:
            return None
        try:
            name = f"{_PREFIX}{bdf}{_SUFFIX}"
            text = self._read(fd, name)
            return self._binding(name, text) if text is not None else None
        finally:
            os.close(fd)

    def save(self, bdf: str, driver: str) -> PersistentBinding:
        """Keep ``bdf`` on ``driver`` from the next boot (or hotplug) on:
        write its rule, replacing an older one atomically."""
        try:
            text = rule_text(bdf, driver)
        except ValueError as e:
            raise PersistError(errno.EINVAL, f"cannot keep {bdf!r} on {driver!r}: {e}",
                               target=f"device {bdf}") from None
        if self.folder is None:
            self._memory[bdf] = driver
            return PersistentBinding(bdf, driver, None)
        name = f"{_PREFIX}{bdf}{_SUFFIX}"
        folder = self._open("write", create=True)
        assert folder is not None
        try:
            # the temporary file ends in .tmp: udev reads *.rules only;
            # 0644: udevd reads it, and a umask must not matter
            replace_file(folder, name, text.encode(), mode=0o644)
        except TempFileError as e:
            raise self._error("write", f"creating {e.filename}: {e.strerror}",
                              e.errno or errno.EIO) from None
        except OSError as e:
            raise self._error("write", str(e.strerror), e.errno or errno.EIO, name) from None
        finally:
            os.close(folder)
        return PersistentBinding(bdf, driver, os.path.join(self.folder, name))

    def remove(self, bdf: str) -> PersistentBinding | None:
        """Forget ``bdf``'s persistent binding; the one removed, or None when
        there was none.  A file named like its rule that is not pyvfio's
        rule is left alone (PersistError)."""
        old = self.get(bdf)
        if old is None:
            return None
        if self.folder is None:
            self._memory.pop(bdf, None)
            return old
        folder = self._open("write", create=False)
        if folder is None:
            return None
        try:
            os.unlink(f"{_PREFIX}{bdf}{_SUFFIX}", dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error("remove", str(e.strerror), e.errno or errno.EIO,
                              f"{_PREFIX}{bdf}{_SUFFIX}") from None
        finally:
            os.close(folder)
        return old


@dataclass
class Changes:
    """The persistent bindings one command saved and removed.

    Thread safety: one per command; not shared between threads.
    """

    saved: list[PersistentBinding] = field(default_factory=list)  #: rules written
    removed: list[PersistentBinding] = field(default_factory=list)  #: rules deleted

    def follow(self, rules: PersistentRules, bdfs: list[str], driver: str | None) -> None:
        """Keep ``bdfs`` on ``driver`` from boot on, or (``driver`` None)
        stop keeping them on any; records each change as it is made."""
        for bdf in bdfs:
            if driver is not None:
                self.saved.append(rules.save(bdf, driver))
            else:
                gone = rules.remove(bdf)
                if gone is not None:
                    self.removed.append(gone)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"saved": [...], "removed": [...]}``."""
        return {"saved": [x.as_dict() for x in self.saved],
                "removed": [x.as_dict() for x in self.removed]}

    def lines(self) -> list[str]:
        """One line for people per change."""
        return ([f"{x.bdf} stays on {x.driver} after a reboot: "
                 f"{x.path or 'rule kept in memory'} (--nosave does not)" for x in self.saved]
                + [f"{x.bdf} no longer goes to {x.driver} at boot: deleted "
                   f"{x.path or 'its rule'}" for x in self.removed])


def apply_rules(rules: list[PersistentBinding], backend: Backend | None = None) -> list[str]:
    """Do to the machine what udevd does with the rules when the devices
    appear (at boot, or ``udevadm trigger --action=add``): set each
    device's driver_override, load nothing (the driver must be there), and
    if another driver has the device, unbind it and let the bus probe it
    again.  Devices the machine does not have are skipped, as udev never
    sees them.  Returns the addresses whose driver it changed; OSError when
    a write fails."""
    b = resolve_backend(backend)
    changed = []
    for rule in rules:
        bdf, driver = rule.bdf, rule.driver
        if not (is_bdf(bdf) and is_driver_name(driver)):
            raise ValueError(f"not a rule pyvfio writes: {rule!r}")
        dev = f"{sysfs.PCI_DEVICES}/{bdf}"
        if not b.exists(dev):
            continue
        b.sysfs_write(f"{dev}/driver_override", driver)
        current = sysfs.device_driver(bdf, b)
        if current == driver:
            continue
        if current is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{current}/unbind", bdf)
        try:
            b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
        except OSError:
            pass  # the rule's shell ignores it too; the driver left shows what happened
        if sysfs.device_driver(bdf, b) != current:
            changed.append(bdf)
    return changed


def report(backend: Backend | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """The rules folder (None: memory) and every persistent binding with
    whether its device is ``present`` and its ``current_driver``."""
    b = resolve_backend(backend)
    rules = PersistentRules.default(b)
    rows = []
    for x in rules.list():
        present = b.exists(f"{sysfs.PCI_DEVICES}/{x.bdf}")
        rows.append({**x.as_dict(), "present": present,
                     "current_driver": sysfs.device_driver(x.bdf, b) if present else None})
    return rules.folder, rows


def format_report(folder: str | None, rows: list[dict[str, Any]]) -> str:
    """:func:`report` as a table for people."""
    if not rows:
        return f"no persistent bindings (udev rules {_PREFIX}*{_SUFFIX} in {folder or 'memory'})"
    table = [["BDF", "AT BOOT", "NOW", "RULE"]]
    table += [[r["bdf"], r["driver"],
               (r["current_driver"] or "no driver") if r["present"] else "(absent)",
               r["path"] or "memory"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
