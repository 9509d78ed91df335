#!/usr/bin/env python3
"""Boot the pyvfio test VM (QEMU with an emulated IOMMU: --iommu, --arch) and run a
command in it.

Longer than 800 lines because the launcher (QEMU command line, initramfs and
its init, console, QMP, results share) is one program that every boot shares;
what differs on arm64 lives in arm64.py.

    python tests/vm/guest.py --run "CMD"            run a shell command in the guest
    python tests/vm/guest.py --pytest [PYTEST ARGS]  run `pytest -m kernel` in the guest

The guest is Linux 7.3 (built by build_kernel.py) with a tiny busybox
initramfs.  Its init mounts the host's whole root file system read-only
over virtio-9p, mounts a writable 9p share at /run/pyvfio-share, chroots
into the host root and runs the command from the repository root (the same
path as on the host), so the host's Python, venv and checkout are used
unchanged.  The command's exit status is passed back through the writable
share and becomes this script's exit status (124: timeout, 125: the VM
failed before the command finished).

Guest hardware (QEMU q35, intel-iommu with interrupt remapping); QEMU ids:
    rp0..rp3  pcie-root-port (hot-pluggable slots, so QMP device_del works)
    edu0      edu            (1234:11e8) behind rp0
    nvme0     nvme           (1b36:0010, serial pyvfio0, 16 MiB) behind rp1
    e1000e0   e1000e         (8086:10d3) behind rp2
    br0       pcie-pci-bridge (1b36:000e) behind rp3, with
    e1000a    e1000          (8086:100e) at br0 slot 1
    e1000b    e1000          (8086:100e) at br0 slot 2  (one IOMMU group of 3)
Guest tests can ask the host to hot-unplug these (tests/vm/hostctl.py).
``--arch arm64`` boots the same devices on qemu-system-aarch64's virt
machine behind an SMMUv3, with an arm64 user space (tests/vm/arm64.py).

Environment in the guest: PYVFIO_GUEST=1, PYVFIO_VM_SHARE=<share path>,
PYTHONDONTWRITEBYTECODE=1, HOME=/tmp, PATH/VIRTUAL_ENV/PYTHONPATH from the
host; /tmp, /run and /dev/shm are tmpfs, everything else is read-only.

Only the standard library is used (Python 3.10+).
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import arm64  # noqa: E402
import build_kernel  # noqa: E402  (same folder)
import hostctl  # noqa: E402

QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
QEMU_SUITE = "bookworm-backports"
BUSYBOX = "/bin/busybox"          # from busybox-static: must be static

GUEST_SHARE = "/run/pyvfio-share"  # where the writable share appears in the guest
STATUS_FILE = "exit-status"        # written by init into the share
RUN_SCRIPT = "run.sh"              # written by us into the share
BOOT_MARKER = "pyvfio-init: running command"

NVME_IMAGE_MIB = 16
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"

#: The IOMMUs the guest can have: name -> (QEMU device arguments, kernel
#: command line).  ``intel``: VT-d in legacy mode, caching mode on (needed
#: for assigning devices inside the guest), interrupt remapping;
#: ``intel-sm``: VT-d in scalable mode with first-stage translation;
#: ``amd``: AMD-Vi with interrupt remapping; ``virtio``: virtio-iommu
#: (described to the guest by ACPI VIOT); ``off``: no IOMMU device and
#: ``intel_iommu=off`` (the kernel's self-test IOMMU, no-IOMMU mode).
IOMMUS: dict[str, tuple[list[str], str]] = {
    "intel": (["-device", "intel-iommu,intremap=on,caching-mode=on"], "intel_iommu=on"),
    "intel-sm": (["-device", "intel-iommu,intremap=on,caching-mode=on,"
                  "x-scalable-mode=on,x-flts=on"], "intel_iommu=on,sm_on"),
    "amd": (["-device", "amd-iommu,intremap=off"], ""),
    # x86 has no interrupt remapping behind a virtio-iommu: VFIO accepts
    # devices only when unsafe interrupts are allowed (iommufd and type1).
    "virtio": (["-device", "virtio-iommu-pci"],
               "iommufd.allow_unsafe_interrupts=1 "
               "vfio_iommu_type1.allow_unsafe_interrupts=1"),
    "off": ([], "intel_iommu=off"),
}

EXIT_TIMEOUT = 124
EXIT_VM_FAILED = 125


#: Folders the guest covers with a tmpfs.
TMPFS_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm")


def hidden_paths(paths: list[str]) -> list[str]:
    """Those of ``paths`` that a guest tmpfs would hide (a checkout or venv
    under /tmp, say): the init script mounts them back."""
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if any(real == d or real.startswith(d + "/") for d in TMPFS_DIRS) and real not in out:
            if " " in real or "," in real:
                raise SystemExit(f"cannot share {real!r} with the guest (space or comma)")
            out.append(real)
    return out


def log(msg: str) -> None:
    print(f"[guest] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Host prerequisites: QEMU, kernel, initramfs
# --------------------------------------------------------------------------

def ensure_qemu() -> str:
    """Path of qemu-system-x86_64; installs 10.x from bookworm-backports if missing.

    A private sources list adds only bookworm-backports; the system's own
    sources stay in use so that dependencies resolve from bookworm.
    """
    path = shutil.which(QEMU)
    if path:
        return path
    apt = build_kernel.PrivateApt(QEMU_SUITE, QEMU_SUITE, include_system=True)
    apt.setup()
    build_kernel.install_packages(
        [QEMU_PACKAGE], extra=[*apt.options(), "-t", QEMU_SUITE])
    path = shutil.which(QEMU)
    if not path:
        raise SystemExit(f"{QEMU} still missing after installing {QEMU_PACKAGE}")
    return path


def qemu_version(qemu: str) -> tuple[int, ...]:
    """(major, minor, micro) of ``qemu --version``; () when unreadable."""
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else ()


#: First QEMU whose multi-threaded TCG no longer reads a stale cached
#: AddressSpaceDispatch (QEMU issue 3040, "system/physmem: fix use-after-free
#: with dispatch", in 10.0.4 and 10.1).  Older ones abort at random with
#: "iotlb_to_section: Assertion `section_index < d->map.sections_nb'" when
#: the memory map changes (PCI BAR set-up while booting, hot-plug) on a
#: guest with more than one vCPU.
TCG_SMP_FIXED = (10, 0, 4)


def default_smp(qemu: str, accel: str) -> int:
    """2 vCPUs, but 1 under TCG with a QEMU that has the dispatch race."""
    if accel == "tcg":
        version = qemu_version(qemu)
        if not version or version < TCG_SMP_FIXED:
            return 1
    return 2


# Init script (PID 1, busybox sh).  Paths under $R are the host's root.
INIT_SCRIPT = r"""#!/bin/busybox sh
# PID 1 of the pyvfio test VM.  Generated by tests/vm/guest.py.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() { echo "pyvfio-init: $*"; sync; poweroff -f; }

