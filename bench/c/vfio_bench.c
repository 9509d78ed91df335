/* C baseline for pyvfio's benchmarks (bench/run.py builds and runs it).
 *
 * Every mode issues the same syscalls as the Python side, on the same
 * kernel objects: the benchmark opens the iommufd, container or device in
 * Python and hands the fd to this program (inherited), so both sides map
 * into the same IOAS with the same device attached.  Times are taken with
 * CLOCK_MONOTONIC around the timed loop only; each mode prints one line of
 * "key=value" results in nanoseconds per operation.
 *
 *   vfio_bench ioas  FD IOAS_ID MEMFD SIZE IOVA ITERS
 *                                                 IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP
 *   vfio_bench type1 FD MEMFD SIZE IOVA ITERS     VFIO_IOMMU_MAP_DMA + VFIO_IOMMU_UNMAP_DMA
 *   vfio_bench mmio  FD OFFSET LENGTH RD WR ITERS read32 at RD, write32 at WR of a
 *                                                 device region mmapped at OFFSET
 *   vfio_bench ram   ITERS                        the same accesses on anonymous RAM
 *   vfio_bench block FD OFFSET LENGTH RD RSTRIDE WR WSTRIDE COUNT ITERS
 *                                                 blocks of COUNT read32s from RD (RSTRIDE
 *                                                 bytes apart) and of COUNT write32s to WR;
 *                                                 times per block; FD -1: anonymous RAM
 *   vfio_bench ready CDEV ITERS                   open /dev/iommu + IOAS + open CDEV +
 *                                                 bind + attach (median of ITERS)
 *   vfio_bench layout                             struct sizes and ioctl numbers
 *
 * The map modes map SIZE bytes of the memfd MEMFD (inherited too), the very
 * pages the Python side maps, so that both make the kernel do the same work
 * (pinning and IOMMU page-table cost depend on where the pages lie); MEMFD
 * -1 maps anonymous memory of this process instead.
 *
 * Built against the Linux 7.3 uAPI headers (linux/vfio.h, linux/iommufd.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>

#define HUGE (2UL << 20)

static void die(const char *what)
{
    fprintf(stderr, "vfio_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static unsigned long long num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) {
        fprintf(stderr, "vfio_bench: bad number %s\n", s);
        exit(2);
    }
    return v;
}

/* The DMA buffer, mapped as bench/guest_suite.py maps it: at a 2 MiB
 * aligned address, the memfd's first SIZE bytes shared (or anonymous memory
 * with transparent huge pages requested from 2 MiB on), every page touched
 * before timing starts. */
