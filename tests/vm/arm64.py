"""The arm64 flavour of the test VM: QEMU ``virt`` with an SMMUv3, arm64 user space.

guest.py imports this module for ``--arch arm64``; everything else (init,
9p shares, result collection, host control) is guest.py's and shared.

Machine: ``qemu-system-aarch64 -machine virt,gic-version=3,iommu=smmuv3``
(GICv3 with an ITS for MSI/MSI-X), ``-cpu max``, TCG; the SMMUv3 of the
``virt`` machine translates every device on ``pcie.0``.  QEMU 10.0 gives it
a ``stage`` property (``1``, ``2`` or ``nested``); ``nested`` advertises
both stages, which is what Linux's arm-smmu-v3 driver needs for nesting
parents.  The devices are the x86 guest's (guest.device_args).

User space: the host's root is shared over 9p as on x86, but its programs
are x86_64.  The init therefore builds a small root in a tmpfs: Debian's
arm64 Python 3.11 (tools/aarch64_python.py unpacks it, with cffi for
aarch64) as ``/usr`` and ``/lib``, an arm64 busybox as ``/bin``, and the
host folders the tests need (the checkout, the venv's pure-Python
packages, the aarch64 site folder) bind-mounted at their host paths.
pyvfio's compiled bindings in the checkout are x86_64: an aarch64 build
(cross-compiled with Zig by tools/build_wheels.py, cached by the digest of
the sources it is built from) is bind-mounted over
``pyvfio/_uapi.abi3.so`` inside the guest only; the host's file is never
touched.

Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tools"))

import aarch64_python  # noqa: E402  (tools/)
import build_kernel  # noqa: E402  (same folder)

QEMU = "qemu-system-aarch64"
QEMU_PACKAGE = "qemu-system-arm"
CONSOLE = "ttyAMA0"                 # the virt machine's PL011
#: Where the arm64 root puts Python (Debian's python3.11-minimal).
GUEST_PYTHON = "/usr/bin/python3.11"

#: The IOMMUs of the arm64 guest: name -> (machine options, extra QEMU
#: arguments).  ``smmuv3``: both stages (``stage=nested``), so nesting
#: parents, nested HWPTs, vIOMMU and vDEVICE can be asked for;
#: ``smmuv3-s1``: QEMU's default, stage 1 only; ``smmuv3-off``: no IOMMU
#: (the kernel's self-test IOMMU, no-IOMMU mode).
IOMMUS: dict[str, tuple[str, list[str]]] = {
    "smmuv3": ("virt,gic-version=3,iommu=smmuv3", ["-global", "arm-smmuv3.stage=nested"]),
    "smmuv3-s1": ("virt,gic-version=3,iommu=smmuv3", []),
    "smmuv3-off": ("virt,gic-version=3", []),
}

#: Sourced by guest.py's init (as /newroot.sh) once the host's root is at
#: $R; it builds the arm64 root and points $R and $ENV at it.  Kernel
#: arguments: pyvfio.root= (the unpacked arm64 packages, a host path),
#: pyvfio.bind= (host folders, comma-separated, mounted at the same paths),
#: pyvfio.so=HOSTFILE:GUESTFILE (a file mounted over another).
NEWROOT_SCRIPT = r"""
arg() { sed -n "s/.*pyvfio\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
AROOT=$(arg root)
[ -d "$R$AROOT/usr" ] || die "no arm64 root at $AROOT (pyvfio.root=)"
N=/newroot
mkdir -p $N && mount -t tmpfs -o mode=755 tmpfs $N || die "cannot mount the arm64 root's tmpfs"
for d in usr lib; do
    mkdir -p $N/$d && mount -o bind,ro $R$AROOT/$d $N/$d || die "cannot bind $AROOT/$d"
done
mkdir -p $N/bin $N/sbin $N/etc $N/proc $N/sys $N/dev $N/tmp $N/var/tmp $N/run $N/root
cp -a $R$AROOT/etc/. $N/etc/ 2>/dev/null
for f in passwd group hosts nsswitch.conf; do cp $R/etc/$f $N/etc/ 2>/dev/null; done
cp /bin/busybox $N/bin/busybox
chroot $N /bin/busybox --install -s /bin
ln -sf /usr/bin/python3.11 $N/bin/python3
ln -sf /usr/bin/python3.11 $N/bin/python
for p in $(arg bind | tr ',' ' '); do
    mkdir -p $N$p && mount -o bind $R$p $N$p || die "cannot bind $p"
done
SO=$(arg so)
if [ -n "$SO" ]; then
    mount -o bind $R${SO%%:*} $N${SO#*:} || die "cannot mount $SO"
fi
R=$N
ENV=/bin/env
"""


def ensure_qemu() -> str:
    """Path of qemu-system-aarch64; installs 10.x from bookworm-backports if missing."""
    path = shutil.which(QEMU)
    if path:
        return path
    apt = build_kernel.PrivateApt("bookworm-backports", "bookworm-backports",
                                  include_system=True)
    apt.setup()
    build_kernel.install_packages([QEMU_PACKAGE],
                                  extra=[*apt.options(), "-t", "bookworm-backports"])
    path = shutil.which(QEMU)
    if not path:
        raise SystemExit(f"{QEMU} still missing after installing {QEMU_PACKAGE}")
    return path


def ensure_kernel() -> Path:
    """The arm64 kernel Image: ``$PYVFIO_ARM64_KERNEL``, else what
    ``build_kernel.py --arch arm64`` prints (it builds and caches it)."""
    env = os.environ.get("PYVFIO_ARM64_KERNEL")
    if env:
        return Path(env)
    proc = subprocess.run([sys.executable, str(HERE / "build_kernel.py"), "--arch", "arm64"],
                          stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        raise SystemExit("build_kernel.py --arch arm64 gave no kernel (exit status "
                         f"{proc.returncode}); pass --kernel IMAGE or $PYVFIO_ARM64_KERNEL")
    return Path(lines[-1])


def ensure_busybox() -> Path:
    """Debian's arm64 busybox-static, unpacked once into the cache."""
    dest = build_kernel.cache_root() / "arm64-busybox"
    busybox = dest / "bin" / "busybox"
    if not busybox.exists():
        tmp = Path(tempfile.mkdtemp(prefix="arm64-busybox-", dir=dest.parent))
        try:
            aarch64_python.extract_arm64(["busybox-static"], tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return busybox


def root() -> Path:
    """The unpacked arm64 Python root (made once by tools/aarch64_python.py)."""
    aarch64_python.prepare()
    return aarch64_python.site_dir().parent / "root"


#: The files pyvfio's compiled bindings are built from.
UAPI_SOURCES = ("cdefs/*", "setup.py", "pyproject.toml")


def uapi_digest(repo: Path = REPO) -> str:
    """A short SHA-256 of the files the bindings are compiled from."""
    h = hashlib.sha256()
    files = sorted({p for pat in UAPI_SOURCES for p in repo.glob(pat) if p.is_file()})
    for path in files:
        h.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_uapi(repo: Path = REPO) -> Path:
    """pyvfio's bindings (``_uapi.abi3.so``) for aarch64, cross-built once per
    source digest with tools/build_wheels.py (Zig) and taken out of the wheel."""
    dest = build_kernel.cache_root() / f"uapi-aarch64-{uapi_digest(repo)}" / "_uapi.abi3.so"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uapi-aarch64-") as tmp:
        build_kernel.log("cross-building pyvfio's bindings for aarch64 (tools/build_wheels.py)")
        proc = subprocess.run([sys.executable, str(repo / "tools" / "build_wheels.py"),
                               "--arch", "aarch64", "--out", tmp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = sorted(Path(tmp).glob("pyvfio-*aarch64*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SystemExit("tools/build_wheels.py --arch aarch64 failed:\n"
                             + proc.stdout[-3000:])
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read("pyvfio/_uapi.abi3.so")
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    part.rename(dest)
    return dest


#: Packages of the launcher's venv that pytest loads in the guest and that
#: carry x86_64 extensions (hypothesis' pytest plugin imports its _native).
COMPILED_TEST_DEPS = ("hypothesis",)
#: Debian arm64 libraries those extensions load (Rust's unwinder: libgcc_s),
#: unpacked under the same folder (its usr/lib/aarch64-linux-gnu goes on
#: LD_LIBRARY_PATH).
TEST_DEP_LIBS = ("libgcc-s1",)


def ensure_test_site() -> Path:
    """aarch64 wheels of :data:`COMPILED_TEST_DEPS`, at the versions the
    launcher's venv has, unpacked once into the cache (first on the guest's
    PYTHONPATH, before the venv's x86_64 copies)."""
    from importlib import metadata
    pins = [f"{name}=={metadata.version(name)}" for name in COMPILED_TEST_DEPS]
    key = hashlib.sha256(" ".join([*pins, *TEST_DEP_LIBS]).encode()).hexdigest()[:12]
    dest = build_kernel.cache_root() / f"arm64-site-{key}"
    if (dest / "complete").exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="arm64-site-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
             "--python-version", "3.11", "-d", tmp, *pins],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != len(pins):
            raise SystemExit(f"pip download {' '.join(pins)} for aarch64 failed:\n"
                             + proc.stdout[-2000:])
        shutil.rmtree(dest, ignore_errors=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(dest)
    aarch64_python.extract_arm64(list(TEST_DEP_LIBS), dest)
    (dest / "complete").write_text("ok\n")
    return dest


def venv_purelib() -> str:
    """The launcher's pure-Python site folder (pytest, pluggy, ...)."""
    return sysconfig.get_paths()["purelib"]


def kernel_args(cwd: str) -> str:
    """Kernel arguments for NEWROOT_SCRIPT: the arm64 root, the host folders
    to mount at their paths, and the aarch64 bindings over the x86_64 ones."""
    site = str(aarch64_python.site_dir())
    uapi = ensure_uapi(Path(cwd))
    binds: list[str] = []
    for p in (cwd, venv_purelib(), site, str(ensure_test_site()), str(uapi.parent)):
        real = os.path.realpath(p)
        if any(c in real for c in " ,:") :
            raise SystemExit(f"cannot share {real!r} with the arm64 guest (space, comma or colon)")
        if real not in binds:
            binds.append(real)
    so = f"{uapi}:{os.path.realpath(cwd)}/pyvfio/_uapi.abi3.so"
    return f"pyvfio.root={root()} pyvfio.bind={','.join(binds)} pyvfio.so={so}"


def guest_env(cwd: str) -> dict[str, str]:
    """Environment for the arm64 guest's commands (replaces the host's
    PATH/PYTHONPATH/VIRTUAL_ENV, which name x86_64 programs).  The checkout
    ``cwd`` comes first on PYTHONPATH: the venv's editable install of
    pyvfio (a .pth file) is not read from PYTHONPATH."""
    site = ensure_test_site()
    return {"PATH": "/bin:/usr/bin",
            "LD_LIBRARY_PATH": f"{site}/lib/aarch64-linux-gnu:{site}/usr/lib/aarch64-linux-gnu",
            "PYTHONPATH": f"{cwd}:{site}:{aarch64_python.site_dir()}:{venv_purelib()}"}


def machine_args(iommu: str) -> list[str]:
    """-machine and the IOMMU's arguments."""
    machine, extra = IOMMUS[iommu]
    return ["-machine", machine, *extra]
