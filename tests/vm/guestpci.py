"""sysfs helpers for tests running inside the pyvfio test VM (stdlib only).

Find the emulated test devices by vendor:device (never hard-code BDFs or
group numbers), see their IOMMU group, and move them between their kernel
driver and vfio-pci through ``driver_override`` + ``drivers_probe``::

    from guestpci import find_one, bind_vfio, EDU
    edu = find_one(*EDU)               # e.g. "0000:01:00.0"
    group = bind_vfio(edu)             # -> IOMMU group number; /dev/vfio/<group>
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path

PCI = Path("/sys/bus/pci/devices")

# vendor, device of the devices guest.py attaches
EDU = (0x1234, 0x11E8)             # QEMU edu: DMA engine + MSI/INTx
NVME = (0x1B36, 0x0010)            # QEMU NVMe controller
E1000E = (0x8086, 0x10D3)          # 82574L
E1000 = (0x8086, 0x100E)           # 82540EM (two functions behind br0)
IGB = (0x8086, 0x10C9)             # 82576 (QEMU igb, behind rp4)
PCIE_PCI_BRIDGE = (0x1B36, 0x000E)
PCIE_ROOT_PORT = (0x1B36, 0x000C)
VIRTIO_IOMMU = (0x1AF4, 0x1057)     # virtio-iommu-pci (guest.py --iommu virtio)


def bridge_group_or_skip() -> list[str]:
    """The two e1000s behind the pcie-pci-bridge (one IOMMU group with the
    bridge); skips the test when the guest has no such bridge (guest.py
    leaves it out behind IOMMUs in its NO_PCI_BRIDGE)."""
    import pytest

    found = find(*E1000)
    if not found and not find(*PCIE_PCI_BRIDGE):
        pytest.skip(f"the guest with IOMMU {guest_iommu()!r} has no pcie-pci-bridge "
                    "with conventional devices behind it (see tests/vm/guest.py)")
    return found

#: Per guest IOMMU (``PYVFIO_GUEST_IOMMU``, set by guest.py --iommu): the
#: IOVA window the kernel reserves for MSI doorbells (first, last) and the
#: IOMMU_GET_HW_INFO type's name, and how its /sys/class/iommu entry
#: begins.  VT-d: the interrupt address range of
#: x86; SMMUv3: the driver's software MSI window (MSI_IOVA_BASE, 1 MiB).
#: The virtio-iommu has no hw_info op (type NONE) and is named after its
#: PCI function.
IOMMU_FACTS = {
    "intel": ((0xFEE00000, 0xFEEFFFFF), "INTEL_VTD", "dmar"),
    "intel-sm": ((0xFEE00000, 0xFEEFFFFF), "INTEL_VTD", "dmar"),
    "virtio": ((0xFEE00000, 0xFEEFFFFF), "NONE", "0000:"),
    "smmuv3": ((0x8000000, 0x80FFFFF), "ARM_SMMUV3", "smmu3."),
    "smmuv3-s1": ((0x8000000, 0x80FFFFF), "ARM_SMMUV3", "smmu3."),
}


def guest_iommu() -> str:
    """The guest's IOMMU as guest.py --iommu named it (default ``intel``)."""
    return os.environ.get("PYVFIO_GUEST_IOMMU", "intel")


def msi_window() -> tuple[int, int]:
    """(first, last) IOVA of the MSI window the guest's IOMMU reserves."""
    return IOMMU_FACTS[guest_iommu()][0]


def hw_info_type() -> str:
    """The pyvfio.HwInfoType name the guest's IOMMU reports."""
    return IOMMU_FACTS[guest_iommu()][1]


#: Why the tests built on the x86 guest's bridge group skip in the arm64 one.
SPLIT_BRIDGE_GROUP = (
    "the arm64 guest (SMMUv3) groups the pcie-pci-bridge (on shpchp) with one e1000 "
    "only and puts the other e1000 in a group of its own, unlike the x86 guest's "
    "group of three (tests/vm/README.md)")


def bridge_group_of_three() -> bool:
    """Whether the guest's pcie-pci-bridge and both e1000 behind it share one
    IOMMU group (the x86 guest; not the arm64 one, see SPLIT_BRIDGE_GROUP)."""
    return not guest_iommu().startswith("smmuv3")


