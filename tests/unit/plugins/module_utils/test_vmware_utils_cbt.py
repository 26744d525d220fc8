# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CBT engine: QueryChangedDiskAreas paging, extent coalescing, changeId lineage, and the
stun cycle's guarantee that the temporary snapshot is removed on every path."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random

import pytest
from pyVmomi import vim, vmodl

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_cbt as cbt
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareApiError,
    VmwareClient,
    VmwarePermissionDenied,
    VmwareTaskFailed,
)

CID_A = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/4"
CID_A_LATER = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/9"
CID_B = "52 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee/1"
MiB = 1 << 20


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
        snap = {"name": name, "moid": "snapshot-%d" % self.seq, "ref": vim.vm.Snapshot("snapshot-%d" % self.seq),
                "description": "", "create_time": None, "id": self.seq, "quiesced": False, "parent": None, "depth": 0}
        self.snapshots.append(snap)
        return snap


class FakeClient(object):
    def __init__(self, world):
        self.world = world

    def run_task(self, what, func, *args, **kwargs):
        kwargs.pop("timeout", None)
        kwargs.pop("expected_privilege", None)
        return func(*args, **kwargs)


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

    monkeypatch.setattr(cbt, "read_vm", lambda client, vm: w.record())
    monkeypatch.setattr(cbt, "read_snapshots", lambda client, vm, name=None: list(w.snapshots))
    monkeypatch.setattr(cbt, "create_snapshot", create)
    monkeypatch.setattr(cbt, "remove_snapshot", remove)
    monkeypatch.setattr(cbt, "snapshot_disks", disks_of)
    w.manager = lambda: cbt.CbtManager(FakeClient(w), FakeVM(), prefix="cbt-toolkit-init", timeout=60)
    return w


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
