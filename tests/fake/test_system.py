"""The simulated machine: topologies, the driver core, IOMMU group DMA
ownership, device nodes and device DMA."""

from __future__ import annotations

import errno
import json
import os

import pytest

from pyvfio._uapi import ffi
from pyvfio.fake.core import FakeFile, IoDomain, IommuFault
from pyvfio.fake.machine.iommu import ReservedRegion, merge_reserved_regions
from pyvfio.fake.machine.pci_device import PciDevice
from pyvfio.fake.machine.system import System
from pyvfio.fake.machine.topology import TopologyError, load, shipped

EDU = "0000:00:02.0"
NVME = "0000:00:03.0"
E1000E = "0000:00:04.0"
BRIDGE = "0000:00:05.0"
E1000_A = "0000:01:01.0"
E1000_B = "0000:01:02.0"
PAGE = 4096


# -- topologies ---------------------------------------------------------------------------
def test_shipped_topologies():
    assert {"default", "minimal", "multi-group"} <= set(shipped())
    for name in shipped():
        system = System(name, models=None)
        assert system.topology_name == name
        assert system.devices


def test_default_topology_mirrors_the_test_vm():
    system = System("default", models=None)
    ids = {bdf: (d.vendor, d.device, d.driver) for bdf, d in system.devices.items()}
    assert ids == {
        EDU: (0x1234, 0x11E8, None),
        NVME: (0x1B36, 0x0010, "nvme"),
        E1000E: (0x8086, 0x10D3, "e1000e"),
        BRIDGE: (0x1B36, 0x000E, None),
        E1000_A: (0x8086, 0x100E, "e1000"),
        E1000_B: (0x8086, 0x100E, "e1000"),
    }
    groups = {g.id: [d.bdf for d in g.devices] for g in system.groups.values()}
    assert groups == {0: [EDU], 1: [NVME], 2: [E1000E], 3: [BRIDGE, E1000_A, E1000_B]}
    assert system.device(E1000_A).parent is system.device(BRIDGE)
    assert system.memlock_limit == 64 << 20
    assert system.iommu is not None and system.iommu.pgsize_bitmap == 0x40201000


def test_multi_group_topology():
    system = System("multi-group", models=None)
    group = system.group(1)
    assert [d.driver for d in group.devices] == ["vfio-pci", "vfio-pci", "e1000e"]
    assert not group.viable
    assert system.group(0).viable
    assert system.backend.exists("/dev/vfio/1")


def test_topology_from_file_and_dict(tmp_path):
    topo = {"name": "tiny", "devices": [{"bdf": "00:02.0", "model": "generic",
                                         "vendor": "0x1af4", "device": "0x1041"}]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(topo))
    for system in (System(topo, models=None), System.from_file(path, models=None),
                   System(str(path), models=None)):
        assert list(system.devices) == ["0000:00:02.0"]
        assert system.device("00:02.0").vendor == 0x1AF4
        assert system.device("00:02.0").class_code == 0xFF0000


def test_a_file_loaded_again_is_a_fresh_copy_of_its_current_contents(tmp_path):
    """Loading a file checks it once per contents: each load is a copy of
    its own, and a file rewritten at once (same size) is read anew."""
    def topo(vendor):
        return {"name": "tiny", "devices": [{"bdf": "00:02.0", "model": "generic",
                                             "vendor": vendor, "device": "0x1041"}]}

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(topo("0x1af4")))
    first = load(str(path))
    first["devices"][0]["vendor"] = 0x1234
    first["devices"].append({"bdf": "00:03.0"})
    again = load(str(path))
    assert again["devices"][0]["vendor"] == 0x1AF4 and len(again["devices"]) == 1
    path.write_text(json.dumps(topo("0x1af5")))
    assert load(str(path))["devices"][0]["vendor"] == 0x1AF5
    path.write_text("{")
    with pytest.raises(TopologyError, match="invalid JSON"):
        load(str(path))


