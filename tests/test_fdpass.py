"""Unprivileged drivers on the fake kernel: the ``from_fd`` constructors,
fd passing (pyvfio.toolkit.fdpass) and ``pyvfio grant``.  The driver code
(tests/fdpass_env.py) is the one tests/kernel/test_real_fdpass.py runs
as an unprivileged user in the test VM."""

from __future__ import annotations

import array
import errno
import json
import os
import socket
import struct
import threading
from typing import Any, Iterator

import pytest
from fdpass_env import drive_edu, listen, policy_file

import pyvfio
from pyvfio import Container, Device, Group, IommuFd
from pyvfio.fake import System
from pyvfio.setup import cli
from pyvfio.setup.grant import (
    EXIT_OK,
    EXIT_POLICY,
    EXIT_REFUSED,
    EXIT_USAGE,
    GrantPolicy,
    PolicyError,
)
from pyvfio.toolkit.fdpass import (
    MAGIC,
    FdKind,
    FdPassError,
    PassedFd,
    RemoteError,
    open_received,
    recv_fds,
    send_error,
    send_fds,
)

EDU = "0000:00:02.0"


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def system() -> Iterator[System]:
    s = System("minimal")
    b = s.backend
    b.sysfs_write(f"/sys/bus/pci/devices/{EDU}/driver_override", "vfio-pci")
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    yield s
    assert not b.open_files, f"files left open: {b.open_files}"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


# -- the fake's fd table: fds that travel --------------------------------------------------
def test_a_fake_fd_passed_in_flight_keeps_its_file_until_the_receiver_closes_it(
        system: System, pair: tuple[socket.socket, socket.socket]) -> None:
    b = system.backend
    fd = b.open("/dev/iommu")
    socket.send_fds(pair[0], [b"x"], [fd])
    b.close(fd)
    assert len(b.open_files) == 1          # in flight: still referenced
    _, (got,), _, _ = socket.recv_fds(pair[1], 1, 1)
    st = b.fstat(got)                      # the same file, through the new number
    assert os.major(st.st_rdev) == 10 and st.st_mode & 0o170000 == 0o020000
    b.close(got)
    assert b.open_files == []


def test_a_dup_of_a_fake_fd_names_the_same_file(system: System) -> None:
    b = system.backend
    with IommuFd(backend=b) as iommufd:
        copy = os.dup(iommufd.fd)
        twin = IommuFd.from_fd(copy, backend=b)
        ioas = twin.ioas()
        iommufd.destroy(ioas.id)           # the same context has the ID
        ioas._mark_closed()
        with pytest.raises(pyvfio.IoctlError) as e:
            iommufd.destroy(ioas.id)       # gone from both
        assert e.value.errno == errno.ENOENT
        twin.close()
        assert len(b.open_files) == 1      # the original fd still holds it


def test_a_file_dropped_in_flight_is_released(system: System) -> None:
    b = system.backend
    a, c = socket.socketpair()
    fd = b.open("/dev/vfio/vfio")
    socket.send_fds(a, [b"x"], [fd])
    b.close(fd)
    assert len(b.open_files) == 1
    a.close()
    c.close()                              # the message is dropped with the socket
    assert b.open_files == []


def test_a_child_forked_after_the_open_uses_passed_fds(system: System) -> None:
    """The fake machine is copied into a forked child: fds of files opened
    before the fork reach it over a socket and work there."""
    b = system.backend
    iommufd = IommuFd(backend=b)
    device = Device.open(EDU, backend=b)
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            parent.close()
            with recv_fds(child) as received, open_received(received, backend=b) as (dev, ioas):
                buf = pyvfio.DmaBuffer(0x1000, backend=b)
                mapping = ioas.map(buf)
                code = 0 if dev.dev_id is not None and mapping.iova else 2
        finally:
            os._exit(code)
    child.close()
    send_fds(parent, [PassedFd(FdKind.IOMMUFD, iommufd.fd),
                      PassedFd(FdKind.DEVICE, device.fd, bdf=EDU, cdev=True)])
    _, status = os.waitpid(pid, 0)
    parent.close()
    device.close()
    iommufd.close()
    assert os.waitstatus_to_exitcode(status) == 0


