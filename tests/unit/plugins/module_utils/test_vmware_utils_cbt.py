# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CBT engine: QueryChangedDiskAreas paging, extent coalescing, changeId lineage, and the
stun cycle's guarantee that the temporary snapshot is removed on every path."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import random

import pytest
from pyVmomi import vim, vmodl

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_cbt as cbt
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareApiError,
    VmwareClient,
    VmwarePermissionDenied,
    VmwareTaskFailed,
    fault_text,
)

CID_A = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/4"
CID_A_LATER = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/9"
CID_B = "52 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee/1"
MiB = 1 << 20
NOW = datetime.datetime(2025, 8, 12, 10, 0, 0)

# the real helpers, before the fixtures below replace them
REAL_CREATE_SNAPSHOT = cbt.create_snapshot
REAL_REMOVE_SNAPSHOT = cbt.remove_snapshot


# -- QueryChangedDiskAreas paging ----------------------------------------------------------

class PagingVM(object):
    """Answers QueryChangedDiskAreas like vSphere: a window of at most ``window`` bytes and at
    most ``limit`` areas, continuing where the caller says; windows may hold no area."""

    def __init__(self, capacity, areas, window, limit, fault_at=None):
        self.capacity = capacity
        self.areas = sorted(areas)
        self.window = window
        self.limit = limit
        self.fault_at = fault_at
        self.calls = []

    def QueryChangedDiskAreas(self, snapshot=None, deviceKey=None, startOffset=None, changeId=None):
        self.calls.append(startOffset)
        if self.fault_at is not None and len(self.calls) == self.fault_at[0]:
            raise self.fault_at[1]
        if startOffset >= self.capacity:
            raise vmodl.fault.InvalidArgument(invalidProperty="startOffset", msg="A specified parameter was not correct: startOffset")
        end = min(self.capacity, startOffset + self.window)
        inside = [(s, n) for s, n in self.areas if s >= startOffset and s < end]
        if len(inside) > self.limit:
            inside = inside[:self.limit]
            end = inside[-1][0] + inside[-1][1]
        return vim.VirtualMachine.DiskChangeInfo(
            startOffset=startOffset, length=end - startOffset,
            changedArea=[vim.VirtualMachine.DiskChangeInfo.DiskChangeExtent(start=s, length=n) for s, n in inside])


def collect(vm, capacity, gap=0, max_results=None, change_id=CID_A):
    client = VmwareClient("127.0.0.1", "u", "p")
    sink = []
    col = cbt.ExtentCollector(capacity, gap=gap, max_results=max_results, sink=lambda o, n: sink.append((o, n)))
    pages = 0
    for _s, _n, areas in cbt.iter_changed_areas(client, vm, None, 2000, capacity, change_id, "querying"):
        pages += 1
        for start, length in areas:
            col.add(start, length)
    col.finish()
    return col, sink, pages


