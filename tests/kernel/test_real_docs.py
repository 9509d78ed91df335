"""The documentation's programs that take ``--real`` run on the real kernel
as they do on the fake (the same output lines where the output is the
machine's, not the fake's)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Iterator

import guestpci
import pytest

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"
REAL = sorted(p.name for p in SNIPPETS.glob("*.py")
              if p.name != "edu.py" and "--real" in p.read_text())

pytestmark = pytest.mark.kernel


@pytest.fixture
def edu_back() -> Iterator[None]:
    """The snippets bind edu to vfio-pci themselves; give it back after."""
    yield
    guestpci.unbind_vfio(guestpci.find_one(*guestpci.EDU))


@pytest.mark.parametrize("name", REAL)
def test_snippet_runs_on_the_real_kernel(name: str, edu_back: None,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(SNIPPETS))
    monkeypatch.setattr(sys, "argv", [str(SNIPPETS / name), "--real"])
    runpy.run_path(str(SNIPPETS / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{name} printed nothing"
    with capsys.disabled():
        print(f"\n{name} --real:\n{out}")


def test_the_list_is_not_empty() -> None:
    assert {"driver_edu.py", "toolkit_tour.py", "tutorial_iommufd.py"} <= set(REAL)
