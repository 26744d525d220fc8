# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.vmware_cbt with the vSphere calls replaced by an in-memory VM: check mode,
diff, idempotency, failure messages and the temporary snapshot's removal."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from pyVmomi import vim

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_cbt as cbt
from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_module as vmod
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareTaskFailed
from ansible_collections.cbt.toolkit.plugins.modules import vmware_cbt
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import run_module

CONN = {"hostname": "127.0.0.1", "username": "u", "password": "p"}


def run(args, check=False, diff=False):
    return run_module(vmware_cbt, dict(CONN, **args), check=check, diff=diff)


class VM(object):
    """In-memory VM: CBT flag, one eligible and one independent disk, snapshots, and a CBT
    epoch (UUID) that changes when tracking is switched off and on again."""

    def __init__(self):
        self.cbt_on = False
        self.active = False      # tracking took effect (after a stun cycle)
        self.epoch = 1
        self.seq = 0
        self.snapshots = []
        self.calls = []
        self.hw = "vmx-13"
        self.fail_create = None
        self.no_change_ids = False
        self.snap_seq = 100

    def change_id(self):
        if not (self.cbt_on and self.active):
            return None
        return "52 00 00 00 00 00 00 %02x-61 d5 4c 1b e9 7b 65 63/%d" % (self.epoch, self.seq)

    def devices(self, change_id):
        def disk(key, mode, cid):
            return vim.vm.device.VirtualDisk(
                key=key, controllerKey=1000, unitNumber=key - 2000, capacityInBytes=1 << 30,
                deviceInfo=vim.Description(label="Hard disk %d" % (key - 1999), summary=""),
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[ds] vm1/d%d.vmdk" % key,
                                                                      diskMode=mode, changeId=cid))
        return [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0),
                disk(2000, "persistent", change_id), disk(2001, "independent_persistent", None)]

    def record(self):
        return {"ref": "vm", "moid": "vm-1", "path": "/DC0/vm/vm1", "missing": [],
                "props": {"name": "vm1", "config.changeTrackingEnabled": self.cbt_on, "config.version": self.hw,
                          "config.uuid": "bios-1", "config.instanceUuid": "inst-1",
                          "capability.changeTrackingSupported": True, "runtime.powerState": "poweredOn",
                          "config.hardware.device": self.devices(self.change_id())}}

    def add_snapshot(self, name):
        self.snap_seq += 1
        moid = "snapshot-%d" % self.snap_seq
        snap = {"name": name, "moid": moid, "ref": vim.vm.Snapshot(moid), "description": "", "create_time": None,
                "id": 1, "quiesced": False, "parent": None, "depth": 0}
        self.snapshots.append(snap)
        return snap


@pytest.fixture
def vm(monkeypatch):
    v = VM()

    class Client(object):
        def run_task(self, what, func, *args, **kwargs):
            kwargs.pop("timeout", None)
            kwargs.pop("expected_privilege", None)
            return func(*args, **kwargs)

        def close(self):
            v.calls.append(("logout",))

    class Ref(object):
        _moId = "vm-1"

        def ReconfigVM_Task(self, spec):
            v.calls.append(("reconfigure", spec.changeTrackingEnabled))
            if v.cbt_on != spec.changeTrackingEnabled:
                v.cbt_on = spec.changeTrackingEnabled
                v.active = False
                if not v.cbt_on:
                    v.epoch += 1

    def create(client, ref, name, description, memory, quiesce, timeout, vm_text):
        v.calls.append(("create", name))
        if v.fail_create is not None:
            raise v.fail_create
        if v.cbt_on and not v.no_change_ids:
            v.active = True
            v.seq += 1
        snap = v.add_snapshot(name)
        snap["disk_change_id"] = v.change_id()
        return snap["ref"]

    def remove(client, ref, snap_ref, name, timeout, vm_text, attempts=3):
        v.calls.append(("remove", snap_ref._moId))
        v.snapshots = [s for s in v.snapshots if s["moid"] != snap_ref._moId]

    def disks_of(client, snap_ref, what):
        snap = [s for s in v.snapshots if s["moid"] == snap_ref._moId][0]
        from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
        return describe_disks(v.devices(snap.get("disk_change_id")))

    def connect(self):
        self.client = Client()
        return self.client

    monkeypatch.setattr(vmod.VmwareModule, "connect", connect)
    monkeypatch.setattr(vmod.VmwareModule, "find_vm", lambda self: Ref())
    monkeypatch.setattr(cbt, "read_vm", lambda client, ref: v.record())
    monkeypatch.setattr(cbt, "read_snapshots", lambda client, ref, name=None: list(v.snapshots))
    monkeypatch.setattr(cbt, "create_snapshot", create)
    monkeypatch.setattr(cbt, "remove_snapshot", remove)
    monkeypatch.setattr(cbt, "snapshot_disks", disks_of)
    return v


