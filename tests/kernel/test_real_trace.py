"""The ioctl trace on the real kernel: the same decoded lines as on the fake."""

from __future__ import annotations

import errno
import io
import logging
import mmap
import re

import pytest

import pyvfio
from pyvfio.backend.kernel import KernelBackend
from pyvfio.backend.trace import TraceBackend
from pyvfio.errors import IoctlError

pytestmark = pytest.mark.kernel


def test_trace_of_iommufd_and_a_device_on_the_kernel(edu: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    b = TraceBackend(KernelBackend(), file=out)
    buf = mmap.mmap(-1, 0x2000)
    with caplog.at_level(logging.INFO, logger="pyvfio"):
        with pyvfio.open_attached(edu, backend=b) as (device, ioas):
            assert isinstance(ioas, pyvfio.IOAS)
            ioas.map(buf, 0x100000)
            with pytest.raises(IoctlError) as exc:
                ioas.map(buf, 0x101000)
            assert exc.value.errno == errno.EEXIST
            assert device.regions["BAR0"].size > 0
    lines = out.getvalue().splitlines()
    text = "\n".join(lines)
    assert re.search(r"open\('/dev/vfio/devices/vfio\d+', \S+\) = \d+", text)
    assert re.search(r"device\(\d+\) VFIO_DEVICE_BIND_IOMMUFD \{argsz=24, flags=0, iommufd=\d+.* "
                     r"= 0 -> \{out_devid=\d+\}", text)
    maps = [line for line in lines if " IOMMU_IOAS_MAP " in line]
    assert len(maps) == 2, lines
    assert "flags=IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_WRITEABLE|IOMMU_IOAS_MAP_READABLE" \
        in maps[0]
    assert "length=0x2000, iova=0x100000} = 0 (" in maps[0]
    assert re.search(r"iova=0x101000\} = -1 EEXIST \(File exists\) \(\d+\.\d{3} ms\)$", maps[1])
    info = next(line for line in lines if " VFIO_DEVICE_GET_INFO " in line)
    assert "VFIO_DEVICE_FLAGS_PCI" in info
    assert re.search(r"close\(device\(\d+\)\) = 0", text)
    assert any(r.name == "pyvfio.toolkit.attach" and "cdev" in r.getMessage()
               for r in caplog.records)


def test_trace_of_the_legacy_path_on_the_kernel(edu: str) -> None:
    out = io.StringIO()
    b = TraceBackend(KernelBackend(), file=out)
    buf = mmap.mmap(-1, 0x1000)
    with pyvfio.open_attached(edu, backend=b, legacy=True) as (_device, container):
        container.map(buf, 0x200000)
    text = out.getvalue()
    assert re.search(r"group\(\d+\) VFIO_GROUP_SET_CONTAINER &\d+ = 0", text)
    assert re.search(r"container\(\d+\) VFIO_SET_IOMMU \d+ = 0", text)
    assert re.search(rf"group\(\d+\) VFIO_GROUP_GET_DEVICE_FD '{edu}' = \d+", text)
    assert re.search(r"container\(\d+\) VFIO_IOMMU_MAP_DMA \{argsz=32, "
                     r"flags=VFIO_DMA_MAP_FLAG_READ\|VFIO_DMA_MAP_FLAG_WRITE, vaddr=0x[0-9a-f]+, "
                     r"iova=0x200000, size=0x1000\} = 0", text), text
