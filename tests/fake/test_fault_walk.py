"""The failure walk over pyvfio's own sequences on the fake kernel.

After the kernel's iommufd_fail_nth selftest: each sequence -- opening a
device on the cdev and the legacy path up to a DMA mapping, map/unmap,
MSI and MSI-X set-up, a migration -- runs once for every N with the N-th
kernel operation failing (:mod:`pyvfio.fake.fault_inject`), until a run
has fewer operations than N.  Each failure must reach the caller as a
:class:`pyvfio.VfioError`, and once the ``with`` blocks have closed
everything the fake must be as before: no open files, no pinned pages, no
iommufd objects, no type1 mappings, no busy group
(:func:`pyvfio.fake.fault_walk`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import resource
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import pyvfio
from pyvfio import Container, Device, DmaBuffer, Group, IommuFd, IovaAllocator, MigrationState
from pyvfio.fake import System, fault_walk
from pyvfio.fake.fail_nth import FaultWalk, FaultWalkStep, machine_state
from pyvfio.fake import fault_inject
from pyvfio.fake.current import current
from pyvfio.fake.fault_inject import KINDS
from pyvfio.fake.machine.topology import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from toolkit_env import bind_vfio, find, EDU_ID, NVME_ID  # noqa: E402

PAGE = 4096


def machine(migratable: bool = False) -> System:
    """The default machine with edu and the NVMe controller on vfio-pci
    (edu migratable when asked)."""
    topo = copy.deepcopy(load("default"))
    if migratable:
        for dev in topo["devices"]:
            if dev.get("model") == "edu":
                dev["model_migration"] = {"flags": ["STOP_COPY", "P2P", "PRE_COPY"],
                                          "dma_logging": True}
    system = System(topo)
    for ident in (EDU_ID, NVME_ID):
        bind_vfio(system.backend, find(system.backend, ident))
    return system


def clean(system: System) -> dict[str, Any]:
    """What an idle machine looks like; every walk must end here."""
    return machine_state(system)


def walk(system: System, fn: Callable[[], object]) -> FaultWalk:
    """Walk ``fn``, then check the machine is idle again and every step
    clean; returns the walk (its N count is asserted by the callers)."""
    idle = clean(system)
    result = fault_walk(system, fn)
    assert result.steps[-1].injected is None, "the walk did not reach the end"
    result.assert_clean()  # also: the last run, with no failure, succeeded
    assert clean(system) == idle
    assert not system.backend.open_files
    assert system.user_memory.pinned_pages == 0
    return result


@contextlib.contextmanager
def dma_buffer(size: int, backend: Any) -> Iterator[DmaBuffer]:
    """A DMA buffer for a walked sequence: closed with ``unmap=True``, which
    retries an unmap that failed (a buffer does not close while mapped)."""
    buf = DmaBuffer(size, backend=backend)
    try:
        yield buf
    finally:
        buf.close(unmap=True)


# -- the sequences ------------------------------------------------------------------------------
@contextlib.contextmanager
def cdev_ready(system: System, bdf: str) -> Iterator[tuple[Device, Any]]:
    backend = system.backend
    with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        yield dev, ioas


@contextlib.contextmanager
def legacy_ready(system: System, bdf: str) -> Iterator[tuple[Device, Any]]:
    backend = system.backend
    with Container(backend=backend) as c, Group.for_device(bdf, backend=backend) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(bdf) as dev:
            yield dev, c


def map_unmap(dev: Device, space: Any, pages: int = 4, kernel_iova: bool = False) -> None:
    buf = DmaBuffer(pages * PAGE, backend=dev.backend)
    try:
        alloc = None if kernel_iova else IovaAllocator.for_space(space)
        mapping = pyvfio.map_buffer(space, buf, allocator=alloc)
        unmap_checked(space, buf, mapping)
    finally:
        buf.close(unmap=True)  # retries an unmap that failed


def unmap_checked(space: Any, buf: DmaBuffer, mapping: Any) -> None:
    """Close ``mapping``; when the unmap fails the kernel unmapped nothing,
    and pyvfio's side must say so: the mapping open, in its space and its
    buffer, the buffer refusing to close."""
    try:
        mapping.close()
    except pyvfio.VfioError:
        assert not mapping.closed and mapping in space.mappings and mapping in buf.mappings
        with pytest.raises(pyvfio.InvalidArgumentError, match="still mapped"):
            buf.close()
        assert not buf.closed
        raise
    assert mapping not in space.mappings and mapping not in buf.mappings


@contextlib.contextmanager
def compat_ready(system: System, bdf: str) -> Iterator[tuple[Device, Any]]:
    backend = system.backend
    with Container.compat(backend=backend) as c, Group.for_device(bdf, backend=backend) as g:
        g.set_container(c)
        c.set_iommu()
        with g.open_device(bdf) as dev:
            yield dev, c


READY = {"cdev": cdev_ready, "legacy": legacy_ready, "compat": compat_ready}


def kernel_keeps_the_mapping(step: FaultWalkStep) -> bool:
    """iommufd_ioas_map maps, then copies the IOVA out
    (iommufd_ucmd_respond); when that copy fails the mapping stays (the
    kernel does not unwind it).  At an IOVA pyvfio knows (fixed or from an
    allocator) pyvfio unmaps it again before raising; a kernel-chosen IOVA
    it never learnt, so those pages stay pinned while the IOAS lives:
    kernel behaviour, not a leak of the fake or of pyvfio."""
    return (step.injected is not None and step.injected.kind == "copy_to_user"
            and "IOMMU_IOAS_MAP" in str(step.error) and not step.wrong_error
            and all(leak.startswith("pinned pages") for leak in step.leaks))


@pytest.mark.parametrize("path", ["cdev", "legacy", "compat"])
@pytest.mark.parametrize("ident", [EDU_ID, NVME_ID], ids=["edu", "nvme"])
def test_open_to_ready(path: str, ident: tuple[str, str]) -> None:
    """Open, bind/attach (or container and group), map a DMA buffer."""
    system = machine()
    bdf = find(system.backend, ident)

    def sequence() -> None:
        with READY[path](system, bdf) as (dev, space):
            map_unmap(dev, space)

    result = walk(system, sequence)
    assert result.walked > 10


@pytest.mark.parametrize("path", ["cdev", "legacy", "compat"])
def test_map_unmap(path: str) -> None:
    """Map and unmap on a device opened outside the walk, at IOVAs from an
    allocator.  Every failure leaves pyvfio's objects as the kernel left
    its own: a failed unmap keeps the mapping open (and its buffer, which
    will not close while mapped) until the clean-up retries it; a map whose
    IOVA could not be copied out is unmapped again, its IOVA reusable.  So
    nothing stays behind, not even until the IOAS or container goes."""
    system = machine()
    bdf = find(system.backend, EDU_ID)
    with READY[path](system, bdf) as (dev, space):
        alloc = IovaAllocator.for_space(space)

        def sequence() -> None:
            map_unmap(dev, space, 8)
            a = DmaBuffer(2 * PAGE, backend=dev.backend)
            b = DmaBuffer(PAGE, backend=dev.backend)
            mapped = []
            try:
                mapped.append(pyvfio.map_buffer(space, a, allocator=alloc))
                mapped.append(pyvfio.map_buffer(space, b, allocator=alloc))
                unmap_checked(space, b, mapped[1])
                unmap_checked(space, a, mapped[0])
            finally:
                b.close(unmap=True)  # retries an unmap that failed
                a.close(unmap=True)
                for m in mapped:
                    alloc.free(m.iova)

        idle = clean(system)
        result = fault_walk(system, sequence)
        assert result.walked >= 4
        result.assert_clean()
        assert clean(system) == idle
        assert not space.mappings and not alloc.allocated
    assert not system.backend.open_files and system.user_memory.pinned_pages == 0


def test_map_kernel_iova() -> None:
    """With the kernel choosing the IOVA, a map whose IOVA could not be
    copied out stays mapped (pyvfio cannot know where): the one leak left,
    gone with the IOAS."""
    system = machine()
    bdf = find(system.backend, EDU_ID)
    with READY["cdev"](system, bdf) as (dev, space):

        def sequence() -> None:
            map_unmap(dev, space, 8, kernel_iova=True)

        result = fault_walk(system, sequence)
        assert result.walked >= 4
        assert [s for s in result.problems] and all(
            kernel_keeps_the_mapping(s) for s in result.problems), result
    assert not system.backend.open_files and system.user_memory.pinned_pages == 0


@pytest.mark.parametrize("path", ["cdev", "legacy"])
def test_irq_setup(path: str) -> None:
    """MSI on edu and MSI-X on the NVMe controller, through the objects."""
    system = machine()
    edu, nvme = find(system.backend, EDU_ID), find(system.backend, NVME_ID)

    def sequence() -> None:
        with READY[path](system, edu) as (dev, _space):
            msi = dev.irqs["MSI"]
            msi.enable()
            msi.disable()
        with READY[path](system, nvme) as (dev, _space):
            msix = dev.irqs["MSIX"]
            msix.enable(3)
            msix.enable(1, start=10)
            msix.trigger(1)
            msix.disable()

    result = walk(system, sequence)
    assert result.walked > 20


@pytest.mark.parametrize("path", ["cdev", "legacy"])
def test_migration(path: str) -> None:
    """Save on one machine (stop-copy), resume on another."""
    src, dst = machine(migratable=True), machine(migratable=True)
    bdf = find(src.backend, EDU_ID)
    stream = bytearray()

    def save() -> None:
        with READY[path](src, bdf) as (dev, _space):
            f = dev.features
            f.migration_data_size()
            data = f.set_migration_state(MigrationState.STOP_COPY)
            assert data is not None
            with data:
                stream[:] = data.read_all()
            f.set_migration_state(MigrationState.STOP)

    def resume() -> None:
        with READY[path](dst, bdf) as (dev, _space):
            f = dev.features
            data = f.set_migration_state(MigrationState.RESUMING)
            assert data is not None
            with data:
                data.write(bytes(stream))
            f.set_migration_state(MigrationState.STOP)
            f.set_migration_state(MigrationState.RUNNING)

    saved = walk(src, save)
    assert stream
    resumed = walk(dst, resume)
    assert saved.walked > 10 and resumed.walked > 10


def test_every_kind_is_reached() -> None:
    """Between them, the sequences reach every kind of injection point."""
    system = machine()
    edu, nvme = find(system.backend, EDU_ID), find(system.backend, NVME_ID)
    seen: set[str] = set()

    def sequence() -> None:
        for path in ("cdev", "legacy"):
            with READY[path](system, edu) as (dev, space):
                map_unmap(dev, space)
                dev.irqs["MSI"].enable()
        with IommuFd(backend=system.backend) as iommufd, \
                Device.open(nvme, backend=system.backend) as dev:
            dev.bind(iommufd)

    result = fault_walk(system, sequence)
    result.assert_clean()
    seen = {s.injected.kind for s in result.steps if s.injected is not None}
    assert seen == KINDS


def test_iommufd_objects() -> None:
    """A fault queue, a HWPT, attach and replace, a map filling two
    domains; the objects' IDs, the queue's fd, the domains' pins."""
    system = machine()
    bdf = find(system.backend, EDU_ID)
    backend = system.backend

    def sequence() -> None:
        with IommuFd(backend=backend) as iommufd, Device.open(bdf, backend=backend) as dev:
            dev.bind(iommufd)
            ioas = iommufd.ioas()
            with dma_buffer(2 * PAGE, backend) as buf:
                ioas.map(buf)
                queue = iommufd.fault_queue()
                hwpt = iommufd.hwpt_alloc(dev, ioas)
                dev.attach(hwpt)
                dev.attach(ioas)
                with dma_buffer(PAGE, backend) as more:
                    ioas.map(more)
                    ioas.unmap_all()
                queue.close()

    result = walk(system, sequence)
    assert result.walked > 15
    kinds = {s.injected.kind for s in result.steps if s.injected is not None}
    assert {"id_alloc", "fd_install", "pin", "domain_map"} <= kinds


