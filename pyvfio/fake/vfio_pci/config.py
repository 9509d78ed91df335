"""Config space virtualisation of the fake vfio-pci driver
(drivers/vfio/pci/vfio_pci_config.c).

The user sees ``vdev.vconfig``, a copy of the device's config space in
which vfio hides capabilities it does not expose and virtualises fields it
must control (BARs, INTx disable, the MSI enable, power state, FLR).  Every
access is split into aligned pieces inside one capability and handed to
that capability's :class:`PermBits`: the bytes of :attr:`PermBits.virt`
come from vconfig, the others from the device; :attr:`PermBits.write`
says which bits the user may change.  :data:`CAP_PERMS` and
:data:`ECAP_PERMS` are the kernel's ``cap_perms[]``/``ecap_perms[]``;
MSI's table is per device (its layout depends on the capability's flags).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..core import errno_error
from ..machine.pci import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_PM,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_CFG_SPACE_SIZE,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MEMORY,
    PCI_EXP_DEVCAP,
    PCI_EXP_DEVCAP_FLR,
    PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL2,
    PCI_EXP_DEVCTL_BCR_FLR,
    PCI_EXT_CAP_ID_ERR,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_MSI_ADDRESS_HI,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_DATA_32,
    PCI_MSI_DATA_64,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_MASKBIT,
    PCI_MSI_FLAGS_QMASK,
    PCI_MSI_FLAGS_QSIZE,
    PCI_MSI_MASK_32,
    PCI_MSI_MASK_64,
    PCI_MSI_PENDING_32,
    PCI_MSI_PENDING_64,
    PCI_PM_CTRL,
    PCI_PM_CTRL_PME_ENABLE,
    PCI_PM_CTRL_PME_STATUS,
    PCI_PM_CTRL_STATE_MASK,
    PCI_PM_PMC,
    PCI_ROM_ADDRESS,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_STD_HEADER_SIZEOF,
    IRQ_MSI,
)
from .intrs import vfio_pci_intx_mask, vfio_pci_intx_unmask
from .priv import U32

if TYPE_CHECKING:
    from .core import VfioPciCore

__all__ = [
    "PermBits",
    "ReadFn",
    "WriteFn",
    "CAP_PERMS",
    "ECAP_PERMS",
    "UNASSIGNED_PERMS",
    "DIRECT_RO_PERMS",
    "PCI_CAP_ID_BASIC",
    "PCI_CAP_ID_INVALID",
    "vfio_config_init",
    "vfio_pci_config_rw",
    "vfio_pci_memory_enabled",
]

#: The capability ID of the standard header in the config map.
PCI_CAP_ID_BASIC = 0x00
#: The capability ID of bytes outside any capability.
PCI_CAP_ID_INVALID = 0xFF
#: The ID marking a hidden first extended capability (kept as a header).
_CAP_ID_HIDDEN_ECAP = 0xFE

#: pci_cap_length: 0 hides the capability from the user's chain; 0xFF
#: means "computed from the capability".
_CAP_LENGTH = {
    0x01: 8,  # PM
    0x02: 8,  # AGP
    0x03: 8,  # VPD
    0x04: 0,  # slot ID
    0x05: 0xFF,  # MSI
    0x06: 0,  # CompactPCI hot swap
    0x07: 0xFF,  # PCI-X
    0x08: 0,  # HyperTransport
    0x09: 0xFF,  # vendor specific
    0x0A: 0,  # debug port
    0x0B: 0,  # CompactPCI CRC
    0x0C: 0,  # SHPC
    0x0D: 0,  # subsystem vendor ID (bridges)
    0x0E: 0,  # AGP 8x
    0x0F: 0,  # secure device
    0x10: 0xFF,  # PCI Express
    0x11: 12,  # MSI-X
    0x12: 0xFF,  # SATA
    0x13: 6,  # advanced features
}
#: pci_ext_cap_length: the extended capabilities vfio exposes.
_ECAP_LENGTH = {
    0x01: 0x2C,  # AER (up to PCI_ERR_ROOT_COMMAND)
    0x02: 0xFF,  # virtual channel
    0x03: 12,  # device serial number
    0x04: 16,  # power budgeting
    0x0B: 0xFF,  # vendor specific
    0x0D: 0xFF,  # ACS
    0x0E: 8,  # ARI
    0x0F: 8,  # ATS
    0x10: 0x40,  # SR-IOV
    0x13: 16,  # PRI
    0x15: 0xFF,  # resizable BAR
    0x18: 8,  # LTR
    0x19: 0xFF,  # secondary PCIe
    0x1B: 8,  # PASID
    0x23: 0xFF,  # DVSEC
}

#: ``readfn(vdev, pos, count, perm, offset) -> value``
ReadFn = Callable[["VfioPciCore", int, int, "PermBits", int], int]
#: ``writefn(vdev, pos, count, perm, offset, value)``
WriteFn = Callable[["VfioPciCore", int, int, "PermBits", int, int], None]


@dataclass
class PermBits:
    """The permissions of one capability (``struct perm_bits``).

    :param virt: per byte, the bits read from and written to vconfig.
    :param write: per byte, the bits the user may write.
    :param readfn: the read handler (always set).
    :param writefn: the write handler; None drops writes.
    """

    readfn: ReadFn
    writefn: WriteFn | None = None
    virt: bytearray = field(default_factory=bytearray)
    write: bytearray = field(default_factory=bytearray)

    def setbits(self, offset: int, width: int, virt: int, write: int) -> None:
        """p_setb/p_setw/p_setd: the bits of a ``width``-byte field."""
        for i in range(width):
            self.virt[offset + i] = (virt >> (8 * i)) & 0xFF
            self.write[offset + i] = (write >> (8 * i)) & 0xFF

    def bits(self, table: bytearray, offset: int, count: int) -> int:
        """``count`` bytes of ``virt`` or ``write`` at ``offset`` (zero past
        the end)."""
        return int.from_bytes(table[offset:offset + count].ljust(count, b"\0"), "little")


# -- raw and virtual accesses --------------------------------------------------------------
def vfio_user_config_read(vdev: VfioPciCore, pos: int, count: int) -> int:
    """vfio_user_config_read: the device's config space."""
    return int.from_bytes(vdev.model.config_read(pos, count), "little")


