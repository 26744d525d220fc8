#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmware_cbt
short_description: Enable, disable or reset Changed Block Tracking (CBT) on a vSphere VM
version_added: 0.1.0
description:
  - Makes sure a virtual machine has Changed Block Tracking in the wanted state, the way VMware documents it and
    the way a warm migration or incremental backup needs it.
  - V(enabled) turns C(config.changeTrackingEnabled) on (also on powered-on VMs) and then runs the B(stun cycle)
    that makes it take effect, a temporary snapshot that is created, inspected and removed. Every eligible disk
    must then carry a C(changeId); CBT switched on at VM level alone is not enough, so a VM with CBT on but a
    disk without C(changeId) is initialised too.
  - The temporary snapshot is removed on every path, failures included, and temporary snapshots left behind by
    an earlier crashed run (same O(snapshot_name_prefix)) are removed first.
  - V(disabled) turns CBT off. V(reset) is VMware's documented reset, disable, stun cycle, enable, stun cycle.
    It returns the new change IDs, and the next copy must be a full one.
  - Disks that cannot be tracked (independent disks, physical-compatibility RDMs, Ver1 backings) are reported
    with the reason, not treated as failures.
  - Failures start with V(CBT enablement check failed - migration cannot proceed:) (states V(enabled) and
    V(reset)) and name the cause. C(error_kind) tells the causes apart. They are an unreachable vCenter, a
    failed login, TLS verification, a missing privilege (which is named), a failed reconfiguration, a failed
    initialisation snapshot and a disk still without C(changeId).
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
extends_documentation_fragment:
  - cbt.toolkit.vmware
  - cbt.toolkit.vmware.vm_identity
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports the actions it would take (RV(actions)) and changes nothing; no snapshot is taken.
  diff_mode:
    support: full
    details: Shows C(cbt_enabled) and each disk's C(changeId) before and after.
  platform:
    platforms: vmware
options:
  state:
    description:
      - V(enabled) turns CBT on and initialises it, V(disabled) turns it off.
      - V(reset) disables and re-enables CBT with a stun cycle after each step. It always changes the VM and
        gives every disk a new change ID epoch (the UUID part of the C(changeId) changes).
    type: str
    choices: [enabled, disabled, reset]
    default: enabled
  initialize:
    description:
      - With O(state=enabled), whether to run the stun cycle (temporary snapshot) when CBT was off or an eligible
        disk has no C(changeId) yet, and to fail if a disk still has none afterwards.
      - With O(state=disabled), whether to run a stun cycle on a powered-on VM so that the change takes effect
        at once.
      - O(state=reset) always runs its stun cycles.
    type: bool
    default: true
  snapshot_name_prefix:
    description:
      - Name prefix of the temporary snapshots. They are named C(<prefix>-<UTC time>-<random>).
      - Snapshots named exactly O(snapshot_name_prefix) or starting with C(<prefix>-) are treated as temporary
        snapshots of an earlier run, so do not give other snapshots such names.
    type: str
    default: cbt-toolkit-init
  cleanup_stale_snapshots:
    description:
      - Remove temporary snapshots left behind by an earlier run (see O(snapshot_name_prefix)) before doing
        anything else. When V(false) they are only reported as a warning.
    type: bool
    default: true
  task_timeout:
    description:
      - Seconds to wait for each vCenter task (reconfigure, snapshot create, snapshot remove and consolidation).
    type: int
    default: 3600
notes:
  - Needs the privileges C(VirtualMachine.Config.ChangeTracking), C(VirtualMachine.State.CreateSnapshot) and
    C(VirtualMachine.State.RemoveSnapshot) on the VM.
  - Requirements from VMware are virtual hardware vmx-07 or later, C(capability.changeTrackingSupported), and
    disks reached through the ESXi storage stack (VMFS, NFS, vSAN, vVols, virtual RDM).
  - Querying all allocated areas with changeId C(*) is only exact when the VM had no snapshots when CBT was
    enabled (KB 1020128). The module warns when other snapshots exist.
  - Waits for vCenter tasks with a PropertyCollector (C(WaitForUpdatesEx)), never with fixed sleeps, and logs
    in again once if the session expires.
