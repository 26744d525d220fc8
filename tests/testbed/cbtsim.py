# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CBT-capable vCenter simulator (tests/peers/cbtsim) on loopback with TLS.

    sim = CbtSim().start()         # VMs cbtsim-vm0, cbtsim-vm1 (one 64 MiB disk each, powered on)
    sim.host, sim.port, sim.url, sim.username, sim.password, sim.ca_file
    sim.control_url                # the control API (plain HTTP, see tests/peers/cbtsim/README.md);
                                   # CbtSimControl(url) speaks it from another process
    sim.env()                      # VMWARE_HOST/PORT/USER/PASSWORD, VMWARE_VALIDATE_CERTS=false
    sim.env(validate_certs=True)   # ... VMWARE_VALIDATE_CERTS=true and VMWARE_CA_CERT=<ca_file>
    sim.connect()                  # a pyVmomi ServiceInstance (certificate verified with ca_file)
    sim.vms(); sim.vm("cbtsim-vm0") # inventory with local disk file paths and CBT state
    sim.write(moid, 2000, offset, length, pattern="random", seed=1)   # guest writes into the live disk
    sim.writes(moid, 2000)         # the simulator's write log for that disk
    sim.inject_fault("CreateSnapshot_Task", "task_error", vm=moid, count=1)
    sim.export(moid, snapshot_moid, 2000)   # nbdkit --readonly on a unix socket -> {"uri", "size", ...}
    sim.create_vm("app01", disks=[{"size": 256 << 20, "fill": {"random_percent": 30, "seed": 7}}])
    sim.create_vm("app02", disks=[...], guest={"tools": "not_running"})   # VMware Tools (default: running)
    sim.guest(moid, hung=True, shutdown_seconds=2)   # the guest: tools running/not_running/not_installed,
                                                     # ShutdownGuest delay, a hung guest that never powers off
    sim.config(page_limit=4, page_window=1 << 20)   # QueryChangedDiskAreas paging, at run time
    sim.stop()

The simulator speaks vSphere SOAP like vcsim (it is vcsim plus change tracking): enabling CBT,
snapshots carrying ``backing.changeId``, ``QueryChangedDiskAreas`` computed from what really
changed in each disk's sparse flat file, frozen snapshot copies served over NBD, and injected
faults. Its datastore folder and snapshot copies live under the test output folder; stop() removes
them (the log stays). Several simulators can run at once.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testbed.core import PeerError, Process, bin_dir, output_dir, require_binary

_SEQ = itertools.count()

DEFAULT_USERNAME = "administrator@vsphere.local"
MiB = 1 << 20


