"""Interrupts of the fake vfio-pci driver (drivers/vfio/pci/vfio_pci_intrs.c):
VFIO_DEVICE_SET_IRQS and what it sets up -- INTx with masking, MSI and
MSI-X vectors, the ERR and REQ triggers -- each signalling a user's
eventfd.

The actions are chosen through :data:`SET_IRQS_HANDLERS`, indexed by
``(index, action)`` as vfio_pci_set_irqs_ioctl's switch chooses them.
Interrupts are delivered synchronously: a model's ``raise_irq`` writes the
user's eventfd before the call that caused it returns.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..._uapi import lib
from ...backend.base import IoctlArg
from ..core import errno_error
from .. import fault_inject
from ..machine.pci import (
    IRQ_ERR,
    IRQ_INTX,
    IRQ_MSI,
    IRQ_MSIX,
    IRQ_REQ,
    PCI_INTERRUPT_PIN,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_DATA_32,
    PCI_MSI_DATA_64,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_QMASK,
    PCI_MSI_FLAGS_QSIZE,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
)
from ..uaccess import UserPtr
from .pci import pci_check_and_set_intx_mask, pci_intx
from .priv import IRQ_NONE, U32, VFIO_PCI_NUM_IRQS, offsetofend

if TYPE_CHECKING:
    from .core import VfioPciCore

__all__ = [
    "Eventfd",
    "IntxCtx",
    "SetIrqsHandler",
    "SET_IRQS_HANDLERS",
    "vfio_pci_get_irq_count",
    "vfio_pci_ioctl_set_irqs",
    "vfio_pci_set_irqs_ioctl",
    "vfio_msihandler",
    "vfio_intx_handler",
    "vfio_send_intx_eventfd",
    "vfio_pci_intx_mask",
    "vfio_pci_intx_unmask",
]


class Eventfd:
    """A reference to the user's eventfd (``struct eventfd_ctx``): a dup of
    the fd, so that the user closing theirs does not end it."""

    def __init__(self, fd: int) -> None:
        if fault_inject.ARMED:
            # the allocation that goes with taking the eventfd (the trigger
            # name, the virqfd) failing
            fault_inject.inject("eventfd_get")
        # eventfd_ctx_fdget: EBADF for a closed fd, EINVAL when not an eventfd
        try:
            st = os.fstat(fd)
        except OSError:
            raise errno_error(errno.EBADF, f"fd {fd} is not open") from None
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target != "anon_inode:[eventfd]" or stat.S_ISREG(st.st_mode):
            raise errno_error(errno.EINVAL, f"fd {fd} is not an eventfd")
        self.fd = os.dup(fd)
        self.closed = False

    def signal(self) -> None:
        """eventfd_signal: add one to the counter."""
        if self.closed:
            return
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:  # pragma: no cover - counter saturated
            pass

    def readable(self) -> bool:
        """The counter is not zero."""
        if self.closed:
            return False
        ready, _, _ = select.select([self.fd], [], [], 0)
        return bool(ready)

    def consume(self) -> bool:
        """Read the counter if it is non-zero (a virqfd's wakeup)."""
        if not self.readable():
            return False
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def put(self) -> None:
        """eventfd_ctx_put."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


@dataclass
class IntxCtx:
    """The INTx context (``struct vfio_pci_irq_ctx`` of INTx).

    :param trigger: the eventfd signalled on an interrupt.
    :param masked: INTx is masked (automasked on delivery).
    :param unmask_fd: the virqfd that unmasks when signalled.
    """

    trigger: Eventfd | None = None
    masked: bool = False
    unmask_fd: Eventfd | None = None


# -- delivery (the model's IrqSink) ------------------------------------------------------------
def vfio_msihandler(vdev: VfioPciCore, index: int, vector: int) -> None:
    """vfio_msihandler: an MSI/MSI-X message signals the vector's eventfd."""
    if index != vdev.irq_type:
        return
    trigger = vdev.msi_triggers.get(vector)
    if trigger is not None:
        trigger.signal()


def vfio_intx_handler(vdev: VfioPciCore, level: bool) -> None:
    """vfio_intx_handler: on assertion, mask the line and signal."""
    if not level or vdev.irq_type != IRQ_INTX:
        return
    if not vdev.intx_ctx.masked and pci_check_and_set_intx_mask(vdev.model, True):
        vdev.intx_ctx.masked = True
        vfio_send_intx_eventfd(vdev)


def vfio_send_intx_eventfd(vdev: VfioPciCore) -> None:
    """vfio_send_intx_eventfd."""
    if vdev.irq_type == IRQ_INTX and not vdev.virq_disabled and vdev.intx_ctx.trigger is not None:
        vdev.intx_ctx.trigger.signal()


# -- INTx masking --------------------------------------------------------------------------------
def vfio_pci_intx_mask(vdev: VfioPciCore) -> bool:
    """vfio_pci_intx_mask; returns whether this call masked it."""
    if vdev.irq_type != IRQ_INTX:
        if vdev.pci_2_3:
            pci_intx(vdev.model, False)
        return False
    if vdev.intx_ctx.masked:
        return False
    pci_intx(vdev.model, False)
    vdev.intx_ctx.masked = True
    return True


def vfio_pci_intx_unmask_handler(vdev: VfioPciCore) -> bool:
    """vfio_pci_intx_unmask_handler; True when the interrupt must be
    re-sent (still pending)."""
    if vdev.irq_type != IRQ_INTX:
        if vdev.pci_2_3:
            pci_intx(vdev.model, True)
        return False
    resend = False
    if vdev.intx_ctx.masked and not vdev.virq_disabled:
        resend = not pci_check_and_set_intx_mask(vdev.model, False)
        vdev.intx_ctx.masked = resend
    return resend


def vfio_pci_intx_unmask(vdev: VfioPciCore) -> None:
    """vfio_pci_intx_unmask."""
    if vfio_pci_intx_unmask_handler(vdev):
        vfio_send_intx_eventfd(vdev)


def _fd_at(data: bytes, i: int) -> int:
    return int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True)


