#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmware_cbt_changes
short_description: Changed areas of vSphere VM disks at a snapshot since a changeId (QueryChangedDiskAreas)
version_added: 0.1.0
description:
  - Asks vSphere which areas of one disk changed between O(change_id) and O(snapshot). With O(change_id=*) it asks
    for all allocated areas (for the first, full copy).
  - With O(disks) it asks for several disks of the VM in one call (one login, one look-up of the VM and the
    snapshot) and returns RV(disks), one entry per disk. Every disk is checked before the first query, and the
    extent files appear only once every query has succeeded.
  - Pages through C(QueryChangedDiskAreas) by vSphere's rules. Each call continues at C(startOffset + length)
    of the previous window until the disk capacity. An empty window is not the end of the disk (some
    tools stop there and silently miss changes).
  - Never returns a silently empty list when the answer is unknown. RV(full_sync_required) is V(true), with
    RV(reason), in these cases. The UUID part of O(change_id) differs from the disk's changeId at the
    snapshot (CBT was reset), or the disk has no changeId. vSphere answers C(FileFault), C(NotFound),
    C(InvalidArgument) or C(MethodNotFound) (no C(QueryChangedDiskAreas), for example plain vcsim). A
    window makes no progress or leaves a gap. RV(extents) then covers the whole disk.
  - A disk CBT cannot track (independent, physical-compatibility RDM, Ver1) is an error; snapshots do not
    capture it either, so it has to be copied another way.
  - Extents are sorted, merged and optionally coalesced (O(coalesce_gap)). They can be written to O(extent_file)
    in the collection's shared extent format, which M(cbt.toolkit.block_sync) reads.
  - Read-only. The result's C(changed) is always V(false).
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
extends_documentation_fragment:
  - cbt.toolkit.vmware
  - cbt.toolkit.vmware.vm_identity
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing in vSphere changes in either mode. O(extent_file) is written in check mode too, because it is the
        query's output rather than managed state.
  diff_mode:
    support: none
  platform:
    platforms: vmware
options:
  snapshot:
    description:
      - The snapshot to query, by managed object ID (for example V(snapshot-42)) or by name.
      - It is usually the snapshot of the current round created by M(cbt.toolkit.vmware_migration_snapshot).
    type: str
    required: true
  disk_key:
    description:
      - Device key of the disk (C(disks[].key) of the other modules, for example V(2000)).
      - Required with O(change_id), unless O(disks) is given.
    type: int
  change_id:
    description:
      - The changeId of the disk at the previous round's snapshot, or V(*) for all allocated areas.
      - A malformed value is an error; the expected format is C(<16 hex bytes>/<sequence>).
      - Required with O(disk_key).
    type: str
  extent_file:
    description:
      - Write every extent to this file in the shared extent format. The metadata records capacity, source,
        change_id, snapshot_change_id, disk_key, and full_sync_required with its reason.
      - The file appears atomically when complete. A failed query leaves no file.
    type: path
  disks:
    description:
      - Several disks of the VM in one call, instead of O(disk_key), O(change_id) and O(extent_file).
      - Each key and each extent file may appear once. O(coalesce_gap) and O(max_results) apply to each disk.
      - If any disk fails (unknown key, disk CBT cannot track, malformed changeId, a vSphere error, an extent
        file that cannot be written), no extent file is written. A disk that needs a full copy is not a failure
        (see RV(disks[].full_sync_required)).
    type: list
    elements: dict
    suboptions:
      key:
        description: Device key of the disk.
        type: int
        required: true
      change_id:
        description: The disk's changeId at the previous round's snapshot, or V(*) for all allocated areas.
        type: str
        required: true
      extent_file:
        description: Write the disk's extents to this file (as O(extent_file)).
        type: path
  coalesce_gap:
    description:
      - Merge extents separated by at most this many bytes. This gives fewer, larger reads at the cost of
        copying the gaps.
    type: int
    default: 0
  max_results:
    description:
      - Return at most this many extents in RV(extents). RV(count) and O(extent_file) always cover all of them.
        V(0) returns none.
    type: int
    default: 1000