@pytest.mark.parametrize("topo, message", [
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}], "extra": 1}, "unknown key"),
    ({"devices": [{"bdf": "zz:02.0", "model": "edu"}]}, "not a PCI address"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}, {"bdf": "0000:00:02.0", "model": "edu"}]},
     "listed twice"),
    ({"devices": [{"bdf": "00:02.0", "model": "generic"}]}, "'vendor' is required"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "colour": "red"}]}, "unknown key"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}], "groups": [["00:03.0"]]}, "no device"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}], "groups": [["00:02.0"], ["00:02.0"]]},
     "already in groups"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}],
      "iommu": {"reserved_regions": [{"start": 0, "last": 10, "type": "odd"}]}}, "not one of"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}], "iommu": {"aperture": [10, 5]}},
     "must be above"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "numa_node": 3}]}, "not online"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "bars": [{"index": 0, "size": 3000}]}]},
     "power of two"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "reset_methods": ["magic"]}]}, "reset_methods"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "default_driver": "vfio-pci"}]},
     "driver_override or new_id"),
    ({"devices": [{"bdf": "00:05.0", "model": "generic", "vendor": 1, "device": 2,
                   "class": 0x060400, "bridge": {"secondary_bus": 1, "conventional": True}},
                  {"bdf": "01:01.0", "model": "edu"}],
      "groups": [["00:05.0"]]}, "behind the conventional PCI bridge"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu"}], "iommu": None, "groups": [["00:02.0"]]},
     "without an IOMMU"),
    ({"devices": "nope"}, "devices"),
    ({"devices": [{"bdf": "00:02.0", "model": "edu", "driver": "vfio-pci"}],
      "modules": {"vfio_pci": False}}, "vfio-pci is not loaded"),
])
def test_topology_validation(topo, message):
    with pytest.raises(TopologyError, match=message):
        System(topo, models=None)


def test_unknown_shipped_name_and_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="no shipped topology"):
        load("no-such-machine")
    with pytest.raises(TopologyError, match="no topology file"):
        load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TopologyError, match="invalid JSON"):
        load(str(bad))


def test_initial_bind_failure_is_a_topology_error():
    topo = {"devices": [{"bdf": "00:05.0", "model": "generic", "vendor": 1, "device": 2,
                         "class": 0x060400, "driver": "vfio-pci"}]}
    with pytest.raises(TopologyError, match="binding vfio-pci fails"):
        System(topo, models=None)


def test_group_derivation_and_explicit_ids():
    topo = {"devices": [
        {"bdf": "00:02.0", "model": "edu"},
        {"bdf": "00:05.0", "model": "generic", "vendor": 1, "device": 2, "class": 0x060400,
         "bridge": {"secondary_bus": 1, "conventional": True}},
        {"bdf": "01:01.0", "model": "edu"},
        {"bdf": "00:06.0", "model": "generic", "vendor": 1, "device": 3, "class": 0x060400,
         "default_driver": "pcieport", "driver": "pcieport", "bridge": {"secondary_bus": 2}},
        {"bdf": "02:00.0", "model": "edu"},
        {"bdf": "00:07.0", "model": "edu"},
    ], "groups": [{"id": 9, "devices": ["00:07.0"]}]}
    system = System(topo, models=None)
    groups = {g.id: [d.bdf for d in g.devices] for g in system.groups.values()}
    assert groups == {
        9: ["0000:00:07.0"],
        0: ["0000:00:02.0"],
        1: ["0000:00:05.0", "0000:01:01.0"],
        2: ["0000:00:06.0"],
        3: ["0000:02:00.0"],
    }
    # a PCIe port does no DMA: its group stays viable
    assert system.device("00:06.0").driver == "pcieport"
    assert system.group(2).viable


@pytest.mark.parametrize("name", ["default", "minimal", "multi-group"])
def test_to_topology_round_trips(name):
    system = System(name, models=None)
    topo = system.to_topology()
    again = System(topo, models=None)
    assert again.to_topology() == topo
    assert json.loads(json.dumps(topo)) == topo


def test_to_topology_records_the_current_state(make_system, vfio_helper):
    system = make_system("default")
    v = vfio_helper(system.backend)
    v.bind_vfio(E1000E)
    system.memlock_limit = 1 << 30
    topo = system.to_topology()
    assert topo["memlock_limit"] == 1 << 30
    dev = next(d for d in topo["devices"] if d["bdf"] == E1000E)
    assert dev["driver"] == "vfio-pci" and dev["default_driver"] == "e1000e"
    again = System(topo, models=None)
    assert again.device(E1000E).driver == "vfio-pci"
    assert again.backend.exists("/dev/vfio/2")


