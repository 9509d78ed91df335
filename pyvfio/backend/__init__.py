"""Backends: the syscall layer under pyvfio's objects.

An object given no ``backend=`` uses :func:`default_backend`: the real
kernel, unless :func:`override_default_backend` chose something else for
the running context (the pytest plugin does, to keep tests that use the
fake machine off the real one).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Callable, Iterator, Union

from .base import Backend, IoctlArg, MemoryMap

__all__ = ["Backend", "IoctlArg", "MemoryMap", "default_backend", "resolve_backend",
           "override_default_backend", "traced_if_enabled"]

# pyvfio logs under the "pyvfio" logger (pyvfio.setup.binding, pyvfio.fake, ...);
# silent unless the application configures logging.
logging.getLogger("pyvfio").addHandler(logging.NullHandler())

_default: Backend | None = None

#: What default_backend() gives in this context instead of the kernel
#: backend: a function returning the backend (or raising to refuse).
_override: contextvars.ContextVar[Callable[[], Backend] | None] = contextvars.ContextVar(
    "pyvfio_default_backend", default=None)


#: Wraps the backend default_backend() gives while tracing is on
#: (pyvfio.backend.trace.enable); None: not tracing.
_tracer: Callable[[Backend], Backend] | None = None
_env_read = False


def _set_tracer(tracer: Callable[[Backend], Backend] | None) -> None:
    global _tracer, _env_read
    _tracer = tracer
    _env_read = True  # an explicit choice outranks the environment


def _get_tracer() -> Callable[[Backend], Backend] | None:
    return _tracer


def default_backend() -> Backend:
    """The backend of objects given none: the real kernel backend, created
    on first use; in a :func:`override_default_backend` block, what that
    block says (another backend, or an exception).  Traced (see
    :mod:`pyvfio.backend.trace`) while ``PYVFIO_TRACE`` or
    :func:`~pyvfio.backend.trace.enable` says so."""
    global _default
    override = _override.get()
    if override is not None:
        backend = override()
    else:
        if _default is None:
            from .kernel import KernelBackend

            _default = KernelBackend()
        backend = _default
    return traced_if_enabled(backend)


def traced_if_enabled(backend: Backend) -> Backend:
    """``backend``, wrapped in a :class:`~pyvfio.backend.trace.TraceBackend`
    while tracing is on (``PYVFIO_TRACE``, read on the first call, or
    :func:`pyvfio.backend.trace.enable`); for backends made explicitly,
    such as a fake system's."""
    global _env_read
    if not _env_read:
        _env_read = True
        from .trace import enable_from_env

        enable_from_env()
    return backend if _tracer is None else _tracer(backend)


def resolve_backend(backend: Backend | None) -> Backend:
    """``backend``, or :func:`default_backend` when ``None``."""
    return backend if backend is not None else default_backend()


@contextlib.contextmanager
def override_default_backend(
    replacement: Union[Backend, Callable[[], Backend]],
) -> Iterator[None]:
    """Within the ``with`` block, :func:`default_backend` returns
    ``replacement`` (a backend), or calls it (a function, which may raise
    to refuse the default backend) instead of returning the kernel backend.

    The override is context-local (:mod:`contextvars`): it holds in the
    thread that entered the block and in the asyncio tasks created there,
    not in other threads (a thread started inside the block does not
    inherit it unless it runs in a copy of the context:
    ``threading.Thread(target=contextvars.copy_context().run, args=(f,))``).
    Blocks nest; leaving one restores the previous state.  Objects that
    already hold a backend keep it.
    """
    provide = _constant(replacement) if isinstance(replacement, Backend) else replacement
    token = _override.set(provide)
    try:
        yield
    finally:
        _override.reset(token)


def _constant(backend: Backend) -> Callable[[], Backend]:
    def provide() -> Backend:
        return backend

    return provide