static void *dma_buffer(int memfd, size_t size)
{
    uint8_t *raw = mmap(NULL, size + HUGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        die("mmap");
    uint8_t *buf = (uint8_t *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    if (memfd >= 0) {
        if (mmap(buf, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, 0)
            == MAP_FAILED)
            die("mmap of the memfd");
    } else if (size >= HUGE) {
        madvise(buf, size, MADV_HUGEPAGE);
    }
    memset(buf, 0x5a, size);
    return buf;
}

static int ioas_map(int fd, struct iommu_ioas_map *map, struct iommu_ioas_unmap *unmap)
{
    if (ioctl(fd, IOMMU_IOAS_MAP, map) < 0)
        return -1;
    return ioctl(fd, IOMMU_IOAS_UNMAP, unmap);
}

static int mode_ioas(char **argv)
{
    int fd = (int)num(argv[0]);
    size_t size = num(argv[3]);
    unsigned long long iters = num(argv[5]);
    void *buf = dma_buffer((int)strtol(argv[2], NULL, 0), size);
    struct iommu_ioas_map map = {
        .size = sizeof(map),
        .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE
                 | IOMMU_IOAS_MAP_WRITEABLE,
        .ioas_id = (uint32_t)num(argv[1]),
        .user_va = (uintptr_t)buf,
        .length = size,
        .iova = num(argv[4]),
    };
    struct iommu_ioas_unmap unmap = {
        .size = sizeof(unmap), .ioas_id = map.ioas_id, .iova = map.iova, .length = size,
    };
    for (unsigned long long i = 0; i < iters / 10 + 1; i++)   /* warm-up */
        if (ioas_map(fd, &map, &unmap) < 0)
            die("IOMMU_IOAS_MAP/UNMAP");
    uint64_t t0 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        if (ioas_map(fd, &map, &unmap) < 0)
            die("IOMMU_IOAS_MAP/UNMAP");
    uint64_t t1 = now_ns();
    printf("op_ns=%.1f iters=%llu\n", (double)(t1 - t0) / iters, iters);
    return 0;
}

static int type1_map(int fd, struct vfio_iommu_type1_dma_map *map,
                     struct vfio_iommu_type1_dma_unmap *unmap)
{
    if (ioctl(fd, VFIO_IOMMU_MAP_DMA, map) < 0)
        return -1;
    return ioctl(fd, VFIO_IOMMU_UNMAP_DMA, unmap);
}

static int mode_type1(char **argv)
{
    int fd = (int)num(argv[0]);
    size_t size = num(argv[2]);
    unsigned long long iters = num(argv[4]);
    void *buf = dma_buffer((int)strtol(argv[1], NULL, 0), size);
    struct vfio_iommu_type1_dma_map map = {
        .argsz = sizeof(map),
        .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)buf,
        .iova = num(argv[3]),
        .size = size,
    };
    struct vfio_iommu_type1_dma_unmap unmap = {
        .argsz = sizeof(unmap), .iova = map.iova, .size = size,
    };
    for (unsigned long long i = 0; i < iters / 10 + 1; i++)
        if (type1_map(fd, &map, &unmap) < 0)
            die("VFIO_IOMMU_MAP_DMA/UNMAP_DMA");
    uint64_t t0 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        if (type1_map(fd, &map, &unmap) < 0)
            die("VFIO_IOMMU_MAP_DMA/UNMAP_DMA");
    uint64_t t1 = now_ns();
    printf("op_ns=%.1f iters=%llu\n", (double)(t1 - t0) / iters, iters);
    return 0;
}

/* One volatile 32-bit load or store per access, like pyvfio's accessors. */
static void access_loops(volatile uint8_t *base, size_t rd, size_t wr,
                         unsigned long long iters)
{
    volatile uint32_t *r = (volatile uint32_t *)(base + rd);
    volatile uint32_t *w = (volatile uint32_t *)(base + wr);
    uint32_t sum = 0;
    for (unsigned long long i = 0; i < iters / 10 + 1; i++)
        sum += *r;
    uint64_t t0 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        sum += *r;
    uint64_t t1 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        *w = (uint32_t)i;
    uint64_t t2 = now_ns();
    printf("read32_ns=%.2f write32_ns=%.2f iters=%llu sum=%u\n",
           (double)(t1 - t0) / iters, (double)(t2 - t1) / iters, iters, sum);
}

static int mode_mmio(char **argv)
{
    int fd = (int)num(argv[0]);
    off_t offset = (off_t)num(argv[1]);
    size_t length = num(argv[2]);
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    if (p == MAP_FAILED)
        die("mmap of the device region");
    access_loops(p, num(argv[3]), num(argv[4]), num(argv[5]));
    munmap(p, length);
    return 0;
}

static int mode_ram(char **argv)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    memset(p, 0, 4096);
    access_loops(p, 0, 4, num(argv[0]));
    return 0;
}

/* Blocks of volatile 32-bit accesses, the loop pyvfio's read32_block and
 * write32_block make in C. */
