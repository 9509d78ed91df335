"""``pyvfio doctor`` and :mod:`pyvfio.setup.environment` follow the kernel build:
its configuration (/proc/config.gz, /boot/config-<release>) and module
lists (/lib/modules/<release>), on fake machines that declare one and on
this machine."""

from __future__ import annotations

import gzip
import os
from typing import Any

import pytest
from fixtures.sysfs_overlay import Overlay

from pyvfio.fake import System
from pyvfio.fake.machine.topology import TopologyError, load
from pyvfio.setup import cli, kernel_support
from pyvfio.setup.environment import FAIL, INFO, OK, WARN, Check, check_environment

EDU = {"bdf": "00:02.0", "model": "edu"}


def machine(**topology: Any) -> System:
    """A fake machine whose sysfs serves the topology's kernel section."""
    topo = load({"devices": [EDU], **topology})
    system = System(topo)
    system.sysfs.kernel = topo["kernel"]
    return system


def checks(system: System) -> dict[str, Check]:
    return {c.name: c for c in check_environment(system.backend)}


def test_a_kernel_built_without_vfio_gets_no_modprobe() -> None:
    system = machine(kernel={"config": {"CONFIG_VFIO": "n", "CONFIG_IOMMUFD": None}})
    assert system.modules["vfio"] is False and system.modules["iommufd"] is False
    found = checks(system)
    vfio_pci = found["module vfio_pci"]
    assert vfio_pci.status == WARN
    assert "not in this kernel (CONFIG_VFIO_PCI is not set in /boot/config-7.3.0-fake)" \
        in vfio_pci.detail
    assert vfio_pci.fix == ("the kernel was built without CONFIG_VFIO_PCI: use a kernel that has "
                            "it (=m or =y)")
    assert "CONFIG_IOMMUFD" in found["node /dev/iommu"].fix
    assert "CONFIG_VFIO" in found["node /dev/vfio/vfio"].fix
    assert found["interfaces"].status == FAIL
    assert found["interfaces"].fix == ("the kernel was built without CONFIG_VFIO, CONFIG_VFIO_PCI "
                                       "and CONFIG_IOMMUFD: use a kernel that has them (=m or =y)")
    assert not any("modprobe" in c.fix for c in found.values())


def test_a_module_that_is_not_loaded_gets_modprobe() -> None:
    found = checks(machine(modules={"vfio_pci": False, "iommufd": False,
                                    "vfio_iommu_type1": False}))
    assert found["module vfio_pci"].detail == "vfio-pci driver not loaded (a module of this kernel)"
    assert found["module vfio_pci"].fix == "modprobe vfio-pci"
    assert found["module iommufd"].fix == "modprobe iommufd"
    assert found["node /dev/iommu"].fix == "modprobe iommufd"
    assert found["interfaces"].fix == "modprobe vfio-pci iommufd"


def test_a_built_in_module_needs_nothing() -> None:
    system = machine(kernel={"config": {"CONFIG_IOMMUFD": "y", "CONFIG_VFIO_IOMMU_TYPE1": "y"}})
    build = kernel_support.kernel_build(system.backend)
    assert build.module("iommufd") == kernel_support.BUILTIN and build.module("vfio") == kernel_support.MODULE
    assert "kernel/drivers/iommu/iommufd/iommufd.ko" in system.backend.sysfs_read(
        "/lib/modules/7.3.0-fake/modules.builtin")
    found = checks(system)
    assert found["module iommufd"] == Check("module iommufd", OK, "iommufd built into the kernel")
    assert found["module vfio"].detail == "VFIO core loaded"
    with pytest.raises(TopologyError, match="CONFIG_IOMMUFD=y builds it into the kernel"):
        load({"devices": [EDU], "modules": {"iommufd": False},
              "kernel": {"config": {"CONFIG_IOMMUFD": "y"}}})
    with pytest.raises(TopologyError, match="built without CONFIG_IOMMUFD"):
        load({"devices": [EDU], "modules": {"iommufd": True},
              "kernel": {"config": {"CONFIG_IOMMUFD": "n"}}})


