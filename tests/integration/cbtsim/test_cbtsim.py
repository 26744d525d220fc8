# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the CBT vCenter simulator itself (tests/peers/cbtsim), driven through pyVmomi.

The oracle for changed areas is the test's own record of what it wrote (cross-checked with the
simulator's write log), rounded to the tracking block size; for "*" it is the file system's
allocation map of the frozen copy and the bytes read back over NBD.
"""

import hashlib
import os
import random
import re
import socket
import ssl
import time

import nbd  # python3-libnbd (Debian package), reached through the venv's system site packages
import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from testbed.cbtsim import CbtSim, CbtSimError

MiB = 1 << 20
KiB = 1 << 10
DISK = 32 * MiB
KEY = 2000
CHANGE_ID_RE = re.compile(r"^((?:[0-9a-f]{2} ){7}[0-9a-f]{2}-(?:[0-9a-f]{2} ){7}[0-9a-f]{2})/(\d+)$")


# ---- fixtures and helpers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    peer = CbtSim(name="selftest", vms=1, disk_size=DISK).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def si(sim):
    conn = sim.connect()
    yield conn
    Disconnect(conn)


@pytest.fixture
def paging(sim):
    """Restore the simulator's paging configuration after a test changes it."""
    before = sim.config()
    yield sim
    sim.config(page_limit=before["page_limit"], page_window=before["page_window"])


_names = iter(range(10 ** 6))


def new_vm(sim, si, prefix, disks=(DISK,), **kwargs):
    info = sim.create_vm("%s-%d" % (prefix, next(_names)), disks=list(disks), **kwargs)
    return info, vim.VirtualMachine(info["moid"], si._stub)


def run(task):
    WaitForTask(task)
    return task.info.result


def enable_cbt(vm):
    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))


def snapshot(vm, name):
    return run(vm.CreateSnapshot_Task(name, "cbtsim self test", False, False))


def disk_of(config, key=KEY):
    for dev in config.hardware.device:
        if isinstance(dev, vim.vm.device.VirtualDisk) and dev.key == key:
            return dev
    raise AssertionError("no disk %d" % key)


def change_id(config, key=KEY):
    return disk_of(config, key).backing.changeId


def qcda_pages(vm, snap, change, capacity=DISK, key=KEY):
    """The paging loop every client must run: continue at startOffset+length until the end."""
    pages = []
    start = 0
    while start < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=start, changeId=change)
        assert info.startOffset == start
        assert info.length > 0, "a page must always advance"
        pages.append((info.startOffset, info.length, [(a.start, a.length) for a in info.changedArea]))
        start = info.startOffset + info.length
    assert start == capacity
    return pages


def merge(ranges):
    out = []
    for s, length in sorted(ranges):
        if length <= 0:
            continue
        if out and out[-1][0] + out[-1][1] >= s:
            end = max(out[-1][0] + out[-1][1], s + length)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((s, length))
    return out


def areas(pages):
    return merge([a for _unused, _unused, page in pages for a in page])


def block_rounded(writes, block, capacity=DISK):
    out = []
    for off, length in writes:
        s = off // block * block
        e = min(capacity, -(-(off + length) // block) * block)
        out.append((s, e - s))
    return merge(out)


def allocated(path, block, capacity):
    """Data extents of a file (SEEK_DATA/SEEK_HOLE), rounded outward to the block size."""
    out = []
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < capacity:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, min(hole, capacity) - data))
            pos = hole
    return block_rounded(out, block, capacity)


def covered(inner, outer):
    """Every byte of the ranges in ``inner`` lies inside ``outer``."""
    for s, length in inner:
        if not any(o <= s and s + length <= o + ol for o, ol in outer):
            return False
    return True


def fault_message(exc):
    return " ".join(m.message or "" for m in (exc.faultMessage or []))


def random_writes(rng, capacity, count, max_len, region=None):
    lo, hi = region or (0, capacity)
    out = []
    for _unused in range(count):
        length = rng.randint(1, max_len)
        off = rng.randint(lo, hi - length)
        out.append((off, length))
    return out


# ---- inventory, TLS, environment ---------------------------------------------------------------