static int mode_block(char **argv)
{
    int fd = (int)(long long)num(argv[0]);
    off_t offset = (off_t)num(argv[1]);
    size_t length = num(argv[2]);
    size_t rd = num(argv[3]), rstride = num(argv[4]), wr = num(argv[5]), wstride = num(argv[6]);
    size_t count = num(argv[7]);
    unsigned long long iters = num(argv[8]);
    void *p = fd < 0 ? mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                     : mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    if (p == MAP_FAILED)
        die("mmap");
    if (fd < 0)
        memset(p, 0, length);
    volatile uint8_t *base = p;
    uint32_t *out = calloc(count, sizeof(*out));
    uint32_t sum = 0;
    for (unsigned long long i = 0; i < iters / 10 + 1; i++)
        for (size_t k = 0; k < count; k++)
            sum += *(volatile uint32_t *)(base + rd + k * rstride);
    uint64_t t0 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        for (size_t k = 0; k < count; k++)
            out[k] = *(volatile uint32_t *)(base + rd + k * rstride);
    uint64_t t1 = now_ns();
    for (unsigned long long i = 0; i < iters; i++)
        for (size_t k = 0; k < count; k++)
            *(volatile uint32_t *)(base + wr + k * wstride) = out[k] + (uint32_t)i;
    uint64_t t2 = now_ns();
    printf("read_block_ns=%.2f write_block_ns=%.2f iters=%llu sum=%u\n",
           (double)(t1 - t0) / iters, (double)(t2 - t1) / iters, iters, sum + out[0]);
    free(out);
    munmap(p, length);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int mode_ready(char **argv)
{
    const char *cdev = argv[0];
    unsigned long long iters = num(argv[1]);
    uint64_t *t = calloc(iters, sizeof(*t));
    for (unsigned long long i = 0; i < iters; i++) {
        uint64_t t0 = now_ns();
        int ifd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
        if (ifd < 0)
            die("open /dev/iommu");
        struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
        if (ioctl(ifd, IOMMU_IOAS_ALLOC, &alloc) < 0)
            die("IOMMU_IOAS_ALLOC");
        int dfd = open(cdev, O_RDWR | O_CLOEXEC);
        if (dfd < 0)
            die("open the device cdev");
        struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = ifd };
        if (ioctl(dfd, VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0)
            die("VFIO_DEVICE_BIND_IOMMUFD");
        struct vfio_device_attach_iommufd_pt attach = {
            .argsz = sizeof(attach), .pt_id = alloc.out_ioas_id,
        };
        if (ioctl(dfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach) < 0)
            die("VFIO_DEVICE_ATTACH_IOMMUFD_PT");
        t[i] = now_ns() - t0;
        close(dfd);
        close(ifd);
    }
    qsort(t, iters, sizeof(*t), cmp_u64);
    printf("ready_ns=%llu iters=%llu\n", (unsigned long long)t[iters / 2], iters);
    return 0;
}

static int mode_layout(void)
{
    printf("iommu_ioas_map=%zu iommu_ioas_unmap=%zu vfio_iommu_type1_dma_map=%zu "
           "vfio_iommu_type1_dma_unmap=%zu IOMMU_IOAS_MAP=%lu IOMMU_IOAS_UNMAP=%lu "
           "VFIO_IOMMU_MAP_DMA=%lu VFIO_IOMMU_UNMAP_DMA=%lu\n",
           sizeof(struct iommu_ioas_map), sizeof(struct iommu_ioas_unmap),
           sizeof(struct vfio_iommu_type1_dma_map), sizeof(struct vfio_iommu_type1_dma_unmap),
           (unsigned long)IOMMU_IOAS_MAP, (unsigned long)IOMMU_IOAS_UNMAP,
           (unsigned long)VFIO_IOMMU_MAP_DMA, (unsigned long)VFIO_IOMMU_UNMAP_DMA);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; int nargs; int (*fn)(char **); } modes[] = {
        { "ioas", 6, mode_ioas }, { "type1", 5, mode_type1 }, { "mmio", 6, mode_mmio },
        { "ram", 1, mode_ram }, { "ready", 2, mode_ready }, { "block", 9, mode_block },
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && !strcmp(argv[1], "layout"))
        return mode_layout();
    for (size_t i = 0; argc >= 2 && i < sizeof(modes) / sizeof(modes[0]); i++)
        if (!strcmp(argv[1], modes[i].name) && argc == modes[i].nargs + 2)
            return modes[i].fn(argv + 2);
    fprintf(stderr, "usage: see the comment at the top of vfio_bench.c\n");
    return 2;
}
