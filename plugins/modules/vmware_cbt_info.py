#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmware_cbt_info
short_description: Changed Block Tracking status of vSphere VMs
version_added: 0.1.0
description:
  - Reports, for one VM, a list of VMs, every VM of a folder, cluster or datacenter, or every VM, whether Changed
    Block Tracking is on and initialised, and every disk's C(changeId) and eligibility.
  - All VMs are read with B(one) PropertyCollector retrieval (plus its continuation pages), not one lookup per VM,
    so thousands of VMs take seconds.
  - Each VM also carries the fields of the CBT status endpoint of the migration appliance this collection
    replaces (C(enabled), C(vm_name), C(power_state), C(vm_path)). Credentials never appear in a URL.
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
extends_documentation_fragment:
  - cbt.toolkit.vmware
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same way in check mode.
  diff_mode:
    support: none
  platform:
    platforms: vmware
options:
  name:
    description:
      - Report the single VM with this name. Fails when the name is unknown or matches several VMs (they are
        listed); narrow the scope with O(folder), O(cluster) or O(datacenter), or use O(uuid) or O(moid).
      - Mutually exclusive with O(names), O(uuid) and O(moid).
    type: str
  names:
    description:
      - Report these VMs. Fails naming every name that matches no VM; a name that matches several VMs reports
        them all.
    type: list
    elements: str
  uuid:
    description:
      - Report the VM with this BIOS UUID (or instance UUID with O(use_instance_uuid=true)).
    type: str
  use_instance_uuid:
    description:
      - Whether O(uuid) is the vCenter instance UUID.
    type: bool
    default: false
  moid:
    description:
      - Report the VM with this managed object ID.
    type: str
  datacenter:
    description:
      - Only VMs of this datacenter.
    type: str
  folder:
    description:
      - Only VMs in this folder and its subfolders, as V(/DC1/vm/prod) or relative to O(datacenter).
    type: str
  cluster:
    description:
      - Only VMs in the resource pools of this cluster.
    type: str
  include_disks:
    description:
      - Whether to read and report disks (C(config.hardware.device)). V(false) is faster on very large inventories
        but then C(cbt_initialized) is not reported.
    type: bool
    default: true
seealso:
  - module: cbt.toolkit.vmware_cbt