def vfio_user_config_write(vdev: VfioPciCore, pos: int, count: int, value: int) -> None:
    """vfio_user_config_write."""
    vdev.model.config_write(pos, (value & ((1 << (8 * count)) - 1)).to_bytes(count, "little"))


def _vget(vdev: VfioPciCore, pos: int, count: int) -> int:
    return int.from_bytes(vdev.vconfig[pos:pos + count], "little")


def _vset(vdev: VfioPciCore, pos: int, count: int, value: int) -> None:
    vdev.vconfig[pos:pos + count] = (value & ((1 << (8 * count)) - 1)).to_bytes(count, "little")


# -- the read and write handlers ---------------------------------------------------------------
def vfio_default_config_read(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                             offset: int) -> int:
    """vfio_default_config_read: virtualised bits from vconfig, the rest
    from the device."""
    val = _vget(vdev, pos, count)
    virt = perm.bits(perm.virt, offset, count)
    if virt != (1 << (8 * count)) - 1:
        phys = vfio_user_config_read(vdev, pos, count)
        val = (phys & ~virt) | (val & virt)
    return val


def vfio_default_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                              offset: int, val: int) -> None:
    """vfio_default_config_write: writable virtualised bits to vconfig,
    writable others to the device; the rest is dropped."""
    write = perm.bits(perm.write, offset, count)
    if not write:
        return
    virt = perm.bits(perm.virt, offset, count)
    if write & virt:
        v = _vget(vdev, pos, count)
        _vset(vdev, pos, count, (v & ~(write & virt)) | (val & write & virt))
    if write & ~virt:
        phys = vfio_user_config_read(vdev, pos, count)
        phys = (phys & ~(write & ~virt)) | (val & write & ~virt)
        vfio_user_config_write(vdev, pos, count, phys)


def vfio_direct_config_read(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                            offset: int) -> int:
    """vfio_direct_config_read: raw, with the capability header from vconfig."""
    raw = bytearray(vfio_user_config_read(vdev, pos, count).to_bytes(count, "little"))
    if pos >= PCI_CFG_SPACE_SIZE:
        for i in range(count):
            if offset + i < 4:
                raw[i] = vdev.vconfig[pos + i]
    elif pos >= PCI_STD_HEADER_SIZEOF:
        if offset == 0 and count > 1:
            raw[0:2] = vdev.vconfig[pos:pos + 2]
        elif offset == 1:
            raw[0] = vdev.vconfig[pos]
    return int.from_bytes(raw, "little")


