"""Fault injection for the fake kernel, after lib/fault-inject.c.

The kernel's own tests make every allocation of a system call fail in
turn (``/proc/self/task/<tid>/fail-nth``, failslab, fail_page_alloc,
fail_usercopy) and check that the error unwinds everything.  The fake
does the same at the granularity of the kernel's allocations and copies:
each :class:`System <pyvfio.fake.machine.system.System>` has a
:class:`FaultInjector` (``system.fault_inject``), and the fake asks it
before every operation of these kinds (:data:`KINDS`):

``fd_install``
    a new fd for a file (get_unused_fd_flags: open(2), and ioctls that
    return an fd); natural errno EMFILE.
``id_alloc``
    an iommufd object and its ID (_iommufd_object_alloc); ENOMEM.
``pin``
    pinning user pages and charging them (pin_user_pages, incr_user_locked_vm:
    iommufd's pages and type1); ENOMEM.
``domain_map``
    mapping pinned pages into an IOMMU domain (iommu_map: iommufd's
    io_pagetable and type1); ENOMEM.
``copy_from_user`` / ``copy_to_user``
    every copy through :mod:`pyvfio.fake.uaccess`; EFAULT.
``eventfd_get``
    taking a reference to the user's eventfd (eventfd_ctx_fdget: IRQ
    triggers, ioeventfds, the low-power wake eventfd); ENOMEM.

Use::

    fi = system.fault_inject
    fi.fail_nth(3)                  # the 3rd operation from now fails, once
    fi.fail_nth(1, kinds={"pin"})   # the next pin fails
    fi.fail_every({"copy_to_user"}, errno.EFAULT)  # each of them fails
    ...
    fi.fired                        # did the armed failure happen?
    fi.seen                         # operations counted since arming
    fi.clear()

A hook costs one attribute check while nothing is armed::

    fi = self.system.fault_inject
    if fi.armed:
        fi.maybe_fail("id_alloc")   # raises the injected OSError

Code without a System in hand (uaccess, eventfds, the I/O page table)
calls :func:`inject`, guarded by the module flag :data:`ARMED`; the System
is :func:`pyvfio.fake.current.current`, the machine whose backend call is
running.  :mod:`pyvfio.fake.fail_nth` builds the failure walk on it.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Iterable

from .current import current

__all__ = ["KINDS", "NATURAL_ERRNO", "ARMED", "FaultInjector", "InjectedFault", "inject"]

#: Every kind of operation a failure can be injected into.
KINDS: frozenset[str] = frozenset({
    "fd_install", "id_alloc", "pin", "domain_map",
    "copy_from_user", "copy_to_user", "eventfd_get", "alloc",
})

#: The errno each kind fails with when none is given: what the kernel
#: function returns when its allocation (or copy) fails.
NATURAL_ERRNO: dict[str, int] = {
    "fd_install": _errno.EMFILE,  # get_unused_fd_flags
    "id_alloc": _errno.ENOMEM,  # xa_alloc / kzalloc of the object
    "pin": _errno.ENOMEM,  # pin_user_pages / incr_user_locked_vm
    "domain_map": _errno.ENOMEM,  # iommu_map's page-table allocation
    "copy_from_user": _errno.EFAULT,
    "copy_to_user": _errno.EFAULT,
    "eventfd_get": _errno.ENOMEM,  # the kzalloc of the virqfd / trigger context
    "alloc": _errno.ENOMEM,  # kmalloc
}

#: Number of injectors armed in this process: the guard of :func:`inject`
#: for code that has no System in hand (read it as ``fault_inject.ARMED``).
ARMED = 0
_ARMED_LOCK = threading.Lock()


def _disarm_one() -> None:
    """One injector is disarmed (or gone while armed)."""
    global ARMED
    with _ARMED_LOCK:
        ARMED -= 1

_MACHINERY = ("fault_inject", "uaccess", "current")


@dataclass
class InjectedFault:
    """One failure the injector made happen."""

    #: The kind of operation that failed.
    kind: str
    #: Its number among the eligible operations since arming (1-based).
    nth: int
    #: The errno it failed with.
    errno: int
    #: Where it happened: the innermost frames of the fake, as text.
    where: list[str] = field(default_factory=list)

    @property
    def site(self) -> str:
        """The innermost frame that is not the copy or injection machinery."""
        for line in reversed(self.where):
            if not any(f"{name}.py\"" in line for name in _MACHINERY):
                return line.strip().splitlines()[0]
        return self.where[-1].strip().splitlines()[0] if self.where else "?"

    def __str__(self) -> str:
        site = self.site
        return f"{self.kind} #{self.nth} -> {_errno.errorcode.get(self.errno, self.errno)} at {site}"


class FaultInjector:
    """Fault injection for one fake machine (``system.fault_inject``).

    :ivar armed: something is armed; the hooks look at nothing else when
        it is False.
    :ivar seen: eligible operations counted since the last arming.
    :ivar injected: the failures made to happen since the last arming.
    """

    __slots__ = ("armed", "seen", "injected", "_kinds", "_errno", "_nth", "_every",
                 "_unarm", "__weakref__")

    def __init__(self) -> None:
        self.armed = False
        self.seen = 0
        self.injected: list[InjectedFault] = []
        self._kinds: frozenset[str] = KINDS
        self._errno: int | None = None
        self._nth = 0
        self._every = False
        # gives the module flag back if the machine goes away still armed
        self._unarm: weakref.finalize[[], FaultInjector] | None = None

    # -- arming -----------------------------------------------------------------------
    def fail_nth(self, n: int, errno: int | None = None, *,
                 kinds: Iterable[str] | None = None) -> None:
        """The ``n``-th eligible operation from now (1-based) fails once,
        with ``errno`` (default: the kind's :data:`NATURAL_ERRNO`), like
        writing ``n`` to ``/proc/self/task/<tid>/fail-nth``.  ``kinds``
        restricts the eligible operations (default: every kind).  Counting
        goes on after the failure (:attr:`seen`) until :meth:`clear`."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        self._arm(kinds, errno)
        self._nth = n
        self._every = False

    def fail_every(self, kinds: Iterable[str] | str | None = None, errno: int | None = None) -> None:
        """Every eligible operation from now fails (``kinds``: one kind, a
        set of them, or None for all) until :meth:`clear`."""
        if isinstance(kinds, str):
            kinds = {kinds}
        self._arm(kinds, errno)
        self._nth = 0
        self._every = True

    def clear(self) -> None:
        """Disarm; :attr:`seen` and :attr:`injected` keep their values
        until the next arming."""
        if self.armed:
            self.armed = False
            if self._unarm is not None:
                self._unarm()
                self._unarm = None
        self._nth = 0
        self._every = False

    def _arm(self, kinds: Iterable[str] | None, errno: int | None) -> None:
        global ARMED
        chosen = KINDS if kinds is None else frozenset(kinds)
        unknown = chosen - KINDS
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        self._kinds = chosen
        self._errno = errno
        self.seen = 0
        self.injected = []
        if not self.armed:
            self.armed = True
            with _ARMED_LOCK:
                ARMED += 1
            self._unarm = weakref.finalize(self, _disarm_one)

    # -- state ------------------------------------------------------------------------
    @property
    def fired(self) -> bool:
        """An injected failure happened since the last arming."""
        return bool(self.injected)

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of operation counted and failed."""
        return self._kinds

    # -- the hooks --------------------------------------------------------------------
    def should_fail(self, kind: str) -> bool:
        """Count an operation of ``kind``; True when it must fail (the
        kernel's should_fail).  Call it only when :attr:`armed`."""
        if kind not in self._kinds:
            return False
        self.seen += 1
        if self._every:
            return True
        if self._nth and self.seen == self._nth:
            return True
        return False

    def maybe_fail(self, kind: str) -> None:
        """Raise the injected :class:`OSError` when this operation of
        ``kind`` must fail (:meth:`should_fail`)."""
        if not self.should_fail(kind):
            return
        err = self._errno if self._errno is not None else NATURAL_ERRNO[kind]
        import traceback  # only when a failure is injected (it pulls in textwrap)

        where = traceback.format_list(traceback.extract_stack(limit=12)[:-1])
        self.injected.append(InjectedFault(kind, self.seen, err, where))
        raise OSError(err, f"{os.strerror(err)} (injected {kind} failure #{self.seen})")

    def __repr__(self) -> str:
        if not self.armed:
            return f"<FaultInjector disarmed, seen {self.seen}, fired {len(self.injected)}>"
        plan = "every" if self._every else f"nth={self._nth}"
        return f"<FaultInjector {plan} kinds={sorted(self._kinds)} seen {self.seen}>"


def inject(kind: str) -> None:
    """The hook for code with no System in hand: fail this operation of
    ``kind`` if the injector of :func:`~pyvfio.fake.current.current` says
    so.  Guard it with ``if fault_inject.ARMED:``."""
    system = current()
    if system is None:
        return
    fi = system.fault_inject
    if fi.armed:
        fi.maybe_fail(kind)
