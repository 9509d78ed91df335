"""A digest of the fake kernel's observable state, for the ioctl fuzzer.

:func:`digest` walks the object graph of a
:class:`~pyvfio.fake.machine.system.System` (its devices, groups, drivers,
the open files of its backend and everything they reach: iommufd objects
and their ids, IOAS areas and IOVAs, type1 mappings, the pinned page
count, device and group ownership, interrupt triggers, config space,
device model registers) and returns a flat list of ``(path, value)``
pairs.  Two digests taken around an ioctl that failed must be equal: the
kernel undoes what a failed call did before it returns.

Left out: what is no kernel state (locks, threads, functions, modules,
classes, cffi and ctypes objects -- user memory and its addresses), and
the bookkeeping in :data:`IGNORED` that a failed call may change without
any effect the user can observe.
"""

from __future__ import annotations

import enum
import mmap
import threading
import types
from typing import Any

#: attribute names not compared (one line each: why)
IGNORED = frozenset({
    "_lock", "lock",  # locks
    # iommufd's id allocator (a heap of freed ids below a counter): an id
    # taken and given back by a failed allocation changes its form, not
    # the free ids (compared through "free_ids" below; xa_alloc hands out
    # the lowest free one)
    "_free_ids", "_next_id",
})

_ATOMS = (int, float, str, bytes, bool, type(None), complex, range)
_OPAQUE = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type,
    types.GeneratorType, mmap.mmap, memoryview, threading.Thread, threading.Event,
    threading.Condition, type(threading.Lock()), type(threading.RLock()), threading.Semaphore,
)


def _opaque(obj: Any) -> bool:
    if isinstance(obj, _OPAQUE):
        return True
    mod = type(obj).__module__ or ""
    return mod.startswith(("_cffi_backend", "ctypes", "_ctypes", "_io", "io", "socket", "select"))


def _free_ids(freed: list[int], next_id: int) -> tuple[tuple[int, ...], int]:
    """The free ids of an iommufd: those below the first id of the free
    tail, and that first id."""
    free = set(freed)
    while next_id - 1 in free:
        next_id -= 1
        free.discard(next_id)
    return tuple(sorted(free)), next_id


def digest(root: Any) -> list[tuple[str, Any]]:
    """The flat ``(path, value)`` digest of everything ``root`` reaches."""
    out: list[tuple[str, Any]] = []
    seen: dict[int, str] = {}
    keep: list[Any] = []  # objects stay alive while seen holds their ids
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, enum.Enum):
            out.append((path, repr(obj)))
            continue
        if isinstance(obj, _ATOMS):
            out.append((path, obj))
            continue
        if isinstance(obj, bytearray):
            out.append((path, bytes(obj)))
            continue
        if _opaque(obj):
            continue
        first = seen.get(id(obj))
        if first is not None:
            out.append((path, ("ref", first)))
            continue
        seen[id(obj)] = path
        keep.append(obj)
        children: list[tuple[str, Any]]
        if isinstance(obj, dict):
            out.append((path, ("dict", len(obj))))
            children = sorted(((f"{path}[{k!r}]", v) for k, v in obj.items()), key=lambda c: c[0])
        elif isinstance(obj, (set, frozenset)):
            out.append((path, ("set", sorted(repr(v) for v in obj if isinstance(v, _ATOMS)))))
            children = [(f"{path}{{{i}}}", v) for i, v in
                        enumerate(sorted((v for v in obj if not isinstance(v, _ATOMS)), key=repr))]
        elif isinstance(obj, (list, tuple)) or type(obj).__name__ == "deque":
            out.append((path, (type(obj).__name__, len(obj))))
            children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        else:
            out.append((path, type(obj).__qualname__))
            attrs: dict[str, Any] = dict(getattr(obj, "__dict__", {}))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot) and slot not in ("__dict__", "__weakref__"):
                        attrs[slot] = getattr(obj, slot)
            if type(obj).__name__ == "IommufdFile":
                attrs["free_ids"] = _free_ids(attrs["_free_ids"], attrs["_next_id"])
            children = [(f"{path}.{k}", v) for k, v in sorted(attrs.items()) if k not in IGNORED]
        stack.extend(reversed(children))
    return out


def diff(before: list[tuple[str, Any]], after: list[tuple[str, Any]], limit: int = 8) -> list[str]:
    """Up to ``limit`` lines naming what differs between two digests."""
    a, b = dict(before), dict(after)
    lines = []
    for path in sorted(set(a) | set(b)):
        if a.get(path, "<absent>") != b.get(path, "<absent>"):
            lines.append(f"{path or '<root>'}: {a.get(path, '<absent>')!r} -> {b.get(path, '<absent>')!r}")
            if len(lines) >= limit:
                break
    return lines
