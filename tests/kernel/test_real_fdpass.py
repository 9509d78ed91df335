"""Unprivileged drivers on the real kernel: root runs ``pyvfio grant``, a
process running as ``nobody`` (uid 65534) receives the fds over a Unix
socket and drives edu with them -- DMA through the IOMMU included --
without opening any device node itself (it could not: /dev/iommu and the
device nodes are root's).  The driver code (tests/fdpass_env.py) is the
one tests/test_fdpass.py runs on the fake kernel."""

from __future__ import annotations

import codecs
import json
import os
import select
import shutil
import tempfile
from pathlib import Path

import pytest
from fdpass_env import drive_edu, listen, policy_file

from pyvfio.backend.kernel import KernelBackend
from pyvfio.setup import cli
from pyvfio.setup.grant import EXIT_OK

pytestmark = pytest.mark.kernel

NOBODY = 65534


def _read_all(fd: int, timeout: float) -> bytes:
    data = b""
    while select.select([fd], [], [], timeout)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("legacy", [False, True], ids=["cdev", "group"])
def test_nobody_drives_edu_with_granted_fds(edu: str, tmp_path: Path, legacy: bool) -> None:
    policy = policy_file(str(tmp_path / "etc"), f"{NOBODY} {edu}\n")
    # the child cannot import after dropping root (the test VM's interpreter
    # lives under /root, 0700): everything it runs is loaded now, the ascii
    # codec of the sysfs reads included
    backend = KernelBackend()
    codecs.lookup("ascii")
    backend.sysfs_read(f"/sys/bus/pci/devices/{edu}/vendor")
    run = tempfile.mkdtemp(prefix="pyvfio-grant-")
    os.chown(run, NOBODY, NOBODY)
    path = os.path.join(run, "edu.sock")
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the unprivileged driver
        code = 1
        try:
            os.close(ready_r)
            os.close(out_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            could_open = os.access("/dev/iommu", os.R_OK | os.W_OK)
            server = listen(path)
            os.write(ready_w, b"listening")
            os.close(ready_w)
            result = drive_edu(server, backend, timeout=120)
            result["could_open_iommu"] = could_open
            os.write(out_w, json.dumps(result).encode())
            code = 0
        except BaseException as exc:
            os.write(out_w, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    try:
        os.close(ready_w)
        os.close(out_w)
        assert _read_all(ready_r, 60) == b"listening"
        argv = ["grant", edu, "--user", str(NOBODY), "--socket", path, "--policy", policy]
        code = cli.main(argv + (["--legacy"] if legacy else []))
        result = json.loads(_read_all(out_r, 180) or b"{}")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(out_r)
        shutil.rmtree(run, ignore_errors=True)
    assert code == EXIT_OK
    assert os.waitstatus_to_exitcode(status) == 0, result
    assert result["uid"] == NOBODY and result["could_open_iommu"] is False
    assert result["kinds"] == (["container", "group", "device"] if legacy
                               else ["iommufd", "device"])
    assert result["liveness"] and result["factorial"] == 3628800
    assert result["dma"] is True, result


def test_grant_refuses_a_process_of_another_user(edu: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The policy gives edu to nobody, the socket is root's: refused (exit
    5) before the device is touched."""
    policy = policy_file(str(tmp_path / "etc"), f"{NOBODY} {edu}\n")
    path = str(tmp_path / "root.sock")
    with listen(path):
        code = cli.main(["grant", edu, "--user", str(NOBODY), "--socket", path,
                         "--policy", policy])
    assert code == 5
    assert f"runs as uid 0, not {NOBODY}" in capsys.readouterr().err
