# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-datastore round slots of the vm_migration role (tasks/slots_acquire.yml and
slots_release.yml), run by real ansible-playbook: a wait that gives up keeps no slot."""

from __future__ import annotations

import json
import time

from vmm_helpers import area_dir

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Take the slots
      ansible.builtin.include_role:
        name: cbt.toolkit.vm_migration
        tasks_from: slots_acquire.yml
    - name: Show them
      ansible.builtin.debug:
        var: _vm_migration_slots
"""

RELEASE = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Give them back
      ansible.builtin.include_role:
        name: cbt.toolkit.vm_migration
        tasks_from: slots_release.yml
"""


def _vars(lock_dir):
    return {
        "_vm_migration_disks": [{"key": 2000, "datastore": "ds A"}, {"key": 2001, "datastore": "dsB"},
                                {"key": 2002, "datastore": "ds A"}],
        "_vm_migration_label": "'app01' (/DC0/vm/app01)",
        "vm_migration_lock_dir": str(lock_dir),
        "vm_migration_datastore_concurrency": 1,
        "vm_migration_slot_wait_timeout": 2,
        "vm_migration_slot_poll_interval": 1,
    }


def _held(lock_dir):
    return sorted(str(p.relative_to(lock_dir)) for p in lock_dir.glob("*/slot-*"))


def test_a_wait_that_gives_up_keeps_no_slot(run_playbook):
    lock_dir = area_dir("slots") / "locks"
    (lock_dir / "dsB" / "slot-1").mkdir(parents=True)
    (lock_dir / "dsB" / "slot-1" / "owner").write_text("other-vm\n")

    began = time.monotonic()
    run = run_playbook(PLAY, extra_vars=_vars(lock_dir))
    assert run.rc != 0, run
    failed = [r for r in run.task_results() if r.get("failed")]
    assert len(failed) == 1, run
    msg = failed[0]["msg"]
    assert msg.startswith("MIGRATION FAILURE: VM 'app01' (/DC0/vm/app01):"), msg
    assert "no free round slot on datastore dsB after 2 s" in msg and "held by: other-vm" in msg, msg
    assert time.monotonic() - began >= 2
    # the slot it took on "ds A" first was given back; the other VM's slot is untouched
    assert _held(lock_dir) == ["dsB/slot-1"]
    assert (lock_dir / "dsB" / "slot-1" / "owner").read_text() == "other-vm\n"

    # once dsB is free, both slots are taken (sorted order, one per datastore) and given back
    (lock_dir / "dsB" / "slot-1" / "owner").unlink()
    (lock_dir / "dsB" / "slot-1").rmdir()
    run = run_playbook(PLAY, extra_vars=_vars(lock_dir))
    assert run.rc == 0, run
    shown = [r for r in run.task_results() if r["_task"] == "Show them"][0]["_vm_migration_slots"]
    assert shown == [str(lock_dir / "ds_A" / "slot-1"), str(lock_dir / "dsB" / "slot-1")], json.dumps(shown)
    assert _held(lock_dir) == ["dsB/slot-1", "ds_A/slot-1"]
    assert (lock_dir / "ds_A" / "slot-1" / "owner").read_text() == "localhost\n"
    run = run_playbook(RELEASE, extra_vars={"_vm_migration_slots": shown})
    assert run.rc == 0, run
    assert _held(lock_dir) == []