def mutating(calls):
    return [c for c in calls if c[0] in ("reconfigure", "create", "remove")]


def test_check_mode_reports_the_plan_and_changes_nothing(vm):
    res = run({"name": "vm1"}, check=True, diff=True)
    assert res["changed"] is True and "failed" not in res
    assert res["actions"][0].startswith("enable change tracking")
    assert res["actions"][1].startswith("initialise CBT with a temporary snapshot")
    assert mutating(vm.calls) == [] and vm.cbt_on is False
    assert res["cbt_enabled_before"] is False and res["cbt_enabled_after"] is True
    assert res["diff"]["before"]["cbt_enabled"] is False and res["diff"]["after"]["cbt_enabled"] is True
    assert res["diff"]["after"]["disks"]["2000 Hard disk 1"] == "(assigned by the initialisation)"
    assert res["diff"]["after"]["disks"]["2001 Hard disk 2"].startswith("(not eligible: independent")


def test_enable_initialises_and_the_second_run_changes_nothing(vm):
    first = run({"name": "vm1"})
    assert first["changed"] is True and first["cbt_initialized"] is True
    assert [c[0] for c in mutating(vm.calls)] == ["reconfigure", "create", "remove"]
    disk = first["disks"][0]
    assert disk["change_id"].endswith("/1") and disk["previous_change_id"] is None and disk["eligible"]
    assert first["disks"][1]["eligible"] is False and "independent" in first["disks"][1]["reason"]
    assert first["temporary_snapshots"][0]["removed"] is True and vm.snapshots == []
    assert first["vm"] == {"name": "vm1", "moid": "vm-1", "instance_uuid": "inst-1", "bios_uuid": "bios-1",
                           "power_state": "poweredOn", "hw_version": "vmx-13", "path": "/DC0/vm/vm1"}
    assert ("logout",) in vm.calls
    vm.calls[:] = []
    second = run({"name": "vm1"})
    assert second["changed"] is False and second["actions"] == [] and mutating(vm.calls) == []
    assert second["disks"][0]["change_id"] == disk["change_id"]


def test_cbt_on_but_disk_without_change_id_is_initialised(vm):
    vm.cbt_on = True  # VM-level flag only: no stun cycle yet
    res = run({"name": "vm1"})
    assert res["changed"] is True and [c[0] for c in mutating(vm.calls)] == ["create", "remove"]
    assert res["cbt_enabled_before"] is True and res["disks"][0]["change_id"]


def test_initialize_false_only_reconfigures_and_warns(vm):
    res = run({"name": "vm1", "initialize": False})
    assert [c[0] for c in mutating(vm.calls)] == ["reconfigure"]
    assert res["cbt_initialized"] is False
    assert any("no changeId yet" in w for w in res.get("warnings", []))


def test_disk_still_without_change_id_fails_with_the_seed_prefix_and_no_snapshot_left(vm):
    vm.no_change_ids = True
    res = run({"name": "vm1"})
    assert res["failed"] and res["error_kind"] == "no_change_id"
    assert res["msg"].startswith("CBT enablement check failed - migration cannot proceed: CBT initialization failed "
                                 "for VM 'vm1' (/DC0/vm/vm1, moid vm-1): disk 2000 'Hard disk 1'")
    assert res["changed"] is True  # the reconfiguration happened
    assert res["temporary_snapshots"][0]["removed"] is True and vm.snapshots == []
    assert res["disks_without_change_id"] == [2000]


def test_snapshot_failure_is_init_snapshot_failed(vm):
    vm.fail_create = VmwareTaskFailed("creating failed", fault=vim.fault.SnapshotFault(msg="disk locked"))
    res = run({"name": "vm1"})
    assert res["error_kind"] == "init_snapshot_failed" and res["fault"] == "SnapshotFault"
    assert "disk locked" in res["msg"] and res["msg"].startswith("CBT enablement check failed")


def test_reset_changes_the_change_id_epoch(vm):
    run({"name": "vm1"})
    before = run({"name": "vm1"})["disks"][0]["change_id"]
    vm.calls[:] = []
    res = run({"name": "vm1", "state": "reset"})
    after = res["disks"][0]["change_id"]
    assert res["changed"] is True
    assert [c for c in mutating(vm.calls) if c[0] == "reconfigure"] == [("reconfigure", False), ("reconfigure", True)]
    assert res["disks"][0]["previous_change_id"] == before
    assert before.split("/")[0] != after.split("/")[0]


