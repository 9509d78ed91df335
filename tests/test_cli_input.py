"""Bad input to the ``pyvfio`` command: every bad ``--fake`` file or
argument is one line naming it and the problem, with the documented exit
code (2: bad usage) and a JSON object under ``--json``; never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pyvfio.fake import System
from pyvfio.fake.machine.topology import TopologyError, load
from pyvfio.fake.machine.topology_fields import check_int
from pyvfio.setup import cli

ARABIC_THREE = "\u0663"  # int("\u0663") == 3


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``argv`` with and without --json: exit 2, one line on stderr,
    a JSON error object on stdout with --json.  Returns the line."""
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    code, out, err = run(capsys, "--json", *argv)
    assert code == cli.EXIT_USAGE
    data = json.loads(out)
    assert data == {"ok": False, "exit_code": 2,
                    "error": {"kind": "usage", "message": data["error"]["message"], "errno": None}}
    assert data["error"]["message"] in lines[0]
    return lines[0]


def topology_file(tmp_path: Path, text: str | bytes, name: str = "topo.json") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_a_5000_digit_integer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = topology_file(tmp_path, '{"memlock_limit": ' + "9" * 5000 + ', "devices": []}')
    line = usage_error(capsys, "--fake", path, "status")
    assert path in line and "4300 digits" in line and len(line) < 300


def test_a_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = topology_file(tmp_path, b'{"name": "\xff\xfe", "devices": []}')
    line = usage_error(capsys, "--fake", path, "doctor")
    assert path in line and "not UTF-8" in line


def test_deeply_nested_arrays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = topology_file(tmp_path, "[" * 100_000 + "]" * 100_000)
    line = usage_error(capsys, "--fake", path, "groups")
    assert path in line and "nested too deeply" in line
    # and as a dict given to the loader
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TopologyError, match="nested too deeply"):
        load({"devices": [], "description": deep})


@pytest.mark.parametrize("name", ["folder.json", "folder"])
def test_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    line = usage_error(capsys, "--fake", str(folder) + os.sep, "status")
    assert str(folder) in line and "Is a directory" in line
    line = usage_error(capsys, "bind", "--fake", str(folder), "00:02.0")
    assert str(folder) in line


def test_a_bridge_set_to_null_is_no_bridge() -> None:
    topo = load("default")
    raw = {"devices": [dict(d, bridge=None) if "bridge" not in d else d
                       for d in load("default")["devices"]]}
    assert [d.get("bridge") for d in load(raw)["devices"]] == \
        [d.get("bridge") for d in topo["devices"]]
    assert len(System(raw).backend.sysfs_listdir("/sys/bus/pci/devices")) == len(topo["devices"])


def test_other_scripts_digits_are_not_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "groups", "--fake", "default", ARABIC_THREE)
    assert "neither a PCI address" in line
    usage_error(capsys, "bind", "--fake", "default", "--group", ARABIC_THREE)
    usage_error(capsys, "unbind", "--fake", "default", "--group", "1" + ARABIC_THREE)
    usage_error(capsys, "bind", "--fake", "default", ARABIC_THREE * 4 + ":" + ARABIC_THREE * 4)
    # the ASCII spelling still works
    assert run(capsys, "groups", "--fake", "default", "1")[0] == cli.EXIT_PROBLEM
    assert run(capsys, "groups", "--fake", "default", "0")[0] == cli.EXIT_OK


def test_a_huge_group_number(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "groups", "--fake", "default", "9" * 5000)
    assert "no IOMMU group" in line and len(line) < 200
    usage_error(capsys, "restore", "--fake", "default", "--group", "9" * 30)


def test_topology_integers_are_ascii(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_int("0x10", "x") == 16 and check_int("12", "x") == 12
    for bad in (ARABIC_THREE, "1" + ARABIC_THREE, "\uff11", "9" * 5000):
        with pytest.raises(TopologyError, match="is not an integer"):
            check_int(bad, "numa_nodes")
    path = topology_file(tmp_path, json.dumps({"numa_nodes": ARABIC_THREE, "devices": []}))
    line = usage_error(capsys, "--fake", path, "status")
    assert "numa_nodes" in line and path in line


def test_huge_values_in_a_topology_are_one_short_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    topo = json.loads((Path(cli.__file__).parent.parent / "fake" / "machine" / "topologies"
                       / "default.json").read_text())
    topo["devices"][0]["numa_node"] = 10 ** 4000
    topo["devices"][0]["bars"] = [{"index": 0, "size": 3 ** 2000, "type": "mem64"}]
    path = topology_file(tmp_path, json.dumps(topo))
    line = usage_error(capsys, "--fake", path, "status")
    assert path in line and len(line) < 300


def test_a_driver_that_is_not_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "bind", "--fake", "default", "--driver", "../../../tmp", "00:02.0")
    assert "--driver" in line and "not a driver name" in line