def random_areas(rng, capacity, count, block=65536):
    blocks = sorted(rng.sample(range(capacity // block), count))
    areas = []
    for b in blocks:
        if areas and areas[-1][0] + areas[-1][1] == b * block:
            continue  # keep them apart so that coalescing is visible
        areas.append((b * block, block * rng.randint(1, 1)))
    return areas


@pytest.mark.parametrize("window,limit", [(64 * MiB, 100000), (4 * MiB, 5), (1 * MiB, 1), (3 * MiB + 512, 2)])
def test_paging_returns_exactly_the_changed_areas_for_any_page_geometry(window, limit):
    rng = random.Random(window * 7 + limit)
    capacity = 64 * MiB
    areas = random_areas(rng, capacity, 40)
    vm = PagingVM(capacity, areas, window, limit)
    col, sink, pages = collect(vm, capacity)
    assert sink == areas
    assert col.count == len(areas) and col.bytes == sum(n for _s, n in areas)
    assert pages == len(vm.calls)
    # continuation always at startOffset+length of the previous window, never past capacity
    assert vm.calls[0] == 0 and all(c < capacity for c in vm.calls)


def test_empty_middle_pages_do_not_end_the_loop():
    capacity = 16 * MiB
    areas = [(0, 4096), (15 * MiB, 8192)]  # windows 1..14 are empty
    vm = PagingVM(capacity, areas, MiB, 1000)
    col, sink, pages = collect(vm, capacity)
    assert sink == areas and pages == 16


def test_coalesce_gap_merges_nearby_extents_and_max_results_limits_only_the_result():
    capacity = 8 * MiB
    areas = [(0, 4096), (8192, 4096), (MiB, 4096), (MiB + 4096, 4096), (4 * MiB, 512)]
    vm = PagingVM(capacity, areas, 2 * MiB, 2)
    col, sink, _pages = collect(vm, capacity, gap=4096, max_results=1)
    assert sink == [(0, 12288), (MiB, 8192), (4 * MiB, 512)]
    assert col.kept == [{"offset": 0, "length": 12288}]
    assert col.count == 3 and col.bytes == 12288 + 8192 + 512


@pytest.mark.parametrize("fault,name", [
    (vim.fault.FileFault(file="[ds] vm/vm-ctk.vmdk", msg="Error caused by file"), "FileFault"),
    (vim.fault.NotFound(msg="not found"), "NotFound"),
    (vmodl.fault.InvalidArgument(invalidProperty="changeId", msg="A specified parameter was not correct: changeId"),
     "InvalidArgument"),
    (vmodl.fault.MethodNotFound(method="QueryChangedDiskAreas", msg="VirtualMachine:vm-57 does not implement: "
                                "QueryChangedDiskAreas"), "MethodNotFound"),
])
def test_query_faults_require_a_full_sync_with_a_reason(fault, name):
    vm = PagingVM(8 * MiB, [(0, 4096)], MiB, 10, fault_at=(3, fault))
    with pytest.raises(cbt.FullSyncRequired) as err:
        collect(vm, 8 * MiB)
    assert err.value.fault is fault
    assert "whole disk" in err.value.reason
    if name == "MethodNotFound":
        assert "does not implement QueryChangedDiskAreas" in err.value.reason


def test_permission_denied_is_not_turned_into_a_full_sync():
    fault = vim.fault.NoPermission(privilegeId="VirtualMachine.Provisioning.DiskRandomRead", msg="denied")
    vm = PagingVM(8 * MiB, [], MiB, 10, fault_at=(1, fault))
    with pytest.raises(VmwarePermissionDenied) as err:
        collect(vm, 8 * MiB)
    assert "VirtualMachine.Provisioning.DiskRandomRead" in err.value.msg


class StuckVM(object):
    def __init__(self, info):
        self.info = info

    def QueryChangedDiskAreas(self, **kwargs):
        return self.info


@pytest.mark.parametrize("start,length,words", [(0, 0, "no progress"), (4096, MiB, "skipped bytes 0-4096")])
def test_a_window_without_progress_or_with_a_gap_requires_a_full_sync(start, length, words):
    vm = StuckVM(vim.VirtualMachine.DiskChangeInfo(startOffset=start, length=length, changedArea=[]))
    with pytest.raises(cbt.FullSyncRequired) as err:
        collect(vm, 8 * MiB)
    assert words in err.value.reason


def test_an_area_beyond_the_disk_requires_a_full_sync():
    col = cbt.ExtentCollector(MiB)
    with pytest.raises(cbt.FullSyncRequired) as err:
        col.add(MiB - 512, 1024)
    assert "outside the disk" in err.value.reason


# -- changeId lineage -----------------------------------------------------------------------

def test_lineage_same_uuid_passes_and_star_passes():
    disk = {"key": 2000, "label": "Hard disk 1", "change_id": CID_A_LATER}
    cbt.check_change_id_lineage(CID_A, disk, "'s1' (snapshot-1)")
    cbt.check_change_id_lineage("*", disk, "'s1' (snapshot-1)")


def test_lineage_reset_uuid_requires_full_sync_naming_both_ids():
    disk = {"key": 2000, "label": "Hard disk 1", "change_id": CID_B}
    with pytest.raises(cbt.FullSyncRequired) as err:
        cbt.check_change_id_lineage(CID_A, disk, "'s1' (snapshot-1)")
    assert CID_A in err.value.reason and CID_B in err.value.reason and "reset" in err.value.reason


def test_lineage_disk_without_change_id_requires_full_sync_even_for_star():
    disk = {"key": 2000, "label": "Hard disk 1", "change_id": None}
    for cid in (CID_A, "*"):
        with pytest.raises(cbt.FullSyncRequired) as err:
            cbt.check_change_id_lineage(cid, disk, "'s1' (snapshot-1)")
        assert "no changeId" in err.value.reason


# -- stun cycle: the temporary snapshot is removed on every path ---------------------------

class World(object):
    """A VM whose snapshots, CBT flag and change IDs the patched helpers read and change."""

    def __init__(self, cbt_on=False, change_id=None, snapshots=None, assign_change_ids=True):
        self.cbt_on = cbt_on
        self.change_id = change_id
        self.snapshots = list(snapshots or [])  # dicts like flatten_snapshots() returns
        self.assign_change_ids = assign_change_ids
        self.fail_create = None       # exception raised by create
        self.create_leaves_snapshot = False
        self.fail_remove = 0          # remove attempts that fail
        self.fail_reconfigure = None
        self.fail_consolidate = None  # fault of ConsolidateVMDisks_Task
        self.consolidation_needed = False
        self.removable_refs = False   # snapshot refs that answer RemoveSnapshot_Task (for the real remove_snapshot)
        self.calls = []
        self.seq = 0

    def devices(self, change_id):
        return [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
                vim.vm.device.VirtualDisk(
                    key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=MiB,
                    deviceInfo=vim.Description(label="Hard disk 1", summary=""),
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[ds] vm/vm.vmdk",
                                                                          diskMode="persistent", changeId=change_id))]

    def record(self):
        return {"ref": "vm", "moid": "vm-1", "path": "/DC0/vm/vm1", "missing": [],
                "props": {"name": "vm1", "config.changeTrackingEnabled": self.cbt_on, "config.version": "vmx-13",
                          "capability.changeTrackingSupported": True, "runtime.powerState": "poweredOn",
                          "config.hardware.device": self.devices(self.change_id)}}

    def new_snapshot(self, name):
        self.seq += 1
        moid = "snapshot-%d" % self.seq
        ref = SnapRef(self, moid) if self.removable_refs else vim.vm.Snapshot(moid)
        snap = {"name": name, "moid": moid, "ref": ref,
                "description": "", "create_time": None, "id": self.seq, "quiesced": False, "parent": None, "depth": 0}
        self.snapshots.append(snap)
        return snap


class SnapRef(object):
    def __init__(self, world, moid):
        self.world = world
        self._moId = moid

    def RemoveSnapshot_Task(self, removeChildren, consolidate):
        self.world.calls.append(("remove", self._moId))
        self.world.snapshots = [s for s in self.world.snapshots if s["moid"] != self._moId]
        self.world.consolidation_needed = True


class FakeClient(object):
    def __init__(self, world):
        self.world = world

    def run_task(self, what, func, *args, **kwargs):
        kwargs.pop("timeout", None)
        kwargs.pop("expected_privilege", None)
        try:
            return func(*args, **kwargs)
        except vmodl.MethodFault as exc:
            raise VmwareTaskFailed("%s failed: %s" % (what, fault_text(exc)), fault=exc)

    def properties(self, obj, paths, what=None):
        return {"runtime.consolidationNeeded": self.world.consolidation_needed}


@pytest.fixture
def world(monkeypatch):
    w = World()

    def create(client, vm, name, description, memory, quiesce, timeout, vm_text):
        w.calls.append(("create", name))
        if w.fail_create is not None:
            if w.create_leaves_snapshot:
                w.new_snapshot(name)
            raise w.fail_create
        snap = w.new_snapshot(name)
        if w.cbt_on and w.assign_change_ids:
            w.change_id = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/%d" % w.seq
        snap["disk_change_id"] = w.change_id
        return snap["ref"]

    def remove(client, vm, ref, name, timeout, vm_text, attempts=3):
        w.calls.append(("remove", ref._moId))
        if w.fail_remove:
            w.fail_remove -= 1
            return VmwareTaskFailed("removing snapshot '%s' failed: injected" % name)
        w.snapshots = [s for s in w.snapshots if s["ref"]._moId != ref._moId]
        return None

    def disks_of(client, ref, what):
        snap = [s for s in w.snapshots if s["ref"]._moId == ref._moId][0]
        from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
        return describe_disks(w.devices(snap.get("disk_change_id")))

    class FakeVM(object):
        _moId = "vm-1"

        def ReconfigVM_Task(self, spec):
            w.calls.append(("reconfigure", spec.changeTrackingEnabled))
            if w.fail_reconfigure is not None:
                raise w.fail_reconfigure
            w.cbt_on = spec.changeTrackingEnabled
            if not w.cbt_on:
                w.change_id = None

        def ConsolidateVMDisks_Task(self):
            w.calls.append(("consolidate",))
            if w.fail_consolidate is not None:
                raise w.fail_consolidate
            w.consolidation_needed = False

    monkeypatch.setattr(cbt, "read_vm", lambda client, vm: w.record())
    monkeypatch.setattr(cbt, "read_snapshots", lambda client, vm, name=None: list(w.snapshots))
    monkeypatch.setattr(cbt, "create_snapshot", create)
    monkeypatch.setattr(cbt, "remove_snapshot", remove)
    monkeypatch.setattr(cbt, "snapshot_disks", disks_of)
    w.manager = lambda: cbt.CbtManager(FakeClient(w), FakeVM(), prefix="cbt-toolkit-init", timeout=60)
    return w


# -- the temporary snapshot when its creation task does not finish -------------------------------

class CreateTask(object):
    """A CreateSnapshot_Task whose waits follow ``script``: "interrupt" (KeyboardInterrupt while
    waiting), "running" (the wait times out), "late" (the snapshot appears, the task still runs,
    the wait times out), "success" (the snapshot is created), "cancelled" (RequestCanceled)."""

    def __init__(self, world, name, script, cancel_fault=None):
        self._moId = "task-7"
        self.world = world
        self.name = name
        self.script = list(script)
        self.cancel_fault = cancel_fault
        self.snapshot = None

    def CancelTask(self):
        self.world.calls.append(("cancel", self._moId))
        if self.cancel_fault is not None:
            raise self.cancel_fault

    def info(self, state, result=None, error=None):
        return vim.TaskInfo(key=self._moId, task=vim.Task(self._moId), state=state, result=result, error=error,
                            cancelable=True, cancelled=False, descriptionId="VirtualMachine.createSnapshot",
                            queueTime=NOW)

    def step(self):
        step = self.script.pop(0)
        if step == "interrupt":
            raise KeyboardInterrupt()
        if step in ("late", "success") and self.snapshot is None:
            self.snapshot = self.world.new_snapshot(self.name)
        if step in ("running", "late"):
            return self.info("running")
        if step == "success":
            return self.info("success", result=self.snapshot["ref"])
        return self.info("error", error=vmodl.fault.RequestCanceled(msg="The task was canceled by a user."))


class TaskClient(VmwareClient):
    """The real task handling of VmwareClient (run_task, wait_task, timeouts) over CreateTask."""

    def __init__(self, world):
        super(TaskClient, self).__init__("127.0.0.1", "u", "p")
        self.world = world
        self.waits = []

    def invoke(self, what, func, *args, **kwargs):
        kwargs.pop("expected_privilege", None)
        return func(*args, **kwargs)

    def _wait_task_updates(self, task, what, deadline, timeout):
        self.waits.append((what, timeout))
        info = task.step()
        if str(info.state) == "running":
            raise self._timeout_error(task, what, timeout, info)
        return info


class TaskVM(object):
    _moId = "vm-1"

    def __init__(self, world, script, cancel_fault=None):
        self.world = world
        self.script = script
        self.cancel_fault = cancel_fault
        self.task = None

    def CreateSnapshot_Task(self, name, description, memory, quiesce):
        self.world.calls.append(("create", name))
        self.task = CreateTask(self.world, name, self.script, self.cancel_fault)
        return self.task


def task_manager(world, monkeypatch, script, cancel_fault=None):
    monkeypatch.setattr(cbt, "create_snapshot", REAL_CREATE_SNAPSHOT)
    world.cbt_on = True
    client = TaskClient(world)
    mgr = cbt.CbtManager(client, TaskVM(world, script, cancel_fault), prefix="cbt-toolkit-init", timeout=60)
    return mgr, client


def test_create_timeout_cancels_the_task_and_removes_the_snapshot_it_created_afterwards(world, monkeypatch):
    mgr, client = task_manager(world, monkeypatch, ["running", "success"])
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "init_snapshot_failed" and "did not finish within 60 s" in err.value.msg
    assert "could not be removed" not in err.value.msg
    assert ("cancel", "task-7") in world.calls and ("remove", "snapshot-1") in world.calls
    assert world.snapshots == []
    assert mgr.init_snapshots[0]["removed"] is True and mgr.init_snapshots[0]["moid"] == "snapshot-1"
    assert [timeout for _what, timeout in client.waits] == [60, mgr.settle_timeout]  # a bounded second wait


def test_create_timeout_whose_task_was_cancelled_created_nothing(world, monkeypatch):
    mgr, _client = task_manager(world, monkeypatch, ["running", "cancelled"])
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "init_snapshot_failed" and "could not be removed" not in err.value.msg
    assert ("cancel", "task-7") in world.calls and not [c for c in world.calls if c[0] == "remove"]
    assert world.snapshots == [] and mgr.init_snapshots[0]["removed"] is True


def test_create_timeout_with_a_task_still_running_is_reported_as_not_removed(world, monkeypatch):
    mgr, _client = task_manager(world, monkeypatch, ["running", "running"],
                                cancel_fault=vim.fault.InvalidState(msg="The task cannot be cancelled"))
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    name = mgr.init_snapshots[0]["name"]
    assert err.value.kind == "init_snapshot_failed"
    assert "in addition the temporary snapshot could not be removed" in err.value.msg
    assert "'%s'" % name in err.value.msg and "task-7" in err.value.msg
    assert "cleanup_stale_snapshots" in err.value.msg and "remove it in vCenter" in err.value.msg
    assert ("cancel", "task-7") in world.calls and mgr.init_snapshots[0]["removed"] is False


def test_interrupt_while_waiting_for_the_create_task_leaves_removed_false(world, monkeypatch):
    mgr, _client = task_manager(world, monkeypatch, ["interrupt", "running"])
    with pytest.raises(KeyboardInterrupt):
        mgr.stun_cycle(require_change_ids=True)
    record = mgr.init_snapshots[0]
    assert ("cancel", "task-7") in world.calls and record["removed"] is False
    # vCenter finishes the task later: the next run's stale-snapshot cleanup finds the snapshot
    world.new_snapshot(record["name"])
    assert [s["name"] for s in world.manager().stale_snapshots()] == [record["name"]]


def test_interrupt_whose_task_finishes_after_the_cancel_removes_the_snapshot(world, monkeypatch):
    mgr, _client = task_manager(world, monkeypatch, ["interrupt", "success"])
    with pytest.raises(KeyboardInterrupt):
        mgr.stun_cycle(require_change_ids=True)
    assert ("cancel", "task-7") in world.calls and ("remove", "snapshot-1") in world.calls
    assert world.snapshots == [] and mgr.init_snapshots[0]["removed"] is True


def test_snapshot_that_appears_while_the_task_still_runs_is_removed(world, monkeypatch):
    mgr, _client = task_manager(world, monkeypatch, ["running", "late"])
    with pytest.raises(cbt.CbtError):
        mgr.stun_cycle(require_change_ids=True)
    assert ("remove", "snapshot-1") in world.calls and world.snapshots == []
    assert mgr.init_snapshots[0]["removed"] is True


def test_interrupt_before_the_create_task_was_known_leaves_removed_false(world):
    world.fail_create = KeyboardInterrupt()
    mgr = world.manager()
    with pytest.raises(KeyboardInterrupt):
        mgr.stun_cycle(require_change_ids=True)
    assert mgr.init_snapshots[0]["removed"] is False


# -- consolidation after a successful removal ------------------------------------------------------

def test_remove_snapshot_returns_a_consolidation_failure_of_a_removed_snapshot(world):
    world.removable_refs = True
    snap = world.new_snapshot("s1")
    world.fail_consolidate = vim.fault.FileLocked(msg="Unable to access file since it is locked")

    class VM(object):
        def ConsolidateVMDisks_Task(self):
            world.calls.append(("consolidate",))
            raise world.fail_consolidate

    error = REAL_REMOVE_SNAPSHOT(FakeClient(world), VM(), snap["ref"], "s1", 60, "'vm1'")
    assert isinstance(error, cbt.ConsolidationFailed) and error.kind == "snapshot_remove_failed"
    assert "snapshot 's1' (snapshot-1) of VM 'vm1' was removed, but consolidating" in error.msg
    assert "locked" in error.msg and "Snapshots > Consolidate" in error.msg
    assert world.snapshots == [] and ("consolidate",) in world.calls


def test_consolidation_failure_after_removing_the_temporary_snapshot_is_its_own_outcome(world, monkeypatch):
    monkeypatch.setattr(cbt, "remove_snapshot", REAL_REMOVE_SNAPSHOT)
    world.cbt_on = True
    world.removable_refs = True
    world.fail_consolidate = vim.fault.FileLocked(msg="Unable to access file since it is locked")
    mgr = world.manager()
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    record = mgr.init_snapshots[0]
    assert record["removed"] is True and world.snapshots == []
    assert err.value.kind == "snapshot_remove_failed" and "could not be removed" not in err.value.msg
    assert ("the temporary snapshot '%s' (%s) of VM 'vm1'" % (record["name"], record["moid"])) in err.value.msg
    assert "was removed, but consolidating the VM's disks afterwards failed" in err.value.msg
    assert "locked" in err.value.msg and "Snapshots > Consolidate" in err.value.msg


def test_consolidation_failure_is_added_to_the_primary_error(world, monkeypatch):
    monkeypatch.setattr(cbt, "remove_snapshot", REAL_REMOVE_SNAPSHOT)
    world.cbt_on = True
    world.assign_change_ids = False
    world.removable_refs = True
    world.fail_consolidate = vim.fault.FileLocked(msg="Unable to access file since it is locked")
    mgr = world.manager()
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "no_change_id" and mgr.init_snapshots[0]["removed"] is True
    assert "in addition the temporary snapshot '%s'" % mgr.init_snapshots[0]["name"] in err.value.msg
    assert "was removed, but consolidating" in err.value.msg and "could not be removed" not in err.value.msg


def test_consolidation_failure_after_removing_a_stale_snapshot_counts_as_a_change(world, monkeypatch):
    monkeypatch.setattr(cbt, "remove_snapshot", REAL_REMOVE_SNAPSHOT)
    world.removable_refs = True
    world.new_snapshot("cbt-toolkit-init-20250101T000000Z-abcd")
    world.fail_consolidate = vim.fault.FileLocked(msg="locked")
    mgr = world.manager()
    with pytest.raises(cbt.ConsolidationFailed) as err:
        mgr.remove_stale(mgr.stale_snapshots())
    assert mgr.changed is True and world.snapshots == []
    assert "stale temporary snapshot 'cbt-toolkit-init-20250101T000000Z-abcd' (snapshot-1)" in err.value.msg
    assert "was removed, but consolidating" in err.value.msg


def test_enable_runs_reconfigure_then_stun_cycle_and_leaves_no_snapshot(world):
    mgr = world.manager()
    assert mgr.plan("enabled") == ["enable", "initialize"]
    mgr.reconfigure(True)
    disks = mgr.stun_cycle(require_change_ids=True)
    assert disks[0]["change_id"].endswith("/1")
    assert world.snapshots == [] and mgr.init_snapshots[0]["removed"] is True
    assert [c[0] for c in world.calls] == ["reconfigure", "create", "remove"]
    assert mgr.changed is True


def test_enabled_vm_with_change_ids_plans_nothing_but_one_without_is_initialised(world):
    world.cbt_on, world.change_id = True, CID_A
    assert world.manager().plan("enabled") == []
    world.change_id = None
    assert world.manager().plan("enabled") == ["initialize"]
    assert world.manager().plan("enabled", initialize=False) == []


def test_reset_and_disable_plans(world):
    world.cbt_on, world.change_id = True, CID_A
    assert world.manager().plan("reset") == ["disable", "stun", "enable", "initialize"]
    assert world.manager().plan("disabled") == ["disable", "stun"]
    assert world.manager().plan("disabled", initialize=False) == ["disable"]
    world.cbt_on = False
    assert world.manager().plan("disabled") == []


def test_disk_still_without_change_id_fails_and_removes_the_snapshot(world):
    world.cbt_on = True
    world.assign_change_ids = False
    mgr = world.manager()
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "no_change_id"
    assert "disk 2000 'Hard disk 1' ([ds] vm/vm.vmdk)" in err.value.msg
    assert world.snapshots == [] and mgr.init_snapshots[0]["removed"] is True


def test_create_task_failure_that_left_a_snapshot_behind_is_cleaned_up_by_name(world):
    world.cbt_on = True
    world.fail_create = VmwareTaskFailed("creating snapshot failed: injected", fault=vim.fault.SnapshotFault(msg="boom"))
    world.create_leaves_snapshot = True
    mgr = world.manager()
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "init_snapshot_failed"
    assert "CBT initialization failed for VM 'vm1'" in err.value.msg
    assert world.snapshots == [] and ("remove", "snapshot-1") in world.calls


def test_permission_denied_on_create_keeps_its_kind(world):
    world.fail_create = VmwarePermissionDenied("permission denied while creating: 'VirtualMachine.State.CreateSnapshot'",
                                               privileges=["VirtualMachine.State.CreateSnapshot"])
    with pytest.raises(VmwarePermissionDenied):
        world.manager().stun_cycle(require_change_ids=True)
    assert world.snapshots == []


def test_removal_failure_is_reported_with_the_snapshot_name(world):
    world.cbt_on = True
    world.fail_remove = 1
    mgr = world.manager()
    with pytest.raises(cbt.CbtError) as err:
        mgr.stun_cycle(require_change_ids=True)
    assert err.value.kind == "snapshot_remove_failed"
    assert mgr.init_snapshots[0]["name"] in err.value.msg and "cleanup_stale_snapshots" in err.value.msg
    assert mgr.init_snapshots[0]["removed"] is False


def test_primary_error_mentions_a_failed_removal_too(world):
    world.cbt_on = True
    world.assign_change_ids = False
    world.fail_remove = 1
    with pytest.raises(cbt.CbtError) as err:
        world.manager().stun_cycle(require_change_ids=True)
    assert err.value.kind == "no_change_id"
    assert "in addition the temporary snapshot could not be removed" in err.value.msg


def test_interrupt_during_the_cycle_still_removes_the_snapshot(world, monkeypatch):
    world.cbt_on = True

    def boom(client, ref, what):
        raise KeyboardInterrupt()

    monkeypatch.setattr(cbt, "snapshot_disks", boom)
    with pytest.raises(KeyboardInterrupt):
        world.manager().stun_cycle(require_change_ids=True)
    assert world.snapshots == []


def test_reconfigure_task_failure_is_reconfigure_failed(world):
    world.fail_reconfigure = VmwareTaskFailed("reconfiguring failed", fault=vim.fault.VmConfigFault(msg="nope"))
    with pytest.raises(cbt.CbtError) as err:
        world.manager().reconfigure(True)
    assert err.value.kind == "reconfigure_failed" and "Could not enable CBT on VM 'vm1'" in err.value.msg


def test_stale_snapshots_match_the_prefix_only(world):
    for name in ("cbt-toolkit-init-20250101T000000Z-abcd", "cbt-toolkit-init", "cbt-toolkit-initial", "backup"):
        world.new_snapshot(name)
    stale = world.manager().stale_snapshots()
    assert sorted(s["name"] for s in stale) == ["cbt-toolkit-init", "cbt-toolkit-init-20250101T000000Z-abcd"]
    removed = world.manager().remove_stale(stale)
    assert len(removed) == 2 and sorted(s["name"] for s in world.snapshots) == ["backup", "cbt-toolkit-initial"]


@pytest.mark.parametrize("props,words", [
    ({"config.template": True}, "template"),
    ({"config.version": "vmx-04"}, "vmx-07"),
    ({"capability.changeTrackingSupported": False}, "changeTrackingSupported"),
])
def test_unsupported_vms_are_refused(world, monkeypatch, props, words):
    def record():
        r = World.record(world)
        r["props"].update(props)
        return r

    monkeypatch.setattr(world, "record", record)
    with pytest.raises(cbt.CbtError) as err:
        world.manager().check_supported()
    assert err.value.kind == "unsupported" and words in err.value.msg


def test_flatten_snapshots_walks_the_tree_in_pre_order():
    def node(name, moid, children=()):
        return vim.vm.SnapshotTree(name=name, snapshot=vim.vm.Snapshot(moid), id=1, quiesced=False,
                                   childSnapshotList=list(children), description="")

    info = vim.vm.SnapshotInfo(rootSnapshotList=[node("a", "snapshot-1", [node("b", "snapshot-2")]),
                                                 node("c", "snapshot-3")])
    flat = cbt.flatten_snapshots(info)
    assert [(s["name"], s["parent"], s["depth"]) for s in flat] == [("a", None, 0), ("b", "a", 1), ("c", None, 0)]
    assert cbt.find_snapshot(flat, "snapshot-2", "vm")["name"] == "b"
    assert cbt.find_snapshot(flat, "c", "vm")["moid"] == "snapshot-3"
    with pytest.raises(cbt.CbtError) as err:
        cbt.find_snapshot(flat, "zzz", "vm")
    assert err.value.kind == "not_found" and "'a' (snapshot-1)" in err.value.msg
    dup = flat + [dict(flat[0], moid="snapshot-9")]
    with pytest.raises(cbt.CbtError) as err:
        cbt.find_snapshot(dup, "a", "vm")
    assert err.value.kind == "ambiguous"


def test_api_error_other_than_full_sync_faults_propagates():
    vm = PagingVM(8 * MiB, [], MiB, 10, fault_at=(1, vim.fault.TaskInProgress(msg="busy")))
    with pytest.raises(VmwareApiError):
        collect(vm, 8 * MiB)
