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
    type: str
    required: true
  target:
    description:
      - Identifies the replica the change point refers to (a path, volume, bucket prefix...). Together with
        O(source_id) it is the key.
    type: str
    required: true
  state:
    description:
      - V(present) records O(change_id) as the current change point (advance).
      - V(absent) removes the current checkpoint (the history keeps a C(delete) event), for example to force
        the next sync to be a full one.
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
      - The generation the sync started from; V(0) means no checkpoint exists yet. Can be combined with
        O(expected_previous).
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
    type: int
  metadata:
    description:
      - Free-form data stored with the checkpoint and its history event (snapshot names, digests, job ids).
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
  returned: always
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
      description: Counts advances, starting at 1.
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
  returned: always
  type: dict
backend:
  description: The backend used (without credentials).
  returned: always
  type: str
  sample: "sqlite:/root/.local/state/cbt.toolkit/checkpoints.sqlite"
current:
  description: On a conflict, what the store holds (in the failure result).
  returned: on conflict
  type: dict
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_module import (
    checkpoint_module,
    opened_store,
)


def _summary(record):
    if record is None:
        return {}
    keys = ("source_id", "target", "change_id", "previous_change_id", "generation", "bytes", "metadata")
    return dict((k, record.get(k)) for k in keys)


def main():
    module = checkpoint_module(
        dict(
            source_id=dict(type="str", required=True),
            target=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            change_id=dict(type="str"),
            expected_previous=dict(type="str"),
            expected_generation=dict(type="int"),
            force=dict(type="bool", default=False),
            bytes=dict(type="int"),
            metadata=dict(type="dict"),
        ),
        required_if=[("state", "present", ("change_id",))],
    )
    p = module.params
    if p["expected_generation"] is not None and p["expected_generation"] < 0:
        module.fail_json(msg="expected_generation must be 0 (no checkpoint yet) or a positive generation, got %d"
                         % p["expected_generation"])
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
