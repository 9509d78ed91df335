"""The goals the benchmarks are held to, declared in one place.

A goal is one :class:`Goal` in the list of its area below: the number of the
goal in issue 13 (or "" for a standing goal), what it promises, the
benchmark's result id (``Result.id``: ``host.import``, ``guest.irq_factorial``)
and either one variant of that result with a bound in the result's unit
(``limit=30e6`` for 30 ms when the unit is ns) or a ratio of two of its
variants (``ratio=("objects ...", "C ioctl loop")``) with a bound on the
factor.  ``run.py`` applies each goal to every run's results, so it shows in
the tables' goal column and in the summary of goals over the runs; where a
suite also declares a goal inline (``Result.limits`` or the third item of a
``Result.ratios`` entry) for the same variant or ratio, the goal here wins.

Each area has a list of its own, so that goals added for different areas do
not touch the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    number: str  # the goal's number in issue 13 ("" for a standing goal)
    text: str  # what is promised, for the summary
    result: str  # Result.id
    variant: str | None = None  # a variant of the result, bounded by ``limit`` (its unit)
    ratio: tuple[str, str] | None = None  # (numerator, denominator) variants: factor <= limit
    limit: float = 0.0

    @property
    def where(self) -> str:
        """The suite that measures it: "guest" or "host"."""
        return "guest" if self.result.startswith("guest.") else "host"

    @property
    def row(self) -> str:
        """The row of the result's table the goal is checked on."""
        if self.ratio is not None:
            return f"ratio: {self.ratio[0]} / {self.ratio[1]}"
        assert self.variant is not None
        return self.variant


MS, US = 1e6, 1e3  # in ns

_IOAS_OBJ = "objects: ioas.map(buf, iova).unmap()"
_TYPE1_OBJ = "objects: container.map_dma(buf, iova).unmap()"

# 1. The objects layer's map+unmap.
OBJECTS = [
    Goal("1", "ioas.map + unmap on a no-op kernel <= 1.5 µs", "host.null_ioas",
         _IOAS_OBJ, limit=1.5 * US),
    Goal("1", "ioas.map + unmap <= 20x the two raw ioctls", "host.null_ioas",
         ratio=(_IOAS_OBJ, "raw backend.ioctl"), limit=20),
    Goal("1", "container.map_dma + unmap on a no-op kernel <= 1.5 µs", "host.null_type1",
         _TYPE1_OBJ, limit=1.5 * US),
    Goal("1", "container.map_dma + unmap <= 20x the two raw ioctls", "host.null_type1",
         ratio=(_TYPE1_OBJ, "raw backend.ioctl"), limit=20),
    Goal("1", "IOAS 4 KiB map+unmap <= 3x C", "guest.ioas_4k",
         ratio=(_IOAS_OBJ, "C ioctl loop"), limit=3),
    Goal("1", "IOAS 2 MiB map+unmap <= 1.2x C", "guest.ioas_2m",
         ratio=(_IOAS_OBJ, "C ioctl loop"), limit=1.2),
    Goal("1", "type1 4 KiB map+unmap <= 3x C", "guest.type1_4k",
         ratio=(_TYPE1_OBJ, "C ioctl loop"), limit=3),
    Goal("1", "type1 2 MiB map+unmap <= 1.2x C", "guest.type1_2m",
         ratio=(_TYPE1_OBJ, "C ioctl loop"), limit=1.2),
]

# 2. MMIO accessors against a bare cffi accessor call.
MMIO = [
    Goal("2", "RegionMapping.read32 <= 1.25x a bare cffi call (guest)", "guest.mmio_read32",
         ratio=("pyvfio RegionMapping.read32", "cffi lib.pyvfio_read32"), limit=1.25),
    Goal("2", "RegionMapping.write32 <= 1.25x a bare cffi call (guest)", "guest.mmio_write32",
         ratio=("pyvfio RegionMapping.write32", "cffi lib.pyvfio_write32"), limit=1.25),
]

# 3. Interrupts: edu's factorial-done MSI to a blocking wait, against C read().
INTERRUPTS = [
    Goal("3", "edu MSI to vector.wait() returning <= 2x a C read()", "guest.irq_factorial",
         ratio=("pyvfio vector.wait()", "C blocking read()"), limit=2),
]

# 4. The fake kernel.
FAKE = [
    Goal("4", "fake IOAS 4 KiB map+unmap, device attached, <= 50 µs", "fake.scaling_ioas",
         "objects @1k", limit=50 * US),
    Goal("4", "fake type1 4 KiB map+unmap <= 50 µs", "fake.scaling_type1",
         "objects @1k", limit=50 * US),
    *[Goal("4", f"fake {kind} map+unmap stays O(log n): {how} 100k vs 1k live mappings "
                "<= 2x", f"fake.scaling_{kind}", ratio=(f"{how} @100k", f"{how} @1k"), limit=2)
      for kind, hows in (("ioas", ("raw ioctl", "objects", "raw ioctl no device",
                                   "objects no device")),
                         ("type1", ("raw ioctl", "objects")))
      for how in hows],
]

# 5. Start-up.
START = [
    Goal("5", "import pyvfio <= 30 ms (-X importtime, cumulative)", "host.import",
         "-X importtime cumulative", limit=30 * MS),
    Goal("5", "pyvfio --help <= 150 ms wall", "host.cli", "pyvfio --help", limit=150 * MS),
    Goal("5", "pyvfio status --json <= 150 ms wall (no VFIO here)", "host.cli",
         "pyvfio status --json", limit=150 * MS),
]

GOALS: list[Goal] = [*OBJECTS, *MMIO, *INTERRUPTS, *FAKE, *START]


def apply(result: Any, goals: list[Goal] = GOALS) -> list[Goal]:
    """Set the goals of ``result`` (a ``harness.Result``) from ``goals``;
    returns those whose variants it does not have (not measured)."""
    missing = []
    for g in goals:
        if g.result != result.id:
            continue
        if g.ratio is not None:
            num, den = g.ratio
            if num not in result.samples or den not in result.samples:
                missing.append(g)
                continue
            pairs = [(r[0], r[1]) for r in result.ratios]
            if (num, den) in pairs:
                result.ratios[pairs.index((num, den))] = (num, den, g.limit)
            else:
                result.ratios.append((num, den, g.limit))
        elif g.variant in result.samples:
            names = [x[0] for x in result.limits]
            if g.variant in names:
                result.limits[names.index(g.variant)] = (g.variant, g.limit)
            else:
                result.limits.append((g.variant, g.limit))
        else:
            missing.append(g)
    return missing