# -- from_fd --------------------------------------------------------------------------------
def test_from_fd_adopts_each_kind_and_checks_what_it_is(system: System) -> None:
    b = system.backend
    with Container(backend=b) as c, Group.for_device(EDU, backend=b) as g:
        g.set_container(c)
        c.set_iommu()
        dfd = g.get_device_fd(EDU)
        c2 = Container.from_fd(os.dup(c.fd), iommu_type=c.iommu_type, backend=b)
        g2 = Group.from_fd(os.dup(g.fd), container=c2, backend=b)
        d2 = Device.from_fd(dfd, name="00:02.0", group=g2, backend=b)
        assert (c2.iommu_type, g2.id, d2.name, d2.path) == (c.iommu_type, g.id, EDU, None)
        assert g2.container is c2 and d2.info.is_pci
        with pytest.raises(pyvfio.InvalidArgumentError, match="not a VFIO device cdev") as e:
            Device.from_fd(g.fd, backend=b)             # a group is no device
        assert e.value.errno == errno.ENOTTY
        with pytest.raises(pyvfio.InvalidArgumentError, match="not a VFIO group"):
            Group.from_fd(c.fd, backend=b)
        with pytest.raises(pyvfio.InvalidArgumentError, match=r"not /dev/iommu"):
            IommuFd.from_fd(c.fd, backend=b)
        with pytest.raises(pyvfio.InvalidArgumentError, match="not an IOMMU model"):
            Container.from_fd(c.fd, iommu_type=99, backend=b)
        g2.close()                                       # closes d2 first
        assert d2.closed
        c2.close()
    with IommuFd(backend=b) as i, Container.from_fd(os.dup(i.fd), backend=b) as compat:
        assert compat.path == "/dev/iommu"
        assert compat.api_version == 0


def test_from_fd_of_a_cdev_learns_its_address_and_binds_as_usual(system: System) -> None:
    b = system.backend
    fd = b.open("/dev/vfio/devices/vfio0")
    with pytest.raises(pyvfio.InvalidArgumentError, match=f"the cdev of {EDU}, not of"):
        Device.from_fd(fd, name="0000:00:03.0", backend=b)
    with IommuFd(backend=b) as iommufd, Device.from_fd(fd, backend=b) as dev:
        assert (dev.name, dev.path) == (EDU, "/dev/vfio/devices/vfio0")
        dev.bind(iommufd)
        dev.attach(iommufd.ioas())


def test_from_fd_ownership(system: System) -> None:
    b = system.backend
    fd = b.open("/dev/iommu")
    borrowed = IommuFd.from_fd(fd, closefd=False, backend=b)
    borrowed.ioas()
    borrowed.close()
    b.fstat(fd)                                          # still open: the caller's
    owned = IommuFd.from_fd(fd, backend=b)
    owned.close()
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF
    assert b.open_files == []


def test_from_fd_refuses_what_is_not_vfio_and_leaves_the_fd_open(system: System) -> None:
    b = system.backend
    r, w = os.pipe()
    efd = os.eventfd(0)
    try:
        for make in (IommuFd.from_fd, Container.from_fd, Group.from_fd, Device.from_fd):
            with pytest.raises(pyvfio.InvalidArgumentError, match="is a pipe") as e:
                make(r, backend=b)  # type: ignore[operator]
            assert e.value.errno == errno.ENOTTY
        with pytest.raises(pyvfio.InvalidArgumentError, match="not a VFIO device"):
            Device.from_fd(efd, backend=b)      # an anonymous file, but not a device
        with pytest.raises(pyvfio.InvalidArgumentError, match="not a file descriptor"):
            IommuFd.from_fd(-1, backend=b)
        with pytest.raises(pyvfio.IoctlError, match="fstat"):
            IommuFd.from_fd(999_999, backend=b)
        for fd in (r, efd):
            os.fstat(fd)                        # nothing was closed
    finally:
        for fd in (r, w, efd):
            os.close(fd)


