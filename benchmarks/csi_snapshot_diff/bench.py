# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""csi_snapshot_diff's client against the Go reference client snapshot-metadata-lister, on the same
stream from one local SnapshotMetadata server, in one run.

See README.md next to this file. Prints medians, min/max and the ratios the issue asks for; it never
fails on a slow result (benchmarks are not pass/fail).
"""

import argparse
import os
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
from testbed.csi import ServingCert, SnapshotBed  # noqa: E402 pylint: disable=wrong-import-position
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


class StaticToken:
    def get(self, force=False):
        return "benchmark-token"


def setup(tuples, per):
    cluster = KubeCluster(name="csi-bench").start()
    bed = SnapshotBed(cluster, ("v1alpha1",)).install()  # the v0.2.0 lister reads v1alpha1
    bed.namespace(NAMESPACE)
    bed.service_account(NAMESPACE, SA)
    tls = ServingCert(["localhost"])
    server = FakeSnapshotMetadata(tls.cert_pem, tls.key_pem, namespace=NAMESPACE, max_results=per).start()
    volume = synthetic_volume(tuples, size=4096, stride=8192)
    server.add_snapshot("snap", "h-snap", volume)
    bed.create_sms(DRIVER, "localhost:%d" % server.port, "bench-audience", tls.ca_pem)
    bed.publish_snapshot(NAMESPACE, "snap", DRIVER, "h-snap")
    return cluster, server, tls, volume


def case_go_lister(cluster, out_dir, fmt):
    lister = require_binary("snapshot-metadata-lister", bin_dir() / "snapshot-metadata-lister")
    out = os.path.join(out_dir, "go-%s.out" % fmt)
    argv = [str(lister), "-kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE, "-s", "snap",
            "-service-account", SA, "-service-account-namespace", NAMESPACE, "-o", fmt]
    with open(out, "wb") as handle:
        start = time.perf_counter()
        proc = subprocess.run(argv, stdout=handle, stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError("snapshot-metadata-lister failed: %s" % proc.stderr.decode(errors="replace")[-2000:])
    return elapsed, os.path.getsize(out)


def case_ours_flow(cluster, out_dir, coalesce=False):
    """The module's whole flow in-process: discovery, TokenRequest, TLS, stream, validation, file."""
    out = os.path.join(out_dir, "ours.extents")
    params = {k: v.get("default") for k, v in _csi_diff.argument_spec().items()}
    params.update(namespace=NAMESPACE, snapshot="snap", service_account=SA, output_file=out, coalesce=coalesce,
                  extents_limit=1000)
    api = cluster.api_client()
    start = time.perf_counter()
    result = _csi_diff.run(params, api)
    elapsed = time.perf_counter() - start
    return elapsed, result["extent_count"]


def case_ours_stream(server, tls, out_dir):
    """Only the stream: gRPC + decode + validation + extent file (no Kubernetes calls)."""
    out = os.path.join(out_dir, "stream.extents")
    transport = GrpcTransport("127.0.0.1:%d" % server.port, tls.ca_pem, "localhost")
    sink = ExtentSink(out, limit=1000)
    runner = StreamRunner(lambda req: transport.open_stream(codec.METHOD_ALLOCATED, req),
                          lambda tok, off: codec.encode_allocated_request(tok, NAMESPACE, "snap", off, 0),
                          StaticToken(), retries=0)
    start = time.perf_counter()
    runner.run(0, sink)
    sink.close()
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed, sink.count


def case_drain(server, tls):
    """Ceiling: receive the raw messages without decoding them."""
    transport = GrpcTransport("127.0.0.1:%d" % server.port, tls.ca_pem, "localhost")
    request = codec.encode_allocated_request("t", NAMESPACE, "snap")
    start = time.perf_counter()
    size = sum(len(m) for m in transport.open_stream(codec.METHOD_ALLOCATED, request))
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed, size


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
    args = parser.parse_args()

    log("setting up: kube-apiserver, v1alpha1 CRDs, fake SnapshotMetadata server with %d tuples, %d per message"
        % (args.tuples, args.per_message))
    cluster, server, tls, _volume = setup(args.tuples, args.per_message)
    times = {}
    try:
        with tempfile.TemporaryDirectory(prefix="csi-bench-") as out_dir:
            case_drain(server, tls)  # warm the server's message cache
            for rnd in range(args.rounds):
                for name, fn in (
                        ("drain (raw messages, no decode)", lambda: case_drain(server, tls)),
                        ("go lister -o json > file", lambda: case_go_lister(cluster, out_dir, "json")),
                        ("go lister -o table > file", lambda: case_go_lister(cluster, out_dir, "table")),
                        ("ours: stream only > file", lambda: case_ours_stream(server, tls, out_dir)),
                        ("ours: full flow > file", lambda: case_ours_flow(cluster, out_dir)),
                        ("ours: full flow, coalesce > file", lambda: case_ours_flow(cluster, out_dir, True)),
                ):
                    elapsed, _what = fn()
                    times.setdefault(name, []).append(elapsed)
                    log("round %d %-36s %7.3f s  %6.2f M tuples/s" % (rnd + 1, name, elapsed,
                                                                       args.tuples / elapsed / 1e6))
            if args.module:
                elapsed, count = case_module(cluster, out_dir)
                times["ours: ansible module (1 run)"] = [elapsed]
                log("module: %d extents in %.3f s (includes ansible start-up)" % (count, elapsed))
    finally:
        server.stop()
        cluster.stop()

    log("\n%-38s %9s %9s %9s %12s" % ("case", "median s", "min s", "max s", "M tuples/s"))
    medians = {}
    for name, values in times.items():
        med = statistics.median(values)
        medians[name] = med
        log("%-38s %9.3f %9.3f %9.3f %12.2f" % (name, med, min(values), max(values), args.tuples / med / 1e6))
    go = min(medians["go lister -o json > file"], medians["go lister -o table > file"])
    log("\nratio ours (full flow) / fastest go lister, in tuples/s: %.2fx"
        % (go / medians["ours: full flow > file"]))
    log("ratio ours (stream only) / fastest go lister, in tuples/s: %.2fx"
        % (go / medians["ours: stream only > file"]))
    log("ours full flow to file: %.2f M tuples/s (target >= 1.0)" % (args.tuples / medians["ours: full flow > file"] / 1e6))
    log("load average at the end: %s" % (os.getloadavg(),))


if __name__ == "__main__":
    main()
