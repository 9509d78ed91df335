"""Backends: the syscall layer under pyvfio's objects."""

from __future__ import annotations

from .base import Backend, IoctlArg, MemoryMap

__all__ = ["Backend", "IoctlArg", "MemoryMap", "default_backend"]

_default: Backend | None = None


def default_backend() -> Backend:
    """The real kernel backend, created on first use."""
    global _default
    if _default is None:
        from .kernel import KernelBackend

        _default = KernelBackend()
    return _default
