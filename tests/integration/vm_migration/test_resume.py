# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration killed (SIGKILL of ansible-playbook and everything it started) in the middle of a
round's copy, then run again:

1. run 1: one warm round (full copy) to an NBD target, no cutover;
2. the guest writes 40 % of the disk; the NBD target is made slow (nbdkit delay filter);
3. run 2 is killed once block_sync has durably committed part of the round (its resume state
   shows done bytes) - the checkpoint must still be the one of round 1 ("never ahead of the data")
   and every block of the target must hold either the round-1 data or the new data, nothing else;
4. run 3 (fast target again, with cutover) resumes the interrupted round from the same snapshot,
   copies only what was not committed, and ends with the target equal to the source.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.ansible_run import ansible_env
from testbed.nbd import NbdExport

from vmm_helpers import (BLOCK, MiB, PLAYBOOK, area_dir, by_vm, checkpoints, explain, migrate, sha256_file,
                         write_inventory)

pytestmark = pytest.mark.slow

SIZE = 64 * MiB
COPY_OPTIONS = {"request_size": 1 * MiB, "workers": 2}


def _blocks(path, size=SIZE):
    with open(path, "rb") as handle:
        data = handle.read(size)
    return [data[i:i + BLOCK] for i in range(0, size, BLOCK)]


def _running_resume_state(work: Path):
    """The block_sync resume state of an unfinished run with committed ranges, if any."""
    for path in work.glob("*/block_sync/*.json"):
        if path.name.endswith(".status.json"):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("status") == "running" and int(doc.get("done_bytes") or 0) > 0:
            return doc
    return None


def test_killed_mid_round_resumes_without_losing_data(cbtsim):
    out = area_dir("resume")
    vm = cbtsim.create_vm("rs-app", cbt_enabled=True,
                          disks=[{"size": SIZE, "fill": {"random_percent": 50, "seed": 9}}])
    moid, source = vm["moid"], vm["disks"][0]["path"]
    target = out / "target.img"
    with open(target, "wb") as handle:
        handle.truncate(SIZE)
    nbd = NbdExport.nbdkit(target, name="vmm-resume-target").start()
    inventory = write_inventory(out / "inventory.yml", {"rs-app": {"vm_migration_disk_targets": {2000: nbd.uri}}})
    warm = {"vm_migration_max_rounds": 1, "vm_migration_cutover": False,
            "vm_migration_block_sync_options": COPY_OPTIONS}
    try:
        # 1. one warm round
        run, report = migrate(cbtsim, out, inventory, warm)
        assert run.rc == 0 and by_vm(report)["rs-app"]["status"] == "warm", explain(run, report)
        (cp1,) = checkpoints(out).values()
        assert cp1["generation"] == 1
        before = _blocks(target)
        assert before == _blocks(source), "round 1 did not copy the disk"

        # 2. the guest writes 40 % of the disk (1 MiB writes on every other 2.5 MiB stripe)
        offsets = list(range(0, SIZE - MiB, 5 * MiB // 2))  # 26 x 1 MiB
        for i, off in enumerate(offsets):
            cbtsim.write(moid, 2000, off, MiB, pattern="random", seed=1000 + i)
        written = set()
        for off in offsets:
            written.update(range(off // BLOCK, (off + MiB) // BLOCK))
        nbd.stop()
        nbd = NbdExport.nbdkit(target, name="vmm-resume-target", filters=["delay"],
                               filter_args=["delay-write=1000ms"]).start()

        # 3. run 2, killed after block_sync committed part of the round
        env = cbtsim.env(validate_certs=True)
        env.update({"CBTSIM_API_URL": cbtsim.control_url, "VM_MIGRATION_OUTPUT_DIR": str(out)})
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK),
                "-e", json.dumps(warm)]
        with open(out / "killed-run.log", "w") as log:
            proc = subprocess.Popen(argv, env=ansible_env(env), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            deadline = time.monotonic() + 600
            state = None
            while time.monotonic() < deadline and proc.poll() is None:
                state = _running_resume_state(out / "work")
                if state:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "run 2 ended before it could be killed (rc %s), see %s" % (
                proc.returncode, out / "killed-run.log")
            assert state, "block_sync never committed part of round 2 within 600 s; see %s" % (out / "killed-run.log")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)

        (cp_after_kill,) = checkpoints(out).values()
        assert cp_after_kill == cp1, "the checkpoint moved although the round was killed"
        after_kill = _blocks(target)
        new = _blocks(source)
        assert len(written) < len(new)
        mixed = [i for i in range(len(new)) if after_kill[i] not in (before[i], new[i])]
        assert not mixed, "blocks hold neither the old nor the new data: %s" % mixed[:10]
        assert all(after_kill[i] == before[i] for i in range(len(new)) if i not in written)
        done_new = sum(1 for i in written if after_kill[i] == new[i] and before[i] != new[i])
        still_old = sum(1 for i in written if after_kill[i] == before[i] and before[i] != new[i])
        assert done_new > 0 and still_old > 0, "the kill did not land mid-round (%d new, %d old blocks)" % (
            done_new, still_old)
        assert [s["name"] for s in cbtsim.vm("rs-app")["snapshots"]] == ["cbt-toolkit-migration"]

        # 4. run 3 resumes the round from the same snapshot, then cuts over
        nbd.stop()
        nbd = NbdExport.nbdkit(target, name="vmm-resume-target").start()
        run, report = migrate(cbtsim, out, inventory, dict(warm, vm_migration_cutover=True))
        assert run.rc == 0, explain(run, report)
        result = by_vm(report)["rs-app"]
        assert result["status"] == "completed", explain(run, report)
        kinds = [(rd["kind"], rd["resumed"] in (True, "True")) for rd in result["rounds"]]
        assert kinds == [("full", False), ("incremental", True), ("final", False)], kinds
        resumed = result["rounds"][1]["disks"][0]
        assert int(resumed["bytes_resumed"]) > 0, resumed
        assert int(resumed["copied_bytes"]) < len(written) * BLOCK, "the resumed round copied everything again"
        assert result["disks"][0]["digest_match"] in (True, "True")
        assert sha256_file(target) == sha256_file(source)
        (cp3,) = checkpoints(out).values()
        assert cp3["generation"] == 3 and cp3["metadata"]["phase"] == "cutover"
        assert cbtsim.vm("rs-app")["snapshots"] == []
    finally:
        nbd.stop()
