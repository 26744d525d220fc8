# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.vmware_cbt_changes against a scripted QueryChangedDiskAreas: paging into the
shared extent file, full-sync decisions, bad input."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from pyVmomi import vim, vmodl

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_module as vmod
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareClient
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import read_extent_file
from ansible_collections.cbt.toolkit.plugins.modules import vmware_cbt_changes as mod
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import run_module

MiB = 1 << 20
CAP = 32 * MiB
CID_SNAP = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/7"
CID_BASE = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/3"
CID_OTHER = "52 11 11 11 11 11 11 11-61 d5 4c 1b e9 7b 65 63/3"


class VM(object):
    _moId = "vm-1"

    def __init__(self, areas, window=4 * MiB, limit=3, fault=None):
        self.areas = areas
        self.window = window
        self.limit = limit
        self.fault = fault
        self.calls = []

    def QueryChangedDiskAreas(self, snapshot=None, deviceKey=None, startOffset=None, changeId=None):
        self.calls.append((snapshot._moId, deviceKey, startOffset, changeId))
        if self.fault is not None and len(self.calls) >= self.fault[0]:
            raise self.fault[1]
        end = min(CAP, startOffset + self.window)
        inside = [(s, n) for s, n in self.areas if startOffset <= s < end]
        if len(inside) > self.limit:
            inside = inside[:self.limit]
            end = inside[-1][0] + inside[-1][1]
        return vim.VirtualMachine.DiskChangeInfo(startOffset=startOffset, length=end - startOffset, changedArea=[
            vim.VirtualMachine.DiskChangeInfo.DiskChangeExtent(start=s, length=n) for s, n in inside])


@pytest.fixture
def world(monkeypatch):
    state = {"vm": VM([]), "connected": 0}

    def connect(self):
        state["connected"] += 1
        self.client = VmwareClient("127.0.0.1", "u", "p")
        return self.client

    def devices():
        return [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0)] + [
            vim.vm.device.VirtualDisk(key=2000 + i, controllerKey=1000, unitNumber=i, capacityInBytes=CAP,
                                      deviceInfo=vim.Description(label="Hard disk %d" % (i + 1), summary=""),
                                      backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                                          fileName="[ds] vm1/vm1%s.vmdk" % ("_%d" % i if i else ""),
                                          diskMode="persistent", changeId=state.get("snap_cid", CID_SNAP)))
            for i in range(state.get("disks", 1))]

    snaps = [{"name": "round-2", "moid": "snapshot-2", "ref": vim.vm.Snapshot("snapshot-2"), "description": "",
              "create_time": None, "id": 2, "quiesced": False, "parent": None, "depth": 0}]
    monkeypatch.setattr(vmod.VmwareModule, "connect", connect)
    monkeypatch.setattr(vmod.VmwareModule, "find_vm", lambda self: state["vm"])
    monkeypatch.setattr(mod, "read_vm", lambda client, ref: {
        "ref": ref, "moid": "vm-1", "path": "/DC0/vm/vm1", "missing": [],
        "props": {"name": "vm1", "config.instanceUuid": "inst-1", "config.changeTrackingEnabled": True}})
    monkeypatch.setattr(mod, "read_snapshots", lambda client, ref, name=None: snaps)
    monkeypatch.setattr(mod, "snapshot_disks", lambda client, ref, what: describe_disks(devices()))
    return state


def run(args, check=False):
    args = dict({"hostname": "127.0.0.1", "username": "u", "password": "p", "name": "vm1",
                 "snapshot": "round-2", "disk_key": 2000}, **args)
    return run_module(mod, args, check=check)


AREAS = [(0, 65536), (65536 * 3, 65536), (5 * MiB, 4096), (5 * MiB + 8192, 4096), (20 * MiB, MiB), (CAP - 512, 512)]


