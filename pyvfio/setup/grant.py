"""``pyvfio grant``: hand a device to an unprivileged driver.

A small privileged helper: it checks a policy of which devices each user
may have, connects to the Unix socket a user's process listens on, checks
with ``SO_PEERCRED`` that the process runs as that user, binds the device
to vfio-pci (:mod:`pyvfio.setup.binding`), opens it and sends the fds
(:mod:`pyvfio.toolkit.fdpass`): an iommufd and the device cdev, or -- with
``--legacy``, or when the kernel gives the device no cdev -- a type1
container, the group attached to it and the group's device fd.  The user's
process opens nothing itself::

    pyvfio grant 0000:01:00.0 --user alice --socket /run/user/1000/edu.sock

The policy (``/etc/pyvfio/grant.policy``, ``--policy``) is a text file,
one rule per line, ``#`` starts a comment::

    # user or uid    devices: PCI addresses or vendor:device IDs
    alice            0000:01:00.0 0000:01:00.1
    1000             1234:11e8

It decides who gets what, so it is read as untrusted input: the file and
its folder are opened without following symbolic links and must belong to
root (or the user running grant) and not be writable by group or others;
a rule that does not parse (an unknown user, a malformed device) rejects
the whole file, with the line named.  Nothing is granted without a rule.

Exit codes:

====  ==================================================================
0     the fds were sent
2     bad usage: unknown option or user, malformed device address
3     the operation failed: the kernel refused, the socket could not be
      reached, the device could not be opened (one line says what)
4     the device is in use by the host (binding refused)
5     refused: the policy does not give the device to the user, or the
      process on the socket does not run as the user
6     the policy file is unsafe (a symbolic link, someone else's,
      writable by others) or malformed
====  ==================================================================
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pwd
import re
import socket
import stat
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from ..backend import Backend, default_backend
from ..errors import InvalidArgumentError, VfioError

# The objects, the fd passing and the binding code are imported where they
# are used: building the ``pyvfio`` command's parser imports this module.

__all__ = ["POLICY_PATH", "GrantPolicy", "PolicyRule", "PolicyError", "GrantRefused",
           "GrantResult", "grant", "peer_credentials", "add_grant_parser", "cmd_grant",
           "EXIT_OK", "EXIT_USAGE", "EXIT_FAILED", "EXIT_IN_USE", "EXIT_REFUSED", "EXIT_POLICY"]

#: The default policy file.
POLICY_PATH = "/etc/pyvfio/grant.policy"
#: Exit codes of ``pyvfio grant`` (see the module documentation).
EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_IN_USE, EXIT_REFUSED, EXIT_POLICY = 0, 2, 3, 4, 5, 6

_MAX_POLICY_BYTES = 1 << 16
_ID = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


class PolicyError(VfioError):
    """The policy file cannot be trusted or read: unsafe (a symbolic link,
    someone else's, writable by others), missing or malformed.  One line
    naming the file (and the line) and what is wrong.

    Thread safety: an exception value; nothing shared.
    """


class GrantRefused(VfioError):
    """The grant is refused: the policy does not give the device to the
    user, or the process on the socket is not the user's.

    Thread safety: an exception value; nothing shared.
    """


@dataclass(frozen=True)
class PolicyRule:
    """One line of the policy: a user and the devices it may receive.

    Thread safety: immutable; safe to share.
    """

    uid: int  #: the user's ID
    bdfs: frozenset[str]  #: PCI addresses, as sysfs spells them
    ids: frozenset[tuple[int, int]]  #: (vendor, device) IDs
    line: int  #: where the rule is in the file (1-based)


@dataclass(frozen=True)
class GrantPolicy:
    """Which devices each user may be granted (:meth:`load` reads it).

    Thread safety: immutable; safe to share.
    """

    path: str  #: where it was read from
    rules: tuple[PolicyRule, ...]  #: the rules, in file order

    @classmethod
    def parse(cls, text: str, path: str = "<policy>") -> GrantPolicy:
        """The rules of ``text``; PolicyError (EINVAL) naming the first bad
        line (unknown user, malformed device, a user without devices)."""
        from ..core import sysfs

        rules = []
        for number, raw in enumerate(text.splitlines(), 1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue

            def bad(problem: str) -> PolicyError:
                return PolicyError(errno.EINVAL, f"policy {_shown(path)} line {number}: {problem}")

            who, devices = words[0], words[1:]
            if who.isdigit():
                uid = int(who)
                if uid >= 0xFFFFFFFF:
                    raise bad(f"uid {who} is out of range")
            elif _USER.fullmatch(who):
                try:
                    uid = pwd.getpwnam(who).pw_uid
                except KeyError:
                    raise bad(f"no user {who!r}") from None
            else:
                raise bad(f"{_shown(who)} is not a user name or uid")
            if not devices:
                raise bad(f"no devices for {who}")
            bdfs, ids = set(), set()
            for word in devices:
                match = _ID.fullmatch(word)
                if match:
                    ids.add((int(match.group(1), 16), int(match.group(2), 16)))
                    continue
                try:
                    bdfs.add(sysfs.normalize_bdf(word))
                except InvalidArgumentError:
                    raise bad(f"{_shown(word)} is neither a PCI address (0000:01:00.0) "
                              "nor a vendor:device ID (1234:11e8)") from None
            rules.append(PolicyRule(uid, frozenset(bdfs), frozenset(ids), number))
        return cls(path, tuple(rules))

    @classmethod
    def load(cls, path: str = POLICY_PATH) -> GrantPolicy:
        """Read and parse the policy file at ``path``: its folder and the
        file are opened without following symbolic links and must be a
        folder and a regular file of root's (or this user's) that group
        and others cannot write; PolicyError otherwise."""
        folder = os.path.dirname(path) or "."
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dfd = os.open(folder, flags)
        except OSError as e:
            link = e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder)
            raise PolicyError(e.errno or errno.EIO, f"policy {_shown(path)}: "
                              + ("its folder is a symbolic link" if link
                                 else f"its folder: {e.strerror}")) from None
        try:
            _check_safe(os.fstat(dfd), path, "its folder", stat.S_ISDIR)
            try:
                fd = os.open(os.path.basename(path),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            except OSError as e:
                problem = "the file is a symbolic link" if e.errno == errno.ELOOP else e.strerror
                raise PolicyError(e.errno or errno.EIO, f"policy {_shown(path)}: {problem}") \
                    from None
        finally:
            os.close(dfd)
        try:
            _check_safe(os.fstat(fd), path, "the file", stat.S_ISREG)
            data = os.read(fd, _MAX_POLICY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_POLICY_BYTES:
            raise PolicyError(errno.EFBIG, f"policy {_shown(path)}: longer than "
                                           f"{_MAX_POLICY_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(errno.EINVAL, f"policy {_shown(path)}: not UTF-8 text "
                                            f"(byte {e.start})") from None
        return cls.parse(text, path)

    def allows(self, uid: int, bdf: str, ident: tuple[int, int] | None) -> bool:
        """Whether a rule gives device ``bdf`` (vendor:device ``ident``) to
        ``uid``."""
        return any(rule.uid == uid and (bdf in rule.bdfs or (ident is not None
                                                              and ident in rule.ids))
                   for rule in self.rules)


def _shown(text: str) -> str:
    return text if text.isprintable() else repr(text)


def _check_safe(st: os.stat_result, path: str, name: str, kind: Any) -> None:
    """Refuse a folder or file someone other than root (or this user) could
    have written."""
    what = "folder" if kind is stat.S_ISDIR else "regular file"
    if not kind(st.st_mode):
        raise PolicyError(errno.EINVAL, f"policy {_shown(path)}: {name} is not a {what}")
    if st.st_uid not in (0, os.geteuid()):
        raise PolicyError(errno.EPERM, f"policy {_shown(path)}: {name} belongs to uid "
                                       f"{st.st_uid}, not to root or this user")
    if st.st_mode & 0o022:
        raise PolicyError(errno.EPERM, f"policy {_shown(path)}: {name} is writable by others "
                                       f"(mode {stat.S_IMODE(st.st_mode):04o})")


def resolve_user(spec: str) -> tuple[str, int]:
    """``(name, uid)`` of a user name or numeric uid; InvalidArgumentError
    for an unknown one."""
    if spec.isdigit():
        uid = int(spec)
        try:
            return pwd.getpwuid(uid).pw_name, uid
        except (KeyError, OverflowError):
            return spec, uid
    try:
        return spec, pwd.getpwnam(spec).pw_uid
    except KeyError:
        raise InvalidArgumentError(f"no user {spec!r}") from None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected
    Unix socket (SO_PEERCRED: for a listening peer, as it was when it
    called listen)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


@dataclass
class GrantResult:
    """What :func:`grant` did.

    Thread safety: plain data; not shared.
    """

    bdf: str  #: the device
    uid: int  #: the user it went to
    pid: int  #: the receiving process
    path: str  #: "cdev" (iommufd + device cdev) or "group" (container + group + device)
    kinds: list[str] = field(default_factory=list)  #: the fds sent, in order
    bound: bool = False  #: whether grant moved the device to vfio-pci

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "uid": self.uid, "pid": self.pid, "path": self.path,
                "fds": self.kinds, "bound": self.bound}


def _ident(b: Backend, bdf: str) -> tuple[int, int] | None:
    from ..core import sysfs

    try:
        base = f"{sysfs.PCI_DEVICES}/{bdf}"
        return int(b.sysfs_read(f"{base}/vendor"), 16), int(b.sysfs_read(f"{base}/device"), 16)
    except (OSError, ValueError):
        return None


def grant(bdf: str, *, uid: int, socket_path: str, policy: GrantPolicy, legacy: bool = False,
          backend: Backend | None = None, timeout: float = 10.0) -> GrantResult:
    """Give device ``bdf`` to the process of user ``uid`` listening on
    ``socket_path``: check ``policy``, connect, check the peer's uid
    (SO_PEERCRED), bind the device to vfio-pci, open it and send its fds.
    Raises GrantRefused (EPERM) before anything changes when the policy
    or the peer says no; :class:`~pyvfio.setup.host_use.DeviceInUseError`,
    :class:`~pyvfio.setup.binding.BindError` or a VfioError when binding
    or opening fails (the peer is told, and a device grant moved to
    vfio-pci is given its driver back)."""
    from ..core import sysfs
    from ..toolkit.fdpass import send_error
    from . import binding

    b = backend if backend is not None else default_backend()
    bdf = sysfs.normalize_bdf(bdf)
    ident = _ident(b, bdf)
    if not policy.allows(uid, bdf, ident):
        shown = f" ({ident[0]:04x}:{ident[1]:04x})" if ident else ""
        raise GrantRefused(errno.EPERM, f"policy {_shown(policy.path)} does not give "
                                        f"{bdf}{shown} to uid {uid}", target=f"device {bdf}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as e:
            raise VfioError(e.errno or errno.EIO, f"cannot connect to {_shown(socket_path)}: "
                                                  f"{e.strerror}") from None
        pid, peer_uid, _gid = peer_credentials(sock)
        if peer_uid != uid:
            raise GrantRefused(errno.EPERM, f"the process on {_shown(socket_path)} (pid {pid}) "
                                            f"runs as uid {peer_uid}, not {uid}")
        result = GrantResult(bdf, uid, pid, "cdev")
        try:
            bound = binding.bind(bdf, backend=b)
            result.bound = bound.changed
            try:
                _send_device(sock, b, bdf, legacy, result)
            except BaseException:
                if result.bound:
                    try:
                        binding.restore(bdf, backend=b)
                    except VfioError:
                        pass  # the first error is the one to report
                raise
        except (VfioError, OSError) as exc:
            try:
                send_error(sock, str(exc), exc.errno or errno.EIO)
            except OSError:
                pass
            raise
        return result


def _send_device(sock: socket.socket, b: Backend, bdf: str, legacy: bool,
                 result: GrantResult) -> None:
    """Open ``bdf`` on the path asked for and send its fds; the fds of
    this process are closed before returning (the kernel holds the files
    in flight)."""
    from ..core import sysfs
    from ..core.container import Container, IommuType
    from ..core.device import Device
    from ..core.group import Group
    from ..core.iommufd import IommuFd
    from ..toolkit.fdpass import FdKind, PassedFd, send_fds

    if not legacy:
        try:
            sysfs.device_cdev_path(bdf, b)
        except VfioError:
            legacy = True  # the kernel gives the device no cdev: the group path
    if not legacy:
        with IommuFd(backend=b) as iommufd, Device.open(bdf, backend=b) as device:
            items = [PassedFd(FdKind.IOMMUFD, iommufd.fd),
                     PassedFd(FdKind.DEVICE, device.fd, bdf=bdf, cdev=True)]
            send_fds(sock, items, note={"granted_by": "pyvfio grant"})
    else:
        result.path = "group"
        with Container(backend=b) as container, Group.for_device(bdf, backend=b) as group:
            group.set_container(container)
            container.set_iommu(IommuType.TYPE1v2)
            with group.open_device(bdf) as device:
                items = [PassedFd(FdKind.CONTAINER, container.fd,
                                  iommu_type=int(IommuType.TYPE1v2)),
                         PassedFd(FdKind.GROUP, group.fd, group=group.id if group.id >= 0
                                  else None),
                         PassedFd(FdKind.DEVICE, device.fd, bdf=bdf, cdev=False)]
                send_fds(sock, items, note={"granted_by": "pyvfio grant"})
    result.kinds = [item.kind.value for item in items]


# -- the command ---------------------------------------------------------------------------
def add_grant_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``grant`` to the ``pyvfio`` command's subparsers."""
    doc = __doc__ or ""
    p = sub.add_parser(
        "grant", parents=[common],
        help="bind a device and hand its fds to a user's process (unprivileged drivers)",
        description="Bind a device to vfio-pci and send its fds to the process of --user "
                    "listening on --socket, if the policy gives that user the device.",
        epilog=doc[doc.index("The policy"):].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("device", metavar="BDF", help="the device's PCI address")
    p.add_argument("--user", required=True, metavar="NAME|UID",
                   help="the user whose process receives the fds")
    p.add_argument("--socket", required=True, metavar="PATH",
                   help="the Unix stream socket that process listens on")
    p.add_argument("--policy", default=POLICY_PATH, metavar="FILE",
                   help=f"who may have which devices (default {POLICY_PATH})")
    p.add_argument("--legacy", action="store_true",
                   help="send a type1 container, the group and its device fd instead of "
                        "an iommufd and the device cdev")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the socket (default 10)")
    p.set_defaults(func=cmd_grant)


def _fail(args: argparse.Namespace, code: int, kind: str, message: str,
          err: int | None = None) -> int:
    print(f"pyvfio grant: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "exit_code": code,
                          "error": {"kind": kind, "message": message, "errno": err}}))
    return code


