# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures and pyVmomi helpers for the VMware module tests.

Each test module gets its own simulator, so VM changes made here touch no other test area.
The helpers talk to the simulator directly with pyVmomi to set up situations and to check what
the modules did (independently of the modules' own code).
"""

import ssl
import time

import pytest


@pytest.fixture(scope="module")
def own_vcsim():
    from testbed.vcsim import Vcsim  # pylint: disable=import-outside-toplevel

    sim = Vcsim(name="vmware-modules").start()
    yield sim
    sim.stop()


class Vsphere(object):
    """Direct pyVmomi access to a simulator for test setup and independent checks."""

    def __init__(self, host, port, username, password, ca_file=None):
        from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel

        ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl._create_unverified_context()
        self.si = SmartConnect(host=host, port=port, user=username, pwd=password, sslContext=ctx)
        self.content = self.si.RetrieveContent()

    def close(self):
        try:
            self.content.sessionManager.Logout()
        except Exception:  # pylint: disable=broad-except
            pass

    @property
    def vim(self):
        from pyVmomi import vim  # pylint: disable=import-outside-toplevel

        return vim

    def vms(self):
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [self.vim.VirtualMachine], True)
        try:
            return list(view.view)
        finally:
            view.DestroyView()

    def vm(self, name):
        found = [v for v in self.vms() if v.name == name]
        assert len(found) == 1, "expected one VM named %s, found %d" % (name, len(found))
        return found[0]

    def wait(self, task, timeout=120):
        """Poll the task's state. (pyVim's WaitForTask reads ``info.name.info.name`` while a task runs, and
        plain vcsim reports method names pyVmomi does not know there, so it fails on a task seen running.)"""
        deadline = time.monotonic() + timeout
        while True:
            info = task.info
            if info.state == "success":
                return info.result
            if info.state == "error":
                raise info.error
            assert time.monotonic() < deadline, "task %s still %s after %d s" % (task, info.state, timeout)
            time.sleep(0.05)

    def prop(self, obj, path):
        """One property by explicit path (None when unset). Whole ``runtime``/``summary`` are
        avoided: pyVmomi 9 cannot parse the simulator's empty faultToleranceState."""
        from pyVmomi import vmodl  # pylint: disable=import-outside-toplevel

        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=obj)], propSet=[pc.PropertySpec(type=type(obj), pathSet=[path])])
        result = self.content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        for content in (result.objects if result else []):
            for p in content.propSet or []:
                return p.val
        return None

    def power_state(self, vm):
        return str(self.prop(vm, "runtime.powerState"))

    def cbt_enabled(self, vm):
        return bool(self.prop(vm, "config.changeTrackingEnabled"))

    def snapshot_names(self, vm):
        names = []

        def walk(nodes):
            for node in nodes or []:
                names.append(node.name)
                walk(node.childSnapshotList)

        snap = self.prop(vm, "snapshot")
        walk(snap.rootSnapshotList if snap else [])
        return names

    def disks(self, vm):
        return [d for d in vm.config.hardware.device if isinstance(d, self.vim.vm.device.VirtualDisk)]

    def set_change_id(self, vm, change_id):
        """Put a changeId into every disk backing (plain vcsim keeps a client-sent backing as is;
        real vCenter computes it itself): exercises the 'changeId present' paths on plain vcsim."""
        spec = self.vim.vm.ConfigSpec(deviceChange=[])
        for disk in self.disks(vm):
            disk.backing.changeId = change_id
            spec.deviceChange.append(self.vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk))
        self.wait(vm.ReconfigVM_Task(spec))

    def set_cbt(self, vm, enabled):
        self.wait(vm.ReconfigVM_Task(self.vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))

    def snapshot(self, vm, name):
        return self.wait(vm.CreateSnapshot_Task(name=name, description="test", memory=False, quiesce=False))

    def remove_all_snapshots(self, vm):
        if self.prop(vm, "snapshot") is not None:
            self.wait(vm.RemoveAllSnapshots_Task())

    def clone_name_into_folder(self, name, folder_name):
        """Create another VM called ``name`` in a new folder (for ambiguous-name tests)."""
        dc = [e for e in self.content.rootFolder.childEntity if isinstance(e, self.vim.Datacenter)][0]
        folder = [f for f in dc.vmFolder.childEntity if isinstance(f, self.vim.Folder) and f.name == folder_name]
        folder = folder[0] if folder else dc.vmFolder.CreateFolder(folder_name)
        host_view = self.content.viewManager.CreateContainerView(dc, [self.vim.HostSystem], True)
        host = host_view.view[0]
        host_view.DestroyView()
        pool = host.parent.resourcePool
        ds = host.datastore[0]
        spec = self.vim.vm.ConfigSpec(name=name, guestId="otherGuest", numCPUs=1, memoryMB=64,
                                      files=self.vim.vm.FileInfo(vmPathName="[%s]" % ds.name))
        return self.wait(folder.CreateVM_Task(config=spec, pool=pool, host=host))


@pytest.fixture(scope="module")
def vsphere(own_vcsim):
    api = Vsphere(own_vcsim.host, own_vcsim.port, own_vcsim.username, own_vcsim.password, own_vcsim.ca_file)
    yield api
    api.close()
