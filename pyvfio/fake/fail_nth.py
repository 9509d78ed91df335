"""The failure walk: run a function with its 1st, 2nd, 3rd... kernel
operation failing, and report what each failure left behind.

After the kernel's own iommufd tests (tools/testing/selftests/iommu/
iommufd_fail_nth.c), which make each allocation of a sequence fail in turn
through ``fail-nth``: for N = 1, 2, ... :func:`fault_walk` arms
``system.fault_inject.fail_nth(N)`` (:mod:`pyvfio.fake.fault_inject`),
calls the user's function, disarms, and compares the machine with how it
was before the call (:func:`machine_state`): open fake files, pinned pages,
iommufd objects, type1 mappings, busy groups, open devices, DMA ownership.
It stops at the first N whose run finished without the failure happening
(the function has fewer operations than N).

The function should open what it needs with ``with`` blocks, so that an
error closes everything; a failure that leaves something behind is a leak
of the driver (or of the fake).  The failure should reach the caller as a
:class:`pyvfio.VfioError`; any other exception is recorded (a driver may
choose to raise its own, see ``expect``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Tuple, Type

from ..errors import VfioError
from .fault_inject import InjectedFault

if TYPE_CHECKING:
    from .machine.system import System

__all__ = ["FaultWalk", "FaultWalkStep", "fault_walk", "machine_state", "state_difference"]


def machine_state(system: System) -> dict[str, Any]:
    """What a failed sequence must give back, as comparable values: open
    fake files (by path), pinned pages, live iommufd objects and contexts,
    type1 mappings, the vfio groups' claims, open devices and the IOMMU
    groups' DMA owners."""
    from .iommufd.main import IommufdFile
    from .vfio.container import ContainerFile
    from .vfio_pci.priv import core_of

    files = system.backend.open_files
    known = system.backend.installed_files
    # a context lives while anything holds it (iommufd_ctx_get), open or not
    contexts: list[Any] = [f for f in known if isinstance(f, IommufdFile) and f._refs > 0]
    containers: list[Any] = [f for f in known if isinstance(f, ContainerFile)
                             and (not f.fd_closed or f.groups)]
    groups: dict[str, Any] = {}
    for vg in system.vfio_groups():
        groups[vg.dev_path] = (
            "open" if vg.opened_file is not None else "",
            "container" if vg.container is not None else "",
            "iommufd" if vg.iommufd is not None else "",
            vg.container_users, vg.cdev_device_open_cnt,
        )
        for held in (vg.iommufd,):
            if held is not None and held not in contexts:
                contexts.append(held)
        if vg.container is not None and vg.container not in containers:
            containers.append(vg.container)
    devices: dict[str, Any] = {}
    for bdf, pdev in system.devices.items():
        core = core_of(pdev)
        if core is not None and core.open_count:
            devices[bdf] = core.open_count
            held = getattr(core, "iommufd", None)
            if held is not None and held not in contexts:
                contexts.append(held)
    owners = {gid: (g.owner is not None, g.owner_cnt) for gid, g in system.groups.items()
              if g.owner is not None}
    objects: Counter[str] = Counter()
    for ctx in contexts:
        for obj in list(ctx.objects.values()) + list(ctx._pending.values()):
            objects[obj.kind] += 1
    mappings = sum(len(c.iommu.dma) for c in containers
                   if c.iommu is not None and hasattr(c.iommu, "dma"))
    return {
        "open files": sorted(Counter(f.path for f in files).items()),
        "pinned pages": system.user_memory.pinned_pages,
        "iommufd contexts": len(contexts),
        "iommufd objects": sorted(objects.items()),
        "type1 mappings": mappings,
        "vfio groups": groups,
        "open devices": devices,
        "DMA owners": owners,
    }


