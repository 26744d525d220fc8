# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming engine of ``csi_snapshot_diff``: tuple validation, resume with bounded retries,
extent sink and the mapping of gRPC status codes to messages that say what to fix.

This utility is private to the cbt.toolkit collection. It does not import grpc: the transport
turns gRPC errors into ``StreamFailure`` so this logic is unit-testable on its own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time
from itertools import compress
from operator import add, itemgetter, le, ne

from ansible_collections.cbt.toolkit.plugins.module_utils._csi_codec import (
    BLOCK_METADATA_TYPES,
    DecodeError,
    decode_response,
)
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import ExtentFileWriter

RETRYABLE_CODES = frozenset(("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"))

# Sidecar messages (external-snapshot-metadata status.go) and transport errors that carry a
# retryable code but will not heal by retrying: fail at once with the real reason.
_PERMANENT_MARKERS = (
    "failed to get VolumeSnapshot",
    "the VolumeSnapshot is not yet ready",
    "boundVolumeSnapshotContentName is not set",
    "the VolumeSnapshotContent is not yet ready",
    "snapshotHandle is not set",
    "VolumeSnapshotClass",
    "invalid snapshotter secret parameters",
    "failed to get credentials",
    "failed to authenticate user",
    "failed to authorize the user",
    "failed to find the SnapshotMetadataService CR",
)
# TLS failures as grpc core reports them (bad CA, certificate not naming the host, handshake errors),
# matched case-insensitively: grpc core spells them in several cases ("Ssl Handshake Failed").
_TLS_MARKERS = (
    "certificate_verify_failed",
    "certificate verify failed",
    "hostname verification check failed",
    "verification check failed",
    "ssl handshake failed",
    "tsi_",
    "ssl_error",
    "handshake",
)
# A connection closed or reset while the handshake was under way is a transport cut (retried), not
# a TLS verdict, although grpc core's words for it contain "handshake".
_HANDSHAKE_CUT = re.compile(r"handshake (?:read|write) failed", re.IGNORECASE)


def is_tls_failure(details):
    text = _HANDSHAKE_CUT.sub("", details or "").lower()
    return any(marker in text for marker in _TLS_MARKERS)


class StreamFailure(Exception):
    """A stream ended with a gRPC status. ``code`` is the status name (e.g. ``UNAVAILABLE``)."""

    def __init__(self, code, details):
        super(StreamFailure, self).__init__("%s: %s" % (code, details))
        self.code = code
        self.details = details or ""


class SnapshotMetadataError(Exception):
    """A final error, with a message that names the object and what to do."""

    def __init__(self, msg, code=None, details=None, full_sync_reason=None):
        super(SnapshotMetadataError, self).__init__(msg)
        self.msg = msg
        self.code = code
        self.details = details
        # Set when the error means the base snapshot cannot serve a delta.
        self.full_sync_reason = full_sync_reason


def is_permanent(code, details):
    if code not in RETRYABLE_CODES:
        return True
    return any(marker in (details or "") for marker in _PERMANENT_MARKERS) or is_tls_failure(details)


def looks_like_v010(details, namespace, base_handle):
    """Sidecar v0.1.0 answers a base *handle* with a lookup of a VolumeSnapshot of that name."""
    return bool(base_handle) and ("failed to get VolumeSnapshot '%s/%s'" % (namespace, base_handle)) in (details or "")


