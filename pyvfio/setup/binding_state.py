"""Where pyvfio remembers each device's original driver while it is bound
to another one: :class:`BindingState`, a JSON file for the real kernel
(``/run/pyvfio/bindings.json``; ``$PYVFIO_STATE_DIR`` overrides the
folder) and memory kept per backend for a fake system.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from ..backend import Backend, resolve_backend
from ..errors import VfioError

__all__ = ["BindError", "BindingRecord", "BindingState", "STATE_DIR"]

#: Default folder of the state file (``$PYVFIO_STATE_DIR`` overrides it).
STATE_DIR = "/run/pyvfio"
_STATE_FILE = "bindings.json"
#: What ``unbind`` writes to driver_override: no driver has this name, so
#: nothing binds the device again until :func:`restore` (driverctl's "none").
_NO_DRIVER = "none"


class BindError(VfioError):
    """Binding, unbinding or restoring a device failed.  The message says
    what the kernel refused and which driver the device was left on."""



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


class BindingState:
    """Where original drivers are remembered: a JSON file (shared between
    processes, guarded by an flock on ``<file>.lock``) or, with
    ``path=None``, memory."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._memory: dict[str, dict[str, Any]] = {}

    @classmethod
    def default(cls, backend: Backend | None = None) -> BindingState:
        """The state for ``backend``: the state file for the real kernel,
        memory kept for the backend's lifetime otherwise."""
        b = resolve_backend(backend)
        if b.name == "kernel":
            folder = os.environ.get("PYVFIO_STATE_DIR") or STATE_DIR
            return cls(os.path.join(folder, _STATE_FILE))
        state = _memory_states.get(b)
        if state is None:
            state = cls(None)
            _memory_states[b] = state
        return state

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._memory
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise BindError(errno.EIO, f"cannot read the binding state {self.path}: {e}") from None
        devices = data.get("devices", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in devices.items() if isinstance(v, dict)}

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        if self.path is None:
            change(self._memory)
            return
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise BindError(e.errno or errno.EIO,
                            f"cannot write the binding state in {folder}: {e.strerror} "
                            "(run as root, or set PYVFIO_STATE_DIR)") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            change(data)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "devices": data}, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        finally:
            os.close(lock)

    def get(self, bdf: str) -> BindingRecord | None:
        """The record of ``bdf``, if pyvfio changed its driver."""
        raw = self._load().get(bdf)
        if raw is None:
            return None
        return BindingRecord(bdf, raw.get("driver"), raw.get("driver_override"),
                             float(raw.get("since", 0.0)))

    def records(self) -> list[BindingRecord]:
        """Every record, by address."""
        out = []
        for bdf in sorted(self._load()):
            rec = self.get(bdf)
            if rec is not None:
                out.append(rec)
        return out

    def remember(self, bdf: str, driver: str | None, override: str | None) -> None:
        """Record the original state, unless a record exists (the first
        record is the original)."""
        def change(data: dict[str, dict[str, Any]]) -> None:
            data.setdefault(bdf, {"driver": driver, "driver_override": override,
                                  "since": time.time()})
        self._update(change)

    def forget(self, bdf: str) -> None:
        """Drop the record of ``bdf``."""
        def change(data: dict[str, dict[str, Any]]) -> None:
            data.pop(bdf, None)
        self._update(change)

