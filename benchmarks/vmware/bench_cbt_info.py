# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmware_cbt_info over many VMs: one PropertyCollector retrieval against one-at-a-time lookups.

Starts the plain vCenter simulator with ``--vms`` VMs (default 1000) and, in one run, measures:

  bulk          the module's code path: ONE RetrievePropertiesEx (+ continuation pages) for every VM,
                with disks and inventory paths (collect_vms + vm_facts), parsed by the fast reader
  bulk-pyvmomi  the same retrieval parsed by pyVmomi (the fast reader switched off)
  bulk-nodisks  the same without disks (include_disks: false: the seed endpoint's fields and CBT flags)
  per-vm        the same facts looked up one VM at a time, done efficiently: FindByInventoryPath +
                one RetrievePropertiesEx with the same property paths, per VM
  per-vm-naive  one VM at a time the way most pyVmomi scripts do it: find the VM, then read
                vm.name, vm.config, vm.runtime.powerState ... (one round trip per attribute)
  per-vm-session one VM at a time the way the seed appliance's status endpoint works: every
                request logs in, finds the VM by path, reads its properties and logs out
  loop          the Ansible way of asking one VM at a time: one ansible-playbook looping
                vmware_cbt_info (name=...) over --loop-vms VMs; per-VM cost extrapolated to all VMs
  module        the real module through ``ansible`` (process start-up included)

Then the same bulk and one-at-a-time paths (and the module) again through a TCP proxy that adds a
fixed round-trip time (``--rtt-ms``, default 1 and 5 ms: a migration host next to vCenter, and one
in another site). On loopback a round trip costs almost nothing; against a real vCenter every
one-at-a-time lookup pays it.

Prints medians, min/max and the ratios; never fails on a slow result.

    ~/.cache/cbt-toolkit/venv/bin/python benchmarks/vmware/bench_cbt_info.py [--vms 1000] [--repeat 5]
        [--rtt-ms 1,5]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position
from testbed.vcsim import Vcsim  # noqa: E402 pylint: disable=wrong-import-position

from latency_proxy import LatencyProxy  # noqa: E402 pylint: disable=wrong-import-position

sys.path.insert(0, str(ansible_run.collections_root()))

from pyVmomi import vim  # noqa: E402 pylint: disable=wrong-import-position

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (  # noqa: E402
    VmwareClient, object_spec, property_spec)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import (  # noqa: E402
    VM_PROPERTIES, VM_PROPERTIES_NO_DISKS, collect_vms, vm_facts)


def log(msg):
    print(msg, flush=True)


SERVER_PID = None
CPU = {}


def server_cpu():
    """CPU seconds the simulator process has used (utime + stime from /proc)."""
    with open("/proc/%d/stat" % SERVER_PID) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(func, repeat, name=None):
    """Wall-clock samples; CPU seconds (this process + children + the simulator) go to CPU[name].
    On a busy machine wall time mostly measures waiting for a core; CPU time does not."""
    samples = []
    result = None
    for _round in range(repeat):
        cpu0, srv0 = client_cpu(), server_cpu()
        began = time.perf_counter()
        result = func()
        samples.append(time.perf_counter() - began)
        if name:
            CPU.setdefault(name, []).append((client_cpu() - cpu0, server_cpu() - srv0))
    return samples, result


def describe(name, samples):
    text = "%-14s median %8.3f s  min %8.3f  max %8.3f  (n=%d)" % (
        name, statistics.median(samples), min(samples), max(samples), len(samples))
    if name in CPU:
        client = statistics.median(c for c, _s in CPU[name])
        server = statistics.median(s for _c, s in CPU[name])
        text += "  cpu: client %.2f s + server %.2f s" % (client, server)
    return text


def cpu_total(name):
    return statistics.median(c + s for c, s in CPU[name])


def bulk(client, disks=True, fast=True):
    return [vm_facts(r, include_disks=disks) for r in collect_vms(client, include_disks=disks, fast=fast)]


def per_vm(client, paths, props=None):
    out = []
    search = client.content.searchIndex
    for path in paths:
        vm = search.FindByInventoryPath(path.lstrip("/"))
        rows = client.retrieve([object_spec(vm)], [property_spec(vim.VirtualMachine, props or VM_PROPERTIES)])
        out.append(rows[0][1].get("name"))
    return out


def per_vm_naive(client, paths):
    out = []
    search = client.content.searchIndex
    for path in paths:
        vm = search.FindByInventoryPath(path.lstrip("/"))
        config = vm.config  # the whole ConfigInfo, one round trip
        power = client.properties(vm, ["runtime.powerState"])  # whole vm.runtime cannot be parsed from vcsim
        supported = vm.capability.changeTrackingSupported
        out.append((vm.name, config.changeTrackingEnabled, power, supported, len(config.hardware.device)))
    return out


def per_vm_session(sim, paths, port=None):
    out = []
    for path in paths:
        client = VmwareClient(sim.host, sim.username, sim.password, port=port or sim.port,
                              ca_cert=str(sim.ca_file)).connect()
        try:
            vm = client.content.searchIndex.FindByInventoryPath(path.lstrip("/"))
            rows = client.retrieve([object_spec(vm)], [property_spec(vim.VirtualMachine, VM_PROPERTIES)])
            out.append(rows[0][1].get("name"))
        finally:
            client.close()
    return out


def module_run(env, count, disks):
    """The real module through ``ansible``; fails the benchmark when it does not report every VM."""
    result, run = ansible_run.run_module("vmware_cbt_info", {"include_disks": disks}, env=env)
    if result.get("count") != count:
        raise SystemExit("module run failed: %r" % run)


def with_latency(sim, rtt, args, paths, count):
    """Bulk, one-at-a-time and module paths through a proxy adding ``rtt`` ms per round trip."""
    proxy = LatencyProxy(sim.host, sim.port, rtt)
    log("")
    log("through a proxy adding %.1f ms per round trip (port %d):" % (rtt, proxy.port))
    try:
        client = VmwareClient(sim.host, sim.username, sim.password, port=proxy.port,
                              ca_cert=str(sim.ca_file)).connect()
        began = time.perf_counter()
        client.retrieve([object_spec(client.content.rootFolder)], [property_spec(vim.Folder, ["name"])])
        log("one small call:  %.1f ms" % (1000 * (time.perf_counter() - began)))
        runs = {
            "bulk": lambda: bulk(client),
            "bulk_nodisks": lambda: bulk(client, disks=False),
            "per_vm": lambda: per_vm(client, paths),
            "per_vm_nodisks": lambda: per_vm(client, paths, VM_PROPERTIES_NO_DISKS),
            "per_vm_naive": lambda: per_vm_naive(client, paths),
            "per_vm_session": lambda: per_vm_session(sim, paths, port=proxy.port),
        }
        env = dict(sim.env(validate_certs=True), VMWARE_PORT=str(proxy.port))
        runs["module"] = lambda: module_run(env, count, True)
        med = {}
        for name, func in runs.items():
            repeat = args.repeat if name.startswith("bulk") else max(1, args.per_vm_repeat)
            samples, _unused = timed(func, repeat)
            log(describe(name, samples))
            med[name] = statistics.median(samples)
        client.close()
        log("ratios over bulk: per-vm %.1fx (without disks %.1fx), per-vm-naive %.1fx, per-vm-session %.1fx"
            % (med["per_vm"] / med["bulk"], med["per_vm_nodisks"] / med["bulk_nodisks"],
               med["per_vm_naive"] / med["bulk"], med["per_vm_session"] / med["bulk"]))
        return med
    finally:
        proxy.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000, help="number of VMs (even; half per resource pool)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--per-vm-repeat", type=int, default=1, help="repeats of the one-at-a-time baselines")
    parser.add_argument("--loop-vms", type=int, default=20, help="VMs in the ansible-playbook loop baseline")
    parser.add_argument("--rtt-ms", default="1,5",
                        help="comma-separated round-trip times to add through a TCP proxy ('' for none)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    per_pool = max(1, args.vms // 2)  # default model: one standalone host + one cluster = two pools
    sim = Vcsim(name="bench-info", username="bench", extra_args=["-vm", str(per_pool)]).start()
    global SERVER_PID  # pylint: disable=global-statement
    SERVER_PID = sim.process.proc.pid
    figures = {}
    try:
        client = VmwareClient(sim.host, sim.username, sim.password, port=sim.port, ca_cert=str(sim.ca_file)).connect()
        facts = bulk(client)
        count = len(facts)
        paths = [f["path"] for f in facts]
        log("simulator: %s, %d VMs (govmomi %s)" % (sim.url, count, sim.handshake.get("govmomi_version")))
        log("load average at start: %s" % (os.getloadavg(),))

        s_bulk, _unused = timed(lambda: bulk(client), args.repeat, "bulk")
        log(describe("bulk", s_bulk))
        s_slow, _unused = timed(lambda: bulk(client, fast=False), max(1, args.repeat // 2), "bulk-pyvmomi")
        log(describe("bulk-pyvmomi", s_slow))
        s_nodisk, _unused = timed(lambda: bulk(client, disks=False), args.repeat, "bulk-nodisks")
        log(describe("bulk-nodisks", s_nodisk))
        s_one, names = timed(lambda: per_vm(client, paths), args.per_vm_repeat, "per-vm")
        assert len(names) == count
        log(describe("per-vm", s_one))
        s_one_nodisk, _unused = timed(lambda: per_vm(client, paths, VM_PROPERTIES_NO_DISKS), args.per_vm_repeat,
                                      "per-vm-nodisk")
        log(describe("per-vm-nodisk", s_one_nodisk))
        s_naive, _unused = timed(lambda: per_vm_naive(client, paths), args.per_vm_repeat, "per-vm-naive")
        log(describe("per-vm-naive", s_naive))
        s_session, _unused = timed(lambda: per_vm_session(sim, paths), args.per_vm_repeat, "per-vm-sess")
        log(describe("per-vm-sess", s_session))

        env = sim.env(validate_certs=True)
        s_module, _unused = timed(lambda: module_run(env, count, True), max(1, args.repeat // 2), "module")
        log(describe("module", s_module))
        s_module_nodisk, _unused = timed(lambda: module_run(env, count, False), max(1, args.repeat // 2),
                                         "module-nodisk")
        log(describe("module-nodisk", s_module_nodisk))
        s_ping, _unused = timed(lambda: ansible_run.run_module("ansible.builtin.ping", {"data": "x"}), 1, "ansible-ping")
        log(describe("ansible-ping", s_ping) + "  (Ansible's own start-up, for reference)")
        loop_names = [f["name"] for f in facts[:args.loop_vms]]
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "one VM", "cbt.toolkit.vmware_cbt_info": {"name": "{{ item }}"}, "loop": loop_names}]}]
        began = time.perf_counter()
        run = ansible_run.run_playbook(json.dumps(play) + "\n", env=env)
        loop_total = time.perf_counter() - began
        if run.rc != 0:
            raise SystemExit("loop playbook failed: %r" % run)
        s_loop = [loop_total / len(loop_names) * count]
        log(describe("loop (extrap.)", s_loop) + "  (%d VMs took %.1f s)" % (len(loop_names), loop_total))
        client.close()
        figures["latency"] = dict(
            (rtt, with_latency(sim, rtt, args, paths, count))
            for rtt in [float(x) for x in args.rtt_ms.split(",") if x.strip()])

        med = dict((k, statistics.median(v)) for k, v in
                   (("bulk", s_bulk), ("bulk_pyvmomi", s_slow), ("bulk_nodisks", s_nodisk), ("per_vm", s_one),
                    ("per_vm_nodisks", s_one_nodisk), ("per_vm_naive", s_naive), ("per_vm_session", s_session),
                    ("loop_extrapolated", s_loop), ("module", s_module),
                    ("module_nodisks", s_module_nodisk), ("ansible_ping", s_ping)))
        log("")
        log("VMs: %d" % count)
        log("bulk retrieval:          %.3f s  (%.2f ms per VM)" % (med["bulk"], 1000 * med["bulk"] / count))
        log("module through ansible:  %.3f s  (target: under 3 s; without disks %.3f s; ansible ping %.3f s)"
            % (med["module"], med["module_nodisks"], med["ansible_ping"]))
        log("module CPU seconds (ansible + module + simulator): %.2f; ansible ping alone %.2f"
            % (cpu_total("module"), cpu_total("ansible-ping")))
        log("bulk without disks:      %.3f s" % med["bulk_nodisks"])
        log("ratio per-vm / bulk:        %6.1fx  (target: at least 20x)" % (med["per_vm"] / med["bulk"]))
        log("CPU seconds (client + simulator), load-independent: bulk %.2f, per-vm %.2f -> %.1fx; "
            "bulk without disks %.2f, per-vm without disks %.2f -> %.1fx; per-vm-session %.2f -> %.1fx"
            % (cpu_total("bulk"), cpu_total("per-vm"), cpu_total("per-vm") / cpu_total("bulk"),
               cpu_total("bulk-nodisks"), cpu_total("per-vm-nodisk"),
               cpu_total("per-vm-nodisk") / cpu_total("bulk-nodisks"),
               cpu_total("per-vm-sess"), cpu_total("per-vm-sess") / cpu_total("bulk")))
        log("ratio per-vm / bulk, without disks: %6.1fx" % (med["per_vm_nodisks"] / med["bulk_nodisks"]))
        log("ratio bulk-pyvmomi / bulk (fast reader gain): %6.1fx" % (med["bulk_pyvmomi"] / med["bulk"]))
        log("ratio per-vm-naive / bulk:  %6.1fx" % (med["per_vm_naive"] / med["bulk"]))
        log("ratio per-vm-session / bulk: %6.1fx  (the seed endpoint's one-login-per-VM pattern)"
            % (med["per_vm_session"] / med["bulk"]))
        log("ratio per-vm / module run:  %6.1fx" % (med["per_vm"] / med["module"]))
        log("ratio ansible loop (extrapolated) / module run: %6.1fx" % (med["loop_extrapolated"] / med["module"]))
        figures.update({"vms": count, "median_seconds": med,
                        "samples": {"bulk": s_bulk, "bulk_pyvmomi": s_slow, "bulk_nodisks": s_nodisk, "per_vm": s_one,
                                    "per_vm_nodisks": s_one_nodisk, "per_vm_naive": s_naive,
                                    "per_vm_session": s_session, "loop_extrapolated": s_loop, "module": s_module,
                                    "module_nodisks": s_module_nodisk, "ansible_ping": s_ping},
                        "ratio_per_vm_over_bulk": med["per_vm"] / med["bulk"],
                        "ratio_naive_over_bulk": med["per_vm_naive"] / med["bulk"],
                        "ratio_session_over_bulk": med["per_vm_session"] / med["bulk"],
                        "ratio_loop_over_module": med["loop_extrapolated"] / med["module"],
                        "cpu_seconds": dict((k, cpu_total(k)) for k in CPU),
                        "load_average": os.getloadavg()})
        for rtt, fig in figures["latency"].items():
            log("with %.1f ms round trips: module %.2f s (target: under 3 s); per-vm / bulk %.1fx, "
                "per-vm-naive / bulk %.1fx, per-vm-session / bulk %.1fx (target: at least 20x)" % (
                    rtt, fig["module"], fig["per_vm"] / fig["bulk"], fig["per_vm_naive"] / fig["bulk"],
                    fig["per_vm_session"] / fig["bulk"]))
    finally:
        sim.stop()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