def explain(code, details, ctx):
    """Turn a final gRPC status into a ``SnapshotMetadataError``.

    ``ctx`` holds: call (allocated/delta), namespace, snapshot, base (name or handle shown to the
    user), driver, address, audience, service_account, starting_offset, attempts.
    """
    d = details or "(no details)"
    where = "the SnapshotMetadata service at %s (driver %s)" % (ctx.get("address"), ctx.get("driver"))
    what = ("GetMetadataDelta for VolumeSnapshot %s/%s against base %s" % (
        ctx.get("namespace"), ctx.get("snapshot"), ctx.get("base"))
        if ctx.get("call") == "delta" else
        "GetMetadataAllocated for VolumeSnapshot %s/%s" % (ctx.get("namespace"), ctx.get("snapshot")))
    full_sync = None
    if code == "INVALID_ARGUMENT":
        hint = "check the namespace and snapshot names"
        if "does not belong to the CSI driver" in d:
            hint = ("the snapshot was taken by another CSI driver than the one behind this "
                    "SnapshotMetadataService; use snapshots of driver %s" % ctx.get("driver"))
        elif "same volume" in d or "same Volume" in d:
            hint = "base and target must be snapshots of the same volume (PVC)"
        elif "secrets" in d:
            hint = ("the driver needs snapshotter secrets: set csi.storage.k8s.io/snapshotter-secret-name and "
                    "-namespace in the VolumeSnapshotClass of the snapshot")
        msg = "%s was rejected as invalid by %s: %s; %s" % (what, where, d, hint)
    elif code == "UNAUTHENTICATED":
        msg = ("%s: %s did not accept the token of ServiceAccount %s for audience '%s': %s; the audience must equal "
               "the sidecar's --audience or the SnapshotMetadataService spec.audience (override it with "
               "sms_audience) and the token must be valid" % (what, where, ctx.get("service_account"),
                                                              ctx.get("audience"), d))
    elif code == "PERMISSION_DENIED":
        msg = ("%s: %s denied ServiceAccount %s: %s; grant it 'get' on volumesnapshots.snapshot.storage.k8s.io "
               "in namespace %s (a Role and RoleBinding)" % (what, where, ctx.get("service_account"), d,
                                                             ctx.get("namespace")))
    elif code == "OUT_OF_RANGE":
        msg = ("%s: starting_offset %s is outside the volume: %s; use a starting_offset below the volume "
               "capacity (0 for the whole volume)" % (what, ctx.get("starting_offset"), d))
    elif code == "UNIMPLEMENTED":
        msg = ("%s: the CSI driver %s does not implement this call: %s; the driver must advertise "
               "SNAPSHOT_METADATA_SERVICE (ceph-csi needs librbd with rbd_diff_iterate3, Ceph 19.2.3 or later)"
               % (what, ctx.get("driver"), d))
    elif code == "NOT_FOUND":
        msg = "%s: the CSI driver cannot find a snapshot: %s" % (what, d)
        if ctx.get("call") == "delta":
            full_sync = ("the CSI driver cannot find the base snapshot %s (NOT_FOUND: %s); the base must still "
                         "exist on the storage (retain it, e.g. deletionPolicy: Retain)" % (ctx.get("base"), d))
            msg += "; the base snapshot may have been deleted on the storage: do a full copy"
        else:
            msg += "; check that the snapshot still exists on the storage"
    elif code == "FAILED_PRECONDITION":
        msg = ("%s: the driver cannot answer (FAILED_PRECONDITION: %s); changed block tracking is not available "
               "for this volume: do a full copy" % (what, d))
        if ctx.get("call") == "delta":
            full_sync = "the driver reports FAILED_PRECONDITION for the delta: %s" % d
    elif code == "UNAVAILABLE" and ctx.get("call") == "delta" and ctx.get("base_mode") == "handle" \
            and looks_like_v010(d, ctx.get("namespace"), ctx.get("base")):
        msg = ("%s: the sidecar looked up a VolumeSnapshot named after the base snapshot handle (%s): it is "
               "sidecar v0.1.0, which expects the base snapshot *name*; set base_snapshot_mode: name (or auto) "
               "and pass base_snapshot" % (what, d))
    elif code == "UNAVAILABLE" and is_tls_failure(d):
        msg = ("%s: TLS verification of %s failed: %s; the CA must be the one in the SnapshotMetadataService "
               "spec.caCert (or sms_ca_cert) and the server certificate must name '%s'"
               % (what, where, d, ctx.get("server_name")))
    elif code in ("UNAVAILABLE", "INTERNAL") and any(m in d for m in _PERMANENT_MARKERS):
        hint = ""
        if "failed to authenticate user" in d or "failed to find the SnapshotMetadataService CR" in d:
            hint = ("; the sidecar could not run the TokenReview: its SnapshotMetadataService CR (named after the "
                    "driver) must exist when it has no --audience, and it needs 'create' on tokenreviews")
        elif "failed to authorize" in d:
            hint = "; the sidecar needs 'create' on subjectaccessreviews"
        elif "VolumeSnapshotClass" in d:
            hint = ("; the snapshot needs a VolumeSnapshotClass of driver %s (named in the VolumeSnapshot or the "
                    "single one annotated snapshot.storage.kubernetes.io/is-default-class: \"true\")" % ctx.get("driver"))
        elif "VolumeSnapshot" in d or "snapshotHandle" in d:
            hint = "; the sidecar must be able to read the snapshot objects and they must be ready"
        msg = "%s failed in the sidecar (%s: %s)%s" % (what, code, d, hint)
    elif code in RETRYABLE_CODES:
        msg = ("%s failed: %s gave %s after %s attempt(s) without progress: %s; check that the sidecar and the "
               "CSI driver are running and reachable (transport %s)"
               % (what, where, code, ctx.get("attempts"), d, ctx.get("transport")))
    else:
        msg = "%s failed: %s returned %s: %s" % (what, where, code, d)
    return SnapshotMetadataError(msg, code=code, details=details, full_sync_reason=full_sync)