def test_changed_areas_are_paged_merged_and_written_to_the_extent_file(world, tmp_path):
    world["vm"] = VM(AREAS, window=8 * MiB, limit=1)
    out = tmp_path / "d.extents"
    res = run({"change_id": CID_BASE, "extent_file": str(out), "max_results": 2})
    assert res["changed"] is False and res["full_sync_required"] is False and res["reason"] is None
    assert res["count"] == len(AREAS) and res["changed_bytes"] == sum(n for _s, n in AREAS)
    assert res["extents"] == [{"offset": 0, "length": 65536}, {"offset": 196608, "length": 65536}]
    assert res["extents_truncated"] is True
    offsets = [c[2] for c in world["vm"].calls]
    assert res["pages"] == len(offsets) >= CAP // (8 * MiB)
    assert 65536 in offsets  # the first window was cut after its one area and continued right there
    assert offsets[0] == 0 and offsets == sorted(set(offsets)) and offsets[-1] < CAP
    assert all(c[0] == "snapshot-2" and c[1] == 2000 and c[3] == CID_BASE for c in world["vm"].calls)
    assert res["snapshot_change_id"] == CID_SNAP and res["capacity"] == CAP
    meta, extents = read_extent_file(str(out))
    assert extents == AREAS
    assert meta["capacity"] == CAP and meta["change_id"] == CID_BASE and meta["snapshot_change_id"] == CID_SNAP
    assert meta["full_sync_required"] == "false" and meta["disk_key"] == "2000"
    assert meta["source"] == "vmware://127.0.0.1/inst-1/disk-2000@snapshot-2"


def test_coalesce_gap(world):
    world["vm"] = VM(AREAS, window=CAP, limit=100)
    res = run({"change_id": CID_BASE, "coalesce_gap": 2 * 65536})
    assert res["extents"][0] == {"offset": 0, "length": 4 * 65536}
    assert res["extents"][1] == {"offset": 5 * MiB, "length": 12288}


def test_star_asks_for_allocated_areas(world):
    world["vm"] = VM(AREAS[:2], window=CAP, limit=100)
    res = run({"change_id": "*"})
    assert res["full_sync_required"] is False and res["count"] == 2
    assert world["vm"].calls[0][3] == "*"


def test_reset_uuid_requires_a_full_sync_without_querying(world, tmp_path):
    world["vm"] = VM(AREAS)
    out = tmp_path / "full.extents"
    res = run({"change_id": CID_OTHER, "extent_file": str(out)})
    assert res["full_sync_required"] is True and "UUID part differs" in res["reason"]
    assert res["extents"] == [{"offset": 0, "length": CAP}] and res["changed_bytes"] == CAP
    assert world["vm"].calls == []
    meta, extents = read_extent_file(str(out))
    assert extents == [(0, CAP)] and meta["full_sync_required"] == "true" and "UUID" in meta["reason"]
    assert any("full copy required" in w for w in res["warnings"])


@pytest.mark.parametrize("fault,name", [
    (vim.fault.FileFault(file="[ds] vm1/vm1-ctk.vmdk", msg="Error caused by file"), "FileFault"),
    (vmodl.fault.InvalidArgument(invalidProperty="changeId", msg="A specified parameter was not correct"),
     "InvalidArgument"),
    (vim.fault.NotFound(msg="gone"), "NotFound"),
    (vmodl.fault.MethodNotFound(method="QueryChangedDiskAreas",
                                msg="VirtualMachine:vm-1 does not implement: QueryChangedDiskAreas"), "MethodNotFound"),
])
def test_query_faults_mid_way_give_a_full_sync_and_a_complete_file(world, tmp_path, fault, name):
    world["vm"] = VM(AREAS, window=4 * MiB, limit=2, fault=(3, fault))
    out = tmp_path / "f.extents"
    res = run({"change_id": CID_BASE, "extent_file": str(out)})
    assert res["full_sync_required"] is True and res["fault"] == name
    assert res["extents"] == [{"offset": 0, "length": CAP}]
    meta, extents = read_extent_file(str(out))
    assert extents == [(0, CAP)] and meta["full_sync_required"] == "true"
    assert [p.name for p in tmp_path.iterdir()] == ["f.extents"]  # no partial temp file left


def test_disk_without_change_id_at_the_snapshot_requires_full_sync(world):
    world["snap_cid"] = None
    res = run({"change_id": "*"})
    assert res["full_sync_required"] is True and "no changeId" in res["reason"]


@pytest.mark.parametrize("cid", ["52 de c0/3", "abc", "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63"])
def test_malformed_change_id_fails_before_connecting(world, cid):
    res = run({"change_id": cid})
    assert res["failed"] and res["error_kind"] == "invalid_argument" and "16 hex bytes" in res["msg"]
    assert world["connected"] == 0


