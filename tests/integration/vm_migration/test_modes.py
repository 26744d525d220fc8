# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two other job templates of the same playbook: CBT status (vm_migration_mode=preflight, read-only)
and CBT enablement (vm_migration_mode=enable_cbt, idempotent)."""

from __future__ import annotations

import pytest

from vmm_helpers import MiB, area_dir, by_vm, explain, host_stats, migrate, write_inventory

pytestmark = pytest.mark.slow


def test_status_then_enablement(cbtsim):
    out = area_dir("modes")
    cbtsim.create_vm("md-off", cbt_enabled=False, disks=[{"size": 8 * MiB, "fill": {"random_percent": 30, "seed": 1}}])
    cbtsim.create_vm("md-on", cbt_enabled=True, disks=[{"size": 8 * MiB}])
    inventory = write_inventory(out / "inventory.yml", {"md-off": {}, "md-on": {}})

    run, report = migrate(cbtsim, out, inventory, {"vm_migration_mode": "preflight"})
    assert run.rc == 0, explain(run, report)
    vms = by_vm(report)
    assert vms["md-off"]["status"] == "preflight_ok" and vms["md-on"]["status"] == "preflight_ok"
    assert vms["md-off"]["vm_info"]["cbt_enabled"] in (False, "False")
    assert vms["md-on"]["vm_info"]["cbt_initialized"] in (True, "True")
    assert vms["md-off"]["message"] == "preflight: CBT off, not initialised"
    assert all(host_stats(run, name).get("changed") == 0 for name in ("md-off", "md-on")), run.stats
    assert cbtsim.vm("md-off")["cbt_enabled"] is False and cbtsim.vm("md-off")["snapshots"] == []

    run, report = migrate(cbtsim, out, inventory, {"vm_migration_mode": "enable_cbt"})
    assert run.rc == 0, explain(run, report)
    vms = by_vm(report)
    assert vms["md-off"]["status"] == "cbt_enabled" and vms["md-off"]["cbt"]["action"] == "enabled"
    assert vms["md-on"]["cbt"]["action"] == "already_enabled"
    assert host_stats(run, "md-off").get("changed", 0) > 0 and host_stats(run, "md-on").get("changed") == 0
    state = cbtsim.vm("md-off")
    assert state["cbt_enabled"] is True and all(d["change_id"] for d in state["disks"])
    assert state["snapshots"] == [], "the initialisation snapshot must be removed"

    run, report = migrate(cbtsim, out, inventory, {"vm_migration_mode": "enable_cbt"})
    assert run.rc == 0, explain(run, report)
    assert by_vm(report)["md-off"]["cbt"]["action"] == "already_enabled"
    assert all(host_stats(run, name).get("changed") == 0 for name in ("md-off", "md-on")), run.stats
