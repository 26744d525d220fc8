# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VMware modules through real Ansible against plain upstream vcsim (govmomi simulator).

Plain vcsim implements reconfigure and snapshots but never assigns a disk changeId and has no
QueryChangedDiskAreas. These tests use it for what it can do: enabling/disabling CBT on a
powered-on VM, snapshots, status reporting, every connection and input error, the guarantee
that the temporary snapshot goes away when initialisation fails, and graceful handling of
MethodNotFound. CBT semantics proper are tested against cbtsim (test_vmware_on_cbtsim.py).
"""

import json

import pytest
from vmware_helpers import VCSIM_CHANGE_ID, assert_clean_failure, run_tasks

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def env(own_vcsim):
    return own_vcsim.env(validate_certs=True)


def test_info_reports_every_vm_in_one_run_with_the_appliance_fields(run_module, env, vsphere):
    res, run = run_module("vmware_cbt_info", {"include_disks": True}, env=env)
    assert res.get("failed") is not True, run
    names = sorted(v.name for v in vsphere.vms())
    assert sorted(v["name"] for v in res["vms"]) == names and res["count"] == len(names)
    vm0 = [v for v in res["vms"] if v["name"] == "DC0_H0_VM0"][0]
    real = vsphere.vm("DC0_H0_VM0")
    assert vm0["vm_name"] == "DC0_H0_VM0" and vm0["vm_path"] == vm0["path"] == "/DC0/vm/DC0_H0_VM0"
    assert vm0["power_state"] == vsphere.power_state(real) == "poweredOn"
    assert vm0["enabled"] == vm0["cbt_enabled"] == vsphere.cbt_enabled(real)
    assert vm0["instance_uuid"] == real.config.instanceUuid and vm0["bios_uuid"] == real.config.uuid
    assert vm0["hw_version"] == real.config.version and vm0["moid"] == real._moId
    disk = vm0["disks"][0]
    real_disk = vsphere.disks(real)[0]
    assert disk["key"] == real_disk.key and disk["file"] == real_disk.backing.fileName
    assert disk["capacity_bytes"] == real_disk.capacityInBytes and disk["eligible"] is True
    assert disk["controller_type"] == "scsi" and disk["device_node"].startswith("scsi")


def test_info_scopes_and_names(run_playbook, env, vsphere):
    (cluster, folder, names, moid, missing, nocluster, one), run = run_tasks(run_playbook, [
        ("vmware_cbt_info", {"cluster": "DC0_C0", "include_disks": False}),
        ("vmware_cbt_info", {"datacenter": "DC0", "folder": "vm"}),
        ("vmware_cbt_info", {"names": ["DC0_H0_VM1", "DC0_C0_RP0_VM0"]}),
        ("vmware_cbt_info", {"moid": vsphere.vm("DC0_H0_VM1")._moId}),
        ("vmware_cbt_info", {"names": ["DC0_H0_VM1", "no-such-vm"]}),
        ("vmware_cbt_info", {"cluster": "nope"}),
        ("vmware_cbt_info", {"name": "DC0_C0_RP0_VM1", "cluster": "DC0_C0"}),
    ], env=env)
    assert sorted(v["name"] for v in cluster["vms"]) == ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"], run
    assert "disks" not in cluster["vms"][0]
    assert folder["count"] == len(vsphere.vms())
    assert sorted(v["name"] for v in names["vms"]) == ["DC0_C0_RP0_VM0", "DC0_H0_VM1"]
    assert [v["name"] for v in moid["vms"]] == ["DC0_H0_VM1"]
    assert_clean_failure(missing, run, "not_found", ["'no-such-vm'"])
    assert_clean_failure(nocluster, run, "not_found", ["cluster 'nope' not found", "DC0_C0"])
    assert [v["vm_path"] for v in one["vms"]] == ["/DC0/vm/DC0_C0_RP0_VM1"]


def test_enable_on_a_powered_on_vm_check_mode_diff_and_idempotency(run_playbook, env, vsphere):
    vm = vsphere.vm("DC0_H0_VM1")
    assert vsphere.power_state(vm) == "poweredOn" and not vsphere.cbt_enabled(vm)
    args = {"name": "DC0_H0_VM1", "initialize": False}
    (check, first, second, off, off_again), run = run_tasks(run_playbook, [
        ("vmware_cbt", args, {"check_mode": True, "diff": True}),
        ("vmware_cbt", args, {"diff": True}),
        ("vmware_cbt", args),
        ("vmware_cbt", dict(args, state="disabled")),
        ("vmware_cbt", dict(args, state="disabled")),
    ], env=env)
    assert check["changed"] is True and check.get("failed") is not True, run
    assert check["cbt_enabled_before"] is False and check["cbt_enabled_after"] is True
    assert check["diff"]["before"]["cbt_enabled"] is False and check["diff"]["after"]["cbt_enabled"] is True
    # the real run after it still found CBT off: check mode changed nothing
    assert first["changed"] is True and first["cbt_enabled_before"] is False and first["cbt_enabled_after"] is True
    assert first["diff"]["after"]["cbt_enabled"] is True
    assert first["vm"]["power_state"] == "poweredOn" and first["vm"]["path"] == "/DC0/vm/DC0_H0_VM1"
    assert second["changed"] is False and second["actions"] == [] and second["cbt_enabled_before"] is True
    assert off["changed"] is True and off["cbt_enabled_after"] is False
    assert off_again["changed"] is False
    assert not vsphere.cbt_enabled(vsphere.vm("DC0_H0_VM1"))


def test_failed_initialisation_leaves_no_snapshot(run_module, env, vsphere):
    """vcsim never assigns a changeId, so initialisation must fail -- with its own message --
    and the temporary snapshot must be gone afterwards."""
    vm = vsphere.vm("DC0_C0_RP0_VM0")
    vsphere.snapshot(vm, "user-snapshot")  # a user's snapshot must survive
    res, run = run_module("vmware_cbt", {"name": "DC0_C0_RP0_VM0"}, env=env)
    assert_clean_failure(res, run, "no_change_id", [
        "CBT enablement check failed - migration cannot proceed: CBT initialization failed for VM 'DC0_C0_RP0_VM0'",
        "still without changeId after the stun cycle"])
    temp = res["temporary_snapshots"]
    assert len(temp) == 1 and temp[0]["removed"] is True and temp[0]["moid"]
    assert vsphere.snapshot_names(vsphere.vm("DC0_C0_RP0_VM0")) == ["user-snapshot"]
    assert res["changed"] is True  # CBT was switched on before the initialisation failed
    vsphere.remove_all_snapshots(vsphere.vm("DC0_C0_RP0_VM0"))


def test_enable_and_initialise_with_change_ids_then_idempotent(run_module, env, vsphere):
    """With a changeId placed in the disk backing (vcsim keeps it) the full flow succeeds, and
    the second run does nothing."""
    vm = vsphere.vm("DC0_C0_RP0_VM1")
    vsphere.set_change_id(vm, VCSIM_CHANGE_ID % 5)
    res, run = run_module("vmware_cbt", {"name": "DC0_C0_RP0_VM1"}, env=env, diff=True)
    assert res.get("failed") is not True and res["changed"] is True, run
    assert res["cbt_initialized"] is True and res["disks"][0]["change_id"] == VCSIM_CHANGE_ID % 5
    assert [a.split(" ")[0] for a in res["actions"]] == ["enable", "initialise"]
    assert res["temporary_snapshots"][0]["removed"] is True
    assert vsphere.snapshot_names(vsphere.vm("DC0_C0_RP0_VM1")) == []
    res, run = run_module("vmware_cbt", {"name": "DC0_C0_RP0_VM1"}, env=env)
    assert res["changed"] is False and res["cbt_initialized"] is True, run


def test_stale_temporary_snapshots_are_removed(run_module, env, vsphere):
    vm = vsphere.vm("DC0_C0_RP0_VM1")
    vsphere.snapshot(vm, "cbt-toolkit-init-20240101T000000Z-dead")
    vsphere.snapshot(vm, "keep-me")
    res, run = run_module("vmware_cbt", {"name": "DC0_C0_RP0_VM1"}, env=env, check=True)
    assert res["changed"] is True and len(vsphere.snapshot_names(vsphere.vm("DC0_C0_RP0_VM1"))) == 2, run
    res, run = run_module("vmware_cbt", {"name": "DC0_C0_RP0_VM1"}, env=env)
    assert res["changed"] is True, run
    assert [s["name"] for s in res["stale_snapshots_removed"]] == ["cbt-toolkit-init-20240101T000000Z-dead"]
    assert vsphere.snapshot_names(vsphere.vm("DC0_C0_RP0_VM1")) == ["keep-me"]
    vsphere.remove_all_snapshots(vsphere.vm("DC0_C0_RP0_VM1"))


def test_migration_snapshot_and_method_not_found_gives_full_sync(run_playbook, env, vsphere, tmp_path):
    vm = vsphere.vm("DC0_H0_VM0")
    vsphere.set_cbt(vm, True)
    vsphere.set_change_id(vm, VCSIM_CHANGE_ID % 9)
    key = vsphere.disks(vm)[0].key
    capacity = vsphere.disks(vm)[0].capacityInBytes
    out = tmp_path / "r1.extents"
    args = {"name": "DC0_H0_VM0", "snapshot_name": "round-1"}
    (check, created, again, changes, removed, removed_again), run = run_tasks(run_playbook, [
        ("vmware_migration_snapshot", args, {"check_mode": True}),
        ("vmware_migration_snapshot", args, {"diff": True}),
        ("vmware_migration_snapshot", args),
        ("vmware_cbt_changes", {"name": "DC0_H0_VM0", "snapshot": "round-1", "disk_key": key,
                                "change_id": VCSIM_CHANGE_ID % 2, "extent_file": str(out)}),
        ("vmware_migration_snapshot", dict(args, state="absent"), {"diff": True}),
        ("vmware_migration_snapshot", dict(args, state="absent")),
    ], env=env)
    assert check["changed"] is True and check["snapshot"]["moid"] is None, run
    assert created["changed"] is True and created["snapshot"]["name"] == "round-1"  # check mode created nothing
    assert created["change_ids"] == {str(key): VCSIM_CHANGE_ID % 9}
    assert created["diff"]["after"] == {"snapshot": "round-1"}
    assert again["changed"] is False and again["snapshot"]["moid"] == created["snapshot"]["moid"]

    assert changes.get("failed") is not True and changes["changed"] is False
    assert changes["full_sync_required"] is True and changes["fault"] == "MethodNotFound"
    assert "does not implement QueryChangedDiskAreas" in changes["reason"]
    assert changes["extents"] == [{"offset": 0, "length": capacity}] and changes["capacity"] == capacity
    lines = out.read_text().splitlines()
    assert lines[0] == "# cbt.toolkit extents v1" and "# full_sync_required=true" in lines
    assert lines[-1] == "0 %d" % capacity

    assert removed["changed"] is True and removed["diff"]["after"] == {"snapshot": None}
    assert removed_again["changed"] is False
    assert vsphere.snapshot_names(vsphere.vm("DC0_H0_VM0")) == []


def test_bad_input_gives_clear_errors_without_traceback(run_playbook, run_module, env, vsphere, own_vcsim):
    """Every case in one ansible-playbook run (one Ansible start-up instead of eleven)."""
    vsphere.clone_name_into_folder("DC0_H0_VM0", "duplicates")
    conn = {"hostname": own_vcsim.host, "port": own_vcsim.port, "username": own_vcsim.username,
            "password": own_vcsim.password, "ca_cert": str(own_vcsim.ca_file)}
    cases = [
        ("vmware_cbt", {"name": "no-such-vm"}, "not_found", ["VM 'no-such-vm' not found"]),
        ("vmware_cbt", {"name": "dc0_h0_vm0"}, "not_found", ["did you mean 'DC0_H0_VM0'"]),
        ("vmware_cbt", {"name": "DC0_H0_VM0"}, "ambiguous",
         ["ambiguous", "/DC0/vm/DC0_H0_VM0", "/DC0/vm/duplicates/DC0_H0_VM0"]),
        ("vmware_cbt", {"moid": "vm-99999"}, "not_found", ["moid 'vm-99999'"]),
        ("vmware_cbt", {"uuid": "00000000-0000-0000-0000-000000000000"}, "not_found", ["BIOS UUID"]),
        ("vmware_cbt", {"name": "DC0_H0_VM0", "folder": "/DC0/vm/missing"}, "not_found", ["folder"]),
        ("vmware_cbt", {"name": "DC0_H0_VM1", "password": "wrong-password"}, "login_failed",
         ["login to vCenter", "failed"]),
        ("vmware_cbt", {"name": "DC0_H0_VM1", "port": _closed_port()}, "unreachable", ["is unreachable", "refused"]),
        ("vmware_cbt", {"name": "DC0_H0_VM1", "ca_cert": None}, "tls_verification_failed",
         ["TLS verification", "validate_certs"]),
        ("vmware_cbt_changes", {"name": "DC0_H0_VM1", "snapshot": "x", "disk_key": 1, "change_id": "bogus/1"},
         "invalid_argument", ["16 hex bytes"]),
        ("vmware_migration_snapshot", {"name": "DC0_H0_VM0", "snapshot_name": "s"}, "ambiguous", ["ambiguous"]),
        ("vmware_cbt_info", {"name": "DC0_H0_VM0"}, "ambiguous", ["ambiguous"]),
    ]
    tasks = []
    for index, (module, args, _kind, _words) in enumerate(cases):
        task_args = dict(conn, **args)
        task_args = dict((k, v) for k, v in task_args.items() if v is not None)
        tasks.append({"name": "case %d" % index, "cbt.toolkit.%s" % module: task_args, "ignore_errors": True})
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    run = run_playbook(json.dumps(play) + "\n")
    results = run.task_results()
    assert len(results) == len(cases), run
    for (module, _args, kind, words), res in zip(cases, results):
        if module == "vmware_cbt":
            words = words + ["CBT enablement check failed - migration cannot proceed: "]
        assert_clean_failure(res, run, kind, words)
    text = run.stdout + run.stderr
    assert "wrong-password" not in text and own_vcsim.password not in text
    # the duplicate can be told apart by folder
    res, run = run_module("vmware_cbt_info", {"name": "DC0_H0_VM0", "folder": "/DC0/vm/duplicates"}, env=env)
    assert res["vms"][0]["path"] == "/DC0/vm/duplicates/DC0_H0_VM0", run
    res, run = run_module("vmware_cbt", {"name": "DC0_H0_VM0", "folder": "duplicates", "datacenter": "DC0",
                                         "initialize": False}, env=env, check=True)
    assert res["vm"]["path"] == "/DC0/vm/duplicates/DC0_H0_VM0", run


def test_bad_disk_key(run_module, env, vsphere):
    vm = vsphere.vm("DC0_H0_VM1")
    vsphere.snapshot(vm, "for-bad-key")
    res, run = run_module("vmware_cbt_changes", {"name": "DC0_H0_VM1", "snapshot": "for-bad-key", "disk_key": 31337,
                                                 "change_id": "*"}, env=env)
    assert_clean_failure(res, run, "not_found", ["no disk with key 31337", str(vsphere.disks(vm)[0].key)])
    vsphere.remove_all_snapshots(vsphere.vm("DC0_H0_VM1"))


def _closed_port():
    from testbed.core import free_port  # pylint: disable=import-outside-toplevel

    return free_port()


def test_fast_reader_gives_exactly_what_pyvmomi_gives(own_vcsim, vsphere):
    """vmware_cbt_info's fast RetrievePropertiesEx reader against pyVmomi's own parser, on the
    same simulator answer (both through module_utils, in-process)."""
    from pyVmomi import vim
    from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareClient
    from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_fastretrieve import retrieve_views
    from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import collect_vms, vm_facts

    vsphere.set_change_id(vsphere.vm("DC0_H0_VM1"), VCSIM_CHANGE_ID % 77)
    client = VmwareClient(own_vcsim.host, own_vcsim.username, own_vcsim.password, port=own_vcsim.port,
                          ca_cert=str(own_vcsim.ca_file)).connect()
    try:
        for disks in (True, False):
            fast = [vm_facts(r, include_disks=disks) for r in collect_vms(client, include_disks=disks, fast=True)]
            slow = [vm_facts(r, include_disks=disks) for r in collect_vms(client, include_disks=disks, fast=False)]
            assert fast == slow and len(fast) == len(vsphere.vms())
            if disks:
                assert any(d["change_id"] == VCSIM_CHANGE_ID % 77 for f in fast for d in f["disks"])
        paged = [vm_facts(r) for r in collect_vms(client, fast=True, page_size=2)]
        assert paged == [vm_facts(r) for r in collect_vms(client, fast=False)]  # continuation tokens
        # the pipelined pages themselves (collect_vms would hide a failure behind the pyVmomi path)
        view = client.container_view(client.content.rootFolder, [vim.VirtualMachine], True)
        try:
            rows = retrieve_views(client, [view], [("VirtualMachine", ["name"])], page_size=2)
        finally:
            client.destroy_view(view)
        assert sorted(props["name"] for _obj, props, _missing in rows) == sorted(vm.name for vm in vsphere.vms())
    finally:
        client.close()


def _vm_in(vsphere, folder, name):
    dc = [e for e in vsphere.content.rootFolder.childEntity if isinstance(e, vsphere.vim.Datacenter)][0]
    view = vsphere.content.viewManager.CreateContainerView(dc, [vsphere.vim.HostSystem], True)
    host = view.view[0]
    view.DestroyView()
    spec = vsphere.vim.vm.ConfigSpec(name=name, guestId="otherGuest", numCPUs=1, memoryMB=64,
                                     files=vsphere.vim.vm.FileInfo(vmPathName="[%s]" % host.datastore[0].name))
    return vsphere.wait(folder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host))


def test_folder_scopes_a_datacenter_inside_a_folder_and_prefers_direct_children(run_playbook, env, vsphere):
    """datacenter + folder for a datacenter that sits in a folder (/Region1/DCR/vm/apps); and a folder
    names the VM directly in it, even when a subfolder holds another VM of the same name."""
    region = vsphere.content.rootFolder.CreateFolder("Region1")
    region.CreateDatacenter("DCR").vmFolder.CreateFolder("apps")
    dc0 = [e for e in vsphere.content.rootFolder.childEntity if isinstance(e, vsphere.vim.Datacenter)][0]
    parent = dc0.vmFolder.CreateFolder("scope-parent")
    child = parent.CreateFolder("scope-child")
    _vm_in(vsphere, parent, "scopevm")
    _vm_in(vsphere, child, "scopevm")
    (short, absolute, in_region, direct, nested, everywhere), run = run_tasks(run_playbook, [
        ("vmware_cbt_info", {"datacenter": "DCR", "folder": "apps"}),
        ("vmware_cbt_info", {"datacenter": "DCR", "folder": "/DCR/vm/apps"}),
        ("vmware_cbt_info", {"folder": "/Region1/DCR/vm/apps"}),
        ("vmware_cbt_info", {"name": "scopevm", "folder": "/DC0/vm/scope-parent"}),
        ("vmware_cbt_info", {"name": "scopevm", "datacenter": "DC0", "folder": "scope-parent/scope-child"}),
        ("vmware_cbt_info", {"name": "scopevm"}),
    ], env=env)
    for res in (short, absolute, in_region):
        assert res.get("failed") is not True and res["count"] == 0, run
    assert [v["path"] for v in direct["vms"]] == ["/DC0/vm/scope-parent/scopevm"], run
    assert [v["path"] for v in nested["vms"]] == ["/DC0/vm/scope-parent/scope-child/scopevm"], run
    assert_clean_failure(everywhere, run, "ambiguous",
                         ["/DC0/vm/scope-parent/scopevm", "/DC0/vm/scope-parent/scope-child/scopevm"])
