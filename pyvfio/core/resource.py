"""Lifetime management and ioctl plumbing shared by all objects."""

from __future__ import annotations

import contextlib
import contextvars
import errno as _errno
import logging
import warnings
from typing import Any, Callable, ClassVar, Iterator, TypeVar

from .._uapi import ffi
from ..backend import Backend, resolve_backend
from ..backend.base import IoctlArg
from ..errors import ClosedError, InvalidArgumentError, IoctlError, _explained, ioctl_error

#: A cffi pointer or array (untyped: the layouts are checked by tests).
CData = Any

__all__ = ["Resource", "FdResource", "CData", "U64_MAX", "check_u64", "check_flags"]

U64_MAX = (1 << 64) - 1

_LOG = logging.getLogger(__name__)

R = TypeVar("R", bound="Resource")


class Resource:
    """Something that must be released: an fd, a kernel object, a mapping.

    * ``close()`` is idempotent and releases children first, newest first
      (mappings before the IOAS, the IOAS before the iommufd).
    * An object is closed exactly when the kernel object behind it is
      gone: a kernel object whose release fails (an unmap or
      IOMMU_DESTROY the kernel refused) stays open, the error is raised
      and ``close()`` may be retried; a parent whose child failed still
      releases itself, marks that child closed (the kernel dropped it with
      the parent) and raises the child's error.
    * After ``close()`` every operation raises :class:`ClosedError`.
    * A resource garbage-collected while open emits :class:`ResourceWarning`
      and is then released.
    * Resources are context managers.

    Thread safety: ``close()`` is idempotent but is not serialised against
    the object's other calls, except where a subclass says so (the address
    spaces); the registry of children changes by single dictionary
    operations, atomic under the GIL. Close an object after the threads
    using it are done.
    """

    #: What this is called in messages ("IOAS", "container", ...).
    kind = "resource"

    _closed = True  # until __init__ has run (a failed __init__ leaves no work)

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend: Backend = resolve_backend(backend)
        self._children: dict[int, Resource] = {}
        self._parent: Resource | None = None
        self._closed = False

    # -- identity -----------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The backend this object's syscalls go to."""
        return self._backend

    def describe(self) -> str:
        """Short description used in error messages, e.g. ``"IOAS 2"``."""
        return self.kind

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.describe()}{state}>"

    # -- lifetime -------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the object has been closed."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(self.describe())

    def _adopt(self, child: R) -> R:
        """Make ``child`` close before this object does."""
        child._parent = self
        self._children[id(child)] = child
        return child

    def _forget(self, child: Resource) -> None:
        self._children.pop(id(child), None)

    def _live_children(self) -> Iterator[Resource]:
        return (c for c in list(self._children.values()) if not c._closed)

    def close(self) -> None:
        """Release the object (children first); does nothing if closed.

        When a child fails to close, the others are still closed and this
        object is still released; the first error is raised at the end.
        A child whose release failed stays open only while this object
        does: once this object is released the kernel has dropped the
        child with it, and the child is marked closed.  When this object's
        own release fails and the class keeps such objects open
        (``_open_after_failed_release``), the object, and the children
        that failed, stay open and the error is raised: ``close()`` may be
        called again."""
        if self._closed:
            return
        errors: list[BaseException] = []
        for child in reversed(list(self._children.values())):
            try:
                child.close()
            except Exception as exc:  # keep releasing the rest
                errors.append(exc)
        self._closed = True  # also keeps _release from closing this object again
        try:
            self._release()
        except BaseException:
            if self._open_after_failed_release:
                self._closed = False
                raise
            self._finish_close()
            raise
        self._finish_close()
        if errors:
            raise errors[0]

    #: A failed :meth:`_release` left the kernel resource as it was (a
    #: failed IOMMU_DESTROY or unmap), so the object stays open and
    #: ``close()`` may be retried; when False a failed release (such as
    #: close(2), which frees the fd whatever it returns) still closes it.
    _open_after_failed_release: ClassVar[bool] = False

    def _finish_close(self) -> None:
        # The children the kernel dropped with this object (those whose
        # own close failed) are closed now too.
        for child in list(self._children.values()):
            child._mark_closed()
        self._children.clear()
        if self._parent is not None:
            self._parent._forget(self)
            self._parent = None

    def _release(self) -> None:
        """Free the underlying kernel resource (subclasses)."""

    def _mark_closed(self) -> None:
        """Record that the kernel already released this (e.g. parent teardown)."""
        for child in list(self._children.values()):
            child._mark_closed()
        self._children.clear()
        self._closed = True
        if self._parent is not None:
            self._parent._forget(self)
            self._parent = None

    def __enter__(self: R) -> R:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._closed or self._parent is not None:
            # A child is released by its parent; nothing to do here.
            return
        warnings.warn(
            f"unclosed {self.describe()}; use close() or a with-block",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )
        try:
            self.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def describe(target: str | Resource) -> str:
    """The text for an error message's object: a string as it is, a
    resource by its :meth:`~Resource.describe`."""
    return target if isinstance(target, str) else target.describe()


#: An fd handed to the next open_node of this context instead of opening
#: (see :func:`adopting`).
_ADOPTED: contextvars.ContextVar[int | None] = contextvars.ContextVar("pyvfio_adopted_fd",
                                                                      default=None)


@contextlib.contextmanager
def adopting(fd: int) -> Iterator[None]:
    """Within the block, the next :func:`open_node` of this thread (or
    task) returns ``fd`` instead of opening its path: the ``from_fd``
    constructors run the ordinary ``__init__`` on an fd received from
    elsewhere."""
    token = _ADOPTED.set(fd)
    try:
        yield
    finally:
        _ADOPTED.reset(token)


