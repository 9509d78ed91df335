"""The ``pyvfio`` subcommands' help: a description, examples and the exit
codes of each (``pyvfio COMMAND --help``)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["HELP", "help_options"]

_CODES = {
    0: "0  success",
    2: "2  bad usage: unknown option, device, group or fake topology",
    3: "3  an operation failed: the kernel refused, permission denied, an unsafe or "
       "damaged state or rule file",
}

#: command -> (description, examples, {exit code: meaning}).
HELP: dict[str, tuple[str, list[str], dict[int, str]]] = {
    "status": (
        "PCI devices grouped by driver (like `dpdk-devbind --status`) with their IOMMU group, "
        "whether the group is viable, and what the host uses them for.  On a machine without "
        "IOMMU groups it shows the built-in fake system 'default' instead and says so (in JSON: "
        "\"fake\": {\"fallback\": true, ...}); --real shows this machine.",
        ["pyvfio status",
         "pyvfio status --json | jq '.devices[] | select(.driver == \"vfio-pci\") | .bdf'",
         "pyvfio --fake multi-group status"],
        {0: "0  the devices were listed", 2: _CODES[2], 3: _CODES[3]}),
    "groups": (
        "IOMMU groups with their members and whether each is viable (every device on "
        "vfio-pci, pci-stub, pcieport or no driver).  With arguments, a full explanation of "
        "each group: what blocks it and what a user's DMA reaches.  Falls back to the fake "
        "system like `status`.",
        ["pyvfio groups",
         "pyvfio groups 12                   # explain group 12",
         "pyvfio groups 0000:03:00.0         # the group of this device",
         "pyvfio groups 03:00.0 && echo ready  # exit 0 only if its group is viable"],
        {0: "0  listed; with arguments: every group named is viable",
         1: "1  a group (or a device's group) named as an argument is not viable",
         2: _CODES[2], 3: _CODES[3]}),
    "doctor": (
        "Checks IOMMU in firmware and on the kernel command line, modules, device nodes, "
        "cdev support, permissions, RLIMIT_MEMLOCK and hugepages, with a fix for each problem. "
        "Always about this machine (or --fake): it never falls back.",
        ["pyvfio doctor", "pyvfio doctor --json | jq '.checks[] | select(.status == \"fail\")'"],
        {0: "0  no check failed (warnings allowed)", 1: "1  a check failed: VFIO is not usable",
         2: _CODES[2], 3: _CODES[3]}),
    "bind": (
        "Bind devices to vfio-pci (--driver for another), remembering their driver for "
        "`restore`, and keep them there across reboots with a udev rule per device in "
        "/etc/udev/rules.d (like driverctl; --nosave does not).  Several devices are bound "
        "all or nothing: every one is checked first (host use, then the driver, the IOMMU "
        "group), and if a move fails the devices already moved go back.  Refuses devices the "
        "host uses (mounted file systems and swap on their disks, 9p and virtiofs file "
        "systems, network interfaces that are up, open VFIO files) unless --force.",
        ["pyvfio bind 0000:03:00.0           # to vfio-pci, also after a reboot",
         "pyvfio bind --nosave 03:00.0 03:00.1",
         "pyvfio bind --group 12             # every device of group 12 but bridges",
         "pyvfio bind 8086:10d3              # every device with this vendor:device ID",
         "pyvfio bind --list-persistent      # devices kept on a driver across reboots",
         "pyvfio --fake default bind 00:03.0 # rehearse: later commands see it"],
        {0: "0  every device is on the driver (and its rule written)", 2: _CODES[2],
         3: _CODES[3] + "; the message says which devices went back",
         4: "4  refused: the host uses a device (--force overrides); nothing moved"}),
    "unbind": (
        "Detach devices from their driver and keep them driver-less (driver_override "
        "'none') until `restore`; deletes their persistent binding (--nosave keeps it).",
        ["pyvfio unbind 0000:03:00.0", "pyvfio unbind --group 12"],
        {0: "0  every device is driver-less", 2: _CODES[2], 3: _CODES[3],
         4: "4  refused: the host uses a device (--force overrides)"}),
    "restore": (
        "Give devices their original driver back and delete their persistent binding "
        "(--nosave keeps it).  Without arguments: every device pyvfio remembers or keeps "
        "bound across reboots.",
        ["pyvfio restore", "pyvfio restore 0000:03:00.0", "pyvfio restore --group 12"],
        {0: "0  every device is back (or nothing was to restore)", 2: _CODES[2],
         3: _CODES[3] + "; the record is kept to retry",
         4: "4  refused: the host uses a device (--force overrides)"}),
    "topology dump": (
        "Capture this machine's PCI/IOMMU topology as a fake topology file, which "
        "`pyvfio --fake FILE status` or pyvfio.fake.System.from_file(FILE) replays.",
        ["pyvfio topology dump -o mymachine.json && pyvfio --fake mymachine.json status"],
        {0: "0  captured, and it replays on the fake", 1: "1  captured, but it does not replay",
         2: _CODES[2], 3: _CODES[3]}),
}


def help_options(command: str) -> dict[str, Any]:
    """``add_parser`` keyword arguments for ``command``: its description and
    an epilog with examples and exit codes, kept as written."""
    description, examples, codes = HELP[command]
    epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples)
              + "\n\nexit codes:\n"
              + "\n".join(textwrap.fill(codes[c], 78, initial_indent="  ",
                                         subsequent_indent="     ") for c in sorted(codes)))
    return {"description": textwrap.fill(description, 78), "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}
