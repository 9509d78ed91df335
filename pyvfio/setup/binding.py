"""Moving PCI devices between their kernel driver and vfio-pci, safely.

The mechanism is the one ``driverctl`` and ``dpdk-devbind`` use: write the
wanted driver's name to the device's ``driver_override``, unbind the
current driver, then ask the PCI bus to probe the device again
(``/sys/bus/pci/drivers_probe``); only the overridden driver can take it::

    from pyvfio.setup import binding

    b = binding.bind("0000:03:00.0")          # e1000e -> vfio-pci
    ...                                       # use it through VFIO
    binding.restore("0000:03:00.0")           # vfio-pci -> e1000e

Safety rules:

* A device the host is using is not unbound unless ``force=True``
  (:class:`DeviceInUseError`, errno EBUSY): block devices under it with
  mounted file systems or active swap (also through partitions, device
  mapper and md holders, and on every controller of an NVMe multipath
  disk), 9p/virtiofs file systems served by it, network interfaces under
  it that are up (their routes are listed), and, for a device on
  vfio-pci, processes holding its VFIO files open (the kernel's unbind
  would wait for them).  See :func:`device_users`.
* The original driver and ``driver_override`` are remembered before
  anything changes, in a :class:`BindingState`: by default the file
  ``/run/pyvfio/bindings.json`` (``$PYVFIO_STATE_DIR`` overrides the
  folder) for the real kernel, and memory kept per backend for a fake
  system.  :func:`restore` puts the device back and forgets the record.
* Failures say what the kernel refused and where the device was left.  One
  case worth knowing (measured on Linux 7.3): while a user owns the IOMMU
  group (``/dev/vfio/N`` open, or a device of it bound to an iommufd), a
  DMA-capable kernel driver cannot take a device of that group: ``bind``
  fails with EBUSY and ``drivers_probe`` with EINVAL, and the device stays
  without a driver.  :func:`restore` then keeps the record so that it can
  be retried once the user is gone.

Whole groups: :func:`bind_group`, :func:`unbind_group`, :func:`restore_group`
act on every device of an IOMMU group except bridges (pcieport, or no
driver: both keep the group viable, and vfio-pci does not drive bridges).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..backend import Backend, resolve_backend
from ..core import sysfs, viability
from ..errors import InvalidArgumentError, VfioError
from . import _progress, devices, kernel_support
from .binding_state import (_NO_DRIVER, STATE_DIR, BindError, BindingRecord, BindingState,
                            BindingStateError, is_driver_name)
from .environment import module_fix
from .host_use import DeviceInUseError, Usage, UsageScan, device_users

# The binding workflow's API: the operations, their results and errors, and
# what they consult (the host-use scan, the remembered state).
__all__ = [
    "Usage",
    "UsageScan",
    "device_users",
    "DeviceInUseError",
    "BindError",
    "Binding",
    "BindingRecord",
    "BindingState",
    "STATE_DIR",
    "bind",
    "unbind",
    "restore",
    "restore_all",
    "bind_many",
    "bind_group",
    "group_devices",
    "unbind_group",
    "restore_group",
]

_read = sysfs.try_read


# -- results ----------------------------------------------------------------------------
@dataclass
class Binding:
    """The outcome of :func:`bind`, :func:`unbind` or :func:`restore` for
    one device."""

    bdf: str  #: the device's PCI address
    previous_driver: str | None  #: the driver before this call
    driver: str | None  #: the driver now
    changed: bool  #: whether this call changed anything
    group: int | None  #: the IOMMU group
    #: The device's original state, as remembered (None after a restore).
    original: BindingRecord | None = None
    #: VFIO device nodes of the device, once bound to vfio-pci.
    nodes: list[str] = field(default_factory=list)
    #: Notes for people (e.g. "group 11 is not viable yet: ...").
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"bdf": self.bdf, "previous_driver": self.previous_driver,
                "driver": self.driver, "changed": self.changed, "group": self.group,
                "original": self.original.as_dict() if self.original else None,
                "nodes": list(self.nodes), "notes": list(self.notes)}

    def __str__(self) -> str:
        if not self.changed:
            line = f"{self.bdf}: already on {self.driver or 'no driver'}"
        else:
            line = (f"{self.bdf}: {self.previous_driver or 'no driver'} -> "
                    f"{self.driver or 'no driver'}")
        if self.group is not None:
            line += f" (IOMMU group {self.group})"
        if self.nodes:
            line += ": " + ", ".join(self.nodes)
        return "\n".join([line] + [f"  note: {n}" for n in self.notes])


_LOG = logging.getLogger(__name__)


# -- the sysfs steps --------------------------------------------------------------------
def _write(b: Backend, path: str, value: str, what: str) -> None:
    _LOG.info("%s: %s <- %r", what, path, value.strip())
    try:
        b.sysfs_write(path, value)
    except OSError as e:
        err = e.errno or errno.EIO
        _LOG.info("%s: %s", what, os.strerror(err))
        hint = " (run as root)" if err in (errno.EACCES, errno.EPERM) else ""
        raise BindError(err, f"{what}: writing {value.strip()!r} to {path} failed: "
                             f"{os.strerror(err)}{hint}") from None


def _override(b: Backend, bdf: str) -> str | None:
    text = _read(b, f"{sysfs.PCI_DEVICES}/{bdf}/driver_override")
    return None if text in (None, "", "(null)") else text


def _set_override(b: Backend, bdf: str, driver: str | None) -> None:
    # An empty write never reaches the kernel's store function: "\n" clears.
    _write(b, f"{sysfs.PCI_DEVICES}/{bdf}/driver_override", driver or "\n",
           f"setting the driver override of {bdf}")


def _unbind_driver(b: Backend, bdf: str, driver: str) -> None:
    _write(b, f"/sys/bus/pci/drivers/{driver}/unbind", bdf, f"unbinding {bdf} from {driver}")


def _probe(b: Backend, bdf: str) -> OSError | None:
    try:
        b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)
    except OSError as e:
        _LOG.info("probing %s: drivers_probe refused: %s", bdf, os.strerror(e.errno or errno.EIO))
        return e
    if _LOG.isEnabledFor(logging.INFO):
        _LOG.info("probing %s: now on %s", bdf, sysfs.device_driver(bdf, b) or "no driver")
    return None


def _group_of(b: Backend, bdf: str) -> int | None:
    try:
        return sysfs.device_group(bdf, b)
    except VfioError:
        return None


def _vfio_nodes(b: Backend, bdf: str, group: int | None, timeout: float) -> list[str]:
    """The device's VFIO nodes; waits up to ``timeout`` for udev/devtmpfs to
    create them (they appear asynchronously after the bind)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = []
        if group is not None:
            path = sysfs.group_dev_path(group, b)
            if b.exists(path):
                nodes.append(path)
        try:
            cdev = sysfs.device_cdev_path(bdf, b)
        except VfioError:
            cdev = None
        if cdev is not None and b.exists(cdev):
            nodes.append(cdev)
        expected = (group is not None) + (cdev is not None)
        if len(nodes) >= max(expected, 1) or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.02)


