#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmware_migration_snapshot
short_description: Create or remove the named snapshot of a warm-migration or backup round and read its change IDs
version_added: 0.1.0
description:
  - V(present) makes sure the VM has a snapshot called O(snapshot_name) and returns, for every disk, the
    C(changeId), capacity and backing file B(at that snapshot). These are the values that the next round's
    changed-area query (M(cbt.toolkit.vmware_cbt_changes)) starts from. An existing snapshot of that name is
    reported unchanged, which makes the module idempotent. If reading a snapshot this task created fails, the
    snapshot is removed again and the task fails.
  - With O(changes), V(present) also asks vSphere which areas of the listed disks changed since their change
    IDs, at this snapshot, in the same call, as M(cbt.toolkit.vmware_cbt_changes) does with its
    O(cbt.toolkit.vmware_cbt_changes#module:disks) option. A round then needs one task for the snapshot and its
    changed areas. The listed disks are checked against the
    VM before a snapshot is created. If the query fails, a snapshot this task created is removed again and the
    task fails; no extent file is written. If that removal fails too, the error says so and names the snapshot;
    remove it by hand or with O(state=absent).
  - V(absent) removes the snapshot with consolidation. It waits for the removal task and, when vCenter still
    flags the VM for consolidation, for a disk consolidation too, so that the next snapshot never overlaps a
    running consolidation (the Forklift MTV-1656 data corruption).
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
extends_documentation_fragment:
  - cbt.toolkit.vmware
  - cbt.toolkit.vmware.vm_identity
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the snapshot would be created or removed; nothing changes.
  diff_mode:
    support: full
  platform:
    platforms: vmware
options:
  state:
    description:
      - Whether the snapshot should exist.
    type: str
    choices: [present, absent]
    default: present
  snapshot_name:
    description:
      - Name of the snapshot. With O(state=absent), a snapshot managed object ID (for example V(snapshot-42)) is
        accepted too.
      - Two snapshots with this name on the VM are an error (they are listed); use the moid to remove one.
    type: str
    required: true
  description:
    description:
      - Description of a new snapshot.
    type: str
    default: Warm migration / incremental backup round (cbt.toolkit)
  quiesce:
    description:
      - Quiesce the guest file systems through VMware Tools (needs a powered-on VM with Tools running).
    type: bool
    default: false
  memory:
    description:
      - Include the VM's memory. Not needed for disk copies, and it makes the snapshot slow and large.
    type: bool
    default: false
  task_timeout:
    description:
      - Seconds to wait for the snapshot task and the consolidation.
      - When creating the snapshot takes longer, or the run is interrupted while it waits, the task is
        cancelled and waited for again (at most 30 seconds more); a snapshot it made anyway is
        removed, so the failed task leaves no snapshot behind. The error message says what happened,
        including when vCenter might still create the snapshot (then run again with O(state=absent)).
    type: int
    default: 3600
  changes:
    description:
      - With O(state=present), the changed areas of these disks at the snapshot (see RV(changes)).
      - In check mode they are queried only when the snapshot already exists.
    type: dict
    suboptions:
      disks:
        description:
          - The disks, each with the change ID of the previous round (or V(*) for all allocated areas). Each key
            and each extent file may appear once.
        type: list
        elements: dict
        required: true
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
            description:
              - Write the disk's extents to this file in the collection's extent format (see
                M(cbt.toolkit.vmware_cbt_changes)).
            type: path
      coalesce_gap:
        description: Merge extents separated by at most this many bytes.
        type: int
        default: 0
      max_results:
        description: Return at most this many extents per disk (the extent files hold all of them).
        type: int
        default: 1000
notes:
  - Needs C(VirtualMachine.State.CreateSnapshot) and C(VirtualMachine.State.RemoveSnapshot).
  - Run M(cbt.toolkit.vmware_cbt) first; a disk whose C(changeId) is empty at the snapshot cannot be queried for
    changed areas (the module warns).
seealso:
  - module: cbt.toolkit.vmware_cbt
  - module: cbt.toolkit.vmware_cbt_changes
"""

EXAMPLES = r"""
- name: Snapshot of round 3
  cbt.toolkit.vmware_migration_snapshot:
    name: app01
    snapshot_name: migration-round-3
  register: snap

- name: Changed areas of disk 2000 since round 2
  cbt.toolkit.vmware_cbt_changes:
    name: app01
    snapshot: "{{ snap.snapshot.moid }}"
    disk_key: 2000
    change_id: "{{ previous_change_ids['2000'] }}"
    extent_file: /var/lib/migration/app01-2000-round3.extents

- name: Snapshot of round 4 and the changed areas of both disks since round 3, in one task
  cbt.toolkit.vmware_migration_snapshot:
    name: app01
    snapshot_name: migration-round-4
    changes:
      disks:
        - key: 2000
          change_id: "{{ snap.change_ids['2000'] }}"
          extent_file: /var/lib/migration/app01-2000-round4.extents
        - key: 2001
          change_id: "{{ snap.change_ids['2001'] }}"
          extent_file: /var/lib/migration/app01-2001-round4.extents
      max_results: 0
  register: snap4

- name: Remove the round 2 snapshot and wait for consolidation
  cbt.toolkit.vmware_migration_snapshot:
    name: app01
    snapshot_name: migration-round-2
    state: absent
"""

RETURN = r"""
vm:
  description: The VM (name, moid, instance_uuid, bios_uuid, power_state, hw_version, path).
  returned: when the VM was found
  type: dict
cbt_enabled:
  description: Whether CBT is on for the VM.
  returned: when the VM was found
  type: bool
snapshot:
  description: The snapshot (null when absent).
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: always}
    moid: {description: Managed object ID (null in check mode for a snapshot not yet created)., type: str, returned: always}
    description: {description: Description., type: str, returned: always}
    create_time: {description: Creation time (ISO 8601)., type: str, returned: always}
    quiesced: {description: Whether the guest was quiesced., type: bool, returned: always}
  sample: {name: migration-round-3, moid: snapshot-88, create_time: "2025-08-12T10:15:00+00:00", quiesced: false}
