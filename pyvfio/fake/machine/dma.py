"""DMA from a device to memory through the IOMMU.

A model issues DMA with :meth:`~.pci.DeviceModel.dma_read` /
:meth:`~.pci.DeviceModel.dma_write`; its :class:`~.pci_device.PciDevice`
translates the bus address through the I/O page table the device is
attached to (its domain, or the domain of a PASID) and reads or writes
the user memory behind it.  A blocked access transfers nothing, raises
:class:`~pyvfio.fake.core.IommuFault` and is recorded in
:attr:`System.faults <pyvfio.fake.machine.system.System.faults>`, as an
IOMMU reports a fault.  What a model catches around its DMA is
:data:`DMA_ERRORS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import FaultRecord, IoDomain, IommuFault

if TYPE_CHECKING:
    from .pci_device import PciDevice

__all__ = ["DmaError", "BusMasterDisabled", "NotAttached", "DMA_ERRORS", "dma_read", "dma_write"]

_U64 = (1 << 64) - 1


class DmaError(Exception):
    """A DMA the device attempted did not reach memory (other than an
    IOMMU fault, which is :class:`~pyvfio.fake.core.IommuFault`)."""


class BusMasterDisabled(DmaError):
    """The device tried to DMA with Bus Master Enable clear in its Command
    register: a real function cannot issue memory requests then."""


class NotAttached(DmaError):
    """The model is not attached to a :class:`PciDevice` (no bus to DMA on)."""


#: Every exception a DMA through :meth:`.pci.DeviceModel.dma_read` /
#: :meth:`.pci.DeviceModel.dma_write` can raise; models catch these and report
#: the error the way their hardware would.
DMA_ERRORS: tuple[type[Exception], ...] = (IommuFault, DmaError)


# -- the IOMMU side: translation of a device's accesses ------------------------------
def _domain_for(pdev: PciDevice, pasid: int | None) -> IoDomain | None:
    if pasid is None:
        return pdev.domain
    return pdev.pasid_domains.get(pasid)


def _fault(pdev: PciDevice, iova: int, length: int, write: bool, reason: str) -> IommuFault:
    pdev.system.faults.append(FaultRecord(pdev.bdf, iova, length, write, reason))
    return IommuFault(iova, length, write, reason)


def _translate(pdev: PciDevice, iova: int, length: int, write: bool,
               pasid: int | None) -> list[tuple[int, int]]:
    if iova < 0 or length < 0 or iova + length - 1 > _U64:
        raise _fault(pdev, iova, length, write, "address outside the 64-bit IOVA space")
    domain = _domain_for(pdev, pasid)
    if domain is None:
        where = "" if pasid is None else f" for PASID {pasid}"
        raise _fault(pdev, iova, length, write, f"no I/O page table attached{where} (DMA blocked)")
    try:
        runs = domain.translate(iova, length, write)
    except IommuFault as f:
        pdev.system.faults.append(FaultRecord(pdev.bdf, f.iova, f.length, f.write, f.reason))
        raise
    for va, n in runs:
        try:
            pdev.system.user_memory.check(va, n, write)
        except OSError:
            # The kernel keeps pinned pages even after the user unmaps
            # them; the fake cannot, so the access faults instead.
            raise _fault(pdev, iova, length, write,
                         f"user memory at {va:#x} backing the IOVA is no longer mapped") from None
    return runs


def dma_read(pdev: PciDevice, iova: int, length: int, pasid: int | None = None) -> bytes:
    """``pdev`` reads ``length`` bytes at ``iova`` (tagged with ``pasid``
    when given); IommuFault when any byte is not mapped readable."""
    if length == 0:
        return b""
    runs = _translate(pdev, iova, length, False, pasid)
    return b"".join(pdev.system.user_memory.read(va, n) for va, n in runs)


def dma_write(pdev: PciDevice, iova: int, data: bytes | bytearray | memoryview,
              pasid: int | None = None) -> None:
    """``pdev`` writes ``data`` at ``iova``; the written IOVAs are marked
    dirty in the domain.  IommuFault when any byte is not mapped writable."""
    payload = bytes(data)
    if not payload:
        return
    runs = _translate(pdev, iova, len(payload), True, pasid)
    pos = 0
    for va, n in runs:
        pdev.system.user_memory.write(va, payload[pos:pos + n])
        pos += n
    domain = _domain_for(pdev, pasid)
    assert domain is not None
    domain.note_dirty(iova, len(payload))
