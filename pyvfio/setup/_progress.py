"""Progress of long set-up operations (topology capture, binding many
devices), reported as log records of the ``pyvfio.progress`` logger.

A library user sees them with ``logging`` at INFO (or attaches a handler
to that logger); the ``pyvfio`` command shows them as one status line on
stderr when stderr is a terminal (:class:`TtyProgressHandler`), and not at
all otherwise.  Each record carries ``pyvfio_progress = (done, total)``.
"""

from __future__ import annotations

import logging
from typing import IO

__all__ = ["LOGGER", "report", "TtyProgressHandler"]

#: The logger progress records go to.
LOGGER = logging.getLogger("pyvfio.progress")


def report(done: int, total: int, what: str, item: str = "") -> None:
    """Say that ``done`` of ``total`` steps of ``what`` are finished
    (``item``: the step just finished, e.g. a PCI address).  Costs one level
    check when nobody listens."""
    if LOGGER.isEnabledFor(logging.INFO):
        LOGGER.info("%s: %d/%d%s", what, done, total, f" {item}" if item else "",
                    extra={"pyvfio_progress": (done, total)})


class TtyProgressHandler(logging.Handler):
    """Draws progress records as one line rewritten in place on a terminal
    (``\\r`` and erase-to-end-of-line), erased when the operation is done.

    Thread safety: :class:`logging.Handler` serialises :meth:`emit`.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Rewrite the status line with ``record``'s message; erase it at the
        last step."""
        done, total = getattr(record, "pyvfio_progress", (0, 0))
        try:
            if total and done >= total:
                self.stream.write("\r\x1b[K")
            else:
                self.stream.write("\r\x1b[K" + record.getMessage()[:100])
            self.stream.flush()
        except Exception:  # pragma: no cover - a closed terminal
            self.handleError(record)