def vfio_raw_config_read(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                         offset: int) -> int:
    """vfio_raw_config_read: no virtualisation at all."""
    return vfio_user_config_read(vdev, pos, count)


def vfio_raw_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> None:
    """vfio_raw_config_write: no virtualisation at all."""
    vfio_user_config_write(vdev, pos, count, val)


def _is_bar(offset: int) -> bool:
    """is_bar: BAR0-5 or the ROM BAR."""
    return (PCI_BASE_ADDRESS_0 <= offset < PCI_BASE_ADDRESS_0 + 24
            or PCI_ROM_ADDRESS <= offset < PCI_ROM_ADDRESS + 4)


def vfio_basic_config_read(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                           offset: int) -> int:
    """vfio_basic_config_read: BAR reads see the sizes (vfio_bar_fixup)."""
    if _is_bar(offset):
        vfio_bar_fixup(vdev)
    return vfio_default_config_read(vdev, pos, count, perm, offset)


def vfio_basic_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                            offset: int, val: int) -> None:
    """vfio_basic_config_write: the command register's decode bits, INTx
    disable emulated through masking, BAR writes dirty the sizing."""
    new_cmd = 0
    if offset == PCI_COMMAND:
        new_cmd = val & 0xFFFF
        phys_cmd = vdev.model.config_word(PCI_COMMAND)
        virt_cmd = _vget(vdev, PCI_COMMAND, 2)
        # vfio_basic_config_write: a backdoor reset cleared the decode bits:
        # restore the BARs before they are enabled again
        if ((new_cmd & PCI_COMMAND_MEMORY and virt_cmd & PCI_COMMAND_MEMORY and not phys_cmd & PCI_COMMAND_MEMORY)
                or (new_cmd & PCI_COMMAND_IO and virt_cmd & PCI_COMMAND_IO and not phys_cmd & PCI_COMMAND_IO)):
            vfio_bar_restore(vdev)
    vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if offset == PCI_COMMAND:
        mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO
        _vset(vdev, PCI_COMMAND, 2, (_vget(vdev, PCI_COMMAND, 2) & ~mask) | (new_cmd & mask))
    if PCI_COMMAND <= offset <= PCI_COMMAND + 1:
        # emulate INTx disable
        virt_intx_disable = bool(_vget(vdev, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)
        if virt_intx_disable and not vdev.virq_disabled:
            vdev.virq_disabled = True
            vfio_pci_intx_mask(vdev)
        elif not virt_intx_disable and vdev.virq_disabled:
            vdev.virq_disabled = False
            vfio_pci_intx_unmask(vdev)
    if _is_bar(offset):
        vdev.bardirty = True


def vfio_pm_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                         offset: int, val: int) -> None:
    """vfio_pm_config_write: the kernel changes the power state (D0 and
    D3hot; the others are not reached through vfio)."""
    vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if offset == PCI_PM_CTRL:
        state = val & PCI_PM_CTRL_STATE_MASK
        if state in (0, 3):
            vdev.set_power_state(state)


def vfio_msi_config_read(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                         offset: int) -> int:
    """vfio_msi_config_read: report msi_qmax as the capable count."""
    if offset <= PCI_MSI_FLAGS < offset + count + 1:
        fpos = vfio_find_cap_start(vdev, pos) + PCI_MSI_FLAGS
        flags = (_vget(vdev, fpos, 2) & ~PCI_MSI_FLAGS_QMASK) | (vdev.msi_qmax << 1)
        _vset(vdev, fpos, 2, flags)
    return vfio_default_config_read(vdev, pos, count, perm, offset)


def vfio_msi_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> None:
    """vfio_msi_config_write: MSI is enabled through the ioctl; the user's
    queue size is capped at msi_qmax."""
    vfio_default_config_write(vdev, pos, count, perm, offset, val)
    if offset <= PCI_MSI_FLAGS < offset + count + 1:
        fpos = vfio_find_cap_start(vdev, pos) + PCI_MSI_FLAGS
        flags = _vget(vdev, fpos, 2)
        if vdev.irq_type != IRQ_MSI:
            flags &= ~PCI_MSI_FLAGS_ENABLE
        if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > vdev.msi_qmax:
            flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | (vdev.msi_qmax << 4)
        _vset(vdev, fpos, 2, flags)
        vfio_user_config_write(vdev, fpos, 2, flags)


