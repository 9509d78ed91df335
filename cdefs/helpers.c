/* Syscall helpers for pyvfio's kernel backend.
 *
 * cffi releases the GIL around every call into this module, so a long
 * ioctl (pinning gigabytes in IOMMU_IOAS_MAP, a device reset) does not
 * stall other Python threads.  Errors come back as -errno so that no
 * thread-local errno has to be fetched afterwards.
 *
 * The MMIO accessors perform exactly one load or store of exactly the
 * named width through a volatile pointer: device registers must never be
 * touched byte-wise or twice.
 */
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

#define PYVFIO_PROT_READ PROT_READ
#define PYVFIO_PROT_WRITE PROT_WRITE
#define PYVFIO_MAP_SHARED MAP_SHARED
#define PYVFIO_MAP_PRIVATE MAP_PRIVATE
#define PYVFIO_MAP_ANONYMOUS MAP_ANONYMOUS
#define PYVFIO_MAP_HUGETLB MAP_HUGETLB
#define PYVFIO_MAP_FIXED_NOREPLACE MAP_FIXED_NOREPLACE
#define PYVFIO_MAP_POPULATE MAP_POPULATE
#define PYVFIO_MAP_HUGE_SHIFT MAP_HUGE_SHIFT

static int pyvfio_ioctl_ptr(int fd, unsigned long request, void *arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

static int pyvfio_ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

static void *pyvfio_mmap(void *addr, size_t length, int prot, int flags, int fd,
                         int64_t offset, int *err)
{
    void *p = mmap(addr, length, prot, flags, fd, (off_t)offset);
    if (p == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    *err = 0;
    return p;
}

static int pyvfio_munmap(void *addr, size_t length)
{
    return munmap(addr, length) < 0 ? -errno : 0;
}

static int pyvfio_madvise(void *addr, size_t length, int advice)
{
    return madvise(addr, length, advice) < 0 ? -errno : 0;
}

static uint8_t pyvfio_read8(uintptr_t addr) { return *(volatile uint8_t *)addr; }
static uint16_t pyvfio_read16(uintptr_t addr) { return *(volatile uint16_t *)addr; }
static uint32_t pyvfio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static uint64_t pyvfio_read64(uintptr_t addr) { return *(volatile uint64_t *)addr; }
static void pyvfio_write8(uintptr_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }
static void pyvfio_write16(uintptr_t addr, uint16_t v) { *(volatile uint16_t *)addr = v; }
static void pyvfio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static void pyvfio_write64(uintptr_t addr, uint64_t v) { *(volatile uint64_t *)addr = v; }

/* DMA map and unmap in one call: fill the ioctl's struct on the C stack
 * and issue the ioctl.  They return 0 or the kernel's errno (positive),
 * so that the caller builds the very error an ioctl through the backend
 * would give.  An ``out`` pointer may be NULL when the caller does not
 * need the value the kernel writes back (the IOVA it chose, the bytes it
 * unmapped).
 *
 * The map calls first make the checks pyvfio makes before a map (the
 * kernel would refuse these with EINVAL or EOVERFLOW): a zero length, a
 * range of IOVAs or of process memory that wraps past 2**64, and for
 * type1 an IOVA, size or address that is not a multiple of the IOMMU page
 * (``page_mask`` = page size - 1).  They return -1 then, without a
 * syscall: the caller's own checks say which argument is wrong.
 *
 * Each comes twice: the ``pyvfio_dry_*`` twins fill the same struct and
 * skip the syscall (a kernel that does nothing), to measure what pyvfio
 * itself costs per map and unmap. */
typedef int (*pyvfio_ioctl_fn)(int fd, unsigned long request, void *arg);

static int pyvfio_sys_ioctl(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg) < 0 ? errno : 0;
}

static int pyvfio_no_ioctl(int fd, unsigned long request, void *arg)
{
    (void)fd; (void)request; (void)arg;
    return 0;
}

static inline int pyvfio_ioas_map_with(pyvfio_ioctl_fn call, int fd, uint32_t ioas_id,
                                       uint32_t flags, uint64_t user_va, uint64_t length,
                                       uint64_t iova, uint64_t *out_iova)
{
    struct iommu_ioas_map cmd = {0};
    int err;

    if (!length || user_va + (length - 1) < user_va
        || ((flags & IOMMU_IOAS_MAP_FIXED_IOVA) && iova + (length - 1) < iova))
        return -1;
    cmd.size = sizeof(cmd);
    cmd.flags = flags;
    cmd.ioas_id = ioas_id;
    cmd.user_va = user_va;
    cmd.length = length;
    cmd.iova = iova;
    err = call(fd, IOMMU_IOAS_MAP, &cmd);
    if (!err && out_iova)
        *out_iova = cmd.iova;
    return err;
}

static inline int pyvfio_ioas_unmap_with(pyvfio_ioctl_fn call, int fd, uint32_t ioas_id,
                                         uint64_t iova, uint64_t length, uint64_t *out_length)
{
    struct iommu_ioas_unmap cmd = {0};
    int err;

    cmd.size = sizeof(cmd);
    cmd.ioas_id = ioas_id;
    cmd.iova = iova;
    cmd.length = length;
    err = call(fd, IOMMU_IOAS_UNMAP, &cmd);
    if (!err && out_length)
        *out_length = cmd.length;
    return err;
}

static inline int pyvfio_dma_map_with(pyvfio_ioctl_fn call, int fd, uint32_t flags,
                                      uint64_t vaddr, uint64_t iova, uint64_t size,
                                      uint64_t page_mask)
{
    struct vfio_iommu_type1_dma_map cmd = {0};

    if (!size || iova + (size - 1) < iova || vaddr + (size - 1) < vaddr
        || ((vaddr | iova | size) & page_mask))
        return -1;
    cmd.argsz = sizeof(cmd);
    cmd.flags = flags;
    cmd.vaddr = vaddr;
    cmd.iova = iova;
    cmd.size = size;
    return call(fd, VFIO_IOMMU_MAP_DMA, &cmd);
}

static inline int pyvfio_dma_unmap_with(pyvfio_ioctl_fn call, int fd, uint32_t flags,
                                        uint64_t iova, uint64_t size, uint64_t *out_size)
{
    struct vfio_iommu_type1_dma_unmap cmd = {0};
    int err;

    cmd.argsz = sizeof(cmd);
    cmd.flags = flags;
    cmd.iova = iova;
    cmd.size = size;
    err = call(fd, VFIO_IOMMU_UNMAP_DMA, &cmd);
    if (!err && out_size)
        *out_size = cmd.size;
    return err;
}

#define PYVFIO_DMA_HELPERS(prefix, call)                                                    \
    static int prefix##ioas_map(int fd, uint32_t ioas_id, uint32_t flags, uint64_t user_va, \
                                uint64_t length, uint64_t iova, uint64_t *out_iova)         \
    { return pyvfio_ioas_map_with(call, fd, ioas_id, flags, user_va, length, iova,          \
                                  out_iova); }                                              \
    static int prefix##ioas_unmap(int fd, uint32_t ioas_id, uint64_t iova, uint64_t length, \
                                  uint64_t *out_length)                                     \
    { return pyvfio_ioas_unmap_with(call, fd, ioas_id, iova, length, out_length); }         \
    static int prefix##dma_map(int fd, uint32_t flags, uint64_t vaddr, uint64_t iova,       \
                               uint64_t size, uint64_t page_mask)                           \
    { return pyvfio_dma_map_with(call, fd, flags, vaddr, iova, size, page_mask); }          \
    static int prefix##dma_unmap(int fd, uint32_t flags, uint64_t iova, uint64_t size,      \
                                 uint64_t *out_size)                                        \
    { return pyvfio_dma_unmap_with(call, fd, flags, iova, size, out_size); }

