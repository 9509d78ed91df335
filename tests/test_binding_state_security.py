"""The binding state file (pyvfio.setup.binding_state) as untrusted input:
every value read back is checked before it names a sysfs path, the file,
its lock and temporary copies are never reached through symbolic links,
new files are 0600 whatever the umask, and a damaged file is one
BindingStateError line (exit code 3 in the ``pyvfio`` command), never a
traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pyvfio.errors import InvalidArgumentError
from pyvfio.fake import System
from pyvfio.setup import binding, binding_state, cli
from pyvfio.setup.binding_state import BindError, BindingRecord, BindingState, BindingStateError

EDU, NVME = "0000:00:02.0", "0000:00:03.0"


@pytest.fixture
def system() -> System:
    return System("default")


@pytest.fixture
def writes(system: System, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every sysfs write made through the system's backend."""
    seen: list[tuple[str, str]] = []
    real = system.backend.sysfs_write

    def spy(path: str, value: str) -> None:
        seen.append((path, value))
        real(path, value)
    monkeypatch.setattr(system.backend, "sysfs_write", spy)
    return seen


def state_file(tmp_path: Path, devices: dict[str, Any]) -> Path:
    path = tmp_path / "bindings.json"
    path.write_text(json.dumps({"version": 1, "devices": devices}))
    return path


def record(driver: Any = "nvme", override: Any = None, since: Any = 1.5) -> dict[str, Any]:
    return {"driver": driver, "driver_override": override, "since": since}


def one_line_naming(exc: BaseException, path: Path | str) -> str:
    text = str(exc)
    assert "\n" not in text and str(path) in text, text
    return text


# -- values read back never reach sysfs unchecked --------------------------------------------
@pytest.mark.parametrize("driver", ["../../../../tmp/evil", "..", ".", "a/b", "nvme\n", "x" * 200])
def test_a_bad_driver_in_the_file_writes_nothing(tmp_path: Path, system: System,
                                                  writes: list[tuple[str, str]],
                                                  driver: str) -> None:
    path = state_file(tmp_path, {NVME: record(driver)})
    with pytest.raises(BindingStateError) as exc:
        binding.restore(NVME, backend=system.backend, state=BindingState(str(path)))
    assert "is not a driver name" in one_line_naming(exc.value, path)
    assert writes == []
    assert json.loads(path.read_text())["devices"][NVME]["driver"] == driver  # left for a look


@pytest.mark.parametrize("override", ["vfio-pci\nnvme", "../x", "a b", "\x00"])
def test_a_bad_driver_override_in_the_file_writes_nothing(
        tmp_path: Path, system: System, writes: list[tuple[str, str]], override: str) -> None:
    path = state_file(tmp_path, {NVME: record("nvme", override)})
    with pytest.raises(BindingStateError) as exc:
        binding.restore(NVME, backend=system.backend, state=BindingState(str(path)))
    assert "driver_override" in one_line_naming(exc.value, path)
    assert writes == []


def test_a_sound_file_still_restores(tmp_path: Path, system: System) -> None:
    st = BindingState(str(tmp_path / "state" / "bindings.json"))
    binding.bind(NVME, backend=system.backend, state=st)
    assert st.get(NVME) == BindingRecord(NVME, "nvme", None, st.get(NVME).since)  # type: ignore[union-attr]
    assert binding.restore(NVME, backend=system.backend, state=st).driver == "nvme"
    # an empty override (as older files may hold) is "none set"
    path = state_file(tmp_path, {NVME: record("nvme", "")})
    assert BindingState(str(path)).get(NVME) == BindingRecord(NVME, "nvme", "", 1.5)


def test_a_record_passed_in_is_checked_too(system: System,
                                           writes: list[tuple[str, str]]) -> None:
    bad = binding.Binding(NVME, "nvme", "vfio-pci", True, 1,
                          BindingRecord(NVME, "../../../tmp", None))
    with pytest.raises(BindError) as exc:
        binding.restore(bad, backend=system.backend, state=BindingState())
    assert "is not a driver name" in str(exc.value) and writes == []


def test_only_driver_names_are_bound_or_remembered(system: System,
                                                   writes: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidArgumentError):
        binding.bind(NVME, "../../../tmp", backend=system.backend, state=BindingState())
    st = BindingState()
    with pytest.raises(BindError) as exc:
        st.remember(NVME, "nvme", "odd\noverride")
    assert "driver_override" in str(exc.value) and st.records() == []
    with pytest.raises(BindError):
        st.remember("0000:00:03.0/../x", "nvme", None)
    assert writes == []
    assert binding_state.is_driver_name("vfio-pci") and binding_state.is_driver_name("mlx5_core")
    assert not any(binding_state.is_driver_name(n) for n in ("", ".", "..", "a/b", None, 5))
    assert binding_state.is_bdf(NVME) and not binding_state.is_bdf(NVME + "\n")
    assert not binding_state.is_bdf("0000:00:0A.0") and not binding_state.is_bdf("00:03.0")


