# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The three ways the cutover stops a VM, through the real vmware.vmware.vm_powerstate module against
the simulator's guest model, in one migration run of three small VMs (one warm round each, the demo
workload writing 5 % after it, then the cutover):

* co-clean   VMware Tools running, the guest powers off 1 s after ShutdownGuest -> method shutdown-guest,
             a clean power-off (the simulator says so), CBT intact: the final round is incremental;
* co-hung    the guest accepts ShutdownGuest and never powers off, vm_migration_shutdown_timeout 2 ->
             vm_powerstate times out, the role powers the VM off and logs why;
* co-notools VMware Tools not running -> vm_powerstate refuses at once, the role powers the VM off and
             the warning names the reason;
* co-zero    vm_migration_shutdown_timeout 0 -> no guest shutdown attempted, powered off;
* co-off     already powered off before the run -> no warm round, left alone, final round only.

vm_powerstate polls the power state every 5 s after ShutdownGuest (state shutdown-guest, timeout N):
a guest that powers off within the timeout is seen at the next poll.
"""

from __future__ import annotations

import pytest

from vmm_helpers import MiB, WORKLOAD, area_dir, by_vm, explain, migrate, sha256_file, write_inventory

pytestmark = pytest.mark.slow

SIZE = 8 * MiB


@pytest.fixture(scope="module")
def cutover(cbtsim):
    out = area_dir("cutover")
    guests = {
        "co-clean": {"tools": "running", "shutdown_seconds": 1},
        "co-hung": {"tools": "running", "hung": True},
        "co-notools": {"tools": "not_running"},
        "co-zero": {"tools": "running"},
        "co-off": {"tools": "running"},
    }
    vms = {}
    for i, (name, guest) in enumerate(guests.items()):
        vms[name] = cbtsim.create_vm(name, cbt_enabled=True, guest=guest,
                                     power_state="poweredOff" if name == "co-off" else "poweredOn",
                                     disks=[{"size": SIZE, "fill": {"random_percent": 50, "seed": 40 + i}}])
    uuids = {name: vm["disks"][0]["ctk_uuid"] for name, vm in vms.items()}
    inventory = write_inventory(out / "inventory.yml", {
        "co-clean": {"vm_migration_shutdown_timeout": 60},
        "co-hung": {"vm_migration_shutdown_timeout": 2},
        "co-notools": {"vm_migration_shutdown_timeout": 60},
        "co-zero": {"vm_migration_shutdown_timeout": 0},
        "co-off": {"vm_migration_shutdown_timeout": 60},
    })
    run, report = migrate(cbtsim, out, inventory, {
        "vm_migration_max_rounds": 1,
        "vm_migration_after_round_tasks": str(WORKLOAD),
        "demo_workload_schedule": [0.05],
    })
    return {"run": run, "report": report, "vms": vms, "uuids": uuids, "out": out}


def _vm(cutover, name):
    assert cutover["report"] is not None, "no report was written:\n%s" % explain(cutover["run"])
    return by_vm(cutover["report"])[name]


def _migrated_exactly(cutover, cbtsim, name, warm=True):
    """Completed, final round from a snapshot after the stop, digests equal, target == the source disk."""
    vm = _vm(cutover, name)
    assert vm["status"] == "completed", explain(cutover["run"], cutover["report"])
    assert [rd["kind"] for rd in vm["rounds"]] == (["full", "final"] if warm else ["final"])
    final = vm["rounds"][-1]["disks"][0]
    if warm:
        assert int(final["changed_bytes"]) > 0, "the workload wrote after the warm round"
    (disk,) = vm["disks"]
    assert disk["digest_match"] in (True, "True") and disk["digest_source"] == disk["digest_target"]
    state = cbtsim.vm(name)
    assert state["power_state"] == "poweredOff" and state["snapshots"] == []
    assert sha256_file(disk["target"], SIZE) == sha256_file(state["disks"][0]["path"])
    return vm, final, state


def test_run_succeeds(cutover):
    assert cutover["run"].rc == 0, explain(cutover["run"], cutover["report"])


def test_guest_shutdown(cutover, cbtsim):
    vm, final, state = _migrated_exactly(cutover, cbtsim, "co-clean")
    assert vm["cutover"]["method"] == "shutdown-guest", vm["cutover"]
    assert "guest_shutdown_failure" not in vm["cutover"]
    assert state["guest"]["last_power_off"] == "guest_shutdown" and state["guest"]["guest_shutdowns"] == 1
    # a clean shutdown keeps CBT: the final round copies the changed areas only
    assert state["disks"][0]["ctk_uuid"] == cutover["uuids"]["co-clean"]
    assert (final["mode"], final["kind"]) == ("extents", "incremental"), final
    assert int(final["copied_bytes"]) < SIZE // 4
    assert not [ev for ev in vm["events"] if ev["level"] == "warning"], vm["events"]


def test_hung_guest_falls_back_to_power_off(cutover, cbtsim):
    vm, final, state = _migrated_exactly(cutover, cbtsim, "co-hung")
    assert vm["cutover"]["method"] == "power-off", vm["cutover"]
    assert vm["cutover"]["guest_shutdown_failure"] == "the guest did not power off within 2 s"
    assert state["guest"]["last_power_off"] == "power_off" and state["guest"]["guest_shutdowns"] == 0
    warnings = [ev["message"] for ev in vm["events"] if ev["level"] == "warning"]
    assert any("did not power off within 2 s" in m and "powered off" in m for m in warnings), vm["events"]
    assert (final["mode"], final["kind"]) == ("extents", "incremental"), "cbtsim keeps CBT across a power-off"


def test_tools_not_running_falls_back_to_power_off(cutover, cbtsim):
    vm, _final, state = _migrated_exactly(cutover, cbtsim, "co-notools")
    assert vm["cutover"]["method"] == "power-off", vm["cutover"]
    assert vm["cutover"]["guest_shutdown_failure"].startswith("VMware Tools are not running in the guest")
    assert state["guest"]["last_power_off"] == "power_off"
    warnings = [ev["message"] for ev in vm["events"] if ev["level"] == "warning"]
    assert any("VMware Tools are not running" in m for m in warnings), vm["events"]
    md = (cutover["out"] / "report" / "report.md").read_text()
    assert "Cutover: power-off" in md and "(no clean guest shutdown: VMware Tools are not running in the guest" in md


def test_no_shutdown_attempt_with_a_zero_timeout(cutover, cbtsim):
    vm, _final, state = _migrated_exactly(cutover, cbtsim, "co-zero")
    assert vm["cutover"]["method"] == "power-off", vm["cutover"]
    assert vm["cutover"]["guest_shutdown_failure"] == "not attempted (vm_migration_shutdown_timeout is 0)"
    assert state["guest"]["last_power_off"] == "power_off" and state["guest"]["guest_shutdowns"] == 0


def test_a_powered_off_vm_is_left_alone(cutover, cbtsim):
    vm, final, state = _migrated_exactly(cutover, cbtsim, "co-off", warm=False)
    assert vm["cutover"]["method"] == "already powered off", vm["cutover"]
    assert "last_power_off" not in state["guest"], "nothing powered the VM off"
    assert not [ev for ev in vm["events"] if ev["level"] == "warning"], vm["events"]
    assert final["kind"] == "full"