seealso:
  - module: cbt.toolkit.vmware_cbt_info
  - module: cbt.toolkit.vmware_migration_snapshot
  - module: cbt.toolkit.vmware_cbt_changes
"""

EXAMPLES = r"""
- name: Enable and initialise CBT before a warm migration
  cbt.toolkit.vmware_cbt:
    hostname: vcenter.example.com
    username: migration@vsphere.local
    password: "{{ vcenter_password }}"
    name: app01
    datacenter: DC1
    state: enabled
  register: cbt

- name: Show the change ID of every disk
  ansible.builtin.debug:
    msg: "{{ cbt.disks | map(attribute='change_id') | list }}"

- name: What would change? (check mode, diff)
  cbt.toolkit.vmware_cbt:
    name: app01
    folder: /DC1/vm/prod
  check_mode: true
  diff: true

- name: Reset CBT after a crash; the next sync must copy whole disks
  cbt.toolkit.vmware_cbt:
    uuid: 4216a9b2-0d1c-7c6f-5b7e-1f6e4c1d2a3b
    use_instance_uuid: true
    state: reset

- name: Turn CBT off after the migration
  cbt.toolkit.vmware_cbt:
    moid: vm-1234
    state: disabled
"""

RETURN = r"""
vm:
  description: The VM.
  returned: when the VM was found
  type: dict
  contains:
    name: {description: VM name., type: str, returned: always, sample: app01}
    moid: {description: Managed object ID., type: str, returned: always, sample: vm-1234}
    instance_uuid: {description: vCenter instance UUID., type: str, returned: always}
    bios_uuid: {description: BIOS UUID., type: str, returned: always}
    power_state: {description: Power state., type: str, returned: always, sample: poweredOn}
    hw_version: {description: Virtual hardware version., type: str, returned: always, sample: vmx-19}
    path: {description: Inventory path., type: str, returned: always, sample: /DC1/vm/prod/app01}
  sample: {name: app01, moid: vm-1234, power_state: poweredOn, hw_version: vmx-19, path: /DC1/vm/prod/app01}
cbt_enabled_before:
  description: C(config.changeTrackingEnabled) before the module ran.
  returned: when the VM was found
  type: bool
cbt_enabled_after:
  description: C(config.changeTrackingEnabled) afterwards (in check mode, the predicted value).
  returned: when the VM was found
  type: bool
cbt_initialized:
  description: Whether CBT is on and every eligible disk has a C(changeId).
  returned: when the VM was found
  type: bool
disks:
  description: Every virtual disk after the run.
  returned: when the VM was found
  type: list
  elements: dict
  contains:
    key: {description: Device key (the C(deviceKey) of QueryChangedDiskAreas)., type: int, returned: always, sample: 2000}
    label: {description: Device label., type: str, returned: always, sample: Hard disk 1}
    file: {description: Backing file., type: str, returned: always, sample: "[ds1] app01/app01.vmdk"}
    capacity_bytes: {description: Capacity in bytes., type: int, returned: always}
    controller_type: {description: "V(scsi), V(sata), V(ide) or V(nvme).", type: str, returned: always}
    controller_bus: {description: Bus number of the controller., type: int, returned: always}
    unit_number: {description: Unit number on the controller., type: int, returned: always}
    device_node: {description: "For example V(scsi0:1), as in the C(scsiX:Y.ctkEnabled) settings.", type: str, returned: always}
    backing: {description: "Backing type, for example V(FlatVer2).", type: str, returned: always}
    disk_mode: {description: Disk mode., type: str, returned: always, sample: persistent}
    eligible: {description: Whether CBT can track the disk., type: bool, returned: always}
    reason: {description: Why the disk cannot be tracked (null when eligible)., type: str, returned: always}
    change_id: {description: Current C(changeId) of the disk (null when none)., type: str, returned: always,
                sample: "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81"}
    previous_change_id: {description: The C(changeId) before the run., type: str, returned: always}
