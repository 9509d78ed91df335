"""The simulated /sys: layout, the kernel's formats and its errnos."""

from __future__ import annotations

import errno

import pytest

EDU = "0000:00:02.0"
NVME = "0000:00:03.0"
E1000E = "0000:00:04.0"
BRIDGE = "0000:00:05.0"
E1000_A = "0000:01:01.0"
DEV = "/sys/bus/pci/devices"


def test_device_attributes(b):
    d = f"{DEV}/{E1000E}"
    assert b.sysfs_read(f"{d}/vendor") == "0x8086"
    assert b.sysfs_read(f"{d}/device") == "0x10d3"
    assert b.sysfs_read(f"{d}/class") == "0x020000"
    assert b.sysfs_read(f"{d}/subsystem_vendor") == "0x8086"
    assert b.sysfs_read(f"{d}/subsystem_device") == "0x0000"
    assert b.sysfs_read(f"{d}/revision") == "0x00"
    assert b.sysfs_read(f"{d}/numa_node") == "-1"
    assert b.sysfs_read(f"{d}/enable") == "0"
    assert b.sysfs_read(f"{d}/driver_override") == "(null)"
    assert b.sysfs_read(f"{d}/modalias") == "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
    assert b.sysfs_read(f"{d}/reset_method") == "flr pm"
    assert b.sysfs_read(f"{DEV}/{EDU}/config")[:4] == "4\x12\ufffd\x11"


def test_resource_lines(b, system):
    res = b.sysfs_read(f"{DEV}/{E1000E}/resource").split("\n")
    assert len(res) == 13
    dev = system.device(E1000E)
    bar0 = dev.bar_addresses[0]
    assert res[0] == f"0x{bar0:016x} 0x{bar0 + 0x1ffff:016x} 0x0000000000040200"
    io = dev.bar_addresses[2]
    assert res[2] == f"0x{io:016x} 0x{io + 0x1f:016x} 0x0000000000040101"
    assert res[6] == "0x%016x 0x%016x 0x%016x" % (0, 0, 0)
    bridge = b.sysfs_read(f"{DEV}/{BRIDGE}/resource").split("\n")
    assert len(bridge) == 17
    assert bridge[0] == "0x%016x 0x%016x 0x%016x" % (0, 0, 0)


def test_links(b):
    assert b.sysfs_readlink(f"{DEV}/{EDU}") == "../../../devices/pci0000:00/0000:00:02.0"
    assert b.sysfs_readlink(f"{DEV}/{E1000_A}") == \
        "../../../devices/pci0000:00/0000:00:05.0/0000:01:01.0"
    assert b.sysfs_readlink(f"{DEV}/{NVME}/driver") == "../../../bus/pci/drivers/nvme"
    assert b.sysfs_readlink(f"{DEV}/{E1000_A}/driver") == "../../../../bus/pci/drivers/e1000"
    assert b.sysfs_readlink(f"{DEV}/{EDU}/iommu_group") == "../../../kernel/iommu_groups/0"
    assert b.sysfs_readlink(f"{DEV}/{E1000_A}/iommu_group") == "../../../../kernel/iommu_groups/3"
    assert b.sysfs_readlink(f"{DEV}/{EDU}/iommu") == "../../virtual/iommu/dmar0"
    assert b.sysfs_readlink(f"{DEV}/{EDU}/subsystem") == "../../../bus/pci"
    assert b.sysfs_readlink("/sys/bus/pci/drivers/nvme/0000:00:03.0") == \
        "../../../../devices/pci0000:00/0000:00:03.0"
    assert b.sysfs_readlink("/sys/kernel/iommu_groups/3/devices/0000:01:02.0") == \
        "../../../../devices/pci0000:00/0000:00:05.0/0000:01:02.0"
    assert b.sysfs_readlink("/sys/class/iommu/dmar0") == "../../devices/virtual/iommu/dmar0"
    assert b.sysfs_readlink("/sys/bus/pci/drivers/vfio-pci/module") == "../../../../module/vfio_pci"
    assert b.sysfs_basename_of_link(f"{DEV}/{EDU}/driver") is None
    # links are followed for reads and listings, also through ".."
    assert b.sysfs_read(f"{DEV}/{E1000_A}/iommu_group/reserved_regions") == \
        "0x00000000fee00000 0x00000000feefffff msi"
    assert b.sysfs_read(f"{DEV}/{E1000_A}/../vendor") == "0x1b36"
    assert "bind" in b.sysfs_listdir(f"{DEV}/{NVME}/driver")
    assert b.sysfs_listdir("/sys/devices/virtual/iommu/dmar0/devices") == sorted(
        [EDU, NVME, E1000E, BRIDGE, E1000_A, "0000:01:02.0"])