notes:
  - Needs the privilege C(VirtualMachine.Provisioning.DiskRandomRead).
  - O(change_id=*) is exact only on VMFS and when the VM had no snapshots when CBT was enabled. Otherwise vSphere
    may report the whole disk (KB 1020128).
seealso:
  - module: cbt.toolkit.vmware_migration_snapshot
  - module: cbt.toolkit.vmware_cbt
"""

EXAMPLES = r"""
- name: First round, all allocated areas
  cbt.toolkit.vmware_cbt_changes:
    name: app01
    snapshot: migration-round-1
    disk_key: 2000
    change_id: "*"
    extent_file: /var/lib/migration/app01-2000-r1.extents
  register: r1

- name: Later round, changes since the previous round's snapshot
  cbt.toolkit.vmware_cbt_changes:
    name: app01
    snapshot: "{{ round3.snapshot.moid }}"
    disk_key: 2000
    change_id: "{{ round2.change_ids['2000'] }}"
    coalesce_gap: 1048576
    extent_file: /var/lib/migration/app01-2000-r3.extents
  register: r3

- name: CBT was reset meanwhile, so copy the whole disk
  ansible.builtin.debug:
    msg: "Full copy needed: {{ r3.reason }}"
  when: r3.full_sync_required

- name: Every disk of the VM in one call
  cbt.toolkit.vmware_cbt_changes:
    name: app01
    snapshot: "{{ round3.snapshot.moid }}"
    disks:
      - key: 2000
        change_id: "{{ round2.change_ids['2000'] }}"
        extent_file: /var/lib/migration/app01-2000-r3.extents
      - key: 2001
        change_id: "{{ round2.change_ids['2001'] }}"
        extent_file: /var/lib/migration/app01-2001-r3.extents
    max_results: 0
  register: r3_all

- name: Disks that need a full copy
  ansible.builtin.debug:
    msg: "{{ r3_all.disks | selectattr('full_sync_required') | map(attribute='key') | list }}"
"""

RETURN = r"""
full_sync_required:
  description:
    - Whether only a full copy is safe; RV(reason) says why and RV(extents) covers the whole disk.
    - With O(disks), whether any of the disks needs a full copy.
  returned: success
  type: bool
reason:
  description: Why a full copy is required (null otherwise).
  returned: with O(disk_key)
  type: str
  sample: "changeId '52 ... 63/81' belongs to another CBT epoch than the disk's current changeId ..."
fault:
  description: The vSphere fault behind RV(full_sync_required), for example V(FileFault) or V(MethodNotFound).
  returned: with O(disk_key), when a query fault caused the full sync
  type: str
extents:
  description: Changed (or allocated) extents, sorted and coalesced, at most O(max_results).
  returned: with O(disk_key)
  type: list
  elements: dict
  contains:
    offset: {description: Byte offset., type: int, returned: always}
    length: {description: Length in bytes., type: int, returned: always}
  sample: [{offset: 0, length: 65536}, {offset: 1048576, length: 4096}]
extents_truncated:
  description: Whether RV(extents) holds fewer extents than RV(count).
  returned: with O(disk_key)
  type: bool
count:
  description: Number of extents (after coalescing).
  returned: with O(disk_key)
  type: int
changed_bytes:
  description: Sum of the extents' lengths; with O(disks), the sum over the disks.
  returned: success
  type: int
capacity:
  description: Disk capacity in bytes at the snapshot.
  returned: with O(disk_key)
  type: int
pages:
  description: Number of QueryChangedDiskAreas calls.
  returned: with O(disk_key)
  type: int
change_id:
  description: The changeId queried from (O(change_id)).
  returned: with O(disk_key)
  type: str
snapshot_change_id:
  description: The disk's changeId at the snapshot, the base for the next round.
  returned: with O(disk_key)
  type: str
disk:
  description: The disk at the snapshot (key, label, file, capacity_bytes, eligible, reason, change_id).
  returned: with O(disk_key)
  type: dict
extent_file:
  description: Path of the extent file written (null without O(extent_file)).
  returned: with O(disk_key)
  type: str
