"""Ask the VM host to act on the guest's hardware (QEMU QMP), from inside the guest.

The guest cannot reach QEMU's QMP socket, so requests travel as files
through the writable 9p share that tests/vm/guest.py mounts in the guest
(its guest path is in ``$PYVFIO_VM_SHARE``):

    guest: writes  <share>/hostctl/<name>.req    (JSON, created atomically by rename)
    host:  reads and deletes it, runs the QMP command,
           writes  <share>/hostctl/<name>.reply  (JSON, atomically)
    guest: reads and deletes the reply

Request kinds (the ``"op"`` key):

``device_del``   ``{"op": "device_del", "id": ID}`` -- QMP ``device_del``.
                 Replies once QMP has accepted the command; the unplug itself
                 completes later, when the guest kernel lets go of the device
                 (vfio-pci first signals the user through VFIO_DEVICE_REQ and
                 waits for every device fd to be closed).
``wait_deleted`` ``{"op": "wait_deleted", "id": ID, "timeout": S}`` -- waits for
                 QMP's ``DEVICE_DELETED`` event for ``ID`` (events are
                 remembered, so this may be asked after the fact).
``qmp``          ``{"op": "qmp", "execute": CMD, "arguments": {...}}`` -- any
                 QMP command, e.g. ``device_add`` or ``query-pci``.

Every reply is ``{"ok": true, "return": ...}`` or ``{"ok": false, "error": "..."}``.

Guest-side API (stdlib only; import this file from guest tests)::

    from hostctl import in_guest, request_device_del, wait_device_deleted
    request_device_del("e1000e0", timeout=30)
    wait_device_deleted("e1000e0", timeout=60)

Device ids defined by guest.py: edu0, nvme0, e1000e0, br0 (pcie-pci-bridge),
e1000a, e1000b (the two functions behind br0), and the root ports rp0..rp3.

The host side (``HostControlServer``) is used by guest.py.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

SHARE_ENV = "PYVFIO_VM_SHARE"
GUEST_ENV = "PYVFIO_GUEST"
REQUEST_DIR = "hostctl"
POLL_SECONDS = 0.05


class HostControlError(RuntimeError):
    """The host refused or failed a request, or did not answer in time."""


# --------------------------------------------------------------------------
# Guest side
# --------------------------------------------------------------------------

def in_guest() -> bool:
    """True inside the pyvfio test VM (guest.py exports PYVFIO_GUEST=1)."""
    return os.environ.get(GUEST_ENV) == "1"


def share_dir() -> Path:
    """The writable share's path inside the guest."""
    path = os.environ.get(SHARE_ENV)
    if not path:
        raise HostControlError(f"${SHARE_ENV} is not set: not in the test VM")
    return Path(path)


_counter = itertools.count()


def request(payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one request to the host and return the reply's ``return`` value."""
    folder = share_dir() / REQUEST_DIR
    folder.mkdir(exist_ok=True)
    name = f"{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}"
    tmp = folder / f"{name}.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.rename(folder / f"{name}.req")

    reply_path = folder / f"{name}.reply"
    # Host-side waits (wait_deleted) get their own deadline; allow a margin.
    deadline = time.monotonic() + timeout + 5.0
    while time.monotonic() < deadline:
        try:
            text = reply_path.read_text()
        except FileNotFoundError:
            time.sleep(POLL_SECONDS)
            continue
        reply_path.unlink()
        reply = json.loads(text)
        if not reply.get("ok"):
            raise HostControlError(f"{payload.get('op')}: {reply.get('error')}")
        return reply.get("return")
    raise HostControlError(f"no reply from the VM host to {payload} "
                           f"within {timeout} s")


def request_device_del(dev_id: str, timeout: float = 30.0) -> None:
    """QMP ``device_del`` of the device with QEMU id ``dev_id``.

    Returns when QEMU has accepted the request (the guest-side unplug may
    still be in progress; see :func:`wait_device_deleted`).
    """
    request({"op": "device_del", "id": dev_id}, timeout=timeout)


def wait_device_deleted(dev_id: str, timeout: float = 60.0) -> bool:
    """Wait for QEMU's DEVICE_DELETED event; False on timeout."""
    ret = request({"op": "wait_deleted", "id": dev_id, "timeout": timeout},
                  timeout=timeout)
    return bool(ret.get("deleted"))


def request_qmp(execute: str, arguments: dict[str, Any] | None = None,
                timeout: float = 30.0) -> Any:
    """Run any QMP command on the host's QEMU and return its result."""
    payload: dict[str, Any] = {"op": "qmp", "execute": execute}
    if arguments:
        payload["arguments"] = arguments
    return request(payload, timeout=timeout)


# --------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------

class QMPClient:
    """Minimal synchronous QMP client over a unix socket (events recorded)."""

    def __init__(self, path: str, connect_timeout: float = 30.0):
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._read_message(timeout=connect_timeout)          # greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def _read_message(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def poll_events(self, timeout: float = 0.0) -> None:
        """Read whatever has arrived (events) without sending anything."""
        while True:
            msg = self._read_message(timeout)
            if msg is None:
                return
            if "event" in msg:
                self.events.append(msg)
            timeout = 0.0

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 30.0) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise TimeoutError(f"QMP {command}: no reply")
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                err = reply["error"]
                raise RuntimeError(f"{err.get('class')}: {err.get('desc')}")
            elif "return" in reply:
                return reply["return"]

    def deleted_ids(self) -> set[str]:
        return {e.get("data", {}).get("device") for e in self.events
                if e.get("event") == "DEVICE_DELETED"} - {None}


