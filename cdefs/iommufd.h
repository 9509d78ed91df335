/*
 * linux/iommufd.h declarations (uAPI of Linux 7.3): see build_uapi.py for
 * the format.
 *
 * Conventions of this file:
 * - every ioctl argument struct starts with "__u32 size" (= sizeof the
 *   struct); "__reserved*" members and "flags" members without defined bits
 *   must be 0;
 * - "*_uptr" members and other __aligned_u64 "pointer" members hold a user
 *   space address;
 * - the kernel declares some members as __aligned_le64 (little-endian); they
 *   are declared here as __aligned_u64, which has the same size and alignment.
 */

/* ioctl type and command numbers */

#define IOMMUFD_TYPE (';')

enum {
	IOMMUFD_CMD_BASE = 0x80,
	IOMMUFD_CMD_DESTROY = 0x80,
	IOMMUFD_CMD_IOAS_ALLOC = 0x81,
	IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82,
	IOMMUFD_CMD_IOAS_COPY = 0x83,
	IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84,
	IOMMUFD_CMD_IOAS_MAP = 0x85,
	IOMMUFD_CMD_IOAS_UNMAP = 0x86,
	IOMMUFD_CMD_OPTION = 0x87,
	IOMMUFD_CMD_VFIO_IOAS = 0x88,
	IOMMUFD_CMD_HWPT_ALLOC = 0x89,
	IOMMUFD_CMD_GET_HW_INFO = 0x8a,
	IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8b,
	IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8c,
	IOMMUFD_CMD_HWPT_INVALIDATE = 0x8d,
	IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8e,
	IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f,
	IOMMUFD_CMD_VIOMMU_ALLOC = 0x90,
	IOMMUFD_CMD_VDEVICE_ALLOC = 0x91,
	IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92,
	IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93,
	IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,
	IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA = 0x95,
};

#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
#define IOMMU_IOAS_ALLOW_IOVAS _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
#define IOMMU_IOAS_COPY _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
#define IOMMU_VFIO_IOAS _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
#define IOMMU_HWPT_GET_DIRTY_BITMAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
#define IOMMU_VIOMMU_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
#define IOMMU_VDEVICE_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
#define IOMMU_IOAS_CHANGE_PROCESS _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)
#define IOMMU_VEVENTQ_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
#define IOMMU_HW_QUEUE_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)
#define IOMMU_IOAS_NOIOMMU_GET_PA _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA)

/* IOMMU_DESTROY: destroy any object by ID */

struct iommu_destroy {
	__u32 size;
	__u32 id;
};

/* IOMMU_IOAS_ALLOC: allocate an IO address space */

struct iommu_ioas_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_ioas_id;
};

/* One IOVA interval, both ends inclusive */

struct iommu_iova_range {
	__aligned_u64 start;
	__aligned_u64 last;
};

/* IOMMU_IOAS_IOVA_RANGES: query usable IOVA ranges of an IOAS */

struct iommu_ioas_iova_ranges {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;		/* in: array capacity; out: ranges total */
	__u32 __reserved;
	__aligned_u64 allowed_iovas;	/* struct iommu_iova_range[num_iovas] */
	__aligned_u64 out_iova_alignment; /* bytes */
};

/* IOMMU_IOAS_ALLOW_IOVAS: pin down IOVA ranges that must stay usable */

struct iommu_ioas_allow_iovas {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas;	/* struct iommu_iova_range[num_iovas] */
};

/* IOMMU_IOAS_MAP / _MAP_FILE / _COPY flags */

enum iommufd_ioas_map_flags {
	IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
	IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
	IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

/* IOMMU_IOAS_MAP: map user memory at an IOVA */

struct iommu_ioas_map {
	__u32 size;
	__u32 flags;			/* enum iommufd_ioas_map_flags */
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 user_va;
	__aligned_u64 length;		/* bytes */
	__aligned_u64 iova;		/* in if FIXED_IOVA, else out */
};

/* IOMMU_IOAS_MAP_FILE: map a memfd / dma-buf range at an IOVA */

struct iommu_ioas_map_file {
	__u32 size;
	__u32 flags;			/* enum iommufd_ioas_map_flags */
	__u32 ioas_id;
	__s32 fd;
	__aligned_u64 start;		/* byte offset into the file */
	__aligned_u64 length;		/* bytes */
	__aligned_u64 iova;
};

/* IOMMU_IOAS_COPY: duplicate an existing mapping into another IOAS */

struct iommu_ioas_copy {
	__u32 size;
	__u32 flags;			/* enum iommufd_ioas_map_flags */
	__u32 dst_ioas_id;
	__u32 src_ioas_id;
	__aligned_u64 length;		/* bytes */
	__aligned_u64 dst_iova;
	__aligned_u64 src_iova;
};

/* IOMMU_IOAS_UNMAP: unmap an IOVA range */

struct iommu_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length;		/* in: bytes to unmap; out: bytes unmapped */
};

