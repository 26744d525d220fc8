# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming engine of csi_snapshot_diff: tuple validation, resume without gaps or duplicates,
bounded retries, token re-mint, status-code messages and the extent sink."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import os
import random

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_stream as st
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import read_extent_file
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.pb_writer import pb_varint


def message(block_type, capacity, tuples):
    out = b"\x08" + pb_varint(block_type) + b"\x10" + pb_varint(capacity)
    for off, size in tuples:
        body = (b"\x08" + pb_varint(off) if off else b"") + b"\x10" + pb_varint(size)
        out += b"\x1a" + pb_varint(len(body)) + body
    return out


class Server:
    """Serves ``tuples`` from a starting offset in messages of ``per``; ``cuts`` is a list of
    (messages before the failure, code, details) consumed one per stream (None = no failure)."""

    def __init__(self, tuples, capacity, block_type=1, per=7, cuts=None, resume_from_block_start=False):
        self.tuples = tuples
        self.capacity = capacity
        self.block_type = block_type
        self.per = per
        self.cuts = list(cuts or [])
        self.requests = []
        self.resume_from_block_start = resume_from_block_start

    def open(self, request):
        token, start = request
        self.requests.append(request)
        cut = self.cuts.pop(0) if self.cuts else None
        return self._gen(start, cut)

    def _gen(self, start, cut):
        ends = [o + s for o, s in self.tuples]
        first = bisect.bisect_right(ends, start)
        if self.resume_from_block_start and first > 0:
            first -= 1  # misbehaving server: repeats the tuple that ended at `start`
        rest = self.tuples[first:]
        chunks = [rest[i:i + self.per] for i in range(0, len(rest), self.per)] or [[]]
        for index, chunk in enumerate(chunks):
            if cut is not None and index == cut[0]:
                raise st.StreamFailure(cut[1], cut[2])
            yield message(self.block_type, self.capacity, chunk)
        if cut is not None and cut[0] >= len(chunks):
            raise st.StreamFailure(cut[1], cut[2])


class Tokens:
    def __init__(self):
        self.minted = 0
        self.forced = 0

    def get(self, force=False):
        if force or not self.minted:
            self.minted += 1
            self.forced += int(force)
        return "token-%d" % self.minted


def run(server, start=0, retries=5, sink=None, tokens=None, sleeps=None):
    tokens = tokens or Tokens()
    sink = sink or st.ExtentSink(None, limit=10 ** 9)
    runner = st.StreamRunner(server.open, lambda token, offset: (token, offset), tokens, retries=retries,
                             retry_delay=0.5, sleep=(sleeps.append if sleeps is not None else lambda s: None),
                             context={"call": "allocated", "namespace": "ns", "snapshot": "s", "driver": "d",
                                      "address": "a:1", "audience": "aud", "service_account": "ns/sa"})
    runner.run(start, sink)
    sink.close()
    return runner, sink


def volume(count=200, seed=0, size=4096, fixed=True):
    rng = random.Random(seed)
    out = []
    off = 0
    for _extent in range(count):
        off += size * rng.randint(0 if out else 0, 3)
        length = size if fixed else size * rng.randint(1, 4)
        out.append((off, length))
        off += length
    return out, off + size * 5


def test_uninterrupted_stream():
    tuples, cap = volume()
    runner, sink = run(Server(tuples, cap))
    assert sink.kept == tuples
    assert runner.validator.capacity == cap and runner.resumes == 0


@pytest.mark.parametrize("seed", range(25))
def test_random_cuts_resume_without_gap_or_duplicate(seed):
    rng = random.Random(seed)
    tuples, cap = volume(count=rng.randint(50, 400), seed=seed, fixed=seed % 2 == 0)
    codes = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"]
    cuts = [(rng.randint(0, 8), rng.choice(codes), "cut %d" % i) for i in range(rng.randint(1, 12))]
    server = Server(tuples, cap, block_type=1 if seed % 2 == 0 else 2, per=rng.randint(1, 16), cuts=cuts)
    runner, sink = run(server, retries=20)
    assert sink.kept == tuples
    # every resumed request starts exactly at the end of the last tuple received before it
    for (_tok, offset) in server.requests[1:]:
        assert offset == 0 or any(o + s == offset for o, s in tuples)
    # a stream resumed after the last tuple returns nothing: the listing is then read again from offset 0
    assert runner.resumes + len(runner.rereads_at) == len(server.requests) - 1


def test_resume_drops_repeated_and_clips_straddling_tuples():
    tuples, cap = volume(count=60, seed=3)
    server = Server(tuples, cap, per=5, cuts=[(2, "UNAVAILABLE", "x"), (1, "INTERNAL", "y")],
                    resume_from_block_start=True)
    runner, sink = run(server)
    assert sink.kept == tuples
    assert runner.validator.dropped == 2