def test_inventory_and_environment(sim, si):
    vms = sim.vms()
    assert [v["name"] for v in vms] == ["cbtsim-vm0"]
    info = vms[0]
    vm = si.content.searchIndex.FindByInventoryPath("%s/vm/cbtsim-vm0" % sim.datacenter)
    assert vm is not None and vm._moId == info["moid"]
    assert vm.config.instanceUuid == info["instance_uuid"]
    assert vm.runtime.powerState == info["power_state"] == "poweredOn"
    assert vm.capability.changeTrackingSupported is True
    assert not vm.config.changeTrackingEnabled
    disk = disk_of(vm.config)
    [dinfo] = info["disks"]
    assert (dinfo["key"], dinfo["capacity"], dinfo["file"]) == (disk.key, disk.capacityInBytes, disk.backing.fileName)
    assert disk.capacityInBytes == DISK
    assert not disk.backing.changeId
    assert os.path.getsize(dinfo["path"]) == DISK
    assert os.stat(dinfo["path"]).st_blocks == 0, "a new disk is a sparse file"
    ds = vm.datastore[0]
    assert ds.summary.type == "VMFS" and ds.name == sim.datastore

    env = sim.env()
    assert env["VMWARE_HOST"] == "127.0.0.1" and env["VMWARE_PORT"] == str(sim.port)
    assert env["VMWARE_VALIDATE_CERTS"] == "false" and "VMWARE_CA_CERT" not in env
    assert sim.env(validate_certs=True)["VMWARE_CA_CERT"] == str(sim.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd=sim.password,
                     sslContext=ssl.create_default_context())
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd="wrong",
                     sslContext=ssl.create_default_context(cafile=str(sim.ca_file)))


# ---- enabling needs a stun cycle ---------------------------------------------------------------

def test_enable_on_powered_on_vm_needs_a_snapshot(sim, si):
    info, vm = new_vm(sim, si, "stun")
    assert vm.runtime.powerState == "poweredOn"
    enable_cbt(vm)
    assert vm.config.changeTrackingEnabled is True
    assert not change_id(vm.config), "VM-level CBT alone must not give the disk a change ID"
    extra = {o.key: o.value for o in vm.config.extraConfig}
    assert extra.get("ctkEnabled") == "TRUE" and "scsi0:0.ctkEnabled" not in extra
    assert sim.disk(info["moid"], KEY)["tracking_active"] is False
    with pytest.raises(vim.fault.FileFault) as exc:
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=KEY, startOffset=0, changeId="*")
    assert "stun" in fault_message(exc.value)

    snap = snapshot(vm, "stun")
    cid = change_id(snap.config)
    assert CHANGE_ID_RE.match(cid), cid
    assert change_id(vm.config) == cid, "the VM's current disk carries the change ID too"
    extra = {o.key: o.value for o in vm.config.extraConfig}
    assert extra.get("scsi0:0.ctkEnabled") == "TRUE"
    assert sim.disk(info["moid"], KEY)["change_id"] == cid
    # nothing written: no changes since the snapshot's own change ID, nothing allocated for "*"
    assert areas(qcda_pages(vm, snap, cid)) == []
    assert areas(qcda_pages(vm, snap, "*")) == []
    # the task names are the WSDL method names and the removal task's entity is the VM
    task = vm.CreateSnapshot_Task("second", "", False, False)
    WaitForTask(task)
    assert task.info.entity == vm and task.info.descriptionId == "VirtualMachine.createSnapshot"
    rm = task.info.result.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
    WaitForTask(rm)
    assert rm.info.entity == vm and rm.info.state == "success"


def test_powered_off_vm_tracks_at_once_and_power_on_is_a_stun(sim, si):
    info, vm = new_vm(sim, si, "off", power_state="poweredOff")
    enable_cbt(vm)
    cid = change_id(vm.config)
    assert CHANGE_ID_RE.match(cid), "a powered-off VM has no VMX to stun: tracking starts at once"
    sim.write(info["moid"], KEY, 3 * MiB, 4096, seed=1)
    # without a snapshot, QCDA works on a powered-off VM and sees the live state
    assert areas(qcda_pages(vm, None, cid)) == [(3 * MiB, 64 * KiB)]

    info2, vm2 = new_vm(sim, si, "poweron", power_state="poweredOff")
    run(vm2.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="ctkEnabled",
                                                                                  value="TRUE")])))
    assert vm2.config.changeTrackingEnabled is True, "ctkEnabled in extraConfig is the same switch"
    run(vm2.PowerOnVM_Task())
    assert CHANGE_ID_RE.match(change_id(vm2.config))


# ---- QueryChangedDiskAreas against the write log -----------------------------------------------