class CbtSimError(RuntimeError):
    """The control API refused a request; ``status`` is the HTTP status, ``message`` its text."""

    def __init__(self, method: str, path: str, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__("cbtsim control API %s %s: HTTP %d: %s" % (method, path, status, message))


class CbtSimControl:
    """The simulator's control API (plain HTTP on loopback) at ``control_url``. CbtSim is one; a
    process that did not start the simulator (a playbook's hook, say) makes its own from the URL."""

    def __init__(self, control_url: str | None = None):
        self.control_url = control_url

    def _require_started(self) -> None:
        if not self.control_url:
            raise RuntimeError("cbtsim control API: no control URL")

    def _request(self, method: str, path: str, body=None, timeout: float = 300.0):
        self._require_started()
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.control_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except ValueError:
                message = raw.decode(errors="replace")
            raise CbtSimError(method, path, exc.code, message) from None

    def vms(self) -> list:
        """Every VM: moid, name, instance_uuid, power_state, hw_version, cbt_enabled, disks, snapshots."""
        return self._request("GET", "/vms")

    def vm(self, moid_or_name: str) -> dict:
        """One VM by moid (``vm-31``) or name."""
        for vm in self.vms():
            if moid_or_name in (vm["moid"], vm["name"]):
                return vm
        raise CbtSimError("GET", "/vms", 404, "no VM with moid or name %r" % moid_or_name)

    def disk(self, moid_or_name: str, key: int) -> dict:
        for disk in self.vm(moid_or_name)["disks"]:
            if disk["key"] == key:
                return disk
        raise CbtSimError("GET", "/vms", 404, "VM %r has no disk %d" % (moid_or_name, key))

    def write(self, moid: str, key: int, offset: int, length: int | None = None, pattern: str = "random",
              seed: int = 0, data: bytes | None = None, return_data: bool = False) -> dict:
        """Write into the live disk like the guest would. ``pattern`` is random (seeded), zero,
        byte:NN or discard (punch a hole); or give ``data``. Returns what was written (sha256,
        the change ID the write belongs after, and the bytes with return_data=True)."""
        body = {"offset": offset}
        if data is not None:
            import base64  # pylint: disable=import-outside-toplevel

            body["data_b64"] = base64.b64encode(data).decode()
        else:
            body.update({"length": length, "pattern": pattern, "seed": seed})
        if return_data:
            body["return_data"] = True
        res = self._request("POST", "/vms/%s/disks/%d/write" % (moid, key), body)
        if return_data:
            import base64  # pylint: disable=import-outside-toplevel

            res["data"] = base64.b64decode(res.pop("data_b64"))
        return res

    def writes(self, moid: str, key: int, since: int = 0) -> list:
        """The simulator's write log for one disk (entries with index > since)."""
        return self._request("GET", "/vms/%s/disks/%d/writes?since=%d" % (moid, key, since))

    def invalidate_ctk(self, moid: str) -> dict:
        """Simulate 'Change tracking invalid; reinitializing' (host crash): new CBT UUIDs now."""
        return self._request("POST", "/vms/%s/ctk-invalidate" % moid, {})

    def inject_fault(self, method: str, kind: str, privilege: str | None = None, vm: str | None = None,
                     count: int = 1, fault: str | None = None, message: str | None = None,
                     delay_ms: int | None = None, cancelable: bool | None = None) -> dict:
        """Make the next ``count`` calls of ``method`` (or "*") fail. kind: no_permission,
        task_error or not_authenticated; or task_delay: the task stays queued ``delay_ms``
        (``cancelable``: CancelTask ends it then, else CancelTask is refused) and then runs.
        count=0 keeps the rule until clear_faults()."""
        body = {"method": method, "kind": kind, "count": count}
        for key, value in (("privilege", privilege), ("vm", vm), ("fault", fault), ("message", message),
                           ("delay_ms", delay_ms), ("cancelable", cancelable)):
            if value is not None:
                body[key] = value
        return self._request("POST", "/faults", body)

    def set_connection_state(self, moid: str, state: str) -> dict:
        """runtime.connectionState of a VM: connected, disconnected, orphaned, inaccessible or invalid."""
        return self._request("POST", "/vms/%s/connection-state" % moid, {"state": state})

    def faults(self) -> list:
        return self._request("GET", "/faults")

    def clear_faults(self) -> None:
        self._request("DELETE", "/faults")

    def export(self, vm: str, snapshot: str | None, disk_key: int, socket: str | None = None) -> dict:
        """Serve a snapshot's frozen disk (or, with snapshot=None, the live disk of a powered-off
        VM) read-only over NBD: {"id", "uri", "socket", "size", "file", "change_id", "pid"}.
        ``socket``: listen on this absolute path (an old socket or export there is replaced)."""
        body = {"vm": vm, "snapshot": snapshot or "", "disk_key": disk_key}
        if socket:
            body["socket"] = str(socket)
        return self._request("POST", "/exports", body)

    def export_disks(self, vm: str, snapshot: str | None, disks) -> list:
        """Export several disks at once (all or none): ``disks`` is a list of disk keys or of
        {"disk_key", "socket"} dicts. Returns the exports."""
        body = {"vm": vm, "snapshot": snapshot or "",
                "disks": [d if isinstance(d, dict) else {"disk_key": int(d)} for d in disks]}
        return self._request("POST", "/exports", body)["exports"]

    def exports(self) -> list:
        return self._request("GET", "/exports")

    def unexport(self, export_id: str) -> dict:
        return self._request("DELETE", "/exports/%s" % urllib.parse.quote(export_id))

    def create_vm(self, name: str, disks, power_state: str = "poweredOn", hw_version: str | None = None,
                  change_tracking_supported: bool | None = None, cbt_enabled: bool = False,
                  guest_id: str | None = None, guest: dict | None = None) -> dict:
        """Create a VM. ``disks`` is a list of sizes (bytes) or dicts {"size", "mode", "rdm",
        "backing", "thin", "fill": {"random_percent", "seed", "chunk", "zero_regions"}}.
        ``guest``: {"tools": "running" (default) | "not_running" | "not_installed",
        "shutdown_seconds": ShutdownGuest -> poweredOff delay, "hung": never completes ShutdownGuest}."""
        spec = {"name": name, "power_state": power_state, "cbt_enabled": cbt_enabled,
                "disks": [d if isinstance(d, dict) else {"size": int(d)} for d in disks]}
        if guest is not None:
            spec["guest"] = guest
        if hw_version is not None:
            spec["hw_version"] = hw_version
        if change_tracking_supported is not None:
            spec["change_tracking_supported"] = change_tracking_supported
        if guest_id is not None:
            spec["guest_id"] = guest_id
        return self._request("POST", "/vms", spec)

    def guest(self, moid: str, tools: str | None = None, shutdown_seconds: float | None = None,
              hung: bool | None = None) -> dict:
        """Change a VM's guest: VMware Tools (running, not_running, not_installed), the delay between
        ShutdownGuest and poweredOff, and whether the guest hangs on shutdown. Returns the VM; its
        "guest" holds the reported tools/guest state, last_power_off and guest_shutdowns."""
        body = {}
        for key, value in (("tools", tools), ("shutdown_seconds", shutdown_seconds), ("hung", hung)):
            if value is not None:
                body[key] = value
        return self._request("POST", "/vms/%s/guest" % moid, body)

    def config(self, page_limit: int | None = None, page_window: int | None = None) -> dict:
        """Read, or change at run time, the QueryChangedDiskAreas paging."""
        body = {}
        if page_limit is not None:
            body["page_limit"] = page_limit
        if page_window is not None:
            body["page_window"] = page_window
        if not body:
            return self._request("GET", "/config")
        return self._request("POST", "/config", body)

    def reset(self) -> dict:
        """Clear fault rules, stop every export and restore the start-up paging configuration."""
        return self._request("POST", "/reset", {})


class CbtSim(CbtSimControl):
    """A running cbtsim; see the module docstring."""

    peer = "cbtsim"
    binary_name = "cbtsim"

    def __init__(self, name: str = "default", username: str = DEFAULT_USERNAME, password: str | None = None,
                 vms: int = 2, disk_size: int = 64 * MiB, fill_percent: float = 0.0,
                 page_limit: int | None = None, page_window: int | None = None, block_size: int | None = None,
                 datastore_type: str = "VMFS", tls: bool = True, workdir=None, extra_args=(),
                 keep_files: bool = False, start_timeout: float = 60.0):
        self.name = name
        self.id = "%s-%d-%d" % (name, os.getpid(), next(_SEQ))
        self.workdir = Path(workdir) if workdir else output_dir() / "cbtsim" / self.id
        self.username = username
        self.password = password or ("Cbt-" + secrets.token_urlsafe(12))
        self.vm_count = vms
        self.disk_size = disk_size
        self.fill_percent = fill_percent
        self.page_limit = page_limit
        self.page_window = page_window
        self.block_size = block_size
        self.datastore_type = datastore_type
        self.tls = tls
        self.extra_args = list(extra_args)
        self.keep_files = keep_files
        self.start_timeout = start_timeout
        self.binary = bin_dir() / self.binary_name
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.url: str | None = None
        super().__init__(None)
        self.ca_file: Path | None = None
        self.datastore_dir: Path | None = None
        self.datastore: str | None = None
        self.datacenter: str | None = None
        self.cluster: str | None = None
        self.ready: dict | None = None
        self.startup_seconds: float | None = None
        self.process: Process | None = None

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> "CbtSim":
        require_binary(self.peer, self.binary)
        began = time.monotonic()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        ready_file = self.workdir / "ready.json"
        argv = [
            self.binary,
            "-l", "127.0.0.1:0",
            "-control", "127.0.0.1:0",
            "-datastore-dir", self.workdir / "datastore",
            "-datastore-type", self.datastore_type,
            "-state-dir", self.workdir / "state",
            "-username", self.username,
            "-password", self.password,
            "-vms", str(self.vm_count),
            "-disk-size", str(self.disk_size),
            "-fill-percent", str(self.fill_percent),
            "-tls=%s" % ("true" if self.tls else "false"),
            "-ready-file", ready_file,
        ]
        if self.page_limit is not None:
            argv += ["-page-limit", str(self.page_limit)]
        if self.page_window is not None:
            argv += ["-page-window", str(self.page_window)]
        if self.block_size is not None:
            argv += ["-block-size", str(self.block_size)]
        argv += self.extra_args
        # the password is on the command line: acceptable for a loopback test peer
        self.process = Process(self.peer, argv, env={"TMPDIR": str(self.workdir)},
                               log_name="cbtsim-%s.log" % self.id).start()

        def is_ready():
            if not ready_file.exists():
                return False
            doc = json.loads(ready_file.read_text())
            self.ready = doc
            self.port = int(doc["port"])
            self.url = doc["url"]
            self.control_url = doc["control_url"]
            self.ca_file = Path(doc["ca_file"]) if doc.get("ca_file") else None
            self.datastore_dir = Path(doc["datastore_dir"])
            self.datastore = doc["datastore"]
            self.datacenter = doc["datacenter"]
            self.cluster = doc["cluster"]
            if self.tls:
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
                with urllib.request.urlopen("https://%s:%d/about" % (self.host, self.port), context=ctx,
                                            timeout=5) as resp:
                    if resp.status != 200:
                        return False
            with urllib.request.urlopen(self.control_url + "/healthz", timeout=5) as resp:
                return resp.status == 200

        self.process.wait_ready(is_ready, timeout=self.start_timeout, what="serving (ready file %s)" % ready_file)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if not self.keep_files:
            shutil.rmtree(self.workdir / "datastore", ignore_errors=True)
            shutil.rmtree(self.workdir / "state", ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _require_started(self) -> None:
        if self.port is None or self.process is None or not self.process.alive():
            raise PeerError(self.peer, "simulator %s is not running (call start() first)" % self.name,
                            self.process.argv if self.process else None,
                            self.process.log if self.process else None)

    # ---- facts for clients -------------------------------------------------------------------

    def env(self, validate_certs: bool = False) -> dict:
        """Connection variables as vmware.vmware-style modules read them."""
        self._require_started()
        env = {
            "VMWARE_HOST": self.host,
            "VMWARE_PORT": str(self.port),
            "VMWARE_USER": self.username,
            "VMWARE_PASSWORD": self.password,
            "VMWARE_VALIDATE_CERTS": "true" if validate_certs else "false",
        }
        if validate_certs:
            env["VMWARE_CA_CERT"] = str(self.ca_file)
        return env

    def connect(self, validate_certs: bool = True):
        """A pyVmomi ServiceInstance logged in as the simulator's user (caller disconnects)."""
        self._require_started()
        from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel

        if validate_certs and self.tls:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return SmartConnect(host=self.host, port=self.port, user=self.username, pwd=self.password,
                            sslContext=ctx)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "control_url": self.control_url,
            "username": self.username,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "datastore_dir": str(self.datastore_dir) if self.datastore_dir else None,
            "startup_seconds": round(self.startup_seconds or 0, 2),
            "log": str(self.process.log) if self.process else None,
        }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m testbed.cbtsim
    import signal

    _sim = CbtSim(name="manual").start()
    print(json.dumps(_sim.describe(), indent=2))
    for _key, _value in sorted(_sim.env().items()):
        print("export %s=%s" % (_key, _value))
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        _sim.stop()