def test_a_module_configured_but_not_installed() -> None:
    found = checks(machine(modules={"iommufd": False}, kernel={"modules_dir": False}))
    module = found["module iommufd"]
    assert module.detail == "iommufd not loaded; CONFIG_IOMMUFD=m, but the module is not installed"
    assert module.fix.startswith("CONFIG_IOMMUFD=m, but /lib/modules/7.3.0-fake has no iommufd "
                                 "module: install this kernel's modules")


def test_without_a_readable_config_doctor_says_what_it_needs() -> None:
    system = machine(modules={"vfio_pci": False}, kernel={"config": None})
    build = kernel_support.kernel_build(system.backend)
    assert build.config is None and build.module("vfio_pci") is None
    found = checks(system)
    assert found["module vfio_pci"].fix == "modprobe vfio-pci (on a kernel with CONFIG_VFIO_PCI)"
    assert found["module vfio_pci"].detail == "vfio-pci driver not loaded (or not built)"


def test_the_type1_backend_replaced_by_the_iommufd_container() -> None:
    system = machine(kernel={"config": {"CONFIG_VFIO_CONTAINER": "n",
                                        "CONFIG_VFIO_IOMMU_TYPE1": "n",
                                        "CONFIG_IOMMUFD_VFIO_CONTAINER": "y"}})
    type1 = checks(system)["module vfio_iommu_type1"]
    assert type1.status == INFO and "CONFIG_IOMMUFD_VFIO_CONTAINER" in type1.detail
    assert type1.fix == ""


class _ConfigGz(Overlay):
    """A backend whose /proc/config.gz is readable through open/pread."""

    def __init__(self, base: Any, config: bytes, **files: Any) -> None:
        super().__init__(base, **files)
        self.gz = gzip.compress(config)
        self.fds: set[int] = set()

    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        if path != "/proc/config.gz":
            return int(self.base.open(path, flags))
        fd = os.open("/dev/null", os.O_RDONLY)
        self.fds.add(fd)
        return fd

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if fd in self.fds:
            return self.gz[offset:offset + min(size, 1000)]  # in pieces, like a real file
        return bytes(self.base.pread(fd, size, offset))

    def close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.discard(fd)
            os.close(fd)
            return
        self.base.close(fd)


def test_proc_config_gz_comes_first() -> None:
    text = b"".join(b"CONFIG_FILLER_%d=y\n" % i for i in range(400))
    text += b'CONFIG_LOCALVERSION="-mine"\n# CONFIG_VFIO is not set\nCONFIG_IOMMUFD=m\n'
    b = _ConfigGz(System("default").backend, text)
    build = kernel_support.kernel_build(b)  # type: ignore[arg-type]
    assert build.config_source == "/proc/config.gz" and not b.fds
    assert build.option("CONFIG_LOCALVERSION") == "-mine" and build.option("CONFIG_VFIO") == "n"
    assert build.option("CONFIG_FILLER_399") == "y" and build.option("CONFIG_NOT_THERE") == "n"
    # modules.dep of the fake lists vfio.ko: the file wins over the config
    assert build.module("vfio") == kernel_support.MODULE and build.module("iommufd") == kernel_support.MODULE


def test_module_lists_without_a_config() -> None:
    base = machine(kernel={"config": None})
    b = Overlay(base.backend, files={
        "/lib/modules/7.3.0-fake/modules.builtin": "kernel/drivers/vfio/vfio.ko\n",
        "/lib/modules/7.3.0-fake/modules.dep":
            "kernel/drivers/vfio/pci/vfio-pci.ko.zst: kernel/drivers/vfio/vfio.ko\n"})
    build = kernel_support.kernel_build(b)  # type: ignore[arg-type]
    assert build.config is None and build.modules_dir == "/lib/modules/7.3.0-fake"
    assert build.module("vfio") == kernel_support.BUILTIN and build.module("vfio_pci") == kernel_support.MODULE
    # both lists are readable and neither has iommufd: the kernel lacks it
    assert build.module("iommufd") == kernel_support.ABSENT
    assert kernel_support.module_present("vfio", b, kernel=build)  # type: ignore[arg-type]


