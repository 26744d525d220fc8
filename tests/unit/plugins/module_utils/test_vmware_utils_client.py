# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere client: error classification, re-login on NotAuthenticated, PropertyCollector-based
task waiting (no sleeps), inventory path helpers."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import socket

import pytest
from pyVmomi import vim, vmodl

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_client as vc
from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_inventory as inv


NOW = datetime.datetime(2025, 8, 12, 10, 0, 0)


class SessionManager(object):
    def __init__(self):
        self.logins = 0
        self.logouts = 0

    def Login(self, user, pwd, locale=None):
        self.logins += 1

    def Logout(self):
        self.logouts += 1


class Content(object):
    def __init__(self, collector=None):
        self.sessionManager = SessionManager()
        self.propertyCollector = collector


def raiser(exc):
    def call():
        raise exc
    return call


def client(collector=None):
    c = vc.VmwareClient("127.0.0.1", "admin", "secret")
    c.content = Content(collector)
    return c


def test_invoke_logs_in_again_after_not_authenticated_and_retries():
    c = client()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise vim.fault.NotAuthenticated(msg="session expired")
        return "ok"

    assert c.invoke("reading", flaky) == "ok"
    assert c.content.sessionManager.logins == 2 and c.relogins == 2


def test_invoke_gives_up_after_repeated_not_authenticated():
    c = client()

    def always():
        raise vim.fault.NotAuthenticated(msg="session expired")

    with pytest.raises(vc.VmwareLoginFailed) as err:
        c.invoke("reading the VM", always)
    assert "kept expiring while reading the VM" in err.value.msg


def test_no_permission_names_the_privilege():
    c = client()
    fault = vim.fault.NoPermission(privilegeId="VirtualMachine.Config.ChangeTracking", object=vim.VirtualMachine("vm-7"),
                                   msg="Permission to perform this operation was denied.")
    with pytest.raises(vc.VmwarePermissionDenied) as err:
        c.invoke("reconfiguring VM 'a'", raiser(fault))
    assert err.value.privileges == ["VirtualMachine.Config.ChangeTracking"]
    assert "'VirtualMachine.Config.ChangeTracking'" in err.value.msg and "vm-7" in err.value.msg
    assert err.value.kind == "permission_denied"


def test_no_permission_names_the_privilege_ids_of_missing_privileges():
    # vSphere 7.0.3+: NoPermission.missingPrivileges[] are EntityPrivileges with privilegeIds
    c = client()
    fault = vim.fault.NoPermission(msg="denied", missingPrivileges=[
        vim.fault.NoPermission.EntityPrivileges(entity=vim.VirtualMachine("vm-7"), privilegeIds=[
            "VirtualMachine.State.CreateSnapshot", "VirtualMachine.State.RemoveSnapshot"]),
        vim.fault.NoPermission.EntityPrivileges(entity=vim.Folder("group-v3"), privilegeIds=[
            "VirtualMachine.State.CreateSnapshot"])])
    with pytest.raises(vc.VmwarePermissionDenied) as err:
        c.invoke("creating a snapshot", raiser(fault), expected_privilege="System.Read")
    assert err.value.privileges == ["VirtualMachine.State.CreateSnapshot", "VirtualMachine.State.RemoveSnapshot"]
    assert "'VirtualMachine.State.RemoveSnapshot'" in err.value.msg and "System.Read" not in err.value.msg


def test_missing_privileges_entries_with_a_privileges_field_still_count():
    class Entry(object):
        privileges = ["Datastore.Browse"]

    class Fault(object):
        privilegeId = None
        missingPrivileges = [Entry()]

    assert vc._privileges_of(Fault()) == ["Datastore.Browse"]


def test_no_permission_without_privilege_uses_the_expected_one():
    c = client()
    fault = vim.fault.NoPermission(msg="denied")
    with pytest.raises(vc.VmwarePermissionDenied) as err:
        c.invoke("creating a snapshot", raiser(fault),
                 expected_privilege="VirtualMachine.State.CreateSnapshot")
    assert err.value.privileges == ["VirtualMachine.State.CreateSnapshot"]