# -- VFIO_IRQ_SET_ACTION_* handlers ---------------------------------------------------------------
def vfio_pci_set_intx_mask(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                           data: bytes) -> int:
    """vfio_pci_set_intx_mask."""
    if vdev.irq_type != IRQ_INTX or start != 0 or count != 1:
        raise errno_error(errno.EINVAL, "INTx is not enabled or start/count is not 0/1")
    if flags & lib.VFIO_IRQ_SET_DATA_NONE:
        vfio_pci_intx_mask(vdev)
    elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
        if data[0]:
            vfio_pci_intx_mask(vdev)
    elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
        # vfio_pci_set_intx_mask: masking through an eventfd is not implemented
        raise errno_error(errno.ENOTTY, "INTx mask through an eventfd")
    return 0


def vfio_pci_set_intx_unmask(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                             data: bytes) -> int:
    """vfio_pci_set_intx_unmask."""
    if vdev.irq_type != IRQ_INTX or start != 0 or count != 1:
        raise errno_error(errno.EINVAL, "INTx is not enabled or start/count is not 0/1")
    if flags & lib.VFIO_IRQ_SET_DATA_NONE:
        vfio_pci_intx_unmask(vdev)
    elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
        if data[0]:
            vfio_pci_intx_unmask(vdev)
    elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
        fd = _fd_at(data, 0)
        if vdev.intx_ctx.unmask_fd is not None:
            vdev.intx_ctx.unmask_fd.put()
            vdev.intx_ctx.unmask_fd = None
        if fd >= 0:
            # vfio_virqfd_enable: the eventfd unmasks when signalled
            vdev.intx_ctx.unmask_fd = Eventfd(fd)
    return 0