def _busy_group_note(b: Backend, bdf: str, group: int | None) -> str:
    """Why a kernel driver may have been refused: the group is user-owned."""
    if group is None:
        return ""
    others = [m for m in sysfs.group_devices(group, b) if m != bdf]
    on_vfio = [m for m in others if sysfs.device_driver(m, b) == "vfio-pci"]
    holders = [u.what for u in UsageScan(b, vfio_files=True).group_users(bdf)]
    if not on_vfio and not holders:
        return ""
    text = (f"IOMMU group {group} may be owned by user space ({', '.join(on_vfio)} on vfio-pci"
            + (f"; {'; '.join(sorted(set(holders)))}" if holders else "") + "): while a user owns "
            "the group the kernel refuses DMA-capable drivers for its devices (bind: EBUSY, "
            f"drivers_probe: EINVAL); close the VFIO files and run `pyvfio restore {bdf}` again")
    return text


def _in_use(b: Backend, bdfs: Iterable[str], what: str, host_driver: bool = False) -> None:
    """DeviceInUseError when something uses the devices; ``host_driver``:
    a DMA-capable host driver is to take them, so holders of their IOMMU
    group count too."""
    scan = UsageScan(b, vfio_files=True)
    usages = [u for bdf in bdfs for u in scan.for_device(bdf)
              + (scan.group_users(bdf) if host_driver else [])]
    if usages:
        lines = "\n".join(f"  - {u.bdf}: {u.what}" for u in usages)
        raise DeviceInUseError(
            f"refusing to {what}: the host is using it:\n{lines}\n"
            "stop using it first, or pass --force (force=True) to do it anyway", usages)


