#!/usr/bin/env python3
"""Build (once) and cache the Linux kernel used by the pyvfio test VM.

The kernel comes from Debian's ``linux-source-7.3`` package (suite
trixie-backports).  The machine's own apt configuration is never modified:
the package index is fetched into a private folder through a private,
one-line sources list, and apt-get is pointed at it with
``-o Dir::Etc::SourceList=... -o Dir::Etc::SourceParts=- -o Dir::State::Lists=...``.

Build recipe per architecture (``--arch``, kept in sync with the fragments):

x86_64 (default; tests/vm/kernel.config):
    make ARCH=x86_64 allnoconfig
    scripts/config -e/-d/--set-val <every option of kernel.config>
    make ARCH=x86_64 olddefconfig   (then every requested option is checked)
    make ARCH=x86_64 -j<jobs> bzImage

arm64 (tests/vm/kernel-arm64.config; Debian's gcc-aarch64-linux-gnu):
    make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- allnoconfig
    scripts/config -e/-d/--set-val <every option of kernel-arm64.config>
    make ... olddefconfig    (then every requested option is checked)
    make ... -j<jobs> Image

Result: ``<cache>/kernel-<debian version>-<key>/bzImage`` (x86_64) or
``<cache>/kernel-arm64-<debian version>-<key>/Image`` (arm64), where <cache>
is ``$PYVFIO_CACHE_DIR`` or ``~/.cache/pyvfio`` and <key> is a short sha256
of the fragment's option lines plus the architecture's recipe version.
Running this again with a cached kernel only prints the path.  Build output
goes to ``<cache>/kernel-build.log`` (``kernel-build-arm64.log``); stdout
carries only the final path, so callers can use
``KERNEL=$(python3 tests/vm/build_kernel.py)``.

Only the standard library is used (Python 3.10+).  Installing the build
dependencies needs root (apt-get install).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "kernel.config"

SOURCE_PACKAGE = "linux-source-7.3"
SOURCE_SUITE = "trixie-backports"
# Packages needed to configure and build bzImage (busybox-static is for the
# initramfs that guest.py builds; installing it here saves a second apt run).
BUILD_DEPS = ["build-essential", "flex", "bison", "bc", "libelf-dev",
              "libssl-dev", "cpio", "xz-utils", "busybox-static"]
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Bump when the recipe above changes in a way that changes the kernel
# (1: defconfig + kvm_guest.config + fragment; 2: allnoconfig + fragment).
RECIPE_VERSION = "2"


@dataclass(frozen=True)
class Arch:
    """How one architecture's guest kernel is configured, built and cached."""

    name: str                   # --arch value
    fragment: Path              # config fragment applied on top of `base`
    make_vars: tuple[str, ...]  # ARCH=/CROSS_COMPILE= for every make call
    base: tuple[str, ...]       # make targets giving the starting .config
    target: str                 # make target of the image
    image: str                  # image path in the tree, after the build
    prefix: str                 # cache folder name prefix
    recipe: str                 # recipe version (feeds the cache key)
    deps: tuple[str, ...] = ()  # Debian packages needed beyond BUILD_DEPS
    minutes: str = "~20"        # rough cold build time on 2 cores

    @property
    def image_name(self) -> str:
        return Path(self.image).name

    @property
    def suffix(self) -> str:
        """'' for x86_64 (its file names predate --arch), '-<arch>' otherwise."""
        return "" if self.name == "x86_64" else f"-{self.name}"


ARCHES = {
    "x86_64": Arch("x86_64", FRAGMENT, ("ARCH=x86_64",), ("allnoconfig",),
                   "bzImage", "arch/x86/boot/bzImage", "kernel-",
                   RECIPE_VERSION, (), "~10"),
    "arm64": Arch("arm64", HERE / "kernel-arm64.config",
                  ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"),
                  ("allnoconfig",), "Image", "arch/arm64/boot/Image",
                  "kernel-arm64-", "1", ("gcc-aarch64-linux-gnu",), "~10"),
}
ARCH_ALIASES = {"x86": "x86_64", "amd64": "x86_64", "aarch64": "arm64"}


def get_arch(name: str = "x86_64") -> Arch:
    """The Arch for an --arch value (aliases: x86, amd64, aarch64)."""
    name = ARCH_ALIASES.get(name, name)
    if name not in ARCHES:
        raise SystemExit(f"unknown --arch {name!r} (known: {', '.join(ARCHES)})")
    return ARCHES[name]


