# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.vmware_migration_snapshot: idempotent by name, check mode, change IDs at the
snapshot, removal waits for consolidation."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from pyVmomi import vim

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_module as vmod
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareApiError,
    VmwareTaskFailed,
    VmwareUnreachable,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
from ansible_collections.cbt.toolkit.plugins.modules import vmware_migration_snapshot as mod
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import run_module

CID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/%d"


class World(object):
    def __init__(self):
        self.snapshots = []
        self.calls = []
        self.consolidation_needed = False
        self.fail_remove = None

    def add(self, name):
        moid = "snapshot-%d" % (len(self.snapshots) + 1)
        snap = {"name": name, "moid": moid, "ref": Snap(self, moid), "description": "d", "create_time": None,
                "id": 1, "quiesced": False, "parent": None, "depth": 0, "seq": len(self.snapshots) + 1}
        self.snapshots.append(snap)
        return snap


class Snap(object):
    def __init__(self, world, moid):
        self.world = world
        self._moId = moid

    def RemoveSnapshot_Task(self, removeChildren, consolidate):
        self.world.calls.append(("remove", self._moId, removeChildren, consolidate))
        if self.world.fail_remove is not None:
            raise self.world.fail_remove
        self.world.snapshots = [s for s in self.world.snapshots if s["moid"] != self._moId]


@pytest.fixture
def world(monkeypatch):
    w = World()

    class Client(object):
        def run_task(self, what, func, *args, **kwargs):
            kwargs.pop("timeout", None)
            kwargs.pop("expected_privilege", None)
            return func(*args, **kwargs)

    def create(client, vm, name, description, memory, quiesce, timeout, text):
        w.calls.append(("create", name, memory, quiesce))
        return w.add(name)["ref"]

    def disks(client, ref, what):
        seq = [s for s in w.snapshots if s["moid"] == ref._moId][0]["seq"]
        return describe_disks([
            vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
            vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=1 << 30,
                                      backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                                          fileName="[ds] vm1/vm1.vmdk", diskMode="persistent", changeId=CID % seq))])

    def consolidate(client, vm, timeout, text):
        w.calls.append(("consolidate-check",))
        return w.consolidation_needed

    monkeypatch.setattr(vmod.VmwareModule, "connect", lambda self: setattr(self, "client", Client()))
    monkeypatch.setattr(vmod.VmwareModule, "close", lambda self: None)
    monkeypatch.setattr(vmod.VmwareModule, "find_vm", lambda self: "vmref")
    monkeypatch.setattr(mod, "read_vm", lambda client, vm: {
        "ref": vm, "moid": "vm-1", "path": "/DC0/vm/vm1", "missing": [],
        "props": {"name": "vm1", "config.changeTrackingEnabled": True, "config.hardware.device": []}})
    monkeypatch.setattr(mod, "read_snapshots", lambda client, vm, name=None: list(w.snapshots))
    monkeypatch.setattr(mod, "create_snapshot", create)
    monkeypatch.setattr(mod, "snapshot_disks", disks)
    monkeypatch.setattr(mod, "consolidate_if_needed", consolidate)
    return w


def run(args, check=False, diff=False):
    return run_module(mod, dict({"hostname": "h", "username": "u", "password": "p", "name": "vm1"}, **args),
                      check=check, diff=diff)


def test_present_creates_once_and_returns_change_ids(world):
    res = run({"snapshot_name": "round-1"}, diff=True)
    assert res["changed"] is True and res["snapshot"]["moid"] == "snapshot-1"
    assert res["change_ids"] == {"2000": CID % 1}
    assert res["disks"][0]["capacity_bytes"] == 1 << 30 and res["disks"][0]["file"] == "[ds] vm1/vm1.vmdk"
    assert ("create", "round-1", False, False) in world.calls
    assert res["diff"] == {"before": {"snapshot": None}, "after": {"snapshot": "round-1"},
                           "before_header": "/DC0/vm/vm1", "after_header": "/DC0/vm/vm1"}
    again = run({"snapshot_name": "round-1"})
    assert again["changed"] is False and again["change_ids"] == res["change_ids"]
    assert len([c for c in world.calls if c[0] == "create"]) == 1


def test_check_mode_creates_nothing(world):
    res = run({"snapshot_name": "round-1"}, check=True)
    assert res["changed"] is True and res["snapshot"]["moid"] is None and world.calls == []