def test_other_faults_become_api_errors_keeping_the_fault():
    c = client()
    fault = vim.fault.FileFault(file="x", msg="Error caused by file x")
    with pytest.raises(vc.VmwareApiError) as err:
        c.invoke("querying", raiser(fault))
    assert err.value.fault is fault and err.value.fault_name == "FileFault"
    assert "querying failed: FileFault: Error caused by file x" == err.value.msg


def test_fault_helpers():
    nf = vmodl.fault.MethodNotFound(method="QueryChangedDiskAreas", msg="vm-1 does not implement: QueryChangedDiskAreas")
    assert vc.fault_name(nf) == "MethodNotFound"
    assert vc.is_fault(nf, "InvalidRequest")  # base class
    assert vc.is_fault(vim.fault.NotAuthenticated(), "NoPermission")
    assert not vc.is_fault(ValueError("x"), "NoPermission")
    assert "does not implement" in vc.fault_text(nf)


# -- task waiting ----------------------------------------------------------------------------

class Collector(object):
    """A PropertyCollector answering WaitForUpdatesEx with scripted task states."""

    def __init__(self, states, fail_create=None, not_auth_once=False):
        self.states = list(states)
        self.fail_create = fail_create
        self.not_auth_once = not_auth_once
        self.waits = []
        self.destroyed = 0
        self.created = 0

    def CreatePropertyCollector(self):
        if self.fail_create is not None:
            raise self.fail_create
        self.created += 1
        return self

    def CreateFilter(self, spec, partial):
        assert spec.propSet[0].pathSet == ["info"]
        return object()

    def WaitForUpdatesEx(self, version, options):
        self.waits.append((version, options.maxWaitSeconds))
        if self.not_auth_once:
            self.not_auth_once = False
            raise vim.fault.NotAuthenticated(msg="expired")
        if not self.states:
            return None  # the server's maxWaitSeconds elapsed without a change
        state, error = self.states.pop(0)
        info = vim.TaskInfo(key="task-1", task=vim.Task("task-1"), state=state, error=error,
                            cancelable=False, cancelled=False, descriptionId="x", queueTime=NOW)
        change = vmodl.query.PropertyCollector.Change(name="info", op="assign", val=info)
        return vmodl.query.PropertyCollector.UpdateSet(version=str(len(self.waits)), filterSet=[
            vmodl.query.PropertyCollector.FilterUpdate(objectSet=[
                vmodl.query.PropertyCollector.ObjectUpdate(kind="modify", obj=vim.Task("task-1"), changeSet=[change])])])

    def DestroyPropertyCollector(self):
        self.destroyed += 1


def test_wait_task_follows_updates_without_sleeping(monkeypatch):
    monkeypatch.setattr(vc.time, "sleep", lambda s: pytest.fail("wait_task must not sleep"))
    coll = Collector([("running", None), ("running", None), ("success", None)])
    info = client(coll).wait_task(vim.Task("task-1"), "creating a snapshot", timeout=30)
    assert str(info.state) == "success"
    assert [w[0] for w in coll.waits] == ["", "1", "2"]  # versions chain
    assert coll.destroyed == 1


def test_wait_task_error_raises_task_failed_with_the_fault_text():
    fault = vim.fault.SnapshotFault(msg="An error occurred while saving the snapshot")
    coll = Collector([("error", fault)])
    with pytest.raises(vc.VmwareTaskFailed) as err:
        client(coll).wait_task(vim.Task("task-1"), "creating snapshot 's1'", timeout=30)
    assert err.value.fault is fault and "creating snapshot 's1' failed: " in err.value.msg
    assert "saving the snapshot" in err.value.msg


