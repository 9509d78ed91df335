"""The ``pyvfio`` command: device discovery, binding and environment checks.

Usage: ``pyvfio [--fake NAME|FILE] [--json] [-v|-vv] COMMAND [ARGS]`` (also
``python -m pyvfio``).  The common options (``--fake``, ``--json``,
``--fake-state``, ``--fake-reset``, ``--state``, ``-v``) go before or after the
command.  ``-v`` logs each step to stderr (binding steps, fallbacks),
``-vv`` also the details (retries, the fake's refusals); ``PYVFIO_TRACE=1``
prints every syscall (see :mod:`pyvfio.backend.trace`).

Commands (``pyvfio COMMAND --help`` gives each one's description, options,
examples and exit codes): ``status`` (devices by driver, with IOMMU group,
viability and host use), ``groups [GROUP|BDF ...]`` (groups and viability,
explained), ``doctor`` (what VFIO needs, with fixes), ``bind`` (to
vfio-pci, all or nothing, kept after a reboot by a udev rule per device
unless ``--nosave``; ``--list-persistent``), ``unbind`` and ``restore``
(driver-less, or back to the original driver; both delete the persistent
bindings), ``topology dump`` (this machine as a fake topology file).

``status`` and ``groups`` on a machine without IOMMU groups show the
built-in fake system "default" instead and say so (a banner; in JSON
``"fake": {"fallback": true, ...}``); ``--real`` shows this machine.
``--fake`` keeps the fake system's state between commands (the banner
names the file; ``--fake-reset`` starts over), so ``bind``, ``status``,
``groups`` and ``restore`` rehearse a workflow.

Exit codes (stable, for scripts):

====  ====================================================================
0     success
1     the command ran and found a problem: a failed ``doctor`` check, a
      group named to ``groups`` that is not viable (a listing is 0), a
      dump that does not replay
2     bad usage: unknown option, malformed or unknown device or group,
      unknown, unreadable or malformed fake topology, a PCI bridge given
      to ``bind``, a ``--driver`` that is no driver name
3     an operation failed: the kernel refused, permission denied, I/O error,
      a damaged or unsafe binding state, rule or fake state file (one line
      says what is wrong)
4     refused because a device is in use by the host (``--force`` overrides)
====  ====================================================================

With ``--json`` stdout always has a JSON object: the command's own or, for
an error that stops the command before it has one (bad usage, a failed
read), ``{"ok": false, "exit_code": N, "error": {"kind": "usage" or
"failed", "message": ..., "errno": ...}}``; the message also goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from ..backend import Backend, default_backend, traced_if_enabled
from ..errors import InvalidArgumentError, VfioError
from . import _cli_logging, _progress
from ._cli_help import help_options

# Each command imports what it needs in its own functions (start-up time):
# ``pyvfio --help`` loads no discovery code, ``status`` no binding code.
if TYPE_CHECKING:
    from ..core import viability
    from . import binding, devices

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "EXIT_FAILED",
           "EXIT_IN_USE", "FALLBACK_TOPOLOGY"]

_LOG = logging.getLogger(__name__)

#: Exit codes (see the module documentation).
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_FAILED, EXIT_IN_USE = 0, 1, 2, 3, 4

#: The fake topology ``status`` shows on a machine without an IOMMU.
FALLBACK_TOPOLOGY = "default"


class _UsageError(Exception):
    """Bad arguments found after parsing (unknown device, group...)."""


class _ArgumentError(Exception):
    """argparse found bad arguments; ``parser`` prints the usage line."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come back to :func:`main` (which
    prints them like argparse, and as JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)

    def format_help(self) -> str:
        """The help, with the binding state's folder filled in here: the
        binding code is imported only when a help text shows it."""
        text = super().format_help()
        if _STATE_DIR in text:
            from .binding_state import STATE_DIR

            text = text.replace(_STATE_DIR, STATE_DIR)
        return text


#: Stands for binding_state.STATE_DIR in help texts (see _Parser.format_help).
_STATE_DIR = "<STATE_DIR>"


