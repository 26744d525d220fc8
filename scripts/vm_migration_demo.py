# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README's main job on the embedded default (run by scripts/main.sh).

1. starts the CBT-capable vCenter simulator (tests/testbed/cbtsim.py) on loopback with TLS;
2. creates the demo VMs of playbooks/inventory/hosts.yml (their `demo_vm` host vars) with disks
   holding real data;
3. runs ``ansible-playbook -i playbooks/inventory playbooks/vm_migration.yml`` (role
   cbt.toolkit.vm_migration: CBT gate, warm rounds with a workload writing between them, cutover,
   digests, report) with SQLite checkpoints and image-file targets under the output folder;
4. prints the rounds as they finish, the summary and where the report is;
5. stops the simulator on every exit path (normal end, failure, Ctrl-C, SIGTERM).

The full Ansible output goes to <output>/ansible.log. Usage:
    vm_migration_demo.py [--output DIR] [--keep-going-on-failure] [-- extra ansible-playbook args]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402 pylint: disable=wrong-import-position

from testbed.cbtsim import CbtSim  # noqa: E402 pylint: disable=wrong-import-position

ROUND_RE = re.compile(r'"msg": "(\S+ round \d+ \(.*)"\s*$')
FAIL_RE = re.compile(r"MIGRATION FAILURE: (?:\\\"|[^\"|])*")


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted("stopped by signal %d" % signum)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%.1f %s" % (n, unit)) if unit != "B" else ("%d B" % n)
        n /= 1024.0
    return str(n)


def collections_path(output: Path) -> Path:
    """ANSIBLE_COLLECTIONS_PATH root with ansible_collections/cbt/toolkit -> this checkout."""
    root = output / "collections"
    link = root / "ansible_collections" / "cbt" / "toolkit"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() == REPO:
        return root
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(REPO)
    return root


def demo_vms(inventory: Path) -> dict:
    doc = yaml.safe_load(inventory.read_text())
    hosts = doc["all"]["children"]["vm_migration_vms"]["hosts"]
    return {name: (hv or {}).get("demo_vm") for name, hv in hosts.items() if (hv or {}).get("demo_vm")}


