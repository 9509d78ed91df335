"""/sys/module: the loaded modules of the fake and their parameters
(kernel/params.c): vfio's ``enable_unsafe_noiommu_mode``,
vfio_iommu_type1's and vfio_pci's options, iommufd's
``allow_unsafe_interrupts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .kernfs import Attr, Dir, Node
from .kstrtox import parse_bool, parse_uint

if TYPE_CHECKING:
    from .sysfs import Sysfs

__all__ = ["module_names", "module_root"]


def module_names(fs: Sysfs) -> list[str]:
    """The loaded modules, as /sys/module names them."""
    mods = fs.system.modules
    names = []
    if mods["vfio"]:
        names.append("vfio")
    if mods["vfio_pci"]:
        names += ["vfio_pci", "vfio_pci_core"]
    if mods["vfio_iommu_type1"]:
        names.append("vfio_iommu_type1")
    if mods["iommufd"]:
        names.append("iommufd")
    if mods["pci_stub"]:
        names.append("pci_stub")
    return names


def module_root(fs: Sysfs) -> dict[str, Node]:
    """/sys/module: one folder per loaded module."""
    return {name: Dir(lambda n=name: module_dir(fs, n))  # type: ignore[misc]
            for name in module_names(fs)}


def module_dir(fs: Sysfs, name: str) -> dict[str, Node]:
    """/sys/module/<name>: its ``parameters`` folder."""
    params: dict[str, Node] = {}
    system = fs.system
    if name == "vfio":
        params["enable_unsafe_noiommu_mode"] = bool_param(
            lambda: system.noiommu, lambda v: setattr(system, "noiommu", v))
    elif name == "vfio_iommu_type1":
        t1 = system.type1_params
        for key in ("allow_unsafe_interrupts", "disable_hugepages"):
            params[key] = bool_param(lambda k=key: bool(t1[k]),  # type: ignore[misc]
                                     lambda v, k=key: t1.__setitem__(k, v))  # type: ignore[misc]
        params["dma_entry_limit"] = Attr(
            show=lambda: f"{t1['dma_entry_limit']}\n".encode(),
            store=lambda v: t1.__setitem__("dma_entry_limit", parse_uint(v)))
    elif name == "vfio_pci":
        vp = fs.vfio_pci_params
        for key in ("nointxmask", "disable_idle_d3", "enable_sriov"):
            params[key] = bool_param(lambda k=key: vp[k],  # type: ignore[misc]
                                     lambda v, k=key: vp.__setitem__(k, v))  # type: ignore[misc]
        params["disable_denylist"] = Attr(
            show=lambda: b"Y\n" if vp["disable_denylist"] else b"N\n")
    elif name == "iommufd":
        ip = system.iommufd_params
        params["allow_unsafe_interrupts"] = bool_param(
            lambda: ip["allow_unsafe_interrupts"],
            lambda v: ip.__setitem__("allow_unsafe_interrupts", v))
    out: dict[str, Node] = {}
    if params:
        out["parameters"] = Dir(lambda: params)
    return out


def bool_param(get: Callable[[], bool], put: Callable[[bool], None]) -> Attr:
    """A boolean module parameter (``Y``/``N``)."""
    return Attr(show=lambda: b"Y\n" if get() else b"N\n",
                store=lambda v: put(parse_bool(v)))