@pytest.mark.parametrize("path", ["cdev", "legacy"])
def test_dma_logging_and_low_power(path: str) -> None:
    """DMA logging over a mapping (the range list copied in, the report's
    bitmap copied out), and low power with a wake-up eventfd."""
    system = machine(migratable=True)
    bdf = find(system.backend, EDU_ID)

    def sequence() -> None:
        with READY[path](system, bdf) as (dev, space):
            f = dev.features
            with dma_buffer(4 * PAGE, dev.backend) as buf:
                mapping = pyvfio.map_buffer(space, buf, allocator=IovaAllocator.for_space(space))
                try:
                    f.dma_logging_start([(mapping.iova, 4 * PAGE)], page_size=PAGE)
                    f.dma_logging_report(mapping.iova, 4 * PAGE)
                    f.dma_logging_stop()
                finally:
                    mapping.close()
            wake = f.low_power_entry(wakeup=True)
            try:
                f.low_power_exit()
            finally:
                if wake is not None:
                    wake.close()

    result = walk(system, sequence)
    assert result.walked > 15


def test_second_group_joins_a_container_with_mappings() -> None:
    """Type1 maps the existing DMA into the new group's domain
    (vfio_iommu_replay); the group is set and unset again."""
    system = machine()
    edu, nvme = find(system.backend, EDU_ID), find(system.backend, NVME_ID)
    backend = system.backend

    def sequence() -> None:
        with Container(backend=backend) as c, Group.for_device(edu, backend=backend) as g1, \
                Group.for_device(nvme, backend=backend) as g2:
            g1.set_container(c)
            c.set_iommu()
            with dma_buffer(2 * PAGE, backend) as buf:
                mapping = pyvfio.map_buffer(c, buf, allocator=IovaAllocator.for_space(c))
                try:
                    g2.set_container(c)
                    with g2.open_device(nvme):
                        pass
                finally:
                    mapping.close()

    result = walk(system, sequence)
    kinds = {s.injected.kind for s in result.steps if s.injected is not None}
    assert {"alloc", "domain_map"} <= kinds