def vfio_intx_enable(vdev: VfioPciCore, trigger: Eventfd | None) -> None:
    """vfio_intx_enable."""
    if vdev.irq_type != IRQ_NONE:
        raise errno_error(errno.EINVAL, "another interrupt type is enabled")
    if not vdev.model.config[PCI_INTERRUPT_PIN]:
        raise errno_error(errno.ENODEV, "the device has no INTx pin")
    vdev.intx_ctx = IntxCtx(trigger=trigger, masked=vdev.virq_disabled)
    vdev.irq_type = IRQ_INTX
    if vdev.pci_2_3:
        pci_intx(vdev.model, not vdev.intx_ctx.masked)
    # an interrupt already asserted fires as soon as the handler is set up
    if not vdev.intx_ctx.masked and vdev.model.intx_asserted:
        vfio_intx_handler(vdev, True)


def vfio_intx_disable(vdev: VfioPciCore) -> None:
    """vfio_intx_disable."""
    if vdev.intx_ctx.unmask_fd is not None:
        vdev.intx_ctx.unmask_fd.put()
    if vdev.intx_ctx.trigger is not None:
        vdev.intx_ctx.trigger.put()
    vdev.intx_ctx = IntxCtx()
    vdev.irq_type = IRQ_NONE


def vfio_pci_set_intx_trigger(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                              data: bytes) -> int:
    """vfio_pci_set_intx_trigger."""
    is_intx = vdev.irq_type == IRQ_INTX
    if is_intx and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
        vfio_intx_disable(vdev)
        return 0
    if not (is_intx or vdev.irq_type == IRQ_NONE) or start != 0 or count != 1:
        raise errno_error(errno.EINVAL, "INTx trigger: bad state, start or count")
    if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
        fd = _fd_at(data, 0)
        trigger = Eventfd(fd) if fd >= 0 else None
        try:
            if is_intx:
                # vfio_intx_set_signal: swap the eventfd
                if vdev.intx_ctx.trigger is not None:
                    vdev.intx_ctx.trigger.put()
                vdev.intx_ctx.trigger = trigger
            else:
                vfio_intx_enable(vdev, trigger)
        except OSError:
            if trigger is not None:
                trigger.put()
            raise
        return 0
    if not is_intx:
        raise errno_error(errno.EINVAL, "INTx is not enabled")
    if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[0]):
        vfio_send_intx_eventfd(vdev)  # loopback
    return 0


def vfio_msi_enable(vdev: VfioPciCore, nvec: int, msix: bool) -> None:
    """vfio_msi_enable: pci_alloc_irq_vectors on the device."""
    if vdev.irq_type != IRQ_NONE:
        raise errno_error(errno.EINVAL, "another interrupt type is enabled")
    if nvec < 1:
        raise errno_error(errno.ERANGE, "no vectors requested")
    model = vdev.model
    if msix:
        assert model.msix is not None
        pos = model.msix.offset + PCI_MSIX_FLAGS
        ctrl = model.config_word(pos) | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL
        model.config_write(pos, ctrl.to_bytes(2, "little"))
        for vector in range(nvec):
            _msix_program(vdev, vector)
        model.config_write(pos, (ctrl & ~PCI_MSIX_FLAGS_MASKALL).to_bytes(2, "little"))
    else:
        assert model.msi is not None
        msi = model.msi
        order = (nvec - 1).bit_length()
        data_pos = msi.offset + (PCI_MSI_DATA_64 if msi.is64 else PCI_MSI_DATA_32)
        model.config_write(msi.offset + PCI_MSI_ADDRESS_LO, (0xFEE00000).to_bytes(4, "little"))
        model.config_write(data_pos, (0x4020).to_bytes(2, "little"))
        flags = (model.config_word(msi.control) & ~PCI_MSI_FLAGS_QSIZE) | (order << 4) | PCI_MSI_FLAGS_ENABLE
        model.config_write(msi.control, flags.to_bytes(2, "little"))
        vdev.msi_qmax = order
    # pci_intx_for_msi: INTx is disabled while MSI/MSI-X is on
    pci_intx(model, False)
    vdev.msi_vectors = set(range(nvec))
    vdev.irq_type = IRQ_MSIX if msix else IRQ_MSI