def test_merge_reserved_regions():
    rr = ReservedRegion
    merged = merge_reserved_regions([
        rr(0x2000, 0x2FFF, "reserved"), rr(0x1000, 0x1FFF, "reserved"),
        rr(0x1800, 0x2800, "direct"), rr(0x10000, 0x10FFF, "msi"), rr(0x10000, 0x10FFF, "msi"),
    ])
    assert merged == [rr(0x1000, 0x2FFF, "reserved"), rr(0x1800, 0x2800, "direct"),
                      rr(0x10000, 0x10FFF, "msi")]


# -- the DMA ownership API ------------------------------------------------------------------------
def test_group_dma_owner_claims(make_system):
    system = make_system("default")
    group = system.group(0)  # edu, no driver
    edu = system.device(EDU)
    owner, other = object(), object()
    assert not group.dma_owner_claimed()
    group.claim_dma_owner(owner)
    assert group.dma_owner_claimed() and group.viable
    with pytest.raises(OSError) as info:
        group.claim_dma_owner(other)
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        group.claim_dma_owner(owner)  # the group API does not nest
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        group.device_claim_dma_owner(edu, other)
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        group.use_default_domain(edu)
    assert info.value.errno == errno.EBUSY
    group.release_dma_owner()
    assert not group.dma_owner_claimed()
    with pytest.raises(OSError) as info:
        group.claim_dma_owner(None)
    assert info.value.errno == errno.EINVAL


def test_device_dma_owner_claims_nest(make_system):
    system = make_system("default")
    group = system.group(3)
    for bdf in (E1000_A, E1000_B):
        system.backend.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", bdf)
    a, bb = system.device(E1000_A), system.device(E1000_B)
    ictx = object()
    group.device_claim_dma_owner(a, ictx)
    group.device_claim_dma_owner(bb, ictx)
    assert group.owner_cnt == 2
    group.device_release_dma_owner(a)
    assert group.owner is ictx
    group.device_release_dma_owner(bb)
    assert group.owner is None and group.owner_cnt == 0


def test_kernel_drivers_block_user_ownership(make_system):
    system = make_system("default")
    group = system.group(1)  # nvme bound
    assert group.owner_cnt == 1 and not group.viable
    with pytest.raises(OSError) as info:
        group.claim_dma_owner(object())
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        group.device_claim_dma_owner(system.device(NVME), object())
    assert info.value.errno == errno.EPERM
    system.backend.sysfs_write("/sys/bus/pci/drivers/nvme/unbind", NVME)
    assert group.owner_cnt == 0 and group.viable


class MapAll(IoDomain):
    """Identity-maps IOVA onto one user buffer."""

    def __init__(self, base: int, size: int, writable: bool = True) -> None:
        self.base, self.size, self.writable = base, size, writable
        self.dirty: list[tuple[int, int]] = []

    def translate(self, iova, length, write):
        if iova + length > self.size:
            raise IommuFault(iova, length, write, "outside the test domain")
        if write and not self.writable:
            raise IommuFault(iova, length, write, "read-only")
        return [(self.base + iova, length)]

    def note_dirty(self, iova, length):
        self.dirty.append((iova, length))


def test_pasid_attachments_block_ownership_changes(make_system):
    system = make_system("default")
    group = system.group(0)
    edu = system.device(EDU)
    owner = object()
    group.device_claim_dma_owner(edu, owner)
    edu.pasid_domains[1] = MapAll(0, 0)
    with pytest.raises(OSError) as info:
        group.use_default_domain(edu)
    assert info.value.errno == errno.EBUSY
    del edu.pasid_domains[1]
    group.device_release_dma_owner(edu)


def test_attach_domain_sets_the_devices_page_table(make_system):
    system = make_system("default")
    group = system.group(3)
    for bdf in (E1000_A, E1000_B):
        system.backend.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", bdf)
    owner = object()
    domain = MapAll(0, 0)
    with pytest.raises(OSError) as info:
        group.attach_domain(owner, domain)
    assert info.value.errno == errno.EPERM
    group.claim_dma_owner(owner)
    group.attach_domain(owner, domain)
    assert all(d.domain is domain for d in group.devices)
    with pytest.raises(OSError) as info:
        group.attach_domain(owner, MapAll(0, 0))
    assert info.value.errno == errno.EBUSY
    group.detach_domain(owner)
    assert all(d.domain is None for d in group.devices)
    group.release_dma_owner()