@pytest.mark.parametrize("path", ["legacy", "compat"])
def test_device_opens_over_mappings(path: str) -> None:
    """The DMA is mapped before the device is opened: on the iommufd
    compat container, VFIO_GROUP_GET_DEVICE_FD attaches the device to the
    compat IOAS and pins the 32 mapped pages; a failure after that (the fd)
    must unpin them again."""
    system = machine()
    bdf = find(system.backend, EDU_ID)
    backend = system.backend

    def sequence() -> None:
        with Container.compat(backend=backend) if path == "compat" else Container(backend=backend) as c, \
                Group.for_device(bdf, backend=backend) as g:
            g.set_container(c)
            c.set_iommu()
            with dma_buffer(32 * PAGE, backend) as buf:
                mapping = pyvfio.map_buffer(c, buf, allocator=IovaAllocator.for_space(c))
                try:
                    with g.open_device(bdf):
                        assert system.user_memory.pinned_pages == 32
                finally:
                    mapping.close()

    result = walk(system, sequence)
    assert any(s.injected is not None and s.injected.kind == "fd_install"
               and "GET_DEVICE_FD" in str(s.error) for s in result.steps)


# -- the injector itself ---------------------------------------------------------------------------
def test_fail_nth_fails_the_nth_operation_once() -> None:
    system = machine()
    fi = system.fault_inject
    others = fault_inject.ARMED  # injectors of other machines still armed
    assert not fi.armed
    fi.fail_nth(2, kinds={"fd_install"})
    assert fi.armed and fault_inject.ARMED == others + 1
    with Container(backend=system.backend):            # fd_install #1
        with pytest.raises(pyvfio.VfioError) as info:
            Container(backend=system.backend)          # fd_install #2 fails
        assert info.value.errno == errno.EMFILE
        assert fi.fired and fi.seen == 2
        with Container(backend=system.backend):        # once only
            pass
    assert fi.seen == 3 and len(fi.injected) == 1 and fi.injected[0].kind == "fd_install"
    assert "fd_install #2 -> EMFILE" in str(fi.injected[0])
    fi.clear()
    assert not fi.armed and fault_inject.ARMED == others and fi.fired  # the record stays


