# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""csi_snapshot_diff's client against the Go reference client snapshot-metadata-lister, on the same
stream from one local SnapshotMetadata server, in one run.

Server (``--server``): ``sidecar`` (default) is the real external-snapshot-metadata sidecar v0.2.0 in
front of our CSI test driver serving a synthetic snapshot (no data file, millions of extents);
``fake`` is our Python test server with pre-encoded messages.

See README.md next to this file. Prints medians, min/max and the ratios the issue asks for; it never
fails on a slow result (benchmarks are not pass/fail).
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration", "csi"))

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position
from testbed.core import bin_dir, require_binary  # noqa: E402 pylint: disable=wrong-import-position
from testbed.csi import CsiTestDriver, ServingCert, Sidecar, SnapshotBed  # noqa: E402 pylint: disable=wrong-import-position
from testbed.kube import KubeCluster  # noqa: E402 pylint: disable=wrong-import-position
from fake_sms import FakeSnapshotMetadata, synthetic_volume  # noqa: E402 pylint: disable=wrong-import-position,import-error

sys.path.insert(0, str(ansible_run.collections_root()))

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_codec as codec  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_stream import ExtentSink, StreamRunner  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_transport import GrpcTransport  # noqa: E402

NAMESPACE = "bench"
SA = "backup-client"
DRIVER = "bench.fake.cbt.toolkit.io"


def log(msg):
    print(msg, flush=True)


class OneToken:
    """A real ServiceAccount token for the sidecar, minted once outside the timed part."""

    def __init__(self, cluster):
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        core = client.CoreV1Api(cluster.api_client())
        body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["bench-audience"], expiration_seconds=3600))
        self.token = core.create_namespaced_service_account_token(SA, NAMESPACE, body).status.token

    def get(self, force=False):
        return self.token


class Source:
    """Where the stream comes from: ``port`` (TLS, certificate for localhost), ``ca_pem``, ``stop()``."""

    def __init__(self, kind, cluster, bed, tuples, per):
        self.kind = kind
        self.tls = ServingCert(["localhost"])
        self.ca_pem = self.tls.ca_pem
        self.driver = self.sidecar = self.server = None
        if kind == "sidecar":
            self.driver = CsiTestDriver(name=DRIVER, max_results=per).start()
            self.driver.synthetic_snapshot("h-snap", tuples, stride=8192, extent=4096)
            self.sidecar = Sidecar("v0.2.0", cluster, self.driver, self.tls, audience="bench-audience",
                                   extra_args=["--v", "1"]).start()
            self.port = self.sidecar.port
        else:
            self.server = FakeSnapshotMetadata(self.tls.cert_pem, self.tls.key_pem, namespace=NAMESPACE,
                                               max_results=per).start()
            self.server.add_snapshot("snap", "h-snap", synthetic_volume(tuples, size=4096, stride=8192))
            self.port = self.server.port
        bed.create_class("bench-class", DRIVER)
        bed.create_sms(DRIVER, "localhost:%d" % self.port, "bench-audience", self.ca_pem)
        bed.publish_snapshot(NAMESPACE, "snap", DRIVER, "h-snap")

    def stop(self):
        for peer in (self.sidecar, self.driver, self.server):
            if peer is not None:
                peer.stop()