def test_listings(b):
    assert b.sysfs_listdir("/sys/bus/pci/drivers") == sorted(
        ["e1000", "e1000e", "nvme", "pci-stub", "pcieport", "vfio-pci"])
    assert b.sysfs_listdir("/sys/bus/pci/drivers/e1000") == [
        "0000:01:01.0", "0000:01:02.0", "bind", "new_id", "remove_id", "unbind"]
    assert b.sysfs_listdir("/sys/kernel/iommu_groups") == ["0", "1", "2", "3"]
    assert b.sysfs_listdir("/sys/kernel/iommu_groups/0") == ["devices", "reserved_regions", "type"]
    assert b.sysfs_read("/sys/kernel/iommu_groups/0/type") == "DMA-FQ"
    assert b.sysfs_listdir("/sys/module") == sorted(
        ["iommufd", "pci_stub", "vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core"])
    assert b.sysfs_listdir("/sys/module/vfio_iommu_type1/parameters") == [
        "allow_unsafe_interrupts", "disable_hugepages", "dma_entry_limit"]
    assert b.sysfs_read("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit") == "65535"
    assert b.sysfs_read("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode") == "N"
    children = b.sysfs_listdir(f"/sys/devices/pci0000:00/{BRIDGE}")
    assert E1000_A in children and "secondary_bus_number" in children
    assert b.sysfs_read(f"/sys/devices/pci0000:00/{BRIDGE}/secondary_bus_number") == "1"


def test_errnos(b, v):
    e = v.errno_of
    assert e(lambda: b.sysfs_read(f"{DEV}/{EDU}/nope")) == errno.ENOENT
    assert e(lambda: b.sysfs_read("/sys/bus/pci/devices/0000:07:00.0/vendor")) == errno.ENOENT
    assert e(lambda: b.sysfs_read(f"{DEV}/{EDU}/vendor/x")) == errno.ENOTDIR
    assert e(lambda: b.sysfs_listdir(f"{DEV}/{EDU}/vendor")) == errno.ENOTDIR
    assert e(lambda: b.sysfs_read(f"{DEV}/{EDU}")) == errno.EISDIR
    assert e(lambda: b.sysfs_write(f"{DEV}/{EDU}", "1")) == errno.EISDIR
    assert e(lambda: b.sysfs_write(f"{DEV}/{EDU}/vendor", "0x1")) == errno.EACCES
    assert e(lambda: b.sysfs_write(f"{DEV}/{EDU}/config", "x")) == errno.EACCES
    assert e(lambda: b.sysfs_write("/sys/kernel/iommu_groups/0/reserved_regions", "x")) == errno.EACCES
    assert e(lambda: b.sysfs_read("/sys/bus/pci/drivers/vfio-pci/bind")) == errno.EACCES
    assert e(lambda: b.sysfs_read("/sys/bus/pci/drivers_probe")) == errno.EACCES
    assert e(lambda: b.sysfs_readlink(f"{DEV}/{EDU}/vendor")) == errno.EINVAL
    assert e(lambda: b.sysfs_readlink(f"{DEV}/{EDU}/driver")) == errno.ENOENT
    assert e(lambda: b.sysfs_read("relative/path")) == errno.ENOENT
    # /sys/bus/pci/devices/<bdf>/driver is missing while unbound
    with pytest.raises(FileNotFoundError):
        b.sysfs_readlink(f"{DEV}/{EDU}/driver")