R=/host
ENV=/usr/bin/env
# The host's / (read-only, shared by -fsdev ...,readonly=on,multidevs=remap).
# Behind a virtio-iommu the 9p devices probe only after the IOMMU's driver
# (deferred probe): wait for the tag for up to 30 s.
n=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
        hostroot $R 2>/dev/null; do
    n=$((n + 1))
    [ $n -lt 30 ] || { ls /sys/bus/virtio/devices /sys/bus/virtio/drivers; \
                       die "cannot mount the host root (9p tag hostroot)"; }
    sleep 1
done
# Another architecture's user space (arm64.py's NEWROOT_SCRIPT): moves $R.
[ -f /newroot.sh ] && . /newroot.sh
S=$R/run/pyvfio-share
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
# Host folders the command needs (the checkout, its venv) that lie under a
# folder about to be hidden by a tmpfs: keep them visible (pyvfio.keep=).
KEEP=$(sed -n 's/.*pyvfio\.keep=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
n=0
for p in $KEEP; do
    mkdir -p /keep/$n && mount -o rbind $R$p /keep/$n   # with submounts (arm64: the bindings)
    n=$((n + 1))
done
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp
mount -t tmpfs -o mode=755 tmpfs $R/run
n=0
for p in $KEEP; do
    mkdir -p $R$p && mount -o move /keep/$n $R$p
    n=$((n + 1))
done
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mkdir -p $S
# The writable results share (no caching: the host polls it for requests).
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share $S \
    || die "cannot mount the results share (9p tag share)"
[ -f $S/run.sh ] || die "no run.sh in the share"

echo "pyvfio-init: running command"
chroot $R $ENV -i /bin/sh /run/pyvfio-share/run.sh </dev/null
echo $? > $S/exit-status.tmp && mv $S/exit-status.tmp $S/exit-status
sync
poweroff -f
"""


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """Build a newc cpio archive from (name, mode, data, rdev) entries."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data, rdev) in enumerate(
            [*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(raw), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(raw)
        pad(110 + len(raw))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def ensure_initramfs(arch: str = "x86_64") -> Path:
    """The cached initramfs: busybox-static plus INIT_SCRIPT as /init (for
    arm64: the arm64 busybox and arm64.NEWROOT_SCRIPT as /newroot.sh)."""
    extra: list[tuple[str, int, bytes, int]] = []
    if arch == "arm64":
        busybox_path = str(arm64.ensure_busybox())
        extra.append(("newroot.sh", stat.S_IFREG | 0o644, arm64.NEWROOT_SCRIPT.encode(), 0))
    else:
        busybox_path = BUSYBOX
        if not Path(BUSYBOX).exists():
            build_kernel.install_packages(["busybox-static"])
    busybox = Path(busybox_path).read_bytes()
    if b"ld-linux" in busybox[:4096]:      # PT_INTERP sits in the first page
        raise SystemExit(f"{busybox_path} is dynamically linked; "
                         "install busybox-static instead of busybox")
    key = hashlib.sha256(INIT_SCRIPT.encode() + busybox
                         + b"".join(e[2] for e in extra)).hexdigest()[:12]
    path = build_kernel.cache_root() / f"initramfs-{key}.cpio.gz"
    if path.exists():
        return path
    d, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    archive = _cpio_newc([
        ("bin", d, b"", 0), ("dev", d, b"", 0), ("proc", d, b"", 0),
        ("sys", d, b"", 0), ("host", d, b"", 0), ("tmp", d, b"", 0),
        ("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)),
        ("bin/busybox", x, busybox, 0),
        ("init", x, INIT_SCRIPT.encode(), 0),
        *extra,
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(archive, 6))
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------
# QEMU command line
# --------------------------------------------------------------------------

#: IOMMUs that cannot have the pcie-pci-bridge and its two conventional
#: e1000s.  virtio: QEMU's virtio-iommu knows a device behind a
#: PCIe-to-PCI bridge only by the bridge's requester ID (secondary bus,
#: devfn 0), but Linux also asks it about the device's own ID; its failure
#: aborts the probe of the whole PCI bus, the driver drops its registration
#: (viommu_probe ignores iommu_device_register's error) and every endpoint
#: waits for an IOMMU until the deferred-probe timeout.
NO_PCI_BRIDGE = ("virtio",)


def device_args(tmpdir: Path, iommu: str = "intel") -> list[str]:
    """The test devices, each behind a hot-pluggable pcie-root-port.

    Devices plugged straight into pcie.0 cannot be hot-unplugged on q35
    ("Bus 'pcie.0' does not support hotplugging"), hence the root ports.
    Fixed slot numbers keep guest BDFs stable across runs.  The
    pcie-pci-bridge with the two e1000s is left out for the IOMMUs in
    :data:`NO_PCI_BRIDGE`.
    """
    image = tmpdir / "nvme.img"
    with open(image, "wb") as fh:                 # sparse raw image
        fh.truncate(NVME_IMAGE_MIB << 20)
    bridge = [] if iommu in NO_PCI_BRIDGE else [
        "-netdev", "user,id=net1,restrict=on",
        "-netdev", "user,id=net2,restrict=on",
        # q35's ACPI hotplug drives this bridge's slots (the guest's shpchp
        # then logs "pci_hp_register failed with error -16": harmless).
        "-device", "pcie-pci-bridge,id=br0,bus=rp3",
        "-device", "e1000,id=e1000a,bus=br0,addr=1,netdev=net1,romfile=",
        "-device", "e1000,id=e1000b,bus=br0,addr=2,netdev=net2,romfile=",
    ]
    return [
        "-device", "pcie-root-port,id=rp0,bus=pcie.0,addr=0x10,chassis=1",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x11,chassis=2",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,addr=0x12,chassis=3",
        "-device", "pcie-root-port,id=rp3,bus=pcie.0,addr=0x13,chassis=4",
        "-device", "pcie-root-port,id=rp4,bus=pcie.0,addr=0x14,chassis=5",
        "-device", "edu,id=edu0,bus=rp0",
        "-drive", f"file={image},if=none,id=nvm,format=raw",
        "-device", "nvme,id=nvme0,serial=pyvfio0,drive=nvm,bus=rp1",
        # NICs: romfile= (no option ROM: nothing boots from them) and an
        # isolated user-mode backend each (restrict=on: no host network;
        # it only avoids QEMU's "nic ... has no peer" warnings).
        "-netdev", "user,id=net0,restrict=on",
        "-netdev", "user,id=net3,restrict=on",
        "-device", "e1000e,id=e1000e0,bus=rp2,netdev=net0,romfile=",
        *bridge,
        # 82576 for the userspace NIC driver (examples/igb_loopback.py)
        "-device", "igb,id=igb0,bus=rp4,netdev=net3,romfile=",
    ]


def qemu_args(qemu: str, accel: str, kernel: Path, initrd: Path,
              cmdline: str, share: Path, qmp_sock: Path,
              devices: list[str], memory: str, smp: int,
              iommu: str = "intel", arch: str = "x86_64") -> list[str]:
    if arch == "arm64":
        # virt: GICv3 (its ITS delivers MSI/MSI-X), the SMMUv3 as a machine option.
        machine = arm64.machine_args(iommu)
    else:
        # kernel-irqchip=split: interrupt remapping (VT-d, AMD-Vi) needs it;
        # the IOMMU comes before every PCI device it translates for.
        machine = ["-machine", "q35,kernel-irqchip=split", *IOMMUS[iommu][0]]
    if accel == "kvm":
        accel_args = ["-accel", "kvm", "-cpu", "max"]
    else:
        accel_args = ["-accel", "tcg,thread=multi", "-cpu", "max"]
    return [
        qemu, "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",
        *machine, *accel_args, "-smp", str(smp), "-m", memory,
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        # Host root, read-only; multidevs=remap avoids inode clashes
        # between host file systems.
        "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,"
                  "multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot,"
                   "bus=pcie.0,addr=0x2",
        "-fsdev", f"local,id=fsshare,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=fsshare,mount_tag=share,"
                   "bus=pcie.0,addr=0x3",
        *devices,
    ]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL QEMU if the launcher dies (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------
# Running the guest
# --------------------------------------------------------------------------

class Console(threading.Thread):
    """Copy the guest's serial console to a log file and, optionally, stdout."""

    def __init__(self, stream, log_path: Path, echo: bool):
        super().__init__(name="pyvfio-console", daemon=True)
        self.stream, self.echo = stream, echo
        self.log_file = open(log_path, "w", errors="replace")
        self.tail: list[str] = []
        self.booted_at: float | None = None
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            if self.log_file.closed:  # a late line from the QMP relay after the run
                return
            self.log_file.write(line + "\n")
            self.log_file.flush()
            self.tail = (self.tail + [line])[-60:]
            if self.echo:
                print(line, flush=True)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            if self.booted_at is None and BOOT_MARKER in line:
                self.booted_at = time.monotonic()
            self.write(line)


def guest_env(extra: list[str]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": "/tmp",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "PYVFIO_GUEST": "1",
        "PYVFIO_VM_SHARE": GUEST_SHARE,
        # The root file system is read-only in the guest.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("VIRTUAL_ENV", "PYTHONPATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env wants NAME=VALUE, got {item!r}")
        env[name] = value
    return env


TMP_PREFIX = "pyvfio-vm-"
OWNER_FILE = "launcher.pid"


def sweep_stale_tmpdirs() -> None:
    """Remove temp folders left by launchers that were SIGKILLed.

    (QEMU itself dies with its launcher through PR_SET_PDEATHSIG.)
    """
    for folder in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def write_run_script(share: Path, command: str, cwd: Path,
                     env: dict[str, str]) -> None:
    lines = ["# Generated by tests/vm/guest.py; run by the guest's init.",
             *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
             f"cd {shlex.quote(str(cwd))} || exit 126",
             command, ""]
    (share / RUN_SCRIPT).write_text("\n".join(lines))


#: Boots tried when QEMU itself fails: it dies before the guest reaches its
#: init, or it is killed by a signal it raised (an internal assertion) while
#: the guest runs.  Neither is a result of the guest's command.
BOOT_ATTEMPTS = 3


def run_guest(command: str, args: argparse.Namespace, *,
              accel: str | None = None, timeout: float | None = None,
              echo: bool | None = None,
              after=None) -> int:
    """Boot the VM, run ``command`` in it, return its exit status.

    ``after(share)`` is called with the host path of the share before it is
    deleted (to collect result files).  QEMU under TCG has been seen to
    abort on an internal assertion (see :data:`TCG_SMP_FIXED`); a run that
    QEMU ended that way, before or after the guest's init, is tried again,
    up to :data:`BOOT_ATTEMPTS` times, and said so.
    """
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        status, reached_init, qemu_crashed = _run_guest_once(
            command, args, accel=accel, timeout=timeout, echo=echo,
            after=after, last=attempt == BOOT_ATTEMPTS)
        if status != EXIT_VM_FAILED or (reached_init and not qemu_crashed):
            return status
        if attempt < BOOT_ATTEMPTS:
            what = ("QEMU aborted while the guest ran" if reached_init
                    else "QEMU failed before the guest reached its init")
            log(f"{what}; booting again ({attempt + 1} of {BOOT_ATTEMPTS})")
    return status


def _run_guest_once(command: str, args: argparse.Namespace, *,
                    accel: str | None, timeout: float | None, echo: bool | None,
                    after, last: bool) -> tuple[int, bool, bool]:
    """One boot: (exit status, whether the guest reached its init, whether
    QEMU died of a signal it was not sent by this launcher).  ``after`` runs
    when the guest reached its init or this is the last try."""
    accel = accel or args.resolved_accel
    timeout = timeout if timeout is not None else args.timeout
    echo = (not args.quiet) if echo is None else echo

    a64 = args.arch == "arm64"
    qemu = arm64.ensure_qemu() if a64 else ensure_qemu()
    kernel = (Path(args.kernel) if args.kernel
              else arm64.ensure_kernel() if a64 else build_kernel.ensure_kernel())
    initrd = ensure_initramfs(args.arch)

    sweep_stale_tmpdirs()
    tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    (tmpdir / OWNER_FILE).write_text(str(os.getpid()))
    share = tmpdir / "share"
    share.mkdir()
    qmp_sock = tmpdir / "qmp.sock"
    env = guest_env([f"PYVFIO_GUEST_IOMMU={args.iommu}", *args.env])
    cmdline = DEFAULT_CMDLINE + ("" if args.verbose else " quiet")
    if a64:
        env.pop("VIRTUAL_ENV", None)
        env.update(arm64.guest_env(os.path.realpath(args.cwd)))
        env.update(kv.partition("=")[::2] for kv in args.env)
        cmdline = cmdline.replace("ttyS0", arm64.CONSOLE) + " " + arm64.kernel_args(args.cwd)
    elif IOMMUS[args.iommu][1]:
        cmdline += " " + IOMMUS[args.iommu][1]
    write_run_script(share, command, Path(args.cwd), env)
    # the cache too: the arm64 guest reads its test packages and bindings there
    keep = hidden_paths([args.cwd, sys.prefix, str(build_kernel.cache_root())])
    if keep:
        cmdline += " pyvfio.keep=" + ",".join(keep)
    if args.append:
        cmdline += " " + args.append
    smp = args.smp if args.smp is not None else default_smp(qemu, accel)
    argv = qemu_args(qemu, accel, kernel, initrd, cmdline, share, qmp_sock,
                     device_args(tmpdir, args.iommu), args.memory, smp, args.iommu, args.arch)
    console_log = Path(args.console_log) if args.console_log else tmpdir / "console.log"

    proc = None
    console = server = None
    status = EXIT_VM_FAILED
    killed = False
    t0 = time.monotonic()
    try:
        log(f"booting {kernel} (accel={accel}, {smp} vCPU{'s' if smp > 1 else ''}, "
            f"timeout {timeout:.0f} s)")
        if args.verbose:
            log("qemu command: " + shlex.join(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with_parent)
        console = Console(proc.stdout, console_log, echo)
        console.start()
        server = hostctl.HostControlServer(share, str(qmp_sock),
                                           log=console.write)
        server.start()

        deadline = t0 + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                log(f"timeout after {timeout:.0f} s; killing QEMU")
                status = EXIT_TIMEOUT
                break
            if console.booted_at is None and now - t0 > args.boot_timeout:
                log(f"guest did not reach its init within {args.boot_timeout:.0f} s")
                break
            time.sleep(0.1)
    finally:
        if proc is not None and proc.poll() is None:
            killed = True
            proc.kill()
        if proc is not None:
            proc.wait()
        if server is not None:
            server.stop()
            server.join(timeout=5)
        if console is not None:
            console.join(timeout=5)
            console.log_file.close()
        elapsed = time.monotonic() - t0
        status_file = share / STATUS_FILE
        if status != EXIT_TIMEOUT and status_file.exists():
            status = int(status_file.read_text().strip() or EXIT_VM_FAILED)
        if console is not None:
            boot = (f"{console.booted_at - t0:.1f} s to init, "
                    if console.booted_at else "")
            log(f"accel={accel}: {boot}{elapsed:.1f} s total, "
                f"QEMU exit {proc.returncode if proc else None}, status {status}")
            if status != 0 and not echo:
                log("last console lines:\n  " + "\n  ".join(console.tail))
        reached_init = console is not None and console.booted_at is not None
        qemu_crashed = (proc is not None and not killed
                        and proc.returncode is not None and proc.returncode < 0)
        if after is not None and (reached_init or last or status != EXIT_VM_FAILED):
            after(share)
        if args.keep:
            log(f"kept {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return status, reached_init, qemu_crashed


# --------------------------------------------------------------------------
# Accelerator choice
# --------------------------------------------------------------------------

def resolve_accel(args: argparse.Namespace) -> str:
    """tcg, kvm, or (auto) kvm only if a probe guest boots with it.

    Nested KVM often fails in odd ways (QEMU aborts, or the guest hangs
    without output), so auto runs the real guest once with KVM and a short
    timeout.  The verdict is cached per host boot.
    """
    if args.accel != "auto":
        return args.accel
    if args.arch == "arm64":     # another architecture than the host's
        return "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = build_kernel.cache_root() / "kvm-probe.json"
    try:
        verdict = json.loads(cache.read_text())
        if verdict.get("boot_id") == boot_id:
            return verdict["accel"]
    except (OSError, ValueError, KeyError):
        pass
    log("probing KVM (one short guest boot; result cached for this host boot)")
    ok = run_guest("true", args, accel="kvm", timeout=args.kvm_probe_timeout,
                   echo=False) == 0
    accel = "kvm" if ok else "tcg"
    log(f"KVM probe {'passed' if ok else 'failed'}; using {accel}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": boot_id, "accel": accel}))
    return accel


# --------------------------------------------------------------------------
# pytest support
# --------------------------------------------------------------------------

def junit_summary(path: Path) -> str:
    """pytest-style summary ("1 failed, 12 passed, 2 skipped").

    (JUnit's time attribute leaves out collection, so no time is shown.)
    """
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in tot:
            tot[key] += int(suite.get(key, 0))
    passed = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    parts = [f"{n} {word}" for n, word in (
        (tot["failures"], "failed"), (passed, "passed"),
        (tot["skipped"], "skipped"),
        (tot["errors"], "error" if tot["errors"] == 1 else "errors")) if n]
    return ", ".join(parts) or "no tests ran"


def split_junitxml(pytest_args: list[str]) -> tuple[list[str], str | None]:
    """Take --junitxml/--junit-xml out of pytest's arguments.

    The guest always writes JUnit XML into the share; a path given among
    pytest's arguments is where the host copy goes (guest paths outside
    the share are read-only anyway).
    """
    rest: list[str] = []
    path = None
    it = iter(pytest_args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--junitxml", "--junit-xml", "--junit_xml"):
            path = value if eq else next(it, None)
        else:
            rest.append(arg)
    return rest, path


def pytest_command(pytest_args: list[str], arch: str = "x86_64") -> str:
    python = arm64.GUEST_PYTHON if arch == "arm64" else sys.executable
    argv = [python, "-m", "pytest", "-p", "no:cacheprovider",
            "-m", "kernel", f"--junitxml={GUEST_SHARE}/junit.xml", *pytest_args]
    return shlex.join(argv)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Run a command or the kernel tests in the pyvfio test VM.",
        epilog="Exit status: the guest command's; 124 on timeout; 125 when "
               "the VM failed before the command finished.")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="CMD", help="shell command to run in the guest")
    what.add_argument("--pytest", nargs=argparse.REMAINDER, metavar="ARGS",
                      help="run '<this python> -m pytest -m kernel ARGS' in the "
                           "guest (everything after --pytest goes to pytest)")
    what.add_argument("--prepare", action="store_true",
                      help="only install QEMU and build/cache kernel and initramfs")
    ap.add_argument("--junitxml", metavar="PATH",
                    help="with --pytest: copy the guest's JUnit XML here")
    ap.add_argument("--timeout", type=float, default=1200,
                    help="whole-run limit in seconds (default 1200)")
    ap.add_argument("--boot-timeout", type=float, default=180,
                    help="limit for reaching the guest's init (default 180)")
    ap.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                    help="auto (default): KVM only if a probe boot works, else TCG")
    ap.add_argument("--kvm-probe-timeout", type=float, default=20)
    ap.add_argument("--kernel", metavar="BZIMAGE",
                    default=os.environ.get("PYVFIO_KERNEL"),
                    help="kernel to boot (default: $PYVFIO_KERNEL or build_kernel.py's)")
    ap.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64",
                    help="x86_64 (default: q35) or arm64 (virt with an SMMUv3, "
                         "tests/vm/arm64.py)")
    ap.add_argument("--iommu", choices=(*IOMMUS, *arm64.IOMMUS), default=None,
                    help="the guest's IOMMU (default: intel, VT-d in legacy mode; "
                         "on arm64 smmuv3, both stages)")
    ap.add_argument("--append", metavar="ARGS", default="",
                    help="extra kernel command line, e.g. intel_iommu=off")
    ap.add_argument("--cwd", default=str(REPO),
                    help="guest working directory (default: the repository root)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra guest environment variable (repeatable)")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--smp", type=int, default=None,
                    help="vCPUs (default 2; 1 under TCG with a QEMU older than "
                         "10.0.4, see TCG_SMP_FIXED)")
    ap.add_argument("--console-log", metavar="PATH",
                    help="also save the guest console here")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="do not stream the console (its tail is shown on failure)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show kernel boot messages and the QEMU command line")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (share, console log, image)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.iommu is None:
        args.iommu = "smmuv3" if args.arch == "arm64" else "intel"
    if (args.iommu in arm64.IOMMUS) != (args.arch == "arm64"):
        raise SystemExit(f"--iommu {args.iommu} does not exist on {args.arch}")

    # Turn SIGTERM/SIGHUP into an exception so the finally-blocks kill QEMU.
    def _terminate(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    if args.prepare:
        if args.arch == "arm64":
            log(f"qemu: {arm64.ensure_qemu()}")
            log(f"kernel: {arm64.ensure_kernel()}")
            log(f"bindings: {arm64.ensure_uapi()}")
        else:
            log(f"qemu: {ensure_qemu()}")
            log(f"kernel: {build_kernel.ensure_kernel()}")
        log(f"initramfs: {ensure_initramfs(args.arch)}")
        return 0

    args.resolved_accel = resolve_accel(args)
    if args.run is not None:
        return run_guest(args.run, args)

    summary: list[str] = []

    def collect(share: Path) -> None:
        xml = share / "junit.xml"
        if not xml.exists():
            summary.append("no JUnit XML from the guest")
            return
        if args.junitxml:
            shutil.copyfile(xml, args.junitxml)
            log(f"JUnit XML: {args.junitxml}")
        summary.append(junit_summary(xml))

    pytest_args, junitxml = split_junitxml(args.pytest)
    args.junitxml = junitxml or args.junitxml
    status = run_guest(pytest_command(pytest_args, args.arch), args, after=collect)
    print(f"pytest in VM: {summary[0] if summary else '?'}"
          f" (exit status {status})", flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