def setup(kind, tuples, per):
    cluster = KubeCluster(name="csi-bench").start()
    bed = SnapshotBed(cluster, ("v1alpha1",)).install()  # the v0.2.0 lister and sidecar read v1alpha1
    bed.namespace(NAMESPACE)
    bed.service_account(NAMESPACE, SA)
    return cluster, Source(kind, cluster, bed, tuples, per)


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def case_go_lister(cluster, out_dir, fmt, max_results=0):
    lister = require_binary("snapshot-metadata-lister", bin_dir() / "snapshot-metadata-lister")
    out = os.path.join(out_dir, "go-%s.out" % fmt)
    argv = [str(lister), "-kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE, "-s", "snap",
            "-service-account", SA, "-service-account-namespace", NAMESPACE, "-o", fmt,
            "-max-results", str(max_results)]
    with open(out, "wb") as handle:
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(argv, stdout=handle, stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - start
        cpu = _children_cpu() - cpu
    if proc.returncode:
        raise RuntimeError("snapshot-metadata-lister failed: %s" % proc.stderr.decode(errors="replace")[-2000:])
    return elapsed, cpu


def case_ours_flow(cluster, out_dir, coalesce=False, max_results=0):
    """The module's whole flow in-process: discovery, TokenRequest, TLS, stream, validation, file."""
    out = os.path.join(out_dir, "ours.extents")
    params = {k: v.get("default") for k, v in _csi_diff.argument_spec().items()}
    params.update(namespace=NAMESPACE, snapshot="snap", service_account=SA, output_file=out, coalesce=coalesce,
                  extents_limit=1000, max_results=max_results)
    api = cluster.api_client()
    cpu = time.process_time()
    start = time.perf_counter()
    _csi_diff.run(params, api)
    elapsed = time.perf_counter() - start
    return elapsed, time.process_time() - cpu


def case_ours_stream(source, token, out_dir, max_results=0):
    """Only the stream: gRPC + decode + validation + extent file (no Kubernetes calls)."""
    out = os.path.join(out_dir, "stream.extents")
    transport = GrpcTransport("127.0.0.1:%d" % source.port, source.ca_pem, "localhost")
    sink = ExtentSink(out, limit=1000)
    runner = StreamRunner(lambda req: transport.open_stream(codec.METHOD_ALLOCATED, req),
                          lambda tok, off: codec.encode_allocated_request(tok, NAMESPACE, "snap", off, max_results),
                          token, retries=0)
    cpu = time.process_time()
    start = time.perf_counter()
    runner.run(0, sink)
    sink.close()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    transport.close()
    return elapsed, cpu


def case_drain(source, token, max_results=0):
    """Ceiling of a Python gRPC client: receive the raw messages without decoding them."""
    transport = GrpcTransport("127.0.0.1:%d" % source.port, source.ca_pem, "localhost")
    request = codec.encode_allocated_request(token.get(), NAMESPACE, "snap", 0, max_results)
    cpu = time.process_time()
    start = time.perf_counter()
    for _message in transport.open_stream(codec.METHOD_ALLOCATED, request):
        pass
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    transport.close()
    return elapsed, cpu


def case_module(cluster, out_dir):
    out = os.path.join(out_dir, "module.extents")
    start = time.perf_counter()
    result, run = ansible_run.run_module("csi_snapshot_diff", {
        "kubeconfig": str(cluster.kubeconfig), "namespace": NAMESPACE, "snapshot": "snap", "service_account": SA,
        "output_file": out, "extents_limit": 10})
    elapsed = time.perf_counter() - start
    if result.get("failed"):
        raise RuntimeError("module failed: %r" % run)
    return elapsed, result["extent_count"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tuples", type=int, default=2_000_000)
    parser.add_argument("--per-message", type=int, default=256, help="tuples per message (server default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--module", action="store_true", help="also time one run through ansible")
    parser.add_argument("--server", choices=["sidecar", "fake"], default="sidecar")
    parser.add_argument("--max-results", type=int, default=0,
                        help="max_results both clients request (0: the server's --per-message)")
    args = parser.parse_args()

    log("setting up: kube-apiserver, v1alpha1 CRDs, %s serving %d tuples, %d per message"
        % ("real sidecar v0.2.0 + csi-test-driver" if args.server == "sidecar" else "fake Python server",
           args.tuples, args.per_message))
    cluster, source = setup(args.server, args.tuples, args.per_message)
    times = {}
    cpus = {}
    mr = args.max_results
    try:
        token = OneToken(cluster)
        with tempfile.TemporaryDirectory(prefix="csi-bench-") as out_dir:
            case_drain(source, token)  # warm up (and the fake server's message cache)
            for rnd in range(args.rounds):
                for name, fn in (
                        ("drain (raw messages, no decode)", lambda: case_drain(source, token, mr)),
                        ("go lister -o json > file", lambda: case_go_lister(cluster, out_dir, "json", mr)),
                        ("go lister -o table > file", lambda: case_go_lister(cluster, out_dir, "table", mr)),
                        ("ours: stream only > file", lambda: case_ours_stream(source, token, out_dir, mr)),
                        ("ours: full flow > file", lambda: case_ours_flow(cluster, out_dir, False, mr)),
                        ("ours: full flow, coalesce > file", lambda: case_ours_flow(cluster, out_dir, True, mr)),
                ):
                    elapsed, cpu = fn()
                    times.setdefault(name, []).append(elapsed)
                    cpus.setdefault(name, []).append(cpu)
                    log("round %d %-36s %7.3f s  %6.2f M tuples/s  client CPU %6.3f s"
                        % (rnd + 1, name, elapsed, args.tuples / elapsed / 1e6, cpu))
            if args.module:
                elapsed, count = case_module(cluster, out_dir)
                times["ours: ansible module (1 run)"] = [elapsed]
                log("module: %d extents in %.3f s (includes ansible start-up)" % (count, elapsed))
    finally:
        source.stop()
        cluster.stop()

    log("\n%-38s %9s %9s %9s %12s %14s" % ("case", "median s", "min s", "max s", "M tuples/s", "M tuples/CPU-s"))
    medians = {}
    for name, values in times.items():
        med = statistics.median(values)
        medians[name] = med
        cpu = statistics.median(cpus[name]) if cpus.get(name) else None
        per_cpu = "%14.2f" % (args.tuples / cpu / 1e6) if cpu else "%14s" % "-"
        rate = args.tuples / med / 1e6
        log("%-38s %9.3f %9.3f %9.3f %12.2f %s" % (name, med, min(values), max(values), rate, per_cpu))
    go = min(medians["go lister -o json > file"], medians["go lister -o table > file"])
    log("\nratio ours (full flow) / fastest go lister, in tuples/s: %.2fx"
        % (go / medians["ours: full flow > file"]))
    log("ratio ours (stream only) / fastest go lister, in tuples/s: %.2fx"
        % (go / medians["ours: stream only > file"]))
    log("ours full flow to file: %.2f M tuples/s (target >= 1.0)" % (args.tuples / medians["ours: full flow > file"] / 1e6))
    log("load average at the end: %s" % (os.getloadavg(),))


if __name__ == "__main__":
    main()
