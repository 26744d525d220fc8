#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cbt_checkpoint
short_description: Record the last verified change point (VMware changeId, CSI snapshot) of a replicated disk
version_added: 0.1.0
description:
  - Keeps, per source disk and target, the last change point the target is verified to hold - a VMware
    C(changeId) or a CSI snapshot id/handle - with a generation number, the bytes copied, the time and free-form
    metadata. The next incremental sync starts from it.
  - Advancing is a compare-and-set on the previous value (O(expected_previous) or O(expected_generation)), so
    two pipelines cannot both advance from the same point; the loser fails with a conflict naming what is
    stored. Every change is kept in a history for audit.
  - Re-running a task that already advanced to O(change_id) changes nothing (C(changed=false)).
  - O(records) advances the checkpoints of several sources at once - for example every disk of a VM after a
    migration round - in one transaction (one ConfigMap update); if any of them conflicts, none is advanced and
    the failure names every conflict.
  - Backends - a SQLite file (default), PostgreSQL, or a Kubernetes ConfigMap. Use
    M(cbt.toolkit.cbt_checkpoint_info) to read.
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
requirements:
  - C(psycopg) (3) or C(psycopg2) for O(backend=postgresql).
  - C(kubernetes) for O(backend=configmap).
extends_documentation_fragment:
  - cbt.toolkit.checkpoint_backend
  - cbt.toolkit.k8s_auth
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the store and runs the compare-and-set check (a conflict fails in check mode too) without writing;
        a missing SQLite file is not created.
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  source_id:
    description:
      - Identifies the source disk, stable across snapshots - for example
        C(vmware:<VM instanceUuid>:disk-<device key>) or C(pvc:<namespace>/<name>) or a snapshot lineage id.
      - Required unless O(records) is given.
    type: str
  target:
    description:
      - Identifies the replica the change point refers to (a path, volume, bucket prefix...). Together with
        O(source_id) it is the key.
      - Required with O(source_id).
    type: str
  state:
    description:
      - V(present) records O(change_id) as the current change point (advance).
      - V(absent) removes the current checkpoint (the history keeps a C(delete) event), for example to force
        the next sync to be a full one.
      - The generation does not start again after V(absent) - the next checkpoint of the key continues from its
        highest generation, so an O(expected_generation) read before the removal never matches a checkpoint
        created after it.
    type: str
    choices: [present, absent]
    default: present
  change_id:
    description:
      - The new change point. Required with O(state=present).
    type: str
  expected_previous:
    description:
      - The change point the sync started from. The advance fails with a conflict unless the store holds exactly
        this value.
    type: str
  expected_generation:
    description:
      - The generation the sync started from; V(0) means no checkpoint exists (none was created yet, or it was
        removed with O(state=absent)). Can be combined with O(expected_previous).
      - Without O(expected_previous) and O(expected_generation) only a first checkpoint can be created.
    type: int
  force:
    description:
      - Skip the compare-and-set and overwrite whatever is stored. Only for repairs - it defeats the protection
        against two pipelines advancing at once.
    type: bool
    default: false
  bytes:
    description:
      - Bytes copied by the sync that reached this change point (for example RV(cbt.toolkit.block_sync#module:bytes_written)).
      - Between 0 and 2^63-1.
    type: int
  metadata:
    description:
      - Free-form data stored with the checkpoint and its history event (snapshot names, digests, job ids).
    type: dict
  records:
    description:
      - Several checkpoints to advance together, all or none, instead of O(source_id), O(target), O(change_id),
        O(expected_previous), O(expected_generation), O(bytes) and O(metadata). Only with O(state=present).
      - Each key (O(records[].source_id), O(records[].target)) may appear once. O(force) applies to all of them.
      - Records already at their O(records[].change_id) are left as they are, so a re-run changes nothing.
    type: list
    elements: dict
    suboptions:
      source_id:
        description: The source, as O(source_id).
        type: str
        required: true
      target:
        description: The target, as O(target).
        type: str
        required: true
      change_id:
        description: The new change point, as O(change_id).
        type: str
        required: true
      expected_previous:
        description: The change point the sync of this source started from, as O(expected_previous).
        type: str
      expected_generation:
        description: The generation the sync of this source started from, as O(expected_generation).
        type: int
      bytes:
        description: Bytes copied for this source, as O(bytes).
        type: int
      metadata:
        description: Free-form data for this checkpoint, as O(metadata).
        type: dict
"""

EXAMPLES = r"""
- name: Read the change point the last sync reached
  cbt.toolkit.cbt_checkpoint_info:
    source_id: "vmware:{{ vm_uuid }}:disk-2000"
    target: /dev/vg0/vm1-disk0
  register: last

- name: Copy the changes since then
  cbt.toolkit.block_sync:
    src: "nbd+unix:///?socket=/run/vm1-disk0.sock"
    dest: /dev/vg0/vm1-disk0
    extent_file: /tmp/vm1-disk0.extents
    verify: true
  register: sync

- name: Advance the checkpoint (fails if another pipeline advanced it meanwhile)
  cbt.toolkit.cbt_checkpoint:
    source_id: "vmware:{{ vm_uuid }}:disk-2000"
    target: /dev/vg0/vm1-disk0
    change_id: "{{ new_change_id }}"
    expected_previous: "{{ last.checkpoint.change_id }}"
    bytes: "{{ sync.bytes_written }}"
    metadata:
      snapshot: "{{ snapshot_name }}"
      target_digest: "{{ sync.verification.target_digest }}"

- name: Advance every disk of a VM after a migration round, all or none
  cbt.toolkit.cbt_checkpoint:
    records:
      - source_id: "vmware:{{ vm_uuid }}:disk-2000"
        target: /dev/vg0/vm1-disk0
        change_id: "{{ snap.disks['2000'].change_id }}"
        expected_generation: "{{ disk0_generation }}"
      - source_id: "vmware:{{ vm_uuid }}:disk-2001"
        target: /dev/vg0/vm1-disk1
        change_id: "{{ snap.disks['2001'].change_id }}"
        expected_generation: "{{ disk1_generation }}"

- name: First checkpoint of a new replica, kept in PostgreSQL (AWX job runs are ephemeral)
  cbt.toolkit.cbt_checkpoint:
    backend: postgresql
    postgresql_dsn: "host=db.example.com dbname=cbt user=cbt sslmode=verify-full"
    postgresql_password: "{{ vault_cbt_db_password }}"
    source_id: "pvc:prod/db-data"
    target: "s3://backups/prod/db-data"
    change_id: "{{ snapshot_handle }}"
    expected_generation: 0

- name: Keep checkpoints in a ConfigMap next to the volumes
  cbt.toolkit.cbt_checkpoint:
    backend: configmap
    configmap_namespace: backup-system
    configmap_name: cbt-checkpoints
    source_id: "pvc:prod/db-data"
    target: "backup-cluster/db-data"
    change_id: "{{ snapshot_handle }}"
    expected_previous: "{{ previous_snapshot_handle }}"
"""

RETURN = r"""
checkpoint:
  description: The stored checkpoint after the task (what would be stored, in check mode); null after O(state=absent).
  returned: unless O(records) is given
  type: dict
  contains:
    source_id:
      description: The source.
      type: str
    target:
      description: The target.
      type: str
    change_id:
      description: The current change point.
      type: str
    previous_change_id:
      description: The change point before it.
      type: str
    generation:
      description: Counts the advances of the key, starting at 1; it keeps counting after O(state=absent).
      type: int
    bytes:
      description: Bytes copied to reach it, as given.
      type: int
    updated_at:
      description: UTC time of the advance (ISO 8601).
      type: str
    metadata:
      description: The metadata given.
      type: dict
previous:
  description: The checkpoint before the task, or null.
  returned: unless O(records) is given
  type: dict
records:
  description: With O(records), each record's outcome, in the order given.
  returned: when O(records) is given
  type: list
  elements: dict
  contains:
    source_id:
      description: The source.
      type: str
    target:
      description: The target.
      type: str
    changed:
      description: Whether this checkpoint was advanced (would be, in check mode).
      type: bool
    checkpoint:
      description: The stored checkpoint after the task, with the fields of RV(checkpoint).
      type: dict
    previous:
      description: The checkpoint before the task, or null.
      type: dict
backend:
  description: The backend used (without credentials).
  returned: always
  type: str
  sample: "sqlite:/root/.local/state/cbt.toolkit/checkpoints.sqlite"
current:
  description: On a conflict, what the store holds (in the failure result); null for O(records) with several records (see RV(conflicts)).
  returned: on conflict
  type: dict
conflicts:
  description: On a conflict, every record that failed its compare-and-set, with what the store holds.
  returned: on conflict
  type: list
  elements: dict
  contains:
    source_id:
      description: The source.
      type: str
    target:
      description: The target.
      type: str
    current:
      description: What the store holds for it, or null.
      type: dict
    msg:
      description: Why it conflicts.
      type: str
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint import (
    CheckpointError,
    advance_item,
    check_batch,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_module import (
    checkpoint_module,
    opened_store,
)

MAX_BYTES = 2 ** 63 - 1  # the stores keep bytes as a signed 64-bit integer
SINGLE_OPTIONS = ("source_id", "target", "change_id", "expected_previous", "expected_generation", "bytes", "metadata")


def _summary(record):
    if record is None:
        return {}
    keys = ("source_id", "target", "change_id", "previous_change_id", "generation", "bytes", "metadata")
    return dict((k, record.get(k)) for k in keys)


def _check_generation(module, value, where):
    if value is not None and value < 0:
        module.fail_json(msg="%s must be 0 (no checkpoint yet) or a positive generation, got %d" % (where, value))


def _check_key(module, prefix, source_id, target):
    """``source_id`` and ``target`` name a checkpoint: neither may be blank or hold a NUL character."""
    for name, value, what in (("source_id", source_id, "the source (VM instance UUID and disk key, or the PVC or "
                               "snapshot lineage)"), ("target", target, "the copy the checkpoint belongs to")):
        if not value or not value.strip():
            module.fail_json(msg="%s%s is empty; it must name %s" % (prefix, name, what))
        if "\0" in value:
            module.fail_json(msg="%s%s %r holds a NUL character, which checkpoint keys cannot hold" % (prefix, name, value))


def _check_bytes(module, prefix, value):
    if value is not None and not 0 <= value <= MAX_BYTES:
        module.fail_json(msg="%sbytes must be between 0 and %d (the bytes the copy holds), got %d"
                             % (prefix, MAX_BYTES, value))


def _record_items(module):
    """The records as store items, validated before the store is opened."""
    items = []
    for index, rec in enumerate(module.params["records"]):
        where = "records[%d]" % index
        _check_key(module, where + ".", rec["source_id"], rec["target"])
        _check_bytes(module, where + ".", rec["bytes"])
        _check_generation(module, rec["expected_generation"], where + ".expected_generation")
        if not rec["change_id"]:
            module.fail_json(msg="%s.change_id (source %r) must not be empty" % (where, rec["source_id"]))
        items.append(advance_item(rec["source_id"], rec["target"], rec["change_id"], rec["bytes"], rec["metadata"],
                                  rec["expected_previous"], rec["expected_generation"]))
    try:
        check_batch(items)
    except CheckpointError as exc:
        module.fail_json(msg=str(exc))
    return items


def _advance_records(module, store, items):
    outcomes = store.advance_many(items, force=module.params["force"], check_mode=module.check_mode)
    records = [{"source_id": item["source_id"], "target": item["target"], "changed": changed, "checkpoint": record,
                "previous": previous} for item, (changed, record, previous) in zip(items, outcomes)]
    result = {"changed": any(r["changed"] for r in records), "records": records, "backend": store.describe()}
    if module._diff:
        # keyed by position, source and target: the callback shows a dict as a readable, line-by-line diff (the
        # position keeps two records apart whose names would read alike, such as 'a -> b' and 'a' with 'b -> c')
        keys = ["records[%d]: %s -> %s" % (i, r["source_id"], r["target"]) for i, r in enumerate(records)]
        result["diff"] = {"before": dict((k, _summary(r["previous"])) for k, r in zip(keys, records)),
                          "after": dict((k, _summary(r["checkpoint"])) for k, r in zip(keys, records))}
    return result


def main():
    module = checkpoint_module(
        dict(
            source_id=dict(type="str"),
            target=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            change_id=dict(type="str"),
            expected_previous=dict(type="str"),
            expected_generation=dict(type="int"),
            force=dict(type="bool", default=False),
            bytes=dict(type="int"),
            metadata=dict(type="dict"),
            records=dict(type="list", elements="dict", options=dict(
                source_id=dict(type="str", required=True),
                target=dict(type="str", required=True),
                change_id=dict(type="str", required=True),
                expected_previous=dict(type="str"),
                expected_generation=dict(type="int"),
                bytes=dict(type="int"),
                metadata=dict(type="dict"),
            )),
        ),
        required_if=[("state", "present", ("change_id", "records"), True)],
        required_one_of=[("source_id", "records")],
        required_together=[("source_id", "target")],
        mutually_exclusive=[("records", option) for option in SINGLE_OPTIONS],
    )
    p = module.params
    if p["records"] is not None:
        if p["state"] != "present":
            module.fail_json(msg="records advances checkpoints (state=present); remove checkpoints one at a time "
                                 "with source_id and target")
        if not p["records"]:
            module.fail_json(msg="records is empty; give at least one checkpoint to advance")
        items = _record_items(module)
        with opened_store(module, check_mode=module.check_mode) as store:
            module.exit_json(**_advance_records(module, store, items))
    _check_key(module, "", p["source_id"], p["target"])
    _check_bytes(module, "", p["bytes"])
    _check_generation(module, p["expected_generation"], "expected_generation")
    if p["state"] == "present" and not p["change_id"]:
        module.fail_json(msg="change_id must not be empty")
    with opened_store(module, check_mode=module.check_mode) as store:
        if p["state"] == "present":
            changed, record, previous = store.advance(
                p["source_id"], p["target"], p["change_id"], bytes_=p["bytes"], metadata=p["metadata"],
                expected_previous=p["expected_previous"], expected_generation=p["expected_generation"],
                force=p["force"], check_mode=module.check_mode)
        else:
            changed, previous = store.delete(p["source_id"], p["target"], expected_previous=p["expected_previous"],
                                             expected_generation=p["expected_generation"],
                                             check_mode=module.check_mode)
            record = None
        result = {"changed": changed, "checkpoint": record, "previous": previous, "backend": store.describe()}
        if module._diff:
            result["diff"] = {"before": _summary(previous), "after": _summary(record)}
        module.exit_json(**result)


if __name__ == "__main__":
    main()
