"""Errors: what a failed ioctl looks like and how to test for an errno."""

import errno
import mmap

import pyvfio
from pyvfio import IommuFd
from pyvfio.fake import System

backend = System("default").backend

# -- [errors]
with IommuFd(backend=backend) as iommufd:
    ioas = iommufd.ioas()
    buf = mmap.mmap(-1, 0x4000)
    ioas.map(buf, iova=0x100000)
    try:
        ioas.map(buf, iova=0x102000)            # overlaps [0x100000, 0x104000)
    except pyvfio.IoctlError as exc:
        print(exc)
        # IOMMU_IOAS_MAP on IOAS 1: [EEXIST] the IOVA range overlaps an
        # existing mapping (File exists)
        assert exc.errno == errno.EEXIST        # an OSError like any other
        assert (exc.ioctl, exc.target) == ("IOMMU_IOAS_MAP", "IOAS 1")
    else:
        raise AssertionError("overlapping map accepted")
    try:
        ioas.unmap(0x100000, 0x1000)            # would cut the mapping in two
    except pyvfio.IoctlError as exc:
        assert exc.errno == errno.ENOENT
    else:
        raise AssertionError("partial unmap accepted")
    print(pyvfio.errors.errno_meaning(errno.ENOSPC, "iommufd"))
    # no free IOVA space satisfies the request
try:
    ioas.unmap_all()                            # closing the iommufd closed the IOAS
except pyvfio.ClosedError as exc:
    assert exc.errno == errno.EBADF and isinstance(exc, ValueError)
else:
    raise AssertionError("a closed IOAS was used")
# -- [/errors]