def test_retries_are_bounded_without_progress():
    tuples, cap = volume(count=30)
    sleeps = []
    server = Server(tuples, cap, cuts=[(0, "UNAVAILABLE", "connection refused")] * 10)
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(server, retries=3, sleeps=sleeps)
    assert len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert "after 4 attempt(s) without progress" in err.value.msg and "connection refused" in err.value.msg


def test_progress_resets_the_retry_budget():
    tuples, cap = volume(count=100)
    server = Server(tuples, cap, per=3, cuts=[(1, "UNAVAILABLE", "x")] * 30)
    runner, sink = run(server, retries=1)
    assert sink.kept == tuples and runner.resumes == 30


def test_token_reminted_once_after_unauthenticated_on_resume():
    tuples, cap = volume(count=50)
    tokens = Tokens()
    server = Server(tuples, cap, per=5, cuts=[(2, "UNAVAILABLE", "x"), (0, "UNAUTHENTICATED", "unauthenticated user")])
    runner, sink = run(server, tokens=tokens)
    assert sink.kept == tuples and tokens.forced == 1
    assert [r[0] for r in server.requests] == ["token-1", "token-1", "token-2"]


def test_unauthenticated_on_first_stream_is_final():
    tuples, cap = volume(count=5)
    server = Server(tuples, cap, cuts=[(0, "UNAUTHENTICATED", "unauthenticated user")])
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(server)
    assert err.value.code == "UNAUTHENTICATED" and "audience 'aud'" in err.value.msg
    assert len(server.requests) == 1


@pytest.mark.parametrize("details", [
    "failed to get VolumeSnapshot 'ns/s': not found",
    "failed to authenticate user: failed to find the SnapshotMetadataService CR for driver 'd'",
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Ssl handshake failed: "
    "CERTIFICATE_VERIFY_FAILED",
])
def test_permanent_conditions_with_retryable_codes_fail_at_once(details):
    tuples, cap = volume(count=5)
    code = "INTERNAL" if "authenticate" in details else "UNAVAILABLE"
    server = Server(tuples, cap, cuts=[(0, code, details)] * 5)
    with pytest.raises(st.SnapshotMetadataError):
        run(server)
    assert len(server.requests) == 1


def test_break_after_the_last_tuple_of_the_volume_is_complete():
    tuples = [(0, 4096), (8192, 4096)]
    server = Server(tuples, 12288, per=2, cuts=[(1, "UNAVAILABLE", "gone")])
    runner, sink = run(server)
    assert sink.kept == tuples and len(server.requests) == 1


@pytest.mark.parametrize("bad, text", [
    ([(4096, 4096), (4096, 4096)], "starts before the previous tuple ends"),
    ([(8192, 4096), (4096, 4096)], "starts before the previous tuple ends"),
    ([(4096, 4096), (6144, 4096)], "starts before the previous tuple ends"),
    ([(4096, 0)], "has size_bytes 0"),
    ([(1 << 20, 4096)], "beyond volume_capacity_bytes"),
    ([(4096, 4096), (16384, 8192)], "FIXED_LENGTH tuple 1"),
])
def test_bad_tuples_fail_clearly(bad, text):
    class Bad(Server):
        def _gen(self, start, cut):
            yield message(1, 65536, bad)
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(Bad([], 65536))
    assert text in err.value.msg and "invalid block metadata" in err.value.msg


@pytest.mark.parametrize("messages, text", [
    ([(1, 65536, [(0, 4096)]), (2, 65536, [(8192, 4096)])], "block_metadata_type changed from FIXED_LENGTH to VARIABLE_LENGTH"),
    ([(1, 65536, [(0, 4096)]), (1, 131072, [(8192, 4096)])], "volume_capacity_bytes changed from 65536 to 131072"),
    ([(1, 65536, [(0, 4096)]), (1, 65536, [(2048, 4096)])], "starts before the end of the previous tuple"),
    ([(0, 65536, [(0, 4096)])], "block_metadata_type is 0"),
    ([(1, 0, [(0, 4096)])], "volume_capacity_bytes is 0"),
])
def test_inconsistent_messages_fail(messages, text):
    class Bad(Server):
        def _gen(self, start, cut):
            for m in messages:
                yield message(*m)
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(Bad([], 65536))
    assert text in err.value.msg


def test_malformed_message_fails():
    class Bad(Server):
        def _gen(self, start, cut):
            yield b"\x1a\x09\x08"
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(Bad([], 65536))
    assert "malformed message" in err.value.msg


CTX = {"call": "delta", "namespace": "apps", "snapshot": "tue", "base": "mon", "driver": "rbd.csi.ceph.com",
       "address": "sms.ns:6443", "audience": "rbd.csi.ceph.com", "service_account": "apps/backup",
       "starting_offset": 0, "attempts": 6, "transport": "direct", "server_name": "sms.ns", "base_mode": "handle"}