/* IOMMU_IOAS_NOIOMMU_GET_PA: IOVA to physical address (noiommu devices) */

struct iommu_ioas_noiommu_get_pa {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;		/* in: max bytes; out: contiguous bytes */
	__aligned_u64 out_phys;
};

/* IOMMU_IOAS_CHANGE_PROCESS: move pinned-page accounting to the caller */

struct iommu_ioas_change_process {
	__u32 size;
	__u32 __reserved;
};

/* IOMMU_OPTION: get/set an option of the context or an object */

enum iommufd_option {
	IOMMU_OPTION_RLIMIT_MODE = 0,
	IOMMU_OPTION_HUGE_PAGES = 1,
};

enum iommufd_option_ops {
	IOMMU_OPTION_OP_SET = 0,
	IOMMU_OPTION_OP_GET = 1,
};

struct iommu_option {
	__u32 size;
	__u32 option_id;		/* enum iommufd_option */
	__u16 op;			/* enum iommufd_option_ops */
	__u16 __reserved;
	__u32 object_id;
	__aligned_u64 val64;
};

/* IOMMU_VFIO_IOAS: IOAS used by the VFIO container compatibility layer */

enum iommufd_vfio_ioas_op {
	IOMMU_VFIO_IOAS_GET = 0,
	IOMMU_VFIO_IOAS_SET = 1,
	IOMMU_VFIO_IOAS_CLEAR = 2,
};

struct iommu_vfio_ioas {
	__u32 size;
	__u32 ioas_id;
	__u16 op;			/* enum iommufd_vfio_ioas_op */
	__u16 __reserved;
};

/* IOMMU_HWPT_ALLOC: allocate a hardware page table */

enum iommufd_hwpt_alloc_flags {
	IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0,
	IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1,
	IOMMU_HWPT_FAULT_ID_VALID = 1 << 2,
	IOMMU_HWPT_ALLOC_PASID = 1 << 3,
};

enum iommu_hwpt_data_type {
	IOMMU_HWPT_DATA_NONE = 0,
	IOMMU_HWPT_DATA_VTD_S1 = 1,
	IOMMU_HWPT_DATA_ARM_SMMUV3 = 2,
	IOMMU_HWPT_DATA_AMD_GUEST = 3,
};

struct iommu_hwpt_alloc {
	__u32 size;
	__u32 flags;			/* enum iommufd_hwpt_alloc_flags */
	__u32 dev_id;
	__u32 pt_id;			/* IOAS, parent HWPT or vIOMMU */
	__u32 out_hwpt_id;
	__u32 __reserved;
	__u32 data_type;		/* enum iommu_hwpt_data_type */
	__u32 data_len;			/* bytes */
	__aligned_u64 data_uptr;
	__u32 fault_id;			/* if IOMMU_HWPT_FAULT_ID_VALID */
	__u32 __reserved2;
};

/* HWPT data, Intel VT-d stage 1 (IOMMU_HWPT_DATA_VTD_S1) */

enum iommu_hwpt_vtd_s1_flags {
	IOMMU_VTD_S1_SRE = 1 << 0,
	IOMMU_VTD_S1_EAFE = 1 << 1,
	IOMMU_VTD_S1_WPE = 1 << 2,
};

struct iommu_hwpt_vtd_s1 {
	__aligned_u64 flags;		/* enum iommu_hwpt_vtd_s1_flags */
	__aligned_u64 pgtbl_addr;
	__u32 addr_width;		/* bits */
	__u32 __reserved;
};

/* HWPT data, ARM SMMUv3 nested STE (IOMMU_HWPT_DATA_ARM_SMMUV3) */

struct iommu_hwpt_arm_smmuv3 {
	__aligned_u64 ste[2];		/* little-endian, STE words 0-1 */
};

/* HWPT data, AMD guest page table (IOMMU_HWPT_DATA_AMD_GUEST) */

struct iommu_hwpt_amd_guest {
	__aligned_u64 dte[4];		/* guest device table entry */
};

/* IOMMU_GET_HW_INFO: query IOMMU hardware information for a device */