def test_qcda_returns_exactly_the_written_areas_over_rounds_and_page_sizes(sim, si, paging):
    info, vm = new_vm(sim, si, "rounds")
    moid = info["moid"]
    block = sim.config()["block_size"]
    enable_cbt(vm)
    base = snapshot(vm, "base")
    first_cid = prev_cid = change_id(base.config)
    prev_snap = base
    rng = random.Random(20240611)
    all_writes = []
    saw_empty_middle_page = False
    log_seen = 0
    for rnd in range(4):
        if rnd % 2 == 0:   # clustered at both ends: the middle of the disk stays untouched
            writes = random_writes(rng, DISK, 6, 300 * KiB, (0, 3 * MiB)) + \
                random_writes(rng, DISK, 3, 200 * KiB, (DISK - 2 * MiB, DISK))
        else:              # scattered, including block-crossing and tiny writes
            writes = random_writes(rng, DISK, 12, 150 * KiB) + [(5 * block - 1, 2), (17, 1)]
        for i, (off, length) in enumerate(writes):
            res = sim.write(moid, KEY, off, length, pattern="random", seed=rnd * 100 + i)
            assert res["tracked"] is True and res["after_change_id"] == prev_cid
        log = sim.writes(moid, KEY, since=log_seen)
        assert [(w["offset"], w["length"]) for w in log] == writes
        log_seen = log[-1]["index"]
        all_writes += writes

        snap = snapshot(vm, "round-%d" % rnd)
        cid = change_id(snap.config)
        assert cid != prev_cid and cid.split("/")[0] == first_cid.split("/")[0]
        expected = block_rounded(writes, block)
        assert expected, "the round wrote something"

        for limit, window in ((2000, 0), (3, MiB), (1, 256 * KiB)):
            sim.config(page_limit=limit, page_window=window)
            pages = qcda_pages(vm, snap, prev_cid)
            assert areas(pages) == expected, (limit, window)
            assert all(len(p[2]) <= limit for p in pages)
            if window:
                assert all(p[1] <= window for p in pages)
                for i in range(1, len(pages) - 1):
                    if not pages[i][2] and any(p[2] for p in pages[i + 1:]):
                        saw_empty_middle_page = True
        # like a sync loop: drop the previous snapshot; its change ID stays a valid base
        run(prev_snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        prev_snap, prev_cid = snap, cid

    assert saw_empty_middle_page, "some page in the middle of the disk came back empty"
    sim.config(page_limit=7, page_window=2 * MiB)
    assert areas(qcda_pages(vm, prev_snap, first_cid)) == block_rounded(all_writes, block), \
        "changes since the first change ID are the union of every round"
    # the same change ID against its own snapshot: nothing changed
    assert areas(qcda_pages(vm, prev_snap, prev_cid)) == []


def test_star_returns_the_allocated_areas_of_the_frozen_copy(sim, si):
    zero = [(20 * MiB + 4096, 100 * KiB)]
    info, vm = new_vm(sim, si, "star", disks=[{"size": DISK, "fill": {
        "random_percent": 25, "seed": 11, "zero_regions": [list(z) for z in zero]}}])
    block = sim.config()["block_size"]
    enable_cbt(vm)
    snap = snapshot(vm, "full")
    star = areas(qcda_pages(vm, snap, "*"))
    exp = sim.export(info["moid"], snap._moId, KEY)
    try:
        assert star == allocated(exp["file"], block, DISK)
        assert covered(block_rounded(zero, block), star), "written zeros are allocated, so listed"
        # every non-zero block of the frozen disk, read over NBD, lies inside the "*" areas
        h = nbd.NBD()
        h.connect_uri(exp["uri"])
        try:
            assert h.get_size() == DISK
            data = b"".join(h.pread(4 * MiB, off) for off in range(0, DISK, 4 * MiB))
        finally:
            h.shutdown()
        nonzero = [(o, block) for o in range(0, DISK, block) if data[o:o + block].strip(b"\0")]
        assert nonzero and covered(nonzero, star)
        random_bytes = sum(length for _unused, length in star) - sum(length for _unused, length in block_rounded(zero, block))
        assert 7 * MiB <= random_bytes <= 8 * MiB, "25 % of 32 one-MiB chunks were filled"
    finally:
        sim.unexport(exp["id"])


def test_star_returns_the_whole_disk_if_snapshots_existed_when_enabled(sim, si):
    _unused, vm = new_vm(sim, si, "prestar", disks=[{"size": DISK, "fill": {"random_percent": 10, "seed": 3}}])
    snapshot(vm, "pre-existing")
    enable_cbt(vm)
    snap = snapshot(vm, "after")
    assert areas(qcda_pages(vm, snap, "*")) == [(0, DISK)]


def test_star_on_an_nfs_datastore_returns_the_whole_disk():
    with CbtSim(name="nfs", vms=1, disk_size=8 * MiB, datastore_type="NFS") as nfs:
        conn = nfs.connect()
        try:
            vm = conn.content.searchIndex.FindByInventoryPath("%s/vm/cbtsim-vm0" % nfs.datacenter)
            assert vm.datastore[0].summary.type == "NFS"
            enable_cbt(vm)
            snap = snapshot(vm, "s")
            assert areas(qcda_pages(vm, snap, "*", capacity=8 * MiB)) == [(0, 8 * MiB)]
        finally:
            Disconnect(conn)


# ---- resets --------------------------------------------------------------------------------

def test_disable_reset_and_invalidation_change_the_uuid(sim, si):
    info, vm = new_vm(sim, si, "reset")
    enable_cbt(vm)
    s1 = snapshot(vm, "s1")
    cid1 = change_id(s1.config)
    sim.write(info["moid"], KEY, MiB, 4096, seed=5)

    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    assert vm.config.changeTrackingEnabled is False
    assert not change_id(vm.config)
    extra = {o.key for o in vm.config.extraConfig}
    assert "ctkEnabled" not in extra and "scsi0:0.ctkEnabled" not in extra
    with pytest.raises(vim.fault.FileFault) as exc:
        vm.QueryChangedDiskAreas(snapshot=s1, deviceKey=KEY, startOffset=0, changeId=cid1)
    assert "not enabled" in fault_message(exc.value)
    assert change_id(s1.config) == cid1, "an existing snapshot keeps its recorded change ID"

    enable_cbt(vm)
    s2 = snapshot(vm, "s2")
    cid2 = change_id(s2.config)
    assert CHANGE_ID_RE.match(cid2).group(1) != CHANGE_ID_RE.match(cid1).group(1)
    for snap, cid in ((s2, cid1), (s1, cid1), (s1, cid2)):
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=KEY, startOffset=0, changeId=cid)
    assert areas(qcda_pages(vm, s2, cid2)) == []

    after = sim.invalidate_ctk(info["moid"])
    cid3 = after["disks"][0]["change_id"]
    assert CHANGE_ID_RE.match(cid3).group(1) not in (CHANGE_ID_RE.match(cid2).group(1),
                                                     CHANGE_ID_RE.match(cid1).group(1))
    assert change_id(vm.config) == cid3
    s3 = snapshot(vm, "s3")
    with pytest.raises(vim.fault.FileFault) as exc:
        vm.QueryChangedDiskAreas(snapshot=s3, deviceKey=KEY, startOffset=0, changeId=cid2)
    assert "does not belong" in fault_message(exc.value)
    assert exc.value.file == info["disks"][0]["file"]


