"""The test-VM launcher's retry of boots that die before the guest runs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "vm"))

import guest  # noqa: E402


def _fake_boots(monkeypatch: pytest.MonkeyPatch,
                outcomes: list[tuple[int, bool]]) -> list[bool]:
    """Replace one boot by the next of ``outcomes``; returns the ``last``
    flags the launcher passed."""
    lasts: list[bool] = []

    def once(command, args, *, accel, timeout, echo, after, last):  # type: ignore[no-untyped-def]
        lasts.append(last)
        return outcomes[len(lasts) - 1]

    monkeypatch.setattr(guest, "_run_guest_once", once)
    return lasts


def test_a_boot_that_dies_before_init_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lasts = _fake_boots(monkeypatch, [(guest.EXIT_VM_FAILED, False), (0, True)])
    assert guest.run_guest("true", types.SimpleNamespace()) == 0
    assert lasts == [False, False]


def test_it_gives_up_after_the_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    lasts = _fake_boots(monkeypatch, [(guest.EXIT_VM_FAILED, False)] * guest.BOOT_ATTEMPTS)
    assert guest.run_guest("true", types.SimpleNamespace()) == guest.EXIT_VM_FAILED
    assert lasts == [False] * (guest.BOOT_ATTEMPTS - 1) + [True]


@pytest.mark.parametrize("outcome", [(1, True), (guest.EXIT_VM_FAILED, True),
                                     (guest.EXIT_TIMEOUT, False)])
def test_a_guest_that_ran_is_never_booted_again(monkeypatch: pytest.MonkeyPatch,
                                                outcome: tuple[int, bool]) -> None:
    lasts = _fake_boots(monkeypatch, [outcome])
    assert guest.run_guest("false", types.SimpleNamespace()) == outcome[0]
    assert len(lasts) == 1