def vfio_exp_config_write(vdev: VfioPciCore, pos: int, count: int, perm: PermBits,
                          offset: int, val: int) -> None:
    """vfio_exp_config_write: FLR through the kernel's reset."""
    vfio_default_config_write(vdev, pos, count, perm, offset, val)
    start = pos - offset
    cpos = start + PCI_EXP_DEVCTL
    ctrl = _vget(vdev, cpos, 2)
    if ctrl & PCI_EXP_DEVCTL_BCR_FLR:
        # vfio_exp_config_write: the FLR bit always reads as zero
        _vset(vdev, cpos, 2, ctrl & ~PCI_EXP_DEVCTL_BCR_FLR)
        if vfio_user_config_read(vdev, start + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR:
            vdev.try_reset_function()


# -- the permission tables (vfio_pci_init_perm_bits) --------------------------------------
def _alloc_perm_bits(size: int, readfn: ReadFn = vfio_default_config_read,
                     writefn: WriteFn | None = vfio_default_config_write) -> PermBits:
    """alloc_perm_bits: dword-rounded tables, all readable, nothing
    writable or virtualised."""
    size = (size + 3) & ~3
    return PermBits(readfn, writefn, bytearray(size), bytearray(size))


def init_pci_cap_basic_perm() -> PermBits:
    """init_pci_cap_basic_perm."""
    p = _alloc_perm_bits(PCI_STD_HEADER_SIZEOF, vfio_basic_config_read, vfio_basic_config_write)
    p.setbits(0x00, 2, 0xFFFF, 0)  # vendor ID: virtualised
    p.setbits(0x02, 2, 0xFFFF, 0)  # device ID
    p.setbits(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE, 0xFFFF)
    p.setbits(PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0)
    p.setbits(0x0C, 1, 0, 0xFF)  # cache line size
    p.setbits(0x0D, 1, 0, 0xFF)  # latency timer
    p.setbits(0x0F, 1, 0, 0xFF)  # BIST
    for i in range(6):
        p.setbits(PCI_BASE_ADDRESS_0 + 4 * i, 4, U32, U32)
    p.setbits(PCI_ROM_ADDRESS, 4, U32, U32)
    p.setbits(PCI_CAPABILITY_LIST, 1, 0xFF, 0)
    p.setbits(PCI_INTERRUPT_LINE, 1, 0xFF, 0xFF)
    p.setbits(PCI_INTERRUPT_PIN, 1, 0xFF, 0)
    return p


def init_pci_cap_pm_perm() -> PermBits:
    """init_pci_cap_pm_perm: the state bits are the kernel's; PME is not
    the user's."""
    p = _alloc_perm_bits(8, writefn=vfio_pm_config_write)
    p.setbits(1, 1, 0xFF, 0)  # next pointer
    p.setbits(PCI_PM_PMC, 2, 0xF800, 0)  # PME_Support virtualised
    p.setbits(PCI_PM_CTRL, 4, PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS,
              ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS | PCI_PM_CTRL_STATE_MASK) & U32)
    return p


def init_pci_cap_exp_perm() -> PermBits:
    """init_pci_cap_exp_perm (the largest size, PCI_CAP_EXP_ENDPOINT_SIZEOF_V2)."""
    p = _alloc_perm_bits(0x3C, writefn=vfio_exp_config_write)
    p.setbits(1, 1, 0xFF, 0)
    # FLR, MPS and MRRS are virtualised; phantom functions may not be written
    p.setbits(PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_BCR_FLR | 0x00E0 | 0x7000, ~0x0200 & 0xFFFF)
    p.setbits(PCI_EXP_DEVCTL2, 2, 0, ~0x0020 & 0xFFFF)  # ARI forwarding is the host's
    return p


def init_pci_ext_cap_err_perm() -> PermBits:
    """init_pci_ext_cap_err_perm."""
    p = _alloc_perm_bits(0x2C)
    p.setbits(0, 4, U32, 0)  # header (next pointer) virtualised
    p.setbits(4, 4, 0, U32)  # uncorrectable status (RW1C)
    p.setbits(8, 4, 0, U32)  # uncorrectable mask
    p.setbits(12, 4, 0, U32)  # uncorrectable severity
    p.setbits(16, 4, 0, U32)  # correctable status
    p.setbits(20, 4, 0, U32)  # correctable mask
    p.setbits(24, 4, 0, 0x00000140)  # ECRC generation/check enable
    return p


