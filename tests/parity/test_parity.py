"""Fake/real parity: each scenario runs on the fake kernel's "default"
topology (a model of the test VM) and, inside the VM, on the real kernel;
every difference is a failure.  The summary line "parity: N scenarios, M
identical" is printed at the end of the run."""

from __future__ import annotations

import pytest

from pyvfio.backend.kernel import KernelBackend
from pyvfio.fake import System

from .scenarios import SCENARIOS, Env, diff


def run_fake(name: str) -> dict[str, object]:
    system = System("default")
    system.memlock_limit = -1  # the VM runs as root: CAP_IPC_LOCK skips the limit
    # The VM's kernel is built without CONFIG_TRANSPARENT_HUGEPAGE, which
    # caps the alignment of kernel-chosen IOVAs at PAGE_SIZE (iopt_alloc_iova).
    system.transparent_hugepage = False
    env = Env(system.backend)
    result = SCENARIOS[name](env)
    assert not system.backend.open_files, "scenario leaked files on the fake"
    return result


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_runs_on_fake(name: str) -> None:
    result = run_fake(name)
    assert result, "a scenario must observe something"


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_parity(name: str) -> None:
    fake = run_fake(name)
    real = SCENARIOS[name](Env(KernelBackend()))
    differences = diff(fake, real)
    assert not differences, "fake and real kernel differ:\n" + "\n".join(differences)
