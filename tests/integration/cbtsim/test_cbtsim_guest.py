# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbtsim's guest model, driven through pyVmomi: VMware Tools state reported consistently with the
power state, ShutdownGuest (refused without Tools, clean power-off after the guest's delay, never
for a hung guest), a hard power-off cancelling a pending guest shutdown, and quiesced snapshots
needing Tools.

Waiting for a guest shutdown polls the VM's power state with a generous bound (the simulator's
delay is a fraction of a second); no test asserts a duration.
"""

import time

import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from testbed.cbtsim import CbtSim, CbtSimError

MiB = 1 << 20
KEY = 2000
FAST = 0.2  # seconds between ShutdownGuest and poweredOff in these tests


@pytest.fixture(scope="module")
def sim():
    peer = CbtSim(name="guest", vms=1, disk_size=4 * MiB).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def si(sim):
    conn = sim.connect()
    yield conn
    Disconnect(conn)


_names = iter(range(10 ** 6))


def new_vm(sim, si, prefix, **kwargs):
    kwargs.setdefault("disks", [4 * MiB])
    info = sim.create_vm("%s-%d" % (prefix, next(_names)), **kwargs)
    return info, vim.VirtualMachine(info["moid"], si._stub)


def run(task):
    WaitForTask(task)
    return task.info.result


def reported(vm):
    """What a vSphere client reads: (runtime.powerState, toolsRunningStatus, toolsStatus, guestState),
    with the summary copy of the tools fields checked against guest.*"""
    guest, summary = vm.guest, vm.summary
    assert summary.guest.toolsRunningStatus == guest.toolsRunningStatus
    assert summary.guest.toolsStatus == guest.toolsStatus
    assert summary.runtime.powerState == vm.runtime.powerState
    return (vm.runtime.powerState, guest.toolsRunningStatus, guest.toolsStatus, guest.guestState)


def wait_powered_off(vm, bound=30.0):
    deadline = time.monotonic() + bound
    while vm.runtime.powerState != "poweredOff":
        assert time.monotonic() < deadline, "the VM did not power off within %s s" % bound
        time.sleep(0.05)


RUNNING = ("poweredOn", "guestToolsRunning", "toolsOk", "running")
OFF_WITH_TOOLS = ("poweredOff", "guestToolsNotRunning", "toolsNotRunning", "notRunning")


def test_tools_state_follows_the_power_state(sim, si):
    # the start-up VM and VMs made through the control API have Tools running by default
    startup = si.content.searchIndex.FindByInventoryPath("%s/vm/cbtsim-vm0" % sim.datacenter)
    assert reported(startup) == RUNNING
    info, vm = new_vm(sim, si, "tools")
    assert reported(vm) == RUNNING
    assert info["guest"]["tools"] == "running" and info["guest"]["guest_state"] == "running"
    assert info["guest"]["tools_running_status"] == "guestToolsRunning"
    assert vm.guest.toolsVersionStatus2 == "guestToolsCurrent"

    run(vm.PowerOffVM_Task())
    assert reported(vm) == OFF_WITH_TOOLS
    state = sim.vm(info["moid"])["guest"]
    assert state["last_power_off"] == "power_off" and state["guest_shutdowns"] == 0
    run(vm.PowerOnVM_Task())
    assert reported(vm) == RUNNING

    _unused, stopped = new_vm(sim, si, "notools", guest={"tools": "not_running"})
    assert reported(stopped) == ("poweredOn", "guestToolsNotRunning", "toolsNotRunning", "notRunning")
    _unused, bare = new_vm(sim, si, "bare", guest={"tools": "not_installed"})
    assert reported(bare) == ("poweredOn", "guestToolsNotRunning", "toolsNotInstalled", "notRunning")
    assert bare.guest.toolsVersionStatus2 == "guestToolsNotInstalled"
    _unused, off = new_vm(sim, si, "created-off", power_state="poweredOff")
    assert reported(off) == OFF_WITH_TOOLS
    run(off.PowerOnVM_Task())
    assert reported(off) == RUNNING

    # the setting changes at run time and is reported at once
    after = sim.guest(info["moid"], tools="not_running")
    assert reported(vm)[1:] == ("guestToolsNotRunning", "toolsNotRunning", "notRunning")
    assert after["guest"]["tools"] == "not_running"
    sim.guest(info["moid"], tools="running")
    assert reported(vm) == RUNNING


def test_a_vm_created_through_soap_has_no_tools(sim, si):
    dc = si.content.rootFolder.childEntity[0]
    cluster = dc.hostFolder.childEntity[0]
    spec = vim.vm.ConfigSpec(name="soap-created-%d" % next(_names), guestId="otherGuest64", numCPUs=1, memoryMB=128,
                             files=vim.vm.FileInfo(vmPathName="[%s]" % sim.datastore))
    vm = run(dc.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool))
    assert vm.guest.toolsStatus == "toolsNotInstalled"
    run(vm.PowerOnVM_Task())
    assert reported(vm) == ("poweredOn", "guestToolsNotRunning", "toolsNotInstalled", "notRunning")
    with pytest.raises(vim.fault.ToolsUnavailable):
        vm.ShutdownGuest()
    assert sim.vm(vm._moId)["guest"]["tools"] == "not_installed"


def test_guest_shutdown_is_a_clean_power_off(sim, si):
    info, vm = new_vm(sim, si, "clean", cbt_enabled=True, guest={"shutdown_seconds": FAST})
    moid = info["moid"]
    uuid_before = sim.disk(moid, KEY)["ctk_uuid"]
    snap = run(vm.CreateSnapshot_Task("base", "", False, False))
    cid = [d for d in snap.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)][0].backing.changeId
    sim.write(moid, KEY, MiB, 8192, seed=3)

    assert vm.ShutdownGuest() is None, "ShutdownGuest returns at once, without a task"
    state = sim.vm(moid)   # on its way down, or already down if this process was slow to ask
    assert state["guest"]["shutting_down"] is True or state["guest"]["last_power_off"] == "guest_shutdown"
    wait_powered_off(vm)
    assert reported(vm) == OFF_WITH_TOOLS
    state = sim.vm(moid)
    assert state["guest"]["last_power_off"] == "guest_shutdown" and state["guest"]["guest_shutdowns"] == 1
    assert state["guest"]["shutting_down"] is False
    # change tracking survives a clean shutdown: same UUID, the old change ID still answers
    assert state["disks"][0]["ctk_uuid"] == uuid_before
    info2 = vm.QueryChangedDiskAreas(snapshot=None, deviceKey=KEY, startOffset=0, changeId=cid)
    assert [(a.start, a.length) for a in info2.changedArea] == [(MiB, 64 * 1024)]
    with pytest.raises(vim.fault.InvalidPowerState):
        vm.ShutdownGuest()
    run(snap.RemoveSnapshot_Task(removeChildren=False))


def test_shutdown_is_refused_without_running_tools(sim, si):
    for tools in ("not_running", "not_installed"):
        info, vm = new_vm(sim, si, "refused", guest={"tools": tools})
        with pytest.raises(vim.fault.ToolsUnavailable) as exc:
            vm.ShutdownGuest()
        assert "VMware Tools is not running" in exc.value.msg
        assert sim.vm(info["moid"])["power_state"] == "poweredOn"
        assert sim.vm(info["moid"])["guest"]["shutting_down"] is False
        # quiescing a snapshot needs Tools too; an unquiesced snapshot does not
        task = vm.CreateSnapshot_Task("q", "", False, True)
        with pytest.raises(vim.fault.ToolsUnavailable):
            WaitForTask(task)
        assert vm.snapshot is None
        run(vm.CreateSnapshot_Task("plain", "", False, False)).RemoveSnapshot_Task(removeChildren=False)
    _unused, ok = new_vm(sim, si, "quiesce-ok")
    snap = run(ok.CreateSnapshot_Task("q", "", False, True))
    run(snap.RemoveSnapshot_Task(removeChildren=False))


def test_hung_guest_never_powers_off_until_a_hard_power_off(sim, si):
    info, vm = new_vm(sim, si, "hung", cbt_enabled=True, guest={"hung": True, "shutdown_seconds": FAST})
    moid = info["moid"]
    uuid_before = sim.disk(moid, KEY)["ctk_uuid"]
    assert vm.ShutdownGuest() is None, "a hung guest still accepts the request"
    time.sleep(FAST * 5)
    assert reported(vm)[0] == "poweredOn" and vm.guest.guestState == "shuttingDown"
    vm.ShutdownGuest()   # asking again changes nothing
    run(vm.PowerOffVM_Task())
    assert reported(vm) == OFF_WITH_TOOLS
    state = sim.vm(moid)
    assert state["guest"]["last_power_off"] == "power_off" and state["guest"]["guest_shutdowns"] == 0
    assert state["disks"][0]["ctk_uuid"] == uuid_before, "cbtsim keeps change tracking across a hard power-off"

    # the guest recovers while a shutdown is pending: the shutdown then completes
    run(vm.PowerOnVM_Task())
    vm.ShutdownGuest()
    assert sim.vm(moid)["guest"]["shutting_down"] is True
    sim.guest(moid, hung=False)
    wait_powered_off(vm)
    assert sim.vm(moid)["guest"]["last_power_off"] == "guest_shutdown"


def test_a_hard_power_off_cancels_a_pending_guest_shutdown(sim, si):
    info, vm = new_vm(sim, si, "cancel", guest={"shutdown_seconds": 1.0})
    vm.ShutdownGuest()
    run(vm.PowerOffVM_Task())
    run(vm.PowerOnVM_Task())
    time.sleep(2.0)   # well past the guest's delay: the cancelled shutdown must not fire
    assert reported(vm) == RUNNING
    assert sim.vm(info["moid"])["guest"]["guest_shutdowns"] == 0


def test_guest_settings_are_validated(sim, si):
    info, _unused = new_vm(sim, si, "api")
    path = "/vms/%s/guest" % info["moid"]
    for body in ({"tools": "maybe"}, {"shutdown_seconds": -1}, {"hung": "yes"}, {"colour": "red"}):
        with pytest.raises(CbtSimError) as exc:
            sim._request("POST", path, body)
        assert exc.value.status == 400, body
    with pytest.raises(CbtSimError) as exc:
        sim.guest("vm-999999", tools="running")
    assert exc.value.status == 404
    with pytest.raises(CbtSimError) as exc:
        sim.create_vm("badguest", disks=[MiB], guest={"tools": "sometimes"})
    assert exc.value.status == 400
    # numbers may come as strings (Ansible's uri module)
    assert sim._request("POST", path, {"shutdown_seconds": "2.5"})["guest"]["shutdown_seconds"] == 2.5