def _device(b: Backend, bdf: str) -> devices.PciDeviceInfo:
    try:
        return devices.pci_device(bdf, b)
    except VfioError as e:
        raise BindError(errno.ENODEV, str(e), target=f"device {bdf}") from None


def _driver_missing(b: Backend, driver: str) -> str:
    """Why ``driver`` is not there and what to do, as ``pyvfio doctor``
    says it: modprobe only a module the kernel has."""
    module = driver.replace("-", "_")
    if module in kernel_support.MODULE_OPTIONS:
        build = kernel_support.kernel_build(b)
        return f"the {driver} driver is not loaded: {module_fix(build, module)}"
    return f"the {driver} driver is not loaded (modprobe {module})"


def _check_bindable(b: Backend, info: devices.PciDeviceInfo, driver: str) -> None:
    """BindError unless ``driver`` can take device ``info``: it is no
    bridge (for vfio-pci), the driver is there, the device has the IOMMU
    group vfio-pci needs."""
    bdf = info.bdf
    if driver == "vfio-pci" and info.is_bridge:
        raise BindError(errno.EINVAL, f"{bdf} is a PCI bridge ({info.description}): vfio-pci "
                                      "does not drive bridges, and a bridge on pcieport or "
                                      "without a driver keeps its group viable",
                        target=f"device {bdf}")
    if not b.exists(f"/sys/bus/pci/drivers/{driver}"):
        raise BindError(errno.ENODEV, _driver_missing(b, driver), target=f"device {bdf}")
    if driver == "vfio-pci" and info.iommu_group is None and not _noiommu(b):
        raise BindError(errno.EINVAL, f"{bdf} is in no IOMMU group: vfio-pci needs an active "
                                      "IOMMU (see `pyvfio doctor`)", target=f"device {bdf}")


# -- operations -------------------------------------------------------------------------
def bind(bdf: str, driver: str = "vfio-pci", *, force: bool = False,
         backend: Backend | None = None, state: BindingState | None = None,
         timeout: float = 5.0) -> Binding:
    """Bind PCI device ``bdf`` to kernel driver ``driver`` (vfio-pci by
    default), as ``pyvfio bind`` does.  Not to be confused with
    :meth:`pyvfio.Device.bind`, which then binds the opened vfio device
    file to an iommufd.

    Raises :class:`DeviceInUseError` when the host uses the device (unless
    ``force``), :class:`BindError` when the kernel refuses.  The original
    driver is remembered in ``state`` (:meth:`BindingState.default`) for
    :func:`restore`.  For vfio-pci, waits up to ``timeout`` seconds for the
    device nodes to appear.
    """
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    if not is_driver_name(driver):
        # the name becomes a folder of /sys/bus/pci/drivers and the override
        raise InvalidArgumentError(f"{driver!r} is not a driver name")
    info = _device(b, sysfs.normalize_bdf(bdf))
    bdf = info.bdf
    group = info.iommu_group
    if info.driver == driver:
        nodes = _vfio_nodes(b, bdf, group, 0) if driver == "vfio-pci" else []
        return Binding(bdf, driver, driver, False, group, st.get(bdf), nodes)
    host_driver = not viability.driver_keeps_group_viable(driver)
    # the host's use of the device first: it is what a user must act on
    if (info.driver is not None or host_driver) and not force:
        _in_use(b, [bdf], f"unbind {bdf} from {info.driver}" if info.driver is not None
                else f"bind {bdf} to {driver}", host_driver)
    _check_bindable(b, info, driver)
    _LOG.info("binding %s (group %s) from %s to %s", bdf, group, info.driver or "no driver",
              driver)
    st.remember(bdf, info.driver, info.driver_override)
    _set_override(b, bdf, driver)
    if info.driver is not None:
        _unbind_driver(b, bdf, info.driver)
    err = _probe(b, bdf)
    now = sysfs.device_driver(bdf, b)
    if now != driver:
        why = f" (drivers_probe: {os.strerror(err.errno)})" if err is not None and err.errno else ""
        note = _busy_group_note(b, bdf, group) if driver not in viability.VIABLE_DRIVERS else ""
        raise BindError(errno.EIO if err is None else (err.errno or errno.EIO),
                        f"{driver} did not take {bdf}{why}; the device is now on "
                        f"{now or 'no driver'}" + (f"; {note}" if note else "")
                        + f"; `pyvfio restore {bdf}` returns it to "
                          f"{info.driver or 'no driver'}", target=f"device {bdf}")
    result = Binding(bdf, info.driver, now, True, group, st.get(bdf))
    if driver == "vfio-pci":
        result.nodes = _vfio_nodes(b, bdf, group, timeout)
    result.notes += _group_notes(b, bdf, group, driver)
    return result