def test_absent_removes_with_consolidation_and_is_idempotent(world):
    world.add("round-1")
    world.consolidation_needed = True
    res = run({"snapshot_name": "round-1", "state": "absent"})
    assert res["changed"] is True and res["consolidated"] is True
    assert ("remove", "snapshot-1", False, True) in world.calls and world.snapshots == []
    assert run({"snapshot_name": "round-1", "state": "absent"})["changed"] is False


def test_absent_by_moid_and_check_mode(world):
    world.add("round-1")
    res = run({"snapshot_name": "snapshot-1", "state": "absent"}, check=True)
    assert res["changed"] is True and len(world.snapshots) == 1
    res = run({"snapshot_name": "snapshot-1", "state": "absent"})
    assert res["changed"] is True and world.snapshots == []


def test_duplicate_names_are_an_error_listing_moids(world):
    world.add("round-1")
    world.add("round-1")
    res = run({"snapshot_name": "round-1"})
    assert res["failed"] and res["error_kind"] == "ambiguous"
    assert "snapshot-1" in res["msg"] and "snapshot-2" in res["msg"]


def test_remove_failure_is_reported(world):
    world.add("round-1")
    world.fail_remove = VmwareTaskFailed("removing snapshot 'round-1' failed: locked",
                                         fault=vim.fault.TaskInProgress(msg="locked"))
    res = run({"snapshot_name": "round-1", "state": "absent"})
    assert res["failed"] and res["error_kind"] == "snapshot_remove_failed" and "locked" in res["msg"]


@pytest.fixture
def live_disk(monkeypatch):
    """The VM's current configuration has disk 2000 (the changes pre-check looks there)."""
    devices = [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
               vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=1 << 30,
                                         backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                                             fileName="[ds] vm1/vm1.vmdk", diskMode="persistent"))]
    monkeypatch.setattr(mod, "read_vm", lambda client, vm: {
        "ref": vm, "moid": "vm-1", "path": "/DC0/vm/vm1", "missing": [],
        "props": {"name": "vm1", "config.changeTrackingEnabled": True, "config.hardware.device": devices}})


def test_changes_are_asked_at_the_snapshot_in_the_same_task(world, live_disk, monkeypatch):
    seen = []

    def query(client, vm, text, facts, snap, disks, live, requests, gap, max_results, warn):
        seen.append((snap["moid"], [d["key"] for d in disks], [(r.key, r.change_id) for r in requests], gap,
                     max_results))
        return [{"key": 2000, "full_sync_required": False, "changed_bytes": 4096, "extents": []}], 0.25

    monkeypatch.setattr(mod, "query_changes", query)
    changes = {"disks": [{"key": 2000, "change_id": CID % 1}], "max_results": 0}
    res = run({"snapshot_name": "round-2", "changes": changes})
    assert res["changed"] is True and seen == [("snapshot-1", [2000], [(2000, CID % 1)], 0, 0)]
    assert res["changes"] == {"disks": [{"key": 2000, "full_sync_required": False, "changed_bytes": 4096,
                                         "extents": []}], "full_sync_required": False, "changed_bytes": 4096,
                              "query_seconds": 0.25}


def test_changes_in_check_mode_for_a_new_snapshot_are_null(world, live_disk):
    res = run({"snapshot_name": "round-2", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}}, check=True)
    assert res["changed"] is True and res["changes"] is None and world.calls == []


@pytest.mark.parametrize("args,kind,text", [
    ({"state": "absent", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}}, "invalid_argument",
     "changes is only for state=present"),
    ({"changes": {"disks": [{"key": 2000, "change_id": "52 de/1"}]}}, "invalid_argument",
     "changes.disks[0].change_id (disk 2000)"),
    ({"changes": {"disks": [{"key": 2000, "change_id": "*", "extent_file": "/nonexistent-folder/x.extents"}]}},
     "invalid_argument", "folder /nonexistent-folder does not exist"),
    ({"changes": {"disks": [{"key": 2001, "change_id": "*"}]}}, "not_found",
     "no disk with key 2001 in its current configuration"),
])
def test_bad_changes_fail_before_a_snapshot_is_taken(world, live_disk, args, kind, text):
    res = run(dict({"snapshot_name": "round-2"}, **args))
    assert res["failed"] and res["error_kind"] == kind and text in res["msg"], res
    assert world.calls == [] and world.snapshots == []