def test_group_from_fd_with_a_container_checks_the_group_is_attached(system: System) -> None:
    b = system.backend
    with Container(backend=b) as c, Group.for_device(EDU, backend=b) as g:
        with pytest.raises(pyvfio.InvalidArgumentError, match="not attached to a container"):
            Group.from_fd(g.fd, container=c, backend=b)
        assert not g.closed and c.groups == ()


# -- the messages ---------------------------------------------------------------------------
def test_send_and_receive_typed_fds(system: System,
                                    pair: tuple[socket.socket, socket.socket]) -> None:
    b = system.backend
    with IommuFd(backend=b) as i, Device.open(EDU, backend=b) as d:
        send_fds(pair[0], [PassedFd(FdKind.IOMMUFD, i.fd),
                           PassedFd(FdKind.DEVICE, d.fd, bdf=EDU, cdev=True)],
                 note={"why": "test"})
    with recv_fds(pair[1]) as got:
        assert [(p.kind, p.bdf, p.cdev) for p in got.items] == [
            (FdKind.IOMMUFD, None, None), (FdKind.DEVICE, EDU, True)]
        assert got.note == {"why": "test"}
        kept = got.take(FdKind.DEVICE, EDU)
        assert len(got) == 1
    b.fstat(kept.fd)                              # taken: not closed with the rest
    b.close(kept.fd)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_open_received_drives_edu_on_both_paths(system: System, kind: int) -> None:
    b = system.backend
    for legacy in (False, True):
        a, c = socket.socketpair(socket.AF_UNIX, kind)
        with a, c:
            if legacy:
                with Container(backend=b) as ct, Group.for_device(EDU, backend=b) as g:
                    g.set_container(ct)
                    ct.set_iommu()
                    with g.open_device(EDU) as d:
                        send_fds(a, [PassedFd(FdKind.CONTAINER, ct.fd, iommu_type=3),
                                     PassedFd(FdKind.GROUP, g.fd, group=g.id),
                                     PassedFd(FdKind.DEVICE, d.fd, bdf=EDU, cdev=False)])
            else:
                with IommuFd(backend=b) as i, Device.open(EDU, backend=b) as d:
                    send_fds(a, [PassedFd(FdKind.IOMMUFD, i.fd),
                                 PassedFd(FdKind.DEVICE, d.fd, bdf=EDU, cdev=True)])
            with recv_fds(c) as got, open_received(got, backend=b) as (dev, space):
                assert isinstance(space, Container) == legacy
                buf = pyvfio.DmaBuffer(0x2000, backend=b)
                mapping = space.map(buf)
                buf[0:4] = b"abcd"
                assert system.devices[EDU].dma_read(mapping.iova, 4) == b"abcd"
                mapping.close()
                buf.close()


def _raw(sock: socket.socket, body: Any, fds: list[int], header: bytes | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = header if header is not None else struct.pack("<8sHHI", MAGIC, 1, 0, len(data))
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([head + data], anc)


@pytest.mark.parametrize("case,err", [
    ("bad json", errno.EPROTO),
    ("count", errno.EPROTO),
    ("kind", errno.EPROTO),
    ("bdf", errno.EPROTO),
    ("magic", errno.EPROTO),
    ("too many", errno.EMSGSIZE),
    ("truncated", errno.ECONNRESET),
    ("error with fds", errno.EPROTO),
])
def test_a_bad_message_closes_every_fd_that_came_with_it(
        pair: tuple[socket.socket, socket.socket], case: str, err: int) -> None:
    a, c = pair
    before = open_fds()
    sent = [os.eventfd(0) for _ in range(3)]
    entry = {"kind": "container"}
    bodies: dict[str, Any] = {
        "bad json": b"{nope",
        "count": {"version": 1, "fds": [entry]},
        "kind": {"version": 1, "fds": [{"kind": "disk"}] * 3},
        "bdf": {"version": 1, "fds": [{"kind": "device", "bdf": "../../x", "cdev": True}] * 3},
        "magic": {"version": 1, "fds": [entry] * 3},
        "too many": {"version": 1, "fds": [entry] * 3},
        "error with fds": {"version": 1, "error": "no", "errno": 1},
    }
    if case == "truncated":
        data = json.dumps({"version": 1, "fds": [entry] * 3}).encode()
        head = struct.pack("<8sHHI", MAGIC, 1, 0, len(data))
        a.sendmsg([head + data[:5]],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent).tobytes())])
        a.shutdown(socket.SHUT_WR)
    else:
        _raw(a, bodies[case], sent, header=b"NOTPYVFD" + bytes(8) if case == "magic" else None)
    for fd in sent:
        os.close(fd)
    with pytest.raises(FdPassError) as e:
        recv_fds(c, max_fds=2 if case == "too many" else 16)
    assert e.value.errno == err
    assert open_fds() == before                 # nothing received stays open


