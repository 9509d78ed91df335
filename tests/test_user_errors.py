"""Errors that say what to do: the common first mistakes with the objects
get a message naming the cause and the fix, not the errno's list of
possible causes.  The same checks run on the fake kernel and, in the test
VM, on the real one (the ``vfio_env`` fixture): the diagnoses rest on the
kernel's errnos.
"""

from __future__ import annotations

import errno
import mmap
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

import pyvfio
from pyvfio import Container, Device, DmaBuffer, Group, IommuFd, IommuType, lib
from pyvfio.core import _hints
from pyvfio.errors import InvalidArgumentError, IoctlError, VfioError


@pytest.fixture
def attached(vfio_env: Any) -> Iterator[tuple[Any, Any]]:
    """An IOAS with the edu device attached (its IOVA alignment is the
    IOMMU page size), and the backend."""
    b = vfio_env.backend
    with IommuFd(backend=b) as iommufd, Device.open(vfio_env.edu, backend=b) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        dev.attach(ioas)
        yield ioas, b


# -- a buffer that is not page-aligned ---------------------------------------------------


def test_mapping_unaligned_memory_says_to_use_page_aligned_memory(attached: Any) -> None:
    ioas, b = attached
    with pytest.raises(IoctlError) as info:
        ioas.map(bytearray(0x3000))   # the heap: not page-aligned
    text = str(info.value)
    assert info.value.errno == errno.EINVAL
    assert text.startswith(f"IOMMU_IOAS_MAP on {ioas.describe()}: [EINVAL] the buffer's address")
    assert "past a 0x1000 boundary" in text and "pyvfio.DmaBuffer" in text
    assert "zero length" not in text   # not the generic list of causes
    with DmaBuffer(0x3000, backend=b) as buf:   # what the message recommends works
        ioas.map(buf).close()


def test_unaligned_length_iova_and_reserved_range_are_named(attached: Any) -> None:
    ioas, _b = attached
    memory = mmap.mmap(-1, 0x4000)
    with pytest.raises(IoctlError, match=r"the length 0x1001 is not a multiple of 0x1000"):
        ioas.map(memoryview(memory)[:0x1001])
    with pytest.raises(IoctlError, match=r"the IOVA 0x100010 is not a multiple of 0x1000.*"
                                         r"iova=None"):
        ioas.map(memory, iova=0x100010)
    with pytest.raises(IoctlError, match=r"neither readable nor writeable"):
        ioas.map(memory, readable=False, writeable=False)
    usable = ioas.iova_ranges()
    hole = next((r.last + 1 for r in usable[:-1]), None)
    if hole is not None:  # x86: the MSI window is reserved
        with pytest.raises(IoctlError, match=r"not inside one usable IOVA range.*"
                                             r"ioas.iova_ranges\(\)"):
            ioas.map(memory, iova=hole)
    assert ioas.mappings == ()


def test_mapping_before_attach_then_attaching_names_the_mapping(vfio_env: Any) -> None:
    b = vfio_env.backend
    with IommuFd(backend=b) as iommufd, Device.open(vfio_env.edu, backend=b) as dev:
        dev.bind(iommufd)
        ioas = iommufd.ioas()
        mapping = ioas.map(memoryview(mmap.mmap(-1, 0x2000))[0x10:0x1010])  # no alignment yet
        with pytest.raises(IoctlError) as info:
            dev.attach(ioas)
        assert info.value.errno == errno.EADDRINUSE
        assert f"{mapping.describe()} is not page-aligned" in str(info.value)
        assert "reserved range" not in str(info.value)
        mapping.close()
        dev.attach(ioas)   # the advice works


def test_the_legacy_container_refuses_unaligned_memory_before_the_ioctl(vfio_env: Any) -> None:
    b = vfio_env.backend
    with Container(backend=b) as container, Group.for_device(vfio_env.edu, backend=b) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        with pytest.raises(InvalidArgumentError, match=r"not aligned to the IOMMU page size.*"
                                                       r"pyvfio.DmaBuffer"):
            container.map(bytearray(0x2000))