def _msix_program(vdev: VfioPciCore, vector: int) -> None:
    """The host writes the message address/data of a vector (masked)."""
    msix = vdev.model.msix
    assert msix is not None
    entry = bytearray(16)
    entry[0:4] = (0xFEE00000).to_bytes(4, "little")
    entry[8:12] = (0x4040 + vector).to_bytes(4, "little")
    entry[12] = 1  # masked until an interrupt handler is set up
    msix.table[vector * 16:vector * 16 + 16] = entry


def vfio_msi_disable(vdev: VfioPciCore, msix: bool) -> None:
    """vfio_msi_disable."""
    for vector in sorted(vdev.msi_triggers):
        vfio_msi_set_vector_signal(vdev, vector, -1, msix)
    model = vdev.model
    if msix and model.msix is not None:
        pos = model.msix.offset + PCI_MSIX_FLAGS
        ctrl = model.config_word(pos) & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        model.config_write(pos, ctrl.to_bytes(2, "little"))
        for vector in range(model.msix.vectors):
            model.msix.set_vector_masked(vector, True)
    elif model.msi is not None:
        flags = model.config_word(model.msi.control) & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        model.config_write(model.msi.control, flags.to_bytes(2, "little"))
    pci_intx(model, True)
    vdev.msi_vectors = set()
    vdev.irq_type = IRQ_NONE


def vfio_msi_set_vector_signal(vdev: VfioPciCore, vector: int, fd: int, msix: bool) -> None:
    """vfio_msi_set_vector_signal."""
    model = vdev.model
    old = vdev.msi_triggers.pop(vector, None)
    if old is not None:
        # free_irq: the vector is masked again
        if msix and model.msix is not None:
            model.msix.set_vector_masked(vector, True)
        old.put()
    if fd < 0:
        return
    if vector not in vdev.msi_vectors:
        if not msix:
            # pci_irq_vector: EINVAL beyond the vectors MSI was enabled with
            raise errno_error(errno.EINVAL, f"MSI vector {vector} was not allocated")
        # vfio_msi_alloc_irq: MSI-X vectors are allocated on demand
        _msix_program(vdev, vector)
        vdev.msi_vectors.add(vector)
    if fault_inject.ARMED:
        # vfio_irq_ctx_alloc (and the kasprintf of the IRQ's name) failing
        fault_inject.inject("alloc")
    trigger = Eventfd(fd)
    vdev.msi_triggers[vector] = trigger
    if msix and model.msix is not None:
        # request_irq unmasks the vector (a pending message is delivered)
        ctrl = int.from_bytes(model.msix.table[vector * 16 + 12:vector * 16 + 16], "little")
        model.bar_write(model.msix.table_bar, model.msix.table_offset + vector * 16 + 12, 4, ctrl & ~1)


def vfio_msi_set_block(vdev: VfioPciCore, start: int, count: int, fds: list[int] | None,
                       msix: bool) -> None:
    """vfio_msi_set_block: all or nothing."""
    j = start
    try:
        for i in range(count):
            vfio_msi_set_vector_signal(vdev, j, fds[i] if fds is not None else -1, msix)
            j += 1
    except OSError:
        for k in range(start, j):
            vfio_msi_set_vector_signal(vdev, k, -1, msix)
        raise


def vfio_pci_set_msi_trigger(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                             data: bytes) -> int:
    """vfio_pci_set_msi_trigger."""
    msix = index == IRQ_MSIX
    if vdev.irq_type == index and not count and flags & lib.VFIO_IRQ_SET_DATA_NONE:
        vfio_msi_disable(vdev, msix)
        return 0
    if not (vdev.irq_type == index or vdev.irq_type == IRQ_NONE):
        raise errno_error(errno.EINVAL, "another interrupt type is enabled")
    if flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
        fds = [_fd_at(data, i) for i in range(count)]
        if vdev.irq_type == index:
            vfio_msi_set_block(vdev, start, count, fds, msix)
            return 0
        vfio_msi_enable(vdev, start + count, msix)
        try:
            vfio_msi_set_block(vdev, start, count, fds, msix)
        except OSError:
            vfio_msi_disable(vdev, msix)
            raise
        return 0
    if vdev.irq_type != index:
        raise errno_error(errno.EINVAL, "the interrupt type is not enabled")
    for i in range(start, start + count):
        trigger = vdev.msi_triggers.get(i)
        if trigger is None:
            continue
        if flags & lib.VFIO_IRQ_SET_DATA_NONE or (flags & lib.VFIO_IRQ_SET_DATA_BOOL and data[i - start]):
            trigger.signal()  # loopback
    return 0


