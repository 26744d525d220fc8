# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vm_migration role end to end on the CBT simulator, in one migration run of seven VMs:

* e2e-web    CBT off, auto-enable on (default)  -> enabled by the gate; image-file target
* e2e-db     CBT on, two disks                   -> disk 2000 to an NBD export (qemu-nbd on an image),
                                                    disk 2001 to a loop block device pre-filled with junk,
                                                    named by a symlink under /dev as /dev/disk/by-id names are
* e2e-plain  CBT off, vm_migration_auto_cbt=false -> warned, stays off, rounds compare whole disks
* e2e-noperm CBT off, ReconfigVM_Task denied      -> "MIGRATION FAILURE: Could not enable CBT on VM ..."
* e2e-noinit CBT off, CreateSnapshot_Task fails   -> "MIGRATION FAILURE: CBT initialization failed for VM ..."
* e2e-indep  a normal disk and an independent one, the latter excluded -> migrated without it
* e2e-indep2 the same without the exclusion       -> refused before anything is changed

Between warm rounds the demo workload (the role's after-round hook) writes 10 %, then 2 % of each
disk through the simulator. Then a second run of the finished VMs must find nothing to do.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed.nbd import LoopDevice, NbdExport

from vmm_helpers import (MiB, WORKLOAD, area_dir, by_vm, checkpoints, explain, host_stats, migrate,
                         sha256_file, write_inventory)

pytestmark = pytest.mark.slow

ROUNDS = 2  # warm rounds per run in this scenario (never converging: converge ratio 0)


@pytest.fixture(scope="module")
def fleet(cbtsim):
    out = area_dir("e2e")
    specs = {
        "e2e-web": dict(cbt_enabled=False, disks=[{"size": 40 * MiB, "fill": {"random_percent": 60, "seed": 1}}]),
        "e2e-db": dict(cbt_enabled=True, disks=[{"size": 32 * MiB, "fill": {"random_percent": 70, "seed": 2}},
                                                {"size": 16 * MiB, "fill": {"random_percent": 50, "seed": 3}}]),
        "e2e-plain": dict(cbt_enabled=False, disks=[{"size": 24 * MiB, "fill": {"random_percent": 50, "seed": 4}}]),
        "e2e-noperm": dict(cbt_enabled=False, disks=[{"size": 8 * MiB, "fill": {"random_percent": 50, "seed": 5}}]),
        "e2e-noinit": dict(cbt_enabled=False, disks=[{"size": 8 * MiB, "fill": {"random_percent": 50, "seed": 6}}]),
        "e2e-indep": dict(cbt_enabled=True, disks=[{"size": 8 * MiB, "fill": {"random_percent": 50, "seed": 7}},
                                                   {"size": 8 * MiB, "mode": "independent_persistent"}]),
        "e2e-indep2": dict(cbt_enabled=True, disks=[{"size": 8 * MiB}, {"size": 8 * MiB, "mode": "independent_persistent"}]),
    }
    vms = {name: cbtsim.create_vm(name, **spec) for name, spec in specs.items()}
    cbtsim.inject_fault("ReconfigVM_Task", "no_permission", vm=vms["e2e-noperm"]["moid"], count=0)
    cbtsim.inject_fault("CreateSnapshot_Task", "task_error", vm=vms["e2e-noinit"]["moid"], count=1)

    # e2e-db disk 2000 -> an NBD export of an image file (qemu-nbd, writable)
    nbd_image = out / "db-disk2000-nbd.img"
    with open(nbd_image, "wb") as handle:
        handle.truncate(32 * MiB)
    nbd = NbdExport.qemu_nbd(nbd_image, name="vmm-e2e-db-2000").start()
    # e2e-db disk 2001 -> a loop block device whose backing file holds junk (holes must be zeroed)
    loop_image = out / "db-disk2001-loop.img"
    loop_image.write_bytes(os.urandom(16 * MiB))
    loop = LoopDevice(loop_image).attach()
    link = Path("/dev/cbt-test-%s-db2001" % os.urandom(4).hex())  # by-id, mapper and LVM names are symlinks
    link.symlink_to(loop.device)

    inventory = write_inventory(out / "inventory.yml", {
        "e2e-web": {},
        "e2e-db": {"vm_migration_disk_targets": {2000: nbd.uri, 2001: str(link)}},
        "e2e-plain": {"vm_migration_auto_cbt": False},
        "e2e-noperm": {},
        "e2e-noinit": {},
        "e2e-indep": {"vm_migration_exclude_disks": [2001]},
        "e2e-indep2": {},
    })
    extra = {
        "vm_migration_max_rounds": ROUNDS,
        "vm_migration_converge_ratio": 0.0,
        "vm_migration_after_round_tasks": str(WORKLOAD),
        "demo_workload_schedule": [0.10, 0.02],
        "vm_migration_shutdown_timeout": 30,
        "vm_migration_datastore_concurrency": 2,
        "vm_migration_slot_poll_interval": 1,
    }
    try:
        run, report = migrate(cbtsim, out, inventory, extra)
        yield {"out": out, "run": run, "report": report, "vms": vms, "inventory": inventory, "extra": extra,
               "nbd": nbd, "nbd_image": nbd_image, "loop": loop}
    finally:
        cbtsim.clear_faults()
        nbd.stop()
        link.unlink()
        loop.detach()


@pytest.fixture(scope="module")
def rerun(fleet, cbtsim):
    """The same migration run again for the VMs that completed."""
    before = checkpoints(fleet["out"])
    run, report = migrate(cbtsim, fleet["out"], fleet["inventory"], fleet["extra"],
                          limit="e2e-web,e2e-db,e2e-plain,localhost")
    return {"run": run, "report": report, "before": before, "after": checkpoints(fleet["out"]),
            "first_report": fleet["report"]}


def _vm(fleet, name):
    assert fleet["report"] is not None, "no report was written:\n%s" % explain(fleet["run"])
    return by_vm(fleet["report"])[name]


def test_failing_vms_do_not_stop_the_others_and_the_run_fails_at_the_end(fleet):
    run, report = fleet["run"], fleet["report"]
    assert report is not None, explain(run)
    status = {vm["vm"]: vm["status"] for vm in report["vms"]}
    assert status == {"e2e-web": "completed", "e2e-db": "completed", "e2e-plain": "completed",
                      "e2e-noperm": "failed", "e2e-noinit": "failed", "e2e-indep": "completed",
                      "e2e-indep2": "failed"}, explain(run, report)
    assert run.rc != 0, "the play must fail at the end when a VM failed:\n%s" % explain(run)
    assert int(report["summary"]["failed"]) == 3 and int(report["summary"]["completed"]) == 4


def test_disks_that_cbt_cannot_cover(fleet, cbtsim):
    refused = _vm(fleet, "e2e-indep2")
    assert refused["message"].startswith(
        "MIGRATION FAILURE: VM e2e-indep2 (/DC0/vm/e2e-indep2) has disks that CBT and snapshots cannot cover: 2001"
    ), refused["message"]
    assert "vm_migration_exclude_disks" in refused["message"]
    assert refused["rounds"] == [] and cbtsim.vm("e2e-indep2")["snapshots"] == []
    migrated = _vm(fleet, "e2e-indep")
    assert [d["key"] for d in migrated["disks"]] == [2000]
    assert all([d["key"] for d in rd["disks"]] == [2000] for rd in migrated["rounds"])
    assert migrated["disks"][0]["digest_match"] in (True, "True")


def test_cbt_enable_failure_message(fleet, cbtsim):
    vm = _vm(fleet, "e2e-noperm")
    assert vm["message"].startswith(
        "MIGRATION FAILURE: Could not enable CBT on VM e2e-noperm (/DC0/vm/e2e-noperm): "), vm["message"]
    assert "VirtualMachine.Config.ChangeTracking" in vm["message"], vm["message"]
    assert vm["rounds"] == []
    state = cbtsim.vm("e2e-noperm")
    assert state["cbt_enabled"] is False
    assert state["snapshots"] == []


def test_cbt_initialization_failure_message(fleet, cbtsim):
    vm = _vm(fleet, "e2e-noinit")
    assert vm["message"].startswith(
        "MIGRATION FAILURE: CBT initialization failed for VM e2e-noinit (/DC0/vm/e2e-noinit): "), vm["message"]
    assert vm["rounds"] == []
    assert cbtsim.vm("e2e-noinit")["snapshots"] == [], "the initialisation snapshot must not be left behind"


def test_cbt_gate_auto_enable_on_and_off(fleet, cbtsim):
    web, db, plain = _vm(fleet, "e2e-web"), _vm(fleet, "e2e-db"), _vm(fleet, "e2e-plain")
    assert web["cbt"]["action"] == "enabled" and web["cbt"]["enabled_before"] in (False, "False")
    assert cbtsim.vm("e2e-web")["cbt_enabled"] is True
    assert db["cbt"]["action"] == "already_enabled"
    # auto-enable off: checked and warned, never enabled; rounds compare whole disks
    assert plain["cbt"]["auto_cbt"] in (False, "False") and plain["cbt"]["action"] == "warned"
    assert cbtsim.vm("e2e-plain")["cbt_enabled"] is False
    assert any(ev["level"] == "warning" and "CBT auto-enablement disabled" in ev["message"] for ev in plain["events"])
    modes = [d["mode"] for rd in plain["rounds"] for d in rd["disks"]]
    assert modes[0] == "allocated" and set(modes[1:]) == {"compare"}, modes
    # with CBT, rounds after the first copy changed areas only
    assert {d["mode"] for rd in web["rounds"][1:] for d in rd["disks"]} == {"extents"}


@pytest.mark.parametrize("name", ["e2e-web", "e2e-db", "e2e-plain"])
def test_rounds_shrink_and_end_with_matching_digests(fleet, name):
    vm = _vm(fleet, name)
    rounds = vm["rounds"]
    kinds = [rd["kind"] for rd in rounds]
    assert kinds == ["full"] + ["incremental" if name != "e2e-plain" else "full"] * (ROUNDS - 1) + ["final"], kinds
    copied = [int(rd["copied_bytes"]) for rd in rounds]
    assert all(a > b for a, b in zip(copied, copied[1:])), "bytes copied per round must shrink: %s" % copied
    assert all(rd["disks"][0]["verified"] in (True, "True") for rd in rounds)
    for disk in vm["disks"]:
        assert disk["digest_match"] in (True, "True"), disk
        assert disk["digest_source"] and disk["digest_source"] == disk["digest_target"]
    # the simulator's VMs run VMware Tools: a clean guest shutdown, nothing to warn about
    assert vm["cutover"]["method"] == "shutdown-guest", vm["cutover"]
    assert not [ev for ev in vm["events"] if "guest shutdown" in ev["message"]], vm["events"]


def test_targets_hold_exactly_the_source_disks(fleet, cbtsim):
    """Independent of the role's own digests: every target equals the powered-off VM's disk."""
    checked = []
    for name in ("e2e-web", "e2e-db", "e2e-plain"):
        state = cbtsim.vm(name)
        assert state["power_state"] == "poweredOff"
        reported = {d["key"]: d for d in _vm(fleet, name)["disks"]}
        for disk in state["disks"]:
            target = reported[disk["key"]]["target"]
            kind = reported[disk["key"]]["target_kind"]
            if kind == "nbd":
                assert target == fleet["nbd"].uri
                path = fleet["nbd_image"]
            else:
                path = target
            assert sha256_file(path, disk["capacity"]) == sha256_file(disk["path"]), (name, disk["key"], kind)
            checked.append(kind)
    assert sorted(checked) == ["block", "file", "file", "nbd"], checked


def test_checkpoints_follow_the_rounds(fleet):
    rows = checkpoints(fleet["out"])
    web = _vm(fleet, "e2e-web")
    row = rows["vmware:%s:disk-2000" % web["vm_info"]["instance_uuid"]]
    assert row["generation"] == len(web["rounds"]) == ROUNDS + 1
    assert row["metadata"]["phase"] == "cutover"
    assert row["change_id"] == web["rounds"][-1]["disks"][0]["checkpoint"]
    assert re.match(r"^([0-9a-f]{2} ){7}[0-9a-f]{2}-([0-9a-f]{2} ){7}[0-9a-f]{2}/\d+$", row["change_id"])
    plain = _vm(fleet, "e2e-plain")
    prow = rows["vmware:%s:disk-2000" % plain["vm_info"]["instance_uuid"]]
    assert prow["change_id"].startswith("nocbt:")  # no CBT: the change point is the snapshot


def test_nothing_is_left_behind(fleet, cbtsim):
    for name in ("e2e-web", "e2e-db", "e2e-plain", "e2e-noperm", "e2e-noinit", "e2e-indep", "e2e-indep2"):
        assert cbtsim.vm(name)["snapshots"] == [], name
    assert cbtsim.exports() == []
    slots = fleet["out"] / "report" / ".datastore-slots"
    assert slots.is_dir(), "7 VMs and 2 slots per datastore: the slots must have been used"
    assert not list(slots.rglob("slot-*"))


def test_report_files(fleet):
    out = fleet["out"] / "report"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name in ("e2e-web", "e2e-db", "e2e-plain", "e2e-noperm", "e2e-noinit", "e2e-indep", "e2e-indep2"):
        assert name in md and name in html
    assert "MIGRATION FAILURE: Could not enable CBT on VM e2e-noperm" in md
    runs = list((out / "runs").glob("*.json"))
    assert len(runs) == 1 and runs[0].read_text() == (out / "report.json").read_text()
    svg = re.search(r"<svg .*?</svg>", html, re.S)
    assert svg, "the HTML report has no inline SVG chart"
    root = ET.fromstring(svg.group(0))
    bars = [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.find("{http://www.w3.org/2000/svg}title")
            is not None]
    # one bar per round and VM with rounds: 4 VMs x (warm rounds + final)
    assert len(bars) == 4 * (ROUNDS + 1), len(bars)


def test_rerun_of_a_finished_migration_has_nothing_to_do(rerun):
    run, report = rerun["run"], rerun["report"]
    assert run.rc == 0, explain(run, report)
    assert {vm["vm"]: vm["status"] for vm in report["vms"]} == {
        "e2e-web": "already_migrated", "e2e-db": "already_migrated", "e2e-plain": "already_migrated"}
    for name in ("e2e-web", "e2e-db", "e2e-plain"):
        stats = host_stats(run, name)
        assert stats.get("changed") == 0 and stats.get("failures") == 0, (name, stats)
        assert by_vm(report)[name]["rounds_this_run"] in (0, "0")
    # the round history of the first run comes back from the checkpoint store
    for name in ("e2e-web", "e2e-db", "e2e-plain"):
        first = by_vm(rerun["first_report"])[name]["rounds"]
        again = by_vm(report)[name]["rounds"]
        assert [(r["round"], r["kind"], r["copied_bytes"]) for r in again] == [
            (r["round"], r["kind"], r["copied_bytes"]) for r in first], name
        assert [len(r["disks"]) for r in again] == [len(r["disks"]) for r in first]
    assert rerun["after"] == rerun["before"], "a finished migration must not move any checkpoint"