def init_pci_cap_msi_perm(length: int, flags: int) -> PermBits:
    """init_pci_cap_msi_perm: per device, laid out by the MSI flags."""
    p = _alloc_perm_bits(length, vfio_msi_config_read, vfio_msi_config_write)
    p.setbits(1, 1, 0xFF, 0)
    p.setbits(PCI_MSI_FLAGS, 1, 0xFF, 0xFF)
    p.setbits(PCI_MSI_ADDRESS_LO, 4, U32, U32)
    if flags & PCI_MSI_FLAGS_64BIT:
        p.setbits(PCI_MSI_ADDRESS_HI, 4, U32, U32)
        p.setbits(PCI_MSI_DATA_64, 2, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            p.setbits(PCI_MSI_MASK_64, 4, 0, U32)
            p.setbits(PCI_MSI_PENDING_64, 4, 0, 0)
    else:
        p.setbits(PCI_MSI_DATA_32, 2, 0xFFFF, 0xFFFF)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            p.setbits(PCI_MSI_MASK_32, 4, 0, U32)
            p.setbits(PCI_MSI_PENDING_32, 4, 0, 0)
    return p


#: Capabilities without a table of their own are read directly and
#: ignore writes (cap_perms' and ecap_perms' default entry).
DIRECT_RO_PERMS = PermBits(vfio_direct_config_read)
#: Bytes outside any capability are passed through both ways
#: (unassigned_perms: some devices hide registers there).
UNASSIGNED_PERMS = PermBits(vfio_raw_config_read, vfio_raw_config_write)
#: cap_perms (vfio_pci_init_perm_bits); MSI's is per device.
CAP_PERMS: dict[int, PermBits] = {
    PCI_CAP_ID_BASIC: init_pci_cap_basic_perm(),
    PCI_CAP_ID_PM: init_pci_cap_pm_perm(),
    PCI_CAP_ID_VNDR: PermBits(vfio_direct_config_read, vfio_raw_config_write),
    PCI_CAP_ID_EXP: init_pci_cap_exp_perm(),
}
#: ecap_perms: AER, and raw writes to vendor-specific and DVSEC.
ECAP_PERMS: dict[int, PermBits] = {
    PCI_EXT_CAP_ID_ERR: init_pci_ext_cap_err_perm(),
    0x0B: PermBits(vfio_direct_config_read, vfio_raw_config_write),  # vendor specific
    0x23: PermBits(vfio_direct_config_read, vfio_raw_config_write),  # DVSEC
}


# -- vfio_config_init -------------------------------------------------------------------------
def vfio_config_init(vdev: VfioPciCore) -> None:
    """vfio_config_init + vfio_cap_init + vfio_ecap_init."""
    model = vdev.model
    size = model.config_size
    vdev.vconfig = bytearray(model.config)
    vdev.config_map = bytearray([PCI_CAP_ID_BASIC] * PCI_STD_HEADER_SIZEOF
                                + [PCI_CAP_ID_INVALID] * (size - PCI_STD_HEADER_SIZEOF))
    vdev.msi_perm = None
    vdev.bardirty = True
    if model.interrupt_pin == 0:
        vdev.vconfig[PCI_INTERRUPT_PIN] = 0
    vfio_cap_init(vdev)
    if size > PCI_CFG_SPACE_SIZE:
        vfio_ecap_init(vdev)


def _mark(vdev: VfioPciCore, pos: int, length: int, cap_id: int) -> None:
    """memset of the config map over a capability."""
    end = min(pos + length, len(vdev.config_map))
    vdev.config_map[pos:end] = bytes([cap_id]) * max(0, end - pos)


def vfio_cap_len(vdev: VfioPciCore, cap: int, pos: int) -> int:
    """vfio_cap_len for the variable-length capabilities."""
    model = vdev.model
    if cap == PCI_CAP_ID_MSI:
        flags = model.config_word(pos + PCI_MSI_FLAGS)
        length = PCI_MSI_MASK_32
        if flags & PCI_MSI_FLAGS_64BIT:
            length += 4
        if flags & PCI_MSI_FLAGS_MASKBIT:
            length += 10
        return length
    if cap == PCI_CAP_ID_VNDR:
        return model.config[pos + 2]
    if cap == PCI_CAP_ID_EXP:
        flags = model.config_word(pos + 2)
        return 0x3C if flags & 0xF >= 2 else 20
    return 0


def vfio_cap_init(vdev: VfioPciCore) -> None:
    """vfio_cap_init: map every capability, hide the ones vfio does not
    expose by unlinking them from the virtual chain."""
    model = vdev.model
    vc = vdev.vconfig
    if not model.config_word(PCI_STATUS) & PCI_STATUS_CAP_LIST:
        return
    prev = PCI_CAPABILITY_LIST
    pos = model.config[PCI_CAPABILITY_LIST] & ~3
    caps = 0
    loops = 0
    while pos and loops < 48:
        loops += 1
        cap = model.config[pos]
        nxt = model.config[pos + 1] & ~3
        length = _CAP_LENGTH.get(cap, 0)
        if length == 0xFF:
            length = vfio_cap_len(vdev, cap, pos)
        if not length:
            vc[prev] = nxt  # hide: the previous pointer skips it
            pos = nxt
            continue
        _mark(vdev, pos, length, cap)
        if cap == PCI_CAP_ID_MSI:
            flags = model.config_word(pos + PCI_MSI_FLAGS)
            vdev.msi_perm = init_pci_cap_msi_perm(length, flags)
            vdev.msi_qmax = (flags & PCI_MSI_FLAGS_QMASK) >> 1
        elif cap == PCI_CAP_ID_PM:
            # vfio_update_pm_vconfig_bytes: no PME for the user
            pmc = int.from_bytes(vc[pos + PCI_PM_PMC:pos + PCI_PM_PMC + 2], "little") & ~0xF800
            vc[pos + PCI_PM_PMC:pos + PCI_PM_PMC + 2] = pmc.to_bytes(2, "little")
            ctrl = int.from_bytes(vc[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2], "little")
            ctrl &= ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS)
            vc[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2] = ctrl.to_bytes(2, "little")
        caps += 1
        prev = pos + 1
        pos = nxt
    if not caps:
        # no capability left: the list is empty
        status = int.from_bytes(vc[PCI_STATUS:PCI_STATUS + 2], "little") & ~PCI_STATUS_CAP_LIST
        vc[PCI_STATUS:PCI_STATUS + 2] = status.to_bytes(2, "little")
        vc[PCI_CAPABILITY_LIST] = 0