# ---- argument faults -------------------------------------------------------------------------

def test_qcda_argument_faults(sim, si):
    info, vm = new_vm(sim, si, "args")
    with pytest.raises(vim.fault.FileFault):   # CBT never enabled
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=KEY, startOffset=0, changeId="*")
    enable_cbt(vm)
    snap = snapshot(vm, "a")
    cid = change_id(snap.config)
    for bad in ("garbage", "52 de c0 d9/4", cid.split("/")[0], cid + "x", ""):
        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=KEY, startOffset=0, changeId=bad)
        assert exc.value.invalidProperty == "changeId"
    for start in (DISK, DISK + 512, -1):
        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=KEY, startOffset=start, changeId=cid)
        assert exc.value.invalidProperty == "startOffset"
    for key in (9999, 1000):   # no such device; a controller is not a disk
        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId=cid)
        assert exc.value.invalidProperty == "deviceKey"
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        vm.QueryChangedDiskAreas(snapshot=vim.vm.Snapshot("snapshot-999999", si._stub), deviceKey=KEY,
                                 startOffset=0, changeId=cid)
    with pytest.raises(vim.fault.FileFault):   # powered on, no snapshot
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=KEY, startOffset=0, changeId=cid)
    # the last valid offset works and returns a page reaching the end of the disk
    info_last = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=KEY, startOffset=DISK - 1, changeId=cid)
    assert info_last.startOffset + info_last.length == DISK


