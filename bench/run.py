#!/usr/bin/env python3
"""pyvfio's benchmarks: pyvfio against a C program doing the same syscalls,
side by side in one run, printed as medians and ratios with their goals.

    python bench/run.py --fake            host suite: fake kernel, import, accessors
    python bench/run.py --guest           real-kernel suite in the test VM (tests/vm)
    python bench/run.py --all             both, three runs (the goals over the runs)
    python bench/run.py --all --runs 1    both, once
    python bench/run.py --all --quick     shorter batches, fewer repetitions
    python bench/run.py --all --json results.json --markdown
    python bench/run.py --show results.json [--markdown]   print saved results again

The host suite is bench/host_suite.py; the guest suite, bench/guest_suite.py,
runs as root inside the Linux 7.3 VM that tests/vm/guest.py boots.  The C
program (bench/c/vfio_bench.c) is built on the host with the system
compiler against the Linux 7.3 uAPI headers; the guest sees the host's file
system read-only and runs the same binary.  The method is described in
bench/harness.py and bench/README.md; the goals are declared in
bench/goals.py.  With several runs (``--runs N``; ``--all`` makes three) the
host suite runs N times and the guest suite N times in one boot of the VM;
each run's tables are printed, then every goal with its figure in each run,
the median over the runs and whether that median meets it.  Exit status: 0
when every goal is met, 1 when one is not, 2 when a suite failed to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import goals
import harness
from harness import REPO, Result

GUEST_JSON = "bench-guest.json"


@dataclass
class Suite:
    where: str  # "host" or "guest"
    title: str
    machine: dict[str, Any]
    command: str
    wall_s: float
    results: list[Result]

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "title": self.title, "machine": self.machine,
                "command": self.command, "wall_s": self.wall_s,
                "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Suite:
        return cls(data["where"], data["title"], data["machine"], data["command"],
                   data["wall_s"], [Result.from_json(r) for r in data["results"]])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- running the suites ---------------------------------------------------------------------
def run_host(reps: int, quick: bool, command: str) -> Suite:
    import host_suite

    t0 = time.monotonic()
    machine = harness.machine()
    results = host_suite.run(reps, quick, log)
    machine["loadavg_end"] = os.getloadavg()
    return Suite("host", "host: fake kernel, import, accessors on RAM", machine, command,
                 time.monotonic() - t0, results)


def run_guest(reps: int, quick: bool, command: str, verbose: bool, timeout: float,
              runs: int = 1) -> list[Suite]:
    """Boot the test VM and run bench/guest_suite.py in it ``runs`` times
    (one Suite each); its results come back as JSON through the VM's shared
    folder."""
    sys.path.insert(0, str(REPO / "tests" / "vm"))
    import guest  # tests/vm/guest.py
    import host_suite

    exe = harness.build_c(log)  # on the host: the guest's view of the cache is read-only
    host_suite.compile_bytecode()  # here: the guest cannot write it
    inner = [sys.executable, str(REPO / "bench" / "guest_suite.py"), "--exe", str(exe),
             "--reps", str(reps), "--runs", str(runs),
             "--json", f"{guest.GUEST_SHARE}/{GUEST_JSON}"]
    if quick:
        inner.append("--quick")
    args = guest.parse_args(["--run", shlex.join(inner), "--timeout", str(timeout),
                             *([] if verbose else ["-q"])])
    args.resolved_accel = guest.resolve_accel(args)
    got: list[dict[str, Any]] = []

    def collect(share: Path) -> None:
        path = share / GUEST_JSON
        if path.exists():
            got.append(json.loads(path.read_text()))

    t0 = time.monotonic()
    host_load = os.getloadavg()
    status = guest.run_guest(shlex.join(inner), args, after=collect)
    if status or not got:
        raise RuntimeError(f"the guest suite failed (exit status {status})")
    out = []
    for data in got[0]["runs"]:
        data["machine"]["accel"] = args.resolved_accel
        data["machine"]["host_loadavg"] = [host_load, os.getloadavg()]
        out.append(Suite("guest", f"guest: Linux {data['machine']['kernel']} in QEMU "
                         f"({args.resolved_accel}), edu behind an emulated Intel IOMMU",
                         data["machine"], command, data["wall_s"],
                         [Result.from_json(r) for r in data["results"]]))
    log(f"bench: guest: {len(out)} run(s) in {time.monotonic() - t0:.0f} s with the boot")
    return out


# -- reporting --------------------------------------------------------------------------------
def fmt_time(ns: float, unit: str) -> str:
    """A time in the result's ``unit`` ("ns/op", "ns", or in µs: "us", "us/frame"),
    written in the largest unit that keeps it at 1 or more."""
    if unit.startswith("us"):
        ns *= 1e3
    suffix = "/" + unit.split("/", 1)[1] if "/" in unit else ""
    for scale, name in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
        if abs(ns) >= scale:  # a difference of two times may be negative
            return f"{ns / scale:.3g} {name}{suffix}"
    return f"{ns:.3g} ns{suffix}"


def fmt_ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 100 else f"{value:.2f}x"


@dataclass
class Row:
    bench: str
    measure: str
    value: str
    spread: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return {None: "", True: "met", False: "NOT MET"}[self.met]


def rows(result: Result) -> Iterator[Row]:
    limits = dict(result.limits)
    for variant in result.samples:
        lo, hi = result.spread(variant)
        median = result.median(variant)
        goal = limits.get(variant)
        yield Row(result.title, variant, fmt_time(median, result.unit),
                  f"{fmt_time(lo, result.unit)} .. {fmt_time(hi, result.unit)}",
                  f"<= {fmt_time(goal, result.unit)}" if goal is not None else "",
                  None if goal is None else median <= goal)
    for num, den, goal in result.ratios:
        value = result.ratio(num, den)
        pairs = [a / b for a, b in zip(result.samples[num], result.samples[den])]
        yield Row(result.title, f"ratio: {num} / {den}", fmt_ratio(value),
                  f"{fmt_ratio(min(pairs))} .. {fmt_ratio(max(pairs))}",
                  f"<= {goal:g}x" if goal is not None else "",
                  None if goal is None else value <= goal)


def describe_machine(suite: Suite) -> str:
    m = suite.machine

    def load(values: Any) -> str:
        return "/".join(f"{x:.1f}" for x in values)

    if "host_loadavg" in m:  # the guest's own load says little
        start, end = m["host_loadavg"]
        loads = f"host load average {load(start)} at the start, {load(end)} at the end"
    else:
        loads = f"load average {load(m['loadavg'])} at the start"
        if "loadavg_end" in m:
            loads += f", {load(m['loadavg_end'])} at the end"
    accel = f", accel {m['accel']}" if "accel" in m else ""
    return (f"Linux {m['kernel']}, Python {m['python']}, {m['cpus']} CPUs ({m['cpu']}){accel}; "
            f"{loads}; suite wall time {suite.wall_s:.0f} s")


def print_text(suites: list[Suite]) -> None:
    for suite in suites:
        print(f"\n== {suite.title}\n   {describe_machine(suite)}\n   command: {suite.command}")
        for result in suite.results:
            print(f"\n{result.title}  [{result.id}]")
            for row in rows(result):
                print(f"  {row.measure:<66} {row.value:>14}  ({row.spread})"
                      + (f"  goal {row.goal}: {row.verdict}" if row.goal else ""))
            if result.notes:
                print(f"  note: {result.notes}")


def print_markdown(suites: list[Suite]) -> None:
    for suite in suites:
        print(f"\n### {suite.title}\n\n{describe_machine(suite)}.\n\n"
              f"`{suite.command}`\n")
        print("| benchmark | variant or ratio | median | min .. max | goal | |")
        print("| --- | --- | ---: | --- | --- | --- |")
        for result in suite.results:
            first = True
            for row in rows(result):
                bench = row.bench if first else ""
                first = False
                print(f"| {bench} | {row.measure} | {row.value} | {row.spread} | {row.goal} "
                      f"| {row.verdict} |")


def apply_goals(runs: list[list[Suite]]) -> None:
    """Set every result's goals from bench/goals.py."""
    for suites in runs:
        for suite in suites:
            for result in suite.results:
                goals.apply(result)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def print_goals(runs: list[list[Suite]]) -> bool:
    """Every goal with its figure in each run, the median over the runs and
    whether the median meets it; True when all measured goals are met.

    The goals of bench/goals.py come first, in their order (a goal whose
    suite ran without the row it names is "not measured", which counts as
    not met); then the goals the suites declare inline."""
    # (where, result id, row) -> [(run number, row)], in the order first seen
    seen: dict[tuple[str, str, str], list[tuple[int, Row]]] = {}
    ran: set[str] = set()
    for n, suites in enumerate(runs, 1):
        for suite in suites:
            ran.add(suite.where)
            for result in suite.results:
                for row in rows(result):
                    if row.met is not None:
                        seen.setdefault((suite.where, result.id, row.measure), []).append((n, row))
    declared = [g for g in goals.GOALS if g.where in ran]
    keys = [(g.where, g.result, g.row) for g in declared]
    keys += [k for k in seen if k not in keys]
    texts = {(g.where, g.result, g.row): g for g in declared}
    met_count = 0
    lines = []
    for key in keys:
        where, rid, measure = key
        goal = texts.get(key)
        label = (f"goal {goal.number or '-'}: {goal.text}" if goal is not None
                 else f"{rid}: {measure}")
        got = seen.get(key, [])
        if not got:
            lines.append(f"  NOT MET  {where:<5} {label}: not measured ({rid}: {measure})")
            continue
        is_ratio = measure.startswith("ratio: ")
        values = [float(r.value.rstrip("x")) if is_ratio else _parse(r.value) for _n, r in got]
        shown = [r.value for _n, r in got]
        median = _median(values)
        bound = got[0][1].goal
        ok = _within(median, bound)
        met_count += ok
        per_run = ", ".join(shown)
        runs_met = sum(bool(r.met) for _n, r in got)
        lines.append(f"  {'met    ' if ok else 'NOT MET'}  {where:<5} {label}\n"
                     f"           {rid} [{measure}]: "
                     + (f"runs {per_run}; median " if len(got) > 1 else "")
                     + f"{_fmt_like(median, got[0][1].value)} (goal {bound}; "
                     f"met in {runs_met} of {len(got)} run{'s' if len(got) > 1 else ''})")
    print(f"\n== goals over {len(runs)} run{'s' if len(runs) > 1 else ''}: "
          f"{met_count} of {len(keys)} met")
    print("\n".join(lines))
    return met_count == len(keys)