enum iommu_hw_info_type {
	IOMMU_HW_INFO_TYPE_NONE = 0,
	IOMMU_HW_INFO_TYPE_DEFAULT = 0,
	IOMMU_HW_INFO_TYPE_INTEL_VTD = 1,
	IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2,
	IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3,
	IOMMU_HW_INFO_TYPE_AMD = 4,
};

enum iommufd_hw_capabilities {
	IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0,
	IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1,
	IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2,
	IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3,
};

enum iommufd_hw_info_flags {
	IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0,
};

struct iommu_hw_info {
	__u32 size;
	__u32 flags;			/* enum iommufd_hw_info_flags */
	__u32 dev_id;
	__u32 data_len;			/* in: buffer bytes; out: bytes supported */
	__aligned_u64 data_uptr;
	union {
		__u32 in_data_type;	/* enum iommu_hw_info_type */
		__u32 out_data_type;	/* enum iommu_hw_info_type */
	};
	__u8 out_max_pasid_log2;	/* PASID width in bits, 0: no PASID */
	__u8 __reserved[3];
	__aligned_u64 out_capabilities;	/* enum iommufd_hw_capabilities */
};

/* HW info, Intel VT-d (IOMMU_HW_INFO_TYPE_INTEL_VTD) */

enum iommu_hw_info_vtd_flags {
	IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0,
};

struct iommu_hw_info_vtd {
	__u32 flags;			/* enum iommu_hw_info_vtd_flags */
	__u32 __reserved;
	__aligned_u64 cap_reg;
	__aligned_u64 ecap_reg;
};

/* HW info, ARM SMMUv3 (IOMMU_HW_INFO_TYPE_ARM_SMMUV3) */

enum iommu_hw_info_arm_smmuv3_flags {
	IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI = 1 << 0,
};

struct iommu_hw_info_arm_smmuv3 {
	__u32 flags;			/* enum iommu_hw_info_arm_smmuv3_flags */
	__u32 __reserved;
	__u32 idr[6];			/* SMMU_IDR0..5 */
	__u32 iidr;
	__u32 aidr;
};

/* HW info, NVIDIA Tegra241 CMDQV (IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV) */

struct iommu_hw_info_tegra241_cmdqv {
	__u32 flags;
	__u8 version;
	__u8 log2vcmdqs;
	__u8 log2vsids;
	__u8 __reserved;
};

/* HW info, AMD (IOMMU_HW_INFO_TYPE_AMD) */

struct iommu_hw_info_amd {
	__aligned_u64 efr;
	__aligned_u64 efr2;
};

/* IOMMU_HWPT_SET_DIRTY_TRACKING: switch dirty tracking on/off */

enum iommufd_hwpt_set_dirty_tracking_flags {
	IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1,
};

struct iommu_hwpt_set_dirty_tracking {
	__u32 size;
	__u32 flags;		/* enum iommufd_hwpt_set_dirty_tracking_flags */
	__u32 hwpt_id;
	__u32 __reserved;
};

/* IOMMU_HWPT_GET_DIRTY_BITMAP: read (and clear) dirty bits of a range */

enum iommufd_hwpt_get_dirty_bitmap_flags {
	IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1,
};

struct iommu_hwpt_get_dirty_bitmap {
	__u32 size;
	__u32 hwpt_id;
	__u32 flags;		/* enum iommufd_hwpt_get_dirty_bitmap_flags */
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;		/* bytes */
	__aligned_u64 page_size;	/* bytes per bitmap bit */
	__aligned_u64 data;		/* __u64 bitmap[] */
};

/* IOMMU_HWPT_INVALIDATE: invalidate caches of a nested HWPT or vIOMMU */

enum iommu_hwpt_invalidate_data_type {
	IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0,
	IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1,
};

struct iommu_hwpt_invalidate {
	__u32 size;
	__u32 hwpt_id;			/* nested HWPT or vIOMMU */
	__aligned_u64 data_uptr;	/* entry array */
	__u32 data_type;		/* enum iommu_hwpt_invalidate_data_type */
	__u32 entry_len;		/* bytes per entry */
	__u32 entry_num;		/* in: entries; out: entries handled */
	__u32 __reserved;
};

/* Invalidation entry, Intel VT-d stage 1 (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1) */

enum iommu_hwpt_vtd_s1_invalidate_flags {
	IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0,
};

struct iommu_hwpt_vtd_s1_invalidate {
	__aligned_u64 addr;		/* 4 KiB aligned */
	__aligned_u64 npages;		/* 4 KiB pages */
	__u32 flags;		/* enum iommu_hwpt_vtd_s1_invalidate_flags */
	__u32 __reserved;
};