# -- the files on disk ---------------------------------------------------------------------------
@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_new_files_are_private_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    folder = tmp_path / "state"
    st = BindingState(str(folder / "bindings.json"))
    st.remember(EDU, None, None)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "bindings.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "bindings.json.lock").stat().st_mode) == 0o600
    st.forget(EDU)
    assert stat.S_IMODE((folder / "bindings.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["bindings.json", "bindings.json.lock"]


def test_the_state_file_is_not_read_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = state_file(tmp_path, {NVME: record()})
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / "bindings.json").symlink_to(elsewhere)
    st = BindingState(str(folder / "bindings.json"))
    with pytest.raises(BindingStateError) as exc:
        st.records()
    assert "symbolic link" in one_line_naming(exc.value, folder / "bindings.json")
    with pytest.raises(BindingStateError):
        st.remember(EDU, None, None)
    assert EDU not in elsewhere.read_text()


def test_the_lock_file_is_not_opened_through_a_symlink(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (folder / "bindings.json.lock").symlink_to(victim)
    with pytest.raises(BindingStateError) as exc:
        BindingState(str(folder / "bindings.json")).remember(EDU, None, None)
    assert "lock" in one_line_naming(exc.value, folder / "bindings.json")
    assert not victim.exists()


def test_the_temporary_file_is_new_and_not_followed(tmp_path: Path) -> None:
    # the name the temporary copy used to have (<file>.<pid>.tmp) is no trap
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    path = folder / "bindings.json"
    Path(f"{path}.{os.getpid()}.tmp").symlink_to(victim)
    BindingState(str(path)).remember(EDU, None, None)
    assert not victim.exists()
    assert EDU in json.loads(path.read_text())["devices"]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o720])
def test_a_folder_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(mode)
    st = BindingState(str(folder / "bindings.json"))
    for act in (st.records, lambda: st.remember(EDU, None, None)):
        with pytest.raises(BindingStateError) as exc:
            act()
        assert "writable by others" in one_line_naming(exc.value, folder)
    assert list(folder.iterdir()) == []


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(BindingStateError) as exc:
        BindingState(str(tmp_path / "link" / "bindings.json")).remember(EDU, None, None)
    assert "symbolic link" in one_line_naming(exc.value, tmp_path / "link")
    assert list(real.iterdir()) == []


def test_a_folder_of_another_user_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, 12345, 12345)
    else:  # the folder is ours: make pyvfio see another user
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(BindingStateError) as exc:
        BindingState(str(folder / "bindings.json")).remember(EDU, None, None)
    assert "belongs to uid" in one_line_naming(exc.value, folder)


def test_a_state_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = state_file(tmp_path, {NVME: record()})
    path.chmod(0o666)
    with pytest.raises(BindingStateError) as exc:
        BindingState(str(path)).get(NVME)
    assert "writable by others" in one_line_naming(exc.value, path)


# -- a damaged file: the mutations -----------------------------------------------------------------
GOOD: dict[str, Any] = {"version": 1, "devices": {NVME: record()}}


def _with(change: Callable[[dict[str, Any]], None]) -> str:
    data = json.loads(json.dumps(GOOD))
    change(data)
    return json.dumps(data)


def _top(key: str, value: Any) -> str:
    return _with(lambda d: d.__setitem__(key, value))


def _drop_top(key: str) -> str:
    return _with(lambda d: d.pop(key))


def _rec(key: str, value: Any) -> str:
    return _with(lambda d: d["devices"][NVME].__setitem__(key, value))


def _drop_rec(key: str) -> str:
    return _with(lambda d: d["devices"][NVME].pop(key))


def _whole_rec(value: Any) -> str:
    return _with(lambda d: d["devices"].__setitem__(NVME, value))


def _key(bdf: str) -> str:
    return _with(lambda d: d["devices"].__setitem__(bdf, d["devices"].pop(NVME)))


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


BAD_NAMES = [5, 1.5, True, [], {}, "../../../tmp/x", "..", ".", "a/b", "nvme\x00", "nvme\n",
             "x" * 200, "\u00e9", " nvme", _nested(500)]