def vfio_ecap_init(vdev: VfioPciCore) -> None:
    """vfio_ecap_init: expose the known extended capabilities."""
    model = vdev.model
    vc = vdev.vconfig
    epos = PCI_CFG_SPACE_SIZE
    prev: int | None = None
    exposed = 0
    loops = 0
    while epos and loops < 480:
        loops += 1
        header = model.config_dword(epos)
        if header in (0, U32):
            break
        ecap = header & 0xFFFF
        nxt = (header >> 20) & 0xFFC
        length = _ECAP_LENGTH.get(ecap, 0)
        if length == 0xFF:
            length = 0x10
        if not length:
            if prev is not None:
                ph = int.from_bytes(vc[prev:prev + 4], "little")
                ph = (ph & 0xFFFFF) | (nxt << 20)
                vc[prev:prev + 4] = ph.to_bytes(4, "little")
            else:
                # the first capability cannot move: it becomes an empty
                # header pointing at the next one
                vc[epos:epos + 4] = (nxt << 20).to_bytes(4, "little")
                _mark(vdev, epos, 4, _CAP_ID_HIDDEN_ECAP)
                prev = epos
            epos = nxt
            continue
        _mark(vdev, epos, length, ecap)
        exposed += 1
        prev = epos
        epos = nxt
    if not exposed and prev is None:
        vc[PCI_CFG_SPACE_SIZE:PCI_CFG_SPACE_SIZE + 4] = b"\0\0\0\0"


# -- vfio_pci_config_rw -----------------------------------------------------------------------
def vfio_find_cap_start(vdev: VfioPciCore, pos: int) -> int:
    """vfio_find_cap_start: the first byte of the capability at ``pos``."""
    cmap = vdev.config_map
    cap = cmap[pos]
    if cap == PCI_CAP_ID_BASIC:
        return 0
    base = PCI_CFG_SPACE_SIZE if pos >= PCI_CFG_SPACE_SIZE else PCI_STD_HEADER_SIZEOF
    while pos - 1 >= base and cmap[pos - 1] == cap:
        pos -= 1
    return pos


