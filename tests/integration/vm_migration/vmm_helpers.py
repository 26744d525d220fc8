# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the vm_migration role tests: inventories, playbook runs, checks.

The role runs exactly as users run it: ``ansible-playbook -i <inventory> playbooks/vm_migration.yml``
through tests/testbed/ansible_run.py, against the CBT-capable vCenter simulator (tests/peers/cbtsim)
with TLS verified, the simulator's snapshot exports over NBD, and SQLite checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import yaml

from testbed.ansible_run import run_playbook
from testbed.cbtsim import CbtSim
from testbed.core import REPO_ROOT, output_dir

PLAYBOOK = REPO_ROOT / "playbooks" / "vm_migration.yml"
WORKLOAD = REPO_ROOT / "playbooks" / "files" / "demo_workload.yml"
MiB = 1 << 20
BLOCK = 64 * 1024


def area_dir(name: str) -> Path:
    """A fresh output folder for one scenario."""
    path = output_dir() / "vm_migration" / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_inventory(path: Path, vms: dict, group_vars: dict | None = None) -> Path:
    """An inventory with one host per VM (host vars given), connected locally."""
    hosts = {name: (hv or {}) for name, hv in vms.items()}
    doc = {"all": {"children": {"vm_migration_vms": {
        "hosts": hosts,
        "vars": dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                     **(group_vars or {})),
    }}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def migrate(sim: CbtSim, out: Path, inventory: Path, extra_vars: dict | None = None, limit: str | None = None,
            timeout: int = 1500):
    """Run the migration playbook; return (AnsibleRun, report dict or None)."""
    env = sim.env(validate_certs=True)
    env.update({"CBTSIM_API_URL": sim.control_url, "VM_MIGRATION_OUTPUT_DIR": str(out), "ANSIBLE_FORKS": "10"})
    run = run_playbook(str(PLAYBOOK), extra_vars=extra_vars, inventory=str(inventory), env=env, limit=limit,
                       timeout=timeout)
    # keep the whole Ansible output next to the report for post-mortems
    index = len(list(out.glob("ansible-run-*.json"))) + 1
    (out / ("ansible-run-%d.json" % index)).write_text(run.stdout)
    (out / ("ansible-run-%d.stderr" % index)).write_text(run.stderr)
    report = out / "report" / "report.json"
    return run, (json.loads(report.read_text()) if report.exists() else None)


def explain(run, report=None) -> str:
    text = repr(run)
    if report:
        text += "\nreport summary: %s\n" % json.dumps(
            [{k: vm.get(k) for k in ("vm", "status", "message")} for vm in report["vms"]], indent=1)
    return text


def by_vm(report: dict) -> dict:
    return {vm["vm"]: vm for vm in report["vms"]}


def sha256_file(path, length: int | None = None) -> str:
    h = hashlib.sha256()
    remaining = length
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(4 * MiB if remaining is None else min(4 * MiB, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return h.hexdigest()


def checkpoints(out: Path) -> dict:
    """source_id -> row of the SQLite checkpoint store the role used."""
    db = out / "checkpoints.sqlite"
    if not db.exists():
        return {}
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT source_id, target, change_id, generation, metadata FROM cbt_checkpoints").fetchall()
    finally:
        conn.close()
    return {r[0]: {"target": r[1], "change_id": r[2], "generation": r[3], "metadata": json.loads(r[4])} for r in rows}


def host_stats(run, host: str) -> dict:
    return run.stats.get(host, {})