def state_difference(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per item of :func:`machine_state` that changed."""
    return [f"{key}: {before.get(key)!r} -> {after[key]!r}"
            for key in after if before.get(key) != after[key]]


@dataclass
class FaultWalkStep:
    """One run of the walk: the N-th operation failed (or not)."""

    #: The N armed.
    n: int
    #: The failure that happened, or None when the run had fewer operations.
    injected: InjectedFault | None
    #: What the function raised (None: it returned).
    error: BaseException | None
    #: What was left behind (:func:`state_difference`), empty when clean.
    leaks: list[str] = field(default_factory=list)
    #: The error was not of the expected types (:class:`pyvfio.VfioError`).
    wrong_error: bool = False

    @property
    def unprovoked(self) -> bool:
        """The run failed although no failure was injected: an earlier
        failure left something behind that :func:`machine_state` does not
        show (or the function fails on its own)."""
        return self.injected is None and self.error is not None

    @property
    def ok(self) -> bool:
        """Nothing was left behind, the error was of the right type, and
        the run did not fail without an injected failure."""
        return not self.leaks and not self.wrong_error and not self.unprovoked

    def __str__(self) -> str:
        what = str(self.injected) if self.injected else "no failure injected"
        err = "returned" if self.error is None else f"raised {type(self.error).__name__}: {self.error}"
        lines = [f"N={self.n}: {what}; {err}"]
        if self.wrong_error:
            lines.append("  not the expected error type")
        if self.unprovoked:
            lines.append("  failed with no failure injected")
        lines += [f"  left behind: {leak}" for leak in self.leaks]
        return "\n".join(lines)


@dataclass
class FaultWalk:
    """The result of :func:`fault_walk`: one step per N walked."""

    #: One step per N, in order; the last one ran without a failure.
    steps: list[FaultWalkStep]

    @property
    def walked(self) -> int:
        """How many operations the sequence has (the last N that failed)."""
        return sum(1 for s in self.steps if s.injected is not None)

    @property
    def problems(self) -> list[FaultWalkStep]:
        """The steps that leaked or raised the wrong error."""
        return [s for s in self.steps if not s.ok]

    def assert_clean(self) -> None:
        """AssertionError listing every step that left something behind or
        raised an unexpected exception type."""
        bad = self.problems
        if bad:
            raise AssertionError(f"{len(bad)} of {self.walked} injected failures went wrong:\n"
                                 + "\n".join(str(s) for s in bad))

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.steps)


def fault_walk(system: System, fn: Callable[[], object], *, kinds: Iterable[str] | None = None,
               errno: int | None = None, expect: Tuple[Type[BaseException], ...] = (VfioError,),
               max_n: int = 10000, stop_on_first_problem: bool = False) -> FaultWalk:
    """Call ``fn()`` once for each N = 1, 2, ... with the N-th kernel
    operation of ``kinds`` (default: all of
    :data:`~pyvfio.fake.fault_inject.KINDS`) failing with ``errno``
    (default: the kind's natural errno), until a run finishes without the
    failure happening (or ``max_n``).  After each run the machine must be
    as before it (:func:`machine_state`), and an error must be one of
    ``expect``.  Returns the :class:`FaultWalk`; call
    :meth:`FaultWalk.assert_clean` to fail a test on any problem.

    A run that returns normally although a failure was injected is fine
    (the function may retry or tolerate it); only leaks count then.
    """
    fi = system.fault_inject
    steps: list[FaultWalkStep] = []
    for n in range(1, max_n + 1):
        before = machine_state(system)
        fi.fail_nth(n, errno, kinds=kinds)
        error: BaseException | None = None
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded, judged below
            error = exc
        finally:
            fi.clear()
        injected = fi.injected[0] if fi.injected else None
        after = machine_state(system)
        step = FaultWalkStep(n, injected, error, state_difference(before, after),
                             wrong_error=error is not None and not isinstance(error, expect))
        steps.append(step)
        if injected is None or (stop_on_first_problem and not step.ok):
            break
    return FaultWalk(steps)