class _Context:
    """The system a command runs against: the real kernel, a given
    backend, or a fake system whose state is kept between commands
    (:mod:`pyvfio.setup.fake_session`)."""

    def __init__(self, args: argparse.Namespace, backend: Backend | None,
                 fallback: bool = False) -> None:
        from .fake_session import FakeSession

        self.fake_name: str | None = None
        self.description: str | None = None
        self.session: FakeSession | None = None
        if backend is not None:
            self.backend = backend
        elif args.fake:
            self.session = _open_fake(args, fallback)
            self.backend = traced_if_enabled(self.session.system.backend)
            self.description = getattr(self.session.system, "_description", None)
        else:
            self.backend = default_backend()
        self.kind = self.backend.name
        owner = getattr(self.backend, "system", None)
        if self.kind == "fake" and owner is not None:
            self.fake_name = str(getattr(owner, "topology_name", "fake"))
        self.fallback = fallback
        args._contexts = [*getattr(args, "_contexts", []), self]

    def as_dict(self, fallback: bool = False) -> dict[str, Any]:
        return {"kind": self.kind, "fake_topology": self.fake_name,
                "fallback": fallback or self.fallback}

    def fake_dict(self) -> dict[str, Any] | None:
        """The JSON ``"fake"`` field (None on the real kernel)."""
        from .fake_session import fake_field

        return fake_field(self.fake_name, self.session, self.fallback)

    def banner(self) -> str:
        """The line that says a fake system is shown, and where its state is."""
        from .fake_session import banner

        return banner(self.fake_name, self.session)


def _open_fake(args: argparse.Namespace, fallback: bool) -> Any:
    """The fake session of ``--fake`` (TopologyError: bad usage)."""
    from ..fake.machine.topology import TopologyError
    from .fake_session import open_session

    try:
        session = open_session(args.fake, getattr(args, "fake_state", None), fallback=fallback,
                               reset=bool(getattr(args, "fake_reset", False)))
    except TopologyError as e:
        raise _UsageError(f"--fake {args.fake}: {e}") from None
    for note in session.notes:
        print(f"pyvfio: {note}", file=sys.stderr)
    return session


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2))


# -- status ---------------------------------------------------------------------------
def _fallback_needed(args: argparse.Namespace, backend: Backend | None) -> bool:
    if args.fake or backend is not None or args.real:
        return False
    from . import kernel_support

    support = kernel_support.vfio_support(default_backend())
    return support.group_count == 0 and not support.noiommu_mode


def _status_data(ctx: _Context) -> dict[str, Any]:
    from ..core import viability
    from . import devices, kernel_support
    from .host_use import UsageScan

    b = ctx.backend
    pci = devices.pci_devices(b)
    scan = UsageScan(b)
    explained: dict[int, viability.GroupViability] = {}
    for g in devices.iommu_groups(b):
        explained[g.id] = viability.explain_group(g.id, None, b)
    out_devices = []
    for d in pci:
        entry = d.as_dict()
        why = explained.get(d.iommu_group) if d.iommu_group is not None else None
        entry["group_viable"] = why.viable if why is not None else None
        entry["in_use"] = [u.as_dict() for u in scan.for_device(d.bdf)]
        out_devices.append(entry)
    return {
        "system": ctx.as_dict(),
        "support": kernel_support.vfio_support(b).as_dict(),
        "devices": out_devices,
        "groups": [e.as_dict() for e in explained.values()],
    }


_BANNER = """\
=====================================================================
 NO IOMMU ON THIS MACHINE ({why}):
 VFIO cannot assign devices here; `pyvfio doctor` says what is missing.
 Shown instead: the built-in FAKE system {name!r}, pyvfio's
 simulated QEMU test machine.  None of the devices below is real.
 `pyvfio {command} --real` shows this machine; `--fake NAME|FILE`
 picks another fake system.
====================================================================="""


def _context_or_fallback(args: argparse.Namespace, backend: Backend | None,
                         command: str) -> _Context:
    """The system ``status`` and ``groups`` show: on a machine without
    IOMMU groups, the fake system :data:`FALLBACK_TOPOLOGY` (its state kept
    like ``--fake``'s), announced by a banner (human output) and by
    ``"fake": {"fallback": true}`` (JSON)."""
    fallback = _fallback_needed(args, backend)
    if fallback:
        from . import devices

        real = devices.pci_devices(default_backend())
        args.fake = FALLBACK_TOPOLOGY
        _LOG.info("no IOMMU groups on this machine: falling back to the fake %r", args.fake)
        if not args.json:
            print(_BANNER.format(why=f"{len(real)} PCI devices, no IOMMU groups",
                                 name=FALLBACK_TOPOLOGY, command=command))
            print()
    return _Context(args, backend, fallback)


