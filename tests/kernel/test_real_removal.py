"""Hot-unplug of a device the user holds: the kernel asks for it back
through the REQ interrupt (VFIO_PCI_REQ_IRQ_INDEX) and waits for the fd to
be closed before the unplug completes."""

from __future__ import annotations

import os
import select
import time

import pytest

import pyvfio
from pyvfio import Device, IommuFd, ffi, lib

pytestmark = pytest.mark.kernel


def _set_req_eventfd(dev: Device, efd: int) -> None:
    size = ffi.sizeof("struct vfio_irq_set") + 4
    raw = ffi.new("char[]", size)
    irq = ffi.cast("struct vfio_irq_set *", raw)
    irq.argsz = size
    irq.flags = lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER
    irq.index = lib.VFIO_PCI_REQ_IRQ_INDEX
    irq.start = 0
    irq.count = 1
    ffi.cast("__s32 *", irq.data)[0] = efd
    dev.backend.ioctl(dev.fd, lib.VFIO_DEVICE_SET_IRQS, raw)


def test_device_del_signals_req_and_waits_for_close(edu: str) -> None:
    import guestpci
    import hostctl

    bdf = edu
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with IommuFd() as fd:
            dev = Device.open(bdf)
            dev.bind(fd)
            assert dev.irq_info(pyvfio.PciIrq.REQ).count == 1
            _set_req_eventfd(dev, efd)
            hostctl.request_device_del("edu0")
            ready, _, _ = select.select([efd], [], [], 30)
            assert ready == [efd], "the REQ eventfd did not fire"
            assert os.eventfd_read(efd) >= 1
            # The unplug waits for the user: the device is still there.
            assert os.path.exists(f"/sys/bus/pci/devices/{bdf}")
            dev.close()
            assert hostctl.wait_device_deleted("edu0", timeout=60)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/sys/bus/pci/devices/{bdf}"):
                assert time.monotonic() < deadline, "device still present after unplug"
                time.sleep(0.05)
    finally:
        os.close(efd)
        # Plug it back for the tests that follow, and give it to vfio-pci
        # again so the fixture's teardown finds it where it left it.
        if not os.path.exists(f"/sys/bus/pci/devices/{bdf}"):
            hostctl.request_qmp("device_add", {"driver": "edu", "id": "edu0", "bus": "rp0"})
            deadline = time.monotonic() + 20
            while not guestpci.find(*guestpci.EDU):
                assert time.monotonic() < deadline, "edu did not come back"
                time.sleep(0.1)
            guestpci.bind_vfio(guestpci.find_one(*guestpci.EDU))
