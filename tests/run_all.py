#!/usr/bin/env python3
"""Run the whole test suite: host tests, then the real-kernel tests in the VM.

    python tests/run_all.py [--host-only] [--guest-only] [--no-arm64] [-- PYTEST ARGS]

1. The host suite: ``pytest`` on this machine (bindings, layout proof,
   objects on the fake kernel, the fake itself).  Tests marked ``kernel``
   are skipped here.
2. The guest suites: ``tests/vm/guest.py --pytest`` boots a Linux 7.3 guest
   (building the kernel on first use) and runs the tests marked ``kernel``
   in it, once per IOMMU: Intel VT-d in legacy mode, then VT-d in scalable
   mode with first-stage translation (``--iommu intel-sm``), then a
   virtio-iommu (``--iommu virtio``); each boot's parity scenarios run
   against the fake machine captured in that VM.  A last boot with
   ``intel_iommu=off`` runs those marked ``iommu_off`` (the kernel's
   self-test IOMMU, no-IOMMU mode).  Then the arm64 guest
   (``guest.py --arch arm64``: QEMU virt with an SMMUv3 that has both
   stages, so nesting runs on a real IOMMU driver; parity against
   ``arm64-smmuv3``); its kernel is cross-built on first use (about 8
   minutes), the boot takes 3-4 minutes; ``--no-arm64`` leaves it out.
   QEMU's AMD-Vi (``--iommu amd``) does not give a usable guest here;
   tests/vm/README.md says why.

The last line is the combined count in pytest's form.  When the VM cannot
run here (no root to install QEMU, for example) the guest suite is
reported as skipped with the reason, never as passed; under CI (``CI`` set)
that is a failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def counts(junit: Path) -> dict[str, int]:
    """passed/failed/skipped/errors from a JUnit XML file."""
    out = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for s in suites:
        tests = int(s.get("tests", 0))
        failed = int(s.get("failures", 0))
        errors = int(s.get("errors", 0))
        skipped = int(s.get("skipped", 0))
        out["failed"] += failed
        out["errors"] += errors
        out["skipped"] += skipped
        out["passed"] += tests - failed - errors - skipped
    return out


def parity(junit: Path) -> tuple[int, int]:
    """(scenarios, identical) of the fake/real parity tests in a JUnit file."""
    total = identical = 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.get("name", "").startswith("test_parity["):
            total += 1
            identical += not any(child.tag in ("failure", "error", "skipped") for child in case)
    return total, identical


def line(c: dict[str, int]) -> str:
    text = f"{c['passed']} passed, {c['failed'] + c['errors']} failed"
    if c["skipped"]:
        text += f", {c['skipped']} skipped"
    return text


def run_suite(title: str, command: list[str], junit: Path,
              total: dict[str, int]) -> tuple[int, bool]:
    """Run one suite; add its counts to ``total``.  Returns the exit status
    and whether results (JUnit XML) were produced."""
    if junit.exists():
        junit.unlink()
    print(f"== {title} ==", flush=True)
    rc = subprocess.call(command, cwd=REPO)
    if not junit.exists():
        return rc, False
    c = counts(junit)
    for k in total:
        total[k] += c[k]
    print(f"{title.split(' (')[0]}: {line(c)}", flush=True)
    return rc, True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-only", action="store_true")
    ap.add_argument("--guest-only", action="store_true")
    ap.add_argument("--arm64", action=argparse.BooleanOptionalAction, default=True,
                    help="boot the arm64 guest too (SMMUv3 with both stages; default: yes)")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()
    total = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    status = 0
    with tempfile.TemporaryDirectory(prefix="pyvfio-tests-") as tmp:
        if not args.guest_only:
            junit = Path(tmp) / "host.xml"
            rc, _ = run_suite(
                "host suite",
                [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *args.pytest_args],
                junit, total)
            if rc not in (0, 5):
                status = 1
        if not args.host_only:
            # QEMU's emulated IOMMUs for everything marked kernel, then
            # intel_iommu=off for the kernel's own mock IOMMU
            # (IOMMUFD_TEST, which does not work while VT-d is on) and the
            # no-IOMMU mode.
            boots = [
                ("guest suite (Linux 7.3 VM, emulated Intel IOMMU)", "guest-junit.xml", [],
                 "kernel and not iommu_off"),
                ("guest scalable-mode suite (Linux 7.3 VM, Intel IOMMU in scalable mode, "
                 "first-stage translation)", "guest-intel-sm-junit.xml",
                 ["--iommu", "intel-sm"], "kernel and not iommu_off"),
                ("guest virtio-iommu suite (Linux 7.3 VM, virtio-iommu, unsafe interrupts "
                 "allowed)", "guest-virtio-junit.xml",
                 ["--iommu", "virtio"], "kernel and not iommu_off"),
                ("guest IOMMU-off suite (Linux 7.3 VM, intel_iommu=off: self-test IOMMU, "
                 "no-IOMMU mode)", "guest-iommu-off-junit.xml",
                 ["--append", "intel_iommu=off"], "iommu_off"),
            ]
            if args.arm64:
                boots.append(
                    ("guest arm64 suite (Linux 7.3 arm64 VM, SMMUv3 with both stages)",
                     "guest-arm64-junit.xml", ["--arch", "arm64"], "kernel and not iommu_off"))
            for title, name, launcher_args, marks in boots:
                # The guest sees the host's file system, but not its /tmp.
                junit = REPO / "build" / name
                junit.parent.mkdir(exist_ok=True)
                rc, produced = run_suite(
                    title,
                    [sys.executable, str(REPO / "tests" / "vm" / "guest.py"), "-q",
                     *launcher_args, f"--junitxml={junit}", "--pytest", "-q",
                     "-p", "no:cacheprovider", "-m", marks, *args.pytest_args],
                    junit, total)
                if not produced:
                    print(f"{title.split(' (')[0]}: SKIPPED: the test VM did not produce results "
                          f"(exit status {rc})", flush=True)
                    if os.environ.get("CI"):
                        status = 1
                    continue
                scenarios, identical = parity(junit)
                if scenarios:
                    print(f"parity: {scenarios} scenarios, {identical} identical", flush=True)
                if rc not in (0, 5):
                    status = 1
    print(line(total), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