def cmd_status(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio status``."""
    from ._cli_render import print_status

    ctx = _context_or_fallback(args, backend, "status")
    fallback = ctx.fallback
    data = _status_data(ctx)
    data["fake"] = ctx.fake_dict()
    if args.json:
        _print_json(data)
        return EXIT_OK
    print_status(ctx, data)
    if fallback:
        print(f"\n(the devices above are the FAKE system {FALLBACK_TOPOLOGY!r}; "
              "`pyvfio status --real` shows this machine)")
    return EXIT_OK


# -- groups ---------------------------------------------------------------------------
#: Group numbers are the kernel's ints (ida ids): at most 10 ASCII digits.
_MAX_GROUP_DIGITS = 10


def _group_number(spec: str) -> int | None:
    """The group number ``spec`` spells in ASCII digits (str.isdigit and
    int() also take other scripts' digits), None when it is no number."""
    if not (spec.isascii() and spec.isdigit()):
        return None
    if len(spec) > _MAX_GROUP_DIGITS:
        raise _UsageError(f"no IOMMU group {spec[:_MAX_GROUP_DIGITS]}... ({len(spec)} digits)")
    return int(spec)


def _group_targets(b: Backend, specs: Sequence[str]) -> list[tuple[int, str | None]]:
    """(group, device or None) for each argument: a group number, or a
    device (BDF, vendor:device) standing for its group."""
    from ..core import sysfs

    out: list[tuple[int, str | None]] = []
    for spec in specs:
        gid = _group_number(spec)
        if gid is not None:
            if not b.exists(f"{sysfs.IOMMU_GROUPS}/{gid}/devices"):
                raise _UsageError(f"no IOMMU group {gid}")
            pairs: list[tuple[int, str | None]] = [(gid, None)]
        else:
            pairs = []
            for bdf in _devices(b, [spec]):
                try:
                    pairs.append((sysfs.device_group(bdf, b), bdf))
                except VfioError as e:
                    raise _UsageError(str(e)) from None
        out += [p for p in pairs if p not in out]
    return out


def _group_ids(b: Backend, specs: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for gid, _device in _group_targets(b, specs):
        if gid not in ids:
            ids.append(gid)
    return ids


def cmd_groups(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio groups [GROUP|BDF ...]``."""
    from ..core import viability
    from . import devices, kernel_support

    ctx = _context_or_fallback(args, backend, "groups")
    b = ctx.backend
    if args.targets:
        results = [viability.explain_group(gid, device, b)
                   for gid, device in _group_targets(b, args.targets)]
    else:
        results = [viability.explain_group(g.id, None, b) for g in devices.iommu_groups(b)]
    hint = None
    if not results:
        support = kernel_support.vfio_support(b)
        hint = ("no IOMMU groups: the IOMMU is not enabled (see `pyvfio doctor`)"
                if not support.iommus else
                "no IOMMU groups although an IOMMU is active (see `pyvfio doctor`)")
    if args.json:
        _print_json({"system": ctx.as_dict(), "fake": ctx.fake_dict(),
                     "groups": [r.as_dict() for r in results],
                     "ok": all(r.viable for r in results) if args.targets else True,
                     "hint": hint})
    elif args.targets:
        print("\n\n".join(r.message() for r in results))
    else:
        if ctx.kind == "fake":
            print(ctx.banner())
        if hint is not None:
            print(hint)
        for r in results:
            members = ", ".join(
                f"{m.bdf} ({'bridge, ' if m.is_bridge else ''}{m.driver or 'no driver'})"
                for m in r.members)
            print(f"group {r.group} ({len(r.members)} device(s)): "
                  f"{'viable' if r.viable else 'NOT viable'}: {members}")
            for x in r.blockers:
                print(f"    blocked by {x.reason}")
    if ctx.fallback and not args.json:
        print(f"\n(the groups above are the FAKE system {FALLBACK_TOPOLOGY!r}; "
              "`pyvfio groups --real` shows this machine)")
    # a listing succeeds whatever the groups' viability; a group asked
    # about by name answers whether it is viable
    if args.targets and not all(r.viable for r in results):
        return EXIT_PROBLEM
    return EXIT_OK


# -- doctor ---------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio doctor``."""
    import textwrap

    from ._cli_render import table
    from .environment import FAIL, WARN, check_environment

    ctx = _Context(args, backend)
    checks = check_environment(ctx.backend)
    if args.json:
        _print_json({"system": ctx.as_dict(), "fake": ctx.fake_dict(),
                     "checks": [c.as_dict() for c in checks],
                     "ok": not any(c.status == FAIL for c in checks)})
    else:
        if ctx.kind == "fake":
            print(ctx.banner())
        rows: list[list[str]] = []
        for c in checks:
            lines = textwrap.wrap(c.detail, 72) or [""]
            if c.fix:
                lines += textwrap.wrap(f"fix: {c.fix}", 72, subsequent_indent="     ")
            rows.append([c.status.upper(), c.name, lines[0]])
            rows += [["", "", line] for line in lines[1:]]
        print(table(rows, ["STATUS", "CHECK", "DETAIL"]))
        fails = [c.name for c in checks if c.status == FAIL]
        warns = [c.name for c in checks if c.status == WARN]
        if fails:
            print(f"\nVFIO is not usable here: {', '.join(fails)} failed.")
        elif warns:
            print(f"\nVFIO is usable; warnings: {', '.join(warns)}.")
        else:
            print("\nVFIO is usable; no problems found.")
    return EXIT_PROBLEM if any(c.status == FAIL for c in checks) else EXIT_OK


# -- bind / unbind / restore ----------------------------------------------------------------
def _is_hex(text: str) -> bool:
    return text.isascii() and all(c in "0123456789abcdefABCDEF" for c in text)


def _shown(text: str) -> str:
    """An argument for a one-line message (escaped, cut short)."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _devices(b: Backend, specs: Sequence[str]) -> list[str]:
    """BDFs for device arguments: a BDF, or vendor:device (every match)."""
    from ..core import sysfs
    from . import devices

    out: list[str] = []
    all_devices: list[devices.PciDeviceInfo] | None = None
    for spec in specs:
        if sysfs._BDF.match(spec.strip()):
            bdf = sysfs.normalize_bdf(spec)
            if not b.exists(f"{sysfs.PCI_DEVICES}/{bdf}"):
                raise _UsageError(f"no PCI device {bdf}")
            matches = [bdf]
        elif len(spec.split(":")) == 2 and all(len(p) == 4 and _is_hex(p)
                                                for p in spec.split(":")):
            if all_devices is None:
                all_devices = devices.pci_devices(b)
            matches = [d.bdf for d in all_devices if d.id == spec.lower()]
            if not matches:
                raise _UsageError(f"no PCI device with ID {spec}")
        else:
            raise _UsageError(f"{_shown(spec)} is neither a PCI address (DDDD:BB:DD.F) nor an ID "
                              "(vendor:device)")
        out += [m for m in matches if m not in out]
    return out


def _state(args: argparse.Namespace, ctx: _Context) -> binding.BindingState:
    from . import binding

    if args.state:
        return binding.BindingState(args.state)
    return binding.BindingState.default(ctx.backend)


def _refuse_bridges(b: Backend, bdfs: Sequence[str], driver: str) -> None:
    """Binding a PCI bridge to vfio-pci is bad usage: say so before
    anything changes."""
    if driver != "vfio-pci":
        return
    from . import devices

    for bdf in bdfs:
        try:
            info = devices.pci_device(bdf, b)
        except VfioError:
            continue
        if info.is_bridge:
            group = f" or `pyvfio bind --group {info.iommu_group}` (bridges are left alone)" \
                if info.iommu_group is not None else ""
            raise _UsageError(f"{bdf} is a PCI bridge ({info.description}): vfio-pci does not "
                              "drive bridges, and a bridge without a driver or on pcieport keeps "
                              f"its group viable; bind the devices behind it{group}")


def _run_binding(args: argparse.Namespace, backend: Backend | None, action: str) -> int:
    from ..core import sysfs
    from . import binding, persist
    from .binding_state import BindingStateError, is_driver_name

    if action == "bind" and args.list_persistent:
        return _list_persistent(args, backend)
    if action == "bind" and not is_driver_name(args.driver):
        raise _UsageError(f"--driver {_shown(args.driver)}: not a driver name (letters, digits, "
                          "'_', '.', '-')")
    ctx = _Context(args, backend)
    b = ctx.backend
    st = _state(args, ctx)
    rules = None if args.nosave else persist.PersistentRules.default(b)
    results: list[binding.Binding] = []
    nothing = False
    if action == "restore" and not args.targets:
        if args.group:
            raise _UsageError("restore --group needs a group number")
        ops = [("device", rec.bdf) for rec in st.records()]
        for kept in rules.list() if rules is not None else []:
            if ("device", kept.bdf) not in ops and b.exists(f"{sysfs.PCI_DEVICES}/{kept.bdf}"):
                ops.append(("device", kept.bdf))
        nothing = not ops
    elif args.group:
        ops = [("group", str(g)) for g in _group_ids(b, args.targets)]
    else:
        if not args.targets:
            raise _UsageError(f"{action} needs a device (BDF or vendor:device) or --group N")
        ops = [("device", d) for d in _devices(b, args.targets)]
        if action == "bind":
            _refuse_bridges(b, [d for _kind, d in ops], args.driver)
    # before anything moves, the persistent bindings can be read back
    # (unbind, restore: a damaged rule file stops here) or, once the
    # devices passed bind's checks, written
    if rules is not None and action != "bind":
        rules.list()
    error: VfioError | None = None
    try:
        if action == "bind":
            # every device of every argument, all or nothing
            bdfs: list[str] = []
            for kind, target in ops:
                bdfs += binding.group_devices(int(target), b) if kind == "group" else [target]
            groups = [int(t) for k, t in ops if k == "group"]
            what = (f"bind IOMMU group {groups[0]} to {args.driver}"
                    if len(ops) == 1 and groups else None)
            results = binding.bind_many(bdfs, args.driver, force=args.force, backend=b,
                                        state=st, what=what, prepare=None if rules is None
                                        else rules.check_writable)
            for r in results:
                if r.group in groups:
                    r.notes = [n for n in r.notes if not n.startswith(f"group {r.group} ")]
        for step, (kind, target) in enumerate(ops if action != "bind" else []):
            _progress.report(step, len(ops), f"pyvfio {action}", f"done, next {target}")
            if kind == "group":
                gid = int(target)
                if action == "unbind":
                    results += binding.unbind_group(gid, force=args.force, backend=b, state=st)
                else:
                    results += binding.restore_group(gid, force=args.force, backend=b, state=st)
            elif action == "unbind":
                results.append(binding.unbind(target, force=args.force, backend=b, state=st))
            else:
                results.append(binding.restore(target, force=args.force, backend=b, state=st))
        _progress.report(len(ops), len(ops), f"pyvfio {action}", "done")
    except VfioError as e:
        error = e
    changes = persist.Changes()
    if rules is not None and (action != "bind" or error is None):
        try:  # keep what bind did (remove what unbind and restore undid)
            changes.follow(rules, [r.bdf for r in results], args.driver if action == "bind"
                           else None)
        except VfioError as e:
            error = error or e
    code = EXIT_OK
    if isinstance(error, binding.DeviceInUseError):
        code = EXIT_IN_USE
    elif error is not None:
        code = EXIT_FAILED
    if args.json:
        err: dict[str, Any] | None = None
        if isinstance(error, BindingStateError):  # the state file needs a look: say so
            print(f"pyvfio {action}: {error}", file=sys.stderr)
        if error is not None:
            err = {"errno": error.errno, "message": str(error),
                   "usages": [u.as_dict() for u in getattr(error, "usages", [])]}
        _print_json({"system": ctx.as_dict(), "fake": ctx.fake_dict(), "ok": error is None,
                     "results": [r.as_dict() for r in results],
                     "persistent": changes.as_dict(),
                     "error": err})
        return code
    if ctx.kind == "fake":
        print(ctx.banner())
    if nothing:
        print("nothing to restore: pyvfio has changed no device's driver")
    for r in results:
        print(r)
    for line in changes.lines():
        print(line)
    if error is not None:
        print(f"pyvfio {action}: {error}", file=sys.stderr)
    return code


def _list_persistent(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio bind --list-persistent``: the devices kept on a driver."""
    from . import persist

    ctx = _Context(args, backend)
    folder, rows = persist.report(ctx.backend)
    if args.json:
        _print_json({"system": ctx.as_dict(), "fake": ctx.fake_dict(), "folder": folder,
                     "persistent": rows})
        return EXIT_OK
    if ctx.kind == "fake":
        print(ctx.banner())
    print(persist.format_report(folder, rows))
    return EXIT_OK


def cmd_bind(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio bind``."""
    return _run_binding(args, backend, "bind")


def cmd_unbind(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio unbind``."""
    return _run_binding(args, backend, "unbind")


def cmd_restore(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio restore``."""
    return _run_binding(args, backend, "restore")


# -- topology ---------------------------------------------------------------------------
def cmd_topology_dump(args: argparse.Namespace, backend: Backend | None) -> int:
    """``pyvfio topology dump``."""
    from ..fake.machine.topology import TopologyError
    from .capture import capture, replay_check, to_json

    ctx = _Context(args, backend)
    topo = capture(ctx.backend, name=args.name)
    text = to_json(topo)
    try:
        problems = replay_check(topo)
    except (TopologyError, KeyError, ValueError) as e:
        problems = [f"the fake cannot load it: {e}"]
    if args.output and args.output != "-":
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    summary = (f"captured {len(topo['devices'])} PCI devices, {len(topo.get('groups', []))} "
               f"IOMMU groups" + (f" into {args.output}" if args.output and args.output != "-"
                                  else ""))
    if problems:
        print(f"{summary}; it does NOT replay on the fake:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return EXIT_PROBLEM
    print(f"{summary}; replays on the fake: pyvfio --fake FILE status", file=sys.stderr)
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------
def _version() -> str:
    """The installed distribution's version (pyvfio.__version__ at build time)."""
    from importlib import metadata
    try:
        return metadata.version("pyvfio")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up when asked for (importlib.metadata
    would cost every command some 35 ms while its parser is built)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(f"pyvfio {_version()}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyvfio`` command."""
    doc = __doc__ or ""
    epilog = doc[doc.index("Exit codes"):].replace("``", "") if "Exit codes" in doc else None
    parser = _Parser(
        prog="pyvfio", description="VFIO device setup: discovery, binding, environment checks.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)

    def common_options(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument("--fake", metavar="NAME|FILE", default=default,
                       help="run against a fake system: a shipped topology name "
                            "(default, minimal, multi-group, qemu-vtd, qemu-vtd-sm, qemu-virtio, "
                            "arm64-smmuv3) or a JSON "
                            "topology file")
        p.add_argument("--json", action="store_true", default=default,
                       help="machine-readable output")
        p.add_argument("-v", "--verbose", action="count", default=default,
                       help="log each step to stderr (-vv: the details too)")
        p.add_argument("--fake-state", metavar="FILE", default=default,
                       help="with --fake: where the fake system's state is kept between "
                            "commands (default: $XDG_STATE_HOME/pyvfio/fake-NAME.json; "
                            "'-': keep none)")
        p.add_argument("--fake-reset", action="store_true", default=default,
                       help="with --fake: forget the fake system's saved state first")
        p.add_argument("--state", metavar="FILE", default=default,
                       help="where bind/unbind/restore remember original drivers (default: "
                            f"{_STATE_DIR}/bindings.json, $PYVFIO_STATE_DIR; below "
                            "the fake state's folder for --fake)")

    common_options(parser, None)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the installed version and exit")
    common = _Parser(add_help=False)
    common_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", parents=[common], help="PCI devices by driver, with IOMMU "
                                                          "groups, viability and host use",
                       **help_options("status"))
    p.add_argument("--real", action="store_true",
                   help="show this machine even when it has no IOMMU")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("groups", parents=[common],
                       help="IOMMU groups and viability; explain given groups or devices",
                       **help_options("groups"))
    p.add_argument("targets", nargs="*", metavar="GROUP|BDF")
    p.add_argument("--real", action="store_true",
                   help="show this machine even when it has no IOMMU groups")
    p.set_defaults(func=cmd_groups)

    sub.add_parser("doctor", parents=[common], help="check IOMMU, modules, device nodes, "
                                                    "permissions and limits",
                   **help_options("doctor")).set_defaults(func=cmd_doctor)

    for name, func, help_ in (
            ("bind", cmd_bind, "bind devices to vfio-pci (remembering their driver)"),
            ("unbind", cmd_unbind, "detach devices from their driver, keep them driver-less"),
            ("restore", cmd_restore, "give devices their original driver back")):
        p = sub.add_parser(name, parents=[common], help=help_, **help_options(name))
        p.add_argument("targets", nargs="*", metavar="DEVICE",
                       help="a PCI address (0000:03:00.0 or 03:00.0) or an ID (8086:10d3); "
                            "with --group, IOMMU group numbers")
        p.add_argument("--group", action="store_true",
                       help="the arguments are IOMMU groups (or devices whose whole group "
                            "is meant); bridges are left alone")
        p.add_argument("--force", action="store_true",
                       help="do it even if the host uses the device")
        p.add_argument("--nosave", action="store_true",
                       help="bind: do not keep the devices on the driver after a reboot; "
                            "unbind, restore: keep their persistent binding")
        if name == "bind":
            p.add_argument("--driver", default="vfio-pci", help="driver to bind (default vfio-pci)")
            p.add_argument("--list-persistent", action="store_true",
                           help="list the devices kept on a driver across reboots (the udev "
                                "rules pyvfio wrote) and bind nothing")
        p.set_defaults(func=func)

    p = sub.add_parser("topology", parents=[common], help="capture this machine's topology")
    tsub = p.add_subparsers(dest="topology_command", required=True, metavar="ACTION")
    d = tsub.add_parser("dump", parents=[common],
                        help="write the PCI/IOMMU topology in the fake's JSON format",
                        **help_options("topology dump"))
    d.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")
    d.add_argument("--name", help="topology name (default: the host name)")
    d.set_defaults(func=cmd_topology_dump)

    from .grant import add_grant_parser  # pyvfio grant: fds for unprivileged drivers
    add_grant_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, *, backend: Backend | None = None) -> int:
    """Run the ``pyvfio`` command; returns its exit code.  ``backend`` runs
    it against that backend (e.g. a fake system's, to chain commands on one
    system in tests) instead of the real kernel or ``--fake``."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in words[:words.index("--")] if "--" in words else "--json" in words
    try:
        args = parser.parse_args(words)
    except _ArgumentError as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return _fail(want_json, EXIT_USAGE, "usage", str(exc))
    except SystemExit as exc:  # --help, --version
        return EXIT_OK if not exc.code else _fail(want_json, EXIT_USAGE, "usage", str(exc))
    if not hasattr(args, "real"):
        args.real = False
    want_json = bool(args.json)
    restore_logging = _cli_logging.configure(args.verbose or 0)
    try:
        if (args.fake_state or args.fake_reset) and not args.fake:
            raise _UsageError("--fake-state and --fake-reset go with --fake NAME|FILE")
        code = int(args.func(args, backend))
        for ctx in getattr(args, "_contexts", []):  # the fake's state, for the next command
            if ctx.session is not None:
                ctx.session.save()
        return code
    except (_UsageError, InvalidArgumentError) as exc:
        print(f"pyvfio: {exc}", file=sys.stderr)
        return _fail(want_json, EXIT_USAGE, "usage", str(exc))
    except BrokenPipeError:  # pragma: no cover - e.g. `pyvfio status | head`
        return EXIT_OK
    except OSError as exc:
        print(f"pyvfio: {exc}", file=sys.stderr)
        return _fail(want_json, EXIT_FAILED, "failed", str(exc), exc.errno)
    finally:
        restore_logging()


def _fail(want_json: bool, code: int, kind: str, message: str, errno: int | None = None) -> int:
    """With ``--json``, the error as a JSON object on stdout too (the
    message went to stderr); returns ``code``."""
    if want_json:
        _print_json({"ok": False, "exit_code": code,
                     "error": {"kind": kind, "message": message, "errno": errno}})
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