# ---- fault injection -------------------------------------------------------------------------

def test_no_permission_is_raised_with_the_privilege_and_count(sim, si):
    info, vm = new_vm(sim, si, "perm")
    other, _unused = new_vm(sim, si, "perm-other")
    sim.inject_fault("ReconfigVM_Task", "no_permission", privilege="VirtualMachine.Config.ChangeTracking",
                     vm=other["moid"], count=1)
    enable_cbt(vm)   # the rule is for another VM
    assert [r["remaining"] for r in sim.faults()] == [1]
    sim.clear_faults()

    sim.inject_fault("ReconfigVM_Task", "no_permission", privilege="VirtualMachine.Config.ChangeTracking",
                     vm=info["moid"], count=1)
    with pytest.raises(vim.fault.NoPermission) as exc:
        vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False))
    assert exc.value.privilegeId == "VirtualMachine.Config.ChangeTracking"
    assert exc.value.object == vm
    assert "VirtualMachine.Config.ChangeTracking" in exc.value.msg
    assert vm.config.changeTrackingEnabled is True, "the refused call changed nothing"
    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False)))   # count was 1
    assert vm.config.changeTrackingEnabled is False
    assert sim.faults()[0]["hits"] == 1 and sim.faults()[0]["remaining"] == 0

    sim.inject_fault("CreateSnapshot_Task", "no_permission", vm=info["moid"], count=0)
    for _unused in range(2):
        with pytest.raises(vim.fault.NoPermission) as exc:
            vm.CreateSnapshot_Task("x", "", False, False)
        assert exc.value.privilegeId == "VirtualMachine.State.CreateSnapshot"
    sim.clear_faults()
    assert vm.snapshot is None


def test_task_errors_on_snapshot_create_remove_and_reconfigure(sim, si):
    info, vm = new_vm(sim, si, "taskerr")
    enable_cbt(vm)
    keep = snapshot(vm, "keep")
    exp = sim.export(info["moid"], keep._moId, KEY)
    try:
        sim.inject_fault("CreateSnapshot_Task", "task_error", vm=info["moid"])
        task = vm.CreateSnapshot_Task("fails", "", False, False)
        with pytest.raises(vim.fault.GenericVmConfigFault) as exc:
            WaitForTask(task)
        assert "snapshot" in exc.value.msg
        assert task.info.state == "error" and task.info.entity == vm
        assert [s.name for s in vm.snapshot.rootSnapshotList] == ["keep"]

        sim.inject_fault("RemoveSnapshot_Task", "task_error", vm=info["moid"], fault="FileFault",
                         message="consolidation failed")
        task = keep.RemoveSnapshot_Task(removeChildren=False)
        with pytest.raises(vim.fault.FileFault):
            WaitForTask(task)
        assert task.info.entity == vm
        assert [s.name for s in vm.snapshot.rootSnapshotList] == ["keep"]
        assert [e["id"] for e in sim.exports()] == [exp["id"]], "a failed removal keeps the export"
        assert areas(qcda_pages(vm, keep, change_id(keep.config))) == []

        sim.inject_fault("ReconfigVM_Task", "task_error", vm=info["moid"])
        task = vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False))
        with pytest.raises(vim.fault.GenericVmConfigFault):
            WaitForTask(task)
        assert vm.config.changeTrackingEnabled is True

        sim.inject_fault("QueryChangedDiskAreas", "task_error", vm=info["moid"])
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(snapshot=keep, deviceKey=KEY, startOffset=0, changeId="*")
        assert all(r["remaining"] == 0 for r in sim.faults())
    finally:
        sim.clear_faults()
        sim.unexport(exp["id"])


def _wait_state(task, states, timeout=30):
    deadline = time.monotonic() + timeout
    while task.info.state not in states:
        assert time.monotonic() < deadline, "task %s still %s" % (task._moId, task.info.state)
        time.sleep(0.05)
    return task.info


