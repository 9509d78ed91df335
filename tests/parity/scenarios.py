"""Parity scenarios: written once against the public API and the raw uAPI,
run on the fake kernel and on the real one; their results must be equal.

A scenario takes an :class:`Env` and returns a dict of observations:
return values, errno names, IOVA ranges, the IOVAs the kernel picked.
Nothing machine-specific (PCI addresses, group numbers, fd numbers) goes
into the results, so the fake's "default" topology and the QEMU guest
compare directly.
"""

from __future__ import annotations

import errno
import gc
import mmap
import time
from typing import Any, Callable

import pyvfio
from pyvfio import Container, Device, Group, IommuFd, IommuType, ffi, lib
from pyvfio.backend import Backend

EDU = (0x1234, 0x11E8)
NVME = (0x1B36, 0x0010)
E1000 = (0x8086, 0x100E)
U64_MAX = (1 << 64) - 1

Result = dict[str, Any]


class Env:
    """What a scenario may use: a backend and device lookup/binding that
    work the same on the real /sys and the fake's."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._restore: list[tuple[str, str | None]] = []

    def find(self, ids: tuple[int, int]) -> list[str]:
        out = []
        for bdf in self.backend.sysfs_listdir("/sys/bus/pci/devices"):
            base = f"/sys/bus/pci/devices/{bdf}"
            if (int(self.backend.sysfs_read(f"{base}/vendor"), 16),
                    int(self.backend.sysfs_read(f"{base}/device"), 16)) == ids:
                out.append(bdf)
        return sorted(out)

    def bind(self, bdf: str, driver: str | None) -> None:
        """Move ``bdf`` to ``driver`` (None: driver-less); undone by restore()."""
        b = self.backend
        current = pyvfio.core.sysfs.device_driver(bdf, b)
        self._restore.append((bdf, current))
        b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", driver or "\n")
        if current is not None:
            b.sysfs_write(f"/sys/bus/pci/drivers/{current}/unbind", bdf)
        if driver is not None:
            b.sysfs_write("/sys/bus/pci/drivers_probe", bdf)

    def restore(self) -> None:
        # Objects in reference cycles may still hold a device file: unbinding
        # vfio-pci would wait for them in the kernel.
        gc.collect()
        for bdf, driver in reversed(self._restore):
            try:
                self.bind(bdf, driver)
            except OSError:
                pass
        self._restore.clear()

    def buffer(self, size: int) -> AlignedBuffer:
        """``size`` bytes of anonymous memory aligned to 2 MiB, so that the
        IOVAs the kernel picks (which follow the address's alignment) are
        the same on every run."""
        return AlignedBuffer(size)


class AlignedBuffer:
    """Anonymous memory at a 2 MiB-aligned address (``address``/``length``)."""

    ALIGN = 0x200000

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size + self.ALIGN)
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(self._map)))
        self.address = (base + self.ALIGN - 1) & ~(self.ALIGN - 1)
        self.length = size


def attempt(fn: Callable[[], Any]) -> Any:
    """The call's result, or ``"E<NAME>"`` for an OSError."""
    try:
        value = fn()
    except OSError as exc:
        return "E" + errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return value


def _raw(backend: Backend, fd: int, request: int, arg: Any) -> Any:
    return attempt(lambda: backend.ioctl(fd, request, arg))


def _ranges(ioas: pyvfio.IOAS) -> list[list[int]]:
    return [[r.start, r.last] for r in ioas.iova_ranges()]


# -- iommufd: IOAS ---------------------------------------------------------------


def ioas_map_unmap(env: Env) -> Result:
    r: Result = {}
    with IommuFd(backend=env.backend) as fd:
        ioas = fd.ioas()
        buf = env.buffer(0x40000)
        m1 = ioas.map(buf)
        r["auto_iova_1"] = m1.iova
        m2 = ioas.map(buf)
        r["auto_iova_2"] = m2.iova
        r["fixed"] = ioas.map(buf, 0x10000000).iova
        r["overlap"] = attempt(lambda: ioas.map(buf, 0x10020000))
        r["unmap_partial"] = attempt(lambda: ioas.unmap(0x10000000, 0x1000))
        r["unmap_middle_miss"] = attempt(lambda: ioas.unmap(0x20000000, 0x1000))
        r["unmap_exact"] = ioas.unmap(0x10000000, 0x40000)
        r["unmap_all"] = ioas.unmap_all()
        r["unmap_empty"] = attempt(lambda: ioas.unmap(0, U64_MAX))
        r["ranges"] = _ranges(ioas)
        r["alignment"] = ioas.iova_alignment
    return r


def ioas_raw_size_checks(env: Env) -> Result:
    """iommufd_fops_ioctl's size rules and per-ioctl field checks."""
    r: Result = {}
    b = env.backend
    fd = b.open("/dev/iommu")
    try:
        alloc = ffi.new("struct iommu_ioas_alloc *")
        alloc.size = 4  # smaller than the minimum
        r["alloc_short"] = _raw(b, fd, lib.IOMMU_IOAS_ALLOC, alloc)
        big = ffi.new("char[64]")
        a = ffi.cast("struct iommu_ioas_alloc *", big)
        a.size = 64
        r["alloc_long_zero_tail"] = _raw(b, fd, lib.IOMMU_IOAS_ALLOC, big)
        ioas_id = a.out_ioas_id
        big[40] = b"\x01"
        r["alloc_long_dirty_tail"] = _raw(b, fd, lib.IOMMU_IOAS_ALLOC, big)
        alloc = ffi.new("struct iommu_ioas_alloc *")
        alloc.size = ffi.sizeof(alloc[0])
        alloc.flags = 1
        r["alloc_flags"] = _raw(b, fd, lib.IOMMU_IOAS_ALLOC, alloc)
        r["bad_nr"] = _raw(b, fd, lib.IOMMU_IOAS_ALLOC + 0x40, alloc)
        buf = env.buffer(0x4000)
        cmd = ffi.new("struct iommu_ioas_map *")
        cmd.size = ffi.sizeof(cmd[0])
        cmd.ioas_id = ioas_id
        cmd.user_va = buf.address
        cmd.length = 0x4000
        cmd.flags = 1 << 7
        r["map_bad_flags"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.flags = lib.IOMMU_IOAS_MAP_READABLE
        cmd.length = 0
        r["map_zero_length"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.length = 0x4000
        cmd.ioas_id = 999
        r["map_bad_ioas"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.ioas_id = ioas_id
        cmd.__reserved = 1
        r["map_reserved"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.__reserved = 0
        cmd.flags = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd.iova = U64_MAX - 0x1000
        r["map_overflow"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.iova = 0x1000
        cmd.user_va = U64_MAX - 0xFFF  # user_va + length wraps
        r["map_user_va_wraps"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.user_va = 0x1000  # nothing mapped there
        r["map_efault"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        cmd.user_va = buf.address
        cmd.iova = U64_MAX - 0xFFF  # the last page of the IOVA space
        cmd.length = 0x1000
        r["map_last_page"] = _raw(b, fd, lib.IOMMU_IOAS_MAP, cmd)
        unmap = ffi.new("struct iommu_ioas_unmap *")
        unmap.size = ffi.sizeof(unmap[0])
        unmap.ioas_id = ioas_id
        unmap.iova = 0
        unmap.length = U64_MAX  # everything, the last page included
        r["unmap_all_last_page"] = [_raw(b, fd, lib.IOMMU_IOAS_UNMAP, unmap), int(unmap.length)]
        unmap.iova = U64_MAX - 0xFFF
        unmap.length = 0x2000
        r["unmap_wraps"] = _raw(b, fd, lib.IOMMU_IOAS_UNMAP, unmap)
        destroy = ffi.new("struct iommu_destroy *")
        destroy.size = ffi.sizeof(destroy[0])
        destroy.id = 999
        r["destroy_unknown"] = _raw(b, fd, lib.IOMMU_DESTROY, destroy)
        destroy.id = ioas_id
        r["destroy"] = _raw(b, fd, lib.IOMMU_DESTROY, destroy)
        r["destroy_again"] = _raw(b, fd, lib.IOMMU_DESTROY, destroy)
        opt = ffi.new("struct iommu_option *")
        opt.size = ffi.sizeof(opt[0])
        opt.option_id = lib.IOMMU_OPTION_RLIMIT_MODE
        opt.op = 7
        r["option_bad_op"] = _raw(b, fd, lib.IOMMU_OPTION, opt)
        opt.option_id = 99
        opt.op = lib.IOMMU_OPTION_OP_GET
        r["option_bad_id"] = _raw(b, fd, lib.IOMMU_OPTION, opt)
    finally:
        b.close(fd)
    return r


def ioas_copy_and_allow(env: Env) -> Result:
    r: Result = {}
    with IommuFd(backend=env.backend) as fd:
        src, dst = fd.ioas(), fd.ioas()
        buf = env.buffer(0x10000)
        m = src.map(buf, 0x100000)
        r["copy"] = dst.copy(m, 0x200000).iova
        r["copy_auto"] = dst.copy(m).iova
        r["copy_missing"] = attempt(lambda: dst.copy((src, 0x900000, 0x1000), 0x300000))
        r["copy_partial_src"] = attempt(
            lambda: dst.copy((src, 0x104000, 0x4000), 0x400000).iova)
        r["allow_with_mapping_outside"] = attempt(
            lambda: dst.allow_iovas([(0x10000000, 0x1FFFFFFF)]))
        fresh = fd.ioas()
        r["allow"] = attempt(lambda: fresh.allow_iovas([(0x10000000, 0x1FFFFFFF)]))
        r["auto_in_allowed"] = fresh.map(buf).iova
        r["fixed_outside_allowed"] = attempt(lambda: fresh.map(buf, 0x40000000).iova)
        r["allow_overlapping"] = attempt(
            lambda: fresh.allow_iovas([(0x1000, 0x2FFF), (0x2000, 0x3FFF)]))
        r["ranges_after_allow"] = _ranges(fresh)
    return r


# -- iommufd: devices ----------------------------------------------------------------


def cdev_bind_attach(env: Env) -> Result:
    r: Result = {}
    (edu,) = env.find(EDU)
    env.bind(edu, "vfio-pci")
    try:
        with IommuFd(backend=env.backend) as fd, Device.open(edu, backend=env.backend) as dev:
            r["region_before_bind"] = attempt(lambda: dev.region_info(0).size)
            r["bind"] = attempt(lambda: dev.bind(fd) > 0)
            r["bind_twice"] = attempt(lambda: dev.bind(fd))
            ioas = fd.ioas()
            before = _ranges(ioas)
            buf = env.buffer(0x1000)
            clash = ioas.map(buf, 0xFEE00000)
            r["attach_over_msi_mapping"] = attempt(lambda: dev.attach(ioas) > 0)
            clash.close()
            r["attach"] = attempt(lambda: dev.attach(ioas) > 0)
            r["ranges_narrowed"] = _ranges(ioas)
            r["map_into_msi"] = attempt(lambda: ioas.map(buf, 0xFEE00000).iova)
            r["destroy_attached_ioas"] = attempt(lambda: fd.destroy(ioas.id))
            other = fd.ioas()
            r["replace"] = attempt(lambda: dev.replace(other) > 0)
            r["ranges_widened"] = _ranges(ioas) == before
            r["detach"] = attempt(dev.detach)
            r["detach_again"] = attempt(dev.detach)
            r["hw_info_type"] = fd.hw_info(dev).type
            r["region0"] = dev.region_info(0).size
    finally:
        env.restore()
    return r


# -- legacy --------------------------------------------------------------------------


def legacy_container_state(env: Env) -> Result:
    r: Result = {}
    (edu,) = env.find(EDU)
    env.bind(edu, "vfio-pci")
    try:
        with Container(backend=env.backend) as c:
            r["api"] = c.api_version
            r["ext"] = sorted(e.name for e in c.extensions)
            r["set_iommu_no_group"] = attempt(
                lambda: env.backend.ioctl(c.fd, lib.VFIO_SET_IOMMU, IommuType.TYPE1v2))
            with Group.for_device(edu, backend=env.backend) as g:
                r["status0"] = g.status.flags
                r["unset_none"] = attempt(g.unset_container)
                r["get_fd_no_container"] = attempt(lambda: g.get_device_fd(edu))
                g.set_container(c)
                r["status1"] = g.status.flags
                r["get_fd_no_iommu"] = attempt(lambda: g.get_device_fd(edu))
                r["set_iommu_v1_twice"] = [attempt(lambda: c.set_iommu(IommuType.TYPE1v2)),
                                           attempt(lambda: c.set_iommu(IommuType.TYPE1v2))]
                r["ext_after"] = sorted(e.name for e in c.extensions)
                r["get_fd_bad_name"] = attempt(lambda: g.get_device_fd("0000:99:00.0"))
                with g.open_device(edu) as dev:
                    r["unset_busy"] = attempt(g.unset_container)
                    r["num_regions"] = dev.info.num_regions
                r["unset"] = attempt(g.unset_container)
                r["status2"] = g.status.flags
    finally:
        env.restore()
    return r


def type1_rules(env: Env) -> Result:
    r: Result = {}
    (edu,) = env.find(EDU)
    env.bind(edu, "vfio-pci")
    try:
        with Container(backend=env.backend) as c, Group.for_device(edu, backend=env.backend) as g:
            g.set_container(c)
            c.set_iommu(IommuType.TYPE1v2)
            info = c.info()
            r["pgsizes"] = info.iova_pgsizes
            r["ranges"] = [[x.start, x.last] for x in info.iova_ranges]
            r["dma_avail"] = info.dma_avail
            buf = env.buffer(0x10000)
            c.map_dma(buf, 0x100000)
            r["overlap"] = attempt(lambda: c.map_dma(buf, 0x108000))
            r["split"] = attempt(lambda: c.unmap_dma(0x104000, 0x4000))
            r["unmap_miss"] = attempt(lambda: c.unmap_dma(0x800000, 0x1000))
            r["map_msi"] = attempt(lambda: c.map_dma(buf, 0xFEE00000).iova)
            b = env.backend
            arg = ffi.new("struct vfio_iommu_type1_dma_map *")
            arg.argsz = ffi.sizeof(arg[0])
            arg.flags = lib.VFIO_DMA_MAP_FLAG_READ
            arg.vaddr = buf.address
            arg.iova = 0x200800
            arg.size = 0x1000
            r["raw_misaligned"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.iova = 0x200000
            arg.size = 0
            r["raw_zero"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.size = 0x1000
            arg.flags = 1 << 5
            r["raw_bad_flags"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.flags = lib.VFIO_DMA_MAP_FLAG_READ
            arg.argsz = 8
            r["raw_short_argsz"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.argsz = ffi.sizeof(arg[0])
            arg.iova = U64_MAX - 0xFFF
            arg.size = 0x2000  # iova + size wraps
            r["raw_iova_wraps"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.iova = 0x200000
            arg.vaddr = U64_MAX - 0xFFF  # vaddr + size wraps
            r["raw_vaddr_wraps"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            arg.size = 0x1000
            arg.vaddr = 0x1000
            r["raw_efault"] = _raw(b, c.fd, lib.VFIO_IOMMU_MAP_DMA, arg)
            small = ffi.new("struct vfio_iommu_type1_info *")
            small.argsz = ffi.sizeof(small[0])
            r["info_small"] = [_raw(b, c.fd, lib.VFIO_IOMMU_GET_INFO, small), int(small.flags),
                               int(small.argsz) > ffi.sizeof(small[0]), int(small.cap_offset)]
            r["unmap_all"] = c.unmap_all()
    finally:
        env.restore()
    return r


def type1_v1_unmap(env: Env) -> Result:
    """VFIO_TYPE1_IOMMU (v1): unmaps that start inside a mapping, or cover
    only its first page."""
    r: Result = {}
    (edu,) = env.find(EDU)
    env.bind(edu, "vfio-pci")
    try:
        with Container(backend=env.backend) as c, Group.for_device(edu, backend=env.backend) as g:
            g.set_container(c)
            c.set_iommu(IommuType.TYPE1)
            buf = env.buffer(0x4000)
            m = c.map_dma(buf, 0x100000)
            r["unmap_starting_inside"] = attempt(lambda: c.unmap_dma(0x101000, 0x1000))
            r["still_mapped"] = not m.closed
            r["unmap_first_page"] = attempt(lambda: c.unmap_dma(0x100000, 0x1000))
            r["closed"] = m.closed
            r["unmap_all"] = attempt(c.unmap_all)
            r["dirty_on_v1"] = attempt(c.start_dirty_tracking)
    finally:
        env.restore()
    return r


def device_irqs_and_regions(env: Env) -> Result:
    """What vfio-pci reports of edu and the NVMe controller: interrupt
    indexes (counts, flags), regions (sizes, flags), config capabilities,
    and what SET_IRQS accepts on them."""
    r: Result = {}
    for name, ids in (("edu", EDU), ("nvme", NVME)):
        (bdf,) = env.find(ids)
        env.bind(bdf, "vfio-pci")
        try:
            with IommuFd(backend=env.backend) as fd, Device.open(bdf, backend=env.backend) as dev:
                dev.bind(fd)
                # attached before MSI is enabled: behind an SMMUv3 the MSI
                # doorbell is mapped into the attached domain (software MSI
                # window); unattached, the arm64 kernel refuses MSI (ENOSPC)
                dev.attach(fd.ioas())
                r[f"{name}_irqs"] = {irq.name: [irq.count, irq.flags] for irq in dev.irqs.values()}
                r[f"{name}_regions"] = {reg.name: [reg.size, reg.flags]
                                        for reg in dev.regions.values()}
                r[f"{name}_caps"] = [c.name for c in dev.config.capabilities()]
                r[f"{name}_ext_caps"] = [c.name for c in dev.config.extended_capabilities()]
                msi = dev.irqs["MSIX"] if name == "nvme" else dev.irqs["MSI"]
                vectors = msi.enable(1)
                r[f"{name}_second_enable"] = attempt(lambda: len(msi.enable(1, start=1)))
                r[f"{name}_intx_while_msi"] = attempt(lambda: dev.irqs["INTX"].enable())
                msi.trigger(0)
                r[f"{name}_loopback"] = vectors[0].wait(5)
                msi.disable()
                (err,) = dev.irqs["ERR"].enable()
                dev.irqs["ERR"].trigger()
                r[f"{name}_err_loopback"] = err.wait(5)
        finally:
            env.restore()
    return r


def _no_interrupt(vector: pyvfio.IrqVector, timeout: float) -> int | str:
    """The count that arrived within ``timeout`` seconds, or ``"none"``."""
    try:
        return vector.wait(timeout)
    except TimeoutError:
        return "none"


def _edu_factorial(bar0: pyvfio.RegisterIO, n: int) -> int:
    """edu's factorial of ``n`` with its completion interrupt requested."""
    bar0.write32(0x20, 0x80)
    bar0.write32(0x08, n)
    deadline = time.monotonic() + 5
    while bar0.read32(0x20) & 0x1:
        if time.monotonic() > deadline:
            return -1
        time.sleep(0.001)
    return int(bar0.read32(0x08))


def edu_msi_needs_bus_master(env: Env) -> Result:
    """edu's factorial-done MSI with Bus Master Enable clear (the message,
    a memory write, is lost: it does not come later either) and set."""
    r: Result = {}
    (bdf,) = env.find(EDU)
    env.bind(bdf, "vfio-pci")
    try:
        with IommuFd(backend=env.backend) as fd, Device.open(bdf, backend=env.backend) as dev:
            dev.bind(fd)
            dev.attach(fd.ioas())
            dev.config.enable(memory=True, bus_master=False)
            bar0 = dev.regions["BAR0"].mmap()
            msi = dev.irqs["MSI"]
            (vector,) = msi.enable()
            r["factorial_without"] = _edu_factorial(bar0, 5)
            r["msi_without"] = _no_interrupt(vector, 0.5)
            r["irq_status_without"] = bar0.read32(0x24)
            bar0.write32(0x64, 0x1)
            dev.config.enable(bus_master=True)
            r["msi_on_enable"] = _no_interrupt(vector, 0.2)
            r["factorial_with"] = _edu_factorial(bar0, 6)
            r["msi_with"] = _no_interrupt(vector, 5)
            bar0.write32(0x64, 0x1)
            msi.disable()
            dev.config.enable(bus_master=False)
    finally:
        env.restore()
    return r


# -- ownership and viability -----------------------------------------------------------


def ownership_and_viability(env: Env) -> Result:
    r: Result = {}
    e1000s = env.find(E1000)
    r["count"] = len(e1000s)
    if not e1000s:  # a VM without the pcie-pci-bridge (tests/vm/guest.py NO_PCI_BRIDGE)
        return r
    group = pyvfio.core.sysfs.device_group(e1000s[0], env.backend)
    r["members"] = len(pyvfio.core.sysfs.group_devices(group, env.backend))
    r["blockers"] = sorted(x.driver for x in pyvfio.core.viability.viability_blockers(group, env.backend))
    try:
        env.bind(e1000s[0], "vfio-pci")
        with Container(backend=env.backend) as c, Group(group, backend=env.backend) as g:
            r["viable_half"] = g.viable
            r["set_container_half"] = attempt(lambda: g.set_container(c))
        env.bind(e1000s[1], "vfio-pci")
        with Container(backend=env.backend) as c, Group(group, backend=env.backend) as g:
            r["viable_all"] = g.viable
            if not r["viable_all"]:
                # the group keeps a kernel driver (in the arm64 VM the
                # PCIe-to-PCI bridge is on shpchp, which does not manage DMA)
                r["set_container_all"] = attempt(lambda: g.set_container(c))
            else:
                g.set_container(c)
                c.set_iommu()
                b = env.backend
                bdf = e1000s[1]
                b.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "\n")
                b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf)
                r["kernel_bind_in_user_group"] = attempt(
                    lambda: b.sysfs_write("/sys/bus/pci/drivers/e1000/bind", bdf))
                r["probe_in_user_group"] = attempt(
                    lambda: b.sysfs_write("/sys/bus/pci/drivers_probe", bdf))
                r["driver_after"] = pyvfio.core.sysfs.device_driver(bdf, b)
                r["viable_with_unbound"] = g.viable
                # the cdev of a user-owned group's other device cannot be bound
    finally:
        env.restore()
    r["restored"] = [pyvfio.core.sysfs.device_driver(x, env.backend) for x in e1000s]
    return r


SCENARIOS: dict[str, Callable[[Env], Result]] = {
    f.__name__: f
    for f in (ioas_map_unmap, ioas_raw_size_checks, ioas_copy_and_allow, cdev_bind_attach,
              legacy_container_state, type1_rules, type1_v1_unmap, device_irqs_and_regions,
              edu_msi_needs_bus_master, ownership_and_viability)
}


def diff(fake: Result, real: Result) -> list[str]:
    """Keys whose values differ, as readable lines."""
    out = []
    for key in sorted(set(fake) | set(real)):
        if fake.get(key, "<missing>") != real.get(key, "<missing>"):
            out.append(f"{key}: fake={fake.get(key, '<missing>')!r} real={real.get(key, '<missing>')!r}")
    return out