def test_wait_task_no_permission_error_is_permission_denied():
    fault = vim.fault.NoPermission(privilegeId="VirtualMachine.State.RemoveSnapshot", msg="denied")
    with pytest.raises(vc.VmwarePermissionDenied) as err:
        client(Collector([("error", fault)])).wait_task(vim.Task("task-1"), "removing", timeout=30)
    assert err.value.privileges == ["VirtualMachine.State.RemoveSnapshot"]


def test_wait_task_times_out_with_the_task_state(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(vc.time, "monotonic", lambda: clock[0])
    coll = Collector([("running", None)])
    original = coll.WaitForUpdatesEx

    def advancing(version, options):
        clock[0] += options.maxWaitSeconds
        return original(version, options)

    coll.WaitForUpdatesEx = advancing
    task = vim.Task("task-1")
    with pytest.raises(vc.VmwareTaskTimeout) as err:
        client(coll).wait_task(task, "consolidating", timeout=5)
    assert "within 5 s" in err.value.msg and "task-1" in err.value.msg and "running" in err.value.msg
    assert coll.destroyed == 1
    assert vc.unfinished_task(err.value) is task  # the task may still finish: the caller can settle it


def test_an_interrupted_or_broken_wait_carries_the_task():
    task = vim.Task("task-1")

    def interrupted(version, options):
        raise KeyboardInterrupt()

    coll = Collector([])
    coll.WaitForUpdatesEx = interrupted
    with pytest.raises(KeyboardInterrupt) as err:
        client(coll).wait_task(task, "creating a snapshot", timeout=30)
    assert vc.unfinished_task(err.value) is task and coll.destroyed == 1

    def broken(version, options):
        raise socket.timeout("timed out")

    coll = Collector([])
    coll.WaitForUpdatesEx = broken
    with pytest.raises(vc.VmwareUnreachable) as err:
        client(coll).wait_task(task, "creating a snapshot", timeout=30)
    assert vc.unfinished_task(err.value) is task


def test_a_task_that_ended_in_an_error_is_not_unfinished():
    fault = vim.fault.SnapshotFault(msg="An error occurred while saving the snapshot")
    with pytest.raises(vc.VmwareTaskFailed) as err:
        client(Collector([("error", fault)])).wait_task(vim.Task("task-1"), "creating snapshot 's1'", timeout=30)
    assert vc.unfinished_task(err.value) is None
    assert vc.unfinished_task(KeyboardInterrupt()) is None


def test_wait_task_logs_in_again_and_recreates_its_collector():
    coll = Collector([("success", None)], not_auth_once=True)
    c = client(coll)
    info = c.wait_task(vim.Task("task-1"), "reconfiguring", timeout=30)
    assert str(info.state) == "success" and c.relogins == 1 and coll.created == 2 and coll.destroyed == 2


def test_wait_task_falls_back_to_polling_without_create_property_collector(monkeypatch):
    sleeps = []
    monkeypatch.setattr(vc.time, "sleep", sleeps.append)
    coll = Collector([], fail_create=vmodl.fault.MethodNotFound(method="CreatePropertyCollector"))
    states = iter(["queued", "running", "success"])

    class Task(object):
        _moId = "task-9"

        @property
        def info(self):
            return vim.TaskInfo(key="task-9", task=vim.Task("task-9"), state=next(states), cancelable=False,
                                cancelled=False, descriptionId="x", queueTime=NOW)

    info = client(coll).wait_task(Task(), "x", timeout=30)
    assert str(info.state) == "success"
    assert len(sleeps) == 2 and sleeps[0] < 0.1  # short back-off, not a fixed multi-second sleep


# -- connection --------------------------------------------------------------------------------

def closed_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_to_a_closed_port_is_unreachable_naming_host_and_port():
    port = closed_port()
    with pytest.raises(vc.VmwareUnreachable) as err:
        vc.VmwareClient("127.0.0.1", "u", "p", port=port, connect_timeout=2).connect()
    assert "vCenter 127.0.0.1:%d is unreachable" % port in err.value.msg
    assert "refused" in err.value.msg.lower()


@pytest.mark.parametrize("kwargs,kind,words", [
    (dict(hostname=None, username="u", password="p"), "unreachable", "VMWARE_HOST"),
    (dict(hostname="127.0.0.1", username=None, password="p"), "login_failed", "VMWARE_USER"),
    (dict(hostname="127.0.0.1", username="u", password=None), "login_failed", "VMWARE_PASSWORD"),
])
def test_missing_connection_options_are_named(kwargs, kind, words):
    with pytest.raises(vc.VmwareError) as err:
        vc.VmwareClient(**kwargs).connect()
    assert err.value.kind == kind and words in err.value.msg


def test_unreadable_ca_cert_is_a_tls_error(tmp_path):
    c = vc.VmwareClient("127.0.0.1", "u", "p", ca_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(vc.VmwareTlsError) as err:
        c._ssl_context()
    assert "missing.pem" in err.value.msg


# -- inventory helpers ---------------------------------------------------------------------

@pytest.mark.parametrize("folder,dc,expected", [
    ("/DC0/vm/prod", None, "DC0/vm/prod"),
    ("DC0/vm/prod/", None, "DC0/vm/prod"),
    ("prod", "DC0", "DC0/vm/prod"),
    ("vm/prod", "DC0", "DC0/vm/prod"),
    ("/vm/prod", "DC0", "DC0/vm/prod"),
    ("/DC0/vm/prod", "DC0", "DC0/vm/prod"),
    ("/", "DC0", "DC0/vm"),
    # a datacenter inside a folder, given as its inventory path
    ("apps", "Region1/DC0", "Region1/DC0/vm/apps"),
    ("vm/apps", "Region1/DC0", "Region1/DC0/vm/apps"),
    ("/DC0/vm/apps", "Region1/DC0", "Region1/DC0/vm/apps"),
    ("/Region1/DC0/vm/apps", "Region1/DC0", "Region1/DC0/vm/apps"),
])
def test_normalize_folder(folder, dc, expected):
    assert inv.normalize_folder(folder, dc) == expected


def test_entity_tree_builds_inventory_paths_including_vapps():
    tree = inv.EntityTree("group-d1")
    tree.add(vim.Datacenter("datacenter-2"), {"name": "DC0", "parent": vim.Folder("group-d1")})
    tree.add(vim.Folder("group-v3"), {"name": "vm", "parent": vim.Datacenter("datacenter-2")})
    tree.add(vim.Folder("group-v9"), {"name": "prod", "parent": vim.Folder("group-v3")})
    tree.add(vim.VirtualApp("resgroup-v5"), {"name": "app", "parentFolder": vim.Folder("group-v9")})
    assert tree.path_of("web", "group-v9") == "/DC0/vm/prod/web"
    assert tree.path_of("db", "resgroup-v5") == "/DC0/vm/prod/app/db"
    assert inv.hw_version_number("vmx-13") == 13 and inv.hw_version_number(None) is None


def test_vm_facts_reports_initialisation_only_when_every_eligible_disk_has_a_change_id():
    devices = [vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0)]
    for key, cid, mode in ((2000, "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/4", "persistent"),
                           (2001, None, "independent_persistent")):
        devices.append(vim.vm.device.VirtualDisk(
            key=key, controllerKey=1000, unitNumber=key - 2000, capacityInBytes=1,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="f%d" % key, diskMode=mode, changeId=cid)))
    record = {"moid": "vm-1", "path": "/DC0/vm/a", "missing": [],
              "props": {"name": "a", "config.changeTrackingEnabled": True, "config.hardware.device": devices,
                        "runtime.powerState": vim.VirtualMachine.PowerState.poweredOn}}
    facts = inv.vm_facts(record)
    assert facts["cbt_initialized"] is True and facts["power_state"] == "poweredOn"
    assert [d["eligible"] for d in facts["disks"]] == [True, False]
    record["props"]["config.changeTrackingEnabled"] = False
    assert inv.vm_facts(record)["cbt_initialized"] is False
