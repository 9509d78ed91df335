"""Persistent bindings (pyvfio.setup.persist: one udev rule per device,
written like root's other hardened files) and binding several devices all
or nothing (binding.bind_many)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from fixtures.sysfs_overlay import Overlay

from pyvfio.core import sysfs
from pyvfio.fake import System
from pyvfio.setup import binding, environment, kernel_support, persist
from pyvfio.setup.binding_state import BindError, BindingState, set_host_root
from pyvfio.setup.persist import PersistError, PersistentRules

EDU, NVME, BRIDGE, E1000A, E1000B = ("0000:00:02.0", "0000:00:03.0", "0000:00:05.0",
                                     "0000:01:01.0", "0000:01:02.0")
MOUNTED_NVME = {"/proc/self/mountinfo": "22 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n",
                "/sys/block/nvme0n1/nvme0n1p1/partition": "1",
                "/sys/block/nvme0n1/nvme0n1p1/dev": "259:1"}
NVME_DISK = {"/sys/block/nvme0n1": "../devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0n1"}


@pytest.fixture
def system() -> System:
    return System("default")


def drivers(b: object, *bdfs: str) -> list[str | None]:
    return [sysfs.device_driver(x, b) for x in bdfs]  # type: ignore[arg-type]


# -- the rule -------------------------------------------------------------------------------
def test_the_rule_sets_the_override_loads_the_driver_and_moves_a_device_already_taken() -> None:
    text = persist.rule_text(NVME, "vfio-pci")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == 2
    match = 'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:00:03.0"'
    assert lines[0] == (f'{match}, ATTR{{driver_override}}="vfio-pci", '
                        'RUN{builtin}+="kmod load vfio_pci"')
    assert lines[1].startswith(f'{match}, DRIVER=="?*", DRIVER!="vfio-pci", RUN+="/bin/sh -c \'')
    assert "echo 0000:00:03.0 > /sys/bus/pci/devices/0000:00:03.0/driver/unbind" in lines[1]
    assert lines[1].endswith("echo 0000:00:03.0 > /sys/bus/pci/drivers_probe'\"")
    # nothing udev would substitute ($, %) and quotes only where the rule syntax puts them
    assert "$" not in text and "%" not in text
    assert persist.parse_rule("70-pyvfio-0000:00:03.0.rules", text) == (NVME, "vfio-pci")


@pytest.mark.parametrize("bdf, driver", [("00:03.0", "vfio-pci"), ("0000:00:03.0\n", "x"),
                                         (NVME, "a b"), (NVME, "../x"), (NVME, 'x"; y')])
def test_no_rule_for_a_malformed_address_or_driver(bdf: str, driver: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        persist.rule_text(bdf, driver)
    with pytest.raises(PersistError):
        PersistentRules(str(tmp_path)).save(bdf, driver)
    assert list(tmp_path.iterdir()) == []


# -- the files --------------------------------------------------------------------------------
def test_save_list_get_remove(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "udev" / "rules.d"
    rules = PersistentRules(str(folder))
    assert rules.list() == [] and rules.get(NVME) is None and rules.remove(NVME) is None
    old = os.umask(0o077)
    try:
        kept = rules.save(NVME, "vfio-pci")
    finally:
        os.umask(old)
    path = folder / "70-pyvfio-0000:00:03.0.rules"
    assert kept == persist.PersistentBinding(NVME, "vfio-pci", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # udevd reads it, whatever the umask
    assert path.read_text() == persist.rule_text(NVME, "vfio-pci")
    rules.save(EDU, "pci-stub")
    rules.save(NVME, "vfio-pci")  # replaced, not duplicated
    assert [(x.bdf, x.driver) for x in rules.list()] == [(EDU, "pci-stub"), (NVME, "vfio-pci")]
    (folder / "99-other.rules").write_text("garbage\n")  # other files are not pyvfio's
    (folder / "70-pyvfio-0000:00:04.0.rules.123.ab.tmp").write_text("half")
    assert len(rules.list()) == 2
    assert rules.remove(NVME) == kept and not path.exists()
    assert [x.bdf for x in rules.list()] == [EDU]


def test_memory_rules_for_a_fake_and_a_host_root(system: System, tmp_path: Path) -> None:
    mem = PersistentRules.default(system.backend)
    assert mem.folder is None and PersistentRules.default(system.backend) is mem
    mem.save(NVME, "vfio-pci")
    assert mem.get(NVME) == persist.PersistentBinding(NVME, "vfio-pci", None)
    other = System("default")
    set_host_root(other.backend, str(tmp_path))
    on_disk = PersistentRules.default(other.backend)
    assert on_disk.folder == str(tmp_path / "etc" / "udev" / "rules.d")
    assert BindingState.default(other.backend).path == str(tmp_path / "run" / "pyvfio" /
                                                           "bindings.json")


def test_the_real_kernel_uses_etc_udev(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyvfio.backend import default_backend

    monkeypatch.delenv("PYVFIO_RULES_DIR", raising=False)
    assert PersistentRules.default(default_backend()).folder == "/etc/udev/rules.d"
    monkeypatch.setenv("PYVFIO_RULES_DIR", "/tmp/x")
    assert PersistentRules.default(default_backend()).folder == "/tmp/x"


def _one_line(exc: BaseException, what: str) -> str:
    text = str(exc)
    assert "\n" not in text and what in text, text
    return text


def test_a_symlinked_rule_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(persist.rule_text(NVME, "vfio-pci"))
    folder = tmp_path / "rules"
    folder.mkdir(mode=0o755)
    os.symlink(target, folder / "70-pyvfio-0000:00:03.0.rules")
    rules = PersistentRules(str(folder))
    for act in (rules.list, lambda: rules.get(NVME), lambda: rules.remove(NVME)):
        with pytest.raises(PersistError) as exc:
            act()
        assert exc.value.errno == errno.ELOOP
        _one_line(exc.value, "symbolic link")
    # writing replaces the link itself by a rename, never writes through it
    rules_w = PersistentRules(str(folder))
    os.unlink(folder / "70-pyvfio-0000:00:03.0.rules")
    os.symlink(target, folder / "70-pyvfio-0000:00:03.0.rules")
    rules_w.save(NVME, "pci-stub")
    assert not (folder / "70-pyvfio-0000:00:03.0.rules").is_symlink()
    assert target.read_text() == persist.rule_text(NVME, "vfio-pci")


def test_an_unsafe_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    with pytest.raises(PersistError) as exc:
        PersistentRules(str(link)).save(NVME, "vfio-pci")
    _one_line(exc.value, "symbolic link")
    assert list(real.iterdir()) == []
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    for act in (lambda: PersistentRules(str(open_folder)).save(NVME, "vfio-pci"),
                PersistentRules(str(open_folder)).list,
                PersistentRules(str(open_folder)).check_writable):
        with pytest.raises(PersistError) as exc:
            act()
        _one_line(exc.value, "writable by others")
    assert list(open_folder.iterdir()) == []


@pytest.mark.parametrize("name, text, problem", [
    ("70-pyvfio-0000:00:03.0.rules", persist.rule_text(NVME, "vfio-pci") + "RUN+=\"/evil\"\n",
     "not the rule pyvfio writes"),
    ("70-pyvfio-0000:00:03.0.rules", persist.rule_text(NVME, "vfio-pci").replace(
        'ATTR{driver_override}="vfio-pci"', 'ATTR{driver_override}="../../x"'),
     "is not a driver name"),
    ("70-pyvfio-0000:00:03.0.rules", "", "sets no driver_override"),
    ("70-pyvfio-00:03.0.rules", persist.rule_text(NVME, "vfio-pci"), "not a PCI address"),
    ("70-pyvfio-0000:00:03.0.rules", "\xff", None),
])
def test_a_file_that_is_not_pyvfios_rule_is_one_error_naming_it(
        tmp_path: Path, name: str, text: str, problem: str | None) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    path = folder / name
    path.write_bytes(text.encode("latin-1") if text == "\xff" else text.encode())
    with pytest.raises(PersistError) as exc:
        PersistentRules(str(folder)).list()
    _one_line(exc.value, name)
    assert problem is None or problem in str(exc.value)


def test_a_rule_someone_else_may_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    path = folder / "70-pyvfio-0000:00:03.0.rules"
    path.write_text(persist.rule_text(NVME, "vfio-pci"))
    os.chmod(path, 0o666)
    with pytest.raises(PersistError) as exc:
        PersistentRules(str(folder)).get(NVME)
    _one_line(exc.value, "writable by others")


# -- a reboot ---------------------------------------------------------------------------------
def test_the_rules_bind_the_devices_again_after_a_reboot(system: System) -> None:
    """What udevd does with the rules when the devices appear: a device the
    native driver took first (nvme) and a driver-less one (edu)."""
    b = system.backend
    results = binding.bind_many([NVME, EDU], backend=b)
    assert [r.driver for r in results] == ["vfio-pci", "vfio-pci"]
    rules = PersistentRules.default(b)
    for r in results:
        rules.save(r.bdf, "vfio-pci")
    rebooted = System("default")  # the same machine, booted again: nvme has the disk
    assert drivers(rebooted.backend, NVME, EDU) == ["nvme", None]
    changed = persist.apply_rules(rules.list(), rebooted.backend)
    assert sorted(changed) == [EDU, NVME]
    assert drivers(rebooted.backend, NVME, EDU) == ["vfio-pci", "vfio-pci"]
    assert sysfs.try_read(rebooted.backend, f"{sysfs.PCI_DEVICES}/{NVME}/driver_override") \
        == "vfio-pci"
    # a rule for a device the machine does not have is skipped, as udev never sees it
    assert persist.apply_rules([persist.PersistentBinding("0000:09:00.0", "vfio-pci", None)],
                               rebooted.backend) == []


# -- all or nothing ---------------------------------------------------------------------------
def test_a_device_in_use_stops_every_move(system: System) -> None:
    b = Overlay(system.backend, files=MOUNTED_NVME, links=NVME_DISK)
    with pytest.raises(binding.DeviceInUseError) as exc:
        binding.bind_many([EDU, NVME], backend=b)  # type: ignore[arg-type]
    assert "0000:00:03.0" in str(exc.value)
    assert drivers(b, EDU, NVME) == [None, "nvme"]
    assert BindingState.default(system.backend).records() == []


def test_the_in_use_check_comes_before_the_driver_checks() -> None:
    system = System({"kernel": {"config": {"CONFIG_VFIO_PCI": "n"}},
                     "modules": {"vfio_pci": False},
                     "devices": [{"bdf": "00:03.0", "model": "nvme", "driver": "nvme"}]})
    b = Overlay(system.backend, files=MOUNTED_NVME, links=NVME_DISK)
    with pytest.raises(binding.DeviceInUseError):
        binding.bind(NVME, backend=b)  # type: ignore[arg-type]
    with pytest.raises(binding.DeviceInUseError):
        binding.bind_many([NVME], backend=b)  # type: ignore[arg-type]
    # with --force the driver check answers, with doctor's hint
    with pytest.raises(BindError) as exc:
        binding.bind(NVME, force=True, backend=b)  # type: ignore[arg-type]
    assert "modprobe" not in str(exc.value)


@pytest.mark.parametrize("config, want", [
    ("n", "the kernel was built without CONFIG_VFIO_PCI: use a kernel that has it"),
    ("m", "modprobe vfio-pci"),
])
def test_a_missing_driver_gets_doctors_hint(config: str, want: str) -> None:
    system = System({"kernel": {"config": {"CONFIG_VFIO_PCI": config}},
                     "modules": {"vfio_pci": False},
                     "devices": [{"bdf": "00:02.0", "model": "edu"},
                                 {"bdf": "00:03.0", "model": "edu"}]})
    b = system.backend
    with pytest.raises(BindError) as exc:
        binding.bind_many(["00:02.0", "00:03.0"], backend=b)
    assert want in str(exc.value)
    assert ("modprobe" in str(exc.value)) is (config == "m")
    doctor = next(c for c in environment.check_environment(b) if c.name == "module vfio_pci")
    assert doctor.fix in str(exc.value)
    assert environment.module_fix(kernel_support.kernel_build(b), "vfio_pci") == doctor.fix
    assert drivers(b, EDU, NVME) == [None, None]


def test_a_bridge_among_the_devices_stops_every_move(system: System) -> None:
    b = system.backend
    with pytest.raises(BindError, match="does not drive bridges"):
        binding.bind_many([NVME, BRIDGE], backend=b)
    assert drivers(b, NVME) == ["nvme"]


def test_a_move_that_fails_midway_rolls_back(system: System,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    b = system.backend
    st = BindingState.default(b)
    binding.unbind(E1000B, backend=b, state=st)  # a device pyvfio changed before: kept as is
    real = b.sysfs_write

    def refuse_the_nvme(path: str, value: str) -> None:
        if path == "/sys/bus/pci/drivers_probe" and value == NVME:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        real(path, value)
    monkeypatch.setattr(b, "sysfs_write", refuse_the_nvme)
    with pytest.raises(BindError) as exc:
        binding.bind_many([EDU, E1000B, NVME], backend=b, state=st)
    text = str(exc.value)
    assert text.startswith("vfio-pci did not take 0000:00:03.0 (drivers_probe: Cannot allocate")
    assert "rolled back: 0000:00:02.0 on no driver, 0000:01:02.0 on no driver, " \
           "0000:00:03.0 on nvme again" in text
    monkeypatch.undo()
    assert drivers(b, EDU, E1000B, NVME) == [None, None, "nvme"]
    overrides = [sysfs.try_read(b, f"{sysfs.PCI_DEVICES}/{x}/driver_override")
                 for x in (EDU, E1000B, NVME)]
    assert overrides == ["(null)", "none", "(null)"]
    # only the record made before this call is left: the original of E1000B
    assert [(r.bdf, r.driver) for r in st.records()] == [(E1000B, "e1000")]


def test_bind_many_results_and_a_group(system: System) -> None:
    b = system.backend
    done = binding.bind_many([E1000A, "01:02.0", E1000A], backend=b)
    assert [r.bdf for r in done] == [E1000A, E1000B]
    # the notes see the group once both moved
    assert all(not n.startswith("group 3 is not viable") for r in done for n in r.notes)
    assert binding.group_devices(3, b) == [E1000A, E1000B]
    again = binding.bind_many([E1000A], backend=b)
    assert again[0].changed is False


def test_check_writable_tries_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "rules"
    PersistentRules(str(folder)).check_writable()  # creates the folder, leaves nothing
    assert folder.is_dir() and list(folder.iterdir()) == []
    real = persist._nofollow_open

    def read_only(name: str, flags: int, *, dir_fd: int) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(name, flags, dir_fd=dir_fd)
    monkeypatch.setattr(persist, "_nofollow_open", read_only)
    with pytest.raises(PersistError) as exc:
        PersistentRules(str(folder)).check_writable()
    assert "Read-only file system (run as root, or set PYVFIO_RULES_DIR)" in str(exc.value)
    assert exc.value.errno == errno.EROFS
