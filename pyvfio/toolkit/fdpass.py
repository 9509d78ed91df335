"""Passing VFIO and iommufd file descriptors between processes over a Unix
socket (``SCM_RIGHTS``), each named by a small framed message -- so that a
privileged process opens ``/dev/iommu``, a device's cdev or a group and a
driver running as an ordinary user does the rest (as kata, kubevirt and
libvirt hand fds to QEMU).

Sender (root, e.g. ``pyvfio grant``)::

    send_fds(sock, [PassedFd(FdKind.IOMMUFD, iommufd.fd),
                    PassedFd(FdKind.DEVICE, device.fd, bdf=device.bdf, cdev=True)])

Receiver (any user; it opens nothing itself)::

    with recv_fds(sock) as received, open_received(received) as (device, space):
        mapping = space.map(buffer)

A message is a header (``PYVFIOFD``, version, body length in bytes) and a
UTF-8 JSON body listing what each fd is, in the order of the fds; or, with
no fds, an error the sender reports (:func:`send_error`, raised by
:func:`recv_fds` as :class:`RemoteError`).  It works on ``SOCK_STREAM``
and ``SOCK_SEQPACKET`` Unix sockets.  :func:`recv_fds` accepts at most
``max_fds`` fds; a message with more, a truncated message (``MSG_CTRUNC``,
``MSG_TRUNC``, end of stream) or a malformed one is a :class:`FdPassError`
and every fd that arrived with it is closed: nothing leaks.  Received fds
are close-on-exec.

On the fake kernel (:mod:`pyvfio.fake`), fds are real placeholder fds the
fake recognises wherever they travel in the process that runs the fake
machine: the same code passes them between threads of that process, or
to a child forked after they were opened; the receiver names the fake's
backend (``open_received(received, backend=system.backend)``).
"""

from __future__ import annotations

import array
import contextlib
import enum
import errno
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from ..backend import Backend, resolve_backend
from ..core import sysfs
from ..core.container import Container, IommuType
from ..core.device import Device
from ..core.group import Group
from ..core.iommufd import IOAS, IommuFd
from ..errors import InvalidArgumentError, VfioError

__all__ = ["FdKind", "PassedFd", "ReceivedFds", "FdPassError", "RemoteError", "send_fds",
           "send_error", "recv_fds", "open_received", "MAX_FDS", "SCM_MAX_FD", "MAX_BODY"]

#: The first bytes of every message.
MAGIC = b"PYVFIOFD"
#: The message format's version.
VERSION = 1
_HEADER = struct.Struct("<8sHHI")  # magic, version, reserved (0), body length (bytes)
#: The largest JSON body, in bytes.
MAX_BODY = 1 << 16
#: The default limit of fds :func:`recv_fds` accepts in one message.
MAX_FDS = 16
#: The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD).
SCM_MAX_FD = 253
_MAX_TEXT = 256  # characters of a note value or an error message
_MAX_NOTES = 32


class FdKind(str, enum.Enum):
    """What a passed fd is.

    Thread safety: a constant; safe to share.
    """

    IOMMUFD = "iommufd"  #: ``/dev/iommu``
    DEVICE = "device"  #: a device's cdev, or a device fd from its group
    GROUP = "group"  #: ``/dev/vfio/N``
    CONTAINER = "container"  #: ``/dev/vfio/vfio`` (or ``/dev/iommu`` in compat mode)


class FdPassError(VfioError):
    """A message could not be sent or received: malformed, truncated, too
    many fds, or the peer closed the socket.  Every fd that arrived with
    the message has been closed.

    Thread safety: an exception value; nothing shared.
    """


class RemoteError(FdPassError):
    """The sender reported an error instead of sending fds
    (:func:`send_error`); ``errno`` is the one it sent.

    Thread safety: an exception value; nothing shared.
    """