PYVFIO_DMA_HELPERS(pyvfio_, pyvfio_sys_ioctl)
PYVFIO_DMA_HELPERS(pyvfio_dry_, pyvfio_no_ioctl)

/* Bulk register access: ``count`` accesses of exactly 4 (8) bytes each,
 * in order, through a volatile pointer -- the loop a C driver writes for
 * a descriptor ring or a block of registers.  ``stride`` is the distance
 * in bytes between two registers (0: the same register every time, e.g.
 * a FIFO). */
static void pyvfio_read32_block(uintptr_t addr, size_t stride, uint32_t *out, size_t count)
{
    for (size_t i = 0; i < count; i++)
        out[i] = *(volatile uint32_t *)(addr + i * stride);
}

static void pyvfio_write32_block(uintptr_t addr, size_t stride, const uint32_t *values,
                                 size_t count)
{
    for (size_t i = 0; i < count; i++)
        *(volatile uint32_t *)(addr + i * stride) = values[i];
}

static void pyvfio_read64_block(uintptr_t addr, size_t stride, uint64_t *out, size_t count)
{
    for (size_t i = 0; i < count; i++)
        out[i] = *(volatile uint64_t *)(addr + i * stride);
}

static void pyvfio_write64_block(uintptr_t addr, size_t stride, const uint64_t *values,
                                 size_t count)
{
    for (size_t i = 0; i < count; i++)
        *(volatile uint64_t *)(addr + i * stride) = values[i];
}

/* The checked accessors below work on a window of mapped registers given
 * as two numbers, ``w[0]`` the address of its first byte and ``w[1]`` its
 * size in bytes; size 0 refuses every access (an unmapped window, or one
 * whose accesses must go elsewhere).
 *
 * One access of exactly the named width at byte ``offset`` of the window,
 * after the checks pyvfio's register accessors make (inside the window,
 * naturally aligned).  A read returns the value, or -1 when the access is
 * refused; a write returns 0, or -1 when refused.  The caller's own
 * checks then say why. */
#define PYVFIO_WINDOW_ACCESS(bits)                                                         \
    static int64_t pyvfio_window_read##bits(const uint64_t *w, int64_t offset)             \
    {                                                                                      \
        if (offset < 0 || (uint64_t)offset + (bits / 8) > w[1]                             \
            || (offset & (bits / 8 - 1)))                                                  \
            return -1;                                                                     \
        return *(volatile uint##bits##_t *)((uintptr_t)(w[0] + (uint64_t)offset));         \
    }                                                                                      \
    static int pyvfio_window_write##bits(const uint64_t *w, int64_t offset,                \
                                         uint##bits##_t value)                             \
    {                                                                                      \
        if (offset < 0 || (uint64_t)offset + (bits / 8) > w[1]                             \
            || (offset & (bits / 8 - 1)))                                                  \
            return -1;                                                                     \
        *(volatile uint##bits##_t *)((uintptr_t)(w[0] + (uint64_t)offset)) = value;        \
        return 0;                                                                          \
    }

PYVFIO_WINDOW_ACCESS(8)
PYVFIO_WINDOW_ACCESS(16)
PYVFIO_WINDOW_ACCESS(32)