def test_driver_override(b, v, system):
    path = f"{DEV}/{EDU}/driver_override"
    b.sysfs_write(path, "vfio-pci\n")
    assert b.sysfs_read(path) == "vfio-pci"
    assert system.device(EDU).driver_override == "vfio-pci"
    b.sysfs_write(path, "pci-stub\nignored")
    assert b.sysfs_read(path) == "pci-stub"
    b.sysfs_write(path, "\n")
    assert b.sysfs_read(path) == "(null)"
    assert v.errno_of(lambda: b.sysfs_write(path, "x" * 4095)) == errno.EINVAL
    # a zero-length write is a no-op
    b.sysfs_write(path, "vfio-pci")
    b.sysfs_write(path, "")
    assert b.sysfs_read(path) == "vfio-pci"


def test_numa_node_and_enable(b, v, system):
    e = v.errno_of
    node = f"{DEV}/{EDU}/numa_node"
    b.sysfs_write(node, "0")
    assert b.sysfs_read(node) == "0"
    b.sysfs_write(node, "-1")
    assert e(lambda: b.sysfs_write(node, "1")) == errno.EINVAL  # not online
    assert e(lambda: b.sysfs_write(node, "-2")) == errno.EINVAL
    assert e(lambda: b.sysfs_write(node, "zero")) == errno.EINVAL
    enable = f"{DEV}/{EDU}/enable"
    b.sysfs_write(enable, "1")
    assert b.sysfs_read(enable) == "1"
    b.sysfs_write(enable, "0")
    assert e(lambda: b.sysfs_write(enable, "0")) == errno.EIO
    assert e(lambda: b.sysfs_write(enable, "yes")) == errno.EINVAL
    assert e(lambda: b.sysfs_write(f"{DEV}/{NVME}/enable", "1")) == errno.EBUSY


def test_reset_method(b, v, system):
    e = v.errno_of
    path = f"{DEV}/{E1000E}/reset_method"
    b.sysfs_write(path, "pm")
    assert b.sysfs_read(path) == "pm"
    assert e(lambda: b.sysfs_write(path, "bogus")) == errno.EINVAL
    # bus reset is not one of this device's methods
    assert e(lambda: b.sysfs_write(path, "flr bus")) == errno.EINVAL
    assert b.sysfs_read(path) == "pm"
    b.sysfs_write(path, "\n")
    assert b.sysfs_read(path) == ""
    assert e(lambda: b.sysfs_write(f"{DEV}/{E1000E}/reset", "1")) == errno.ENOTTY
    b.sysfs_write(path, "default")
    assert b.sysfs_read(path) == "flr pm"
    b.sysfs_write(f"{DEV}/{E1000E}/reset", "1")
    assert e(lambda: b.sysfs_write(f"{DEV}/{E1000E}/reset", "2")) == errno.EINVAL
    # a device without reset methods has neither attribute
    assert not b.exists(f"{DEV}/{EDU}/reset_method")


def test_iommu_group_type(b, v, system):
    e = v.errno_of
    path = "/sys/kernel/iommu_groups/0/type"
    assert e(lambda: b.sysfs_write(path, "fast")) == errno.EINVAL
    b.sysfs_write(path, "identity")
    assert b.sysfs_read(path) == "identity"
    b.sysfs_write(path, "auto\n")
    assert b.sysfs_read(path) == "DMA-FQ"
    # a group with a DMA-capable driver bound cannot change
    assert e(lambda: b.sysfs_write("/sys/kernel/iommu_groups/1/type", "identity")) == errno.EPERM


