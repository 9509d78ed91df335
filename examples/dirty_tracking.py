#!/usr/bin/env python3
"""Which pages did the device write?  IOMMU dirty tracking with QEMU's edu.

A live-migration loop needs to know which guest pages a device wrote by
DMA since the last look.  This example maps a 16-page buffer, lets the edu
device write into a few of its pages, and asks the kernel for the dirty
bitmap::

    python3 examples/dirty_tracking.py --fake              # fake IOMMU with dirty tracking
    python3 examples/dirty_tracking.py --bdf 0000:01:00.0 --bind

With iommufd the bitmap comes from the IOMMU itself: an HWPT allocated
with IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_SET_DIRTY_TRACKING to
start, IOMMU_HWPT_GET_DIRTY_BITMAP to read and clear.  That needs an IOMMU
that reports IOMMU_HW_CAP_DIRTY_TRACKING; without it (QEMU's emulated
VT-d, for one) the example uses the type1 container's
VFIO_IOMMU_DIRTY_PAGES instead, where the kernel cannot see DMA writes and
reports every pinned page as dirty -- correct, but no help in shrinking
what must be copied.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edu_dma  # noqa: E402  (the edu driver this example builds on)
from edu_dma import DMA_BUFFER, DMA_LIMIT, EduDriver  # noqa: E402

import pyvfio  # noqa: E402
from pyvfio import Container, Device, DmaBuffer, Group, IommuFd, IovaAllocator  # noqa: E402
from pyvfio.backend import Backend  # noqa: E402

PAGE = 4096
PAGES = 16
#: the pages the device writes, in the order it writes them
WRITTEN = (1, 6, 7, 13)


@dataclass
class DirtyResult:
    """What one run saw."""

    method: str  #: "iommufd HWPT" or "type1 container"
    iova: int
    before: list[int]  #: dirty pages right after tracking started
    after: list[int]  #: dirty pages after the device's writes
    cleared: list[int]  #: dirty pages on a second read (the first one cleared them)

    @property
    def exact(self) -> bool:
        """The IOMMU saw exactly the pages the device wrote."""
        return self.after == sorted(WRITTEN)


def pages(bitmap: bytes) -> list[int]:
    """The page numbers whose bits are set (least significant bit first)."""
    return [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1][:PAGES]


def device_writes(driver: EduDriver, iova: int) -> None:
    """The device writes a stamp into each page of WRITTEN by DMA."""
    for page in WRITTEN:
        driver.dma(DMA_BUFFER, iova + page * PAGE + 0x80, 64, to_ram=True)


@contextlib.contextmanager
def iommufd_tracking(bdf: str, backend: Backend) -> Iterator[tuple[Device, pyvfio.IOAS,
                                                                  pyvfio.HWPT | None]]:
    """The device on a dirty-tracking HWPT, or with ``None`` when its IOMMU
    cannot track."""
    with contextlib.ExitStack() as stack:
        iommufd = stack.enter_context(IommuFd(backend=backend))
        device = stack.enter_context(Device.open(bdf, backend=backend))
        device.bind(iommufd)
        ioas = iommufd.ioas()
        if not iommufd.hw_info(device).dirty_tracking:
            yield device, ioas, None
            return
        hwpt = iommufd.hwpt_alloc(device, ioas, dirty_tracking=True)
        device.attach(hwpt)
        yield device, ioas, hwpt


def run(bdf: str, backend: Backend, *, legacy: bool = False,
        out: Callable[[str], None] = print) -> DirtyResult:
    """Track the edu device's writes once; ``legacy`` forces type1."""
    if not legacy:
        with iommufd_tracking(bdf, backend) as (device, ioas, hwpt):
            if hwpt is not None:
                return _track(device, ioas, hwpt, out)
        out("the IOMMU reports no dirty tracking (IOMMU_HW_CAP_DIRTY_TRACKING): "
            "using a type1 container")
    with contextlib.ExitStack() as stack:
        container = stack.enter_context(Container(backend=backend))
        group = stack.enter_context(Group.for_device(bdf, backend=backend))
        group.set_container(container)
        container.set_iommu()
        device = stack.enter_context(group.open_device(bdf))
        return _track(device, container, container, out)


def _track(device: Device, space: pyvfio.IOAS | Container,
           tracker: pyvfio.HWPT | Container, out: Callable[[str], None]) -> DirtyResult:
    method = "iommufd HWPT" if isinstance(tracker, pyvfio.HWPT) else "type1 container"
    driver = EduDriver(device, space)
    try:
        iovas = IovaAllocator.for_space(space, limit=DMA_LIMIT)
        with DmaBuffer(PAGES * PAGE, backend=device.backend) as buf:
            mapping = pyvfio.map_buffer(space, buf, allocator=iovas)
            try:
                iova = mapping.iova

                def read() -> list[int]:
                    return pages(tracker.dirty_bitmap(iova, PAGES * PAGE, PAGE))

                if isinstance(tracker, pyvfio.HWPT):
                    tracker.set_dirty_tracking(True)
                else:
                    tracker.start_dirty_tracking()
                before = read()
                device_writes(driver, iova)
                after = read()
                cleared = read()
                if isinstance(tracker, pyvfio.HWPT):
                    tracker.set_dirty_tracking(False)
                else:
                    tracker.stop_dirty_tracking()
            finally:
                mapping.close()
    finally:
        driver.close()
    result = DirtyResult(method, iova, before, after, cleared)
    out(f"edu {device.name} through the {method}, {PAGES} pages at IOVA {iova:#x}")
    out(f"  dirty when tracking started: {before or 'none'}")
    out(f"  the device wrote pages {list(WRITTEN)}; dirty: {after or 'none'}")
    out(f"  dirty on the next read: {cleared or 'none'}")
    out("  exact: the IOMMU saw the device's writes" if result.exact else
        "  not exact: every pinned page is reported (the kernel cannot see DMA writes)")
    return result


def fake_backend() -> tuple[Backend, str]:
    """A fake machine whose IOMMU tracks dirty pages, one edu on vfio-pci."""
    from pyvfio.fake import System
    from pyvfio.fake.machine import topology

    topo = topology.load("minimal")
    topo["iommu"]["dirty_tracking"] = True
    backend = System(topo).backend
    (bdf,) = edu_dma.find_devices(backend, *edu_dma.EDU_ID)
    edu_dma.bind_vfio(backend, bdf)
    return backend, bdf


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fake", action="store_true", help="use pyvfio's fake kernel")
    where.add_argument("--bdf", help="PCI address of a real edu device")
    ap.add_argument("--bind", action="store_true",
                    help="move the device to vfio-pci for the run")
    ap.add_argument("--legacy", action="store_true", help="type1 container instead of iommufd")
    args = ap.parse_args(argv)
    if args.fake:
        backend, bdf = fake_backend()
        previous = None
    else:
        backend, bdf = pyvfio.backend.default_backend(), args.bdf
        previous = edu_dma.bind_vfio(backend, bdf) if args.bind else None
    try:
        result = run(bdf, backend, legacy=args.legacy)
    finally:
        if args.bind and previous != "vfio-pci":
            edu_dma.unbind_vfio(backend, bdf)
    # Every page the device wrote must be reported, and a read clears the state.
    ok = set(WRITTEN) <= set(result.after) and not (result.exact and result.cleared)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