def test_an_error_message_is_raised_as_remote_error(
        pair: tuple[socket.socket, socket.socket]) -> None:
    send_error(pair[0], "not for you\nsecond line", errno.EACCES)
    with pytest.raises(RemoteError, match="the sender refused: not for you$") as e:
        recv_fds(pair[1])
    assert e.value.errno == errno.EACCES


def test_a_closed_peer_and_bad_arguments(pair: tuple[socket.socket, socket.socket]) -> None:
    pair[0].close()
    with pytest.raises(FdPassError, match="closed the socket") as e:
        recv_fds(pair[1])
    assert e.value.errno == errno.ECONNRESET
    with pytest.raises(pyvfio.InvalidArgumentError):
        recv_fds(pair[1], max_fds=0)
    with pytest.raises(FdPassError, match="needs its PCI address"):
        send_fds(pair[1], [PassedFd(FdKind.DEVICE, 0, cdev=True)])
    with pytest.raises(FdPassError, match="send 1 to 253"):
        send_fds(pair[1], [])
    assert PassedFd("group", 3).kind is FdKind.GROUP    # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PassedFd("disk", 3)                               # type: ignore[arg-type]


def test_open_received_without_a_device_closes_what_it_received(
        system: System, pair: tuple[socket.socket, socket.socket]) -> None:
    b = system.backend
    with IommuFd(backend=b) as i:
        send_fds(pair[0], [PassedFd(FdKind.IOMMUFD, i.fd)])
    with recv_fds(pair[1]) as got:
        with pytest.raises(FdPassError, match="no device to open") as e:
            with open_received(got, backend=b):
                pass
        assert e.value.errno == errno.ENOENT and len(got) == 1


# -- pyvfio grant ---------------------------------------------------------------------------
def test_policy_rules(tmp_path: Any) -> None:
    uid = os.getuid()
    policy = GrantPolicy.parse(f"# who  what\n{uid} 00:02.0 1234:11E8  # edu\n\n")
    assert policy.allows(uid, EDU, None) and policy.allows(uid, "0000:00:09.0", (0x1234, 0x11E8))
    assert not policy.allows(uid + 1, EDU, None)
    assert not policy.allows(uid, "0000:00:03.0", (0x8086, 0x10D3))
    for text, problem in ((f"{uid}\n", "no devices"), ("no-such-user-x 1234:11e8", "no user"),
                          (f"{uid} 0000:00:02.9", ".* is neither a PCI address"),
                          ("a/b 1234:11e8", "a/b is not a user name")):
        with pytest.raises(PolicyError, match=f"line 1: {problem}"):
            GrantPolicy.parse(text)