def vfio_pci_set_ctx_trigger_single(slot: list[Eventfd | None], count: int, flags: int,
                                    data: bytes) -> int:
    """vfio_pci_set_ctx_trigger_single."""
    if flags & lib.VFIO_IRQ_SET_DATA_NONE:
        if slot[0] is not None:
            if count:
                slot[0].signal()
            else:
                slot[0].put()
                slot[0] = None
            return 0
    elif flags & lib.VFIO_IRQ_SET_DATA_BOOL:
        if not count:
            raise errno_error(errno.EINVAL, "count 0 with DATA_BOOL")
        if data[0] and slot[0] is not None:
            slot[0].signal()
        return 0
    elif flags & lib.VFIO_IRQ_SET_DATA_EVENTFD:
        if not count:
            raise errno_error(errno.EINVAL, "count 0 with DATA_EVENTFD")
        fd = _fd_at(data, 0)
        if fd == -1:
            if slot[0] is not None:
                slot[0].put()
            slot[0] = None
        elif fd >= 0:
            new = Eventfd(fd)
            if slot[0] is not None:
                slot[0].put()
            slot[0] = new
        return 0
    raise errno_error(errno.EINVAL, "no trigger set")


def vfio_pci_set_err_trigger(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                             data: bytes) -> int:
    """vfio_pci_set_err_trigger."""
    if start != 0 or count > 1:
        raise errno_error(errno.EINVAL, "ERR: start must be 0 and count at most 1")
    slot = [vdev.err_trigger]
    try:
        return vfio_pci_set_ctx_trigger_single(slot, count, flags, data)
    finally:
        vdev.err_trigger = slot[0]


def vfio_pci_set_req_trigger(vdev: VfioPciCore, index: int, start: int, count: int, flags: int,
                             data: bytes) -> int:
    """vfio_pci_set_req_trigger."""
    if start != 0 or count > 1:
        raise errno_error(errno.EINVAL, "REQ: start must be 0 and count at most 1")
    slot = [vdev.req_trigger]
    try:
        return vfio_pci_set_ctx_trigger_single(slot, count, flags, data)
    finally:
        vdev.req_trigger = slot[0]


#: The signature of an action: ``(vdev, index, start, count, flags, data)``.
SetIrqsHandler = Callable[["VfioPciCore", int, int, int, int, bytes], int]

#: vfio_pci_set_irqs_ioctl's switch: the handler of each ``(index,
#: action)``; masking MSI/MSI-X is not offered.  ERR is offered for every
#: device (Linux 7.3; older kernels only for PCIe).
SET_IRQS_HANDLERS: dict[tuple[int, int], SetIrqsHandler] = {
    (IRQ_INTX, lib.VFIO_IRQ_SET_ACTION_MASK): vfio_pci_set_intx_mask,
    (IRQ_INTX, lib.VFIO_IRQ_SET_ACTION_UNMASK): vfio_pci_set_intx_unmask,
    (IRQ_INTX, lib.VFIO_IRQ_SET_ACTION_TRIGGER): vfio_pci_set_intx_trigger,
    (IRQ_MSI, lib.VFIO_IRQ_SET_ACTION_TRIGGER): vfio_pci_set_msi_trigger,
    (IRQ_MSIX, lib.VFIO_IRQ_SET_ACTION_TRIGGER): vfio_pci_set_msi_trigger,
    (IRQ_ERR, lib.VFIO_IRQ_SET_ACTION_TRIGGER): vfio_pci_set_err_trigger,
    (IRQ_REQ, lib.VFIO_IRQ_SET_ACTION_TRIGGER): vfio_pci_set_req_trigger,
}