@pytest.mark.parametrize("error", [
    lambda: mod.CbtError("querying the changed areas of disk 2000 failed: denied", kind="permission_denied"),
    lambda: OSError(28, "No space left on device"),
])
def test_a_failed_query_removes_the_snapshot_this_task_created(world, live_disk, monkeypatch, error):
    removed = []

    def query(*_args):
        raise error()

    def remove(client, vm, ref, name, timeout, text, attempts=3):
        removed.append(ref._moId)
        world.snapshots = [s for s in world.snapshots if s["moid"] != ref._moId]

    monkeypatch.setattr(mod, "query_changes", query)
    monkeypatch.setattr(mod, "remove_snapshot", remove)
    res = run({"snapshot_name": "round-2", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}})
    assert res["failed"] and "the snapshot this task created was removed again" in res["msg"], res
    assert removed == ["snapshot-1"] and world.snapshots == []
    assert "Traceback" not in res["msg"]
    # a snapshot that was there before the task stays
    world.add("round-2")
    res = run({"snapshot_name": "round-2", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}})
    assert res["failed"] and "removed again" not in res["msg"] and removed == ["snapshot-1"]
    assert res["error_kind"] in ("permission_denied", "query_failed") and "Traceback" not in res["msg"]
    assert [s["name"] for s in world.snapshots] == ["round-2"]


def fake_remove(world, removed, returns=None, raises=None):
    """remove_snapshot: ``raises`` an error, or removes the snapshot unless ``returns`` is a removal error."""
    def remove(client, vm, ref, name, timeout, text, attempts=3):
        removed.append(ref._moId)
        if raises is not None:
            raise raises
        if returns is None or isinstance(returns, mod.ConsolidationFailed):
            world.snapshots = [s for s in world.snapshots if s["moid"] != ref._moId]
        return returns
    return remove


def test_reading_the_new_snapshot_failing_removes_it_again(world, monkeypatch):
    removed = []
    reads = []

    def read(client, vm, name=None):
        reads.append(name)
        if len(reads) > 1:  # the read after the creation
            raise VmwareApiError("reading the snapshots of VM 'vm1' failed: SystemError: busy")
        return list(world.snapshots)

    monkeypatch.setattr(mod, "read_snapshots", read)
    monkeypatch.setattr(mod, "remove_snapshot", fake_remove(world, removed))
    res = run({"snapshot_name": "round-2"})
    assert res["failed"] and res["error_kind"] == "api_error", res
    assert "reading the snapshots of VM 'vm1' failed: SystemError: busy" in res["msg"]
    assert "the snapshot this task created was removed again" in res["msg"]
    assert removed == ["snapshot-1"] and world.snapshots == []


def test_reading_the_disks_of_the_new_snapshot_failing_removes_it_again(world, monkeypatch):
    removed = []

    def disks(client, ref, what):
        raise VmwareApiError("%s failed: SystemError: busy" % what)

    monkeypatch.setattr(mod, "snapshot_disks", disks)
    monkeypatch.setattr(mod, "remove_snapshot", fake_remove(world, removed))
    res = run({"snapshot_name": "round-2"})
    assert res["failed"] and "reading the disks of snapshot 'round-2' of VM 'vm1'" in res["msg"], res
    assert "the snapshot this task created was removed again" in res["msg"]
    assert removed == ["snapshot-1"] and world.snapshots == []
    # an unexpected error there is a clean failure and removes the snapshot too

    def unexpected(client, ref, what):
        raise KeyError("backing")

    monkeypatch.setattr(mod, "snapshot_disks", unexpected)
    res = run({"snapshot_name": "round-3"})
    assert res["failed"] and res["error_kind"] == "snapshot_failed" and "KeyError" in res["msg"], res
    assert "removed again" in res["msg"] and world.snapshots == []