def test_task_delay_holds_the_task_queued_and_cancel_follows_cancelable(sim, si):
    info, vm = new_vm(sim, si, "delay")
    enable_cbt(vm)
    try:
        # cancelable: CancelTask while queued ends the task and nothing is created, then or later
        sim.inject_fault("CreateSnapshot_Task", "task_delay", vm=info["moid"], delay_ms=1500, cancelable=True)
        task = vm.CreateSnapshot_Task("cancelled", "", False, False)
        assert task.info.state == "queued" and task.info.cancelable is True
        assert vm.snapshot is None, "the VM stays readable and unchanged while the task waits"
        task.CancelTask()
        info_ = _wait_state(task, ("error", "success"))
        assert info_.state == "error" and info_.cancelled is True
        assert isinstance(info_.error, vmodl.fault.RequestCanceled)
        time.sleep(2)
        assert vm.snapshot is None and task.info.state == "error"

        # not cancelable: CancelTask is refused, the task runs after the delay and succeeds
        sim.inject_fault("CreateSnapshot_Task", "task_delay", vm=info["moid"], delay_ms=1000)
        began = time.monotonic()
        task = vm.CreateSnapshot_Task("late", "", False, False)
        assert task.info.cancelable is False
        with pytest.raises(vmodl.fault.NotSupported):
            task.CancelTask()
        info_ = _wait_state(task, ("error", "success"))
        assert info_.state == "success" and time.monotonic() - began >= 1.0
        assert [s.name for s in vm.snapshot.rootSnapshotList] == ["late"]
        assert change_id(info_.result.config), "a delayed snapshot still carries its change IDs"
        with pytest.raises(vim.fault.InvalidState):
            task.CancelTask()  # a finished task
        # without a rule, tasks run at once again
        run(vm.snapshot.rootSnapshotList[0].snapshot.RemoveSnapshot_Task(removeChildren=False))
        assert vm.snapshot is None
    finally:
        sim.clear_faults()


def test_session_expiry_needs_a_new_login(sim):
    conn = sim.connect()
    try:
        vm = conn.content.searchIndex.FindByInventoryPath("%s/vm/cbtsim-vm0" % sim.datacenter)
        sim.inject_fault("QueryChangedDiskAreas", "not_authenticated", count=1)
        with pytest.raises(vim.fault.NotAuthenticated):
            vm.QueryChangedDiskAreas(snapshot=None, deviceKey=KEY, startOffset=0, changeId="*")
        with pytest.raises(vim.fault.NotAuthenticated):   # the session is gone, not just one call
            vm.name
        conn.content.sessionManager.Login(sim.username, sim.password)
        assert vm.name == "cbtsim-vm0"
    finally:
        sim.clear_faults()
        Disconnect(conn)


# ---- NBD exports -----------------------------------------------------------------------------

