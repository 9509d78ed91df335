"""The fail-nth walk of tests/kernel/test_real_fail_nth.py, run on the host.

The real walk needs the test VM's kernel (fault injection).  Here the same
walk drives the same three sequences on the fake kernel, with a stand-in
for fail-nth that fails the N-th call into the fake's backend with
ENOMEM: the sequences keep up with pyvfio's API, every failure comes out
as an error the walk accepts and leaves no file behind, and the walk
itself fails on a leak, on a run that fails with nothing injected, on
other exception types and at its cap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from toolkit_env import EDU_ID, find

from pyvfio.errors import ioctl_error
from pyvfio.fake import System

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernel"))

import test_real_fail_nth as fail_nth  # noqa: E402

#: The backend calls that fail in turn (close and the region accessors are
#: not on these sequences' failure paths).
CALLS = ("open", "ioctl", "eventfd", "memfd_create", "mmap", "sysfs_read", "sysfs_listdir",
         "sysfs_readlink")


class Countdown:
    """fail-nth in miniature: ``tick()`` is one injectable allocation."""

    def __init__(self) -> None:
        self.nth = 0
        self.hit = False

    def tick(self) -> None:
        if self.nth:
            self.nth -= 1
            if self.nth == 0:
                self.hit = True
                raise OSError(errno.ENOMEM, "injected")


class CountdownShot:
    """The :class:`test_real_fail_nth.Shot` interface over a Countdown."""

    def __init__(self, countdown: Countdown, n: int) -> None:
        self.countdown, self.n, self.armed = countdown, n, False

    def arm(self) -> contextlib.AbstractContextManager[None]:
        self.countdown.nth, self.countdown.hit, self.armed = self.n, False, True
        return contextlib.nullcontext()  # the window runs to finish()

    def finish(self) -> bool | None:
        if not self.armed:
            return None
        self.countdown.nth = 0
        return self.countdown.hit


def _shots(countdown: Countdown) -> Callable[[int], CountdownShot]:
    return lambda n: CountdownShot(countdown, n)


@pytest.fixture
def injected_fake(fake_system: System, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[System, Countdown]]:
    """The fake machine with edu on vfio-pci (``fake_system``: no file may
    stay open), its backend calls ticking a Countdown."""
    system = fake_system
    countdown = Countdown()
    for name in CALLS:
        call = getattr(system.backend, name)

        def failing(*args: object, _call: Callable[..., object] = call, **kw: object) -> object:
            countdown.tick()
            return _call(*args, **kw)

        monkeypatch.setattr(system.backend, name, failing)
    yield system, countdown


@pytest.mark.parametrize("sequence", ["cdev_open_to_ready", "legacy_open_to_ready",
                                      "msi_setup"])
def test_the_sequences_walked_on_the_fake(injected_fake: tuple[System, Countdown],
                                          sequence: str) -> None:
    system, countdown = injected_fake
    run = getattr(fail_nth, sequence)(find(system.backend, EDU_ID), backend=system.backend)
    result = fail_nth.walk(sequence, run, _shots(countdown))
    # the windows leave out opening and closing the device (see Sequence)
    assert result.walked >= 5 and result.clean_at == result.walked + 1
    assert result.unexpected == [] and result.splats == []
    assert sum(result.vfio_errors.values()) > sum(result.os_errors.values())
    assert result.as_dict()["walked"] == result.walked


def _steps(countdown: Countdown, steps: int, *, extra: Callable[[int], None] | None = None
           ) -> fail_nth.Sequence:
    """A sequence of ``steps`` ioctl-like calls; ``extra(left)`` runs after
    the first one with the countdown's remaining count."""

    def run(arm: fail_nth.Arm) -> None:
        arm()
        for i in range(steps):
            try:
                countdown.tick()
            except OSError as exc:
                raise ioctl_error(exc.errno or errno.EIO, f"STEP{i}", "test") from None
            if i == 0 and extra is not None:
                extra(countdown.nth)

    return run


def test_a_leaked_file_fails_the_walk_and_is_closed() -> None:
    countdown = Countdown()
    leaked: list[int] = []

    def leak(left: int) -> None:
        if left == 1:  # the run that fails at the next step
            leaked.append(os.open(os.devnull, os.O_RDONLY))

    with pytest.raises(pytest.fail.Exception, match=r"N=2: injected, IoctlError STEP1 ENOMEM; "
                       r"left behind: fd \d+ -> /dev/null"):
        fail_nth.walk("leak", _steps(countdown, 3, extra=leak), _shots(countdown))
    assert leaked and not fail_nth._is_open(leaked[0])


def test_a_failure_without_injection_fails_the_walk() -> None:
    countdown = Countdown()
    broken: list[bool] = []

    def run(arm: fail_nth.Arm) -> None:
        arm()
        if broken:
            raise ioctl_error(errno.EBUSY, "open", "device")
        countdown.tick()
        if countdown.nth == 1:
            broken.append(True)  # as if the device stayed claimed
        countdown.tick()

    with pytest.raises(pytest.fail.Exception, match="N=3: failed with no failure injected"):
        fail_nth.walk("broken", run, _shots(countdown))


def test_what_the_walk_accepts() -> None:
    countdown = Countdown()

    def run(arm: fail_nth.Arm) -> None:
        arm()
        countdown.tick()  # N=1: an OSError out of the test's own code
        try:
            countdown.tick()  # N=2: Python ran out of memory
        except OSError:
            raise MemoryError() from None
        try:
            countdown.tick()  # N=3: a syscall made by pyvfio (EventFd -> backend.eventfd)
        except OSError:
            from pyvfio.backend.kernel import KernelBackend
            KernelBackend().eventfd(0, -1)
        try:
            countdown.tick()  # N=4: absorbed
        except OSError:
            pass
        countdown.tick()  # N=5: a plain OSError again, as N=1

    result = fail_nth.walk("kinds", run, _shots(countdown))
    assert (result.walked, result.clean_at, result.absorbed) == (5, 6, 1)
    assert [u.split(":")[0] for u in result.unexpected] == ["N=1", "N=2", "N=5"]
    assert "MemoryError" in result.unexpected[1] and "not pyvfio" in result.unexpected[0]
    (key,) = result.os_errors
    assert key.startswith("OSError EINVAL at pyvfio/backend/kernel.py:")
    assert fail_nth._classify(TimeoutError("no errno"))[0] == "unexpected"


def test_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fail_nth, "CAP", 4)
    countdown = Countdown()
    with pytest.raises(pytest.fail.Exception, match="the cap of 4 was reached"):
        fail_nth.walk("cap", _steps(countdown, 10), _shots(countdown))