def test_module_parameters(b, v, system):
    e = v.errno_of
    limit = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit"
    b.sysfs_write(limit, "100\n")
    assert b.sysfs_read(limit) == "100"
    assert system.type1_params["dma_entry_limit"] == 100
    assert e(lambda: b.sysfs_write(limit, "-1")) == errno.EINVAL
    assert e(lambda: b.sysfs_write(limit, "lots")) == errno.EINVAL
    noiommu = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
    b.sysfs_write(noiommu, "1")
    assert system.noiommu and b.sysfs_read(noiommu) == "Y"
    b.sysfs_write(noiommu, "off")
    assert not system.noiommu
    assert e(lambda: b.sysfs_write(noiommu, "maybe")) == errno.EINVAL
    assert e(lambda: b.sysfs_write("/sys/module/vfio_pci/parameters/disable_denylist", "Y")) == errno.EACCES


def test_vfio_dev_directory(b, v, system):
    assert not b.exists(f"{DEV}/{EDU}/vfio-dev")
    v.bind_vfio(EDU)
    assert b.sysfs_listdir(f"{DEV}/{EDU}/vfio-dev") == ["vfio0"]
    assert b.sysfs_read(f"{DEV}/{EDU}/vfio-dev/vfio0/dev").endswith(":0")


def test_machine_without_iommu(make_system):
    b = make_system("default", iommu=None).backend
    assert b.sysfs_listdir("/sys/kernel/iommu_groups") == []
    assert b.sysfs_listdir("/sys/class/iommu") == []
    assert not b.exists(f"{DEV}/{EDU}/iommu_group")
    assert "virtual" in b.sysfs_listdir("/sys/devices")
    assert b.sysfs_listdir("/sys/devices/virtual") == ["misc"]  # no iommu, no vfio groups


def test_drivers_autoprobe(b):
    assert b.sysfs_read("/sys/bus/pci/drivers_autoprobe") == "1"
    b.sysfs_write("/sys/bus/pci/drivers_autoprobe", "0")
    assert b.sysfs_read("/sys/bus/pci/drivers_autoprobe") == "0"


def test_vfio_classes(b, v, system):
    # drivers/vfio/group.c and vfio_main.c register "vfio" and "vfio-dev" with the module
    assert {"iommu", "vfio", "vfio-dev", "misc"} <= set(b.sysfs_listdir("/sys/class"))
    assert b.sysfs_listdir("/sys/class/vfio") == [] == b.sysfs_listdir("/sys/class/vfio-dev")
    assert "vfio" not in b.sysfs_listdir("/sys/devices/virtual")
    assert b.sysfs_listdir("/sys/class/misc") == ["iommu", "vfio"]
    assert b.sysfs_read("/sys/class/misc/vfio/dev") == "10:196"
    v.bind_vfio(EDU)
    group = b.sysfs_basename_of_link(f"{DEV}/{EDU}/iommu_group")
    assert b.sysfs_listdir("/sys/class/vfio") == [group]
    assert b.sysfs_readlink(f"/sys/class/vfio/{group}") == f"../../devices/virtual/vfio/{group}"
    assert b.sysfs_read(f"/sys/class/vfio/{group}/dev").startswith("238:")
    assert b.sysfs_readlink(f"/sys/devices/virtual/vfio/{group}/subsystem") == "../../../../class/vfio"
    assert b.sysfs_listdir("/sys/class/vfio-dev") == ["vfio0"]
    assert b.sysfs_readlink("/sys/class/vfio-dev/vfio0") == \
        f"../../devices/pci0000:00/{EDU}/vfio-dev/vfio0"
    assert b.sysfs_read("/sys/class/vfio-dev/vfio0/dev") == \
        b.sysfs_read(f"{DEV}/{EDU}/vfio-dev/vfio0/dev")
    devices = b.sysfs_read("/proc/devices")
    assert "237 vfio-dev" in devices and "238 vfio" in devices
    b.sysfs_write(f"/sys/bus/pci/drivers/vfio-pci/unbind", EDU)
    assert b.sysfs_listdir("/sys/class/vfio") == [] == b.sysfs_listdir("/sys/class/vfio-dev")


