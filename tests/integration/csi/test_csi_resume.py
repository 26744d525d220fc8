# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streams cut at random points resume with no gap and no duplicate.

* 25 trials with status errors (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) after a random number of
  messages, several per listing, against our fake server;
* 12 trials with the TCP connection cut after a random number of bytes (mid TLS record) by a proxy;
* 4 trials through the real sidecar v1.1.0, the driver breaking the stream at random points.
Every run goes through the module's full flow (discovery, TokenRequest, TLS, resume, validation)
and compares the extents with the exact list served.
"""

import random
import socket
import threading

import grpc
import pytest

from csi_helpers import as_pairs, run_flow  # pylint: disable=import-error
from fake_sms import FIXED_LENGTH, VARIABLE_LENGTH, Fault, Volume  # pylint: disable=import-error


def random_volume(rng, count):
    extents = []
    off = rng.randrange(0, 3) * 4096
    variable = rng.random() < 0.5
    for _extent in range(count):
        size = 4096 * (rng.randint(1, 64) if variable else 1)
        extents.append((off, size))
        off += size + 4096 * rng.randint(1 if variable else 0, 5)
    return Volume(off + (1 << 20), extents, VARIABLE_LENGTH if variable else FIXED_LENGTH)


def check_resume_points(server, volume, rereads=0):
    """Every request starts at 0 or at the end of a tuple served, never going back but to 0 when a stream
    resumed after the last tuple returned nothing and the listing was read again from 0 (``rereads``)."""
    ends = {o + s for o, s in volume.extents}
    starts = [r.get(4, 0) for r in server.requests]
    assert starts[0] == 0 and all(s == 0 or s in ends for s in starts), starts
    back_to_zero = sum(1 for before, now in zip(starts, starts[1:]) if before and not now)
    assert back_to_zero <= rereads, starts
    resumed = [s for s in starts if s]
    assert resumed == sorted(resumed), starts


@pytest.fixture
def svc(module_fake_service):
    return module_fake_service


@pytest.mark.parametrize("trial", range(25))
def test_status_cuts_at_random_points(beta_bed, svc, trial):
    rng = random.Random(1000 + trial)
    volume = random_volume(rng, rng.randint(200, 3000))
    name = "cut-%d" % trial
    svc.snapshot(name, volume)
    per = rng.choice((1, 7, 64, 128, 256))
    messages = -(-len(volume.extents) // per)
    codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)
    cuts = [Fault(rng.randint(0, max(1, messages // 3)), rng.choice(codes), "cut %d" % i)
            for i in range(rng.randint(1, 6))]
    svc.server.faults = list(cuts)
    svc.server.requests.clear()
    result = run_flow(beta_bed.cluster, snapshot=name, namespace=svc.namespace, connect_to=svc.server.address,
                      max_results=per, extents_limit=10 ** 6, retries=3)
    assert as_pairs(result["extents"]) == volume.extents
    assert result["stream"]["tuples"] == len(volume.extents) + result["stream"]["tuples_dropped_on_resume"]
    rereads = result["stream"]["rereads_from_zero"]
    # a stream resumed after the last tuple returns nothing: the listing is then read again from 0
    assert rereads <= 1
    if not rereads:
        assert result["stream"]["tuples_dropped_on_resume"] == 0
    assert result["stream"]["resumes"] + rereads == len(svc.server.requests) - 1 <= len(cuts) + rereads
    check_resume_points(svc.server, volume, rereads)


class CuttingProxy:
    """TCP proxy that cuts the first ``cuts`` connections after a random number of bytes from the server."""

    def __init__(self, upstream_port, rng, cuts, max_bytes):
        self.upstream_port = upstream_port
        self.rng = rng
        self.cuts = cuts
        self.max_bytes = max_bytes
        self.connections = 0
        self.cut_at = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _addr = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.rng.randint(200, self.max_bytes) if self.connections <= self.cuts else None
            self.cut_at.append(limit)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, limit):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[:limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.mark.parametrize("trial", range(12))
def test_tcp_cuts_at_random_bytes(beta_bed, svc, trial):
    rng = random.Random(2000 + trial)
    volume = random_volume(rng, rng.randint(3000, 8000))
    name = "tcp-%d" % trial
    svc.snapshot(name, volume)
    svc.server.faults = []
    svc.server.requests.clear()
    # about 10 bytes per tuple on the wire: cut well inside the stream (or inside the TLS handshake)
    proxy = CuttingProxy(svc.server.port, rng, cuts=rng.randint(1, 3), max_bytes=8 * len(volume.extents))
    try:
        result = run_flow(beta_bed.cluster, snapshot=name, namespace=svc.namespace,
                          connect_to="127.0.0.1:%d" % proxy.port, max_results=64, extents_limit=10 ** 6, retries=4)
    finally:
        proxy.close()
    assert as_pairs(result["extents"]) == volume.extents
    assert result["stream"]["resumes"] >= 1, proxy.cut_at
    assert {e["code"] for e in result["stream"]["stream_errors"]} <= {"UNAVAILABLE", "INTERNAL"}
    check_resume_points(svc.server, volume, result["stream"]["rereads_from_zero"])


@pytest.mark.parametrize("trial", range(4))
def test_random_cuts_through_the_real_sidecar(beta_bed, trial):
    rng = random.Random(3000 + trial)
    chain = beta_bed.chains["fixed"]
    chain.driver.clear_faults()
    vol = chain.volume(2 << 20)
    vol.scribble(rng, writes=40, max_blocks=8)
    snap = vol.snapshot()
    expected = vol.expected(snap)
    per = rng.choice((2, 5, 9))
    assert len(expected) > 9 * per, "the scribbles allocated too little; pick another seed"
    cuts = [rng.randint(1, 3) for _cut in range(3)]  # messages into each stream before it breaks
    for after in cuts:
        chain.driver.fault(rng.choice(["UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"]), after_messages=after,
                           message="random cut", rpc="GetMetadataAllocated")
    chain.driver.clear_calls()
    result = run_flow(beta_bed.cluster, snapshot=snap, connect_to=chain.sidecar.local_address, max_results=per,
                      extents_limit=10 ** 6)
    assert as_pairs(result["extents"]) == expected
    calls = chain.driver.calls()
    ends = {o + s for o, s in expected}
    assert all(c["starting_offset"] in ends for c in calls[1:])
    assert [c["messages"] for c in calls[:-1]] == cuts
    assert result["stream"]["resumes"] == len(calls) - 1 == len(cuts)