def cmd_grant(args: argparse.Namespace, backend: Backend | None) -> int:
    """Run ``pyvfio grant``; returns its exit code (one line on stderr for
    an error)."""
    from ..core import sysfs
    from .host_use import DeviceInUseError

    try:
        name, uid = resolve_user(args.user)
        bdf = sysfs.normalize_bdf(args.device)
    except InvalidArgumentError as exc:
        return _fail(args, EXIT_USAGE, "usage", str(exc), exc.errno)
    if backend is None and getattr(args, "fake", None):
        from ..fake import System
        from ..fake.machine.topology import TopologyError, load
        try:
            backend = System(load(args.fake)).backend
        except TopologyError as exc:
            return _fail(args, EXIT_USAGE, "usage", f"--fake {args.fake}: {exc}")
    try:
        policy = GrantPolicy.load(args.policy)
        result = grant(bdf, uid=uid, socket_path=args.socket, policy=policy,
                       legacy=args.legacy, backend=backend, timeout=args.timeout)
    except PolicyError as exc:
        return _fail(args, EXIT_POLICY, "policy", str(exc), exc.errno)
    except GrantRefused as exc:
        return _fail(args, EXIT_REFUSED, "refused", str(exc), exc.errno)
    except DeviceInUseError as exc:
        return _fail(args, EXIT_IN_USE, "in use", str(exc).splitlines()[0], exc.errno)
    except InvalidArgumentError as exc:
        return _fail(args, EXIT_USAGE, "usage", str(exc), exc.errno)
    except OSError as exc:  # VfioError, socket errors
        return _fail(args, EXIT_FAILED, "failed", str(exc).splitlines()[0], exc.errno)
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, "exit_code": EXIT_OK,
                          "grant": dict(result.as_dict(), user=name)}))
    else:
        print(f"granted {result.bdf} to {name} (uid {uid}, pid {result.pid}) over "
              f"{args.socket}: {', '.join(result.kinds)}")
    return EXIT_OK