class TupleValidator:
    """Checks every tuple of one logical listing (across resumed streams)."""

    def __init__(self):
        self.block_type = None
        self.capacity = None
        self.fixed_size = None
        self.end = 0           # end of the last accepted tuple
        self.messages = 0
        self.tuples = 0
        self.dropped = 0       # tuples of a resumed stream that ended at or before the resume point
        self.clipped = 0       # tuples of a resumed stream that started before the resume point

    def _fail(self, text):
        raise SnapshotMetadataError("the SnapshotMetadata service returned invalid block metadata in message %d: %s; "
                                    "this is a bug in the CSI driver or sidecar" % (self.messages, text))

    def header(self, block_type, capacity, has_tuples):
        if has_tuples:
            if block_type not in (1, 2):
                self._fail("block_metadata_type is %s, expected FIXED_LENGTH or VARIABLE_LENGTH" % block_type)
            if capacity <= 0:
                self._fail("volume_capacity_bytes is %d" % capacity)
        if block_type:
            if self.block_type is None:
                self.block_type = block_type
            elif block_type != self.block_type:
                self._fail("block_metadata_type changed from %s to %s" % (
                    BLOCK_METADATA_TYPES.get(self.block_type, self.block_type),
                    BLOCK_METADATA_TYPES.get(block_type, block_type)))
        if capacity:
            if self.capacity is None:
                self.capacity = capacity
            elif capacity != self.capacity:
                self._fail("volume_capacity_bytes changed from %d to %d" % (self.capacity, capacity))

    def accept(self, block_type, capacity, offsets, sizes, resume_floor=None):
        """Validate one message; return the (possibly trimmed) offsets and sizes to keep.

        ``resume_floor`` is the starting_offset of a resumed stream, given until a message yields a
        tuple past it: tuples ending at or before it are dropped and one straddling it is clipped.
        """
        self.messages += 1
        count = len(offsets)
        self.header(block_type, capacity, count > 0)
        if not count:
            return offsets, sizes
        self.tuples += count
        if min(sizes) <= 0:
            index = next(i for i, s in enumerate(sizes) if s <= 0)
            self._fail("tuple %d (byte_offset %d) has size_bytes %d" % (index, offsets[index], sizes[index]))
        if self.block_type == 1:
            if self.fixed_size is None:
                self.fixed_size = sizes[0]
            if min(sizes) != self.fixed_size or max(sizes) != self.fixed_size:
                index = next(i for i, s in enumerate(sizes) if s != self.fixed_size)
                self._fail("FIXED_LENGTH tuple %d (byte_offset %d) has size_bytes %d, earlier tuples %d"
                           % (index, offsets[index], sizes[index], self.fixed_size))
        ends = list(map(add, offsets, sizes))
        if count > 1 and not all(map(le, ends[:-1], offsets[1:])):
            index = next(i for i in range(1, count) if offsets[i] < ends[i - 1])
            self._fail("tuple %d (byte_offset %d) starts before the previous tuple ends (%d): tuples must be "
                       "strictly increasing and must not overlap" % (index, offsets[index], ends[index - 1]))
        if resume_floor is not None and offsets[0] < resume_floor:
            keep = 0
            while keep < count and ends[keep] <= resume_floor:
                keep += 1
            self.dropped += keep
            offsets, sizes, ends = offsets[keep:], sizes[keep:], ends[keep:]
            if offsets and offsets[0] < resume_floor:
                self.clipped += 1
                sizes = [ends[0] - resume_floor] + sizes[1:]
                offsets = [resume_floor] + offsets[1:]
            if not offsets:
                return offsets, sizes
        if offsets[0] < self.end:
            self._fail("tuple at byte_offset %d starts before the end of the previous tuple (%d)"
                       % (offsets[0], self.end))
        if offsets[0] < 0:
            self._fail("tuple at byte_offset %d is negative" % offsets[0])
        if ends[-1] > self.capacity:
            index = next(i for i, e in enumerate(ends) if e > self.capacity)
            self._fail("tuple at byte_offset %d size_bytes %d ends at %d, beyond volume_capacity_bytes %d"
                       % (offsets[index], sizes[index], ends[index], self.capacity))
        self.end = ends[-1]
        return offsets, sizes


