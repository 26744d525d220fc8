# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.vmware_cbt_info: selection by name / names / scope from one retrieval, the
appliance's fields, summary counts, clear errors."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from pyVmomi import vim

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_module as vmod
from ansible_collections.cbt.toolkit.plugins.modules import vmware_cbt_info as mod
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import run_module

CID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/4"


def record(name, path, cbt=False, cid=None, moid=None):
    disk = vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInBytes=1 << 30,
                                     backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                                         fileName="[ds] %s.vmdk" % name, diskMode="persistent", changeId=cid))
    return {"ref": None, "moid": moid or "vm-%s" % name, "path": path, "missing": [],
            "props": {"name": name, "config.changeTrackingEnabled": cbt, "runtime.powerState": "poweredOff",
                      "capability.changeTrackingSupported": name != "old",
                      "config.hardware.device": [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0), disk]}}


@pytest.fixture
def inventory(monkeypatch):
    state = {"records": [
        record("a", "/DC0/vm/a", cbt=True, cid=CID),
        record("b", "/DC0/vm/b", cbt=True),
        record("dup", "/DC0/vm/x/dup", moid="vm-10"),
        record("dup", "/DC0/vm/y/dup", moid="vm-11"),
        record("old", "/DC0/vm/old"),
    ], "collect_calls": []}

    def collect(client, container=None, refs=None, include_disks=True, page_size=None):
        state["collect_calls"].append((container, refs, include_disks))
        return [dict(r) for r in state["records"]]

    monkeypatch.setattr(vmod.VmwareModule, "connect", lambda self: setattr(self, "client", object()))
    monkeypatch.setattr(vmod.VmwareModule, "close", lambda self: None)
    monkeypatch.setattr(mod, "collect_vms", collect)
    monkeypatch.setattr(mod, "scope_container", lambda client, **kw: ("root", "the whole inventory"))

    def find_vm(client, **kw):
        state["find_calls"].append(kw)
        if kw.get("name") == "dup":
            from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareAmbiguous
            raise VmwareAmbiguous("VM name 'dup' is ambiguous in the whole inventory: 2 VMs match: /DC0/vm/x/dup "
                                  "(moid vm-10); /DC0/vm/y/dup (moid vm-11)",
                                  matches=[{"moid": "vm-10"}, {"moid": "vm-11"}])
        return "ref-%s" % (kw.get("name") or kw.get("uuid"))

    state["find_calls"] = []
    monkeypatch.setattr(mod, "find_vm", find_vm)
    return state


def run(args):
    return run_module(mod, dict({"hostname": "h", "username": "u", "password": "p"}, **args))


def test_all_vms_with_the_appliance_fields_and_summary(inventory):
    res = run({})
    assert res["changed"] is False and res["count"] == 5
    a = res["vms"][0]
    assert a["enabled"] is True and a["vm_name"] == "a" and a["vm_path"] == "/DC0/vm/a"
    assert a["power_state"] == "poweredOff" and a["cbt_initialized"] is True
    assert res["vms"][1]["cbt_initialized"] is False  # CBT on, no changeId
    assert res["summary"] == {"cbt_enabled": 2, "cbt_initialized": 1, "not_supported": 1, "inaccessible": 0}
    assert len(inventory["collect_calls"]) == 1  # one retrieval


def test_one_name_is_looked_up_then_read_alone_and_a_list_of_names(inventory):
    run({"name": "b", "cluster": "C1"})
    assert inventory["find_calls"][-1]["name"] == "b" and inventory["find_calls"][-1]["cluster"] == "C1"
    assert inventory["collect_calls"][-1][1] == ["ref-b"]  # only that VM's record is read
    res = run({"names": ["old", "a", "dup"]})
    assert sorted(v["moid"] for v in res["vms"]) == ["vm-10", "vm-11", "vm-a", "vm-old"]
    assert len(inventory["collect_calls"]) == 2


def test_ambiguous_single_name_lists_the_matches(inventory):
    res = run({"name": "dup"})
    assert res["failed"] and res["error_kind"] == "ambiguous"
    assert "/DC0/vm/x/dup (moid vm-10)" in res["msg"] and "/DC0/vm/y/dup (moid vm-11)" in res["msg"]
    assert [m["moid"] for m in res["matches"]] == ["vm-10", "vm-11"]


def test_unknown_names_are_all_named(inventory):
    res = run({"names": ["a", "zz", "yy"]})
    assert res["failed"] and res["error_kind"] == "not_found" and "'zz', 'yy'" in res["msg"]
    assert res["missing"] == ["zz", "yy"]


def test_uuid_reads_exactly_that_vm(inventory):
    run({"uuid": "4216a9b2"})
    assert inventory["collect_calls"][-1][1] == ["ref-4216a9b2"]


def test_without_disks(inventory):
    res = run({"include_disks": False})
    assert "disks" not in res["vms"][0] and "cbt_initialized" not in res["summary"]
    assert inventory["collect_calls"][-1][2] is False


@pytest.mark.parametrize("args", [{"name": "a", "names": ["b"]}, {"folder": "f", "cluster": "c"},
                                  {"moid": "vm-1", "folder": "f"}])
def test_conflicting_selectors_fail(inventory, args):
    res = run(args)
    assert res["failed"] and "mutually exclusive" in res["msg"]