def run_playbook(argv, env, log_path: Path) -> int:
    """Run ansible-playbook, keep its whole output in log_path, echo the interesting lines."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        try:
            shown = set()
            for line in proc.stdout:
                log.write(line)
                log.flush()
                match = ROUND_RE.search(line)
                if match:
                    print("  " + match.group(1).replace('\\"', '"'), flush=True)
                elif line.startswith("PLAY ["):
                    print("\n" + line.strip().strip("*").strip(), flush=True)
                elif "MIGRATION FAILURE" in line and '"msg"' in line:
                    for failure in FAIL_RE.findall(line):
                        failure = failure.rstrip("\\").rstrip(" |").replace('\\"', '"')
                        if failure not in shown:
                            shown.add(failure)
                            print("  " + failure, flush=True)
            return proc.wait()
        except BaseException:
            # Ctrl-C / SIGTERM: stop ansible-playbook (its own process group) before the simulator.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
            raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--output", default=os.environ.get("CBT_OUTPUT_DIR", str(REPO / "tests" / "output" / "main")))
    parser.add_argument("--pid-file", help="write the simulator's pid here (scripts/main.sh stops it if we die)")
    parser.add_argument("ansible_args", nargs="*")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    output = Path(args.output).resolve()
    migration = output / "migration"
    if migration.exists():
        shutil.rmtree(migration)  # a fresh demo every time: new simulator, new VMs
    migration.mkdir(parents=True)
    os.environ["CBT_OUTPUT_DIR"] = str(output / "testbed")  # simulator logs and datastore

    inventory = REPO / "playbooks" / "inventory"
    started = time.monotonic()
    # QueryChangedDiskAreas paged like vSphere (at most 2000 areas per call, no window limit); the
    # simulator's default 8 MiB windows are a stress setting for clients, kept in the tests
    sim = CbtSim(name="main", vms=0, page_limit=2000, page_window=0)
    try:
        print("Starting the CBT-capable vCenter simulator ...", flush=True)
        sim.start()
        if args.pid_file and sim.process is not None and sim.process.proc is not None:
            Path(args.pid_file).write_text("%d\n" % sim.process.proc.pid)
        print("  vCenter %s (TLS verified with %s), control API %s, datastore %s"
              % (sim.url, sim.ca_file, sim.control_url, sim.datastore_dir), flush=True)
        for name, spec in demo_vms(inventory / "hosts.yml").items():
            vm = sim.create_vm(name, disks=spec["disks"], cbt_enabled=bool(spec.get("cbt_enabled")))
            disks = ", ".join(
                "%d: %s (%.0f %% data)" % (d["key"], human(d["capacity"]), s.get("fill", {}).get("random_percent", 0))
                for d, s in zip(vm["disks"], spec["disks"]))
            print("  VM %-11s %s, CBT %s, disks %s" % (name, vm["moid"], "on" if vm["cbt_enabled"] else "off", disks),
                  flush=True)

        env = dict(os.environ)
        env.update(sim.env(validate_certs=True))
        env.update({
            "CBTSIM_API_URL": sim.control_url,
            "VM_MIGRATION_OUTPUT_DIR": str(migration),
            "ANSIBLE_COLLECTIONS_PATH": str(collections_path(output)),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_PIPELINING": "true",
            "ANSIBLE_FORKS": "10",
            "ANSIBLE_LOCAL_TEMP": str(output / "ansible-tmp"),
            "ANSIBLE_HOME": str(output / "ansible-home"),
            "PATH": "%s:%s" % (Path(sys.executable).parent, env.get("PATH", "")),
        })
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                str(REPO / "playbooks" / "vm_migration.yml")] + args.ansible_args
        log_path = migration / "ansible.log"
        print("\nRunning: ansible-playbook %s\n  (full output: %s)" % (" ".join(argv[1:]).replace(str(REPO) + "/", ""), log_path),
              flush=True)
        rc = run_playbook(argv, env, log_path)

        report = migration / "report" / "report.json"
        print("", flush=True)
        if report.exists():
            doc = json.loads(report.read_text())
            print("Summary: %d VM(s): %d completed, %d failed" % (
                int(doc["summary"]["vms"]), int(doc["summary"]["completed"]), int(doc["summary"]["failed"])))
            for vm in doc["vms"]:
                rounds = vm.get("rounds") or []
                print("  %s: %s%s" % (vm["vm"], vm["status"].upper(),
                                      (" - " + vm["message"]) if vm["status"] == "failed" else ""))
                for rnd in rounds:
                    print("      round %s %-11s changed %10s  copied %10s  %6.1f s%s" % (
                        rnd["round"], rnd["kind"], human(int(rnd["changed_bytes"])), human(int(rnd["copied_bytes"])),
                        float(rnd["duration_s"]), " (resumed)" if rnd.get("resumed") in (True, "True") else ""))
                if vm.get("cutover"):
                    print("      cutover: %s, %.1f s from shutdown to verified target" % (
                        vm["cutover"].get("method", "?"), float(vm["cutover"].get("seconds", 0))))
                for disk in vm.get("disks") or []:
                    if disk.get("digest_source"):
                        print("      disk %s: source %s... target %s... %s" % (
                            disk["key"], disk["digest_source"][:16], disk["digest_target"][:16],
                            "MATCH" if disk.get("digest_match") else "DIFFER"))
            print("\nReport: %s/report.html  (also report.md, report.json)" % report.parent)
            print("Checkpoints: %s   targets: %s" % (migration / "checkpoints.sqlite", migration / "targets"))
        else:
            print("No report was written; see %s" % log_path)
        print("Finished in %.0f s, ansible-playbook exit code %d" % (time.monotonic() - started, rc))
        return rc
    except Interrupted as exc:
        print("\nInterrupted (%s); stopping the simulator." % exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nInterrupted; stopping the simulator.", file=sys.stderr)
        return 130
    finally:
        sim.stop()
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