class ExtentSink:
    """Collects validated extents: counts them, keeps the first ``limit`` for the result and writes
    all of them to ``path`` (atomically, in the shared extent format) when a path is given."""

    def __init__(self, path=None, limit=1000, coalesce=False, metadata=None):
        self.path = path
        self.limit = limit
        self.coalesce = coalesce
        self.metadata = dict(metadata or {})
        self.writer = None
        self.kept = []
        self.count = 0
        self.bytes = 0
        self._pending = None  # last coalesced extent, not yet emitted

    def open(self, capacity, block_type):
        if self.path and self.writer is None:
            meta = dict(self.metadata)
            meta["capacity"] = capacity
            meta["block_metadata_type"] = BLOCK_METADATA_TYPES.get(block_type, block_type) if block_type else None
            self.writer = ExtentFileWriter(self.path, meta)

    def _emit(self, offsets, sizes, uniform=False):
        count = len(offsets)
        if not count:
            return
        total = count * sizes[0] if uniform else sum(sizes)
        self.count += count
        self.bytes += total
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept.extend(zip(offsets[:room], sizes[:room]))
        if self.writer is not None:
            self.writer.add_batch(offsets, sizes, total, uniform)

    def add(self, offsets, sizes, uniform=False):
        """Add validated extents; ``uniform`` says every size is the same (FIXED_LENGTH)."""
        if not offsets:
            return
        if not self.coalesce:
            self._emit(offsets, sizes, uniform)
            return
        # Merge touching extents: a run ends wherever end[i] != offset[i+1].
        ends = list(map(add, offsets, sizes))
        if self._pending is not None:
            p_off, p_end = self._pending
            offsets = [p_off] + list(offsets)
            ends = [p_end] + ends
        count = len(offsets)
        breaks = list(compress(range(1, count), map(ne, ends[:-1], offsets[1:])))
        starts = [0] + breaks
        stops = [b - 1 for b in breaks] + [count - 1]
        run_offsets = list(itemgetter(*starts)(offsets)) if len(starts) > 1 else [offsets[starts[0]]]
        run_ends = list(itemgetter(*stops)(ends)) if len(stops) > 1 else [ends[stops[0]]]
        self._pending = (run_offsets[-1], run_ends[-1])
        run_offsets.pop()
        run_ends.pop()
        self._emit(run_offsets, list(map(lambda o, e: e - o, run_offsets, run_ends)))

    def close(self):
        if self.path and self.writer is None:
            self.open(None, None)  # the service sent no message at all: still write an (empty) list
        if self._pending is not None:
            p_off, p_end = self._pending
            self._pending = None
            self._emit([p_off], [p_end - p_off])
        if self.writer is not None:
            self.writer.close()

    def abort(self):
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class StreamRunner:
    """Runs one listing to completion, resuming broken streams from the end of the last tuple.

    ``open_stream(request_bytes)`` returns an iterator of raw response messages and raises
    ``StreamFailure``; ``build_request(token, starting_offset)`` returns request bytes;
    ``tokens.get(force=False)`` returns a bearer token (re-minted when close to expiry).
    ``retries`` bounds consecutive failed attempts without progress; any tuple received resets
    the count, so long listings survive many cuts.
    """

    def __init__(self, open_stream, build_request, tokens, retries=5, retry_delay=1.0, max_delay=30.0,
                 sleep=time.sleep, context=None):
        self.open_stream = open_stream
        self.build_request = build_request
        self.tokens = tokens
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.context = dict(context or {})
        self.validator = TupleValidator()
        self.resumes = 0
        self.attempts = 0
        self.errors = []
        self.rereads_at = []   # offsets after which an empty stream made the listing be read again from 0

    def run(self, starting_offset, sink):
        offset = starting_offset
        failures = 0          # consecutive failed attempts without progress
        force_token = False
        reminted = False      # a forced re-mint was tried since the last progress
        validator = self.validator
        # Tuples ending at or before ``floor`` are dropped and one straddling it is clipped, until a
        # message yields a tuple past it: a resumed stream may repeat what was already received.
        floor = None
        reread_at = None      # offset whose listing is being read again from offset 0
        while True:
            self.attempts += 1
            token = self.tokens.get(force=force_token)
            force_token = False
            if reread_at is not None:
                request_offset, floor = 0, reread_at
            else:
                request_offset = offset
                if validator.end > 0:
                    floor = offset
            request = self.build_request(token, request_offset)
            progressed = False
            received = 0          # tuples in this stream, before the floor is applied
            try:
                for raw in self.open_stream(request):
                    try:
                        block_type, capacity, offsets, sizes = decode_response(raw)
                    except DecodeError as exc:
                        raise SnapshotMetadataError("the SnapshotMetadata service sent a malformed message "
                                                    "(message %d): %s" % (validator.messages + 1, exc))
                    received += len(offsets)
                    offsets, sizes = validator.accept(block_type, capacity, offsets, sizes, floor)
                    if validator.capacity is not None:
                        sink.open(validator.capacity, validator.block_type)
                    if offsets:
                        floor = None
                        reread_at = None
                        sink.add(offsets, sizes, validator.block_type == 1 and validator.clipped == 0)
                        offset = validator.end
                        progressed = True
            except StreamFailure as exc:
                code, details = exc.code, exc.details
                self.errors.append({"code": code, "message": details[:500], "starting_offset": request_offset})
                if progressed:
                    failures = 0
                    reminted = False
                failures += 1
                self.context["attempts"] = failures
                self.context["starting_offset"] = offset
                if code == "UNAUTHENTICATED" and self.attempts > 1 and not reminted:
                    # The token may have expired between streams: mint a new one, once.
                    force_token = reminted = True
                elif is_permanent(code, details) or failures > self.retries:
                    raise explain(code, details, self.context)
                if validator.capacity is not None and offset >= validator.capacity:
                    return  # the stream broke after the last tuple of the volume
                self.resumes += 1
                if not progressed:
                    delay = min(self.max_delay, self.retry_delay * (2 ** (failures - 1)))
                    if delay > 0:
                        self.sleep(delay)
                continue
            # The stream ended OK.
            if received or request_offset == 0:
                if reread_at is not None and not received and validator.end > 0:
                    raise self._empty_from_offset(reread_at, again=True)
                return
            if validator.capacity is not None and request_offset >= validator.capacity:
                return
            # Nothing at all from a non-zero offset below the capacity. Some ceph-csi builds return no
            # blocks whenever starting_offset > 0, which would end the listing early without an error; a
            # volume without blocks after the offset looks the same. Read the listing again from offset 0
            # (once per offset) and keep what lies past the offset.
            if self.rereads_at and self.rereads_at[-1] >= request_offset:
                raise self._empty_from_offset(request_offset)
            self.rereads_at.append(request_offset)
            reread_at = request_offset

    def _empty_from_offset(self, offset, again=False):
        ctx = self.context
        what = ("GetMetadataDelta for VolumeSnapshot %s/%s against base %s" % (
            ctx.get("namespace"), ctx.get("snapshot"), ctx.get("base"))
            if ctx.get("call") == "delta" else
            "GetMetadataAllocated for VolumeSnapshot %s/%s" % (ctx.get("namespace"), ctx.get("snapshot")))
        capacity = self.validator.capacity
        msg = ("%s: the CSI driver returned no blocks from starting_offset %d (volume capacity %s)%s; the listing "
               "would stop short there. ceph-csi builds without the fix of March 2026 (ceph/ceph-csi PR #6200) "
               "list nothing whenever starting_offset is above 0. Run the task again (a listing that is not cut "
               "needs no resume), or upgrade the CSI driver"
               % (what, offset, "unknown" if capacity is None else "%d bytes" % capacity,
                  " and reading again from offset 0 returned no blocks either" if again else ""))
        return SnapshotMetadataError(msg)

    def summary(self):
        v = self.validator
        return {
            "messages": v.messages,
            "tuples": v.tuples,
            "resumes": self.resumes,
            "tuples_dropped_on_resume": v.dropped,
            "tuples_clipped_on_resume": v.clipped,
            "rereads_from_zero": len(self.rereads_at),
            "stream_errors": self.errors[-20:],
        }