def test_no_vfio_classes_without_the_module(make_system):
    b = make_system("default", modules={"vfio": False, "vfio_pci": False,
                                        "vfio_iommu_type1": False}).backend
    assert "vfio" not in b.sysfs_listdir("/sys/class")
    assert "vfio-dev" not in b.sysfs_listdir("/sys/class")
    assert b.sysfs_listdir("/sys/class/misc") == ["iommu"]
    assert "vfio" not in b.sysfs_read("/proc/devices")


def test_kernel_files(b, system):
    assert b.sysfs_read("/proc/sys/kernel/osrelease") == "7.3.0-fake"
    config = b.sysfs_read("/boot/config-7.3.0-fake")
    assert "CONFIG_VFIO=m" in config and "CONFIG_VFIO_DEVICE_CDEV=y" in config
    assert "# CONFIG_IOMMUFD_VFIO_CONTAINER is not set" not in config  # unlisted: not set
    assert b.sysfs_listdir("/lib/modules") == ["7.3.0-fake"]
    assert b.sysfs_listdir("/lib/modules/7.3.0-fake") == ["modules.builtin", "modules.dep"]
    assert "kernel/drivers/vfio/pci/vfio-pci.ko: " in b.sysfs_read(
        "/lib/modules/7.3.0-fake/modules.dep")
    assert b.sysfs_read("/lib/modules/7.3.0-fake/modules.builtin") == ""
    with pytest.raises(OSError) as info:
        b.sysfs_read("/proc/cmdline")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        b.sysfs_read("/lib/modules")
    assert info.value.errno == errno.EISDIR
    system.sysfs.kernel = {"release": "6.1.0", "config": {"CONFIG_VFIO": "n"},
                           "modules_dir": False}
    assert b.sysfs_read("/boot/config-6.1.0").endswith("# CONFIG_VFIO is not set")
    assert not system.sysfs.exists("/lib/modules")


def test_reset_methods_follow_the_position(make_system):
    # model-less devices are taken at their word for flr and pm; a bus
    # reset needs a bridge above and no other function on the bus
    devices = [
        {"bdf": "00:02.0", "vendor": "0x1234", "device": "0x0001", "reset_methods": ["flr", "bus"]},
        {"bdf": "00:1c.0", "model": "pcie-root-port", "bridge": {"secondary_bus": 1}},
        {"bdf": "01:00.0", "vendor": "0x1234", "device": "0x0002", "reset_methods": ["pm", "bus"]},
        {"bdf": "00:1d.0", "model": "pcie-root-port", "bridge": {"secondary_bus": 2},
         "reset_methods": ["bus"]},
        {"bdf": "02:00.0", "vendor": "0x1234", "device": "0x0003", "reset_methods": ["bus"]},
        {"bdf": "02:00.1", "vendor": "0x1234", "device": "0x0003", "reset_methods": ["bus"]},
    ]
    b = make_system({"devices": devices}).backend

    def methods(bdf: str) -> str | None:
        path = f"{DEV}/{bdf}/reset_method"
        return b.sysfs_read(path) if b.exists(path) else None

    assert methods("0000:00:02.0") == "flr"  # root bus: no bus reset
    assert methods("0000:01:00.0") == "pm bus"  # alone below its root port
    assert methods("0000:00:1d.0") is None  # a bridge with a bus of its own, on the root bus
    assert methods("0000:02:00.0") is None and methods("0000:02:00.1") is None  # two functions
    e = lambda fn: pytest.raises(OSError, fn).value.errno  # noqa: E731
    assert e(lambda: b.sysfs_write(f"{DEV}/0000:00:02.0/reset_method", "bus")) == errno.EINVAL
    b.sysfs_write(f"{DEV}/0000:01:00.0/reset_method", "bus")
    assert methods("0000:01:00.0") == "bus"
    b.sysfs_write(f"{DEV}/0000:01:00.0/reset_method", "default")
    assert methods("0000:01:00.0") == "pm bus"