def open_node(backend: Backend, path: str) -> int:
    """Open a VFIO or iommufd device node; an OSError becomes an
    :class:`~pyvfio.errors.IoctlError` naming ``open`` and the path."""
    adopted = _ADOPTED.get()
    if adopted is not None:
        _ADOPTED.set(None)
        return adopted
    try:
        return backend.open(path)
    except OSError as exc:
        raise ioctl_error(exc.errno or _errno.EIO, "open", path) from None


class FdResource(Resource):
    """A resource that owns a file descriptor.

    Thread safety: as :class:`Resource`; ioctls on the fd are serialised by
    the kernel.
    """

    #: Error-message vocabulary for this fd's ioctls ("vfio" or "iommufd").
    family = "vfio"

    _fd = -1
    #: Whether closing the object closes the fd (False for an fd borrowed
    #: with ``from_fd(..., closefd=False)``).
    _closefd = True

    def __init__(self, fd: int, backend: Backend | None = None) -> None:
        super().__init__(backend)
        self._fd = fd

    @property
    def fd(self) -> int:
        """The file descriptor (raises :class:`ClosedError` once closed)."""
        self._check_open()
        return self._fd

    def fileno(self) -> int:
        """The file descriptor, for ``select`` and friends."""
        return self.fd

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._closefd:
            self._backend.close(fd)

    def _ioctl(
        self, name: str, request: int, arg: IoctlArg = 0, *,
        target: str | Resource | None = None,
    ) -> int:
        """Issue an ioctl on this fd, turning OSError into IoctlError.
        ``target`` names the object in the message (a resource is described
        only when the call fails: this is the hot path of every ioctl)."""
        if self._closed:
            raise ClosedError(self.describe())
        try:
            return self._backend.ioctl(self._fd, request, arg)
        except OSError as exc:
            if exc.errno is None:  # pragma: no cover - backends always set errno
                raise
            raise self._ioctl_failed(exc.errno, name, target, arg=arg) from None

    def _ioctl_failed(self, err: int, name: str, target: str | Resource | None = None, *,
                      arg: Any = None) -> IoctlError:
        """The error of ioctl ``name`` on this fd failing with ``err``, the
        same whether it went through the backend's ``ioctl`` (:meth:`_ioctl`)
        or a compiled helper (:class:`~pyvfio.backend.base.DirectIoctls`).
        Called on the failure path only: subclasses that can tell the cause
        of an errno from their state or from ``arg`` (the ioctl's argument:
        its struct, or anything with the same fields) say it and what to do
        instead of the errno's generic meaning (see ``_hint``)."""
        error = ioctl_error(err, name, describe(target) if target is not None
                            else self.describe(), self.family)
        try:
            hint = self._hint(err, name, arg, target)
        except Exception:  # pragma: no cover - a diagnosis never hides the kernel's error
            hint = None
        return _explained(error, hint) if hint else error

    def _hint(self, err: int, name: str, arg: Any,
              target: str | Resource | None) -> str | None:
        """Why ioctl ``name`` failed with ``err`` and what to do, when this
        object can tell; ``None`` keeps the errno's generic meaning."""
        return None

    def _ioctl_argsz(
        self,
        name: str,
        request: int,
        ctype: str,
        fill: Callable[[CData], None] | None = None,
        *,
        extra: int = 0,
        target: str | None = None,
    ) -> tuple[CData, CData]:
        """Issue a vfio ``argsz`` ioctl, growing the buffer when the kernel
        reports (through ``argsz``) that its capability chain did not fit.

        Returns ``(struct pointer, raw buffer)``; capability offsets are
        relative to the start of the raw buffer.
        """
        size = ffi.sizeof(ctype) + extra
        for _attempt in range(8):
            raw = ffi.new("char[]", size)
            info = ffi.cast(ctype + " *", raw)
            info.argsz = size
            if fill is not None:
                fill(info)
            # Pass the whole buffer: the kernel may write argsz bytes.
            self._ioctl(name, request, raw, target=target)
            if info.argsz <= size:
                return info, raw
            _LOG.debug("%s on %s: the kernel needs argsz %d (gave %d): retrying", name,
                       target or self.describe(), int(info.argsz), size)
            size = int(info.argsz)
        raise ioctl_error(_errno.EINVAL, name, target or self.describe(),
                          self.family)  # pragma: no cover


def check_u64(name: str, value: int, *, ioctl: str | None = None, target: str | None = None) -> int:
    """Reject values that do not fit an unsigned 64-bit field."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}",
                                   ioctl=ioctl, target=target)
    if not 0 <= value <= U64_MAX:
        raise InvalidArgumentError(f"{name} {value:#x} is outside 0..2**64-1",
                                   ioctl=ioctl, target=target)
    return value


def check_u32(name: str, value: int, *, ioctl: str | None = None, target: str | None = None) -> int:
    """Reject values that do not fit an unsigned 32-bit field (a PASID, an
    index)."""
    check_u64(name, value, ioctl=ioctl, target=target)
    if value > 0xFFFFFFFF:
        raise InvalidArgumentError(f"{name} {value:#x} is outside 0..2**32-1",
                                   ioctl=ioctl, target=target)
    return value


def check_flags(name: str, flags: int, allowed: int, *, ioctl: str | None = None,
                target: str | None = None) -> int:
    """Reject flag bits outside ``allowed``."""
    check_u64(name, flags, ioctl=ioctl, target=target)
    if flags & ~allowed:
        raise InvalidArgumentError(f"unknown {name} bits {flags & ~allowed:#x}",
                                   ioctl=ioctl, target=target)
    return flags