# -- device DMA ------------------------------------------------------------------------------------
def test_dma_read_write_and_faults(make_system):
    system = make_system("default")
    edu = system.device(EDU)
    buf = ffi.new("char[]", 2 * PAGE)
    base = int(ffi.cast("uintptr_t", buf))
    with pytest.raises(IommuFault):
        edu.dma_read(0, 4)
    assert system.faults[-1].bdf == EDU and "blocked" in system.faults[-1].reason
    domain = MapAll(base, 2 * PAGE)
    edu.domain = domain
    edu.dma_write(0x10, b"hello")
    assert ffi.buffer(buf)[0x10:0x15] == b"hello"
    assert edu.dma_read(0x10, 5) == b"hello"
    assert domain.dirty == [(0x10, 5)]
    assert edu.dma_read(0, 0) == b""
    with pytest.raises(IommuFault) as info:
        edu.dma_read(2 * PAGE - 2, 4)
    assert info.value.iova == 2 * PAGE - 2
    assert system.faults[-1].iova == 2 * PAGE - 2 and not system.faults[-1].write
    # PASID-tagged DMA uses the PASID's table
    with pytest.raises(IommuFault):
        edu.dma_read(0, 1, pasid=5)
    edu.pasid_domains[5] = MapAll(base + PAGE, PAGE, writable=False)
    edu.dma_write(0, b"Z")  # through the RID table
    assert edu.dma_read(0, 1, pasid=5) == ffi.buffer(buf)[PAGE:PAGE + 1]
    with pytest.raises(IommuFault):
        edu.dma_write(0, b"x", pasid=5)
    assert len(system.faults) == 4


def test_dma_to_unmapped_user_memory_faults_instead_of_crashing(make_system):
    system = make_system("default")
    edu = system.device(EDU)
    mm = system.backend.mmap(PAGE, 3, 0x22)
    edu.domain = MapAll(mm.address, PAGE)
    edu.dma_write(0, b"ok")
    mm.close()
    with pytest.raises(IommuFault):
        edu.dma_read(0, 2)
    assert "no longer mapped" in system.faults[-1].reason


# -- the driver core through sysfs --------------------------------------------------------------------
def test_bind_and_unbind_errnos(b, v, system):
    drivers = "/sys/bus/pci/drivers"
    e = v.errno_of
    # vfio-pci matches nothing without driver_override or a dynamic ID
    assert e(lambda: b.sysfs_write(f"{drivers}/vfio-pci/bind", EDU)) == errno.ENODEV
    assert e(lambda: b.sysfs_write(f"{drivers}/vfio-pci/bind", "0000:09:00.0")) == errno.ENODEV
    # e1000e does not handle an e1000
    assert e(lambda: b.sysfs_write(f"{drivers}/e1000e/bind", E1000_A)) == errno.ENODEV
    # with an override the match happens, but the device is busy
    b.sysfs_write(f"/sys/bus/pci/devices/{E1000E}/driver_override", "vfio-pci")
    assert e(lambda: b.sysfs_write(f"{drivers}/vfio-pci/bind", E1000E)) == errno.EBUSY
    # the override also stops the device's own driver from matching
    b.sysfs_write(f"{drivers}/e1000e/unbind", E1000E + "\n")
    assert e(lambda: b.sysfs_write(f"{drivers}/e1000e/bind", E1000E)) == errno.ENODEV
    b.sysfs_write(f"{drivers}/vfio-pci/bind", E1000E + "\n")
    assert v.driver(E1000E) == "vfio-pci"
    assert e(lambda: b.sysfs_write(f"{drivers}/e1000e/unbind", E1000E)) == errno.ENODEV
    assert e(lambda: b.sysfs_write(f"{drivers}/vfio-pci/unbind", EDU)) == errno.ENODEV
    # vfio-pci refuses bridges (type 1 header)
    b.sysfs_write(f"/sys/bus/pci/devices/{BRIDGE}/driver_override", "vfio-pci")
    assert e(lambda: b.sysfs_write(f"{drivers}/vfio-pci/bind", BRIDGE)) == errno.EINVAL
    assert v.driver(BRIDGE) is None
    # drivers_probe: the probe failure is not an error, the device stays unbound
    b.sysfs_write("/sys/bus/pci/drivers_probe", BRIDGE)
    assert v.driver(BRIDGE) is None
    assert e(lambda: b.sysfs_write("/sys/bus/pci/drivers_probe", "0000:09:00.0")) == errno.ENODEV


