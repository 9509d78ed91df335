"""Smoke check of the test VM; runs inside the guest (stdlib only).

    python3 tests/vm/guest.py --run "python3 tests/vm/smoke.py"

Prints the IOMMU groups and PCI devices, binds edu to vfio-pci and checks
the VFIO/iommufd device nodes, then hot-unplugs e1000e0 and edu0 through
hostctl (QMP device_del on the host).  Exits non-zero on any failure.
"""

from __future__ import annotations

import fcntl
import glob
import os
import platform
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import guestpci  # noqa: E402
import hostctl  # noqa: E402

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(f"  [{'ok' if cond else 'FAIL'}] {what}")
    if not cond:
        failures.append(what)


def group_viable(group: int) -> bool:
    """VFIO_GROUP_GET_STATUS (_IO(';', 103)) -> VFIO_GROUP_FLAGS_VIABLE."""
    fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    try:
        buf = bytearray(struct.pack("II", 8, 0))
        fcntl.ioctl(fd, 0x3B67, buf)
        return bool(struct.unpack("II", buf)[1] & 1)
    finally:
        os.close(fd)


def wait_gone(bdf: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (guestpci.PCI / bdf).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main() -> int:
    check(hostctl.in_guest(), "PYVFIO_GUEST=1")
    print(f"kernel {platform.release()}, python {sys.version.split()[0]} "
          f"({sys.executable})")
    print("cmdline:", Path("/proc/cmdline").read_text().strip())

    print("\n/sys/kernel/iommu_groups/*/devices:")
    for group in sorted(glob.glob("/sys/kernel/iommu_groups/*"),
                        key=lambda p: int(os.path.basename(p))):
        print(f"  group {os.path.basename(group)}: "
              + " ".join(sorted(os.listdir(f"{group}/devices"))))

    print("\nPCI devices:")
    for dev in guestpci.list_devices():
        print(f"  {dev}")

    print("\nnodes:")
    for node in ("/dev/iommu", "/dev/vfio/vfio"):
        check(os.path.exists(node), f"{node} exists")

    print("\nbind edu to vfio-pci:")
    edu = guestpci.find_one(*guestpci.EDU)
    t0 = time.monotonic()
    group = guestpci.bind_vfio(edu)
    print(f"  edu {edu} -> vfio-pci in {time.monotonic() - t0:.2f} s, group {group}")
    check(guestpci.group_devices(group) == [edu], f"edu alone in group {group}")
    check(os.path.exists(f"/dev/vfio/{group}"), f"/dev/vfio/{group} exists")
    cdev = guestpci.vfio_cdev(edu)
    print(f"  cdev: {cdev}")
    check(cdev is not None and cdev.exists(), "/dev/vfio/devices/vfioN exists")
    print("  /dev/vfio:", sorted(os.listdir("/dev/vfio")),
          "devices:", sorted(os.listdir("/dev/vfio/devices")))

    print("\nmulti-device group (br0 + e1000a + e1000b):")
    e1000s = guestpci.find(*guestpci.E1000)
    groups = {guestpci.device_info(b).group for b in e1000s}
    check(len(e1000s) == 2 and len(groups) == 1, f"both e1000 in one group {groups}")
    if len(groups) == 1:
        egroup = groups.pop()
        members = guestpci.group_devices(egroup)
        print("  members:", [str(guestpci.device_info(b)) for b in members])
        guestpci.bind_vfio(e1000s[0])
        check(not group_viable(egroup), "group not viable with one e1000 on vfio-pci")
        guestpci.bind_vfio(e1000s[1])
        check(group_viable(egroup), "group viable with both e1000 on vfio-pci "
                                    "(bridge stays driver-less)")
        print("  cdevs:", [str(guestpci.vfio_cdev(b)) for b in e1000s])
        for bdf in e1000s:
            guestpci.unbind_vfio(bdf)
        check([guestpci.device_info(b).driver for b in e1000s] == ["e1000"] * 2,
              "both e1000 back on the e1000 driver")

    print("\nhot-unplug through hostctl:")
    e1000e = guestpci.find_one(*guestpci.E1000E)
    t0 = time.monotonic()
    hostctl.request_device_del("e1000e0", timeout=30)
    deleted = hostctl.wait_device_deleted("e1000e0", timeout=60)
    check(deleted, f"e1000e0 DEVICE_DELETED after {time.monotonic() - t0:.1f} s")
    check(wait_gone(e1000e, 10), f"{e1000e} gone from sysfs")

    # vfio-pci holds back the unplug while a device fd is open (it signals
    # VFIO_DEVICE_REQ, or logs "blocked until released by user" when no
    # request eventfd is set) and completes it once the fd is closed.
    assert cdev is not None
    fd = os.open(cdev, os.O_RDWR)
    t0 = time.monotonic()
    hostctl.request_device_del("edu0", timeout=30)
    early = hostctl.wait_device_deleted("edu0", timeout=3)
    check(not early and (guestpci.PCI / edu).exists(),
          "edu0 unplug blocked while its vfio cdev is open")
    os.close(fd)
    deleted = hostctl.wait_device_deleted("edu0", timeout=60)
    check(deleted, f"edu0 DEVICE_DELETED {time.monotonic() - t0:.1f} s after "
                   "device_del (fd closed after 3 s)")
    check(wait_gone(edu, 10), f"{edu} gone from sysfs")
    check(not os.path.exists(f"/dev/vfio/{group}"), f"/dev/vfio/{group} removed")

    try:
        hostctl.request_device_del("no-such-device", timeout=30)
        check(False, "device_del of an unknown id fails")
    except hostctl.HostControlError as exc:
        check("not found" in str(exc), f"device_del of an unknown id fails: {exc}")

    print(f"\nsmoke: {'FAILED: ' + '; '.join(failures) if failures else 'all ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
