"""The user's dirty bitmap (drivers/iommu/iommufd/iova_bitmap.c).

Dirty-tracking reports (``IOMMU_HWPT_GET_DIRTY_BITMAP`` and vfio's
``VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT``) set bits in a bitmap of
``__u64`` words in user memory.  The kernel pins that memory lazily, one
page of the bitmap at a time, when a bit in it is set (iova_bitmap_set);
a page it cannot pin for writing is skipped and its bits are dropped: the
report still succeeds.
"""

from __future__ import annotations

import errno
from typing import Iterable

from ..uaccess import UserPtr

__all__ = ["iova_bitmap_set"]

_PAGE = 4096


def iova_bitmap_set(bitmap: UserPtr, bits: Iterable[int]) -> None:
    """Set bit ``n`` (bit ``n % 64`` of word ``n // 64``) of the user's
    bitmap for each ``n`` in ``bits``; bits are only ever added."""
    words: dict[int, int] = {}
    for bit in bits:
        words[bit >> 6] = words.get(bit >> 6, 0) | 1 << (bit & 63)
    by_page: dict[int, list[int]] = {}
    for word in sorted(words):
        by_page.setdefault((bitmap.address + 8 * word) // _PAGE, []).append(word)
    for page_words in by_page.values():
        try:
            # iova_bitmap_get: pin_user_pages_fast(FOLL_WRITE) of this page
            for word in page_words:
                bitmap.check(8 * word, 8, True)
        except OSError as exc:
            if exc.errno != errno.EFAULT:
                raise
            continue  # iova_bitmap_set: what cannot be pinned is dropped
        for word in page_words:
            bitmap.write_u64(8 * word, bitmap.read_u64(8 * word) | words[word])