def test_drivers_probe(b, v, system):
    b.sysfs_write("/sys/bus/pci/drivers/nvme/unbind", NVME)
    assert v.driver(NVME) is None
    # without an override the device's own driver takes it
    b.sysfs_write("/sys/bus/pci/drivers_probe", NVME)
    assert v.driver(NVME) == "nvme"
    # a bound device is left alone
    b.sysfs_write("/sys/bus/pci/drivers_probe", NVME)
    assert v.driver(NVME) == "nvme"
    # an override naming an unknown driver: nothing binds, no error
    b.sysfs_write("/sys/bus/pci/drivers/nvme/unbind", NVME)
    b.sysfs_write(f"/sys/bus/pci/devices/{NVME}/driver_override", "no-such-driver")
    b.sysfs_write("/sys/bus/pci/drivers_probe", NVME)
    assert v.driver(NVME) is None
    # edu has no kernel driver
    b.sysfs_write("/sys/bus/pci/drivers_probe", EDU)
    assert v.driver(EDU) is None


def test_new_id_and_remove_id(b, v, system):
    drv = "/sys/bus/pci/drivers/vfio-pci"
    e = v.errno_of
    assert e(lambda: b.sysfs_write(f"{drv}/new_id", "8086")) == errno.EINVAL
    assert e(lambda: b.sysfs_write(f"{drv}/new_id", "zz")) == errno.EINVAL
    # driver_data must be one the static table uses (0 for vfio-pci)
    assert e(lambda: b.sysfs_write(f"{drv}/new_id", "8086 100e 0 0 0 0 5")) == errno.EINVAL
    b.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", E1000_B)
    # adding the ID binds every unbound matching device, here 01:02.0 only
    b.sysfs_write(f"{drv}/new_id", "8086 100e")
    assert v.driver(E1000_B) == "vfio-pci"
    assert v.driver(E1000_A) == "e1000"
    assert e(lambda: b.sysfs_write(f"{drv}/new_id", "0x8086 0x100e")) == errno.EEXIST
    # a static ID of a kernel driver cannot be added again
    assert e(lambda: b.sysfs_write("/sys/bus/pci/drivers/e1000/new_id", "8086 100e")) == errno.EEXIST
    assert e(lambda: b.sysfs_write(f"{drv}/remove_id", "8086 10d3")) == errno.ENODEV
    assert e(lambda: b.sysfs_write(f"{drv}/remove_id", "8086")) == errno.EINVAL
    b.sysfs_write(f"{drv}/remove_id", "8086 100e")
    assert e(lambda: b.sysfs_write(f"{drv}/remove_id", "8086 100e")) == errno.ENODEV
    # removing the ID does not unbind
    assert v.driver(E1000_B) == "vfio-pci"
    # pci-stub takes dynamic IDs too
    b.sysfs_write("/sys/bus/pci/drivers/e1000/unbind", E1000_A)
    b.sysfs_write("/sys/bus/pci/drivers/pci-stub/new_id", "8086 100e")
    assert v.driver(E1000_A) == "pci-stub"


def test_device_nodes_follow_bindings(b, v, system):
    assert system.device_nodes() == ["/dev/iommu", "/dev/vfio/vfio"]
    assert not b.exists("/dev/vfio/devices")
    v.bind_vfio(NVME)
    v.bind_vfio(EDU)
    assert b.exists("/dev/vfio/1") and b.exists("/dev/vfio/0")
    assert system.device(NVME).vfio_cdev_name == "vfio0"
    assert system.device(EDU).vfio_cdev_name == "vfio1"
    assert b.exists("/dev/vfio/devices/vfio0") and b.exists("/dev/vfio/devices")
    assert b.sysfs_listdir(f"/sys/bus/pci/devices/{NVME}/vfio-dev") == ["vfio0"]
    b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", NVME)
    assert not b.exists("/dev/vfio/devices/vfio0")
    assert not b.exists("/dev/vfio/1")
    # the lowest free index is reused
    v.bind_vfio(E1000E)
    assert system.device(E1000E).vfio_cdev_name == "vfio0"
    e = v.errno_of
    assert e(lambda: b.open("/dev/vfio")) == errno.EISDIR
    assert e(lambda: b.open("/dev/vfio/devices/vfio7")) == errno.ENOENT
    assert e(lambda: b.open("/dev/nvme0")) == errno.ENOENT
    assert e(lambda: b.open("/sys/bus/pci/drivers_probe")) == errno.EACCES