"""

EXAMPLES = r"""
- name: CBT status of one VM (the appliance's cbt-status endpoint, done the Ansible way)
  cbt.toolkit.vmware_cbt_info:
    hostname: vcenter.example.com
    username: readonly@vsphere.local
    password: "{{ vcenter_password }}"
    name: MyVM
    datacenter: DatabanxDC
  register: status

- name: Fail when CBT is not ready
  ansible.builtin.assert:
    that: status.vms[0].cbt_initialized
    fail_msg: "CBT is not initialised on {{ status.vms[0].vm_path }}"

- name: Every VM of a folder without CBT
  cbt.toolkit.vmware_cbt_info:
    folder: /DC1/vm/prod
    include_disks: false
  register: prod

- name: List them
  ansible.builtin.debug:
    msg: "{{ prod.vms | rejectattr('enabled') | map(attribute='vm_path') | list }}"
"""

RETURN = r"""
vms:
  description: One entry per VM, sorted by inventory path.
  returned: success
  type: list
  elements: dict
  contains:
    name: {description: VM name., type: str, returned: always}
    vm_name: {description: Same as C(name) (appliance field)., type: str, returned: always}
    moid: {description: Managed object ID., type: str, returned: always}
    instance_uuid: {description: vCenter instance UUID., type: str, returned: always}
    bios_uuid: {description: BIOS UUID., type: str, returned: always}
    power_state: {description: "V(poweredOn), V(poweredOff) or V(suspended).", type: str, returned: always}
    hw_version: {description: Virtual hardware version., type: str, returned: always, sample: vmx-19}
    path: {description: Inventory path., type: str, returned: always, sample: /DatabanxDC/vm/MyVM}
    vm_path: {description: Same as C(path) (appliance field)., type: str, returned: always}
    template: {description: Whether the VM is a template., type: bool, returned: always}
    cbt_enabled:
      description: C(config.changeTrackingEnabled); V(null) when vCenter cannot reach the VM (see RV(vms[].accessible)).
      type: bool
      returned: always
    enabled: {description: Same as C(cbt_enabled) (appliance field)., type: bool, returned: always}
    cbt_initialized:
      description: CBT is on and every eligible disk has a C(changeId); V(null) when the VM is not accessible.
      type: bool
      returned: when O(include_disks=true)
    change_tracking_supported:
      description: C(capability.changeTrackingSupported); V(null) when the VM is not accessible.
      type: bool
      returned: always
    connection_state:
      description: C(runtime.connectionState).
      type: str
      returned: always
      sample: connected
    accessible:
      description:
        - Whether vCenter can reach the VM (C(runtime.connectionState) is V(connected)).
        - An orphaned, inaccessible, invalid or disconnected VM has no readable configuration, so its CBT
          fields are V(null) and RV(vms[].inaccessible_reason) says what to do.
      type: bool
      returned: always
    inaccessible_reason:
      description: Why the VM cannot be reached and what to do.
      type: str
      returned: when RV(vms[].accessible) is false
    consolidation_needed: {description: C(runtime.consolidationNeeded)., type: bool, returned: always}
    has_snapshots: {description: Whether the VM has snapshots., type: bool, returned: always}
    disks:
      description: Disks as returned by M(cbt.toolkit.vmware_cbt) (key, label, file, capacity_bytes, controller,
        eligible, reason, change_id).
      type: list
      elements: dict
      returned: when O(include_disks=true)
  sample:
    - {name: MyVM, vm_name: MyVM, enabled: true, cbt_enabled: true, cbt_initialized: true, power_state: poweredOn,
       path: /DatabanxDC/vm/MyVM, vm_path: /DatabanxDC/vm/MyVM, moid: vm-42}
count:
  description: Number of VMs reported.
  returned: success
  type: int
summary:
  description: Counts over the reported VMs.
  returned: success
  type: dict
  contains:
    cbt_enabled: {description: VMs with CBT on., type: int, returned: always}
    cbt_initialized: {description: VMs with CBT on and a changeId on every eligible disk., type: int, returned: when O(include_disks=true)}
    not_supported: {description: VMs whose capability.changeTrackingSupported is false., type: int, returned: always}
    inaccessible:
      description: VMs vCenter cannot reach (see RV(vms[].accessible)).
      type: int
      returned: always
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_module import VmwareModule
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareNotFound
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import (
    collect_vms,
    find_vm,
    scope_container,
    vm_facts,
)


def report(record, include_disks):
    facts = vm_facts(record, include_disks=include_disks)
    facts["enabled"] = facts["cbt_enabled"]
    facts["vm_name"] = facts["name"]
    facts["vm_path"] = facts["path"]
    return facts


def run(m):
    p = m.params
    include_disks = p["include_disks"]
    m.connect()
    client = m.client
    if p["uuid"] or p["moid"] or p["name"] is not None:
        # one VM: a names-only lookup (ambiguous names fail listing the matches), then its record
        vm = find_vm(client, name=p["name"], uuid=p["uuid"], use_instance_uuid=p["use_instance_uuid"],
                     moid=p["moid"], datacenter=p["datacenter"], folder=p["folder"], cluster=p["cluster"])
        records = collect_vms(client, refs=[vm], include_disks=include_disks)
    else:
        container, scope = scope_container(client, datacenter=p["datacenter"], folder=p["folder"], cluster=p["cluster"])
        records = collect_vms(client, container=container, include_disks=include_disks)
        if p["names"] is not None:
            wanted = list(dict.fromkeys(p["names"]))
            found = set(r["props"].get("name") for r in records)
            missing = [n for n in wanted if n not in found]
            if missing:
                raise VmwareNotFound("VM(s) not found in %s: %s; VM names are case-sensitive"
                                     % (scope, ", ".join("'%s'" % n for n in missing)), missing=missing)
            wanted_set = set(wanted)
            records = [r for r in records if r["props"].get("name") in wanted_set]
    vms = [report(r, include_disks) for r in records]
    summary = {
        "cbt_enabled": sum(1 for v in vms if v["cbt_enabled"]),
        "not_supported": sum(1 for v in vms if v["change_tracking_supported"] is False),
        "inaccessible": sum(1 for v in vms if not v["accessible"]),
    }
    if include_disks:
        summary["cbt_initialized"] = sum(1 for v in vms if v.get("cbt_initialized"))
    m.exit(changed=False, vms=vms, count=len(vms), summary=summary)


def main():
    m = VmwareModule(
        argument_spec=dict(
            name=dict(type="str"),
            names=dict(type="list", elements="str"),
            uuid=dict(type="str"),
            use_instance_uuid=dict(type="bool", default=False),
            moid=dict(type="str"),
            datacenter=dict(type="str"),
            folder=dict(type="str"),
            cluster=dict(type="str"),
            include_disks=dict(type="bool", default=True),
        ),
        with_vm_identity=False,
        supports_check_mode=True,
        mutually_exclusive=[["name", "names", "uuid", "moid"], ["folder", "cluster"],
                            ["uuid", "folder"], ["uuid", "cluster"], ["moid", "folder"], ["moid", "cluster"],
                            ["moid", "datacenter"]],
    )
    m.run(run)


if __name__ == "__main__":
    main()
