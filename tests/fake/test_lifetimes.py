"""Lifetimes that cannot go wrong: an object is closed exactly when the
kernel object behind it is gone.

* a raw IOMMU_DESTROY of an ID marks the object owning it closed (its
  later close must not destroy the object that reused the ID);
* a DMA buffer does not close while it is mapped;
* a failed unmap or IOMMU_DESTROY leaves the object open (and
  ``close()`` can be retried);
* a map whose result could not be copied out is unmapped again.
"""

from __future__ import annotations

import copy
import errno
import sys
from pathlib import Path
from typing import Iterator

import pytest

import pyvfio
from pyvfio import Device, DmaBuffer, DmaPool, IommuFd, IovaAllocator, VfioError
from pyvfio._uapi import ffi, lib
from pyvfio.errors import InvalidArgumentError
from pyvfio.fake import System
from pyvfio.fake.machine.topology import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toolkit_env import EDU_ID, bind_vfio, find, open_cdev, open_group  # noqa: E402

PAGE = 4096
IOVA = 0x100000


@pytest.fixture
def system() -> Iterator[System]:
    topo = copy.deepcopy(load("default"))
    machine = System(topo)
    bind_vfio(machine.backend, find(machine.backend, EDU_ID))
    yield machine
    assert not machine.backend.open_files
    assert machine.user_memory.pinned_pages == 0


def edu(system: System) -> str:
    return find(system.backend, EDU_ID)


