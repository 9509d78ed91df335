"""The pytest plugin (pyvfio.testing.plugin), run with pytester."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Imported here so that pytester's inner runs (which drop the modules they
# import) find them loaded: each run stays fast.
import pyvfio.testing.plugin  # noqa: F401
from pyvfio.fake import System
from pyvfio.fake.models import edu, nvme  # noqa: F401

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
GUEST_TOPOLOGY = REPO / "tests" / "fixtures" / "qemu-guest-topology.json"


@pytest.fixture(autouse=True)
def _no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    # The inner runs load the plugin by module name only: with autoloading on,
    # an installed pyvfio would register it a second time through its
    # pytest11 entry point (and other installed plugins would join in).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "pyvfio.testing.plugin", "-p", "no:cacheprovider", *args)


def test_entry_point_is_declared() -> None:
    assert System is not None
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["entry-points"]["pytest11"] == {"pyvfio": "pyvfio.testing.plugin"}


def test_installed_entry_point_loads_the_plugin() -> None:
    from importlib import metadata

    try:
        metadata.distribution("pyvfio")
    except metadata.PackageNotFoundError:
        pytest.skip("pyvfio is not installed as a distribution (run from a source tree)")
    found = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "pyvfio"]
    assert [ep.value for ep in found] == ["pyvfio.testing.plugin"]
    assert found[0].load() is pyvfio.testing.plugin


def test_vfio_system_and_topology_selection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(f"""
        import pytest
        from pyvfio.core import sysfs
        from pyvfio.setup import devices

        def test_default(vfio_system, vfio_backend):
            assert vfio_system.topology_name == "default"
            assert vfio_backend is vfio_system.backend
            assert len(devices.pci_devices(vfio_backend)) == 6

        @pytest.mark.vfio_topology("multi-group")
        def test_marker(vfio_system):
            assert vfio_system.topology_name == "multi-group"

        @pytest.mark.parametrize("vfio_system", ["minimal", "default"], indirect=True)
        def test_param(vfio_system):
            assert vfio_system.topology_name in ("minimal", "default")

        @pytest.mark.vfio_topology({{"name": "mine", "devices": [{{"bdf": "00:07.0", "model": "nvme"}}]}})
        def test_dict(vfio_system):
            assert list(vfio_system.devices) == ["0000:00:07.0"]

        @pytest.mark.vfio_topology({str(GUEST_TOPOLOGY)!r})
        def test_captured_file(vfio_system, vfio_backend):
            assert vfio_system.topology_name == "qemu-guest"
            assert devices.iommu_group(11, vfio_backend).devices == (
                "0000:04:00.0", "0000:05:01.0", "0000:05:02.0")

        def test_fresh_per_test(vfio_system):
            assert all(d.driver != "vfio-pci" for d in vfio_system.devices.values())
            vfio_system.backend.sysfs_write(
                "/sys/bus/pci/devices/0000:00:02.0/driver_override", "vfio-pci")
            vfio_system.backend.sysfs_write("/sys/bus/pci/drivers_probe", "0000:00:02.0")

        def test_fresh_per_test_again(vfio_system):
            assert all(d.driver != "vfio-pci" for d in vfio_system.devices.values())
    """)
    result = run(pytester)
    result.assert_outcomes(passed=8)


def test_ini_option_selects_the_default_topology(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nvfio_topology = minimal\n")
    pytester.makepyfile("""
        def test_it(vfio_system):
            assert vfio_system.topology_name == "minimal"
    """)
    run(pytester).assert_outcomes(passed=1)


def test_vfio_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import pyvfio

        def test_default_model(vfio_device):
            assert vfio_device.model_name == "edu" and vfio_device.bdf == "0000:00:02.0"
            assert vfio_device.pci.driver == "vfio-pci"
            assert vfio_device.group == 0 and vfio_device.group_path == "/dev/vfio/0"
            assert vfio_device.cdev_path.startswith("/dev/vfio/devices/vfio")
            assert vfio_device.viability().viable and vfio_device.faults == []
            with pyvfio.IommuFd(backend=vfio_device.backend) as iommufd, vfio_device.open() as dev:
                dev.bind(iommufd)
                dev.attach(iommufd.ioas())
                assert dev.pread(pyvfio.PciRegion.CONFIG, 0, 4) == bytes.fromhex("3412e811")

        @pytest.mark.vfio_device("nvme")
        def test_marker(vfio_device, vfio_system):
            assert vfio_device.model_name == "nvme" and vfio_device.pci.driver == "vfio-pci"
            assert vfio_system.topology_name == "default"
            assert type(vfio_device.model).__name__ == "NvmeController"

        @pytest.mark.parametrize("vfio_device", ["edu", "nvme", {"model": "generic",
                                 "vendor": 0x1af4, "device": 0x1041}], indirect=True)
        def test_param(vfio_device):
            assert vfio_device.pci.driver == "vfio-pci"

        @pytest.mark.vfio_topology("minimal")
        @pytest.mark.vfio_device("nvme", bdf="00:1f.0", model_msix_vectors=4)
        def test_added_to_the_topology(vfio_device, vfio_system):
            assert vfio_device.bdf == "0000:00:1f.0"
            assert sorted(vfio_system.devices) == ["0000:00:02.0", "0000:00:1f.0"]
            assert vfio_device.group != vfio_system.device("00:02.0").group.id

        @pytest.mark.vfio_topology("minimal")
        @pytest.mark.vfio_device("nvme")
        def test_added_at_a_free_slot(vfio_device):
            assert vfio_device.bdf == "0000:00:10.0"
    """)
    run(pytester).assert_outcomes(passed=7)


