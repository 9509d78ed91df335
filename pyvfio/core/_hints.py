"""What to do after a failed map: diagnoses made on the failure path only.

The kernel answers many different mistakes with the same EINVAL; once an
ioctl has failed, the object that issued it looks at its arguments and at
the kernel's state to say which one it was and what to do instead.
Nothing here runs while calls succeed.
"""

from __future__ import annotations

from typing import Any

from .._uapi import lib

_PAGE_ALIGNED = ("map page-aligned memory made of whole pages, such as a pyvfio.DmaBuffer or "
                 "an mmap.mmap (bytes, a bytearray or an array are not page-aligned)")


def ioas_map_einval(ioas: Any, cmd: Any) -> str | None:
    """Why IOMMU_IOAS_MAP (``cmd``, a ``struct iommu_ioas_map *``) on
    ``ioas`` failed with EINVAL, or ``None`` when the arguments look right.

    The kernel's checks: both access flags missing (iommufd_ioas_map), a
    length, IOVA or buffer page offset not aligned to the IOAS's IOVA
    alignment -- the largest IOMMU page size of the devices attached
    (iopt_alloc_area_pages, iopt_check_iova, iopt_insert_area) -- and a
    fixed IOVA over a reserved range (iopt_check_iova)."""
    flags = int(cmd.flags)
    if not flags & (lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE):
        return "the mapping is neither readable nor writeable: allow the device one of them"
    ranges, align = ioas._ranges()
    address, length, iova = int(cmd.user_va), int(cmd.length), int(cmd.iova)
    fixed = bool(flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA)
    wrong = []
    if address % align:
        wrong.append(f"the buffer's address {address:#x} is {address % align:#x} bytes past a "
                     f"{align:#x} boundary")
    if length % align:
        wrong.append(f"the length {length:#x} is not a multiple of {align:#x}")
    if wrong:
        return (f"{' and '.join(wrong)}; this IOAS maps whole {align:#x}-byte pages only (its "
                f"IOVA alignment, the IOMMU page size of its devices): {_PAGE_ALIGNED}")
    if fixed and iova % align:
        return (f"the IOVA {iova:#x} is not a multiple of {align:#x}, the IOVA alignment of "
                "this IOAS (the IOMMU page size of its devices): pick an aligned IOVA, or "
                "iova=None to let the kernel choose one")
    last = iova + length - 1
    if fixed and not any(r.start <= iova and last <= r.last for r in ranges):
        usable = ", ".join(f"[{r.start:#x}, {r.last:#x}]" for r in ranges) or "none"
        return (f"[{iova:#x}, {last:#x}] is not inside one usable IOVA range (it covers a "
                f"reserved range of an attached device; usable: {usable}): pick an IOVA from "
                "ioas.iova_ranges(), or iova=None to let the kernel choose one")
    return None