class HostControlServer(threading.Thread):
    """Serve guest requests from ``<share>/hostctl`` against QEMU's QMP."""

    def __init__(self, share: Path, qmp_path: str, log=None):
        super().__init__(name="pyvfio-hostctl", daemon=True)
        self.folder = Path(share) / REQUEST_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.qmp_path = qmp_path
        self.log = log or (lambda msg: None)
        self.stop_event = threading.Event()
        self.qmp: QMPClient | None = None
        # name -> (request, deadline) for wait_deleted requests in progress
        self.waits: dict[str, tuple[dict[str, Any], float]] = {}

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            self.qmp = QMPClient(self.qmp_path)
        except Exception as exc:  # QEMU died early; the launcher reports it
            self.log(f"hostctl: cannot connect to QMP: {exc}")
            return
        try:
            while not self.stop_event.is_set():
                self.qmp.poll_events(timeout=POLL_SECONDS)
                for req_path in sorted(self.folder.glob("*.req")):
                    self._handle(req_path)
                self._check_waits()
        except ConnectionError:
            pass                   # QEMU exited (guest powered off): normal
        except OSError as exc:
            if not self.stop_event.is_set():
                self.log(f"hostctl: QMP connection lost: {exc}")
        finally:
            self.qmp.close()

    def _reply(self, name: str, reply: dict[str, Any]) -> None:
        tmp = self.folder / f"{name}.reply.tmp"
        tmp.write_text(json.dumps(reply))
        tmp.rename(self.folder / f"{name}.reply")

    def _handle(self, req_path: Path) -> None:
        name = req_path.name[:-len(".req")]
        try:
            req = json.loads(req_path.read_text())
        except (OSError, ValueError) as exc:
            self._reply(name, {"ok": False, "error": f"bad request: {exc}"})
            req_path.unlink(missing_ok=True)
            return
        req_path.unlink(missing_ok=True)
        self.log(f"hostctl: guest request {req}")
        assert self.qmp is not None
        op = req.get("op")
        try:
            if op == "device_del":
                ret = self.qmp.execute("device_del", {"id": req["id"]})
            elif op == "wait_deleted":
                timeout = float(req.get("timeout", 60.0))
                self.waits[name] = (req, time.monotonic() + timeout)
                return                      # answered by _check_waits
            elif op == "qmp":
                ret = self.qmp.execute(req["execute"], req.get("arguments"))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            self._reply(name, {"ok": False, "error": str(exc)})
            return
        self._reply(name, {"ok": True, "return": ret})

    def _check_waits(self) -> None:
        assert self.qmp is not None
        deleted = self.qmp.deleted_ids()
        now = time.monotonic()
        for name, (req, deadline) in list(self.waits.items()):
            if req["id"] in deleted or now >= deadline:
                del self.waits[name]
                self._reply(name, {"ok": True,
                                   "return": {"deleted": req["id"] in deleted}})