def _group_notes(b: Backend, bdf: str, group: int | None, driver: str) -> list[str]:
    """What a user of ``bdf`` should know about its group once it is on
    ``driver``: not viable yet, or shared with other devices."""
    if group is None:
        return []
    verdict = viability.explain_group(group, bdf, b)
    if not verdict.viable:
        return [verdict.summary()]
    if verdict.at_risk and driver == "vfio-pci":
        return [f"group {group} has {len(verdict.at_risk)} other device(s) that share its I/O "
                "address space: " + ", ".join(f"{m.bdf} ({m.driver or 'no driver'})"
                                              for m in verdict.at_risk)]
    return []


def _noiommu(b: Backend) -> bool:
    return (_read(b, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode") or "N") in ("Y", "1")


def unbind(bdf: str, *, force: bool = False, backend: Backend | None = None,
           state: BindingState | None = None) -> Binding:
    """Detach ``bdf`` from its driver and keep it driver-less (its
    driver_override becomes ``none``, so no driver takes it until
    :func:`restore`).  A driver-less device keeps its group viable."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    info = _device(b, sysfs.normalize_bdf(bdf))
    bdf = info.bdf
    if info.driver is None and info.driver_override == _NO_DRIVER:
        return Binding(bdf, None, None, False, info.iommu_group, st.get(bdf))
    if info.driver is not None and not force:
        _in_use(b, [bdf], f"unbind {bdf} from {info.driver}")
    st.remember(bdf, info.driver, info.driver_override)
    _set_override(b, bdf, _NO_DRIVER)
    if info.driver is not None:
        _unbind_driver(b, bdf, info.driver)
    return Binding(bdf, info.driver, sysfs.device_driver(bdf, b), info.driver is not None,
                   info.iommu_group, st.get(bdf))


def restore(bdf: str | Binding, *, force: bool = False, backend: Backend | None = None,
            state: BindingState | None = None) -> Binding:
    """Give ``bdf`` back its original driver and driver_override (from the
    :class:`Binding` passed, else from ``state``).  Without a record, the
    override is cleared and the kernel picks the driver, as after boot.

    Raises :class:`BindError` when the original driver does not take the
    device back (the record is kept, so it can be retried).
    """
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    record = bdf.original if isinstance(bdf, Binding) else None
    name = sysfs.normalize_bdf(bdf.bdf if isinstance(bdf, Binding) else bdf)
    if record is None:
        record = st.get(name)
    elif record.problem() is not None:
        # its driver names a sysfs path below: only a sound record may
        raise BindError(errno.EINVAL, f"cannot restore {name}: the record is unusable: "
                                      f"{record.problem()}", target=f"device {name}")
    info = _device(b, name)
    bdf = info.bdf
    group = info.iommu_group
    if record is not None:
        target, target_override = record.driver, record.driver_override
        if info.driver == target and info.driver_override == target_override:
            st.forget(bdf)
            return Binding(bdf, info.driver, info.driver, False, group, None)
    else:
        target, target_override = None, None
        if info.driver_override is None and info.driver not in (None, "vfio-pci"):
            return Binding(bdf, info.driver, info.driver, False, group, None,
                           notes=["no record of another original driver: left as it is"])
    need_unbind = info.driver is not None and (record is None or info.driver != target)
    host_driver = (record is None or target is not None) \
        and not viability.driver_keeps_group_viable(target)
    if (need_unbind or host_driver) and not force:
        _in_use(b, [bdf], f"give {bdf} back to {target or 'the kernel'}"
                if host_driver else f"unbind {bdf} from {info.driver}", host_driver)
    _LOG.info("restoring %s from %s to %s", bdf, info.driver or "no driver",
              (target or "no driver") if record is not None else "the kernel's choice")
    if info.driver_override != target_override:
        _set_override(b, bdf, target_override)
    if need_unbind:
        assert info.driver is not None
        _unbind_driver(b, bdf, info.driver)
    err: OSError | None = None
    if sysfs.device_driver(bdf, b) is None and (record is None or target is not None):
        err = _probe(b, bdf)
        if target is not None and sysfs.device_driver(bdf, b) is None \
                and b.exists(f"/sys/bus/pci/drivers/{target}"):
            _LOG.info("restoring %s: no driver took it on probe; binding %s directly", bdf, target)
            try:
                b.sysfs_write(f"/sys/bus/pci/drivers/{target}/bind", bdf)
            except OSError as e:
                err = e
    now = sysfs.device_driver(bdf, b)
    if record is not None and now != target:
        why = f" ({os.strerror(err.errno)})" if err is not None and err.errno else ""
        note = _busy_group_note(b, bdf, group)
        raise BindError(errno.EIO if err is None else (err.errno or errno.EIO),
                        f"{target} did not take {bdf} back{why}; the device is now on "
                        f"{now or 'no driver'}" + (f"; {note}" if note else "")
                        + "; the record is kept", target=f"device {bdf}")
    if record is not None:
        st.forget(bdf)
    result = Binding(bdf, info.driver, now, now != info.driver or need_unbind, group, None)
    if record is None:
        result.notes.append(f"no record of its original driver: the kernel chose {now or 'no driver'}")
    return result


def restore_all(*, force: bool = False, backend: Backend | None = None,
                state: BindingState | None = None) -> list[Binding]:
    """:func:`restore` every device with a record.  Stops at the first
    failure (:class:`BindError`, :class:`DeviceInUseError`)."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    return [restore(rec.bdf, force=force, backend=b, state=st) for rec in st.records()]


def _group_targets(b: Backend, group: int) -> list[str]:
    why = viability.explain_group(group, None, b)
    return [m.bdf for m in why.members
            if not m.is_bridge and sysfs._BDF_COMPONENT.match(m.bdf)]


def _return_to(b: Backend, bdf: str, driver: str | None, override: str | None) -> None:
    """Put ``bdf`` back on ``driver`` with ``override`` (a rollback)."""
    if _override(b, bdf) != override:
        _set_override(b, bdf, override)
    now = sysfs.device_driver(bdf, b)
    if now is not None and now != driver:
        _unbind_driver(b, bdf, now)
    if driver is not None and sysfs.device_driver(bdf, b) is None:
        _probe(b, bdf)
        if sysfs.device_driver(bdf, b) is None and b.exists(f"/sys/bus/pci/drivers/{driver}"):
            _write(b, f"/sys/bus/pci/drivers/{driver}/bind", bdf, f"binding {bdf} to {driver}")
    now = sysfs.device_driver(bdf, b)
    if now != driver:
        raise BindError(errno.EIO, f"{bdf} is on {now or 'no driver'}, not {driver or 'no driver'}",
                        target=f"device {bdf}")


def bind_many(bdfs: Iterable[str], driver: str = "vfio-pci", *, force: bool = False,
              backend: Backend | None = None, state: BindingState | None = None,
              timeout: float = 5.0, what: str | None = None,
              prepare: Callable[[], None] | None = None) -> list[Binding]:
    """Bind every device of ``bdfs`` to ``driver``, all or nothing.

    Every device is checked before any moves: first whether the host uses
    it (:class:`DeviceInUseError`, unless ``force``), then whether
    ``driver`` can take it (a bridge, a driver that is not there -- the
    hint is ``pyvfio doctor``'s --, no IOMMU group: :class:`BindError`).
    If a move fails midway, the devices this call moved go back to the
    driver and driver_override they had, and the error says so.
    ``what`` names the operation in messages; ``prepare`` is called once
    every device passed the checks, before the first move (its exception
    stops the bind: e.g. the persistent bindings cannot be written).
    """
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    if not is_driver_name(driver):
        raise InvalidArgumentError(f"{driver!r} is not a driver name")
    infos: list[devices.PciDeviceInfo] = []
    for name in bdfs:
        info = _device(b, sysfs.normalize_bdf(name))
        if all(i.bdf != info.bdf for i in infos):
            infos.append(info)
    moving = [i for i in infos if i.driver != driver]
    host_driver = not viability.driver_keeps_group_viable(driver)
    if not force:
        if what is None and len(moving) == 1:
            one = moving[0]
            what = (f"unbind {one.bdf} from {one.driver}" if one.driver is not None
                    else f"bind {one.bdf} to {driver}")
        _in_use(b, [i.bdf for i in moving if i.driver is not None or host_driver],
                what or f"bind {', '.join(i.bdf for i in moving)} to {driver}", host_driver)
    for info in moving:
        _check_bindable(b, info, driver)
    if prepare is not None:
        prepare()
    had_record = {i.bdf: st.get(i.bdf) is not None for i in moving}
    results: list[Binding] = []
    moved: list[tuple[devices.PciDeviceInfo, bool]] = []
    try:
        for info in infos:
            if info.driver != driver:
                moved.append((info, had_record[info.bdf]))
            results.append(bind(info.bdf, driver, force=True, backend=b, state=st,
                                timeout=timeout))
            _progress.report(len(results), len(infos), what or f"binding to {driver}", info.bdf)
    except VfioError as e:
        _LOG.info("binding failed (%s): giving back the %d device(s) moved", e, len(moved))
        back, stuck = [], []
        for info, recorded in reversed(moved):
            try:
                _return_to(b, info.bdf, info.driver, info.driver_override)
            except VfioError as undo:
                stuck.append(f"{info.bdf} ({undo})")
                continue
            if not recorded:
                st.forget(info.bdf)
            back.append(f"{info.bdf} on {info.driver or 'no driver'}")
        cause = str(e).split("; ")[0]
        summary = (f"rolled back: {', '.join(reversed(back))} again" if back else "")
        if stuck:
            summary += ("; " if summary else "") + "could not put back " + ", ".join(stuck) \
                + " (`pyvfio restore` retries)"
        kind = type(e) if type(e) in (BindError, BindingStateError) else BindError
        raise kind(e.errno or errno.EIO, f"{cause}; {summary or 'nothing had moved'}",
                   target=e.target) from e
    if len(moving) > 1:
        # the notes each bind made saw its group half moved: say it once more, at the end
        for res in results:
            if res.changed and res.group is not None:
                res.notes = [n for n in res.notes if not n.startswith(f"group {res.group} ")]
                res.notes += _group_notes(b, res.bdf, res.group, driver)
    return results


def bind_group(group: int, driver: str = "vfio-pci", *, force: bool = False,
               backend: Backend | None = None, state: BindingState | None = None,
               timeout: float = 5.0) -> list[Binding]:
    """Bind every device of IOMMU group ``group`` except bridges to
    ``driver``, all or nothing (:func:`bind_many`): every device is checked
    for host use, then for the driver, before any moves; if one bind
    fails, the devices this call moved go back and the error is raised."""
    b = resolve_backend(backend)
    done = bind_many(_group_targets(b, group), driver, force=force, backend=b, state=state,
                     timeout=timeout, what=f"bind IOMMU group {group} to {driver}")
    for res in done:
        res.notes = [n for n in res.notes if not n.startswith(f"group {group} ")]
    return done


def group_devices(group: int, backend: Backend | None = None) -> list[str]:
    """The devices :func:`bind_group` binds: every device of IOMMU group
    ``group`` but bridges."""
    return _group_targets(resolve_backend(backend), group)


def unbind_group(group: int, *, force: bool = False, backend: Backend | None = None,
                 state: BindingState | None = None) -> list[Binding]:
    """:func:`unbind` every device of IOMMU group ``group`` except bridges
    (checking all of them for host use first)."""
    b = resolve_backend(backend)
    targets = _group_targets(b, group)
    if not force:
        _in_use(b, [t for t in targets if sysfs.device_driver(t, b) is not None],
                f"unbind IOMMU group {group}")
    return [unbind(t, force=True, backend=b, state=state) for t in targets]


def restore_group(group: int, *, force: bool = False, backend: Backend | None = None,
                  state: BindingState | None = None) -> list[Binding]:
    """:func:`restore` every device of IOMMU group ``group`` that has a
    record (every non-bridge device when none has)."""
    b = resolve_backend(backend)
    st = state if state is not None else BindingState.default(b)
    targets = _group_targets(b, group)
    recorded = [t for t in targets if st.get(t) is not None]
    return [restore(t, force=force, backend=b, state=st) for t in (recorded or targets)]