def log(msg: str) -> None:
    """Progress messages go to stderr; stdout is reserved for the result."""
    print(f"[build_kernel] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("PYVFIO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pyvfio"


# --------------------------------------------------------------------------
# Config fragment
# --------------------------------------------------------------------------

_SET_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(y|[0-9]+)$")
_UNSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")

#: One fragment line: (OPTION, value), value "y", "n" (not set) or decimal.
Option = tuple[str, str]


def read_fragment(path: Path = FRAGMENT) -> list[Option]:
    """Return [(OPTION, value)] in file order; value is "y", "n" or a number.

    Accepted lines: ``CONFIG_FOO=y``, ``# CONFIG_FOO is not set``,
    ``CONFIG_FOO=<decimal>`` (e.g. NR_CPUS), comments and blank lines.
    Anything else is an error (modules, =m, and string values are
    deliberately not supported: the guest loads no modules).
    """
    options: list[Option] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if m := _SET_RE.match(line):
            options.append((m.group(1), m.group(2)))
        elif m := _UNSET_RE.match(line):
            options.append((m.group(1), "n"))
        elif not line or line.startswith("#"):
            continue
        else:
            raise SystemExit(f"{path}:{lineno}: unsupported line: {raw!r}")
    return options


def fragment_key(options: list[Option],
                 arch: Arch | None = None) -> str:
    """Short hash of the architecture's recipe and the normalized option
    list (comments do not count)."""
    arch = arch or ARCHES["x86_64"]
    text = (f"recipe={arch.recipe}\narch={arch.name}\n"
            f"base={' '.join(arch.base)}\nmake={' '.join(arch.make_vars)}\n"
            f"target={arch.target}\n")
    text += "".join(f"{name}={value}\n" for name, value in options)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------
# Private apt setup
# --------------------------------------------------------------------------

def debian_mirror() -> str:
    """The first ``URIs:`` of the system's Debian sources (deb822 format)."""
    try:
        for line in Path(DEBIAN_SOURCES).read_text().splitlines():
            if line.strip().lower().startswith("uris:"):
                uris = line.split(":", 1)[1].split()
                if uris:
                    return uris[0]
    except OSError:
        pass
    return DEFAULT_MIRROR


class PrivateApt:
    """apt-get/apt-cache restricted to one private sources list.

    ``include_system`` keeps the system's /etc/apt/sources.list.d (so that
    dependencies can come from the normal suites); otherwise only the
    private list is consulted.  The package index lives in its own folder,
    so the system's /var/lib/apt/lists is untouched either way.
    """

    def __init__(self, name: str, suite: str, include_system: bool = False):
        self.dir = cache_root() / "apt"
        self.list_file = self.dir / f"{name}.list"
        self.lists_dir = self.dir / f"lists-{name}"
        self.suite = suite
        self.include_system = include_system

    def options(self) -> list[str]:
        opts = ["-o", f"Dir::Etc::SourceList={self.list_file}",
                "-o", f"Dir::State::Lists={self.lists_dir}",
                # Files are written by root into folders _apt cannot read.
                "-o", "APT::Sandbox::User=root"]
        if not self.include_system:
            opts += ["-o", "Dir::Etc::SourceParts=-"]
        return opts

    def setup(self, refresh: bool = False) -> None:
        """Write the sources list and fetch the index if missing or asked."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.lists_dir / "partial").mkdir(parents=True, exist_ok=True)
        line = (f"deb [signed-by={ARCHIVE_KEYRING}] {debian_mirror()} "
                f"{self.suite} main\n")
        if not self.list_file.exists() or self.list_file.read_text() != line:
            self.list_file.write_text(line)
            refresh = True
        have_index = any(p.name.endswith(("_Packages", "_Packages.lz4",
                                          "_Packages.xz", "_Packages.gz"))
                         for p in self.lists_dir.iterdir())
        if refresh or not have_index:
            log(f"apt-get update ({self.suite}, private list {self.list_file})")
            run(["apt-get", *self.options(), "-q", "update"], quiet=True)

    def candidate_version(self, package: str) -> str | None:
        out = subprocess.run(
            ["apt-cache", *self.options(), "policy", package],
            capture_output=True, text=True).stdout
        m = re.search(r"Candidate:\s*(\S+)", out)
        return m.group(1) if m and m.group(1) != "(none)" else None

    def download(self, package: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        run(["apt-get", *self.options(), "-q", "download", package],
            cwd=dest, quiet=True)
        debs = sorted(dest.glob(f"{package}_*.deb"), key=os.path.getmtime)
        if not debs:
            raise SystemExit(f"apt-get download {package} produced no .deb")
        return debs[-1]


def run(cmd: list[str], cwd: Path | None = None, logfile: TextIO | None = None,
        quiet: bool = False) -> None:
    """Run a command; output to ``logfile`` (or stderr unless ``quiet``)."""
    out: TextIO | int
    if logfile is not None:
        logfile.write(f"\n$ {' '.join(cmd)}\n")
        logfile.flush()
        out = logfile
    else:
        out = subprocess.DEVNULL if quiet else sys.stderr
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(cmd, cwd=cwd, stdout=out,
                          stderr=subprocess.STDOUT if logfile else
                          (subprocess.PIPE if quiet else None),
                          env=env, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip() if quiet and not logfile else ""
        raise SystemExit(f"command failed ({proc.returncode}): "
                         f"{' '.join(cmd)}\n{detail}".rstrip())


def missing_packages(packages: list[str]) -> list[str]:
    missing = []
    for pkg in packages:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True, text=True).stdout
        if "install ok installed" not in status:
            missing.append(pkg)
    return missing


def install_packages(packages: list[str], extra: list[str] | None = None) -> None:
    """apt-get install the packages that are not installed yet (needs root)."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit("missing packages (install them as root): "
                         + " ".join(missing))
    log("installing " + " ".join(missing))
    if not extra:
        # Plain install from the system's sources; refresh their index first
        # (a fresh CI machine may have none).
        run(["apt-get", "-q", "update"], quiet=True)
    run(["apt-get", *(extra or []), "-q", "-y", "install",
         "--no-install-recommends", *missing], quiet=True)


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------

