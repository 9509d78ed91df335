"""The unprivileged driver of the fd-passing tests, shared by the fake-kernel
tests (tests/test_fdpass.py) and the real-kernel ones
(tests/kernel/test_real_fdpass.py): it listens on a Unix socket, receives
the fds ``pyvfio grant`` sends, and drives QEMU's edu device with them --
opening nothing itself."""

from __future__ import annotations

import os
import socket

from toolkit_env import load_example

from pyvfio.backend import Backend
from pyvfio.toolkit.fdpass import open_received, recv_fds

EDU = load_example("edu_dma")


def listen(path: str) -> socket.socket:
    """A Unix stream socket listening at ``path``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    return server


def drive_edu(server: socket.socket, backend: Backend | None = None,
              timeout: float = 30.0) -> dict[str, object]:
    """Accept the grant, open what it carries and check edu: liveness, a
    factorial with its interrupt and a DMA round trip through the IOMMU.
    Returns what it found (``ok`` when every check passed)."""
    server.settimeout(timeout)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(timeout)
        with recv_fds(conn) as received:
            kinds = [k.value for k in received.kinds()]
            with open_received(received, backend=backend) as (device, space):
                driver = EDU.EduDriver(device, space)
                try:
                    live = driver.liveness()
                    fact = driver.factorial(10)
                    dma_ok, iova = driver.dma_round_trip()
                finally:
                    driver.close()
                    # the sender hangs up once its own copies of the fds are
                    # closed: until then the files stay open (the device
                    # stays attached), so wait for that before closing ours
                    # (a sender in the same process may still hold them)
                    conn.recv(1)
    return {"kinds": kinds, "liveness": live, "factorial": fact, "dma": dma_ok,
            "iova": iova, "uid": os.getuid(),
            "ok": live and fact == 3628800 and dma_ok}


def policy_file(folder: str, text: str) -> str:
    """A policy file as ``pyvfio grant`` accepts it (0600 in a 0700 folder)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = os.path.join(folder, "grant.policy")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path