SRIOV = {"devices": [
    {"bdf": "00:1c.0", "model": "pcie-root-port", "bridge": {"secondary_bus": 3}},
    {"bdf": "03:00.0", "vendor": "0x8086", "device": "0x1572", "class": "0x020000",
     "driver": "i40e", "sriov_totalvfs": 8},
    {"bdf": "03:02.1", "vendor": "0x8086", "device": "0x154c", "class": "0x020000",
     "driver": "iavf", "physfn": "03:00.0"},
    {"bdf": "03:02.0", "vendor": "0x8086", "device": "0x154c", "class": "0x020000",
     "physfn": "0000:03:00.0"},
]}


def test_sriov_links_and_attributes(make_system):
    from pyvfio.setup import devices

    system = make_system(SRIOV)
    b = system.backend
    pf, vf0, vf1 = "0000:03:00.0", "0000:03:02.0", "0000:03:02.1"
    assert b.sysfs_read(f"{DEV}/{pf}/sriov_totalvfs") == "8"
    assert b.sysfs_read(f"{DEV}/{pf}/sriov_numvfs") == "2"
    assert b.sysfs_readlink(f"{DEV}/{pf}/virtfn0") == f"../{vf0}"
    assert b.sysfs_readlink(f"{DEV}/{pf}/virtfn1") == f"../{vf1}"
    assert b.sysfs_readlink(f"{DEV}/{vf1}/physfn") == f"../{pf}"
    assert not b.exists(f"{DEV}/{vf0}/sriov_totalvfs") and not b.exists(f"{DEV}/{pf}/physfn")
    info = devices.pci_device(pf, b)
    assert (info.sriov_totalvfs, info.sriov_numvfs, info.virtfns) == (8, 2, (vf0, vf1))
    assert devices.pci_device(vf1, b).physfn == pf and devices.pci_device(vf1, b).is_vf
    # sriov_numvfs_store: the same number is a no-op; the fake's drivers
    # have no sriov_configure, so a change fails like theirs would
    e = lambda fn: pytest.raises(OSError, fn).value.errno  # noqa: E731
    b.sysfs_write(f"{DEV}/{pf}/sriov_numvfs", "2")
    assert e(lambda: b.sysfs_write(f"{DEV}/{pf}/sriov_numvfs", "9")) == errno.ERANGE
    assert e(lambda: b.sysfs_write(f"{DEV}/{pf}/sriov_numvfs", "x")) == errno.EINVAL
    assert e(lambda: b.sysfs_write(f"{DEV}/{pf}/sriov_numvfs", "0")) == errno.ENOENT
    # the system's own topology keeps the links
    again = make_system(system.to_topology())
    assert again.backend.sysfs_readlink(f"{DEV}/{vf0}/physfn") == f"../{pf}"


def test_sriov_topology_errors():
    from pyvfio.fake.machine.topology import TopologyError, load

    def bad(change, match):
        topo = {"devices": [dict(d) for d in SRIOV["devices"]]}
        change(topo["devices"])
        with pytest.raises(TopologyError, match=match):
            load(topo)

    bad(lambda d: d[2].update(physfn="03:09.0"), "no device 0000:03:09.0")
    bad(lambda d: d[2].update(physfn="00:1c.0"), "is not an SR-IOV PF")
    bad(lambda d: d[1].update(sriov_totalvfs=1), "2 VFs name it")
    bad(lambda d: d[1].update(sriov_numvfs=3), "sriov_numvfs: 3, but 2")
    bad(lambda d: d[2].update(sriov_totalvfs=2), "cannot be an SR-IOV PF itself")
    bad(lambda d: d[0].update(sriov_numvfs=1), "only an SR-IOV PF")
    topo = load(SRIOV)
    assert [d.get("sriov_numvfs") for d in topo["devices"]] == [None, 2, None, None]
    assert topo["devices"][2]["physfn"] == "0000:03:00.0"