BAD_VERSIONS: list[Any] = ["1", 2, True, 1.0, None, 0, [1]]
BAD_DEVICES: list[Any] = [[], "x", None, 5, True]
BAD_RECORDS: list[Any] = [[], "nvme", None, 3]
BAD_TIMES: list[Any] = ["1", None, True, [], {}, -1, 1e13]

MUTATIONS: dict[str, str | bytes] = {
    "no version": _drop_top("version"),
    "no devices": _drop_top("devices"),
    "an unknown top key": _top("extra", 1),
    **{f"version {v!r}": _top("version", v) for v in BAD_VERSIONS},
    **{f"devices {v!r}": _top("devices", v) for v in BAD_DEVICES},
    "a list": "[]", "a string": '"devices"', "a number": "1", "null": "null",
    **{f"no {k}": _drop_rec(k) for k in ("driver", "driver_override", "since")},
    "an unknown record key": _rec("extra", 1),
    **{f"record {v!r}": _whole_rec(v) for v in BAD_RECORDS},
    **{f"driver {str(v)[:20]!r}": _rec("driver", v) for v in [*BAD_NAMES, ""]},
    **{f"override {str(v)[:20]!r}": _rec("driver_override", v)
       for v in [*BAD_NAMES, "vfio-pci\nnvme"]},
    **{f"since {v!r}": _rec("since", v) for v in BAD_TIMES},
    "since 10**400": _rec("since", 0).replace('"since": 0', '"since": 1' + "0" * 400),
    "since NaN": _rec("since", float("nan")),
    "since Infinity": _rec("since", float("inf")),
    **{f"bdf {b!r}": _key(b) for b in (NVME + "\n", "../x", "00:03.0", NVME + " ", "0000:0A:00.0",
                                       "", "0000:00:03.8", "\x00", "0000:00:03.0/../..")},
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "a 5000-digit integer": '{"version": ' + "9" * 5000 + ', "devices": {}}',
    "not UTF-8": b'{"version": 1, "devices": {"\xff\xfe": 1}}',
    "empty": "",
    "truncated": json.dumps(GOOD)[:-3],
    "a NUL byte": json.dumps(GOOD)[:10] + "\x00" + json.dumps(GOOD)[10:],
    "too large": '{"version": 1, "devices": {}, "pad": "' + "x" * (2 << 20) + '"}',
    "20000 records": json.dumps({"version": 1, "devices": {
        f"0000:{i >> 8:02x}:{(i >> 3) & 0x1f:02x}.{i & 7}": record() for i in range(20000)}}),
}
SPECIAL = ["a symlink", "a folder", "a fifo", "a 0666 file"]


def test_there_are_enough_mutations() -> None:
    assert len(MUTATIONS) + len(SPECIAL) >= 80


def _damage(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    path = folder / "bindings.json"
    if name == "a symlink":
        path.symlink_to(state_file(tmp_path, GOOD["devices"]))
    elif name == "a folder":
        path.mkdir()
    elif name == "a fifo":
        os.mkfifo(path, 0o600)
    elif name == "a 0666 file":
        path.write_text(json.dumps(GOOD))
        path.chmod(0o666)
    else:
        text = MUTATIONS[name]
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


@pytest.mark.parametrize("name", [*MUTATIONS, *SPECIAL])
def test_a_damaged_state_file_is_one_error_line(tmp_path: Path, system: System, name: str,
                                                writes: list[tuple[str, str]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _damage(tmp_path, name)
    st = BindingState(str(path))
    for act in (st.records, lambda: st.get(NVME), lambda: st.remember(EDU, None, None),
                lambda: st.forget(NVME),
                lambda: binding.restore(NVME, backend=system.backend, state=st),
                lambda: binding.bind(EDU, backend=system.backend, state=st)):
        with pytest.raises(BindingStateError) as exc:
            act()
        assert str(exc.value).startswith("cannot ")
        one_line_naming(exc.value, path)
    assert writes == []
    # the command: exit code 3, one line on stderr, JSON with --json
    for argv in (["restore"], ["restore", NVME], ["bind", "00:02.0"]):
        code = cli.main([*argv, "--state", str(path)], backend=system.backend)
        out, err = capsys.readouterr()
        assert code == cli.EXIT_FAILED
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err
        assert "Traceback" not in out + err
        code = cli.main([*argv, "--json", "--state", str(path)], backend=system.backend)
        out, err = capsys.readouterr()
        assert code == cli.EXIT_FAILED
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err
        data = json.loads(out)
        assert data["ok"] is False and str(path) in data["error"]["message"]
    assert writes == []