def test_leak_check(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        kept = []

        @pytest.fixture(scope="module", autouse=True)
        def close_kept():
            yield                      # after the leak check of vfio_system
            for dev in kept:
                dev.close()

        def test_leaks(vfio_device):
            kept.append(vfio_device.open())
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test left VFIO files of the fake system open*"])
    pytester.makeini("[pytest]\nvfio_leak_check = false\n")
    run(pytester).assert_outcomes(passed=1)


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.vfio_topology(source)*",
                                 "@pytest.mark.vfio_device(model, bdf=None, **spec)*"])


def test_vfio_device_in_a_shared_group(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import pyvfio
        from pyvfio.core import sysfs

        @pytest.mark.vfio_device("e1000")
        def test_whole_group_bound(vfio_device, vfio_system):
            assert vfio_device.bdf == "0000:01:01.0" and vfio_device.group == 3
            drivers = {d.bdf: d.driver for d in vfio_system.devices.values()
                       if d.group.id == 3}
            # the other e1000 joins it on vfio-pci; the bridge stays driver-less
            assert drivers == {"0000:00:05.0": None, "0000:01:01.0": "vfio-pci",
                               "0000:01:02.0": "vfio-pci"}
            assert vfio_device.viability().viable
            with pyvfio.IommuFd(backend=vfio_device.backend) as iommufd, \\
                    vfio_device.open() as dev:
                dev.bind(iommufd)
                dev.attach(iommufd.ioas())

        @pytest.mark.vfio_topology({"modules": {"vfio_pci": False}, "devices": [
            {"bdf": "00:05.0", "model": "pcie-pci-bridge",
             "bridge": {"secondary_bus": 1, "conventional": True}},
            {"bdf": "01:01.0", "model": "e1000", "driver": "e1000"},
            {"bdf": "01:02.0", "model": "e1000", "driver": "e1000"}]})
        @pytest.mark.vfio_device("e1000")
        def test_group_that_cannot_be_made_viable(vfio_device):
            pass
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*vfio_device 0000:01:01.0: binding IOMMU group 0 to vfio-pci failed: *"
        "the vfio-pci driver is not loaded*",
        "*IOMMU group 0 (3 device(s)): NOT viable*"])


# -- the real backend in fake-machine tests ---------------------------------------------

REFUSED = "pyvfio.testing.plugin.RealBackendRefused: "
NO_VFIO = not os.path.exists("/dev/vfio/vfio")