def test_unknown_disk_key_lists_the_disks(world):
    res = run({"change_id": "*", "disk_key": 2001})
    assert res["failed"] and res["error_kind"] == "not_found"
    assert "no disk with key 2001" in res["msg"] and "2000 (Hard disk 1, [ds] vm1/vm1.vmdk)" in res["msg"]


def test_unknown_snapshot_lists_the_snapshots(world):
    res = run({"change_id": "*", "snapshot": "round-9"})
    assert res["failed"] and res["error_kind"] == "not_found" and "'round-2' (snapshot-2)" in res["msg"]


def test_check_mode_runs_the_read_only_query(world):
    world["vm"] = VM(AREAS[:1], window=CAP)
    res = run({"change_id": CID_BASE}, check=True)
    assert res["changed"] is False and res["count"] == 1


def test_permission_denied_is_a_failure_naming_the_privilege(world, tmp_path):
    world["vm"] = VM(AREAS, fault=(1, vim.fault.NoPermission(privilegeId="VirtualMachine.Provisioning.DiskRandomRead")))
    out = tmp_path / "p.extents"
    res = run({"change_id": CID_BASE, "extent_file": str(out)})
    assert res["failed"] and res["error_kind"] == "permission_denied"
    assert res["missing_privileges"] == ["VirtualMachine.Provisioning.DiskRandomRead"]
    assert list(tmp_path.iterdir()) == []  # no extent file for a failed query


def test_ineligible_disk_is_an_error_not_a_full_sync(world, monkeypatch):
    def disks_of(client, ref, what):
        return describe_disks([
            vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
            vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=CAP,
                                      deviceInfo=vim.Description(label="Hard disk 1", summary=""),
                                      backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                                          fileName="[ds] vm1/vm1.vmdk", diskMode="independent_persistent"))])

    monkeypatch.setattr(mod, "snapshot_disks", disks_of)
    res = run({"change_id": "*"})
    assert res["failed"] and res["error_kind"] == "unsupported" and "independent" in res["msg"]
    assert world["vm"].calls == []


def run_disks(disks, check=False, **args):
    args = dict({"hostname": "127.0.0.1", "username": "u", "password": "p", "name": "vm1", "snapshot": "round-2",
                 "disks": disks}, **args)
    return run_module(mod, args, check=check)


def test_several_disks_in_one_call(world, tmp_path):
    world["disks"] = 2
    world["vm"] = VM(AREAS, window=CAP, limit=100)
    res = run_disks([{"key": 2001, "change_id": CID_BASE, "extent_file": str(tmp_path / "b.extents")},
                     {"key": 2000, "change_id": CID_OTHER, "extent_file": str(tmp_path / "a.extents")}],
                    max_results=1)
    assert res["changed"] is False and world["connected"] == 1
    assert [d["key"] for d in res["disks"]] == [2001, 2000]
    first, second = res["disks"]
    assert first["full_sync_required"] is False and first["count"] == len(AREAS)
    assert first["extents"] == [{"offset": 0, "length": 65536}] and first["extents_truncated"] is True
    assert first["disk"]["file"] == "[ds] vm1/vm1_1.vmdk" and first["snapshot_change_id"] == CID_SNAP
    assert second["full_sync_required"] is True and "UUID part differs" in second["reason"]
    assert res["full_sync_required"] is True
    assert res["changed_bytes"] == sum(n for _s, n in AREAS) + CAP
    assert {c[1] for c in world["vm"].calls} == {2001}  # the reset disk is not queried
    assert read_extent_file(str(tmp_path / "b.extents"))[1] == AREAS
    meta, extents = read_extent_file(str(tmp_path / "a.extents"))
    assert extents == [(0, CAP)] and meta["full_sync_required"] == "true" and meta["disk_key"] == "2000"
    assert "extents" not in res and "count" not in res