def kernel_dir(version: str, key: str, arch: Arch | None = None) -> Path:
    arch = arch or ARCHES["x86_64"]
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", version)   # '~' -> '_'
    return cache_root() / f"{arch.prefix}{safe}-{key}"


def find_cached(key: str, arch: Arch | None = None) -> Path | None:
    """Newest cached image for this fragment, whatever Debian version."""
    arch = arch or ARCHES["x86_64"]
    hits = sorted(cache_root().glob(f"{arch.prefix}*-{key}/{arch.image_name}"),
                  key=os.path.getmtime)
    return hits[-1] if hits else None


def check_config(config: Path, options: list[Option],
                 fragment: Path = FRAGMENT) -> None:
    """Fail if olddefconfig dropped or changed a requested option (unmet
    dependency, out-of-range number)."""
    text = config.read_text()
    wrong = []
    for name, value in options:
        m = re.search(rf"^CONFIG_{name}=(.*)$", text, re.MULTILINE)
        have = m.group(1) if m else "n"
        if have != value:
            wrong.append(f"CONFIG_{name} wanted {'off' if value == 'n' else value}, "
                         f"got {'off' if have == 'n' else have}")
    if wrong:
        raise SystemExit(f"kernel config does not match {fragment.name}:\n  "
                         + "\n  ".join(wrong))


