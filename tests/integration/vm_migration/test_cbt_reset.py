# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CBT is reset between two runs of a migration (a host crash: "Change tracking invalid;
reinitializing", new CBT UUIDs): the next round cannot trust the checkpoint's changeId, so it
copies the whole disk (comparing it with what the target holds), says why in the report and the
events, and ends with the target equal to the source; the round after it is incremental again,
from the new epoch."""

from __future__ import annotations

import pytest

from vmm_helpers import MiB, area_dir, by_vm, checkpoints, explain, migrate, sha256_file, write_inventory

pytestmark = pytest.mark.slow

SIZE = 32 * MiB
WARM = {"vm_migration_max_rounds": 1, "vm_migration_cutover": False}


def _round(out, cbtsim, name):
    run, report = migrate(cbtsim, out, out / "inventory.yml", WARM)
    assert run.rc == 0 and by_vm(report)[name]["status"] == "warm", explain(run, report)
    vm = by_vm(report)[name]
    return vm, vm["rounds"][-1]["disks"][0]


def test_a_cbt_reset_between_runs_gives_one_logged_full_round(cbtsim):
    out = area_dir("cbt-reset")
    name = "rz-app"
    vm = cbtsim.create_vm(name, cbt_enabled=True, disks=[{"size": SIZE, "fill": {"random_percent": 50, "seed": 21}}])
    moid, source = vm["moid"], vm["disks"][0]["path"]
    write_inventory(out / "inventory.yml", {name: {}})

    _vm, first = _round(out, cbtsim, name)
    assert first["kind"] == "full" and first["full_sync_reason"] == ""
    (cp1,) = checkpoints(out).values()
    old_uuid = cp1["change_id"].rsplit("/", 1)[0]

    cbtsim.invalidate_ctk(moid)
    cbtsim.write(moid, 2000, 3 * MiB, 2 * MiB, seed=5)
    new_uuid = cbtsim.disk(name, 2000)["change_id"].rsplit("/", 1)[0]
    assert new_uuid != old_uuid

    report_vm, reset = _round(out, cbtsim, name)
    assert reset["kind"] == "full" and reset["mode"] == "compare", reset
    assert "another CBT epoch" in reset["full_sync_reason"] and old_uuid in reset["full_sync_reason"], reset
    assert any(e["level"] == "warning" and "full copy (mode compare)" in e["message"]
               and "another CBT epoch" in e["message"] for e in report_vm["events"]), report_vm["events"]
    # the whole disk was compared, only the blocks that differ were written
    assert reset["read_bytes"] >= SIZE and 0 < reset["copied_bytes"] < SIZE
    (cp2,) = checkpoints(out).values()
    assert cp2["generation"] == 2 and cp2["change_id"].rsplit("/", 1)[0] == new_uuid
    assert sha256_file(reset["target"]) == sha256_file(source, SIZE)

    cbtsim.write(moid, 2000, 20 * MiB, 1 * MiB, seed=6)
    _vm, after = _round(out, cbtsim, name)
    assert after["kind"] == "incremental" and after["mode"] == "extents" and after["full_sync_reason"] == "", after
    assert after["changed_bytes"] == 1 * MiB
    assert sha256_file(after["target"]) == sha256_file(source, SIZE)