@pytest.mark.parametrize("code, details, expect, full_sync", [
    ("INVALID_ARGUMENT", "VolumeSnapshot 'tue' does not belong to the CSI driver 'x'", "another CSI driver", False),
    ("INVALID_ARGUMENT", "snapshots don't belong to the same volume", "same volume (PVC)", False),
    ("INVALID_ARGUMENT", "secrets cannot be nil or empty", "snapshotter-secret-name", False),
    ("UNAUTHENTICATED", "unauthenticated user", "sms_audience", False),
    ("PERMISSION_DENIED", "user does not have permissions to perform the operation: no RBAC",
     "grant it 'get' on volumesnapshots.snapshot.storage.k8s.io in namespace apps", False),
    ("OUT_OF_RANGE", "starting offset 9 is out of range for volume size 8", "starting_offset below the volume capacity", False),
    ("UNIMPLEMENTED", "snapshot diff by ID feature is not supported", "rbd_diff_iterate3", False),
    ("NOT_FOUND", "cannot find the base snapshot", "do a full copy", True),
    ("FAILED_PRECONDITION", "CBT not enabled", "do a full copy", True),
    ("UNAVAILABLE", "failed to get VolumeSnapshot 'apps/mon-handle': not found", "must be able to read the snapshot", False),
    ("UNAVAILABLE", "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", "TLS verification", False),
    ("INTERNAL", "failed to authenticate user: tokenreviews is forbidden", "tokenreviews", False),
    ("UNAVAILABLE", "no default VolumeSnapshotClass is set for the CSI driver 'x'", "is-default-class", False),
    ("UNAVAILABLE", "connection refused", "after 6 attempt(s) without progress", False),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", "after 6 attempt(s) without progress", False),
])
def test_every_code_explains_what_to_fix(code, details, expect, full_sync):
    err = st.explain(code, details, CTX)
    assert expect in err.msg
    assert details in err.msg
    assert bool(err.full_sync_reason) == full_sync
    assert "GetMetadataDelta for VolumeSnapshot apps/tue against base mon" in err.msg


def test_v010_signature_is_named():
    err = st.explain("UNAVAILABLE", "failed to get VolumeSnapshot 'apps/h-123': not found",
                     dict(CTX, base="h-123", base_mode="handle"))
    assert "sidecar v0.1.0" in err.msg and "base_snapshot_mode: name" in err.msg


def test_sink_writes_coalesces_and_limits(tmp_path):
    path = str(tmp_path / "out.extents")
    sink = st.ExtentSink(path, limit=3, coalesce=True, metadata={"source": "csi:ns/s"})
    sink.open(1 << 20, 1)
    sink.add([0, 4096, 8192], [4096, 4096, 4096])
    sink.add([12288, 20480], [4096, 4096])
    sink.add([24576], [4096])
    sink.add([65536], [4096])
    sink.close()
    meta, extents = read_extent_file(path)
    assert extents == [(0, 16384), (20480, 8192), (65536, 4096)]
    assert meta["capacity"] == 1 << 20 and meta["block_metadata_type"] == "FIXED_LENGTH"
    assert meta["source"] == "csi:ns/s"
    assert sink.count == 3 and sink.bytes == 16384 + 8192 + 4096
    assert sink.kept == extents


def test_sink_abort_leaves_no_file(tmp_path):
    path = str(tmp_path / "out.extents")
    sink = st.ExtentSink(path)
    sink.open(8192, 2)
    sink.add([0], [4096])
    sink.abort()
    assert os.listdir(str(tmp_path)) == []


def test_failed_stream_leaves_no_partial_file(tmp_path):
    path = str(tmp_path / "out.extents")
    tuples, cap = volume(count=50)
    server = Server(tuples, cap, cuts=[(2, "UNAVAILABLE", "x")] + [(0, "UNAVAILABLE", "x")] * 5)
    sink = st.ExtentSink(path)
    with pytest.raises(st.SnapshotMetadataError):
        try:
            run(server, retries=2, sink=sink)
        except st.SnapshotMetadataError:
            sink.abort()
            raise
    assert os.listdir(str(tmp_path)) == []


def test_file_matches_stream_without_coalescing(tmp_path):
    path = str(tmp_path / "out.extents")
    tuples, cap = volume(count=500, seed=9, fixed=False)
    runner, sink = run(Server(tuples, cap, block_type=2, per=64), sink=st.ExtentSink(path, limit=10))
    meta, extents = read_extent_file(path)
    assert extents == tuples and meta["block_metadata_type"] == "VARIABLE_LENGTH"
    assert len(sink.kept) == 10 and sink.count == 500


def test_fixed_length_file_uses_the_uniform_writer(tmp_path):
    path = str(tmp_path / "fixed.extents")
    tuples, cap = volume(count=700, seed=4, fixed=True)
    runner, sink = run(Server(tuples, cap, block_type=1, per=256), sink=st.ExtentSink(path, limit=0))
    meta, extents = read_extent_file(path)
    assert extents == tuples and meta["block_metadata_type"] == "FIXED_LENGTH"
    assert sink.bytes == 700 * 4096 and sink.kept == [] and runner.validator.fixed_size == 4096