def iommu_class_prefix() -> str:
    """How the guest IOMMU's /sys/class/iommu entry begins (dmar0, smmu3.0x...)."""
    return IOMMU_FACTS[guest_iommu()][2]


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    vendor: int
    device: int
    driver: str | None
    group: int | None

    def __str__(self) -> str:
        return (f"{self.bdf} {self.vendor:04x}:{self.device:04x} "
                f"driver={self.driver or '-'} group={self.group}")


def _read_hex(path: Path) -> int:
    return int(path.read_text().strip(), 16)


def device_info(bdf: str) -> PciDevice:
    d = PCI / bdf
    drv = d / "driver"
    grp = d / "iommu_group"
    return PciDevice(
        bdf=bdf,
        vendor=_read_hex(d / "vendor"),
        device=_read_hex(d / "device"),
        driver=os.path.basename(os.readlink(drv)) if drv.exists() else None,
        group=int(os.path.basename(os.readlink(grp))) if grp.exists() else None,
    )


def list_devices() -> list[PciDevice]:
    return [device_info(p.name) for p in sorted(PCI.iterdir())]


def find(vendor: int, device: int) -> list[str]:
    """BDFs of all functions with this vendor:device, sorted."""
    return [d.bdf for d in list_devices()
            if (d.vendor, d.device) == (vendor, device)]


def find_one(vendor: int, device: int) -> str:
    hits = find(vendor, device)
    if len(hits) != 1:
        raise LookupError(f"{vendor:04x}:{device:04x}: found {hits}")
    return hits[0]


def group_devices(group: int) -> list[str]:
    return sorted(p.name for p in
                  Path(f"/sys/kernel/iommu_groups/{group}/devices").iterdir())


def _write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def bind_driver(bdf: str, driver: str | None) -> None:
    """Rebind ``bdf`` to ``driver`` (None: let the kernel choose again)."""
    d = PCI / bdf
    _write(d / "driver_override", driver or "\n")
    if (d / "driver").exists():
        _write(d / "driver" / "unbind", bdf)
    _write(Path("/sys/bus/pci/drivers_probe"), bdf)


def bind_vfio(bdf: str, timeout: float = 10.0) -> int:
    """Bind to vfio-pci; wait for /dev/vfio/<group>; return the group number."""
    bind_driver(bdf, "vfio-pci")
    info = device_info(bdf)
    if info.driver != "vfio-pci":
        raise RuntimeError(f"{bdf} did not bind to vfio-pci: {info}")
    assert info.group is not None
    node = Path(f"/dev/vfio/{info.group}")
    deadline = time.monotonic() + timeout
    while not node.exists():           # devtmpfs creates it asynchronously
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node} did not appear")
        time.sleep(0.05)
    return info.group


def vfio_cdev(bdf: str) -> Path | None:
    """/dev/vfio/devices/vfioN of a vfio-pci bound device (VFIO_DEVICE_CDEV)."""
    folder = PCI / bdf / "vfio-dev"
    if not folder.exists():
        return None
    names = [p.name for p in folder.iterdir()]
    return Path("/dev/vfio/devices") / names[0] if names else None


def vfio_holders() -> list[str]:
    """What this process still holds of VFIO devices: device fds (cdev or
    group-obtained) and mappings of device files.  Unbinding vfio-pci from
    a device blocks in the kernel until every one of these is gone."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/vfio/devices/") or "vfio-device" in target:
            held.append(f"fd {fd} -> {target}")
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            path = fields[5] if len(fields) > 5 else ""
            if path.startswith("/dev/vfio/") or "vfio-device" in path:
                held.append(f"mapping {fields[0]} of {path}")
    return held


def unbind_vfio(bdf: str) -> None:
    """Give the device back to its default kernel driver (if any).  Refuses
    (RuntimeError) while this process still holds a VFIO device open: the
    kernel's unbind would wait for it forever."""
    gc.collect()  # objects in reference cycles close their files here
    held = vfio_holders()
    if held:
        raise RuntimeError(f"cannot give {bdf} back: this process still holds "
                           + "; ".join(held))
    bind_driver(bdf, None)