def test_modules_control_nodes(make_system):
    system = make_system("default", modules={"vfio": False, "vfio_pci": False,
                                             "vfio_iommu_type1": False, "iommufd": False})
    b = system.backend
    assert system.device_nodes() == []
    assert not b.exists("/dev/vfio/vfio") and not b.exists("/dev/iommu")
    assert "vfio-pci" not in b.sysfs_listdir("/sys/bus/pci/drivers")
    assert b.sysfs_listdir("/sys/module") == ["pci_stub"]


def test_vfio_files_and_release_requests(b, v, system):
    v.bind_vfio(EDU)
    edu = system.device(EDU)
    requests = []

    class Holder(FakeFile):
        def __init__(self, kernel, pdev):
            super().__init__(kernel)
            self.pdev = pdev

    fd = b.install(Holder(b, edu))
    edu.request_release = lambda: requests.append(1)
    assert edu.vfio_open
    assert v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU)) == errno.EBUSY
    assert requests == [1] and edu.release_requests == 1
    b.close(fd)
    b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU)
    assert edu.vfio_index is None


def test_iommu_properties_and_model_free_devices(make_system):
    system = make_system("minimal")
    edu = system.device(EDU)
    assert isinstance(edu, PciDevice)
    assert (edu.vendor, edu.device, edu.class_code, edu.revision) == (0x1234, 0x11E8, 0x00FF00, 0x10)
    cfg = edu.config_bytes()
    assert cfg[:4] == bytes.fromhex("3412e811") and len(cfg) == 256
    assert system.iommu is not None and system.iommu.aperture == (0, (1 << 48) - 1)
    assert system.page_size == 4096 and system.backend.page_size == 4096
    assert system.backend.memlock_limit() == 64 << 20


def test_open_iommufd_node(b):
    fd = b.open("/dev/iommu")
    b.close(fd)


def _system_with_models(name: str) -> System:
    return System(name)


def test_open_device_cdev(vfio_helper):
    system = _system_with_models("minimal")
    b = system.backend
    v = vfio_helper(b)
    try:
        v.bind_vfio(EDU)
        fd = b.open("/dev/vfio/devices/vfio0")
        assert system.device(EDU).vfio_open
        # the cdev holds the device: vfio-pci cannot be unbound
        assert v.errno_of(lambda: b.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", EDU)) == errno.EBUSY
        b.close(fd)
        assert not system.device(EDU).vfio_open
    finally:
        for fd in list(b._files):
            b.close(fd)


def test_models_are_used_when_available():
    system = System("minimal")
    edu = system.device(EDU)
    assert edu.model is not None
    assert (edu.vendor, edu.device) == (0x1234, 0x11E8)
    assert getattr(edu.model, "pdev", edu) is edu


def test_path_exists(b, v):
    assert b.exists("/dev/vfio/vfio")
    assert b.exists("/sys/bus/pci/devices/0000:00:02.0/vendor")
    assert not b.exists("/sys/bus/pci/devices/0000:00:02.0/nope")
    assert b.access("/dev/iommu", os.R_OK | os.W_OK)


def test_device_level_claims(make_system):
    system = make_system("default")
    edu = system.device(EDU)
    owner = object()
    edu.claim_dma_owner(owner)
    assert system.group(0).owner is owner
    edu.release_dma_owner()
    assert system.group(0).owner is None
    bare = make_system("default", iommu=None).device(EDU)
    with pytest.raises(OSError) as info:
        bare.claim_dma_owner(owner)
    assert info.value.errno == errno.ENODEV


def test_the_kernel_section_is_kept_and_round_trips() -> None:
    from pyvfio.fake import System
    from pyvfio.fake.machine import topology

    topo = topology.load("minimal")
    topo["kernel"] = topology.normalize_kernel(
        {"release": "6.12.9"})
    system = System(topo)
    assert system.kernel["release"] == "6.12.9"
    assert system.backend.sysfs_read("/proc/sys/kernel/osrelease") == "6.12.9"  # served as is
    again = System(system.to_topology())
    assert again.kernel == system.kernel
    system.sysfs.kernel = topology.normalize_kernel({"release": "7.3.1"})
    assert system.to_topology()["kernel"]["release"] == "7.3.1"