disks:
  description:
    - One entry per disk of O(disks), in the same order, with the single-disk keys above plus C(key).
  returned: with O(disks)
  type: list
  elements: dict
  contains:
    key: {description: Device key of the disk., type: int, returned: always}
    full_sync_required: {description: Whether only a full copy of this disk is safe., type: bool, returned: always}
    reason: {description: Why a full copy is required (null otherwise)., type: str, returned: always}
    fault: {description: The vSphere fault behind a full sync., type: str, returned: when a query fault caused it}
    extents: {description: "Extents of this disk, at most O(max_results).", type: list, elements: dict, returned: always}
    extents_truncated: {description: Whether C(extents) holds fewer extents than C(count)., type: bool, returned: always}
    count: {description: Number of extents., type: int, returned: always}
    changed_bytes: {description: Sum of the extents' lengths., type: int, returned: always}
    capacity: {description: Disk capacity in bytes at the snapshot., type: int, returned: always}
    pages: {description: Number of QueryChangedDiskAreas calls., type: int, returned: always}
    change_id: {description: The changeId queried from., type: str, returned: always}
    snapshot_change_id: {description: The disk's changeId at the snapshot., type: str, returned: always}
    disk: {description: The disk at the snapshot., type: dict, returned: always}
    extent_file: {description: Path of the extent file written (null without one)., type: str, returned: always}
query_seconds:
  description: Seconds the queries of all disks took (without the login and the look-ups).
  returned: with O(disks)
  type: float
snapshot:
  description: The snapshot queried (name, moid, create_time).
  returned: success
  type: dict
vm:
  description: The VM (name, moid, instance_uuid, path).
  returned: success
  type: dict
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_module import VmwareModule
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import find_snapshot, read_snapshots, snapshot_disks, snapshot_public
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_changes import (
    DISK_REQUEST_OPTIONS,
    parse_requests,
    query_changes,
    summary,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import read_vm, vm_facts, vm_label

VM_KEYS = ("name", "moid", "instance_uuid", "path")


def run(m):
    p = m.params
    if p["disks"] is not None:
        requests = parse_requests(p["disks"], p["coalesce_gap"], p["max_results"])
    else:
        requests = parse_requests([{"key": p["disk_key"], "change_id": p["change_id"], "extent_file": p["extent_file"]}],
                                  p["coalesce_gap"], p["max_results"], what=None)
    m.connect()
    client = m.client
    vm = m.find_vm()
    record = read_vm(client, vm)
    text = vm_label(record)
    facts = vm_facts(record, include_disks=False)
    snap = find_snapshot(read_snapshots(client, vm, facts["name"]), p["snapshot"], text)
    snap_disks = snapshot_disks(client, snap["ref"], "reading the disks of snapshot '%s' (%s) of VM %s"
                                % (snap["name"], snap["moid"], text))
    live_disks = describe_disks(record["props"].get("config.hardware.device") or [])
    results, seconds = query_changes(client, vm, text, facts, snap, snap_disks, live_disks, requests,
                                     p["coalesce_gap"], p["max_results"], m.warn)
    common = dict(changed=False, vm=dict((k, facts.get(k)) for k in VM_KEYS), snapshot=snapshot_public(snap))
    if p["disks"] is None:
        result = results[0]
        del result["key"]
        m.exit(**dict(common, **result))
    m.exit(**dict(common, **summary(results, seconds)))


def main():
    m = VmwareModule(
        argument_spec=dict(
            snapshot=dict(type="str", required=True),
            disk_key=dict(type="int", no_log=False),
            change_id=dict(type="str"),
            extent_file=dict(type="path"),
            disks=dict(type="list", elements="dict", options=DISK_REQUEST_OPTIONS),
            coalesce_gap=dict(type="int", default=0),
            max_results=dict(type="int", default=1000),
        ),
        mutually_exclusive=[("disks", "disk_key"), ("disks", "change_id"), ("disks", "extent_file")],
        required_one_of=[("disks", "disk_key")],
        required_together=[("disk_key", "change_id")],
        supports_check_mode=True,
    )
    m.run(run)


if __name__ == "__main__":
    main()
