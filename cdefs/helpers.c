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