@dataclass(frozen=True)
class PassedFd:
    """One fd of a message and what it is.

    ``fd`` is the sender's fd when sending, the receiver's own (new) fd in
    what :func:`recv_fds` returns.

    Thread safety: immutable; safe to share (the fd is not).
    """

    kind: FdKind  #: what the fd is
    fd: int  #: the file descriptor
    bdf: str | None = None  #: DEVICE: its PCI address (required)
    #: DEVICE: True for a cdev (bind it to an iommufd), False for a device
    #: fd from its group (already usable with the group's container).
    cdev: bool | None = None
    group: int | None = None  #: GROUP: its IOMMU group number, when known
    iommu_type: int | None = None  #: CONTAINER: the IOMMU model set on it (None: not set)

    def __post_init__(self) -> None:
        # FdKind("device") as well as FdKind.DEVICE (ValueError for others)
        object.__setattr__(self, "kind", FdKind(self.kind))

    def as_dict(self) -> dict[str, Any]:
        """The body's entry for this fd (everything but the fd)."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for key in ("bdf", "cdev", "group", "iommu_type"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _error(message: str, err: int = errno.EPROTO) -> FdPassError:
    return FdPassError(err, f"fd passing: {message}")


def _entry(raw: object, fd: int) -> PassedFd:
    """A body entry checked and typed (FdPassError when malformed)."""
    if not isinstance(raw, dict):
        raise _error("an fd entry is not an object")
    unknown = set(raw) - {"kind", "bdf", "cdev", "group", "iommu_type"}
    if unknown:
        raise _error(f"unknown keys in an fd entry: {', '.join(sorted(map(str, unknown)))}")
    try:
        kind = FdKind(raw.get("kind"))
    except ValueError:
        raise _error(f"unknown fd kind {str(raw.get('kind'))[:40]!r}") from None
    bdf, cdev, group, iommu_type = (raw.get(k) for k in ("bdf", "cdev", "group", "iommu_type"))
    if kind is FdKind.DEVICE:
        if not isinstance(bdf, str) or len(bdf) > 32:
            raise _error("a device entry needs its PCI address (bdf)")
        try:
            canonical = sysfs.normalize_bdf(bdf)
        except InvalidArgumentError:
            canonical = ""
        if canonical != bdf:
            raise _error(f"{bdf!r} is not a PCI address as sysfs spells it")
        if not isinstance(cdev, bool):
            raise _error("a device entry says whether it is a cdev (cdev: true/false)")
    elif bdf is not None or cdev is not None:
        raise _error(f"bdf and cdev belong to device entries, not to a {kind.value}")
    if group is not None and (kind is not FdKind.GROUP or type(group) is not int
                              or not 0 <= group < 1 << 31):
        raise _error("group is the group number (0..2**31-1) of a group entry")
    if iommu_type is not None:
        if kind is not FdKind.CONTAINER or type(iommu_type) is not int:
            raise _error("iommu_type is the IOMMU model of a container entry")
        try:
            IommuType(iommu_type)
        except ValueError:
            raise _error(f"unknown IOMMU model {iommu_type}") from None
    return PassedFd(kind, fd, bdf, cdev, group, iommu_type)


def _note(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if (not isinstance(raw, dict) or len(raw) > _MAX_NOTES
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64
                       and len(v) <= _MAX_TEXT for k, v in raw.items())):
        raise _error(f"the note is not a map of at most {_MAX_NOTES} short strings")
    return dict(raw)


def _frame(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_BODY:
        raise _error(f"the message is longer than {MAX_BODY} bytes", errno.EMSGSIZE)
    return _HEADER.pack(MAGIC, VERSION, 0, len(data)) + data


def _send(sock: socket.socket, frame: bytes, fds: Sequence[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sent = sock.sendmsg([frame], ancillary if fds else [])
    if sent < len(frame):
        # a stream socket took part of it: the fds went with the first byte
        sock.sendall(frame[sent:])


def send_fds(sock: socket.socket, fds: Sequence[PassedFd], *,
             note: Mapping[str, str] | None = None) -> None:
    """Send ``fds`` (1 to :data:`SCM_MAX_FD`) with a message naming each
    one, and an optional ``note`` (short strings: what the receiver should
    know, e.g. ``{"granted_by": "pyvfio grant"}``).  The sender keeps its
    fds: close them after sending (the kernel holds the files in flight).
    FdPassError (EPROTO, EMSGSIZE) for a malformed or too large message;
    OSError from the socket as it comes.

    Thread safety: one message is one sendmsg (plus the rest of it, on a
    stream socket, when the socket took only part); do not send on one
    stream socket from several threads at once."""
    if not 1 <= len(fds) <= SCM_MAX_FD:
        raise _error(f"{len(fds)} fds: send 1 to {SCM_MAX_FD}", errno.EMSGSIZE)
    for item in fds:
        if not isinstance(item, PassedFd):
            raise _error(f"{type(item).__name__} is not a PassedFd", errno.EINVAL)
        if type(item.fd) is not int or item.fd < 0:
            raise _error(f"{item.fd!r} is not a file descriptor", errno.EBADF)
        _entry(item.as_dict(), item.fd)
    body: dict[str, Any] = {"version": VERSION, "fds": [item.as_dict() for item in fds]}
    if note:
        body["note"] = _note(dict(note))
    _send(sock, _frame(body), [item.fd for item in fds])


def send_error(sock: socket.socket, message: str, err: int = errno.EPERM) -> None:
    """Tell the receiver why no fds come (its :func:`recv_fds` raises
    :class:`RemoteError` with ``err`` and the first line of ``message``).

    Thread safety: as :func:`send_fds`."""
    text = (message.splitlines() or [""])[0][:_MAX_TEXT]
    _send(sock, _frame({"version": VERSION, "error": text, "errno": int(err)}), [])


class ReceivedFds:
    """The fds of one message, owned by this object until taken.

    ``items`` are the fds still held, in the order sent; :meth:`take` hands
    one to the caller (who then owns it); :meth:`close` (or the end of a
    ``with`` block) closes the rest.

    Thread safety: take and close from one thread.
    """

    def __init__(self, items: list[PassedFd], note: dict[str, str]) -> None:
        self.items = items  #: the fds not taken yet
        self.note = note  #: the sender's note (short strings)

    def take(self, kind: FdKind, bdf: str | None = None) -> PassedFd:
        """Remove the first fd of ``kind`` (and, for devices, ``bdf``) and
        give it to the caller; FdPassError (ENOENT) when there is none."""
        for i, item in enumerate(self.items):
            if item.kind is kind and (bdf is None or item.bdf == bdf):
                return self.items.pop(i)
        raise _error(f"no {kind.value} fd" + (f" for {bdf}" if bdf else "") + " was received",
                     errno.ENOENT)

    def kinds(self) -> list[FdKind]:
        """The kinds of the fds still held, in order."""
        return [item.kind for item in self.items]

    def close(self) -> None:
        """Close every fd not taken; idempotent."""
        items, self.items = self.items, []
        for item in items:
            try:
                os.close(item.fd)
            except OSError:
                pass

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> ReceivedFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReceivedFds {[i.kind.value for i in self.items]}>"


def _recv(sock: socket.socket, size: int, space: int, fds: list[int]) -> tuple[bytes, int]:
    """One recvmsg; the fds that came with it are appended to ``fds``
    (close-on-exec) before anything is checked."""
    data, ancillary, flags, _addr = sock.recvmsg(size, space, socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(cdata[:len(cdata) - len(cdata) % got.itemsize])
            fds.extend(got)
    return data, flags


def _check_ctrunc(flags: int, max_fds: int) -> None:
    if flags & socket.MSG_CTRUNC:
        raise _error(f"more fds than the {max_fds} accepted were sent (the kernel "
                     "dropped the rest)", errno.EMSGSIZE)


def recv_fds(sock: socket.socket, *, max_fds: int = MAX_FDS) -> ReceivedFds:
    """Receive one message: its fds (at most ``max_fds``), each typed by
    the message.  Raises :class:`RemoteError` for an error the sender sent,
    :class:`FdPassError` for a malformed or truncated message, more fds
    than ``max_fds`` (EMSGSIZE), fds that do not match the message, or
    the peer closing the socket first (ECONNRESET); every fd that arrived
    is then closed.  Blocks as the socket does (``sock.settimeout``).

    Thread safety: do not receive on one socket from several threads at
    once (a message may arrive in several reads)."""
    if type(max_fds) is not int or not 1 <= max_fds <= SCM_MAX_FD:
        raise InvalidArgumentError(f"max_fds must be 1..{SCM_MAX_FD}, not {max_fds!r}")
    space = socket.CMSG_SPACE(max_fds * array.array("i").itemsize)
    fds: list[int] = []
    try:
        stream = sock.type == socket.SOCK_STREAM
        first = _HEADER.size if stream else _HEADER.size + MAX_BODY
        data, flags = _recv(sock, first, space, fds)
        _check_ctrunc(flags, max_fds)
        if flags & socket.MSG_TRUNC:
            raise _error(f"the message is longer than {first} bytes", errno.EMSGSIZE)
        if not data:
            raise _error("the peer closed the socket before sending", errno.ECONNRESET)
        while stream and len(data) < _HEADER.size:
            more, flags = _recv(sock, _HEADER.size - len(data), space, fds)
            _check_ctrunc(flags, max_fds)
            if not more:
                raise _error("the message ends inside its header", errno.ECONNRESET)
            data += more
        magic, version, _reserved, length = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise _error("not a pyvfio fd message (bad magic)")
        if version != VERSION:
            raise _error(f"message version {version}, this pyvfio reads {VERSION}")
        if length > MAX_BODY:
            raise _error(f"a body of {length} bytes is longer than {MAX_BODY}", errno.EMSGSIZE)
        body = data[_HEADER.size:]
        while stream and len(body) < length:
            more, flags = _recv(sock, length - len(body), space, fds)
            _check_ctrunc(flags, max_fds)
            if not more:
                raise _error(f"the message ends after {len(body)} of {length} body bytes",
                             errno.ECONNRESET)
            body += more
        if len(body) != length:
            raise _error(f"the body is {len(body)} bytes, the header says {length}")
        received = _parse(body, fds)
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return received


def _parse(body: bytes, fds: list[int]) -> ReceivedFds:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _error("the body is not UTF-8 JSON") from None
    if not isinstance(message, dict) or message.get("version") != VERSION:
        raise _error("the body is not a version 1 message")
    if "error" in message:
        err = message.get("errno")
        text = message.get("error")
        if fds:
            raise _error(f"{len(fds)} fds came with an error message")
        if not isinstance(text, str) or type(err) is not int or not 0 < err < 4096:
            raise _error("a malformed error message")
        raise RemoteError(err, f"the sender refused: {text[:_MAX_TEXT]}")
    entries = message.get("fds")
    if not isinstance(entries, list) or len(entries) != len(fds):
        count = len(entries) if isinstance(entries, list) else "no"
        raise _error(f"{len(fds)} fds arrived with {count} descriptions")
    if set(message) - {"version", "fds", "note"}:
        raise _error("unknown keys in the message")
    items = [_entry(raw, fd) for raw, fd in zip(entries, fds)]
    return ReceivedFds(items, _note(message.get("note")))


_T = TypeVar("_T")


def _adopt(received: ReceivedFds, item: PassedFd, make: Callable[[int], _T]) -> _T:
    """``make(item.fd)``; the fd leaves ``received`` only once the object
    owns it (a failed check leaves it there, to be closed with the rest)."""
    obj = make(item.fd)
    received.items.remove(item)
    return obj


def _first(received: ReceivedFds, kind: FdKind, cdev: bool | None = None) -> PassedFd | None:
    return next((i for i in received.items
                 if i.kind is kind and (cdev is None or i.cdev is cdev)), None)


@contextlib.contextmanager
def open_received(received: ReceivedFds, *, backend: Backend | None = None,
                  ) -> Iterator[tuple[Device, IOAS | Container]]:
    """The device of a message, ready for DMA, as
    :func:`~pyvfio.toolkit.attach.open_attached` opens one: from an
    iommufd and a device cdev (bound, and attached to a new IOAS), or from
    a container, a group and a device fd of that group (the sender
    attached them).  Takes the fds it uses from ``received`` (the objects
    own them: closed at the end of the block, device first); yields
    ``(device, space)``.  FdPassError (ENOENT) when the message has
    neither set; the checks of the ``from_fd`` constructors apply.

    Thread safety: as the objects it yields."""
    b = resolve_backend(backend)
    iommufd_fd = _first(received, FdKind.IOMMUFD)
    cdev_fd = _first(received, FdKind.DEVICE, cdev=True)
    container_fd = _first(received, FdKind.CONTAINER)
    group_fd = _first(received, FdKind.GROUP)
    device_fd = _first(received, FdKind.DEVICE, cdev=False)
    with contextlib.ExitStack() as stack:
        if iommufd_fd is not None and cdev_fd is not None:
            iommufd = stack.enter_context(_adopt(
                received, iommufd_fd, lambda fd: IommuFd.from_fd(fd, backend=b)))
            device = stack.enter_context(_adopt(
                received, cdev_fd, lambda fd: Device.from_fd(fd, name=cdev_fd.bdf, backend=b)))
            device.bind(iommufd)
            ioas = iommufd.ioas()
            device.attach(ioas)
            yield device, ioas
            return
        if container_fd is not None and group_fd is not None and device_fd is not None:
            container = stack.enter_context(_adopt(
                received, container_fd, lambda fd: Container.from_fd(
                    fd, iommu_type=container_fd.iommu_type, backend=b)))
            group = stack.enter_context(_adopt(
                received, group_fd, lambda fd: Group.from_fd(fd, container=container,
                                                            backend=b)))
            device = _adopt(received, device_fd, lambda fd: Device.from_fd(
                fd, name=device_fd.bdf, group=group, backend=b))
            yield device, container
            return
        raise _error(f"no device to open in {[k.value for k in received.kinds()]}: an iommufd "
                     "and a device cdev, or a container, a group and a device fd, are needed",
                     errno.ENOENT)
