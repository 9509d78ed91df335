"""pytest plugin: fake VFIO machines and devices, to unit-test user-space
drivers without hardware.

Installed pyvfio registers it (entry point ``pytest11``: ``pyvfio =
"pyvfio.testing.plugin"``); from a checkout, enable it with ``-p
pyvfio.testing.plugin`` or ``pytest_plugins = ["pyvfio.testing.plugin"]`` in
the top-level ``conftest.py``.  The how-to "Test a driver with the fake
kernel" describes the fixtures and how to choose the machine and device.

Fixtures:

``vfio_system``
    A fresh :class:`pyvfio.fake.System` for the test.  Its topology is, by
    priority: the test's parameter (``@pytest.mark.parametrize("vfio_system",
    ["minimal", "multi-group"], indirect=True)``), the ``vfio_topology``
    marker (``@pytest.mark.vfio_topology("multi-group")``: a shipped name,
    a JSON file such as one written by ``pyvfio topology dump``, or a dict),
    the ``vfio_topology`` ini option, else ``"default"``.  At teardown the
    test fails if it left VFIO files open (ini ``vfio_leak_check = false``
    turns that off).
``vfio_backend``
    ``vfio_system.backend``: pass it as ``backend=`` to pyvfio objects or to
    your own code.
``vfio_device``
    A :class:`FakeVfioDevice`: a device of the chosen model bound to
    vfio-pci in ``vfio_system``.  The model is, by priority: the test's
    parameter (``@pytest.mark.parametrize("vfio_device", ["edu", "nvme"],
    indirect=True)``; a model name or a topology device dict), the
    ``vfio_device`` marker (``@pytest.mark.vfio_device("nvme", bdf=...,
    **spec)``), else ``"edu"``.  A device of that model (and address, if
    given) in the topology is used; otherwise one is added to the topology,
    alone in a new IOMMU group, before the system is built.  The device's
    whole IOMMU group is bound to vfio-pci (bridges left alone), so that the
    group is viable; when it cannot be, the fixture fails and says why.
``vfio_fault_walk``
    A :class:`FaultWalker` for ``vfio_system``: ``vfio_fault_walk(fn)``
    calls ``fn()`` once for every N = 1, 2, ... with the N-th operation of
    the fake kernel failing (an fd, an iommufd object, pinning, an IOMMU
    mapping, a user copy, an eventfd, an allocation), until ``fn`` has
    fewer operations than N, and fails the test if a failure left
    something behind in the fake or did not reach ``fn``'s caller as a
    :class:`pyvfio.VfioError` (:func:`pyvfio.fake.fault_walk`).

The real machine is kept out of these tests: from the setup of
``vfio_system`` to its teardown, a pyvfio object created without
``backend=`` (and anything else that asks :func:`pyvfio.default_backend`)
raises :class:`RealBackendRefused`, naming the call, instead of opening
``/dev/vfio``, ``/dev/iommu`` or reading sysfs on this machine; a refusal
that the code under test caught fails the test at teardown.  The marker
``vfio_real_backend`` (or the ini option ``vfio_real_backend = allow``)
lets the test use the real kernel; the ini option ``vfio_default_backend =
fake`` makes such objects use ``vfio_backend`` instead.  The rule holds in
the test's own thread and its asyncio tasks (see
:func:`pyvfio.backend.override_default_backend`).

Markers: ``vfio_topology(source)``, ``vfio_device(model, bdf=None, **spec)``,
``vfio_real_backend``.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Tuple, Type

import pytest

from ..backend import Backend, override_default_backend
from ..core import sysfs, viability
from ..setup import binding

if TYPE_CHECKING:
    from ..core.device import Device
    from ..fake import FaultWalk, PciDevice, System

__all__ = [
    "FakeVfioDevice",
    "RealBackendRefused",
    "vfio_system",
    "vfio_backend",
    "vfio_device",
    "vfio_fault_walk",
    "FaultWalker",
    "DEFAULT_TOPOLOGY",
    "DEFAULT_MODEL",
]

#: Topology of ``vfio_system`` when nothing selects one.
DEFAULT_TOPOLOGY = "default"
#: Model of ``vfio_device`` when nothing selects one.
DEFAULT_MODEL = "edu"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini options."""
    parser.addini("vfio_topology", "default fake topology of the vfio_system fixture "
                                   "(a shipped name or a JSON file)", default=DEFAULT_TOPOLOGY)
    parser.addini("vfio_leak_check", "fail tests that leave VFIO files of the fake system open",
                  type="bool", default=True)
    parser.addini("vfio_real_backend", "in tests that use vfio_system: 'refuse' (pyvfio objects "
                                       "created without backend= raise RealBackendRefused) or "
                                       "'allow' (they use the real kernel)", default="refuse")
    parser.addini("vfio_default_backend", "in tests that use vfio_system: 'kernel' (the "
                                          "default backend is the real one, see "
                                          "vfio_real_backend) or 'fake' (it is vfio_backend)",
                  default="kernel")


