"""Event queues: the page-fault queue and vEVENTQ.

After drivers/iommu/iommufd/eventq.c of Linux 7.3: IOMMU_FAULT_QUEUE_ALLOC
and the fd it returns (:class:`FaultFile`: fault groups are read, responses
written), and IOMMU_VEVENTQ_ALLOC (refused before anything is made: no
vIOMMU can exist on this IOMMU).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..._uapi import ffi, lib
from ..core import FakeBackend, FakeFile, errno_error
from ._private import OBJ_VIOMMU, Fault, reserved_nonzero

if TYPE_CHECKING:
    from .main import IommufdFile, Ucmd

__all__ = ["FaultFile", "iommufd_fault_alloc", "iommufd_veventq_alloc"]

#: VEVENTQ_MAX_DEPTH
_VEVENTQ_MAX_DEPTH = 1 << 19


class FaultFile(FakeFile):
    """The fd of an IOMMU_FAULT_QUEUE_ALLOC fault object (eventq.c)."""

    path = "anon_inode:[iommufd-pgfault]"

    def __init__(self, kernel: FakeBackend, ctx: IommufdFile, fault: Fault) -> None:
        super().__init__(kernel)
        self.ctx = ctx
        self.fault = fault
        self._released = False

    def read(self, size: int) -> bytes:
        """iommufd_fault_fops_read."""
        fault_size = int(ffi.sizeof("struct iommu_hwpt_pgfault"))
        if size % fault_size:
            # iommufd_fault_fops_read: ESPIPE unless whole records are read
            raise errno_error(errno.ESPIPE, "read size is not a multiple of the record size")
        out = b""
        fault = self.fault
        while fault.deliver:
            group = fault.deliver[0]
            if len(out) >= size or len(group) * fault_size > size - len(out):
                if not out:
                    # iommufd_fault_fops_read: EINVAL when the first group does not fit
                    raise errno_error(errno.EINVAL, "the buffer cannot hold a fault group")
                break
            fault.deliver.pop(0)
            cookie = fault.next_cookie
            fault.next_cookie += 1
            fault.response[cookie] = group
            for record in group:
                rec = ffi.new("struct iommu_hwpt_pgfault *")
                ffi.memmove(rec, record, fault_size)
                rec.cookie = cookie
                out += bytes(ffi.buffer(rec))
        return out

    def write(self, data: bytes) -> int:
        """iommufd_fault_fops_write."""
        response_size = int(ffi.sizeof("struct iommu_hwpt_page_response"))
        if len(data) % response_size:
            # iommufd_fault_fops_write: ESPIPE unless whole responses are written
            raise errno_error(errno.ESPIPE, "write size is not a multiple of the response size")
        done = 0
        while done < len(data):
            resp = ffi.new("struct iommu_hwpt_page_response *")
            ffi.memmove(resp, data[done:done + response_size], response_size)
            if resp.code not in (lib.IOMMUFD_PAGE_RESP_SUCCESS, lib.IOMMUFD_PAGE_RESP_INVALID):
                # iommufd_fault_fops_write: EINVAL for an unknown response code
                if not done:
                    raise errno_error(errno.EINVAL, f"bad response code {resp.code}")
                break
            if self.fault.response.pop(int(resp.cookie), None) is None:
                # iommufd_fault_fops_write: EINVAL for an unknown cookie
                if not done:
                    raise errno_error(errno.EINVAL, f"unknown cookie {resp.cookie}")
                break
            done += response_size
        return done

    def pread(self, size: int, offset: int) -> bytes:
        """ESPIPE: the file is opened with nonseekable_open, so positional
        reads are refused."""
        raise errno_error(errno.ESPIPE)

    def pwrite(self, data: bytes, offset: int) -> int:
        """ESPIPE, like :meth:`pread`."""
        raise errno_error(errno.ESPIPE)

    def release(self) -> None:
        """iommufd_eventq_fops_release."""
        if self._released:
            return
        self._released = True
        self.fault.users -= 1
        self.ctx.ctx_put()


def iommufd_fault_alloc(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_fault_alloc."""
    cmd = u.cmd
    if cmd.flags:
        # iommufd_fault_alloc: EOPNOTSUPP for any flag
        raise errno_error(errno.EOPNOTSUPP, "flags must be 0")
    fault = Fault()
    ictx.object_alloc(fault)
    file = FaultFile(ictx.kernel, ictx, fault)
    fault.users += 1
    ictx.ctx_get()
    try:
        fd = ictx.kernel.install(file)
    except BaseException:
        # iommufd_eventq_init: fput of the new file when no fd can be had
        # (its release drops the object's and the context's references),
        # then iommufd_fault_alloc's out_abort:
        # iommufd_object_abort_and_destroy
        file.release()
        ictx.object_abort_and_destroy(fault)
        raise
    cmd.out_fault_id = fault.id
    cmd.out_fault_fd = fd
    try:
        u.respond()
    except BaseException:
        ictx.kernel.close(fd)
        ictx.object_abort_and_destroy(fault)
        raise
    ictx.object_finalize(fault)
    return 0


def iommufd_veventq_alloc(ictx: IommufdFile, u: Ucmd) -> int:
    """iommufd_veventq_alloc."""
    cmd = u.cmd
    if cmd.flags or reserved_nonzero(cmd) or cmd.type == lib.IOMMU_VEVENTQ_TYPE_DEFAULT:
        # iommufd_veventq_alloc: EOPNOTSUPP for flags, __reserved or the default type
        raise errno_error(errno.EOPNOTSUPP, "flags, __reserved or type not supported")
    if not cmd.veventq_depth or cmd.veventq_depth > _VEVENTQ_MAX_DEPTH:
        # iommufd_veventq_alloc: EINVAL for a bad depth
        raise errno_error(errno.EINVAL, f"bad depth {cmd.veventq_depth}")
    viommu = ictx.get_object(int(cmd.viommu_id), OBJ_VIOMMU)
    # the fake reports no vIOMMU events (the SMMUv3's event queue is not
    # simulated), so it makes no vEVENTQ: EOPNOTSUPP where the kernel would
    # make one
    raise errno_error(errno.EOPNOTSUPP, f"vIOMMU {viommu.id}: vEVENTQs are not simulated")
