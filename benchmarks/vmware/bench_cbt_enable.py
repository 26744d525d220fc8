# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CBT enable + initialise per VM on cbtsim, against the seed appliance's 10-20 s per VM.

The seed reconfigures, creates a snapshot, sleeps a fixed 5 s, removes the snapshot. vmware_cbt
reconfigures, creates the temporary snapshot, checks every disk's changeId, removes the snapshot,
and waits on each task with WaitForUpdatesEx instead of the clock. In one run this measures, per
powered-on VM with CBT off:

  engine   the module's code path in-process (connect once; reconfigure + stun cycle + checks)
  module   the real module through ``ansible``, one VM per run (process start-up, login and logout
           included: mostly Ansible's own start-up)
  playbook one ``ansible-playbook`` run looping the module over all its VMs; wall time / VMs
  seed     the seed's sequence with its fixed 5 s sleep, for comparison (same API calls otherwise)

Prints medians and ratios; never fails on a slow result.

    ~/.cache/cbt-toolkit/venv/bin/python benchmarks/vmware/bench_cbt_enable.py [--vms 10] [--seed-vms 2]
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position
from testbed.cbtsim import CbtSim  # noqa: E402 pylint: disable=wrong-import-position

sys.path.insert(0, str(ansible_run.collections_root()))

from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import CbtManager  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import VmwareClient  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import find_vm  # noqa: E402

MiB = 1 << 20
SEED_SLEEP = 5.0


def log(msg):
    print(msg, flush=True)


def engine_enable(client, name):
    vm = find_vm(client, name=name)
    mgr = CbtManager(client, vm, prefix="cbt-toolkit-init", timeout=600)
    steps = mgr.plan("enabled")
    assert steps == ["enable", "initialize"], steps
    mgr.reconfigure(True)
    disks = mgr.stun_cycle(require_change_ids=True)
    assert all(d["change_id"] for d in disks if d["eligible"])


def seed_enable(client, name):
    """The seed's EnsureCBTEnabled: reconfigure, snapshot, sleep 5 s, remove (tasks waited for)."""
    vm = find_vm(client, name=name)
    client.run_task("reconfigure", vm.ReconfigVM_Task, spec=vim.vm.ConfigSpec(changeTrackingEnabled=True))
    info = client.run_task("snapshot", vm.CreateSnapshot_Task, name="cbt-init-%d" % time.time(),
                           description="", memory=False, quiesce=False)
    time.sleep(SEED_SLEEP)
    client.run_task("remove", info.result.RemoveSnapshot_Task, removeChildren=False, consolidate=True)


def describe(name, samples):
    return "%-7s median %7.3f s  min %7.3f  max %7.3f  (n=%d)" % (
        name, statistics.median(samples), min(samples), max(samples), len(samples))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10, help="VMs per measured path (engine, module)")
    parser.add_argument("--seed-vms", type=int, default=2, help="VMs for the seed sequence (5 s sleep each)")
    parser.add_argument("--disk-size", type=int, default=256 * MiB)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    sim = CbtSim(name="bench-enable", vms=0).start()
    figures = {}
    try:
        names = {"engine": [], "module": [], "playbook": [], "seed": []}
        for path, count in (("engine", args.vms), ("module", args.vms), ("playbook", args.vms),
                            ("seed", args.seed_vms)):
            for i in range(count):
                name = "%s-%02d" % (path, i)
                sim.create_vm(name, disks=[args.disk_size, args.disk_size // 2])
                names[path].append(name)
        log("simulator: %s, %d VMs with 2 disks each, powered on, CBT off" % (sim.url, sum(map(len, names.values()))))
        log("load average at start: %s" % (os.getloadavg(),))

        client = VmwareClient(sim.host, sim.username, sim.password, port=sim.port, ca_cert=str(sim.ca_file)).connect()
        samples = {"engine": [], "module": [], "playbook": [], "seed": []}
        for name in names["engine"]:
            began = time.perf_counter()
            engine_enable(client, name)
            samples["engine"].append(time.perf_counter() - began)
        log(describe("engine", samples["engine"]))
        env = sim.env(validate_certs=True)
        for name in names["module"]:
            began = time.perf_counter()
            result, run = ansible_run.run_module("vmware_cbt", {"name": name}, env=env)
            samples["module"].append(time.perf_counter() - began)
            if not result.get("cbt_initialized"):
                raise SystemExit("module run failed: %r" % run)
        log(describe("module", samples["module"]))
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "enable", "cbt.toolkit.vmware_cbt": {"name": "{{ item }}"}, "loop": names["playbook"]}]}]
        began = time.perf_counter()
        run = ansible_run.run_playbook(json.dumps(play) + "\n", env=env)
        per_vm = (time.perf_counter() - began) / len(names["playbook"])
        if run.rc != 0:
            raise SystemExit("playbook run failed: %r" % run)
        samples["playbook"] = [per_vm]
        log(describe("playbook", samples["playbook"]) + "  (wall time / VMs of one run)")
        for name in names["seed"]:
            began = time.perf_counter()
            seed_enable(client, name)
            samples["seed"].append(time.perf_counter() - began)
        log(describe("seed", samples["seed"]))
        client.close()
        for path in ("engine", "module", "playbook", "seed"):
            for name in names[path]:
                vm = sim.vm(name)
                assert vm["cbt_enabled"] and not vm["snapshots"], (name, vm)

        med = dict((k, statistics.median(v)) for k, v in samples.items())
        log("")
        log("enable + initialise per VM, in-process:     %.3f s  (target: under 2 s)" % med["engine"])
        log("enable + initialise per VM, ansible module: %.3f s  (one ansible run per VM)" % med["module"])
        log("enable + initialise per VM, in a playbook:  %.3f s  (one ansible-playbook run for %d VMs)"
            % (med["playbook"], len(names["playbook"])))
        log("seed sequence (fixed 5 s sleep):            %.3f s  (the seed document quotes 10-20 s)" % med["seed"])
        log("ratio seed / in-process:     %6.1fx" % (med["seed"] / med["engine"]))
        log("ratio seed / ansible module: %6.1fx" % (med["seed"] / med["module"]))
        log("ratio seed / playbook:       %6.1fx" % (med["seed"] / med["playbook"]))
        figures = {"median_seconds": med, "samples": samples, "load_average": os.getloadavg(),
                   "ratio_seed_over_engine": med["seed"] / med["engine"],
                   "ratio_seed_over_module": med["seed"] / med["module"]}
    finally:
        sim.stop()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