_INI_CHOICES = {"vfio_real_backend": ("refuse", "allow"),
                "vfio_default_backend": ("kernel", "fake")}


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; check the ini options."""
    for name, choices in _INI_CHOICES.items():
        value = config.getini(name)
        if value not in choices:
            raise pytest.UsageError(f"ini option {name} = {value!r}: must be one of "
                                    f"{', '.join(choices)}")
    config.addinivalue_line(
        "markers", "vfio_topology(source): fake topology for vfio_system (a shipped name, "
                   "a JSON file or a dict)")
    config.addinivalue_line(
        "markers", "vfio_device(model, bdf=None, **spec): device model (and address, extra "
                   "topology keys) for the vfio_device fixture")
    config.addinivalue_line(
        "markers", "vfio_real_backend: let a test that uses vfio_system create pyvfio objects "
                   "on the real kernel (without backend=)")


class RealBackendRefused(RuntimeError):
    """A pyvfio call in a test that uses the fake machine asked for the
    default (real kernel) backend: the test forgot ``backend=``."""


@dataclass
class _Guard:
    """Refuses the real backend for one test, and remembers each refusal."""

    refused: list[RealBackendRefused] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)  #: ids of those the test raised

    def __call__(self) -> Backend:
        __tracebackhide__ = True
        call, where = _pyvfio_call(sys._getframe(1))
        error = RealBackendRefused(
            f"{call}{where} asked for the real kernel backend (this machine's /dev/vfio, "
            f"/dev/iommu and sysfs) in a test that uses the fake machine: pass "
            f"backend=vfio_backend (or vfio_device.backend).  To use the real kernel here, "
            f"mark the test @pytest.mark.vfio_real_backend or set the ini option "
            f"vfio_real_backend = allow.")
        self.refused.append(error)
        raise error


def _pyvfio_call(frame: FrameType | None) -> tuple[str, str]:
    """The pyvfio function the code outside pyvfio called (the outermost
    pyvfio frame; the plugin's own frames do not count), and where it was
    called from."""
    entry: FrameType | None = None
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] == "pyvfio" and not module.startswith("pyvfio.testing"):
            entry = frame
        frame = frame.f_back
    if entry is None:
        return "pyvfio.default_backend()", ""
    name = f"{entry.f_globals['__name__']}.{_qualname(entry)}"
    name = name[:-len(".__init__")] if name.endswith(".__init__") else name
    caller = entry.f_back
    where = f" (called at {caller.f_code.co_filename}:{caller.f_lineno})" if caller else ""
    return f"{name}()", where


def _qualname(frame: FrameType) -> str:
    code = frame.f_code
    qualname: str | None = getattr(code, "co_qualname", None)  # Python 3.11+
    if qualname is not None:
        return qualname
    owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
    if owner is None:
        return code.co_name
    cls = owner if isinstance(owner, type) else type(owner)
    return f"{cls.__qualname__}.{code.co_name}"


_GUARD_KEY = pytest.StashKey[_Guard]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Note the refusals that reached pytest (the others were caught by the
    code under test: vfio_system reports them at teardown)."""
    guard = item.stash.get(_GUARD_KEY, None)
    error: BaseException | None = call.excinfo.value if call.excinfo is not None else None
    while guard is not None and error is not None and id(error) not in guard.reported:
        guard.reported.add(id(error))
        error = error.__cause__ or error.__context__


@dataclass
class FakeVfioDevice:
    """A device of a fake system, bound to vfio-pci, ready to open."""

    bdf: str  #: its PCI address
    model_name: str  #: the model it was built from (``"edu"``, ``"nvme"``, ...)
    system: System  #: the fake machine
    group: int  #: its IOMMU group

    @property
    def backend(self) -> Backend:
        """The fake system's backend."""
        return self.system.backend

    @property
    def pci(self) -> PciDevice:
        """The fake kernel's PCI device (driver, domain, DMA)."""
        return self.system.device(self.bdf)

    @property
    def model(self) -> Any:
        """The device model (e.g. :class:`pyvfio.fake.models.edu.EduDevice`):
        inspect its registers and state in assertions."""
        return self.pci.model

    @property
    def group_path(self) -> str:
        """``/dev/vfio/N``."""
        return sysfs.group_dev_path(self.group, self.backend)

    @property
    def cdev_path(self) -> str:
        """``/dev/vfio/devices/vfioN``."""
        return sysfs.device_cdev_path(self.bdf, self.backend)

    @property
    def faults(self) -> list[Any]:
        """IOMMU faults the device caused so far (blocked DMA)."""
        return [f for f in self.system.faults if f.bdf == self.bdf]

    def viability(self) -> viability.GroupViability:
        """Whether its group can be used, and what else is in it."""
        return viability.explain_device(self.bdf, self.backend)

    def open(self) -> Device:
        """Open the device's vfio cdev (:meth:`pyvfio.Device.open`); bind it
        to an :class:`pyvfio.IommuFd` of the same backend before use.
        Close it (``with``) before the test ends."""
        from ..core.device import Device

        return Device.open(self.bdf, backend=self.backend)


#: Where vfio_system leaves the address of the vfio_device it prepared.
_DEVICE_KEY = pytest.StashKey[str]()


def _param(request: pytest.FixtureRequest, name: str) -> Any:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and name in callspec.params:
        return callspec.params[name]
    return None


def _device_request(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The vfio_device the test asks for: {"model": ..., "bdf": ..., **spec}."""
    spec: dict[str, Any] = {}
    marker = request.node.get_closest_marker("vfio_device")
    if marker is not None:
        if marker.args:
            spec["model"] = marker.args[0]
        spec.update(marker.kwargs)
    param = _param(request, "vfio_device")
    if isinstance(param, str):
        spec = {"model": param}
    elif isinstance(param, dict):
        spec = dict(param)
    spec.setdefault("model", DEFAULT_MODEL)
    if spec.get("bdf") is not None:
        spec["bdf"] = sysfs.normalize_bdf(str(spec["bdf"]))
    return spec


def _topology_source(request: pytest.FixtureRequest) -> Any:
    param = _param(request, "vfio_system")
    if param is not None:
        return param
    marker = request.node.get_closest_marker("vfio_topology")
    if marker is not None and marker.args:
        return marker.args[0]
    return request.config.getini("vfio_topology") or DEFAULT_TOPOLOGY


def _with_device(topo: dict[str, Any], want: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The topology (with the wanted device added if it has none) and the
    device's address."""
    for dev in topo["devices"]:
        if dev.get("model") == want["model"] and want.get("bdf") in (None, dev["bdf"]):
            return topo, str(dev["bdf"])
    topo = copy.deepcopy(topo)
    used = {d["bdf"] for d in topo["devices"]}
    bdf = want.get("bdf")
    if bdf is None:
        bdf = next(f"0000:00:{slot:02x}.0" for slot in range(0x10, 0x20)
                   if f"0000:00:{slot:02x}.0" not in used)
    spec = {k: v for k, v in want.items()}
    spec["bdf"] = bdf
    spec.setdefault("driver", None)
    topo["devices"].append(spec)
    return topo, str(bdf)


def _default_replacement(request: pytest.FixtureRequest,
                         system: System) -> Backend | _Guard | None:
    """What pyvfio.default_backend() gives during the test: the real kernel
    backend (None), the fake one, or a refusal."""
    if request.node.get_closest_marker("vfio_real_backend") is not None:
        return None
    if request.config.getini("vfio_default_backend") == "fake":
        return system.backend
    if request.config.getini("vfio_real_backend") == "refuse":
        guard = request.node.stash[_GUARD_KEY] = _Guard()
        return guard
    return None


@pytest.fixture
def vfio_system(request: pytest.FixtureRequest) -> Iterator[System]:
    """A fresh fake machine (see the module documentation for choosing its
    topology)."""
    from ..fake import System
    from ..fake.machine.topology import load

    topo = load(_topology_source(request))
    if "vfio_device" in request.fixturenames:
        topo, bdf = _with_device(topo, _device_request(request))
        request.node.stash[_DEVICE_KEY] = bdf
    system = System(topo)
    replacement = _default_replacement(request, system)
    with (contextlib.nullcontext() if replacement is None
          else override_default_backend(replacement)):
        yield system
    guard = request.node.stash.get(_GUARD_KEY, None)
    caught = [e for e in guard.refused if id(e) not in guard.reported] if guard else []
    if caught:
        pytest.fail("the code under test caught RealBackendRefused:\n"
                    + "\n".join(f"  {e}" for e in caught), pytrace=False)
    leaked = system.backend.open_files
    if leaked and request.config.getini("vfio_leak_check"):
        pytest.fail(f"the test left VFIO files of the fake system open: {leaked} "
                    "(close devices, groups, containers and iommufds; or set "
                    "vfio_leak_check = false)", pytrace=False)


@pytest.fixture
def vfio_backend(vfio_system: System) -> Backend:
    """The backend of ``vfio_system``."""
    return vfio_system.backend


@pytest.fixture
def vfio_device(request: pytest.FixtureRequest, vfio_system: System) -> FakeVfioDevice:
    """A device of the chosen model bound to vfio-pci in ``vfio_system``,
    with every other device of its IOMMU group (bridges excepted)."""
    from ..errors import VfioError

    want = _device_request(request)
    bdf = request.node.stash[_DEVICE_KEY]
    b = vfio_system.backend
    try:
        group = sysfs.device_group(bdf, b)
    except VfioError as e:
        pytest.fail(f"vfio_device {bdf}: {e}", pytrace=False)
    state = binding.BindingState(None)
    try:
        binding.bind_group(group, force=True, backend=b, state=state)
    except VfioError as e:
        why = viability.explain_device(bdf, b).message()
        pytest.fail(f"vfio_device {bdf}: binding IOMMU group {group} to vfio-pci failed: {e}\n"
                    f"{why}", pytrace=False)
    verdict = viability.explain_device(bdf, b)
    if not verdict.viable or sysfs.device_driver(bdf, b) != "vfio-pci":
        pytest.fail(f"vfio_device {bdf}: its IOMMU group is not usable after binding:\n"
                    f"{verdict.message()}", pytrace=False)
    return FakeVfioDevice(bdf, str(want["model"]), vfio_system, group)


class FaultWalker:
    """What the ``vfio_fault_walk`` fixture gives: the failure walk over
    one fake machine (:func:`pyvfio.fake.fault_walk`)."""

    def __init__(self, system: System) -> None:
        #: The machine walked (the test's ``vfio_system``).
        self.system = system
        #: The walks run so far, in order.
        self.walks: list[FaultWalk] = []

    def __call__(self, fn: Callable[[], object], *, kinds: Iterable[str] | None = None,
                 errno: int | None = None,
                 expect: Tuple[Type[BaseException], ...] | None = None,
                 check: bool = True) -> FaultWalk:
        """Walk ``fn`` (see :func:`pyvfio.fake.fault_walk` for ``kinds``,
        ``errno`` and ``expect``, default :class:`pyvfio.VfioError`); with
        ``check`` the test fails, listing every N that left something behind
        or raised another exception.  Returns the
        :class:`~pyvfio.fake.FaultWalk` (``walk.steps``, ``walk.walked``,
        ``walk.problems``)."""
        from ..errors import VfioError
        from ..fake import fault_walk

        result = fault_walk(self.system, fn, kinds=kinds, errno=errno,
                            expect=expect if expect is not None else (VfioError,))
        self.walks.append(result)
        if check and result.problems:
            pytest.fail(f"{len(result.problems)} of {result.walked} injected failures went wrong:\n"
                        + "\n".join(str(s) for s in result.problems), pytrace=False)
        return result


@pytest.fixture
def vfio_fault_walk(vfio_system: System) -> FaultWalker:
    """A :class:`FaultWalker` over ``vfio_system``: ``vfio_fault_walk(fn)``
    runs ``fn`` with each of its kernel operations failing in turn and
    fails the test on what a failure left behind."""
    return FaultWalker(vfio_system)