def test_export_serves_the_frozen_bytes_and_dies_with_the_snapshot(sim, si):
    info, vm = new_vm(sim, si, "export", disks=[{"size": DISK, "fill": {"random_percent": 20, "seed": 9}}])
    path = info["disks"][0]["path"]
    enable_cbt(vm)
    sim.write(info["moid"], KEY, 7 * MiB + 123, 333 * KiB, seed=77)
    snap = snapshot(vm, "frozen")
    with open(path, "rb") as f:
        frozen = hashlib.sha256(f.read()).hexdigest()
    sim.write(info["moid"], KEY, 0, 2 * MiB, pattern="byte:0xa5")
    sim.write(info["moid"], KEY, 7 * MiB, MiB, pattern="discard")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() != frozen, "the live disk moved on"

    exp = sim.export(info["moid"], snap._moId, KEY)
    assert exp["size"] == DISK and exp["change_id"] == change_id(snap.config)
    h = nbd.NBD()
    h.connect_uri(exp["uri"])
    try:
        assert h.is_read_only()
        data = b"".join(h.pread(4 * MiB, off) for off in range(0, DISK, 4 * MiB))
    finally:
        h.shutdown()
    assert hashlib.sha256(data).hexdigest() == frozen

    with pytest.raises(CbtSimError) as exc:
        sim.export(info["moid"], None, KEY)
    assert exc.value.status == 409 and "powered off" in exc.value.message

    run(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
    assert sim.exports() == []
    assert not os.path.exists(exp["socket"]) and not os.path.exists(exp["file"])
    with pytest.raises(CbtSimError) as exc:
        sim.export(info["moid"], snap._moId, KEY)
    assert exc.value.status == 409
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(OSError):
        s.connect(exp["socket"])
    s.close()


def test_exports_at_requested_sockets_and_in_batches(sim, si, tmp_path):
    info, vm = new_vm(sim, si, "sockets", disks=[4 * MiB, {"size": 2 * MiB, "fill": {"random_percent": 50, "seed": 2}}])
    moid = info["moid"]
    snap = snapshot(vm, "s")
    sockdir = tmp_path / "s"
    sockdir.mkdir()
    stable = str(sockdir / "vm-d2000.sock")
    os.symlink("/nonexistent/old.sock", stable)   # left by an older run: replaced
    first = sim.export(moid, snap._moId, KEY, socket=stable)
    assert first["socket"] == stable and first["uri"] == "nbd+unix:///?socket=" + stable
    again = sim.export(moid, snap._moId, KEY, socket=stable)   # a re-run asks again: the old export goes
    assert [e["id"] for e in sim.exports()] == [again["id"]]
    h = nbd.NBD()
    h.connect_uri(again["uri"])
    assert h.get_size() == 4 * MiB
    h.shutdown()
    sim.unexport(again["id"])
    assert not os.path.exists(stable)

    both = sim.export_disks(moid, snap._moId, [{"disk_key": KEY, "socket": stable},
                                               {"disk_key": 2001, "socket": str(sockdir / "vm-d2001.sock")}])
    assert [(e["disk_key"], e["size"]) for e in both] == [(KEY, 4 * MiB), (2001, 2 * MiB)]
    for e in both:
        h = nbd.NBD()
        h.connect_uri(e["uri"])
        assert h.get_size() == e["size"]
        h.shutdown()
    with pytest.raises(CbtSimError) as exc:   # all or none: disk 2999 fails, nothing new is left running
        sim.export_disks(moid, snap._moId, [2001, 2999])
    assert exc.value.status == 409
    assert sorted(e["id"] for e in sim.exports()) == sorted(e["id"] for e in both)
    (sockdir / "file").write_text("not a socket")
    bad = [
        ({"vm": moid, "snapshot": snap._moId, "disk_key": KEY, "socket": "relative.sock"}, 400),
        ({"vm": moid, "snapshot": snap._moId, "disk_key": KEY, "socket": "/nonexistent-dir/x.sock"}, 400),
        ({"vm": moid, "snapshot": snap._moId, "disk_key": KEY, "socket": "/" + "x" * 120}, 400),
        ({"vm": moid, "snapshot": snap._moId, "disk_key": KEY, "disks": [{"disk_key": KEY}]}, 400),
        ({"vm": moid, "snapshot": snap._moId,
          "disks": [{"disk_key": KEY, "socket": stable}, {"disk_key": 2001, "socket": stable}]}, 400),
        ({"vm": moid, "snapshot": snap._moId, "disk_key": KEY, "socket": str(sockdir / "file")}, 409),
    ]
    for body, status in bad:
        with pytest.raises(CbtSimError) as exc:
            sim._request("POST", "/exports", body)
        assert exc.value.status == status, (body, exc.value)
    assert (sockdir / "file").read_text() == "not a socket"
    run(snap.RemoveSnapshot_Task(removeChildren=False))
    assert sim.exports() == [] and not os.path.exists(stable)


def test_revert_restores_data_and_reports_the_reverted_blocks(sim, si):
    info, vm = new_vm(sim, si, "revert")
    moid, path = info["moid"], info["disks"][0]["path"]
    block = sim.config()["block_size"]
    enable_cbt(vm)
    s1 = snapshot(vm, "s1")
    with open(path, "rb") as f:
        before = f.read()
    sim.write(moid, KEY, 9 * MiB, 200 * KiB, seed=4)
    s2 = snapshot(vm, "s2")
    cid2 = change_id(s2.config)
    run(s1.RevertToSnapshot_Task())
    with open(path, "rb") as f:
        assert f.read() == before
    s3 = snapshot(vm, "s3")
    assert covered(block_rounded([(9 * MiB, 200 * KiB)], block), areas(qcda_pages(vm, s3, cid2)))


# ---- eligibility -----------------------------------------------------------------------------

def test_ineligible_vm_and_disks(sim, si):
    old, old_vm = new_vm(sim, si, "hw4", disks=[8 * MiB], hw_version="vmx-04", change_tracking_supported=False)
    assert old_vm.config.version == "vmx-04" and old_vm.capability.changeTrackingSupported is False
    assert old["cbt_supported"] is False
    task = old_vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True))
    with pytest.raises(vmodl.fault.NotSupported):
        WaitForTask(task)
    assert not old_vm.config.changeTrackingEnabled

    info, vm = new_vm(sim, si, "mixed", disks=[
        8 * MiB, {"size": 8 * MiB, "mode": "independent_persistent"}, {"size": 8 * MiB, "rdm": "physical"},
        {"size": 8 * MiB, "rdm": "virtual"}])
    by_key = {d["key"]: d for d in info["disks"]}
    assert [by_key[k]["eligible"] for k in (2000, 2001, 2002, 2003)] == [True, False, False, True]
    assert "independent" in by_key[2001]["ineligible_reason"]
    assert "physical" in by_key[2002]["ineligible_reason"]
    rdm = disk_of(vm.config, 2002).backing
    assert isinstance(rdm, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo)
    assert rdm.compatibilityMode == "physicalMode"
    assert disk_of(vm.config, 2001).backing.diskMode == "independent_persistent"
    enable_cbt(vm)
    snap = snapshot(vm, "s")
    assert [bool(change_id(snap.config, k)) for k in (2000, 2001, 2002, 2003)] == [True, False, False, True]
    for key in (2001, 2002):
        with pytest.raises(vim.fault.FileFault) as exc:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId="*")
        assert "cannot be tracked" in fault_message(exc.value)
        with pytest.raises(CbtSimError):
            sim.export(info["moid"], snap._moId, key)
    assert areas(qcda_pages(vm, snap, change_id(snap.config, 2003), capacity=8 * MiB, key=2003)) == []


