"""KernelBackend on this machine: syscalls that need no VFIO hardware."""

from __future__ import annotations

import errno
import os
import select

import pytest

from pyvfio.backend.base import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from pyvfio.backend.kernel import KernelBackend


@pytest.fixture
def kb() -> KernelBackend:
    return KernelBackend()


def test_ioctl_errno_is_preserved(kb: KernelBackend) -> None:
    fd = kb.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            kb.ioctl(fd, 0x3B64)  # VFIO_GET_API_VERSION on a non-vfio file
        assert info.value.errno == errno.ENOTTY
    finally:
        kb.close(fd)


def test_ioctl_on_closed_fd_is_ebadf(kb: KernelBackend) -> None:
    fd = kb.open("/dev/null", os.O_RDONLY)
    kb.close(fd)
    with pytest.raises(OSError) as info:
        kb.ioctl(fd, 0x3B64)
    assert info.value.errno == errno.EBADF


def test_anonymous_mmap_accessors_have_exact_width(kb: KernelBackend) -> None:
    m = kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    try:
        assert m.address % 4096 == 0 and m.length == 4096
        m.write(0, 8, 0x1122334455667788)
        assert m.read(0, 1) == 0x88
        assert m.read(0, 2) == 0x7788
        assert m.read(0, 4) == 0x55667788
        assert m.read(4, 4) == 0x11223344
        m.write(2, 2, 0xABCD)
        assert m.read(0, 8) == 0x11223344ABCD7788
        m.write_bytes(100, b"hello")
        assert m.read_bytes(100, 5) == b"hello"
        assert bytes(m.buffer()[100:105]) == b"hello"
    finally:
        m.close()
    assert m.closed
    m.close()  # idempotent
    with pytest.raises(ValueError, match="unmapped"):
        m.read(0, 4)


@pytest.mark.parametrize(
    "offset, width, message",
    [(4096, 4, "outside"), (-4, 4, "outside"), (1, 4, "aligned"), (0, 3, "width")],
)
def test_mmap_access_checks(kb: KernelBackend, offset: int, width: int, message: str) -> None:
    with kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS) as m:
        with pytest.raises(ValueError, match=message):
            m.read(offset, width)


def test_write_value_must_fit(kb: KernelBackend) -> None:
    with kb.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS) as m:
        with pytest.raises(ValueError, match="does not fit"):
            m.write(0, 1, 0x100)


def test_mmap_failure_raises_errno(kb: KernelBackend) -> None:
    with pytest.raises(OSError) as info:
        kb.mmap(4096, PROT_READ, MAP_PRIVATE, fd=999999)
    assert info.value.errno == errno.EBADF


def test_eventfd_is_real_and_selectable(kb: KernelBackend) -> None:
    fd = kb.eventfd()
    try:
        assert select.select([fd], [], [], 0)[0] == []
        os.eventfd_write(fd, 3)
        assert select.select([fd], [], [], 0)[0] == [fd]
        assert int.from_bytes(kb.read(fd, 8), "little") == 3
    finally:
        kb.close(fd)


def test_memfd_and_pread_pwrite(kb: KernelBackend) -> None:
    fd = kb.memfd_create("pyvfio-test")
    try:
        kb.ftruncate(fd, 8192)
        assert kb.pwrite(fd, b"abc", 4096) == 3
        assert kb.pread(fd, 3, 4096) == b"abc"
    finally:
        kb.close(fd)


def test_sysfs_reads_real_files(kb: KernelBackend, tmp_path: os.PathLike[str]) -> None:
    attr = os.path.join(tmp_path, "vendor")
    with open(attr, "w") as f:
        f.write("0x1234\n")
    assert kb.sysfs_read(attr) == "0x1234"
    kb.sysfs_write(attr, "0x8086")
    assert kb.sysfs_read(attr) == "0x8086"
    os.symlink("../../bus/pci/drivers/vfio-pci", os.path.join(tmp_path, "driver"))
    assert kb.sysfs_basename_of_link(os.path.join(tmp_path, "driver")) == "vfio-pci"
    assert kb.sysfs_basename_of_link(os.path.join(tmp_path, "nothing")) is None
    assert kb.sysfs_listdir(str(tmp_path)) == ["driver", "vendor"]


def test_limits(kb: KernelBackend) -> None:
    assert kb.page_size == os.sysconf("SC_PAGE_SIZE")
    limit = kb.memlock_limit()
    assert limit == -1 or limit >= 0