def test_a_failing_disk_publishes_no_extent_file_of_any_disk(world, tmp_path):
    world["disks"] = 2
    world["vm"] = VM(AREAS, window=CAP, limit=100,
                     fault=(2, vim.fault.NoPermission(privilegeId="VirtualMachine.Provisioning.DiskRandomRead")))
    res = run_disks([{"key": 2000, "change_id": CID_BASE, "extent_file": str(tmp_path / "a.extents")},
                     {"key": 2001, "change_id": CID_BASE, "extent_file": str(tmp_path / "b.extents")}])
    assert res["failed"] and res["error_kind"] == "permission_denied"
    assert [c[1] for c in world["vm"].calls] == [2000, 2001]  # the first disk's query had succeeded
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", ["fsync", "rename"])
def test_an_extent_file_that_cannot_be_written_keeps_none_of_them(world, tmp_path, monkeypatch, step):
    from ansible_collections.cbt.toolkit.plugins.module_utils import extents as extlib

    world["disks"] = 2
    world["vm"] = VM(AREAS, window=CAP, limit=100)
    real_fsync, real_replace = extlib.os.fsync, extlib.os.replace
    fsyncs = []

    def fsync(fd):
        fsyncs.append(fd)
        if step == "fsync" and len(fsyncs) == 2:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    def replace(src, dst):
        if step == "rename" and dst.endswith("b.extents"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(extlib.os, "fsync", fsync)
    monkeypatch.setattr(extlib.os, "replace", replace)
    res = run_disks([{"key": 2000, "change_id": CID_BASE, "extent_file": str(tmp_path / "a.extents")},
                     {"key": 2001, "change_id": CID_BASE, "extent_file": str(tmp_path / "b.extents")}])
    assert res["failed"] and res["error_kind"] == "extent_file_failed", res
    assert "writing the extent file %s failed: No space left on device" % (tmp_path / "b.extents") in res["msg"]
    assert "no extent file of this call was kept" in res["msg"]
    assert list(tmp_path.iterdir()) == []  # neither the first disk's file nor any temporary file


def test_an_extent_file_path_that_is_a_folder_fails_before_connecting(world, tmp_path):
    res = run_disks([{"key": 2000, "change_id": "*", "extent_file": str(tmp_path)}])
    assert res["failed"] and res["error_kind"] == "invalid_argument", res
    assert "extent file %s of disk 2000 is a folder" % tmp_path in res["msg"]
    assert world["connected"] == 0


@pytest.mark.parametrize("disks,text", [
    ([{"key": 2000, "change_id": "*"}, {"key": 2000, "change_id": CID_BASE}], "each key may appear once; repeated: 2000"),
    ([{"key": 2000, "change_id": "*", "extent_file": "/tmp/x"}, {"key": 2001, "change_id": "*", "extent_file": "/tmp/x"}],
     "each extent_file may appear once; repeated: /tmp/x"),
    ([{"key": 2000, "change_id": "*"}, {"key": 2001, "change_id": "52 de/1"}], "disks[1].change_id (disk 2001)"),
    ([], "disks must name at least one disk"),
])
def test_bad_disks_fail_before_connecting(world, disks, text):
    res = run_disks(disks)
    assert res["failed"] and res["error_kind"] == "invalid_argument" and text in res["msg"], res
    assert world["connected"] == 0


def test_an_unknown_disk_fails_before_any_query(world, tmp_path):
    world["disks"] = 2
    world["vm"] = VM(AREAS)
    res = run_disks([{"key": 2000, "change_id": "*", "extent_file": str(tmp_path / "a.extents")},
                     {"key": 2002, "change_id": "*"}])
    assert res["failed"] and res["error_kind"] == "not_found" and "no disk with key 2002" in res["msg"]
    assert world["vm"].calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [{"disk_key": 2000}, {"change_id": "*"}, {"extent_file": "/tmp/x"}])
def test_disks_and_the_single_disk_options_are_mutually_exclusive(world, extra):
    res = run_disks([{"key": 2000, "change_id": "*"}], **extra)
    assert res["failed"] and "mutually exclusive" in res["msg"]
    assert world["connected"] == 0


def test_disk_key_needs_change_id(world):
    res = run_module(mod, {"hostname": "127.0.0.1", "username": "u", "password": "p", "name": "vm1",
                           "snapshot": "round-2", "disk_key": 2000})
    assert res["failed"] and "change_id" in res["msg"] and world["connected"] == 0
