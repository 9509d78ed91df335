"""The host files outside /sys: /proc and the kernel build's files.

From the topology's ``kernel`` section: ``/proc/sys/kernel/osrelease``,
``/proc/devices`` (with the ``vfio`` and ``vfio-dev`` regions while vfio
is loaded), ``/boot/config-<release>`` and
``/lib/modules/<release>/modules.builtin`` and ``modules.dep``.  From its
``host`` section: ``/proc/self/mountinfo``, ``/proc/swaps`` and
``/proc/net/route`` (``ipv6_route``).
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

from ..core import errno_error
from .chrdev import VFIO_CDEV_MAJOR, VFIO_GROUP_MAJOR
from .host_use import host_entries, host_section

if TYPE_CHECKING:
    from .sysfs import Sysfs

__all__ = ["host_path"]

#: Where the kernel installs the module of each option (modules.builtin and
#: modules.dep list these paths).
_MODULE_FILES = {
    "CONFIG_VFIO": "kernel/drivers/vfio/vfio.ko",
    "CONFIG_VFIO_IOMMU_TYPE1": "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "CONFIG_VFIO_PCI_CORE": "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "CONFIG_VFIO_PCI": "kernel/drivers/vfio/pci/vfio-pci.ko",
    "CONFIG_IOMMUFD": "kernel/drivers/iommu/iommufd/iommufd.ko",
    "CONFIG_PCI_STUB": "kernel/drivers/pci/pci-stub.ko",
}
#: What each module needs loaded first (modules.dep).
_MODULE_DEPS = {
    "CONFIG_VFIO_IOMMU_TYPE1": ("CONFIG_VFIO",),
    "CONFIG_VFIO_PCI_CORE": ("CONFIG_VFIO", "CONFIG_IOMMUFD"),
    "CONFIG_VFIO_PCI": ("CONFIG_VFIO_PCI_CORE", "CONFIG_VFIO", "CONFIG_IOMMUFD"),
    "CONFIG_VFIO": ("CONFIG_IOMMUFD",),
}



def host_path(fs: Sysfs, path: str) -> bytes | dict[str, object] | None:
    """The contents of a host file (bytes) or folder (a dict of its
    names) outside /sys; None for paths under /sys.  ENOENT for other
    paths outside /sys."""
    if not path.startswith("/") or path == "/sys" or path.startswith("/sys/"):
        return None
    parts = [p for p in path.split("/") if p and p != "."]
    node: bytes | dict[str, object] = host_tree(fs)
    for name in parts:
        if not isinstance(node, dict):
            raise errno_error(errno.ENOTDIR, path)
        child = node.get(name)
        if child is None:
            raise errno_error(errno.ENOENT, path)
        assert isinstance(child, (bytes, dict))
        node = child
    return node


def host_tree(fs: Sysfs) -> dict[str, object]:
    """The host files outside /sys as nested dicts (folders) and bytes (files)."""
    kernel = fs.kernel
    release = str(kernel["release"])
    config: dict[str, str] | None = kernel.get("config")
    tree: dict[str, object] = {
        "proc": {"sys": {"kernel": {"osrelease": f"{release}\n".encode()}},
                 "devices": proc_devices(fs), **host_proc(fs)},
    }
    if config is not None:
        tree["boot"] = {f"config-{release}": config_text(release, config)}
        if kernel.get("modules_dir", True):
            builtin = [_MODULE_FILES[o] for o, v in config.items()
                       if o in _MODULE_FILES and v == "y"]
            loadable = [o for o, v in config.items() if o in _MODULE_FILES and v == "m"]
            dep = []
            for option in loadable:
                deps = [_MODULE_FILES[d] for d in _MODULE_DEPS.get(option, ())
                        if config.get(d) == "m"]
                dep.append(f"{_MODULE_FILES[option]}: {' '.join(deps)}".rstrip() + "\n")
            tree["lib"] = {"modules": {release: {
                "modules.builtin": "".join(f"{m}\n" for m in builtin).encode(),
                "modules.dep": "".join(dep).encode(),
            }}}
    return tree


def proc_devices(fs: Sysfs) -> bytes:
    """/proc/devices: the character and block device regions."""
    chars = [(1, "mem"), (4, "tty"), (5, "/dev/tty"), (10, "misc")]
    if fs.system.modules["vfio"]:
        # vfio_cdev_init, vfio_group_init: dynamic regions
        chars += [(VFIO_CDEV_MAJOR, "vfio-dev"), (VFIO_GROUP_MAJOR, "vfio")]
    lines = ["Character devices:"] + [f"{major:3d} {name}" for major, name in chars]
    lines += ["", "Block devices:", "259 blkext"]
    return ("\n".join(lines) + "\n").encode()


def config_text(release: str, config: dict[str, str]) -> bytes:
    """/boot/config-<release> of ``config``."""
    lines = ["#", "# Automatically generated file; DO NOT EDIT.",
             f"# Linux/x86 {release} Kernel Configuration", "#"]
    for name, value in config.items():
        if value == "n":
            lines.append(f"# {name} is not set")
        elif value in ("y", "m") or re.fullmatch(r"-?[0-9]+|0x[0-9a-fA-F]+", value):
            lines.append(f"{name}={value}")
        else:
            lines.append(f'{name}="{value}"')
    return ("\n".join(lines) + "\n").encode()


def host_proc(fs: Sysfs) -> dict[str, object]:
    """/proc/self/mountinfo, /proc/swaps and /proc/net/route{,6}, when
    the topology says what the host uses."""
    host = host_section(fs)
    if not any(host.values()):
        return {}

    def esc(path: str) -> str:  # as show_mountinfo escapes (mangle)
        return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)

    mountinfo = "".join(
        f"{20 + i} 1 {m['dev']} / {esc(m['target'])} rw - {m['fstype']} "
        f"{esc(m['source'])} rw\n" for i, m in enumerate(host["mounts"]))
    swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + "".join(
        f"{path}\tpartition\t1048572\t\t0\t\t-2\n" for path in host["swaps"])
    route = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\t"
             "MTU\tWindow\tIRTT\n")
    for _pdev, e in host_entries(fs, "net"):
        for n in range(e["routes"]):
            route += (f"{e['name']}\t{n:08X}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t"
                      "0\t0\t0\n")
    return {"self": {"mountinfo": mountinfo.encode()}, "swaps": swaps.encode(),
            "net": {"route": route.encode(), "ipv6_route": b""}}
