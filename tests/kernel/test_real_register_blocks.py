"""Block register accessors on the real edu (Linux 7.3 guest): the
compiled loop of a mapped BAR and the pread/pwrite loop of the region give
what the fake's edu gives (test_register_blocks.edu_blocks).  edu answers
a split 8-byte access below 0x80 with all-ones and keeps only whole 8-byte
stores at 0x80, so equal read-backs prove the exact widths."""

from __future__ import annotations

import pytest
from test_register_blocks import edu_blocks
from toolkit_env import open_cdev

from pyvfio.backend.kernel import KernelBackend

pytestmark = pytest.mark.kernel

KB = KernelBackend()


def test_register_blocks_on_edu(edu: str) -> None:
    with open_cdev(KB, edu) as (dev, _ioas):
        dev.config.enable(memory=True)
        bar0 = dev.regions["BAR0"]
        mapping = bar0.mmap()
        assert mapping.direct_path  # the compiled accessors
        for io in (mapping, bar0):  # mmap, then pread/pwrite
            edu_blocks(io)
        mapping.close()
