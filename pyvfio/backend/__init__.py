"""Backends: the syscall layer under pyvfio's objects."""

from __future__ import annotations

from .base import Backend, IoctlArg, MemoryMap

__all__ = ["Backend", "IoctlArg", "MemoryMap", "default_backend", "resolve_backend"]

_default: Backend | None = None


def default_backend() -> Backend:
    """The real kernel backend, created on first use."""
    global _default
    if _default is None:
        from .kernel import KernelBackend

        _default = KernelBackend()
    return _default


def resolve_backend(backend: Backend | None) -> Backend:
    """``backend``, or the default (real kernel) backend when ``None``."""
    return backend if backend is not None else default_backend()