def _perm_of(vdev: VfioPciCore, pos: int) -> tuple[PermBits, int]:
    """vfio_config_do_rw: the permissions of the byte at ``pos`` and where
    its capability starts."""
    cap = vdev.config_map[pos]
    if cap == PCI_CAP_ID_INVALID:
        return UNASSIGNED_PERMS, pos
    if pos >= PCI_CFG_SPACE_SIZE:
        # a hidden first capability or one without a table: direct, read-only
        return ECAP_PERMS.get(cap, DIRECT_RO_PERMS), vfio_find_cap_start(vdev, pos)
    perm = CAP_PERMS.get(cap, DIRECT_RO_PERMS)
    if cap == PCI_CAP_ID_MSI and vdev.msi_perm is not None:
        perm = vdev.msi_perm
    return perm, vfio_find_cap_start(vdev, pos)


def vfio_config_do_rw(vdev: VfioPciCore, pos: int, count: int, val: int | None) -> int:
    """vfio_config_do_rw: one aligned access through the capability's
    handlers; returns the value read (0 for a write)."""
    perm, start = _perm_of(vdev, pos)
    offset = pos - start
    if val is None:
        return perm.readfn(vdev, pos, count, perm, offset)
    if perm.writefn is not None:
        perm.writefn(vdev, pos, count, perm, offset, val)
    return 0


def vfio_pci_config_rw(vdev: VfioPciCore, pos: int, data: bytes | None, count: int) -> bytes | int:
    """vfio_pci_config_rw: aligned chunks, each within one capability."""
    size = vdev.model.config_size
    if pos < 0 or pos >= size or pos + count > size:
        # vfio_pci_config_rw: EFAULT outside the config space
        raise errno_error(errno.EFAULT, f"config access at {pos:#x}+{count}")
    out = bytearray()
    done = 0
    while done < count:
        p = pos + done
        # vfio_pci_cap_remaining_dword
        cap = vdev.config_map[p]
        i = 1
        while (p + i) % 4 and p + i < size and vdev.config_map[p + i] == cap:
            i += 1
        n = min(count - done, i)
        if n >= 4 and p % 4 == 0:
            n = 4
        elif n >= 2 and p % 2 == 0:
            n = 2
        else:
            n = 1
        if data is None:
            out += vfio_config_do_rw(vdev, p, n, None).to_bytes(n, "little")
        else:
            vfio_config_do_rw(vdev, p, n, int.from_bytes(data[done:done + n], "little"))
        done += n
    return bytes(out) if data is None else done


# -- BARs -----------------------------------------------------------------------------------------
def vfio_bar_restore(vdev: VfioPciCore) -> None:
    """vfio_bar_restore: put the host's BAR addresses back."""
    if vdev.saved is None:
        return
    for i in range(6):
        reg = PCI_BASE_ADDRESS_0 + 4 * i
        vdev.model.config[reg:reg + 4] = vdev.saved.config[reg:reg + 4]


def vfio_bar_fixup(vdev: VfioPciCore) -> None:
    """vfio_bar_fixup: the user's BAR values reflect sizes and flags."""
    if not vdev.bardirty:
        return
    model = vdev.model
    i = 0
    while i < 6:
        reg = PCI_BASE_ADDRESS_0 + 4 * i
        bar = model.bars.get(i)
        if bar is None:
            _vset(vdev, reg, 4, 0)  # unimplemented
            i += 1
            continue
        mask = ~(bar.size - 1)
        _vset(vdev, reg, 4, (_vget(vdev, reg, 4) & mask & U32) | bar.flag_bits)
        if bar.is_64bit:
            _vset(vdev, reg + 4, 4, _vget(vdev, reg + 4, 4) & (mask >> 32) & U32)
            i += 1
        i += 1
    _vset(vdev, PCI_ROM_ADDRESS, 4, 0)  # no option ROM
    vdev.bardirty = False


def vfio_pci_memory_enabled(vdev: VfioPciCore) -> bool:
    """__vfio_pci_memory_enabled: the user's memory enable, in D0-D2."""
    # PCI_COMMAND_MEMORY is a bit of the register's low byte
    return vdev.model.power_state < 3 and bool(vdev.vconfig[PCI_COMMAND] & PCI_COMMAND_MEMORY)
