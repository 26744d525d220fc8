#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cbt_checkpoint_info
short_description: Read change-point checkpoints and their history
version_added: 0.1.0
description:
  - Reads what M(cbt.toolkit.cbt_checkpoint) stored - the last verified change point per source and target,
    and optionally the history of advances.
  - Never writes; a missing SQLite file or ConfigMap reads as an empty store.
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
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  source_id:
    description:
      - Only checkpoints of this source. Without it, all checkpoints are listed.
    type: str
  target:
    description:
      - Only checkpoints of this target.
    type: str
  history:
    description:
      - Also return the history (newest first). Needs O(source_id) and O(target).
    type: bool
    default: false
  history_count:
    description:
      - How many history events to return; V(0) returns all.
    type: int
    default: 20
"""

EXAMPLES = r"""
- name: Where did the last sync of this disk stop?
  cbt.toolkit.cbt_checkpoint_info:
    source_id: "vmware:{{ vm_uuid }}:disk-2000"
    target: /dev/vg0/vm1-disk0
  register: last

- name: Full sync when there is no checkpoint, else incremental from it
  ansible.builtin.set_fact:
    cbt_start_change_id: "{{ last.checkpoint.change_id if last.checkpoint else '*' }}"

- name: Audit trail of a replica
  cbt.toolkit.cbt_checkpoint_info:
    backend: postgresql
    postgresql_dsn: "host=db.example.com dbname=cbt user=cbt_ro"
    source_id: "pvc:prod/db-data"
    target: "backup-cluster/db-data"
    history: true
    history_count: 50
  register: audit
"""

RETURN = r"""
checkpoint:
  description: The checkpoint of O(source_id) and O(target), or null when none is stored.
  returned: when O(source_id) and O(target) are given
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
      description: Bytes copied to reach it, as recorded.
      type: int
    updated_at:
      description: UTC time of the advance (ISO 8601).
      type: str
    metadata:
      description: Metadata recorded with it.
      type: dict
checkpoints:
  description: All matching checkpoints (same fields as RV(checkpoint)).
  returned: always
  type: list
  elements: dict
history:
  description: History events, newest first - C(action) (V(advance) or V(delete)), C(change_id),
    C(previous_change_id), C(generation), C(bytes), C(recorded_at), C(metadata).
  returned: when O(history=true)
  type: list
  elements: dict
backend:
  description: The backend read (without credentials).
  returned: always
  type: str
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_module import (
    checkpoint_module,
    opened_store,
)


def main():
    module = checkpoint_module(dict(
        source_id=dict(type="str"),
        target=dict(type="str"),
        history=dict(type="bool", default=False),
        history_count=dict(type="int", default=20),
    ))
    p = module.params
    if p["history"] and not (p["source_id"] and p["target"]):
        module.fail_json(msg="history: true needs source_id and target")
    if p["history_count"] < 0:
        module.fail_json(msg="history_count must be 0 (all) or positive, got %d" % p["history_count"])
    # read-only: never create a SQLite file or tables (same as check mode)
    with opened_store(module, check_mode=True) as store:
        result = {"changed": False, "backend": store.describe()}
        result["checkpoints"] = store.list(p["source_id"], p["target"])
        if p["source_id"] and p["target"]:
            result["checkpoint"] = result["checkpoints"][0] if result["checkpoints"] else None
        if p["history"]:
            result["history"] = store.history(p["source_id"], p["target"], p["history_count"])
        module.exit_json(**result)


if __name__ == "__main__":
    main()