# ---- control API validation ------------------------------------------------------------------

def test_control_api_validates_requests(sim, si):
    info, _unused = new_vm(sim, si, "api", disks=[4 * MiB])
    moid = info["moid"]
    path = "/vms/%s/disks/%d/write" % (moid, KEY)
    # numbers may arrive as strings (Ansible's uri module templates them so)
    res = sim._request("POST", path, {"offset": "4096", "length": "8192", "pattern": "byte:7", "seed": "3"})
    assert (res["offset"], res["length"]) == (4096, 8192)
    with open(info["disks"][0]["path"], "rb") as f:
        f.seek(4096)
        assert f.read(8192) == b"\x07" * 8192
    data = sim.write(moid, KEY, 3 * MiB, data=b"hello", return_data=True)
    assert data["data"] == b"hello" and data["length"] == 5
    bad = [
        ("POST", path, {"offset": 0, "length": 10, "pattern": "stripes"}, 400),
        ("POST", path, {"offset": 4 * MiB - 1, "length": 2}, 400),
        ("POST", path, {"offset": "x", "length": 2}, 400),
        ("POST", path, {"offset": 0, "length": 2, "colour": "red"}, 400),
        ("POST", "/vms/vm-999999/disks/2000/write", {"offset": 0, "length": 2}, 404),
        ("POST", "/vms/%s/disks/2999/write" % moid, {"offset": 0, "length": 2}, 404),
        ("POST", "/vms", {"name": info["name"], "disks": [{"size": MiB}]}, 409),
        ("POST", "/vms", {"name": "nodisk", "disks": []}, 400),
        ("POST", "/vms", {"name": "odd", "disks": [{"size": 1000}]}, 400),
        ("POST", "/faults", {"method": "ReconfigVM_Task", "kind": "explode"}, 400),
        ("POST", "/faults", {"method": "ReconfigVM_Task", "kind": "task_error", "fault": "Nope"}, 400),
        ("POST", "/faults", {"method": "QueryChangedDiskAreas", "kind": "task_delay", "delay_ms": 10}, 400),
        ("POST", "/faults", {"method": "CreateSnapshot_Task", "kind": "task_delay", "delay_ms": 0}, 400),
        ("POST", "/faults", {"method": "CreateSnapshot_Task", "kind": "task_error", "delay_ms": 10}, 400),
        ("POST", "/exports", {"vm": moid, "snapshot": "snapshot-999999", "disk_key": KEY}, 409),
        ("DELETE", "/exports/e999999", None, 404),
        ("POST", "/config", {"block_size": 512}, 400),
        ("POST", "/vms/%s/ctk-invalidate" % moid, {}, 409),
    ]
    for method, url, body, status in bad:
        with pytest.raises(CbtSimError) as exc:
            sim._request(method, url, body)
        assert exc.value.status == status, (method, url, body, exc.value)
    assert [w["offset"] for w in sim.writes(moid, KEY)] == [4096, 3 * MiB]
    assert sim.faults() == []
