"""Fake/real parity: each scenario runs on the fake kernel's model of the
test VM booted with a given IOMMU (the shipped machine captured in that VM:
``qemu-vtd`` for VT-d in legacy mode, ``qemu-vtd-sm`` for scalable mode,
``qemu-virtio`` for the virtio-iommu)
and, inside the VM, on the real kernel; every difference is a failure.  The
summary line "parity: N scenarios, M identical" is printed at the end of
the run."""

from __future__ import annotations

import os

import pytest

from pyvfio.backend.kernel import KernelBackend
from pyvfio.fake import System
from pyvfio.fake.machine.topology import shipped

from .scenarios import SCENARIOS, Env, diff


#: tests/vm/guest.py --iommu NAME -> the shipped fake machine captured in that VM
#: (``smmuv3``: the arm64 guest, ``guest.py --arch arm64``).
VM_MACHINES = {"intel": "qemu-vtd", "intel-sm": "qemu-vtd-sm", "virtio": "qemu-virtio",
               "smmuv3": "arm64-smmuv3"}


def vm_machine() -> str:
    """The fake machine that models the VM these tests run in (on the host:
    the VM's default IOMMU, VT-d in legacy mode)."""
    iommu = os.environ.get("PYVFIO_GUEST_IOMMU", "intel")
    if iommu not in VM_MACHINES:
        pytest.skip(f"no fake machine models the test VM with IOMMU {iommu!r}")
    if VM_MACHINES[iommu] not in shipped():
        pytest.skip(f"the fake machine {VM_MACHINES[iommu]!r} (IOMMU {iommu!r}) is not shipped")
    return VM_MACHINES[iommu]


def run_fake(name: str, machine: str | None = None) -> dict[str, object]:
    system = System(machine or vm_machine())
    system.memlock_limit = -1  # the VM runs as root: CAP_IPC_LOCK skips the limit
    # The VM's kernel is built without CONFIG_TRANSPARENT_HUGEPAGE, which
    # caps the alignment of kernel-chosen IOVAs at PAGE_SIZE (iopt_alloc_iova).
    system.transparent_hugepage = False
    env = Env(system.backend)
    result = SCENARIOS[name](env)
    assert not system.backend.open_files, "scenario leaked files on the fake"
    return result


@pytest.mark.parametrize("machine", ["default", *(m for m in VM_MACHINES.values()
                                                 if m in shipped())])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_runs_on_fake(name: str, machine: str) -> None:
    result = run_fake(name, machine)
    assert result, "a scenario must observe something"


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_parity(name: str) -> None:
    fake = run_fake(name)
    real = SCENARIOS[name](Env(KernelBackend()))
    differences = diff(fake, real)
    assert not differences, "fake and real kernel differ:\n" + "\n".join(differences)