def test_doctor_prints_the_fixes_of_info_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["doctor", "--fake", "default"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK
    assert "INFO    devices                  no device is bound to vfio-pci\n" \
           "                                 fix: pyvfio bind BDF (as root)" in out
    assert "INFO    kernel                   Linux 7.3.0-fake" in out


def test_doctor_on_a_declared_kernel_through_the_command(
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    path = tmp_path / "nokernel.json"
    path.write_text('{"devices": [{"bdf": "00:02.0", "model": "edu"}], '
                    '"kernel": {"config": {"CONFIG_VFIO": "n", "CONFIG_IOMMUFD": "n"}}}')
    code = cli.main(["doctor", "--fake", str(path)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_PROBLEM
    assert "modprobe" not in out
    assert "fix: the kernel was built without CONFIG_VFIO, CONFIG_VFIO_PCI and" in out


def test_this_machine_gets_fixes_its_kernel_allows() -> None:
    build = kernel_support.kernel_build()
    found = {c.name: c for c in check_environment()}
    for module in ("vfio", "vfio_pci", "vfio_iommu_type1", "iommufd"):
        check = found[f"module {module}"]
        state = build.module(module)
        if state == kernel_support.ABSENT:
            assert "modprobe" not in check.fix and "use a kernel that has it" in check.fix
        elif state == kernel_support.BUILTIN:
            assert check.fix == "" or "dmesg" in check.fix


def test_kernel_section_validation() -> None:
    for bad, match in (({"release": "a b"}, "kernel.release"),
                       ({"config": {"VFIO": "y"}}, "CONFIG_"),
                       ({"config": {"CONFIG_VFIO_DEVICE_CDEV": "n"}}, "CONFIG_VFIO_DEVICE_CDEV"),
                       ({"config": {"CONFIG_IOMMUFD": "maybe"}}, "y, m or n"),
                       ({"bogus": 1}, "unknown key")):
        with pytest.raises(TopologyError, match=match):
            load({"devices": [EDU], "kernel": bad})
    topo = load({"devices": [EDU], "kernel": {"config": {"CONFIG_VFIO": False}}})
    assert topo["kernel"]["config"]["CONFIG_VFIO_PCI"] == "n"
    assert topo["modules"]["vfio"] is False and topo["modules"]["vfio_pci"] is False
    # normalising twice changes nothing (System.to_topology reloads it)
    assert load(topo)["kernel"] == topo["kernel"]


class _Hiding(Overlay):
    """A backend that hides some host files (as a kernel without them would)."""

    def __init__(self, base: Any, hidden: set[str]) -> None:
        super().__init__(base)
        self.hidden = hidden

    def sysfs_read(self, path: str) -> str:
        if path in self.hidden:
            raise FileNotFoundError(2, path)
        return super().sysfs_read(path)


def test_when_nothing_tells_cdev_support_both_rows_say_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    system = machine(kernel={"config": None})
    b = _Hiding(system.backend, {"/proc/devices"})
    support = kernel_support.vfio_support(b)  # type: ignore[arg-type]
    assert support.cdev_supported is None
    assert support.interfaces == "iommufd + cdev (unconfirmed), legacy container"
    found = {c.name: c for c in check_environment(b)}  # type: ignore[arg-type]
    assert found["cdev"].status == WARN and "cannot tell" in found["cdev"].detail
    assert found["interfaces"].detail == "usable: iommufd + cdev (unconfirmed), legacy container"
    code = cli.main(["status"], backend=b)  # type: ignore[arg-type]
    assert code == cli.EXIT_OK
    assert "usable interfaces: iommufd + cdev (unconfirmed)" in capsys.readouterr().out
    # once a device is bound, its vfio-dev/vfioN/dev number settles it
    cli.main(["bind", "00:02.0"], backend=b)  # type: ignore[arg-type]
    assert kernel_support.vfio_support(b).cdev_supported is True  # type: ignore[arg-type]


def test_vfio_devices_without_device_numbers_mean_no_cdevs() -> None:
    system = machine()
    cli.main(["bind", "00:02.0"], backend=system.backend)
    hidden = {"/sys/bus/pci/devices/0000:00:02.0/vfio-dev/vfio0/dev"}

    class NoNumbers(_Hiding):
        def exists(self, path: str) -> bool:
            return path not in hidden and path != "/dev/vfio/devices" and super().exists(path)

    support = kernel_support.vfio_support(NoNumbers(system.backend, hidden))  # type: ignore[arg-type]
    assert support.cdev_supported is False and not support.cdev_usable
