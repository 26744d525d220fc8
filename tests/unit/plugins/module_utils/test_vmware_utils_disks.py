# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk description, CBT eligibility and changeId parsing (pyVmomi data objects, no server)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from pyVmomi import vim

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_disks as disks

CID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81"


def scsi(key=1000, bus=0):
    return vim.vm.device.ParaVirtualSCSIController(key=key, busNumber=bus)


def disk(key, backing, unit=0, controller=1000, capacity=1 << 30, label=None):
    return vim.vm.device.VirtualDisk(key=key, controllerKey=controller, unitNumber=unit, capacityInBytes=capacity,
                                     backing=backing, deviceInfo=vim.Description(label=label or "Hard disk %d" % key,
                                                                                 summary=""))


def flat(name="[ds] vm/vm.vmdk", mode="persistent", change_id=None):
    return vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=name, diskMode=mode, changeId=change_id)


def test_parse_change_id_accepts_the_vsphere_format_and_normalises_the_uuid():
    uuid, seq = disks.parse_change_id(CID)
    assert seq == 81
    assert uuid == "52dec0d9b9439d1061d54c1be97b6563"
    # spacing/case differences are the same UUID
    assert disks.parse_change_id("52DEC0D9B9439D10-61D54C1BE97B6563/3")[0] == uuid
    assert disks.change_id_uuid(CID) == "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63"


@pytest.mark.parametrize("bad", ["*", "", "52 de/1", "not-a-change-id", CID.replace("/81", ""),
                                 CID.replace("/81", "/x"), "zz de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/1"])
def test_parse_change_id_rejects_malformed_values_with_the_expected_format(bad):
    with pytest.raises(disks.ChangeIdError) as err:
        disks.parse_change_id(bad)
    assert "/<sequence>" in str(err.value)
    assert disks.change_id_uuid(bad) is None


def test_describe_disks_reports_controller_unit_capacity_and_change_id():
    devices = [
        scsi(1000, 0),
        vim.vm.device.VirtualSATAController(key=15000, busNumber=1),
        disk(2001, flat("[ds] vm/b.vmdk"), unit=1),
        disk(2000, flat(change_id=CID)),
        disk(16000, flat("[ds] vm/s.vmdk"), controller=15000, unit=3),
        vim.vm.device.VirtualE1000(key=4000),
    ]
    out = disks.describe_disks(devices)
    assert [d["key"] for d in out] == [2000, 2001, 16000]
    first = out[0]
    assert first["change_id"] == CID and first["eligible"] and first["reason"] is None
    assert first["controller_type"] == "scsi" and first["controller_bus"] == 0 and first["unit_number"] == 0
    assert first["device_node"] == "scsi0:0" and first["capacity_bytes"] == 1 << 30
    assert first["file"] == "[ds] vm/vm.vmdk" and first["backing"] == "FlatVer2"
    assert out[1]["change_id"] is None
    assert out[2]["device_node"] == "sata1:3"


def test_capacity_falls_back_to_kb():
    d = vim.vm.device.VirtualDisk(key=2000, controllerKey=1000, unitNumber=0, capacityInKB=1024, backing=flat())
    assert disks.describe_disks([scsi(), d])[0]["capacity_bytes"] == 1024 * 1024


@pytest.mark.parametrize("backing,eligible,words", [
    (flat(mode="persistent"), True, None),
    (flat(mode="independent_persistent"), False, "independent"),
    (flat(mode="independent_nonpersistent"), False, "independent"),
    (vim.vm.device.VirtualDisk.SparseVer2BackingInfo(fileName="x", diskMode="persistent"), True, None),
    (vim.vm.device.VirtualDisk.SeSparseBackingInfo(fileName="x", diskMode="persistent"), True, None),
    (vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(fileName="x", compatibilityMode="physicalMode",
                                                             diskMode="persistent"), False, "physical-compatibility RDM"),
    (vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(fileName="x", compatibilityMode="virtualMode",
                                                             diskMode="persistent"), True, None),
    (vim.vm.device.VirtualDisk.FlatVer1BackingInfo(fileName="x", diskMode="persistent"), False, "FlatVer1"),
    (vim.vm.device.VirtualDisk.SparseVer1BackingInfo(fileName="x", diskMode="persistent"), False, "SparseVer1"),
    (vim.vm.device.VirtualDisk.LocalPMemBackingInfo(fileName="x", diskMode="persistent"), False, "LocalPMem"),
])
def test_eligibility_follows_vmware_rules(backing, eligible, words):
    ok, reason = disks.disk_eligibility(disk(2000, backing))
    assert ok is eligible
    if words:
        assert words in reason
    else:
        assert reason is None