def test_the_diagnosis_runs_only_after_a_failure(attached: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A successful map does no extra work: the diagnosis is never called."""
    ioas, _b = attached

    def boom(*args: object) -> None:
        raise AssertionError("diagnosed a map that succeeded")

    monkeypatch.setattr(_hints, "ioas_map_einval", boom)
    ioas.map(mmap.mmap(-1, 0x1000)).close()


def test_the_map_diagnosis_reads_the_fields_of_any_argument(attached: Any) -> None:
    """A map issued without a cffi struct (a compiled fast path) gets the
    same diagnosis from an object with the struct's fields."""
    ioas, _b = attached
    fields = SimpleNamespace(flags=lib.IOMMU_IOAS_MAP_READABLE, user_va=0x10010,
                             length=0x1000, iova=0)
    error = ioas.iommufd._ioctl_failed(errno.EINVAL, "IOMMU_IOAS_MAP", ioas, arg=fields)
    assert isinstance(error, IoctlError) and error.errno == errno.EINVAL
    assert "the buffer's address 0x10010 is 0x10 bytes past a 0x1000 boundary" in str(error)
    plain = ioas.iommufd._ioctl_failed(errno.EINVAL, "IOMMU_IOAS_MAP", ioas)
    assert "misaligned fixed IOVA" in str(plain)   # no argument: the generic meaning


def test_an_errno_without_a_diagnosis_keeps_its_generic_meaning(attached: Any) -> None:
    ioas, _b = attached
    memory = mmap.mmap(-1, 0x1000)
    ioas.map(memory, iova=0x200000)
    with pytest.raises(IoctlError) as info:
        ioas.map(memory, iova=0x200000)
    assert "[EEXIST] the IOVA range overlaps an existing mapping" in str(info.value)


# -- a device used before bind ---------------------------------------------------------------


def test_regions_before_bind_say_to_bind(vfio_env: Any) -> None:
    b = vfio_env.backend
    with IommuFd(backend=b) as iommufd, Device.open(vfio_env.edu, backend=b) as dev:
        for use in (lambda: dev.regions, lambda: dev.info, lambda: dev.region_info(0),
                    lambda: dev.irqs):
            with pytest.raises(IoctlError) as info:
                use()
            assert info.value.errno == errno.EINVAL
            assert "not bound to an iommufd yet: call device.bind(iommufd) first" in str(
                info.value)
        dev.bind(iommufd)
        assert dev.regions["BAR0"].size > 0   # the advice works
        with pytest.raises(IoctlError) as bad_index:
            dev.region_info(1000)   # a bound device's own EINVAL: no advice to bind
        assert "bind" not in str(bad_index.value)


# -- a group's device before the container has an IOMMU --------------------------------------


def test_open_device_before_set_container_or_set_iommu_says_which(vfio_env: Any) -> None:
    b = vfio_env.backend
    with Container(backend=b) as container, Group.for_device(vfio_env.edu, backend=b) as group:
        with pytest.raises(IoctlError) as no_container:
            group.open_device(vfio_env.edu)
        assert no_container.value.errno == errno.EINVAL
        assert "group is in no container: call group.set_container(container) and " \
               "container.set_iommu(IommuType.TYPE1v2)" in str(no_container.value)
        group.set_container(container)
        with pytest.raises(IoctlError) as no_iommu:
            group.open_device(vfio_env.edu)
        assert f"{container.describe()} has no IOMMU model set: call " \
               "container.set_iommu(IommuType.TYPE1v2)" in str(no_iommu.value)
        container.set_iommu(IommuType.TYPE1v2)
        group.open_device(vfio_env.edu).close()   # the advice works


# -- a device that does not exist ------------------------------------------------------------


@pytest.mark.parametrize("opener", [
    lambda bdf, b: Device.open(bdf, backend=b),
    lambda bdf, b: Group.for_device(bdf, backend=b),
], ids=["Device.open", "Group.for_device"])
def test_opening_a_device_that_does_not_exist(vfio_env: Any, opener: Any) -> None:
    with pytest.raises(VfioError) as info:
        opener("0000:7f:1f.7", vfio_env.backend)
    assert info.value.errno == errno.ENOENT
    assert str(info.value).startswith("no PCI device 0000:7f:1f.7 on this machine: "
                                      "`pyvfio status` lists its PCI devices")


def test_open_device_that_does_not_exist_lists_the_groups_devices(vfio_env: Any) -> None:
    b = vfio_env.backend
    with Container(backend=b) as container, Group.for_device(vfio_env.edu, backend=b) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        with pytest.raises(IoctlError) as missing:
            group.open_device("0000:7f:1f.7")
        assert missing.value.errno == errno.ENODEV
        assert "there is no device 0000:7f:1f.7 on this machine" in str(missing.value)
        assert vfio_env.edu in str(missing.value)


def test_a_device_of_another_group_is_sent_to_its_group() -> None:
    from pyvfio.fake import System

    system = System("multi-group")
    b = system.backend
    first, other = "0000:00:02.0", "0000:00:06.0"
    assert pyvfio.core.sysfs.device_group(first, b) != pyvfio.core.sysfs.device_group(other, b)
    with Container(backend=b) as container, Group.for_device(first, backend=b) as group:
        group.set_container(container)
        container.set_iommu(IommuType.TYPE1v2)
        with pytest.raises(IoctlError, match=rf"{other} is not a device of {group.describe()} "
                                             rf"\(its devices: {first}\); open it through its "
                                             r"own group: Group.for_device"):
            group.open_device(other)