def test_reset_in_check_mode_changes_nothing(vm):
    run({"name": "vm1"})
    vm.calls[:] = []
    res = run({"name": "vm1", "state": "reset"}, check=True, diff=True)
    assert res["changed"] is True and mutating(vm.calls) == []
    assert res["diff"]["after"]["disks"]["2000 Hard disk 1"] == "(new changeId after the reset)"


def test_disabled_is_idempotent_and_uses_its_own_prefix(vm):
    run({"name": "vm1"})
    res = run({"name": "vm1", "state": "disabled"})
    assert res["changed"] is True and res["cbt_enabled_after"] is False
    assert run({"name": "vm1", "state": "disabled"})["changed"] is False
    vm.fail_create = VmwareTaskFailed("x", fault=vim.fault.SnapshotFault(msg="boom"))
    vm.cbt_on = True
    res = run({"name": "vm1", "state": "disabled"})
    assert res["msg"].startswith("CBT disable failed: ")


def test_stale_temporary_snapshots_are_removed_first_and_listed(vm):
    vm.cbt_on, vm.active, vm.seq = True, True, 3
    vm.add_snapshot("cbt-toolkit-init-20250101T000000Z-abcd")
    vm.add_snapshot("before-upgrade")
    check = run({"name": "vm1"}, check=True)
    assert check["changed"] is True and [s["name"] for s in check["stale_snapshots_removed"]] == [
        "cbt-toolkit-init-20250101T000000Z-abcd"]
    assert len(vm.snapshots) == 2
    res = run({"name": "vm1"})
    assert res["changed"] is True and res["actions"][0].startswith("remove stale temporary snapshot")
    assert [s["name"] for s in vm.snapshots] == ["before-upgrade"]
    assert run({"name": "vm1"})["changed"] is False


def test_stale_snapshots_kept_with_cleanup_false_give_a_warning(vm):
    vm.cbt_on, vm.active, vm.seq = True, True, 3
    vm.add_snapshot("cbt-toolkit-init-20250101T000000Z-abcd")
    res = run({"name": "vm1", "cleanup_stale_snapshots": False})
    assert res["changed"] is False and len(vm.snapshots) == 1
    assert any("temporary snapshot(s) from an earlier run" in w for w in res["warnings"])


def test_old_hardware_is_refused_even_in_check_mode(vm):
    vm.hw = "vmx-04"
    res = run({"name": "vm1"}, check=True)
    assert res["failed"] and res["error_kind"] == "unsupported" and "vmx-07" in res["msg"]


def test_a_template_with_cbt_set_up_needs_nothing_and_one_without_is_refused(vm):
    assert run({"name": "vm1"})["changed"] is True
    real_record = vm.record

    def as_template():
        record = real_record()
        record["props"]["config.template"] = True
        return record

    vm.record = as_template
    vm.calls[:] = []
    res = run({"name": "vm1"})
    assert res.get("failed") is not True and res["changed"] is False and mutating(vm.calls) == []
    vm.cbt_on = False
    res = run({"name": "vm1"})
    assert res["failed"] and res["error_kind"] == "unsupported" and "template" in res["msg"]


@pytest.mark.parametrize("args,words", [
    ({"name": "a", "uuid": "b"}, "mutually exclusive"),
    ({}, "one of the following is required: name, uuid, moid"),
    ({"name": "a", "state": "on"}, "value of state must be one of"),
])
def test_bad_arguments_fail_cleanly(vm, args, words):
    res = run(args)
    assert res["failed"] and words in res["msg"]


def test_invalid_numbers_fail_before_connecting(vm):
    res = run({"name": "vm1", "task_timeout": 0})
    assert res["error_kind"] == "invalid_argument" and vm.calls == []
    res = run({"name": "vm1", "snapshot_name_prefix": "  "})
    assert res["error_kind"] == "invalid_argument"


def test_missing_pyvmomi_is_reported_with_missing_required_lib(monkeypatch):
    monkeypatch.setattr(vmod, "HAS_PYVMOMI", False)
    monkeypatch.setattr(vmod, "PYVMOMI_IMP_ERR", "Traceback: No module named 'pyVmomi'")
    res = run({"name": "vm1"})
    assert res["failed"] and "pyVmomi" in res["msg"] and res["error_kind"] == "missing_library"


def test_password_is_no_log():
    spec = vmod.vmware_argument_spec()
    assert spec["password"]["no_log"] is True and spec["validate_certs"]["default"] is True
    assert spec["hostname"]["fallback"][1] == ["VMWARE_HOST"]
