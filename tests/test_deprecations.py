"""One name per thing: the spare names still work, warn with a
DeprecationWarning naming the replacement, and are listed in
docs/api/deprecated.rst; the kept names do not warn."""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyvfio import Container, Device, DmaBuffer, Group, IommuFd, IommuType

PAGE = mmap.PAGESIZE  # the fake and the host have the same page size
DOCS = Path(__file__).resolve().parent.parent / "docs" / "api" / "deprecated.rst"


@pytest.fixture(params=["ioas", "container"])
def space(request: pytest.FixtureRequest, fake_system: Any) -> Iterator[Any]:
    """An IOAS with the edu device attached, or a type1 container."""
    b = fake_system.backend
    bdf = "0000:00:02.0"
    if request.param == "ioas":
        with IommuFd(backend=b) as iommufd, Device.open(bdf, backend=b) as dev:
            dev.bind(iommufd)
            ioas = iommufd.ioas()
            dev.attach(ioas)
            yield ioas
    else:
        with Container(backend=b) as container, Group.for_device(bdf, backend=b) as group:
            group.set_container(container)
            container.set_iommu(IommuType.TYPE1v2)
            yield container


def _warns(call: Callable[[], Any], old: str, new: str) -> Any:
    with pytest.warns(DeprecationWarning) as record:
        result = call()
    (warning,) = record
    assert str(warning.message) == f"{old} is deprecated: use {new} (the same thing)"
    assert warning.filename == __file__, "the warning points at the caller's line"
    return result


def test_mapping_unmap_is_close(space: Any) -> None:
    mapping = space.map(mmap.mmap(-1, PAGE), 0x100000)
    kind = type(mapping).__name__
    _warns(mapping.unmap, f"{kind}.unmap()", f"{kind}.close()")
    assert mapping.closed and space.mappings == ()
    space.map(mmap.mmap(-1, PAGE), 0x100000).close()  # the range was unmapped


def test_mapping_size_is_length(space: Any) -> None:
    mapping = space.map(mmap.mmap(-1, 2 * PAGE), 0x100000)
    kind = type(mapping).__name__
    assert _warns(lambda: mapping.size, f"{kind}.size", f"{kind}.length") == mapping.length
    mapping.close()


def test_buffer_size_is_length() -> None:
    with DmaBuffer(PAGE + 1) as buf:
        assert _warns(lambda: buf.size, "DmaBuffer.size", "DmaBuffer.length") == buf.length
        assert buf.length == 2 * PAGE


def test_kept_names_do_not_warn(space: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with DmaBuffer(PAGE) as buf:
            mapping = space.map(buf, 0x100000)
            assert mapping.length == buf.length == len(buf) == PAGE
            mapping.close()


@pytest.mark.parametrize("old, new", [
    ("``mapping.unmap()``", "``mapping.close()``"),
    ("``mapping.size``", ":attr:`mapping.length <pyvfio.IovaMapping.length>`"),
    ("``DmaBuffer.size``", ":attr:`DmaBuffer.length <pyvfio.DmaBuffer.length>`"),
])
def test_every_deprecated_name_is_documented(old: str, new: str) -> None:
    page = DOCS.read_text()
    row = page.index(f"* - {old}")
    end = page.find("\n   * - ", row + 4)
    assert new in page[row:end if end > 0 else len(page)]
