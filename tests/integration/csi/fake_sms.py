# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A SnapshotMetadata gRPC server of our own (Python grpcio, TLS) for what the real sidecar and
driver cannot produce on demand: streams cut at chosen points, slow streams, huge volumes with
millions of extents, bad tuples, any status code, and sidecar v0.1.0 semantics (base snapshot
*name* in GetMetadataDeltaRequest field 3).

It has its own small protobuf encoder/decoder, written independently of the collection's codec,
so a codec bug cannot hide behind a symmetric twin.
"""

from __future__ import annotations

import bisect
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc

SERVICE = "snapshotmetadata.SnapshotMetadata"
FIXED_LENGTH = 1
VARIABLE_LENGTH = 2


# ------------------------------------------------------------------ wire format (independent)

def varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_tuple(offset: int, size: int) -> bytes:
    body = b""
    if offset:
        body += b"\x08" + varint(offset)
    if size:
        body += b"\x10" + varint(size)
    return b"\x1a" + varint(len(body)) + body


def encode_response(block_type: int, capacity: int, tuples) -> bytes:
    head = b""
    if block_type:
        head += b"\x08" + varint(block_type)
    if capacity:
        head += b"\x10" + varint(capacity)
    return head + b"".join(encode_tuple(o, s) for o, s in tuples)


def decode_request(data: bytes) -> dict:
    """Fields by number: strings for wire type 2, ints (int64 two's complement) for varints."""
    out = {}
    pos = 0
    while pos < len(data):
        key = 0
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        number, wire = key >> 3, key & 7
        value = 0
        shift = 0
        if wire == 0:
            while True:
                byte = data[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if value >= 1 << 63:
                value -= 1 << 64
            out[number] = value
        elif wire == 2:
            while True:
                byte = data[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            out[number] = data[pos:pos + value].decode()
            pos += value
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return out


# ------------------------------------------------------------------ model

@dataclass
class Volume:
    """What the fake serves for one snapshot or one (base, target) pair."""
    capacity: int
    extents: list = field(default_factory=list)      # sorted (offset, size)
    block_type: int = FIXED_LENGTH

    def ends(self):
        return [o + s for o, s in self.extents]


@dataclass
class Fault:
    """Fail one stream after ``after_messages`` messages with ``code``/``details``."""
    after_messages: int
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    details: str = "injected"
    rpc: str | None = None  # "allocated", "delta" or None for both


@dataclass
class Snapshot:
    name: str
    handle: str
    volume: Volume


class FakeSnapshotMetadata:
    """Configure ``snapshots`` (by VolumeSnapshot name) and ``deltas`` (by (base handle, target
    name)), then ``start()``. ``base_field`` = "handle" (v0.2.0+) or "name" (v0.1.0)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, namespace: str = "default", base_field: str = "handle",
                 max_results: int = 256, host: str = "127.0.0.1"):
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.namespace = namespace
        self.base_field = base_field
        self.max_results = max_results
        self.host = host
        self.snapshots: dict[str, Snapshot] = {}
        self.deltas: dict[tuple, Volume] = {}
        self.faults: list[Fault | None] = []   # consumed one per stream, in order
        self.final_error: tuple | None = None  # (code, details) returned by every stream
        self.delay = 0.0                       # seconds before each message
        self.corrupt = None                    # callable(messages: list[(type, cap, tuples)]) -> same
        self.rejected_tokens: set = set()
        self.token_streams = 0                 # >0: a token is rejected after this many streams
        self.echo_token_in_errors = False      # a careless server that puts the token in its errors
        self.requests: list[dict] = []
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self._cache: dict = {}
        self.server = None
        self.port = None

    # ---- configuration helpers
    def add_snapshot(self, name, handle, volume):
        self.snapshots[name] = Snapshot(name, handle, volume)

    def add_delta(self, base_handle, target_name, volume):
        self.deltas[(base_handle, target_name)] = volume

    # ---- server
    def start(self):
        handlers = {
            "GetMetadataAllocated": grpc.unary_stream_rpc_method_handler(self._allocated),
            "GetMetadataDelta": grpc.unary_stream_rpc_method_handler(self._delta),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_send_message_length", 64 << 20)])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        creds = grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])
        self.port = self.server.add_secure_port("%s:0" % self.host, creds)
        self.server.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    # ---- handlers
    def _check_common(self, req, context, rpc):
        token = req.get(1, "")
        with self._lock:
            self.requests.append(dict(req, rpc=rpc))
            self.tokens.append(token)
        if not token:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "securityToken is missing")
        if self.token_streams and self.tokens.count(token) > self.token_streams:
            self.rejected_tokens.add(token)
        if token in self.rejected_tokens:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated user")
        if self.echo_token_in_errors:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "token %s is not welcome here" % token)
        if not req.get(2):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "namespace parameter cannot be empty")
        if self.final_error is not None:
            context.abort(*self.final_error)

    def _next_fault(self, rpc):
        with self._lock:
            while self.faults:
                fault = self.faults.pop(0)
                if fault is None or fault.rpc in (None, rpc):
                    return fault
        return None

    def _allocated(self, request, context):
        req = decode_request(request)
        self._check_common(req, context, "allocated")
        name = req.get(3, "")
        if not name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshotName cannot be empty")
        snap = self.snapshots.get(name)
        if snap is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failed to get VolumeSnapshot '%s/%s': not found"
                          % (req.get(2), name))
        yield from self._stream(context, "allocated", ("allocated", name), snap.volume, req.get(4, 0), req.get(5, 0))

    def _delta(self, request, context):
        req = decode_request(request)
        self._check_common(req, context, "delta")
        base, target = req.get(3, ""), req.get(4, "")
        if not base:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "baseSnapshotId cannot be empty")
        if not target:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "targetSnapshotName cannot be empty")
        if target not in self.snapshots:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failed to get VolumeSnapshot '%s/%s': not found"
                          % (req.get(2), target))
        if self.base_field == "name":
            # v0.1.0: field 3 is a VolumeSnapshot name, resolved to its handle by the sidecar.
            snap = self.snapshots.get(base)
            if snap is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, "failed to get VolumeSnapshot '%s/%s': "
                              "volumesnapshots.snapshot.storage.k8s.io \"%s\" not found" % (req.get(2), base, base))
            base_handle = snap.handle
        else:
            base_handle = base
        volume = self.deltas.get((base_handle, target))
        if volume is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "cannot find the base snapshot %r" % base_handle)
        yield from self._stream(context, "delta", ("delta", base_handle, target), volume, req.get(5, 0), req.get(6, 0))

    def _stream(self, context, rpc, key, volume, start, max_results):
        if start < 0 or start >= volume.capacity:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "starting offset %d is out of range for volume size %d"
                          % (start, volume.capacity))
        fault = self._next_fault(rpc)
        per = max_results or self.max_results
        messages = self._messages(key, volume, start, per)
        sent = 0
        for data in messages:
            if fault is not None and sent >= fault.after_messages:
                context.abort(fault.code, fault.details)
            if self.delay:
                time.sleep(self.delay)
            if not context.is_active():
                return
            yield data
            sent += 1
        if fault is not None and sent >= fault.after_messages and fault.after_messages >= 0:
            context.abort(fault.code, fault.details)

    def _messages(self, key, volume, start, per):
        """Encoded messages from ``start``; cached for start 0 (benchmarks replay the same stream)."""
        cache_key = (key, start, per, id(volume))
        if self.corrupt is None and start == 0 and cache_key in self._cache:
            return self._cache[cache_key]
        ends = volume.ends()
        first = bisect.bisect_right(ends, start)   # first tuple with end > start
        tuples = volume.extents[first:]
        chunks = [(volume.block_type, volume.capacity, tuples[i:i + per]) for i in range(0, len(tuples), per)]
        if not chunks:
            chunks = [(volume.block_type, volume.capacity, [])]
        if self.corrupt is not None:
            chunks = self.corrupt(chunks)
        messages = [encode_response(*c) for c in chunks]
        if self.corrupt is None and start == 0:
            self._cache[cache_key] = messages
        return messages


def synthetic_volume(count: int, size: int = 4096, stride: int = 8192, capacity: int | None = None,
                     block_type: int = FIXED_LENGTH, first: int = 0) -> Volume:
    """``count`` extents of ``size`` bytes every ``stride`` bytes from ``first``."""
    extents = [(first + i * stride, size) for i in range(count)]
    cap = capacity or (first + count * stride + stride)
    return Volume(cap, extents, block_type)