_UNITS = {"ns": 1.0, "µs": 1e3, "ms": 1e6, "s": 1e9}


def _parse(text: str) -> float:
    """A figure as fmt_time writes it ("1.5 µs/op", "30 ms"), in ns."""
    number, unit = text.split()[:2]
    return float(number) * _UNITS[unit.split("/")[0]]


def _fmt_like(value: float, example: str) -> str:
    if example.endswith("x"):
        return fmt_ratio(value)
    return fmt_time(value, "ns/op" if example.endswith("/op") else "ns")


def _within(value: float, goal: str) -> bool:
    """``value`` (ns, or a factor) meets ``goal`` ("<= 2x", "<= 30 ms")."""
    bound = goal.removeprefix("<= ")
    return value <= (float(bound[:-1]) if bound.endswith("x") else _parse(bound))


# -- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pyvfio benchmarks (pyvfio vs C, side by side)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--fake", action="store_true",
                       help="host suite: fake kernel, import time, accessors (default)")
    which.add_argument("--guest", action="store_true",
                       help="real-kernel suite in the test VM")
    which.add_argument("--all", action="store_true",
                       help="both suites, three runs unless --runs says otherwise")
    which.add_argument("--show", metavar="FILE", help="print results saved with --json")
    ap.add_argument("--quick", action="store_true",
                    help="shorter batches, fewer repetitions, no 100k fake scale")
    ap.add_argument("--reps", type=int, help="repetitions per benchmark (default 9, quick 5)")
    ap.add_argument("--runs", type=int, help="full runs of each suite in this session, "
                    "the goals judged on their median (default 3 with --all, else 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream the guest's console")
    ap.add_argument("--guest-timeout", type=float,
                    help="limit for the whole VM run in seconds (default 600 + 400 per run)")
    args = ap.parse_args(argv)
    reps = args.reps or (5 if args.quick else 9)
    nruns = args.runs or (3 if args.all else 1)
    if nruns < 1:
        ap.error("--runs must be at least 1")
    timeout = args.guest_timeout or 600 + 400 * nruns
    py = Path(sys.executable)
    shown = py.relative_to(REPO) if py.is_relative_to(REPO) else py
    command = shlex.join([str(shown), "bench/run.py", *(sys.argv[1:] if argv is None else argv)])

    runs: list[list[Suite]] = []
    failed = False
    if args.show:
        data = json.loads(Path(args.show).read_text())
        saved = data["runs"] if "runs" in data else [data]  # one run: {"suites": [...]}
        runs = [[Suite.from_json(s) for s in run["suites"]] for run in saved]
    else:
        runs = [[] for _ in range(nruns)]
        if not args.guest:
            for n in range(nruns):
                if nruns > 1:
                    log(f"bench: host suite, run {n + 1} of {nruns}")
                runs[n].append(run_host(reps, args.quick, command))
        if args.guest or args.all:
            try:
                for n, suite in enumerate(run_guest(reps, args.quick, command, args.verbose,
                                                    timeout, nruns)):
                    runs[n].append(suite)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                log(f"bench: {exc}")
                failed = True
        apply_goals(runs)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"command": command, "runs": [{"suites": [s.to_json() for s in suites]}
                                              for suites in runs]}, indent=1))
            log(f"bench: results in {args.json}")
    apply_goals(runs)  # the goals of bench/goals.py as they are now
    for n, suites in enumerate(runs, 1):
        if len(runs) > 1:
            print(f"\n{'#' if args.markdown else '=='} run {n} of {len(runs)}")
        (print_markdown if args.markdown else print_text)(suites)
    ok = print_goals(runs)
    return 2 if failed else 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