def test_policy_file_must_be_safe(tmp_path: Any) -> None:
    path = policy_file(str(tmp_path / "etc"), f"{os.getuid()} {EDU}\n")
    assert GrantPolicy.load(path).rules[0].bdfs == {EDU}
    os.chmod(path, 0o622)
    with pytest.raises(PolicyError, match="writable by others"):
        GrantPolicy.load(path)
    os.chmod(path, 0o600)
    link = str(tmp_path / "etc" / "link.policy")
    os.symlink(path, link)
    with pytest.raises(PolicyError, match="symbolic link"):
        GrantPolicy.load(link)
    os.symlink(str(tmp_path / "etc"), str(tmp_path / "etc-link"))
    with pytest.raises(PolicyError, match="its folder is a symbolic link"):
        GrantPolicy.load(str(tmp_path / "etc-link" / "grant.policy"))
    os.chmod(str(tmp_path / "etc"), 0o777)
    with pytest.raises(PolicyError, match="its folder is writable by others"):
        GrantPolicy.load(path)
    os.chmod(str(tmp_path / "etc"), 0o700)
    with pytest.raises(PolicyError, match="No such file"):
        GrantPolicy.load(str(tmp_path / "etc" / "missing"))


class _Driver:
    """The unprivileged driver in a thread of this process (the fake
    machine lives here)."""

    def __init__(self, path: str, system: System) -> None:
        self.server = listen(path)
        self.result: dict[str, object] = {}
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = drive_edu(self.server, system.backend, timeout=20)
            except BaseException as exc:  # reported by join()
                self.error = exc
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> dict[str, object]:
        self.thread.join(30)
        self.server.close()
        if self.error is not None:
            raise self.error
        return self.result


@pytest.mark.parametrize("legacy", [False, True])
def test_grant_hands_edu_to_the_users_process(system: System, tmp_path: Any, legacy: bool,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    policy = policy_file(str(tmp_path / "etc"), f"{os.getuid()} 1234:11e8\n")
    sock = str(tmp_path / "edu.sock")
    driver = _Driver(sock, system)
    argv = ["grant", EDU, "--user", str(os.getuid()), "--socket", sock, "--policy", policy,
            "--json"] + (["--legacy"] if legacy else [])
    code = cli.main(argv, backend=system.backend)
    result = driver.join()
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK and out["ok"] and out["grant"]["pid"] == os.getpid()
    assert result["ok"], result
    assert result["kinds"] == (["container", "group", "device"] if legacy
                               else ["iommufd", "device"])


def test_grant_refusals_have_their_exit_codes(system: System, tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    uid = os.getuid()
    sock = str(tmp_path / "edu.sock")
    server = listen(sock)
    with server:
        # the policy gives the device to someone else
        other = policy_file(str(tmp_path / "a"), f"{uid + 1} {EDU}\n")
        assert cli.main(["grant", EDU, "--user", str(uid), "--socket", sock, "--policy", other],
                        backend=system.backend) == EXIT_REFUSED
        assert "does not give 0000:00:02.0 (1234:11e8) to uid" in capsys.readouterr().err
        # the process on the socket is not the named user's
        assert cli.main(["grant", EDU, "--user", str(uid + 1), "--socket", sock,
                         "--policy", other], backend=system.backend) == EXIT_REFUSED
        err = capsys.readouterr().err
        assert f"runs as uid {uid}, not {uid + 1}" in err and len(err.splitlines()) == 1
        # an unsafe policy
        mine = policy_file(str(tmp_path / "b"), f"{uid} {EDU}\n")
        os.chmod(mine, 0o666)
        assert cli.main(["grant", EDU, "--user", str(uid), "--socket", sock, "--policy", mine,
                         "--json"], backend=system.backend) == EXIT_POLICY
        assert json.loads(capsys.readouterr().out)["error"]["kind"] == "policy"
        # bad usage
        assert cli.main(["grant", "zz:zz", "--user", str(uid), "--socket", sock],
                        backend=system.backend) == EXIT_USAGE
        assert cli.main(["grant", EDU, "--user", "no-such-user-x", "--socket", sock],
                        backend=system.backend) == EXIT_USAGE
    # nothing listens: the operation fails
    os.unlink(sock)
    os.chmod(mine, 0o600)
    assert cli.main(["grant", EDU, "--user", str(uid), "--socket", sock, "--policy", mine],
                    backend=system.backend) == 3
    assert "cannot connect" in capsys.readouterr().err
    assert system.backend.sysfs_read(f"/sys/bus/pci/devices/{EDU}/driver_override") == "vfio-pci"