def crashes(result: pytest.RunResult) -> dict[str, str]:
    """Test name (and phase, for setup and teardown) -> the message of the
    exception that failed it; "passed" for a call that passed."""
    out: dict[str, str] = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        name = rep.nodeid.split("::")[-1] + ("" if rep.when == "call" else f"@{rep.when}")
        if rep.failed:
            out[name] = rep.longrepr.reprcrash.message
        elif rep.when == "call":
            out[name] = rep.outcome
    return out


def assert_reached_the_kernel(message: str) -> None:
    """The test used the real backend: on a machine without VFIO (this
    suite's host), opening /dev/vfio/vfio failed."""
    if NO_VFIO:
        assert message.startswith("pyvfio.errors.IoctlError: open on /dev/vfio/vfio: [ENOENT]")
    else:
        assert "RealBackendRefused" not in message


def test_real_backend_is_refused_in_fake_machine_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_refuse="""
        import pytest
        import pyvfio
        from pyvfio.core import sysfs

        def test_container(vfio_system):
            pyvfio.Container()

        def test_iommufd(vfio_device):
            with pyvfio.IommuFd():
                pass

        def test_sysfs(vfio_backend):
            sysfs.device_group("0000:00:02.0")

        def test_default_backend(vfio_system):
            pyvfio.default_backend()

        def test_with_backend(vfio_device, vfio_backend):
            with pyvfio.IommuFd(backend=vfio_backend) as iommufd, vfio_device.open() as dev:
                dev.bind(iommufd)
            assert sysfs.device_group(vfio_device.bdf, vfio_backend) == vfio_device.group

        def test_caught(vfio_system):
            try:
                pyvfio.Container()
            except Exception:
                pass

        def test_wrapped(vfio_system):
            try:
                pyvfio.Container()
            except Exception as e:
                raise ValueError("no VFIO") from e

        def test_unaffected():
            assert type(pyvfio.default_backend()).__name__ == "KernelBackend"
            pyvfio.Container().close()
    """)
    result = run(pytester)
    got = crashes(result)
    where = f"(called at {pytester.path / 'test_refuse.py'}:"
    advice = ("in a test that uses the fake machine: pass backend=vfio_backend (or "
              "vfio_device.backend).  To use the real kernel here, mark the test "
              "@pytest.mark.vfio_real_backend or set the ini option vfio_real_backend = allow.")
    for test, call, line in [("test_container", "pyvfio.core.container.Container()", 6),
                             ("test_iommufd", "pyvfio.core.iommufd.IommuFd()", 9),
                             ("test_sysfs", "pyvfio.core.sysfs.device_group()", 13),
                             ("test_default_backend", "pyvfio.backend.default_backend()", 16)]:
        assert got[test] == (f"{REFUSED}{call} {where}{line}) asked for the real kernel backend "
                             f"(this machine's /dev/vfio, /dev/iommu and sysfs) {advice}")
    assert got["test_with_backend"] == "passed"
    # caught by the code under test: the test fails all the same, at teardown
    assert got["test_caught"] == "passed"
    assert got["test_caught@teardown"].startswith(
        f"Failed: the code under test caught RealBackendRefused:\n  pyvfio.core.container.Container() "
        f"{where}25)")
    # raised again as another exception: reported once, by the call
    assert got["test_wrapped"] == "ValueError: no VFIO"
    assert "test_wrapped@teardown" not in got
    assert_reached_the_kernel(got["test_unaffected"])
    assert len(got) == 9