def vfio_pci_set_irqs_ioctl(vdev: VfioPciCore, flags: int, index: int, start: int, count: int,
                            data: bytes) -> int:
    """vfio_pci_set_irqs_ioctl: run the handler of ``(index, action)``."""
    func = SET_IRQS_HANDLERS.get((index, flags & lib.VFIO_IRQ_SET_ACTION_TYPE_MASK))
    if func is None:
        # vfio_pci_set_irqs_ioctl: ENOTTY for unsupported index/action pairs
        raise errno_error(errno.ENOTTY, f"action {flags & lib.VFIO_IRQ_SET_ACTION_TYPE_MASK:#x} "
                                        f"on IRQ index {index}")
    return func(vdev, index, start, count, flags, data)


# -- the ioctl (vfio_pci_core.c + vfio_main.c) ----------------------------------------------------
def vfio_pci_get_irq_count(vdev: VfioPciCore, index: int) -> int:
    """vfio_pci_get_irq_count."""
    model = vdev.model
    if index == IRQ_INTX:
        return 1 if model.config[PCI_INTERRUPT_PIN] else 0
    if index == IRQ_MSI:
        if model.msi is None:
            return 0
        flags = model.config_word(model.msi.offset + PCI_MSI_FLAGS)
        return 1 << ((flags & PCI_MSI_FLAGS_QMASK) >> 1)
    if index == IRQ_MSIX:
        return model.msix.vectors if model.msix is not None else 0
    if index in (IRQ_ERR, IRQ_REQ):
        # Linux 7.3 offers ERR for every device (older kernels: PCIe only);
        # measured on QEMU's edu, a conventional PCI function.
        return 1
    return 0


def vfio_pci_ioctl_set_irqs(vdev: VfioPciCore, arg: IoctlArg) -> int:
    """vfio_pci_ioctl_set_irqs + vfio_set_irqs_validate_and_prepare."""
    uptr = UserPtr(arg)
    ctype = "struct vfio_irq_set"
    minsz = offsetofend(ctype, "count")
    hdr = uptr.read_struct(ctype, 0, minsz)
    argsz, flags = int(hdr.argsz), int(hdr.flags)
    index, start, count = int(hdr.index), int(hdr.start), int(hdr.count)
    num_irqs = vfio_pci_get_irq_count(vdev, index) if index < VFIO_PCI_NUM_IRQS else 0
    data_mask = lib.VFIO_IRQ_SET_DATA_TYPE_MASK
    action_mask = lib.VFIO_IRQ_SET_ACTION_TYPE_MASK
    # vfio_set_irqs_validate_and_prepare: argsz, index, count, flags
    if (argsz < minsz or index >= VFIO_PCI_NUM_IRQS or count >= U32 - start
            or flags & ~(data_mask | action_mask)):
        raise errno_error(errno.EINVAL, "argsz, index, count or flags invalid")
    if start >= num_irqs or start + count > num_irqs:
        raise errno_error(errno.EINVAL, f"start {start} count {count} beyond {num_irqs} interrupts")
    data_type = flags & data_mask
    if data_type == lib.VFIO_IRQ_SET_DATA_NONE:
        size = 0
    elif data_type == lib.VFIO_IRQ_SET_DATA_BOOL:
        size = 1
    elif data_type == lib.VFIO_IRQ_SET_DATA_EVENTFD:
        size = 4
    else:
        raise errno_error(errno.EINVAL, "exactly one DATA_ type is required")
    data = b""
    if size:
        if argsz - minsz < count * size:
            raise errno_error(errno.EINVAL, "argsz does not cover the data")
        # vfio_pci_ioctl_set_irqs: memdup_user of the data after the header
        data = (uptr + minsz).read(0, count * size)
    return vfio_pci_set_irqs_ioctl(vdev, flags, index, start, count, data)