@contextlib.contextmanager
def build_lock(arch: Arch | None = None) -> Iterator[None]:
    """Exclusive lock so that concurrent runs build the kernel only once."""
    arch = arch or ARCHES["x86_64"]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"kernel{arch.suffix}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build holds the lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build(version: str, key: str, options: list[Option],
          apt: PrivateApt, jobs: int, keep_tree: bool,
          arch: Arch | None = None) -> Path:
    arch = arch or ARCHES["x86_64"]
    out_dir = kernel_dir(version, key, arch)
    work = cache_root() / f"kbuild-{key}"
    log_path = cache_root() / f"kernel-build{arch.suffix}.log"
    log(f"building {SOURCE_PACKAGE} {version} for {arch.name} (-j{jobs}); "
        f"log: {log_path}")
    t0 = time.monotonic()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with open(log_path, "w") as lf:
        lf.write(f"{SOURCE_PACKAGE} {version}, {arch.name}, key {key}\n")
        deb = apt.download(SOURCE_PACKAGE, work)
        run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], logfile=lf)
        deb.unlink()
        tarballs = list((work / "pkg" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise SystemExit(f"expected one source tarball, found {tarballs}")
        log("unpacking source")
        run(["tar", "-xf", str(tarballs[0]), "-C", str(work)], logfile=lf)
        shutil.rmtree(work / "pkg")
        src = next(p for p in work.iterdir()
                   if p.is_dir() and p.name.startswith("linux-source-"))

        log("configuring")
        make = ["make", *arch.make_vars]
        for target in arch.base:
            run([*make, target], cwd=src, logfile=lf)
        args: list[str] = []
        for name, value in options:
            args += (["-e", name] if value == "y" else ["-d", name]
                     if value == "n" else ["--set-val", name, value])
        run(["scripts/config", *args], cwd=src, logfile=lf)
        run([*make, "olddefconfig"], cwd=src, logfile=lf)
        check_config(src / ".config", options, arch.fragment)

        log(f"compiling {arch.target} (takes {arch.minutes} min on 2 cores); "
            f"tail -f {log_path}")
        t_make = time.monotonic()
        run([*make, f"-j{jobs}", arch.target], cwd=src, logfile=lf)
        make_seconds = time.monotonic() - t_make

    # Publish atomically: a half-copied bzImage must never look cached.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(src / arch.image, tmp / arch.image_name)
    shutil.copy2(src / ".config", tmp / "config")
    (tmp / "BUILD-INFO").write_text(
        f"package={SOURCE_PACKAGE}\nversion={version}\narch={arch.name}\n"
        f"key={key}\nrecipe={arch.recipe}\njobs={jobs}\n"
        f"seconds={time.monotonic() - t0:.0f}\n"
        f"make_seconds={make_seconds:.0f}\n"
        f"loadavg_at_end={os.getloadavg()[0]:.1f}\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    if not keep_tree:
        shutil.rmtree(work)
    log(f"built in {time.monotonic() - t0:.0f} s")
    return out_dir / arch.image_name


def ensure_kernel(refresh: bool = False, jobs: int = 2,
                  keep_tree: bool = False, offline: bool = False,
                  arch: str = "x86_64") -> Path:
    """Return the path of a cached kernel image, building it if needed."""
    a = get_arch(arch)
    options = read_fragment(a.fragment)
    key = fragment_key(options, a)

    if offline:
        hit = find_cached(key, a)
        if hit is None:
            raise SystemExit(f"no cached kernel for key {key} in {cache_root()}")
        return hit

    apt = PrivateApt("trixie-backports", SOURCE_SUITE)
    try:
        apt.setup(refresh=refresh)
        version = apt.candidate_version(SOURCE_PACKAGE)
    except SystemExit as exc:
        # No network/registry: any kernel built from this fragment will do.
        hit = find_cached(key, a)
        if hit is None:
            raise
        log(f"apt unavailable ({exc}); using cached {hit}")
        return hit
    if version is None:
        raise SystemExit(f"{SOURCE_PACKAGE} not found in {SOURCE_SUITE}")

    image = kernel_dir(version, key, a) / a.image_name
    if image.exists():
        return image
    with build_lock(a):
        if image.exists():       # built by whoever held the lock before us
            return image
        install_packages([*BUILD_DEPS, *a.deps])
        return build(version, key, options, apt, jobs, keep_tree, a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-j", "--jobs", type=int, default=2,
                    help="parallel make jobs (default 2)")
    ap.add_argument("--refresh", action="store_true",
                    help="re-fetch the private apt index (picks up a newer "
                         "linux-source-7.3 upload)")
    ap.add_argument("--offline", action="store_true",
                    help="never call apt; use a cached kernel or fail")
    ap.add_argument("--keep-tree", action="store_true",
                    help="keep the build tree (several GB) after success")
    ap.add_argument("--print-key", action="store_true",
                    help="print the fragment's cache key and exit")
    ap.add_argument("--arch", default="x86_64",
                    help="x86_64 (default; bzImage from kernel.config) or "
                         "arm64 (Image from kernel-arm64.config, built with "
                         "Debian's aarch64-linux-gnu- cross compiler)")
    args = ap.parse_args()
    arch = get_arch(args.arch)
    if args.print_key:
        print(fragment_key(read_fragment(arch.fragment), arch))
        return 0
    print(ensure_kernel(refresh=args.refresh, jobs=args.jobs,
                        keep_tree=args.keep_tree, offline=args.offline,
                        arch=arch.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
