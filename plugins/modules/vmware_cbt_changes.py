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
      - If any disk fails (unknown key, disk CBT cannot track, malformed changeId, a vSphere error), no extent
        file is written. A disk that needs a full copy is not a failure (see RV(disks[].full_sync_required)).
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
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import fault_name
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import (
    CbtError,
    ExtentCollector,
    FullSyncRequired,
    check_change_id_lineage,
    find_snapshot,
    iter_changed_areas,
    read_snapshots,
    snapshot_disks,
    snapshot_public,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import (
    ChangeIdError,
    describe_disks,
    parse_change_id,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import read_vm, vm_facts, vm_label
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import ExtentFileWriter

VM_KEYS = ("name", "moid", "instance_uuid", "path")
DISK_KEYS = ("key", "label", "file", "capacity_bytes", "backing", "disk_mode", "eligible", "reason", "change_id")


def _check_change_id(m, change_id, what):
    if change_id != "*":
        try:
            parse_change_id(change_id)
        except ChangeIdError as exc:
            m.module.fail_json(msg="%s: %s" % (what, exc), error_kind="invalid_argument")


def _requests(m):
    """The disks to query as (key, change_id, extent_file), validated before anything is asked."""
    p = m.params
    if p["coalesce_gap"] < 0:
        m.module.fail_json(msg="coalesce_gap must not be negative, got %d" % p["coalesce_gap"],
                           error_kind="invalid_argument")
    if p["max_results"] < 0:
        m.module.fail_json(msg="max_results must not be negative, got %d" % p["max_results"],
                           error_kind="invalid_argument")
    if p["disks"] is None:
        change_id = (p["change_id"] or "").strip()
        _check_change_id(m, change_id, "change_id")
        return [(p["disk_key"], change_id, p["extent_file"])]
    if not p["disks"]:
        m.module.fail_json(msg="disks must name at least one disk", error_kind="invalid_argument")
    requests = []
    for i, entry in enumerate(p["disks"]):
        change_id = (entry["change_id"] or "").strip()
        _check_change_id(m, change_id, "disks[%d].change_id (disk %d)" % (i, entry["key"]))
        requests.append((entry["key"], change_id, entry["extent_file"]))
    for what, values in (("key", [r[0] for r in requests]), ("extent_file", [r[2] for r in requests if r[2]])):
        repeated = sorted(set(v for v in values if values.count(v) > 1), key=str)
        if repeated:
            m.module.fail_json(msg="disks: each %s may appear once; repeated: %s (list each disk once, with an "
                               "extent file of its own)" % (what, ", ".join(str(v) for v in repeated)),
                               error_kind="invalid_argument")
    return requests


def _pick_disk(key, disks, live, text, snap_text):
    """The disk ``key`` at the snapshot; an error for a disk CBT cannot track or one that is not there."""
    disk = [d for d in disks if d["key"] == key]
    found = (disk or [d for d in live if d["key"] == key] or [None])[0]
    if found is not None and not found["eligible"]:
        raise CbtError("disk %d '%s' (%s) of VM %s cannot be tracked by CBT (%s); it is not captured by snapshot %s "
                       "either, so its changes cannot be queried: copy it another way"
                       % (found["key"], found["label"], found["file"], text, found["reason"],
                          snap_text), kind="unsupported")
    if not disk:
        raise CbtError("VM %s has no disk with key %d at snapshot %s; disks: %s"
                       % (text, key, snap_text,
                          ", ".join("%d (%s, %s)" % (d["key"], d["label"], d["file"]) for d in disks) or "none"),
                       kind="not_found")
    return disk[0]


def _query(m, ctx, disk, change_id, extent_file):
    """Changed areas of one disk; returns its result and the extent file writer (not yet closed:
    the caller publishes every disk's file once all queries succeeded)."""
    p = m.params
    client, vm, facts, snap, text, snap_text = ctx
    capacity = disk["capacity_bytes"]
    result = dict(key=disk["key"], disk=dict((k, disk.get(k)) for k in DISK_KEYS), capacity=capacity,
                  change_id=change_id, snapshot_change_id=disk["change_id"], full_sync_required=False, reason=None,
                  pages=0, extent_file=None)
    metadata = {
        "capacity": capacity,
        "source": "vmware://%s/%s/disk-%d@%s" % (client.hostname, facts["instance_uuid"] or facts["moid"],
                                                 disk["key"], snap["moid"]),
        "change_id": change_id,
        "snapshot_change_id": disk["change_id"],
        "disk_key": disk["key"],
        "vm": facts["name"],
        "vm_instance_uuid": facts["instance_uuid"],
        "snapshot": snap["moid"],
    }
    writer = None
    try:
        if extent_file:
            writer = ExtentFileWriter(extent_file, metadata=dict(metadata, full_sync_required="false"))
        collector = ExtentCollector(capacity, gap=p["coalesce_gap"], max_results=p["max_results"],
                                    sink=writer.add if writer else None)
        check_change_id_lineage(change_id, disk, snap_text)
        what = "querying the changed areas of disk %d of VM %s at snapshot %s" % (disk["key"], text, snap_text)
        for _start, _length, areas in iter_changed_areas(client, vm, snap["ref"], disk["key"], capacity, change_id,
                                                         what):
            result["pages"] += 1
            for area_start, area_length in areas:
                collector.add(area_start, area_length)
        collector.finish()
    except FullSyncRequired as full:
        if writer is not None:
            writer.abort()
            writer = ExtentFileWriter(extent_file, metadata=dict(metadata, full_sync_required="true",
                                                                 reason=full.reason))
        collector = ExtentCollector(capacity, max_results=p["max_results"], sink=writer.add if writer else None)
        collector.add(0, capacity)
        collector.finish()
        result.update(full_sync_required=True, reason=full.reason)
        if full.fault is not None:
            result["fault"] = fault_name(full.fault)
        m.warn("full copy required for disk %d of VM %s: %s" % (disk["key"], text, full.reason))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result.update(extents=collector.kept, count=collector.count, changed_bytes=collector.bytes,
                  extents_truncated=collector.count > len(collector.kept))
    return result, writer


def run(m):
    requests = _requests(m)
    m.connect()
    client = m.client
    vm = m.find_vm()
    record = read_vm(client, vm)
    text = vm_label(record)
    facts = vm_facts(record, include_disks=False)
    snapshots = read_snapshots(client, vm, facts["name"])
    snap = find_snapshot(snapshots, m.params["snapshot"], text)
    snap_text = "'%s' (%s)" % (snap["name"], snap["moid"])
    disks = snapshot_disks(client, snap["ref"], "reading the disks of snapshot %s of VM %s" % (snap_text, text))
    live = describe_disks(record["props"].get("config.hardware.device") or [])
    picked = [_pick_disk(key, disks, live, text, snap_text) for key, _cid, _file in requests]
    ctx = (client, vm, facts, snap, text, snap_text)
    results, writers = [], []
    try:
        for disk, (_key, change_id, extent_file) in zip(picked, requests):
            result, writer = _query(m, ctx, disk, change_id, extent_file)
            results.append(result)
            writers.append(writer)
    except BaseException:
        for writer in writers:
            if writer is not None:
                writer.abort()
        raise
    # every query succeeded: the extent files appear now, all of them
    for result, writer in zip(results, writers):
        if writer is not None:
            result["extent_file"] = writer.close()["path"]
    common = dict(changed=False, vm=dict((k, facts.get(k)) for k in VM_KEYS), snapshot=snapshot_public(snap))
    if m.params["disks"] is None:
        result = results[0]
        del result["key"]
        m.exit(**dict(common, **result))
    m.exit(**dict(common, disks=results, full_sync_required=any(r["full_sync_required"] for r in results),
                  changed_bytes=sum(r["changed_bytes"] for r in results)))


def main():
    m = VmwareModule(
        argument_spec=dict(
            snapshot=dict(type="str", required=True),
            disk_key=dict(type="int", no_log=False),
            change_id=dict(type="str"),
            extent_file=dict(type="path"),
            disks=dict(type="list", elements="dict", options=dict(
                key=dict(type="int", required=True, no_log=False),
                change_id=dict(type="str", required=True),
                extent_file=dict(type="path"),
            )),
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