def test_fail_every_and_the_errno() -> None:
    system = machine()
    fi = system.fault_inject
    fi.fail_every("copy_from_user", errno.EIO)
    try:
        with Container(backend=system.backend) as c:
            for _ in range(2):
                with pytest.raises(pyvfio.VfioError) as info:
                    c.set_iommu()
                assert info.value.errno in (errno.EIO, errno.EINVAL)
    finally:
        fi.clear()
    with pytest.raises(ValueError, match="unknown fault kinds"):
        fi.fail_nth(1, kinds={"nonsense"})
    with pytest.raises(ValueError, match="at least 1"):
        fi.fail_nth(0)
    assert not fi.armed


def test_current_is_the_machine_of_the_running_call() -> None:
    system = machine()
    seen: list[object] = []
    fi = system.fault_inject
    assert current() is None
    with Container(backend=system.backend) as c:
        real = fault_inject.inject

        def spy(kind: str) -> None:
            seen.append(current())
            real(kind)

        fault_inject.inject = spy
        try:
            fi.fail_nth(1000)
            with Group.for_device(find(system.backend, EDU_ID), backend=system.backend) as g:
                g.set_container(c)    # VFIO_GROUP_GET_STATUS, SET_CONTAINER: user copies
        finally:
            fault_inject.inject = real
            fi.clear()
    assert seen and all(s is system for s in seen)
    assert current() is None


def test_emfile_under_rlimit_nofile_leaves_the_group_free() -> None:
    """A real EMFILE (RLIMIT_NOFILE) when /dev/vfio/N is opened: the group
    is not left open (do_sys_openat2 takes the fd before the file)."""
    system = machine()
    bdf = find(system.backend, EDU_ID)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.open(os.devnull, os.O_RDONLY)
    os.close(probe)
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
    try:
        with pytest.raises(pyvfio.VfioError) as info:
            Group.for_device(bdf, backend=system.backend)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info.value.errno == errno.EMFILE
    with Group.for_device(bdf, backend=system.backend):   # not EBUSY
        pass
    assert clean(system)["vfio groups"] == {g.dev_path: ("", "", "", 0, 0)
                                            for g in system.vfio_groups()}


def test_a_machine_dropped_while_armed_gives_the_flag_back() -> None:
    """The module flag counts armed injectors; one whose machine goes away
    armed no longer counts (else every later copy pays for the hook)."""
    import gc

    gc.collect()
    before = fault_inject.ARMED
    system = machine()
    system.fault_inject.fail_nth(1000, kinds={"copy_from_user"})
    assert fault_inject.ARMED == before + 1
    del system
    gc.collect()
    assert fault_inject.ARMED == before
