# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README's main job: what ``scripts/main.sh`` runs after its set-up (``scripts/vm_migration_demo.py``),
end to end on the embedded default: the CBT simulator with several VMs whose disks hold real data, the
workload writing between warm rounds, SQLite checkpoints, image-file targets, the cutover and the report.

(``scripts/main.sh`` itself first runs ``scripts/bootstrap.sh --main``, which the test command has already
run; running it again here would re-link the test bed's peers under the other test workers.)
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from vmm_helpers import REPO_ROOT, area_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def main_job():
    out = area_dir("main-job")
    run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "vm_migration_demo.py"), "--output", str(out),
                          "--pid-file", str(out / "cbtsim.pid")],
                         cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=900, check=False)
    return out / "migration", run


def test_main_job_migrates_every_vm_with_matching_digests(main_job):
    folder, run = main_job
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((folder / "report" / "report.json").read_text())
    summary = report["summary"]
    assert summary["vms"] >= 2 and summary["completed"] == summary["vms"] and summary["failed"] == 0, summary
    assert "%d completed, 0 failed" % summary["vms"] in run.stdout
    for vm in report["vms"]:
        assert vm["status"] == "completed", vm
        assert vm["disks"] and all(d["digest_match"] is True and d["digest_source"] == d["digest_target"]
                                   for d in vm["disks"]), vm["disks"]
        assert "MATCH" in run.stdout and "MISMATCH" not in run.stdout
    for name in ("report.html", "report.md"):
        assert (folder / "report" / name).stat().st_size > 0


def test_main_job_rounds_shrink_and_checkpoints_follow_the_last_round(main_job):
    folder, run = main_job
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((folder / "report" / "report.json").read_text())
    db = sqlite3.connect(str(folder / "checkpoints.sqlite"))
    try:
        stored = dict(db.execute("SELECT source_id, change_id FROM cbt_checkpoints").fetchall())
    finally:
        db.close()
    for vm in report["vms"]:
        rounds = vm["rounds"]
        kinds = [r["kind"] for r in rounds]
        assert kinds[0] == "full" and kinds[-1] == "final" and set(kinds[1:-1]) == {"incremental"}, kinds
        changed = [r["changed_bytes"] for r in rounds]
        # the workload writes less after every round, and CBT reports exactly that: each round is smaller
        assert all(later < earlier for earlier, later in zip(changed, changed[1:])), (vm["vm"], changed)
        assert rounds[1]["changed_bytes"] < rounds[0]["changed_bytes"] / 4, changed
        for disk in vm["disks"]:
            assert stored[disk["source_id"]] == disk["checkpoint"], (disk, stored)
            assert disk["checkpoint"] == rounds[-1]["disks"][[d["key"] for d in rounds[-1]["disks"]].index(
                disk["key"])]["checkpoint"]
