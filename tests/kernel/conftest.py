"""Fixtures for the real-kernel tests (run inside the test VM as root).

The guest's devices are found by vendor:device through tests/vm/guestpci.py,
never by hard-coded addresses.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "vm"))

import guestpci  # noqa: E402


@pytest.fixture
def edu() -> Iterator[str]:
    """The edu device, bound to vfio-pci for the test and unbound after."""
    bdf = guestpci.find_one(*guestpci.EDU)
    guestpci.bind_vfio(bdf)
    yield bdf
    guestpci.unbind_vfio(bdf)
