"""The error hierarchy and its messages."""

from __future__ import annotations

import errno
import pickle

import pytest

from pyvfio.errors import (
    ClosedError,
    InvalidArgumentError,
    IoctlError,
    NotViableError,
    VfioError,
    errno_meaning,
    errno_name,
    ioctl_error,
)


def test_ioctl_error_names_ioctl_object_and_meaning() -> None:
    err = ioctl_error(errno.EEXIST, "IOMMU_IOAS_MAP", "IOAS 2", "iommufd")
    assert isinstance(err, IoctlError) and isinstance(err, OSError)
    assert err.errno == errno.EEXIST
    assert err.ioctl == "IOMMU_IOAS_MAP" and err.target == "IOAS 2"
    text = str(err)
    assert text.startswith("IOMMU_IOAS_MAP on IOAS 2: [EEXIST]")
    assert "overlaps an existing mapping" in text
    assert "File exists" in text


def test_families_have_their_own_vocabulary() -> None:
    assert errno_meaning(errno.EINVAL, "iommufd") != errno_meaning(errno.EINVAL, "vfio")
    assert errno_meaning(errno.ENOENT, "iommufd").startswith("the object ID")
    # Unknown pairs fall back to strerror.
    assert errno_meaning(errno.EROFS, "vfio") == "Read-only file system"


def test_an_ioctl_can_give_an_errno_its_own_meaning() -> None:
    unmap = ioctl_error(errno.ENOENT, "IOMMU_IOAS_UNMAP", "IOAS 1")
    assert "cuts a mapping" in str(unmap) and "object ID" not in str(unmap)
    destroy = ioctl_error(errno.ENOENT, "IOMMU_DESTROY", "IOAS 1")
    assert "no object has this ID" in str(destroy)
    hot_reset = ioctl_error(errno.ENOSPC, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", "device x")
    assert "array is too small" in str(hot_reset)
    map_dma = ioctl_error(errno.ENOSPC, "VFIO_IOMMU_MAP_DMA", "container")
    assert "dma_entry_limit" in str(map_dma)
    # the family comes from the ioctl's name when not given
    assert "object ID" in str(ioctl_error(errno.ENOENT, "IOMMU_HWPT_INVALIDATE", "HWPT 3"))
    assert "IOMMU page size" in errno_meaning(errno.EINVAL, ioctl="VFIO_IOMMU_MAP_DMA")


def test_errno_names_prefer_the_uapi_spelling() -> None:
    assert errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert str(ioctl_error(errno.EOPNOTSUPP, "IOMMU_OPTION", "iommufd")).startswith(
        "IOMMU_OPTION on iommufd: [EOPNOTSUPP]")
    assert errno_name(errno.EADDRINUSE) == "EADDRINUSE"
    assert "reserved range" in errno_meaning(errno.EADDRINUSE, "iommufd")
    assert errno_name(4095) == "4095"


def test_the_fake_kernel_errors_carry_the_ioctl_meaning() -> None:
    import mmap

    from pyvfio import IommuFd
    from pyvfio.fake import System

    with IommuFd(backend=System("minimal").backend) as fd:
        ioas = fd.ioas()
        ioas.map(mmap.mmap(-1, 0x2000), 0x100000)
        with pytest.raises(IoctlError) as exc:
            ioas.unmap(0x100000, 0x1000)  # half of the area
        assert exc.value.errno == errno.ENOENT
        assert "cuts a mapping" in str(exc.value)


def test_closed_and_invalid_are_value_errors_too() -> None:
    closed = ClosedError("IOAS 3")
    assert isinstance(closed, VfioError) and isinstance(closed, ValueError)
    assert closed.errno == errno.EBADF and str(closed) == "IOAS 3 is closed"
    bad = InvalidArgumentError("length must not be zero", ioctl="IOMMU_IOAS_MAP", target="IOAS 1")
    assert isinstance(bad, ValueError) and bad.errno == errno.EINVAL
    assert str(bad) == "IOMMU_IOAS_MAP on IOAS 1: length must not be zero"


def test_not_viable_carries_blockers() -> None:
    err = NotViableError("group 7 is not viable", blockers=[("0000:01:00.0", "bound to e1000")])
    assert err.errno == errno.EPERM
    assert err.blockers == [("0000:01:00.0", "bound to e1000")]


@pytest.mark.parametrize("err", [
    ioctl_error(errno.EBUSY, "VFIO_GROUP_SET_CONTAINER", "group 3", "vfio"),
    InvalidArgumentError("x", ioctl="A", target="B"),
])
def test_errors_pickle(err: VfioError) -> None:
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert (again.errno, str(again), again.ioctl, again.target) == (
        err.errno, str(err), err.ioctl, err.target)