disks:
  description: Every disk at the snapshot (with O(state=present)).
  returned: when O(state=present) and not in check mode for a new snapshot
  type: list
  elements: dict
  contains:
    key: {description: Device key., type: int, returned: always, sample: 2000}
    label: {description: Device label., type: str, returned: always}
    change_id: {description: changeId at the snapshot (the base for the next round)., type: str, returned: always}
    capacity_bytes: {description: Capacity at the snapshot., type: int, returned: always}
    file: {description: Backing file at the snapshot., type: str, returned: always}
    eligible: {description: Whether CBT can track the disk., type: bool, returned: always}
    reason: {description: Why not., type: str, returned: always}
change_ids:
  description: "Map of disk key (as a string) to changeId at the snapshot."
  returned: when O(state=present)
  type: dict
  sample: {"2000": "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81"}
consolidated:
  description: With O(state=absent), whether an extra disk consolidation ran after the removal.
  returned: when O(state=absent) and a snapshot was removed
  type: bool
changes:
  description:
    - The changed areas asked for with O(changes), as M(cbt.toolkit.vmware_cbt_changes) returns them with its
      O(cbt.toolkit.vmware_cbt_changes#module:disks) option. Null in check mode for a snapshot not yet created.
  returned: when O(changes) is given
  type: dict
  contains:
    disks:
      description: One entry per disk of O(changes.disks), in order (see RV(cbt.toolkit.vmware_cbt_changes#module:disks)).
      type: list
      elements: dict
      returned: always
    full_sync_required:
      description: Whether any of the disks needs a full copy.
      type: bool
      returned: always
    changed_bytes:
      description: Sum of the disks' changed bytes.
      type: int
      returned: always
    query_seconds:
      description: Seconds the changed-area queries took (part of the task's time, after the snapshot).
      type: float
      returned: always
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_module import VmwareModule
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareError,
    VmwarePermissionDenied,
    VmwareUnreachable,
    unfinished_task,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import (
    CbtError,
    ConsolidationFailed,
    PRIV_CREATE_SNAPSHOT,
    PRIV_REMOVE_SNAPSHOT,
    SETTLE_TIMEOUT,
    append_message,
    consolidate_if_needed,
    create_snapshot,
    read_snapshots,
    remove_snapshot,
    settle_task,
    snapshot_disks,
    snapshot_public,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_changes import (
    DISK_REQUEST_OPTIONS,
    parse_requests,
    pick_disk,
    query_changes,
    summary,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import read_vm, vm_facts, vm_label

VM_KEYS = ("name", "moid", "instance_uuid", "bios_uuid", "power_state", "hw_version", "path")
DISK_KEYS = ("key", "label", "change_id", "capacity_bytes", "file", "backing", "disk_mode", "eligible", "reason",
             "controller_type", "controller_bus", "unit_number", "device_node")


def _lookup(snapshots, ident, text, allow_moid):
    """The snapshot named ``ident`` (or with that moid when ``allow_moid``), None if absent."""
    if allow_moid:
        by_moid = [s for s in snapshots if s["moid"] == ident]
        if by_moid:
            return by_moid[0]
    matches = [s for s in snapshots if s["name"] == ident]
    if len(matches) > 1:
        listed = ", ".join("%s (created %s)" % (s["moid"], s["create_time"]) for s in matches)
        raise CbtError("VM %s has %d snapshots named '%s': %s; remove the extra ones by moid (state: absent, "
                       "snapshot_name: <moid>)" % (text, len(matches), ident, listed), kind="ambiguous")
    return matches[0] if matches else None


def run(m):
    p = m.params
    name = p["snapshot_name"]
    if not name or not name.strip():
        m.module.fail_json(msg="snapshot_name must not be empty", error_kind="invalid_argument")
    if p["task_timeout"] <= 0:
        m.module.fail_json(msg="task_timeout must be a positive number of seconds, got %d" % p["task_timeout"],
                           error_kind="invalid_argument")
    wanted = p["changes"]
    if wanted is not None and p["state"] != "present":
        m.module.fail_json(msg="changes is only for state=present (the changed areas at a new or existing snapshot); "
                               "remove it or use state=present", error_kind="invalid_argument")
    requests = (parse_requests(wanted["disks"], wanted["coalesce_gap"], wanted["max_results"], what="changes.disks")
                if wanted is not None else [])
    m.connect()
    client = m.client
    vm = m.find_vm()
    record = read_vm(client, vm)
    text = vm_label(record)
    facts = vm_facts(record)
    live_disks = describe_disks(record["props"].get("config.hardware.device") or [])
    for request in requests:  # before a snapshot is taken
        pick_disk(request.key, live_disks, live_disks, text, "in its current configuration")
    snapshots = read_snapshots(client, vm, facts["name"])
    existing = _lookup(snapshots, name, text, allow_moid=p["state"] == "absent")
    before_name = existing["name"] if existing else None
    result = dict(changed=False, vm=dict((k, facts.get(k)) for k in VM_KEYS), cbt_enabled=facts["cbt_enabled"],
                  snapshot=snapshot_public(existing) if existing else None)
    if requests:
        result["changes"] = None
    if p["state"] == "present":
        created_now = False
        if existing is None:
            result["changed"] = True
            if m.check_mode:
                result["snapshot"] = {"name": name, "moid": None, "description": p["description"],
                                      "create_time": None, "quiesced": p["quiesce"]}
            else:
                try:
                    ref = create_snapshot(client, vm, name, p["description"], p["memory"], p["quiesce"],
                                          p["task_timeout"], text)
                except BaseException as exc:
                    note = _settle_unfinished_create(m, vm, text, name, exc)
                    if note and isinstance(exc, VmwareError):
                        append_message(exc, note)
                    raise
                existing = {"ref": ref, "name": name, "moid": getattr(ref, "_moId", None)}
                created_now = True
        if existing is not None:
            try:
                _present(m, vm, text, facts, existing, live_disks, requests, created_now, result)
            except BaseException as exc:
                if not created_now:
                    raise
                if not isinstance(exc, VmwareError) and isinstance(exc, Exception):
                    exc = CbtError("reading snapshot '%s' of VM %s after creating it failed: %s: %s"
                                   % (name, text, type(exc).__name__, exc), kind="snapshot_failed")
                note = _remove_created(m, vm, text, existing)
                if isinstance(exc, VmwareError):
                    append_message(exc, note)
                raise exc
        diff_after = {"snapshot": name}
    else:
        if existing is not None:
            result["changed"] = True
            if not m.check_mode:
                what = "removing snapshot '%s' (%s) of VM %s" % (existing["name"], existing["moid"], text)
                try:
                    client.run_task(what, existing["ref"].RemoveSnapshot_Task, removeChildren=False, consolidate=True,
                                    timeout=p["task_timeout"], expected_privilege=PRIV_REMOVE_SNAPSHOT)
                except VmwarePermissionDenied:
                    raise
                except VmwareError as exc:
                    raise CbtError(exc.msg, kind="snapshot_remove_failed", fault=exc.fault)
                result["consolidated"] = consolidate_if_needed(client, vm, p["task_timeout"], text)
        diff_after = {"snapshot": None}
    if m.diff_mode:
        result["diff"] = dict(before={"snapshot": before_name}, after=diff_after,
                              before_header=facts["path"], after_header=facts["path"])
    m.exit(**result)


def _present(m, vm, text, facts, snap, live_disks, requests, created_now, result):
    """The snapshot, its disks and change IDs and, with ``changes``, the changed areas at it,
    into ``result``. ``snap`` of a snapshot this task created has only ref, name and moid."""
    name = snap["name"]
    if created_now:
        created = [s for s in read_snapshots(m.client, vm, facts["name"]) if s["moid"] == snap["moid"]]
        if created:
            snap.update(created[0])
        result["snapshot"] = snapshot_public(created[0]) if created else {"name": name, "moid": snap["moid"]}
    disks = snapshot_disks(m.client, snap["ref"], "reading the disks of snapshot '%s' of VM %s" % (name, text))
    result["disks"] = [dict((k, d.get(k)) for k in DISK_KEYS) for d in disks]
    result["change_ids"] = dict((str(d["key"]), d["change_id"]) for d in disks if d["eligible"])
    missing = [str(d["key"]) for d in disks if d["eligible"] and not d["change_id"]]
    if missing:
        m.warn("disk(s) %s of VM %s have no changeId at snapshot '%s': CBT is off or not initialised there, so "
               "changed-area queries against this snapshot need a full copy. Run cbt.toolkit.vmware_cbt first"
               % (", ".join(missing), text, name))
    if requests:
        result["changes"] = _changes(m, vm, text, facts, snap, disks, live_disks, requests)


def _changes(m, vm, text, facts, snap, disks, live_disks, requests):
    """The changed areas at ``snap``."""
    wanted = m.params["changes"]
    try:
        return summary(*query_changes(m.client, vm, text, facts, snap, disks, live_disks, requests,
                                      wanted["coalesce_gap"], wanted["max_results"], m.warn))
    except VmwareError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise CbtError("asking for the changed areas at snapshot '%s' of VM %s failed: %s: %s"
                       % (snap["name"], text, type(exc).__name__, exc), kind="query_failed")


def _settle_unfinished_create(m, vm, text, name, error):
    """The creation of snapshot ``name`` ended with ``error``. When it ended before its task did
    (timeout, interruption), cancel the task, wait for it, and remove a snapshot it made, so a
    failed task leaves no snapshot behind. Returns what to add to the error (None: nothing)."""
    task = unfinished_task(error)
    if task is None:
        if isinstance(error, (VmwareUnreachable, KeyboardInterrupt, SystemExit)):
            return ("vCenter may have started creating snapshot '%s' before this run stopped: look for it in vCenter, "
                    "or run this task again with state: absent to remove it" % name)
        return None  # the task ended in error: vCenter made no snapshot
    what = "creating snapshot '%s' of VM %s" % (name, text)
    try:
        ref, finished = settle_task(m.client, task, what, min(m.params["task_timeout"], SETTLE_TIMEOUT),
                                    PRIV_CREATE_SNAPSHOT)
        if ref is None and not finished:
            return ("its creation task (%s) was still running when this run stopped waiting for it and could not be "
                    "cancelled, so vCenter may still create snapshot '%s': run this task again with state: absent "
                    "to remove it" % (getattr(task, "_moId", "?"), name))
        if ref is None:  # cancelled or failed; look once for a snapshot it may have left anyway
            left = [s for s in read_snapshots(m.client, vm) if s["name"] == name]
            if not left:
                return "its creation task was cancelled and no snapshot '%s' was created" % name
            ref = left[0]["ref"]
    except VmwareError as exc:
        return ("checking whether the unfinished creation task made snapshot '%s' failed too (%s): look for it in "
                "vCenter, or run this task again with state: absent" % (name, exc.msg))
    return _remove_created(m, vm, text, {"ref": ref, "name": name, "moid": getattr(ref, "_moId", None)})


def _remove_created(m, vm, text, snap):
    """Remove the snapshot this task created after a later step failed; returns what to add to
    that step's error. A failing removal never replaces that error."""
    try:
        error = remove_snapshot(m.client, vm, snap["ref"], snap["name"], m.params["task_timeout"], text)
    except Exception as exc:  # pylint: disable=broad-except
        error = exc
    if error is None:
        return "the snapshot this task created was removed again"
    if isinstance(error, ConsolidationFailed):
        return ("the snapshot this task created was removed again, but consolidating the VM's disks afterwards "
                "failed (%s): consolidate them in vCenter (Snapshots > Consolidate) before the next snapshot is taken"
                % error.reason)
    return ("in addition the snapshot '%s' (%s) this task created could not be removed (%s): remove it by hand or run "
            "this task again with state: absent" % (snap["name"], snap["moid"], getattr(error, "msg", None) or error))


def main():
    m = VmwareModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            snapshot_name=dict(type="str", required=True),
            description=dict(type="str", default="Warm migration / incremental backup round (cbt.toolkit)"),
            quiesce=dict(type="bool", default=False),
            memory=dict(type="bool", default=False),
            task_timeout=dict(type="int", default=3600),
            changes=dict(type="dict", options=dict(
                disks=dict(type="list", elements="dict", required=True, options=DISK_REQUEST_OPTIONS),
                coalesce_gap=dict(type="int", default=0),
                max_results=dict(type="int", default=1000),
            )),
        ),
        supports_check_mode=True,
    )
    m.run(run)


if __name__ == "__main__":
    main()
