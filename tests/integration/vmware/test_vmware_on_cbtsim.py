# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VMware modules through real Ansible against cbtsim, the CBT-capable vCenter simulator
(tests/peers/cbtsim): real change IDs, QueryChangedDiskAreas computed from what really changed
in sparse disk files, paging, frozen snapshot copies, and injected faults.

Expected values come from the simulator's own records (its write log, its disk files, its
inventory through the control API), never from the modules under test.
"""

import os
import random
import time

import pytest
from vmware_helpers import assert_clean_failure, run_tasks

from ansible_collections.cbt.toolkit.plugins.module_utils.extents import read_extent_file

pytestmark = pytest.mark.timeout(900)

MiB = 1 << 20


@pytest.fixture(scope="module")
def sim():
    from testbed.cbtsim import CbtSim  # pylint: disable=import-outside-toplevel

    s = CbtSim(name="vmware-modules", vms=0).start()
    yield s
    s.stop()


@pytest.fixture
def env(sim):
    sim.reset()
    return sim.env(validate_certs=True)


def snapshots(sim, name):
    return [s["name"] for s in sim.vm(name).get("snapshots") or []]


def blocks_of(writes, block):
    """Union of the blocks every logged write touched, as merged (offset, length) runs."""
    touched = set()
    for w in writes:
        if w["length"] <= 0:
            continue
        first, last = w["offset"] // block, (w["offset"] + w["length"] - 1) // block
        touched.update(range(first, last + 1))
    runs = []
    for b in sorted(touched):
        if runs and runs[-1][0] + runs[-1][1] == b * block:
            runs[-1] = (runs[-1][0], runs[-1][1] + block)
        else:
            runs.append((b * block, block))
    return runs


def allocated_runs(path, block, size):
    """Allocated (non-hole) areas of a sparse file via SEEK_DATA/SEEK_HOLE, rounded out to blocks."""
    runs = []
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            start, end = (data // block) * block, min(size, -(-hole // block) * block)
            if runs and start <= runs[-1][0] + runs[-1][1]:
                runs[-1] = (runs[-1][0], max(runs[-1][0] + runs[-1][1], end) - runs[-1][0])
            else:
                runs.append((start, end - start))
            offset = hole
    finally:
        os.close(fd)
    return runs


# ------------------------------------------------------------------------------------------
# enablement

def test_enable_on_a_powered_on_vm_check_mode_diff_idempotency_and_info(run_tasks_env, sim):
    vm = sim.create_vm("enable-me", disks=[32 * MiB, {"size": 16 * MiB, "mode": "independent_persistent"},
                                           {"size": 16 * MiB, "rdm": "physical"}, {"size": 16 * MiB, "rdm": "virtual"}])
    assert vm["power_state"] == "poweredOn" and vm["cbt_enabled"] is False
    args = {"name": "enable-me"}

    (check,), run = run_tasks_env([("vmware_cbt", args, {"check_mode": True, "diff": True})])
    assert check["changed"] is True and check.get("failed") is not True, run
    assert check["diff"]["before"]["cbt_enabled"] is False and check["diff"]["after"]["cbt_enabled"] is True
    after = sim.vm("enable-me")
    assert after["cbt_enabled"] is False and after["snapshots"] == [] and not after["disks"][0].get("change_id")

    (first, second, info), run = run_tasks_env([
        ("vmware_cbt", args, {"diff": True}),
        ("vmware_cbt", args),
        ("vmware_cbt_info", {"names": ["enable-me"]}),
    ])
    assert first["changed"] is True and first["cbt_initialized"] is True, run
    real = dict((d["key"], d) for d in sim.vm("enable-me")["disks"])
    got = dict((d["key"], d) for d in first["disks"])
    assert set(got) == set(real)
    for key, disk in got.items():
        assert disk["eligible"] == real[key]["eligible"], (key, disk, real[key])
        assert disk["change_id"] == (real[key].get("change_id") or None)
    assert got[2000]["change_id"] and got[2003]["change_id"]  # persistent and virtual RDM are tracked
    assert "independent" in got[2001]["reason"] and "physical-compatibility RDM" in got[2002]["reason"]
    assert any("not tracked by CBT" in w for w in first.get("warnings", []))
    assert first["diff"]["after"]["disks"]["2000 Hard disk 1"] == got[2000]["change_id"]
    assert first["temporary_snapshots"][0]["removed"] is True and snapshots(sim, "enable-me") == []
    assert second["changed"] is False and second["actions"] == []
    assert [d["change_id"] for d in second["disks"]] == [d["change_id"] for d in first["disks"]]
    status = info["vms"][0]
    assert status["enabled"] is True and status["cbt_initialized"] is True and status["vm_path"].endswith("/enable-me")
    assert status["power_state"] == "poweredOn" and status["moid"] == vm["moid"]


def test_powered_off_vm_and_unsupported_vms(run_tasks_env, sim):
    sim.create_vm("off-vm", disks=[8 * MiB], power_state="poweredOff")
    sim.create_vm("old-hw", disks=[8 * MiB], hw_version="vmx-04")
    sim.create_vm("no-ctk", disks=[8 * MiB], change_tracking_supported=False)
    (off, old, noctk), run = run_tasks_env([
        ("vmware_cbt", {"name": "off-vm"}),
        ("vmware_cbt", {"name": "old-hw"}),
        ("vmware_cbt", {"name": "no-ctk"}, {"check_mode": True}),
    ])
    assert off["changed"] is True and off["cbt_initialized"] is True and off["vm"]["power_state"] == "poweredOff", run
    assert off["disks"][0]["change_id"] == sim.disk("off-vm", 2000)["change_id"]
    assert_clean_failure(old, run, "unsupported", ["vmx-04", "vmx-07"])
    assert_clean_failure(noctk, run, "unsupported", ["changeTrackingSupported"])
    assert sim.vm("old-hw")["cbt_enabled"] is False and sim.vm("no-ctk")["cbt_enabled"] is False


def test_every_injected_fault_leaves_no_snapshot_and_has_its_own_message(run_tasks_env, sim):
    cases = [
        # vm name, method, kind, count, expected error kind (None = success), words
        ("f-reconf-err", "ReconfigVM_Task", "task_error", 1, "reconfigure_failed", ["Could not enable CBT", "reconfigure failed"]),
        ("f-reconf-perm", "ReconfigVM_Task", "no_permission", 1, "permission_denied", ["'VirtualMachine.Config.ChangeTracking'"]),
        ("f-create-err", "CreateSnapshot_Task", "task_error", 1, "init_snapshot_failed", ["CBT initialization failed", "temporary snapshot"]),
        ("f-create-perm", "CreateSnapshot_Task", "no_permission", 1, "permission_denied", ["'VirtualMachine.State.CreateSnapshot'"]),
        ("f-remove-once", "RemoveSnapshot_Task", "task_error", 1, None, []),
        ("f-remove-err", "RemoveSnapshot_Task", "task_error", 0, "snapshot_remove_failed", ["could not be removed", "cleanup_stale_snapshots"]),
        ("f-remove-perm", "RemoveSnapshot_Task", "no_permission", 0, "snapshot_remove_failed", ["'VirtualMachine.State.RemoveSnapshot'"]),
        ("f-session-create", "CreateSnapshot_Task", "not_authenticated", 1, None, []),
        ("f-session-all", "*", "not_authenticated", 1, None, []),
    ]
    for name, method, kind, count, _err, _words in cases:
        moid = sim.create_vm(name, disks=[8 * MiB])["moid"]
        sim.inject_fault(method, kind, vm=moid, count=count)
    results, run = run_tasks_env([("vmware_cbt", {"name": c[0]}) for c in cases])
    for (name, method, kind, _count, err, words), res in zip(cases, results):
        where = "%s (%s %s)" % (name, method, kind)
        if err is None:
            assert res.get("failed") is not True and res["cbt_initialized"] is True, (where, res.get("msg"))
            assert snapshots(sim, name) == [], where
            continue
        assert_clean_failure(res, run, err, ["CBT enablement check failed - migration cannot proceed: "] + words)
        if err == "snapshot_remove_failed":
            left = snapshots(sim, name)  # the removal itself is what the fault blocks
            assert left == [res["temporary_snapshots"][0]["name"]] and left[0] in res["msg"], where
        else:
            assert snapshots(sim, name) == [], where
        if err == "permission_denied":
            assert res["missing_privileges"], where
    assert set(r.get("error_kind") for r in results if r.get("failed")) == {
        "reconfigure_failed", "permission_denied", "init_snapshot_failed", "snapshot_remove_failed"}
    messages = [r["msg"].replace(name, "VM") for (name, _m, _k, _c, _e, _w), r in zip(cases, results) if r.get("failed")]
    assert len(set(messages)) == len(messages)  # each fault has its own message

    # once the fault is gone, the next run removes what the blocked removal left behind
    sim.clear_faults()
    (again1, again2), run = run_tasks_env([("vmware_cbt", {"name": "f-remove-err"}),
                                           ("vmware_cbt", {"name": "f-remove-perm"})])
    for name, res in (("f-remove-err", again1), ("f-remove-perm", again2)):
        assert res.get("failed") is not True and res["changed"] is True, (name, res.get("msg"))
        assert len(res["stale_snapshots_removed"]) == 1 and snapshots(sim, name) == []


def test_an_unfinished_snapshot_creation_is_cancelled_or_undone(run_tasks_env, sim):
    """Snapshot creation that outlasts task_timeout (cbtsim holds the task queued): the task is
    cancelled, or waited for and its snapshot removed; when neither is possible in time the
    result says so, and the snapshot that appears later is removed by the next run."""
    mig = {"snapshot_name": "mig"}
    cases = [
        # vm name, module, args, delay_ms, cancelable, task_timeout, error kind, words
        ("u-cbt-cancel", "vmware_cbt", {}, 4000, True, 1, "init_snapshot_failed", ["did not finish within 1 s"]),
        ("u-cbt-late", "vmware_cbt", {}, 2500, False, 2, "init_snapshot_failed", ["did not finish within 2 s"]),
        ("u-cbt-gone", "vmware_cbt", {}, 6000, False, 1, "init_snapshot_failed",
         ["was not removed", "had not finished", "cleanup_stale_snapshots"]),
        ("u-mig-cancel", "vmware_migration_snapshot", mig, 4000, True, 1, "task_timeout",
         ["its creation task was cancelled and no snapshot 'mig' was created"]),
        ("u-mig-late", "vmware_migration_snapshot", mig, 2500, False, 2, "task_timeout",
         ["the snapshot this task created was removed again"]),
        ("u-mig-gone", "vmware_migration_snapshot", mig, 6000, False, 1, "task_timeout",
         ["could not be cancelled", "may still create snapshot 'mig'", "state: absent"]),
    ]
    tasks = []
    for name, module, args, delay, cancelable, timeout, _kind, _words in cases:
        moid = sim.create_vm(name, disks=[8 * MiB])["moid"]
        sim.inject_fault("CreateSnapshot_Task", "task_delay", vm=moid, delay_ms=delay, cancelable=cancelable)
        tasks.append((module, dict(args, name=name, task_timeout=timeout)))
    results, run = run_tasks_env(tasks)
    for (name, module, _args, _delay, _cancelable, _timeout, kind, words), res in zip(cases, results):
        assert_clean_failure(res, run, kind, words)
        if module == "vmware_cbt":
            assert [t["removed"] for t in res["temporary_snapshots"]] == [not name.endswith("gone")], (name, res)
    assert all(r["remaining"] == 0 for r in sim.faults())
    deadline = time.monotonic() + 30
    while not (snapshots(sim, "u-cbt-gone") and snapshots(sim, "u-mig-gone")):
        assert time.monotonic() < deadline, "the uncancelled creation tasks never finished"
        time.sleep(0.2)
    for name in ("u-cbt-cancel", "u-cbt-late", "u-mig-cancel", "u-mig-late"):
        assert snapshots(sim, name) == [], name  # the cancelled tasks never made one, the others were removed
    assert snapshots(sim, "u-mig-gone") == ["mig"]
    assert snapshots(sim, "u-cbt-gone") == [results[2]["temporary_snapshots"][0]["name"]]

    # what the message promised: the next runs remove the snapshots that appeared late
    (cbt, absent), run = run_tasks_env([("vmware_cbt", {"name": "u-cbt-gone"}),
                                        ("vmware_migration_snapshot", dict(mig, name="u-mig-gone", state="absent"))])
    assert cbt.get("failed") is not True and len(cbt["stale_snapshots_removed"]) == 1, cbt.get("msg")
    assert absent.get("failed") is not True and absent["changed"] is True, absent.get("msg")
    assert snapshots(sim, "u-cbt-gone") == [] and snapshots(sim, "u-mig-gone") == []


def test_a_reconfiguration_outlasting_the_timeout_is_reported_as_a_possible_change(run_tasks_env, sim):
    moid = sim.create_vm("slow-reconf", disks=[8 * MiB])["moid"]
    sim.inject_fault("ReconfigVM_Task", "task_delay", vm=moid, delay_ms=2500, cancelable=False)
    (res,), run = run_tasks_env([("vmware_cbt", {"name": "slow-reconf", "task_timeout": 1})])
    assert_clean_failure(res, run, "reconfigure_failed", ["did not finish within 1 s", "vCenter may still apply"])
    assert res["changed"] is True
    deadline = time.monotonic() + 30
    while not sim.vm("slow-reconf")["cbt_enabled"]:  # it does apply it
        assert time.monotonic() < deadline, "the reconfiguration never finished"
        time.sleep(0.2)
    assert snapshots(sim, "slow-reconf") == []


def test_a_slow_snapshot_removal_is_waited_for_never_started_twice(run_tasks_env, sim):
    """RemoveSnapshot_Task outlasting task_timeout (cbtsim holds it queued, not cancelable): the
    task is waited for once more; a second removal of the same snapshot is never started."""
    for name, delay in (("r-late", 2500), ("r-gone", 6000)):
        moid = sim.create_vm(name, disks=[8 * MiB])["moid"]
        sim.inject_fault("RemoveSnapshot_Task", "task_delay", vm=moid, delay_ms=delay, cancelable=False)
    (late, gone), run = run_tasks_env([("vmware_cbt", {"name": "r-late", "task_timeout": 2}),
                                       ("vmware_cbt", {"name": "r-gone", "task_timeout": 1})])
    assert late.get("failed") is not True and late["cbt_initialized"] is True, late.get("msg")
    assert [t["removed"] for t in late["temporary_snapshots"]] == [True]
    assert_clean_failure(gone, run, "snapshot_remove_failed",
                         ["could not be removed", "had not finished when this run stopped waiting for it",
                          "no second removal was started"])
    assert [t["removed"] for t in gone["temporary_snapshots"]] == [False]
    assert [r["hits"] for r in sim.faults()] == [1, 1], "one RemoveSnapshot_Task per snapshot"
    assert snapshots(sim, "r-late") == []
    deadline = time.monotonic() + 30
    while snapshots(sim, "r-gone"):  # the removal that was left running finishes on its own
        assert time.monotonic() < deadline, "the removal task never finished"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------
# changed areas

def test_changed_areas_equal_the_workload_writes_across_rounds_and_page_sizes(run_tasks_env, sim, tmp_path):
    block = sim.config()["block_size"]
    capacity = 48 * MiB
    moid = sim.create_vm("workload", disks=[capacity])["moid"]
    (enable, snap0), run = run_tasks_env([
        ("vmware_cbt", {"name": "workload"}),
        ("vmware_migration_snapshot", {"name": "workload", "snapshot_name": "round-0"}),
    ])
    assert enable["cbt_initialized"] is True and snap0["changed"] is True, run
    previous_cid = snap0["change_ids"]["2000"]
    assert previous_cid == sim.disk("workload", 2000)["change_id"]
    last_index = max([w["index"] for w in sim.writes(moid, 2000)] or [0])
    rng = random.Random(20250812)
    geometries = [(2000, 8 * MiB), (1, MiB), (3, 0), (2, 3 * MiB + 512)]
    for round_no, (limit, window) in enumerate(geometries, start=1):
        sim.config(page_limit=limit, page_window=window)
        for _write in range(rng.randint(5, 25)):
            offset = rng.randrange(0, capacity - 300000) // 512 * 512
            length = rng.choice([512, 4096, block, block + 4096, 3 * block - 512, 200000])
            pattern = rng.choice(["random", "random", "zero", "byte:7", "discard"])
            sim.write(moid, 2000, offset, length, pattern=pattern, seed=rng.randrange(1 << 30))
        if round_no == 2:  # a round where one write lands at the very end of the disk
            sim.write(moid, 2000, capacity - 512, 512, seed=1)
        writes = sim.writes(moid, 2000, since=last_index)
        assert writes and all(w["after_change_id"] == previous_cid for w in writes)
        last_index = max(w["index"] for w in writes)
        out = tmp_path / ("round-%d.extents" % round_no)
        (snap, changes, removed), run = run_tasks_env([
            ("vmware_migration_snapshot", {"name": "workload", "snapshot_name": "round-%d" % round_no}),
            ("vmware_cbt_changes", {"name": "workload", "snapshot": "round-%d" % round_no, "disk_key": 2000,
                                    "change_id": previous_cid, "extent_file": str(out), "max_results": 3}),
            ("vmware_migration_snapshot", {"name": "workload", "snapshot_name": "round-%d" % (round_no - 1),
                                           "state": "absent"}),
        ])
        assert changes.get("failed") is not True and changes["full_sync_required"] is False, (round_no, run)
        expected = blocks_of(writes, block)
        meta, extents = read_extent_file(str(out))
        assert extents == expected, (round_no, limit, window)
        assert changes["count"] == len(expected) and changes["changed_bytes"] == sum(n for _o, n in expected)
        assert changes["extents"] == [{"offset": o, "length": n} for o, n in expected[:3]]
        assert changes["extents_truncated"] == (len(expected) > 3)
        assert meta["capacity"] == capacity and meta["change_id"] == previous_cid
        if window:
            assert changes["pages"] >= capacity // window  # many windows, some of them empty
        assert removed["changed"] is True and snapshots(sim, "workload") == ["round-%d" % round_no]
        previous_cid = snap["change_ids"]["2000"]
        assert previous_cid == changes["snapshot_change_id"]


def test_changed_areas_of_several_disks_at_the_snapshot_or_on_their_own(run_tasks_env, sim, tmp_path):
    block = sim.config()["block_size"]
    sim.config(page_limit=3, page_window=2 * MiB)
    sizes = {2000: 16 * MiB, 2001: 24 * MiB}
    moid = sim.create_vm("twodisks", disks=[sizes[2000], sizes[2001]])["moid"]
    (_enable, snap0), run = run_tasks_env([
        ("vmware_cbt", {"name": "twodisks"}),
        ("vmware_migration_snapshot", {"name": "twodisks", "snapshot_name": "r0"}),
    ])
    assert sorted(snap0["change_ids"]) == ["2000", "2001"], run
    since = {key: max([w["index"] for w in sim.writes(moid, key)] or [0]) for key in sizes}
    rng = random.Random(4242)
    for key, size in sizes.items():
        for _write in range(12):
            sim.write(moid, key, rng.randrange(0, size - 200000) // 512 * 512, rng.choice([512, block, 200000]),
                      seed=rng.randrange(1 << 30))
    files = {key: tmp_path / ("disk-%d.extents" % key) for key in sizes}
    again = {key: tmp_path / ("again-%d.extents" % key) for key in sizes}
    # the snapshot and the changed areas of both disks in one task; then the same query on its own
    (snap1, changes), run = run_tasks_env([
        ("vmware_migration_snapshot", {"name": "twodisks", "snapshot_name": "r1", "changes": {"max_results": 0, "disks": [
            {"key": 2001, "change_id": snap0["change_ids"]["2001"], "extent_file": str(files[2001])},
            {"key": 2000, "change_id": snap0["change_ids"]["2000"], "extent_file": str(files[2000])}]}}),
        ("vmware_cbt_changes", {"name": "twodisks", "snapshot": "r1", "max_results": 0, "disks": [
            {"key": 2001, "change_id": snap0["change_ids"]["2001"], "extent_file": str(again[2001])},
            {"key": 2000, "change_id": snap0["change_ids"]["2000"], "extent_file": str(again[2000])}]}),
    ])
    assert snap1["changed"] is True and changes.get("failed") is not True, run
    for result in (snap1["changes"], changes):
        assert result["full_sync_required"] is False and [d["key"] for d in result["disks"]] == [2001, 2000]
    total = 0
    for result in snap1["changes"]["disks"]:
        key = result["key"]
        expected = blocks_of(sim.writes(moid, key, since=since[key]), block)
        meta, extents = read_extent_file(str(files[key]))
        assert extents == expected == read_extent_file(str(again[key]))[1], key
        assert meta["disk_key"] == str(key) and meta["capacity"] == sizes[key]
        assert result["snapshot_change_id"] == snap1["change_ids"][str(key)] and result["pages"] >= sizes[key] // (2 * MiB)
        total += result["changed_bytes"]
    assert snap1["changes"]["changed_bytes"] == changes["changed_bytes"] == total > 0
    assert 0 < snap1["changes"]["query_seconds"] < 60

    # the query fails after the snapshot was taken: the snapshot goes again, no extent file is written
    sim.inject_fault("QueryChangedDiskAreas", "no_permission", privilege="VirtualMachine.Provisioning.DiskRandomRead",
                     vm=moid, count=1)
    denied = tmp_path / "denied"
    denied.mkdir()
    (failed_snap,), run = run_tasks_env([
        ("vmware_migration_snapshot", {"name": "twodisks", "snapshot_name": "r2", "changes": {"disks": [
            {"key": 2000, "change_id": snap1["change_ids"]["2000"], "extent_file": str(denied / "a.extents")},
            {"key": 2001, "change_id": snap1["change_ids"]["2001"], "extent_file": str(denied / "b.extents")}]}}),
    ])
    assert failed_snap.get("failed") is True and failed_snap["error_kind"] == "permission_denied", run
    assert "the snapshot this task created was removed again" in failed_snap["msg"]
    assert snapshots(sim, "twodisks") == ["r0", "r1"] and list(denied.iterdir()) == []

    # a bad disk among good ones: nothing is written for any of them
    bad = tmp_path / "bad"
    bad.mkdir()
    (failed,), run = run_tasks_env([
        ("vmware_cbt_changes", {"name": "twodisks", "snapshot": "r1", "disks": [
            {"key": 2000, "change_id": "*", "extent_file": str(bad / "a.extents")},
            {"key": 2002, "change_id": "*", "extent_file": str(bad / "b.extents")}]}),
    ])
    assert failed.get("failed") is True and "no disk with key 2002" in failed["msg"], run
    assert "Traceback" not in failed.get("module_stderr", "") and list(bad.iterdir()) == []


def test_a_session_expiring_while_views_are_read_is_renewed_with_new_views(run_tasks_env, sim):
    """The session expires at the first RetrievePropertiesEx, after the ContainerView was created:
    the view died with the session, so it is created again after the new login."""
    sim.create_vm("sess-a", disks=[8 * MiB])
    sim.create_vm("sess-b", disks=[8 * MiB])
    for task in (("vmware_cbt_info", {}), ("vmware_cbt_info", {"name": "sess-b"}), ("vmware_cbt", {"name": "sess-a"})):
        sim.inject_fault("RetrievePropertiesEx", "not_authenticated", count=1)
        (res,), _run = run_tasks_env([task])
        assert res.get("failed") is not True, (task, res.get("msg"))
        assert [r["hits"] for r in sim.faults()] == [1], "the session must really have expired"
        sim.clear_faults()
        if task[0] == "vmware_cbt_info" and not task[1]:
            assert {"sess-a", "sess-b"} <= set(v["name"] for v in res["vms"])
        elif task[0] == "vmware_cbt_info":
            assert [v["name"] for v in res["vms"]] == ["sess-b"]
        else:
            assert res["cbt_initialized"] is True


def test_a_vm_vcenter_cannot_reach_is_reported_and_refused(run_tasks_env, sim):
    ok = sim.create_vm("conn-ok", disks=[8 * MiB])["moid"]
    lost = sim.create_vm("conn-lost", disks=[8 * MiB])["moid"]
    sim.set_connection_state(lost, "inaccessible")
    (info, enable, fine), run = run_tasks_env([
        ("vmware_cbt_info", {"names": ["conn-ok", "conn-lost"]}),
        ("vmware_cbt", {"name": "conn-lost"}),
        ("vmware_cbt", {"name": "conn-ok"}),
    ])
    by_name = {v["name"]: v for v in info["vms"]}
    assert by_name["conn-ok"]["accessible"] is True and by_name["conn-ok"]["connection_state"] == "connected"
    lost_vm = by_name["conn-lost"]
    assert lost_vm["accessible"] is False and lost_vm["connection_state"] == "inaccessible"
    assert lost_vm["cbt_enabled"] is None and lost_vm["enabled"] is None and lost_vm["cbt_initialized"] is None
    assert lost_vm["change_tracking_supported"] is None and "bring the datastore back" in lost_vm["inaccessible_reason"]
    assert info["summary"]["inaccessible"] == 1 and info["summary"]["not_supported"] == 0, info["summary"]
    assert_clean_failure(enable, run, "inaccessible", ["runtime.connectionState is inaccessible",
                                                       "bring the datastore back"])
    assert sim.vm("conn-lost")["cbt_enabled"] is False and snapshots(sim, "conn-lost") == []
    assert fine.get("failed") is not True and fine["cbt_initialized"] is True, fine.get("msg")
    assert ok


def test_star_equals_the_allocated_areas(run_tasks_env, sim, tmp_path):
    block = sim.config()["block_size"]
    capacity = 32 * MiB
    sim.config(page_limit=5, page_window=2 * MiB)
    fill = {"random_percent": 30, "seed": 11, "chunk": MiB, "zero_regions": [[3 * MiB + 4096, 65536]]}
    sim.create_vm("filled", disks=[{"size": capacity, "fill": fill}])
    out = tmp_path / "star.extents"
    (enable, snap, star), run = run_tasks_env([
        ("vmware_cbt", {"name": "filled"}),
        ("vmware_migration_snapshot", {"name": "filled", "snapshot_name": "full-copy"}),
        ("vmware_cbt_changes", {"name": "filled", "snapshot": "full-copy", "disk_key": 2000, "change_id": "*",
                                "extent_file": str(out)}),
    ])
    assert star.get("failed") is not True and star["full_sync_required"] is False, run
    frozen = [s for s in sim.vm("filled")["snapshots"] if s["name"] == "full-copy"][0]["disks"][0]["path"]
    expected = allocated_runs(frozen, block, capacity)
    _meta, extents = read_extent_file(str(out))
    assert extents == expected and 0 < star["changed_bytes"] < capacity
    assert any(o <= 3 * MiB + 4096 < o + n for o, n in extents)  # literal zeros are allocated, not holes


def test_reset_changes_the_uuid_and_forces_a_full_sync(run_tasks_env, sim):
    moid = sim.create_vm("resettable", disks=[16 * MiB])["moid"]
    (enable, snap1), run = run_tasks_env([
        ("vmware_cbt", {"name": "resettable"}),
        ("vmware_migration_snapshot", {"name": "resettable", "snapshot_name": "s1"}),
    ])
    old_cid = snap1["change_ids"]["2000"]
    sim.write(moid, 2000, 0, 4096, seed=3)
    (removed, check, reset, snap2, since_old, since_new), run = run_tasks_env([
        ("vmware_migration_snapshot", {"name": "resettable", "snapshot_name": "s1", "state": "absent"}),
        ("vmware_cbt", {"name": "resettable", "state": "reset"}, {"check_mode": True, "diff": True}),
        ("vmware_cbt", {"name": "resettable", "state": "reset"}),
        ("vmware_migration_snapshot", {"name": "resettable", "snapshot_name": "s2"}),
        ("vmware_cbt_changes", {"name": "resettable", "snapshot": "s2", "disk_key": 2000, "change_id": old_cid}),
        ("vmware_cbt_changes", {"name": "resettable", "snapshot": "s2", "disk_key": 2000,
                                "change_id": "{{ lookup('ansible.builtin.vars', 'reset_cid', default='') }}"}),
    ])
    assert check["changed"] is True and check["diff"]["after"]["disks"]["2000 Hard disk 1"].startswith("(new"), run
    assert reset["changed"] is True and reset.get("failed") is not True, run
    assert [a.split(" ")[0] for a in reset["actions"]] == ["disable", "stun", "enable", "initialise"]
    previous, new_cid = reset["disks"][0]["previous_change_id"], reset["disks"][0]["change_id"]
    assert previous.split("/")[0] == old_cid.split("/")[0]  # check mode did not reset anything
    assert new_cid.split("/")[0] != old_cid.split("/")[0]  # a new CBT epoch
    assert new_cid.split("/")[0] == sim.disk("resettable", 2000)["ctk_uuid"]
    assert snapshots(sim, "resettable") == ["s2"]
    assert since_old["full_sync_required"] is True and "UUID part differs" in since_old["reason"], run
    assert since_old["extents"] == [{"offset": 0, "length": 16 * MiB}] and since_old["changed_bytes"] == 16 * MiB
    assert since_new.get("failed") is True  # the empty lookup is a malformed changeId: bad input, not a full sync
    (since_reset,), run = run_tasks_env([
        ("vmware_cbt_changes", {"name": "resettable", "snapshot": "s2", "disk_key": 2000, "change_id": new_cid})])
    assert since_reset["full_sync_required"] is False and since_reset["count"] == 0, run
    # a host crash ("Change tracking invalid; reinitializing") is caught the same way
    sim.invalidate_ctk(moid)
    (snap3, after_crash), run = run_tasks_env([
        ("vmware_migration_snapshot", {"name": "resettable", "snapshot_name": "s3"}),
        ("vmware_cbt_changes", {"name": "resettable", "snapshot": "s3", "disk_key": 2000,
                                "change_id": snap2["change_ids"]["2000"]}),
    ])
    assert after_crash["full_sync_required"] is True and "UUID part differs" in after_crash["reason"], run


def test_query_faults_session_expiry_and_bad_input(run_tasks_env, sim):
    names = ["q-fault", "q-perm", "q-session", "q-bad"]
    cids = {}
    for name in names:
        sim.create_vm(name, disks=[8 * MiB, {"size": 8 * MiB, "mode": "independent_persistent"}])
    setup = []
    for name in names:
        setup += [("vmware_cbt", {"name": name}), ("vmware_migration_snapshot", {"name": name, "snapshot_name": "a"})]
    results, run = run_tasks_env(setup)
    for name, res in zip(names, results[1::2]):
        cids[name] = res["change_ids"]["2000"]
        sim.write(sim.vm(name)["moid"], 2000, MiB, 8192, seed=5)
    sim.inject_fault("QueryChangedDiskAreas", "task_error", vm=sim.vm("q-fault")["moid"], fault="FileFault", count=0)
    sim.inject_fault("QueryChangedDiskAreas", "no_permission", vm=sim.vm("q-perm")["moid"], count=0)
    sim.inject_fault("QueryChangedDiskAreas", "not_authenticated", vm=sim.vm("q-session")["moid"], count=1)
    tasks = []
    for name in names:
        tasks.append(("vmware_migration_snapshot", {"name": name, "snapshot_name": "b"}))
    for name in names[:3]:
        tasks.append(("vmware_cbt_changes", {"name": name, "snapshot": "b", "disk_key": 2000, "change_id": cids[name]}))
    bad = {"name": "q-bad", "snapshot": "b", "disk_key": 2000, "change_id": cids["q-bad"]}
    tasks += [
        ("vmware_cbt_changes", dict(bad, disk_key=4242)),
        ("vmware_cbt_changes", dict(bad, disk_key=2001)),
        ("vmware_cbt_changes", dict(bad, snapshot="nope")),
        ("vmware_cbt_changes", dict(bad, change_id="52 de/1")),
        ("vmware_cbt_changes", dict(bad, snapshot="a", change_id=cids["q-bad"].rsplit("/", 1)[0] + "/999")),
    ]
    results, run = run_tasks_env(tasks)
    fault, perm, session, key, independent, nosnap, malformed, future = results[4:]
    assert fault["full_sync_required"] is True and fault["fault"] == "FileFault", run
    assert_clean_failure(perm, run, "permission_denied", ["'VirtualMachine.Provisioning.DiskRandomRead'"])
    assert session.get("failed") is not True and session["full_sync_required"] is False, session.get("msg")
    assert session["extents"] == [{"offset": MiB, "length": 65536}]
    assert_clean_failure(key, run, "not_found", ["no disk with key 4242", "2000 (Hard disk 1"])
    assert_clean_failure(independent, run, "unsupported", ["independent", "cannot be tracked", "copy it another way"])
    assert_clean_failure(nosnap, run, "not_found", ["snapshot 'nope' not found", "'a' ("])
    assert_clean_failure(malformed, run, "invalid_argument", ["16 hex bytes"])
    assert future["full_sync_required"] is True and future["fault"] == "FileFault"


@pytest.fixture
def run_tasks_env(run_playbook, env):
    def runner(tasks):
        return run_tasks(run_playbook, tasks, env=env)

    return runner
