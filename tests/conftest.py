"""Test-suite wide configuration.

Tests marked ``kernel`` need the real VFIO/iommufd kernel interface.  They
run inside the test VM (``python tests/vm/guest.py --pytest``, started by
``tests/run_all.py``), where ``PYVFIO_GUEST=1``; on the host they are
reported as skipped with that reason.
"""

from __future__ import annotations

import os

import pytest

IN_GUEST = os.environ.get("PYVFIO_GUEST") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    skip = pytest.mark.skip(
        reason="needs the real VFIO/iommufd kernel: runs in the test VM "
        "(tests/run_all.py boots it; or python tests/vm/guest.py --pytest)"
    )
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


# -- fake systems for the object-layer tests ------------------------------------------
from typing import Any, Iterator  # noqa: E402

EDU_BDF = "0000:00:02.0"


def bind_vfio(backend: object, bdf: str) -> None:
    """Bind ``bdf`` to vfio-pci the way setup scripts do it."""
    b = backend  # a pyvfio Backend
    b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")  # type: ignore[attr-defined]
    b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)  # type: ignore[attr-defined]


class VfioEnv:
    """A backend with QEMU's edu device bound to vfio-pci (``edu`` is its BDF)."""

    def __init__(self, kind: str, backend: object, edu: str) -> None:
        self.kind = kind
        self.backend = backend
        self.edu = edu


def _find_edu(backend: object) -> str:
    from pyvfio.core import sysfs

    b = backend
    for bdf in b.sysfs_listdir(sysfs.PCI_DEVICES):  # type: ignore[attr-defined]
        base = f"{sysfs.PCI_DEVICES}/{bdf}"
        if (b.sysfs_read(f"{base}/vendor"), b.sysfs_read(f"{base}/device")) == (  # type: ignore[attr-defined]
                "0x1234", "0x11e8"):
            return str(bdf)
    raise LookupError("no edu device (1234:11e8)")


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.kernel)])
def vfio_env(request: pytest.FixtureRequest) -> Iterator[VfioEnv]:
    """The same object-layer test on the fake kernel and, in the test VM,
    on the real one: only the backend differs."""
    if request.param == "fake":
        from pyvfio.fake import System

        system = System("minimal")
        bind_vfio(system.backend, EDU_BDF)
        yield VfioEnv("fake", system.backend, EDU_BDF)
        leaked = system.backend.open_files
        assert not leaked, f"files left open: {leaked}"
        return
    from pyvfio.backend.kernel import KernelBackend

    kb = KernelBackend()
    edu = _find_edu(kb)
    bind_vfio(kb, edu)
    try:
        yield VfioEnv("kernel", kb, edu)
    finally:
        kb.sysfs_write(f"/sys/bus/pci/devices/{edu}/driver_override", "\n")
        kb.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", edu)


def _guest_iommu_facts() -> Any:
    """tests/vm/guestpci.py, which knows the guest IOMMU's facts."""
    import sys

    vm = os.path.join(os.path.dirname(__file__), "vm")
    if vm not in sys.path:
        sys.path.insert(0, vm)
    import guestpci

    return guestpci


@pytest.fixture
def msi_iova(vfio_env: VfioEnv) -> int:
    """An IOVA inside the MSI window the IOMMU behind edu reserves: VT-d's
    (0xFEE00000) on the fake machine; in the guest, its IOMMU's
    (``PYVFIO_GUEST_IOMMU``; the SMMUv3 driver's software MSI window at
    0x8000000 in the arm64 guest)."""
    if vfio_env.kind == "kernel":
        return int(_guest_iommu_facts().msi_window()[0])
    return 0xFEE00000


@pytest.fixture
def hw_info_type(vfio_env: VfioEnv) -> int:
    """IOMMU_GET_HW_INFO's type for edu: VT-d on the fake machine; in the
    guest, its IOMMU's (NONE behind a virtio-iommu, ARM_SMMUV3 in the arm64
    guest)."""
    from pyvfio import HwInfoType

    if vfio_env.kind == "kernel":
        return int(HwInfoType[_guest_iommu_facts().hw_info_type()])
    return int(HwInfoType.INTEL_VTD)


@pytest.fixture
def fake_system() -> Iterator[object]:
    """A fake machine with one edu device bound to vfio-pci; checks at the
    end that the test left no file open."""
    from pyvfio.fake import System

    system = System("minimal")
    bind_vfio(system.backend, EDU_BDF)
    yield system
    leaked = system.backend.open_files
    assert not leaked, f"files left open: {leaked}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report fake/real parity as "parity: N scenarios, M identical"."""
    passed = [r for r in terminalreporter.stats.get("passed", []) if "::test_parity[" in r.nodeid]
    failed = [r for r in terminalreporter.stats.get("failed", []) if "::test_parity[" in r.nodeid]
    if passed or failed:
        total = len(passed) + len(failed)
        terminalreporter.write_line(f"parity: {total} scenarios, {len(passed)} identical")


@pytest.fixture(autouse=True)
def _own_fake_state(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``pyvfio --fake`` keeps its state in $XDG_STATE_HOME: each test
    starts from a fresh fake machine, never the user's saved one."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