def test_a_failing_removal_keeps_the_original_error_and_names_the_snapshot(world, live_disk, monkeypatch):
    removed = []

    def query(*_args):
        raise mod.CbtError("querying the changed areas of disk 2000 failed: denied", kind="permission_denied")

    monkeypatch.setattr(mod, "query_changes", query)
    monkeypatch.setattr(mod, "remove_snapshot", fake_remove(world, removed, raises=VmwareUnreachable(
        "the connection to vCenter h:443 broke while reading the snapshots of VM 'vm1': reset")))
    res = run({"snapshot_name": "round-2", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}})
    assert res["failed"] and res["error_kind"] == "permission_denied", res
    assert res["msg"].startswith("querying the changed areas of disk 2000 failed: denied")
    assert "snapshot 'round-2' (snapshot-1) this task created could not be removed" in res["msg"]
    assert "broke while reading the snapshots" in res["msg"]
    assert "remove it by hand or run this task again with state: absent" in res["msg"]
    assert removed == ["snapshot-1"] and [s["name"] for s in world.snapshots] == ["round-2"]
    # a removal that reports an error (rather than raising one) is named the same way
    world.snapshots = []
    monkeypatch.setattr(mod, "remove_snapshot", fake_remove(world, removed, returns=VmwareTaskFailed(
        "removing snapshot 'round-3' failed: locked", fault=vim.fault.TaskInProgress(msg="locked"))))
    res = run({"snapshot_name": "round-3", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}})
    assert res["error_kind"] == "permission_denied" and "'round-3' (snapshot-1)" in res["msg"], res
    assert "could not be removed (removing snapshot 'round-3' failed: locked)" in res["msg"]


def test_a_consolidation_failure_after_removing_the_new_snapshot_is_reported(world, live_disk, monkeypatch):
    removed = []

    def query(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "query_changes", query)
    monkeypatch.setattr(mod, "remove_snapshot", fake_remove(world, removed, returns=mod.ConsolidationFailed(
        "snapshot 'round-2' (snapshot-1) of VM 'vm1' was removed, but consolidating failed: locked", "locked")))
    res = run({"snapshot_name": "round-2", "changes": {"disks": [{"key": 2000, "change_id": "*"}]}})
    assert res["failed"] and res["error_kind"] == "query_failed" and "No space left on device" in res["msg"], res
    assert "the snapshot this task created was removed again, but consolidating the VM's disks" in res["msg"]
    assert "locked" in res["msg"] and "Snapshots > Consolidate" in res["msg"]
    assert world.snapshots == []


def _failing_create(world, error):
    def create(client, vm, name, description, memory, quiesce, timeout, text):
        world.calls.append(("create", name, memory, quiesce))
        raise error

    return create


def test_a_failed_creation_task_is_reported_as_it_is(world, monkeypatch):
    monkeypatch.setattr(mod, "create_snapshot", _failing_create(world, VmwareTaskFailed(
        "creating snapshot 'round-1' of VM 'vm1' failed: GenericVmConfigFault: disk locked")))
    res = run({"snapshot_name": "round-1"})
    assert res["failed"] and res["error_kind"] == "task_failed", res
    assert res["msg"] == "creating snapshot 'round-1' of VM 'vm1' failed: GenericVmConfigFault: disk locked"


def test_a_creation_cut_off_before_vcenter_answered_says_the_snapshot_may_exist(world, monkeypatch):
    monkeypatch.setattr(mod, "create_snapshot", _failing_create(world, VmwareUnreachable(
        "the connection to vCenter h:443 broke while creating snapshot 'round-1' of VM 'vm1': reset")))
    res = run({"snapshot_name": "round-1"})
    assert res["failed"] and res["error_kind"] == "unreachable", res
    assert "vCenter may have started creating snapshot 'round-1'" in res["msg"]
    assert "state: absent" in res["msg"]


def test_an_unfinished_creation_whose_check_fails_says_so(world, monkeypatch):
    class Task(object):
        _moId = "task-9"

    error = mod.VmwareError("creating snapshot 'round-1' of VM 'vm1' did not finish within 1 s")
    error.unfinished_task = Task()
    monkeypatch.setattr(mod, "create_snapshot", _failing_create(world, error))
    monkeypatch.setattr(mod, "settle_task", lambda *args: (None, True))

    def read(client, vm, name=None):
        if any(c[0] == "create" for c in world.calls):
            raise VmwareApiError("reading the snapshots of VM 'vm1' failed: SystemError: busy")
        return list(world.snapshots)

    monkeypatch.setattr(mod, "read_snapshots", read)
    res = run({"snapshot_name": "round-1", "task_timeout": 1})
    assert res["failed"], res
    assert res["msg"].startswith("creating snapshot 'round-1' of VM 'vm1' did not finish within 1 s")
    assert "whether the unfinished creation task made snapshot 'round-1' failed too" in res["msg"]
    assert "SystemError: busy" in res["msg"]
