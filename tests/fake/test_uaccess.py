"""The user-memory checks of the fake (pyvfio.fake.uaccess): the answer of
PROCMAP_QUERY (one VMA per system call) and of the text of /proc/self/maps
(kernels without the query) are the same, across VMA boundaries,
permissions and holes, and a forked child asks about its own memory."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any, Iterator

import pytest

from pyvfio.fake import uaccess

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@pytest.fixture
def layout() -> Iterator[int]:
    """Four pages: read-write, read-only, read-write, then a hole (the
    fourth page unmapped): three VMAs and a gap after them."""
    base = _libc.mmap(None, 4 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    assert _libc.mprotect(base + PAGE, PAGE, mmap.PROT_READ) == 0
    assert _libc.munmap(base + 3 * PAGE, PAGE) == 0
    yield int(base)
    _libc.munmap(base, 3 * PAGE)


@pytest.fixture(params=["query", "text"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each check through PROCMAP_QUERY and through the text of the maps."""
    if request.param == "text":
        monkeypatch.setattr(uaccess, "_maps_fd", (os.getpid(), -1))
    else:
        monkeypatch.setattr(uaccess, "_maps_fd", None)
        if uaccess._query_fd() < 0:
            pytest.skip("this kernel has no PROCMAP_QUERY (Linux 6.11)")
    return str(request.param)


def _errno(address: int, length: int, write: bool) -> int:
    try:
        uaccess.check_user_range(address, length, write)
    except OSError as e:
        return int(e.errno or 0)
    return 0


CASES = [
    # (first page, bytes, write, errno)
    (0, PAGE, True, 0),
    (0, 3 * PAGE, False, 0),  # three VMAs, all readable
    (0, 2 * PAGE, True, errno.EFAULT),  # the second page is read-only
    (1, PAGE, False, 0),
    (1, 1, True, errno.EFAULT),
    (2, PAGE, True, 0),
    (2, PAGE + 1, False, errno.EFAULT),  # one byte into the hole
    (3, 8, False, errno.EFAULT),
    (0, 0, True, 0),  # nothing to check
]


@pytest.mark.parametrize("page, length, write, err", CASES)
def test_check_user_range(layout: int, way: str, page: int, length: int, write: bool,
                          err: int) -> None:
    assert _errno(layout + page * PAGE, length, write) == err


def test_both_ways_agree_on_the_whole_address_space_layout(layout: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    probes = [(layout + off, n, w) for off in range(-PAGE, 5 * PAGE, PAGE // 2)
              for n in (1, PAGE, 3 * PAGE) for w in (False, True)]
    probes += [(0, 1, False), (uaccess.TASK_SIZE_MAX - 1, 2, False), (1 << 63, 1, False)]
    monkeypatch.setattr(uaccess, "_maps_fd", None)
    by_query = [_errno(*p) for p in probes]
    monkeypatch.setattr(uaccess, "_maps_fd", (os.getpid(), -1))
    by_text = [_errno(*p) for p in probes]
    assert by_query == by_text
    assert 0 in by_query and errno.EFAULT in by_query


def test_a_forked_child_checks_its_own_memory(layout: int) -> None:
    uaccess.check_user_range(layout, PAGE, True)  # the parent's query file is open
    from test_bad_pointers import in_child  # the fork-and-wait harness

    def child() -> tuple[Any, ...]:
        # unmapped in the child only, and mapped in the child only
        _libc.munmap(layout, PAGE)
        fresh = mmap.mmap(-1, PAGE)
        where = ctypes.addressof(ctypes.c_char.from_buffer(fresh))
        return (_errno(layout, PAGE, False), _errno(where, PAGE, True))

    assert in_child(child, 60.0) == (errno.EFAULT, 0)
    assert _errno(layout, PAGE, True) == 0  # the parent's memory is as it was