actions:
  description: What the module did (or, in check mode, would do), in order.
  returned: always
  type: list
  elements: str
  sample: ["enable change tracking (ReconfigVM_Task changeTrackingEnabled=true)"]
stale_snapshots_removed:
  description: Temporary snapshots of earlier runs that were removed (would be, in check mode).
  returned: always
  type: list
  elements: dict
temporary_snapshots:
  description: The temporary snapshots this run created, with C(removed=true) once removed.
  returned: always
  type: list
  elements: dict
  sample: [{name: cbt-toolkit-init-20250812T101500Z-3f2a, moid: snapshot-77, removed: true}]
error_kind:
  description:
    - On failure, the cause. One of V(unreachable), V(tls_verification_failed), V(login_failed),
      V(permission_denied), V(not_found), V(ambiguous), V(unsupported), V(inaccessible) (vCenter cannot reach
      the VM, which is orphaned, inaccessible, invalid or on a disconnected host), V(reconfigure_failed),
      V(init_snapshot_failed), V(no_change_id), V(snapshot_remove_failed), V(task_timeout) or V(api_error).
  returned: failed
  type: str
missing_privileges:
  description: On V(permission_denied), the privileges vCenter reported missing.
  returned: failed
  type: list
  elements: str
matches:
  description: On V(ambiguous), every matching VM with moid and path.
  returned: failed
  type: list
  elements: dict
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_module import VmwareModule
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareError
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import (
    CbtManager,
    diff_view,
    snapshot_public,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import disks_by_key

PREFIX_ENABLE = "CBT enablement check failed - migration cannot proceed: "
PREFIX_DISABLE = "CBT disable failed: "

VM_KEYS = ("name", "moid", "instance_uuid", "bios_uuid", "power_state", "hw_version", "path")


def predicted_after(facts, state, steps):
    after = dict(facts)
    disks = [dict(d) for d in facts.get("disks") or []]
    if "enable" in steps or state == "reset":
        after["cbt_enabled"] = True
    if "disable" in steps and state == "disabled":
        after["cbt_enabled"] = False
    for disk in disks:
        if not disk["eligible"]:
            continue
        if state == "disabled" and "disable" in steps:
            disk["change_id"] = None
        elif state == "reset":
            disk["change_id"] = "(new changeId after the reset)"
        elif "initialize" in steps and not disk["change_id"]:
            disk["change_id"] = "(assigned by the initialisation)"
    after["disks"] = disks
    return after


def run(m):
    p = m.params
    state = p["state"]
    m.error_prefix = PREFIX_DISABLE if state == "disabled" else PREFIX_ENABLE
    if p["task_timeout"] <= 0:
        m.module.fail_json(msg="task_timeout must be a positive number of seconds, got %d" % p["task_timeout"],
                           error_kind="invalid_argument")
    prefix = (p["snapshot_name_prefix"] or "").strip()
    if not prefix:
        m.module.fail_json(msg="snapshot_name_prefix must not be empty: it is how temporary snapshots are recognised",
                           error_kind="invalid_argument")
    m.connect()
    vm = m.find_vm()
    mgr = CbtManager(m.client, vm, prefix=prefix, timeout=p["task_timeout"], check_mode=m.check_mode)
    before = mgr.facts()
    result = dict(changed=False, actions=[], stale_snapshots_removed=[], temporary_snapshots=mgr.init_snapshots,
                  vm=dict((k, before.get(k)) for k in VM_KEYS), cbt_enabled_before=before["cbt_enabled"])

    def failing(exc):
        result["vm"] = dict((k, mgr.facts().get(k)) for k in VM_KEYS) if mgr.record else result["vm"]
        extra = dict((k, v) for k, v in result.items() if k != "changed")
        m.fail(exc, changed=mgr.changed, **extra)

    try:
        steps = mgr.plan(state, p["initialize"])
        if state in ("enabled", "reset") and steps:
            # a VM (or template) that already has CBT set up needs nothing, whatever it supports
            mgr.check_supported()
        stale = mgr.stale_snapshots()
        if stale:
            if p["cleanup_stale_snapshots"]:
                for snap in stale:
                    result["actions"].append("remove stale temporary snapshot '%s' (%s)" % (snap["name"], snap["moid"]))
                if m.check_mode:
                    result["stale_snapshots_removed"] = [snapshot_public(s) for s in stale]
                else:
                    result["stale_snapshots_removed"] = mgr.remove_stale(stale)
            else:
                m.warn("VM %s has %d temporary snapshot(s) from an earlier run (%s); set cleanup_stale_snapshots: true "
                       "or remove them" % (mgr.label, len(stale), ", ".join(s["name"] for s in stale)))
        result["actions"].extend(mgr.describe_step(s) for s in steps)
        init_disks = {}
        if not m.check_mode:
            for step in steps:
                if step == "enable":
                    mgr.reconfigure(True)
                elif step == "disable":
                    mgr.reconfigure(False)
                elif step == "initialize":
                    init_disks = disks_by_key(mgr.stun_cycle(require_change_ids=True))
                elif step == "stun":
                    mgr.stun_cycle(require_change_ids=False)
            if steps:
                mgr.refresh()
    except VmwareError as exc:
        failing(exc)

    after = predicted_after(mgr.facts(), state, steps) if m.check_mode else mgr.facts()
    previous = disks_by_key(before["disks"])
    disks = []
    for disk in after["disks"]:
        disk = dict(disk)
        if not disk["change_id"] and disk["key"] in init_disks and state != "disabled":
            # Some servers only show the changeId on the snapshot's disk backing.
            disk["change_id"] = init_disks[disk["key"]]["change_id"]
        disk["previous_change_id"] = previous.get(disk["key"], {}).get("change_id")
        disks.append(disk)
    after["disks"] = disks
    eligible = [d for d in disks if d["eligible"]]
    result.update(
        changed=bool(result["actions"]),
        vm=dict((k, after.get(k)) for k in VM_KEYS),
        cbt_enabled_after=after["cbt_enabled"],
        cbt_initialized=bool(after["cbt_enabled"] and eligible and all(d["change_id"] for d in eligible)),
        disks=disks,
    )
    if m.diff_mode:
        result["diff"] = dict(before=diff_view(before), after=diff_view(after),
                              before_header="%s (before)" % before["path"], after_header="%s (after)" % after["path"])
    ineligible = [d for d in disks if not d["eligible"]]
    if ineligible and state != "disabled":
        m.warn("VM %s: %s not tracked by CBT: %s" % (
            mgr.label, "this disk is" if len(ineligible) == 1 else "these disks are",
            "; ".join("disk %s '%s' (%s): %s" % (d["key"], d["label"], d["file"], d["reason"]) for d in ineligible)))
    if state == "enabled" and not eligible:
        m.warn("VM %s has no disk that CBT can track" % mgr.label)
    without = [str(d["key"]) for d in eligible if not d["change_id"]]
    if state == "enabled" and not p["initialize"] and without:
        m.warn("CBT is on for VM %s but disk(s) %s have no changeId yet; a disk gets one at the next stun cycle "
               "(snapshot, power on, vMotion). Set initialize: true to do it now" % (mgr.label, ", ".join(without)))
    others = [s for s in mgr.snapshots if not (s["name"] == prefix or s["name"].startswith(prefix + "-"))]
    if others and state in ("enabled", "reset") and "enable" in steps:
        m.warn("VM %s had %d snapshot(s) when CBT was enabled; a changeId '*' query (all allocated areas) may then "
               "report whole disks (KB 1020128)" % (mgr.label, len(others)))
    m.exit(**result)


def main():
    m = VmwareModule(
        argument_spec=dict(
            state=dict(type="str", default="enabled", choices=["enabled", "disabled", "reset"]),
            initialize=dict(type="bool", default=True),
            snapshot_name_prefix=dict(type="str", default="cbt-toolkit-init"),
            cleanup_stale_snapshots=dict(type="bool", default=True),
            task_timeout=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
        error_prefix=PREFIX_ENABLE,
    )
    m.run(run)


if __name__ == "__main__":
    main()
