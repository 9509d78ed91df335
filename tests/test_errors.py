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
