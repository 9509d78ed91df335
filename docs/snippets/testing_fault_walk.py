"""How-to: make every kernel operation of a driver's start-up fail in turn,
and check that each failure is unwound (the failure walk).

The functions named test_* are pytest tests using the plugin's fixtures;
run this file directly to run the same walk without pytest.
"""

from __future__ import annotations

import contextlib

from pyvfio import Device, DmaBuffer, IommuFd
from pyvfio.fake import System, fault_walk


# -- [driver]
class EduDriver:
    """Opens the device on its cdev, maps a DMA buffer, enables MSI;
    ``close()`` undoes it all -- and so does a failure half-way."""

    def __init__(self, backend, bdf):
        self._stack = contextlib.ExitStack()
        try:
            self.buffer = self._stack.enter_context(DmaBuffer(0x1000, backend=backend))
            iommufd = self._stack.enter_context(IommuFd(backend=backend))
            self.dev = self._stack.enter_context(Device.open(bdf, backend=backend))
            self.dev.bind(iommufd)
            ioas = iommufd.ioas()
            self.dev.attach(ioas)
            self.iova = ioas.map(self.buffer).iova
            (self.vector,) = self.dev.irqs["MSI"].enable()
        except BaseException:
            self._stack.close()          # unwind what was done, then report
            raise

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
# -- [/driver]


# -- [tests]
def test_start_up_unwinds_every_failure(vfio_device, vfio_fault_walk):
    def start_and_stop():
        with EduDriver(vfio_device.backend, vfio_device.bdf):
            pass

    walk = vfio_fault_walk(start_and_stop)   # fails the test on any leak
    assert walk.walked > 10                  # that many operations were failed


def test_only_pinning_fails(vfio_device, vfio_fault_walk):
    def start_and_stop():
        with EduDriver(vfio_device.backend, vfio_device.bdf):
            pass

    walk = vfio_fault_walk(start_and_stop, kinds={"pin"})
    assert [step.injected.kind for step in walk.steps if step.injected] == ["pin"]
# -- [/tests]


# -- [main]
if __name__ == "__main__":
    system = System("multi-group")           # an edu on vfio-pci at 0000:00:02.0

    def start_and_stop():
        with EduDriver(system.backend, "0000:00:02.0"):
            pass

    walk = fault_walk(system, start_and_stop)
    print(walk)                              # one line per N: what failed, what it raised
    walk.assert_clean()                      # AssertionError naming each N that leaked
# -- [/main]
