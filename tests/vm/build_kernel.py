#!/usr/bin/env python3
"""Build (once) and cache the Linux kernel used by the pyvfio test VM.

The kernel comes from Debian's ``linux-source-7.3`` package (suite
trixie-backports).  The machine's own apt configuration is never modified:
the package index is fetched into a private folder through a private,
one-line sources list, and apt-get is pointed at it with
``-o Dir::Etc::SourceList=... -o Dir::Etc::SourceParts=- -o Dir::State::Lists=...``.

Build recipe (kept in sync with tests/vm/kernel.config):
    make defconfig
    make kvm_guest.config
    scripts/config -e/-d <every option of kernel.config>
    make olddefconfig        (then every requested option is checked)
    make -j<jobs> bzImage

Result: ``<cache>/kernel-<debian version>-<key>/bzImage`` where <cache> is
``$PYVFIO_CACHE_DIR`` or ``~/.cache/pyvfio`` and <key> is a short sha256 of
the option lines of kernel.config plus RECIPE_VERSION.  Running this again
with a cached kernel only prints the path.  Build output goes to
``<cache>/kernel-build.log``; stdout carries only the final path, so callers
can use ``KERNEL=$(python3 tests/vm/build_kernel.py)``.

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
from pathlib import Path

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

# Bump when the recipe above changes in a way that changes the kernel.
RECIPE_VERSION = "1"


def log(msg: str) -> None:
    """Progress messages go to stderr; stdout is reserved for the result."""
    print(f"[build_kernel] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("PYVFIO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "pyvfio"


# --------------------------------------------------------------------------
# Config fragment
# --------------------------------------------------------------------------

_SET_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(y)$")
_UNSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def read_fragment(path: Path = FRAGMENT) -> list[tuple[str, bool]]:
    """Return [(OPTION, enabled)] in file order.

    Accepted lines: ``CONFIG_FOO=y``, ``# CONFIG_FOO is not set``, comments
    and blank lines.  Anything else is an error (modules, =m, and string
    values are deliberately not supported: the guest loads no modules).
    """
    options: list[tuple[str, bool]] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if m := _SET_RE.match(line):
            options.append((m.group(1), True))
        elif m := _UNSET_RE.match(line):
            options.append((m.group(1), False))
        elif not line or line.startswith("#"):
            continue
        else:
            raise SystemExit(f"{path}:{lineno}: unsupported line: {raw!r}")
    return options


def fragment_key(options: list[tuple[str, bool]]) -> str:
    """Short hash of the normalized option list (comments do not count)."""
    text = f"recipe={RECIPE_VERSION}\n" + "".join(
        f"{name}={'y' if on else 'n'}\n" for name, on in options)
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


def run(cmd: list[str], cwd: Path | None = None, logfile=None,
        quiet: bool = False) -> None:
    """Run a command; output to ``logfile`` (or stderr unless ``quiet``)."""
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

def kernel_dir(version: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", version)   # '~' -> '_'
    return cache_root() / f"kernel-{safe}-{key}"


def find_cached(key: str) -> Path | None:
    """Newest cached bzImage for this fragment, whatever Debian version."""
    hits = sorted(cache_root().glob(f"kernel-*-{key}/bzImage"),
                  key=os.path.getmtime)
    return hits[-1] if hits else None


def check_config(config: Path, options: list[tuple[str, bool]]) -> None:
    """Fail if olddefconfig dropped a requested option (unmet dependency)."""
    text = config.read_text()
    wrong = []
    for name, on in options:
        is_on = re.search(rf"^CONFIG_{name}=y$", text, re.M) is not None
        if is_on != on:
            wrong.append(f"CONFIG_{name} wanted {'y' if on else 'off'}")
    if wrong:
        raise SystemExit("kernel config does not match kernel.config:\n  "
                         + "\n  ".join(wrong))


@contextlib.contextmanager
def build_lock():
    """Exclusive lock so that concurrent runs build the kernel only once."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "kernel.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build holds the lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build(version: str, key: str, options: list[tuple[str, bool]],
          apt: PrivateApt, jobs: int, keep_tree: bool) -> Path:
    out_dir = kernel_dir(version, key)
    work = cache_root() / f"kbuild-{key}"
    log_path = cache_root() / "kernel-build.log"
    log(f"building {SOURCE_PACKAGE} {version} (-j{jobs}); log: {log_path}")
    t0 = time.monotonic()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with open(log_path, "w") as lf:
        lf.write(f"{SOURCE_PACKAGE} {version}, key {key}\n")
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
        run(["make", "defconfig"], cwd=src, logfile=lf)
        run(["make", "kvm_guest.config"], cwd=src, logfile=lf)
        args: list[str] = []
        for name, on in options:
            args += ["-e" if on else "-d", name]
        run(["scripts/config", *args], cwd=src, logfile=lf)
        run(["make", "olddefconfig"], cwd=src, logfile=lf)
        check_config(src / ".config", options)

        log(f"compiling bzImage (takes ~20 min on 2 cores); tail -f {log_path}")
        run(["make", f"-j{jobs}", "bzImage"], cwd=src, logfile=lf)

    # Publish atomically: a half-copied bzImage must never look cached.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "arch" / "x86" / "boot" / "bzImage", tmp / "bzImage")
    shutil.copy2(src / ".config", tmp / "config")
    (tmp / "BUILD-INFO").write_text(
        f"package={SOURCE_PACKAGE}\nversion={version}\nkey={key}\n"
        f"recipe={RECIPE_VERSION}\nseconds={time.monotonic() - t0:.0f}\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    if not keep_tree:
        shutil.rmtree(work)
    log(f"built in {time.monotonic() - t0:.0f} s")
    return out_dir / "bzImage"


def ensure_kernel(refresh: bool = False, jobs: int = 2,
                  keep_tree: bool = False, offline: bool = False) -> Path:
    """Return the path of a cached bzImage, building it if needed."""
    options = read_fragment()
    key = fragment_key(options)

    if offline:
        hit = find_cached(key)
        if hit is None:
            raise SystemExit(f"no cached kernel for key {key} in {cache_root()}")
        return hit

    apt = PrivateApt("trixie-backports", SOURCE_SUITE)
    try:
        apt.setup(refresh=refresh)
        version = apt.candidate_version(SOURCE_PACKAGE)
    except SystemExit as exc:
        # No network/registry: any kernel built from this fragment will do.
        hit = find_cached(key)
        if hit is None:
            raise
        log(f"apt unavailable ({exc}); using cached {hit}")
        return hit
    if version is None:
        raise SystemExit(f"{SOURCE_PACKAGE} not found in {SOURCE_SUITE}")

    bz = kernel_dir(version, key) / "bzImage"
    if bz.exists():
        return bz
    with build_lock():
        if bz.exists():          # built by whoever held the lock before us
            return bz
        install_packages(BUILD_DEPS)
        return build(version, key, options, apt, jobs, keep_tree)


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
    args = ap.parse_args()
    if args.print_key:
        print(fragment_key(read_fragment()))
        return 0
    print(ensure_kernel(refresh=args.refresh, jobs=args.jobs,
                        keep_tree=args.keep_tree, offline=args.offline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
