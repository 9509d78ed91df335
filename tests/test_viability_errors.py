"""A group that is not viable is explained where the kernel refuses it:
VFIO_GROUP_SET_CONTAINER (legacy) and VFIO_DEVICE_BIND_IOMMUFD (cdev)."""

from __future__ import annotations

import errno

import pytest

from pyvfio import Container, Device, Group, IommuFd, NotViableError
from pyvfio.fake import System

SHARED = "0000:00:06.0"  # group 1 of "multi-group": 06.0 and 06.1 on vfio-pci, 06.2 on e1000e
HOST = "0000:00:06.2"


@pytest.fixture
def system() -> System:
    return System("multi-group")


def _check_explained(err: NotViableError, ioctl: str) -> None:
    assert err.errno == errno.EPERM and err.ioctl == ioctl
    assert err.blockers and err.blockers[0][0] == HOST
    text = str(err)
    assert text.startswith(f"{ioctl} on ")
    assert "NOT viable" in text and "e1000e" in text
    assert f"pyvfio bind --group 1" in text  # how to fix it
    assert "reachable by the user's DMA" in text and "0000:00:06.1" in text  # at risk
    assert "kernel error:" in text


def test_cdev_bind_of_a_device_in_a_blocked_group_is_explained(system: System) -> None:
    b = system.backend
    with IommuFd(backend=b) as iommufd, Device.open(SHARED, backend=b) as dev:
        with pytest.raises(NotViableError) as exc:
            dev.bind(iommufd)
        _check_explained(exc.value, "VFIO_DEVICE_BIND_IOMMUFD")
        assert dev.dev_id is None
    assert b.open_files == []


def test_set_container_of_a_blocked_group_is_explained(system: System) -> None:
    b = system.backend
    with Container(backend=b) as container, Group(1, backend=b) as group:
        with pytest.raises(NotViableError) as exc:
            group.set_container(container)
        _check_explained(exc.value, "VFIO_GROUP_SET_CONTAINER")
        assert group.container is None
    assert b.open_files == []


def test_an_owned_group_is_not_reported_as_blocked(system: System) -> None:
    """EPERM with every device on vfio-pci (here: the group belongs to a
    container) stays the kernel's error: nothing is blocking."""
    b = system.backend
    with Container(backend=b) as container, Group(0, backend=b) as group:
        group.set_container(container)
        with IommuFd(backend=b) as iommufd, Device.open("0000:00:02.0", backend=b) as dev:
            with pytest.raises(OSError) as exc:
                dev.bind(iommufd)
            assert not isinstance(exc.value, NotViableError)
            assert exc.value.errno in (errno.EPERM, errno.EBUSY)


def test_a_group_lookup_the_kernel_cannot_answer_is_a_vfio_error(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    """sysfs answering ENOMEM (seen under the real-kernel failure walk)
    reaches the user as a VfioError naming the device, not a bare OSError."""
    import pyvfio
    from pyvfio.core import sysfs

    def no_memory(path: str) -> str:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(system.backend, "sysfs_readlink", no_memory)
    with pytest.raises(pyvfio.VfioError) as info:
        sysfs.device_group("0000:00:02.0", system.backend)
    assert info.value.errno == errno.ENOMEM and "0000:00:02.0" in str(info.value)