/* Invalidation entry, ARM SMMUv3 (IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3) */

struct iommu_viommu_arm_smmuv3_invalidate {
	__aligned_u64 cmd[2];		/* little-endian CMDQ command */
};

/* Fault queue: page request records read from, responses written to the fd */

enum iommu_hwpt_pgfault_flags {
	IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0,
	IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1,
};

enum iommu_hwpt_pgfault_perm {
	IOMMU_PGFAULT_PERM_READ = 1 << 0,
	IOMMU_PGFAULT_PERM_WRITE = 1 << 1,
	IOMMU_PGFAULT_PERM_EXEC = 1 << 2,
	IOMMU_PGFAULT_PERM_PRIV = 1 << 3,
};

struct iommu_hwpt_pgfault {
	__u32 flags;			/* enum iommu_hwpt_pgfault_flags */
	__u32 dev_id;
	__u32 pasid;
	__u32 grpid;
	__u32 perm;			/* enum iommu_hwpt_pgfault_perm */
	__u32 __reserved;
	__aligned_u64 addr;
	__u32 length;			/* bytes, hint (0: none) */
	__u32 cookie;
};

enum iommufd_page_response_code {
	IOMMUFD_PAGE_RESP_SUCCESS = 0,
	IOMMUFD_PAGE_RESP_INVALID = 1,
};

struct iommu_hwpt_page_response {
	__u32 cookie;
	__u32 code;			/* enum iommufd_page_response_code */
};

/* IOMMU_FAULT_QUEUE_ALLOC: allocate a fault queue object and fd */

struct iommu_fault_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_fault_id;
	__u32 out_fault_fd;
};

/* IOMMU_VIOMMU_ALLOC: allocate a virtual IOMMU */

enum iommu_viommu_type {
	IOMMU_VIOMMU_TYPE_DEFAULT = 0,
	IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2,
};

struct iommu_viommu_alloc {
	__u32 size;
	__u32 flags;
	__u32 type;			/* enum iommu_viommu_type */
	__u32 dev_id;
	__u32 hwpt_id;			/* nesting parent HWPT */
	__u32 out_viommu_id;
	__u32 data_len;			/* bytes */
	__u32 __reserved;
	__aligned_u64 data_uptr;
};

/* vIOMMU data, NVIDIA Tegra241 CMDQV (IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV) */

struct iommu_viommu_tegra241_cmdqv {
	__aligned_u64 out_vintf_mmap_offset;
	__aligned_u64 out_vintf_mmap_length;	/* bytes */
};

/* IOMMU_VDEVICE_ALLOC: allocate a virtual device on a vIOMMU */

struct iommu_vdevice_alloc {
	__u32 size;
	__u32 viommu_id;
	__u32 dev_id;
	__u32 out_vdevice_id;
	__aligned_u64 virt_id;		/* e.g. vSID, vDeviceID, vRID */
};

/* IOMMU_VEVENTQ_ALLOC: virtual event queue; records read from the fd */

enum iommu_veventq_flag {
	IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1U << 0,
};

enum iommu_veventq_type {
	IOMMU_VEVENTQ_TYPE_DEFAULT = 0,
	IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2,
};

struct iommu_veventq_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;			/* enum iommu_veventq_type */
	__u32 veventq_depth;		/* events */
	__u32 out_veventq_id;
	__u32 out_veventq_fd;
	__u32 __reserved;
};

/* Header preceding every record read from a vEVENTQ fd */

struct iommufd_vevent_header {
	__u32 flags;			/* enum iommu_veventq_flag */
	__u32 sequence;			/* 0 .. INT_MAX, then wraps to 0 */
};

/* vEVENT record, ARM SMMUv3 (IOMMU_VEVENTQ_TYPE_ARM_SMMUV3) */

struct iommu_vevent_arm_smmuv3 {
	__aligned_u64 evt[4];		/* little-endian event record */
};

/* vEVENT record, NVIDIA Tegra241 CMDQV (IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV) */

struct iommu_vevent_tegra241_cmdqv {
	__aligned_u64 lvcmdq_err_map[2];	/* little-endian */
};

/* IOMMU_HW_QUEUE_ALLOC: allocate a HW-accelerated queue on a vIOMMU */

enum iommu_hw_queue_type {
	IOMMU_HW_QUEUE_TYPE_DEFAULT = 0,
	IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1,
};

struct iommu_hw_queue_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;			/* enum iommu_hw_queue_type */
	__u32 index;
	__u32 out_hw_queue_id;
	__aligned_u64 nesting_parent_iova;
	__aligned_u64 length;		/* bytes */
};