# -- 1. raw IOMMU_DESTROY and reused IDs ---------------------------------------------------------
def test_raw_destroy_closes_the_owner_not_the_next_object(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd:
        stale = iommufd.ioas()
        iommufd.destroy(stale.id)  # IOMMU_DESTROY by number
        assert stale.closed
        fresh = iommufd.ioas()
        assert fresh.id == stale.id  # the kernel reuses the ID
        stale.close()  # nothing to do: it must not destroy ``fresh``
        assert fresh.iova_ranges()  # still alive in the kernel
        fresh.close()
        assert fresh.closed


def test_raw_destroy_of_a_hwpt_frees_its_parent(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd, \
            Device.open(edu(system), backend=system.backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        hwpt = iommufd.hwpt_alloc(dev, ioas)
        iommufd.destroy(hwpt.id)
        assert hwpt.closed and not ioas._dependents
        again = iommufd.hwpt_alloc(dev, ioas)
        assert again.id == hwpt.id
        ioas.close()  # destroys ``again`` first (it keeps the IOAS busy), once
        assert again.closed and ioas.closed


def test_raw_destroy_refused_leaves_the_owner_open(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd, \
            Device.open(edu(system), backend=system.backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        with pytest.raises(VfioError) as info:
            iommufd.destroy(ioas.id)
        assert info.value.errno == errno.EBUSY and not ioas.closed
        ioas.close()
        assert ioas.closed


def test_an_id_reused_behind_pyvfios_back_closes_the_stale_object(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd:
        stale = iommufd.ioas()
        # destroyed without pyvfio knowing (another handle on the same fd)
        system.backend.ioctl(iommufd.fd, lib.IOMMU_DESTROY, _destroy_cmd(stale.id))
        assert not stale.closed
        fresh = iommufd.ioas()
        assert fresh.id == stale.id and stale.closed
        stale.close()
        assert fresh.iova_ranges()


def _destroy_cmd(object_id: int) -> object:
    cmd = ffi.new("struct iommu_destroy *")
    cmd.size = ffi.sizeof(cmd[0])
    cmd.id = object_id
    return cmd


# -- 2. a mapped buffer does not close ---------------------------------------------------------
@pytest.mark.parametrize("path", ["cdev", "legacy"])
def test_mapped_buffer_refuses_to_close(system: System, path: str) -> None:
    opener = open_cdev if path == "cdev" else open_group
    buf = DmaBuffer(2 * PAGE, backend=system.backend)
    with opener(system.backend, edu(system)) as (_dev, space):
        mapping = pyvfio.map_buffer(space, buf, IOVA)
        assert buf.mappings == (mapping,) and mapping.buffer is buf
        with pytest.raises(InvalidArgumentError, match=r"still mapped at IOVA 0x100000 in ") \
                as info:
            buf.close()
        assert info.value.errno == errno.EBUSY and not buf.closed
        assert not mapping.closed and space.mappings == (mapping,)
        buf.close(unmap=True)  # unmaps, then frees the memory
        assert buf.closed and mapping.closed and not space.mappings
    # a buffer whose space closed is free again
    other = DmaBuffer(PAGE, backend=system.backend)
    with opener(system.backend, edu(system)) as (_dev, space):
        pyvfio.map_buffer(space, other, IOVA)
    assert other.mappings == ()
    other.close()


def test_buffer_knows_mappings_in_several_spaces(system: System) -> None:
    with DmaBuffer(PAGE, backend=system.backend) as buf:
        with open_cdev(system.backend, edu(system)) as (_dev, ioas):
            a = ioas.map(buf, IOVA)
            b = ioas.map(buf, 2 * IOVA)
            assert buf.mappings == (a, b)
            ioas.unmap(IOVA, PAGE)
            assert buf.mappings == (b,) and a.closed
        assert buf.mappings == () and b.closed


def test_pool_close_with_failed_unmap_keeps_buffer(system: System) -> None:
    with open_cdev(system.backend, edu(system)) as (_dev, ioas):
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        pool = DmaPool.create(ioas, 0x4000, allocator=iovas)
        mapping, buf = pool.mapping, pool.buffer
        assert mapping is not None
        system.fault_inject.fail_nth(1, kinds={"copy_from_user"})
        with pytest.raises(VfioError, match="IOMMU_IOAS_UNMAP"):
            pool.close()
        # the memory stays: the device may still reach it
        assert not mapping.closed and not buf.closed and buf.mappings == (mapping,)
        buf.close(unmap=True)
        assert mapping.closed and buf.closed


# -- 3. a failed unmap leaves the mapping open -------------------------------------------------
@pytest.mark.parametrize("path", ["cdev", "legacy"])
def test_failed_unmap_keeps_the_mapping(system: System, path: str) -> None:
    opener = open_cdev if path == "cdev" else open_group
    with DmaBuffer(2 * PAGE, backend=system.backend) as buf, \
            opener(system.backend, edu(system)) as (_dev, space):
        mapping = space.map(buf, IOVA)
        pinned = system.user_memory.pinned_pages
        system.fault_inject.fail_nth(1, kinds={"copy_from_user"})
        with pytest.raises(VfioError, match="UNMAP"):
            mapping.close()
        assert not mapping.closed and space.mappings == (mapping,)
        assert system.user_memory.pinned_pages == pinned  # the kernel kept it
        mapping.close()  # retried
        assert mapping.closed and not space.mappings
        assert system.user_memory.pinned_pages == pinned - 2
        mapping.close()  # idempotent


def test_parent_close_reports_a_failed_child_and_releases_itself(system: System) -> None:
    with DmaBuffer(PAGE, backend=system.backend) as buf, \
            IommuFd(backend=system.backend) as iommufd:
        ioas = iommufd.ioas()
        first = ioas.map(buf, IOVA)
        second = ioas.map(buf, 2 * IOVA)
        # every copy in fails: the one-call unmap of everything, each
        # mapping's own unmap, the IOMMU_DESTROY
        system.fault_inject.fail_every({"copy_from_user"})
        with pytest.raises(VfioError, match="UNMAP"):
            ioas.close()
        assert not ioas.closed and not first.closed and not second.closed
        system.fault_inject.clear()
        ioas.close()
        assert ioas.closed and first.closed and second.closed


def test_iommufd_close_marks_failed_children_closed(system: System) -> None:
    buf = DmaBuffer(PAGE, backend=system.backend)
    iommufd = IommuFd(backend=system.backend)
    ioas = iommufd.ioas()
    mapping = ioas.map(buf, IOVA)
    system.fault_inject.fail_every({"copy_from_user"})
    try:
        with pytest.raises(VfioError):
            iommufd.close()
    finally:
        system.fault_inject.clear()
    # the fd is closed: the kernel dropped the IOAS and its mappings with it
    assert iommufd.closed and ioas.closed and mapping.closed and buf.mappings == ()
    buf.close()


# -- 4. a map whose IOVA could not be copied out -------------------------------------------------
def test_map_copy_out_failure_is_unmapped_again(system: System) -> None:
    with DmaBuffer(PAGE, backend=system.backend) as buf, \
            open_cdev(system.backend, edu(system)) as (_dev, ioas):
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        pinned = system.user_memory.pinned_pages
        system.fault_inject.fail_nth(1, kinds={"copy_to_user"})
        with pytest.raises(VfioError, match="IOMMU_IOAS_MAP") as info:
            pyvfio.map_buffer(ioas, buf, allocator=iovas)
        assert not getattr(info.value, "iova_still_mapped", False)
        assert system.user_memory.pinned_pages == pinned and not iovas.allocated
        mapping = pyvfio.map_buffer(ioas, buf, allocator=iovas)  # same IOVA: no EEXIST
        mapping.close()


def test_map_copy_out_failure_keeps_the_iova_when_the_undo_fails(system: System) -> None:
    with DmaBuffer(PAGE, backend=system.backend) as buf, \
            open_cdev(system.backend, edu(system)) as (_dev, ioas):
        iovas = IovaAllocator.for_ioas(ioas, limit=1 << 28)
        # the copy-out of the map fails, then the copy-in of the undo
        fi = system.fault_inject
        fi.fail_nth(1, kinds={"copy_to_user"})
        real = ioas.iommufd._ioctl
        calls: list[str] = []

        def failing_undo(name: str, *args: object, **kw: object) -> int:
            calls.append(name)
            if name == "IOMMU_IOAS_UNMAP":
                fi.fail_nth(1, kinds={"copy_from_user"})
            return real(name, *args, **kw)  # type: ignore[arg-type]

        ioas.iommufd._ioctl = failing_undo  # type: ignore[method-assign]
        try:
            with pytest.raises(VfioError, match="IOMMU_IOAS_MAP") as info:
                pyvfio.map_buffer(ioas, buf, allocator=iovas)
        finally:
            del ioas.iommufd._ioctl
            fi.clear()
        assert calls == ["IOMMU_IOAS_MAP", "IOMMU_IOAS_UNMAP"]
        assert getattr(info.value, "iova_still_mapped", False)
        assert len(iovas.allocated) == 1  # not handed out again
        # the kernel's mapping goes with the IOAS


# -- 5. a failed IOMMU_DESTROY leaves the object open ---------------------------------------------
def test_failed_destroy_keeps_the_ioas_open(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd:
        ioas = iommufd.ioas()
        system.fault_inject.fail_nth(1, kinds={"copy_from_user"})
        with pytest.raises(VfioError, match="IOMMU_DESTROY"):
            ioas.close()
        assert not ioas.closed and ioas.iova_ranges()
        ioas.close()
        assert ioas.closed
        fresh = iommufd.ioas()
        assert fresh.id == ioas.id  # the kernel really destroyed it


def test_failed_destroy_of_a_hwpt_keeps_it_a_dependent(system: System) -> None:
    with IommuFd(backend=system.backend) as iommufd, \
            Device.open(edu(system), backend=system.backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        hwpt = iommufd.hwpt_alloc(dev, ioas)
        system.fault_inject.fail_nth(1, kinds={"copy_from_user"})
        with pytest.raises(VfioError, match="IOMMU_DESTROY"):
            hwpt.close()
        assert not hwpt.closed and id(hwpt) in ioas._dependents
        ioas.close()  # destroys the HWPT first
        assert hwpt.closed and ioas.closed


def test_a_copy_of_a_mapping_keeps_the_buffer_mapped(system: System) -> None:
    with DmaBuffer(PAGE, backend=system.backend) as buf, \
            IommuFd(backend=system.backend) as iommufd:
        src, dst = iommufd.ioas(), iommufd.ioas()
        original = src.map(buf, IOVA)
        copied = dst.copy(original, IOVA)
        assert copied.buffer is buf and set(buf.mappings) == {original, copied}
        original.close()
        with pytest.raises(InvalidArgumentError, match="still mapped"):
            buf.close()  # the copy still maps its pages
        copied.close()
        assert buf.mappings == ()
