"""What the ``pyvfio`` command shows of pyvfio's logging: ``-v`` (INFO:
binding steps, fallbacks, progress), ``-vv`` (DEBUG: retries, the fake's
refusals, ``PYVFIO_TRACE=log`` trace lines) as lines on stderr; without
``-v``, progress of long operations as one status line when stderr is a
terminal."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from ._progress import LOGGER as PROGRESS
from ._progress import TtyProgressHandler

__all__ = ["configure"]

_FORMAT = "pyvfio: %(levelname)s: %(name)s: %(message)s"


def configure(verbosity: int) -> Callable[[], None]:
    """Set up the ``pyvfio`` loggers for one command run; returns the
    function that undoes it (the command may run many times in a process,
    as in tests)."""
    root = logging.getLogger("pyvfio")
    undo: list[Callable[[], None]] = []
    if verbosity > 0:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
        undo += [lambda: root.removeHandler(handler), lambda: root.setLevel(level)]
    elif _is_tty(sys.stderr):
        tty = TtyProgressHandler(sys.stderr)
        level, propagate = PROGRESS.level, PROGRESS.propagate
        PROGRESS.addHandler(tty)
        PROGRESS.setLevel(logging.INFO)
        PROGRESS.propagate = False
        undo += [lambda: PROGRESS.removeHandler(tty), lambda: PROGRESS.setLevel(level),
                 lambda: setattr(PROGRESS, "propagate", propagate)]

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _is_tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # pragma: no cover - a closed stream
        return False