def test_real_backend_allowed_by_the_marker_or_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import pyvfio

        @pytest.mark.vfio_real_backend
        def test_marked(vfio_system, vfio_backend):
            assert pyvfio.default_backend() is not vfio_backend
            pyvfio.Container().close()

        def test_unmarked(vfio_device):
            pyvfio.Container().close()
    """)
    got = crashes(run(pytester))
    assert_reached_the_kernel(got["test_marked"])
    assert got["test_unmarked"].startswith(REFUSED + "pyvfio.core.container.Container()")
    pytester.makeini("[pytest]\nvfio_real_backend = allow\n")
    got = crashes(run(pytester))
    assert_reached_the_kernel(got["test_marked"])
    assert_reached_the_kernel(got["test_unmarked"])


def test_default_backend_can_be_the_fake_one(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nvfio_default_backend = fake\n")
    pytester.makepyfile("""
        import pytest
        import pyvfio
        from pyvfio.core import sysfs

        def test_fake(vfio_device, vfio_backend):
            assert pyvfio.default_backend() is vfio_backend
            assert sysfs.device_driver(vfio_device.bdf) == "vfio-pci"
            with pyvfio.IommuFd() as iommufd, pyvfio.Device.open(vfio_device.bdf) as dev:
                dev.bind(iommufd)
                assert iommufd.backend is dev.backend is vfio_backend

        @pytest.mark.vfio_real_backend
        def test_marked(vfio_system):
            pyvfio.Container().close()

        def test_no_fixture():
            assert type(pyvfio.default_backend()).__name__ == "KernelBackend"
    """)
    got = crashes(run(pytester))
    assert got["test_fake"] == got["test_no_fixture"] == "passed"
    assert_reached_the_kernel(got["test_marked"])


def test_bad_ini_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nvfio_real_backend = sometimes\n")
    pytester.makepyfile("def test_it(): pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option vfio_real_backend = 'sometimes': must be one of "
                                 "refuse, allow*"])
    pytester.makeini("[pytest]\nvfio_default_backend = real\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*must be one of kernel, fake*"])


def test_real_backend_marker_is_registered(pytester: pytest.Pytester) -> None:
    run(pytester, "--markers").stdout.fnmatch_lines(["@pytest.mark.vfio_real_backend:*"])


# The seam the plugin uses: pyvfio.backend.override_default_backend.

def test_override_default_backend_is_context_local() -> None:
    import asyncio
    import threading

    from pyvfio.backend import default_backend, override_default_backend

    real = default_backend()
    one, two = System("minimal"), System("minimal")
    seen: list[object] = []
    with override_default_backend(one.backend):
        assert default_backend() is one.backend
        with override_default_backend(lambda: two.backend):
            assert default_backend() is two.backend
            thread = threading.Thread(target=lambda: seen.append(default_backend()))
            thread.start()
            thread.join()

            async def task() -> object:
                return default_backend()

            seen.append(asyncio.run(task()))
        assert default_backend() is one.backend
    assert default_backend() is real
    assert seen == [real, two.backend]          # other threads: no; asyncio tasks: yes


def test_override_can_refuse() -> None:
    from pyvfio.backend import Backend, default_backend, override_default_backend, resolve_backend

    def refuse() -> Backend:
        raise LookupError("no default here")

    with override_default_backend(refuse):
        with pytest.raises(LookupError, match="no default here"):
            resolve_backend(None)
        fake = System("minimal").backend
        assert resolve_backend(fake) is fake
    assert default_backend().name == "kernel"


def test_vfio_fault_walk_names_the_n_that_leaked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pyvfio

        def test_clean(vfio_device, vfio_fault_walk):
            def start():
                with pyvfio.IommuFd(backend=vfio_device.backend) as iommufd, \\
                        vfio_device.open() as dev:
                    dev.bind(iommufd)
                    dev.attach(iommufd.ioas())
            walk = vfio_fault_walk(start)
            assert walk.walked > 5 and not walk.problems
            assert walk.steps[-1].injected is None

        def test_leaky(vfio_device, vfio_fault_walk):
            kept = []
            def start():
                iommufd = pyvfio.IommuFd(backend=vfio_device.backend)
                dev = vfio_device.open()
                kept.extend([dev, iommufd])
                dev.bind(iommufd)       # a failure here leaves both open
                dev.close()
                iommufd.close()
            try:
                vfio_fault_walk(start, kinds={"id_alloc"})
            finally:
                for obj in kept:
                    obj.close()

        def test_unchecked(vfio_system, vfio_fault_walk):
            def nothing():
                pass
            walk = vfio_fault_walk(nothing, check=False)
            assert walk.walked == 0 and len(walk.steps) == 1
    """)
    result = run(pytester, "-o", "vfio_leak_check=false")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*1 of 1 injected failures went wrong*",
                                 "*N=1: id_alloc #1 -> ENOMEM*VFIO_DEVICE_BIND_IOMMUFD*",
                                 "*left behind: open files*"])
