# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy engine of ``block_sync``.

Pipeline: validate everything -> build a plan (extents to copy, source holes to make zero on the
target) -> split into pieces of ``request_size`` -> worker threads (one file descriptor or one
libnbd connection each) read, detect zeros per 64 KiB, write data / punch holes / send NBD zero ->
periodic commits (flush the target, then record finished ranges in the resume state) -> one
final flush -> optional verification and whole-image digests -> state ``complete``.

Nothing is written before every check passed. The resume state only ever names ranges that were
flushed to the target, so a crash or ``kill -9`` at any point loses at most the work since the
last commit, and re-running the same task continues from there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect
import hashlib
import heapq
import json
import os
import threading
import time

from ansible_collections.cbt.toolkit.plugins.module_utils import extents as extlib
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_hash import PieceHasher
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_io import (
    BlockCopyError,
    LocalEndpoint,
    ValidationError,
    describe_local,
    is_nbd_url,
    open_endpoint,
    zero_bytes,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_state import (
    ResumeState,
    StateFiles,
    StatusFile,
    TargetLock,
    default_state_dir,
    read_json,
    read_plan,
    write_plan,
)

MiB = 1024 * 1024
DEFAULT_REQUEST_SIZE = 4 * MiB
MIN_REQUEST_SIZE = 64 * 1024
MAX_REQUEST_SIZE = 32 * MiB
DEFAULT_WORKERS = 4
GRANULE = 64 * 1024
ZERO_PIECE = 64 * MiB
DIGEST_BLOCK = 4 * MiB
# bytes per worker whose write-back may be in flight before the worker waits for its oldest piece
WRITE_BEHIND = 16 * MiB
COMMIT_INTERVAL = 5.0
COMMIT_BYTES = 1024 * MiB
# each commit reads back up to this much of the first non-zero granule of its last finished data piece as a
# witness of the target
WITNESS_LENGTH = 64 * 1024
MODES = ("extents", "allocated", "all", "compare")
PLAN_VERSION = 1

COPY = 0
ZERO = 1


class VerificationError(BlockCopyError):
    def __init__(self, message, result):
        BlockCopyError.__init__(self, message)
        self.result = result


class SyncRequest(object):
    """Parameters of one run (the module's options, already type-checked)."""

    def __init__(self, src, dest, mode=None, extents=None, extent_file=None, extents_check="normalize",
                 dest_is_zero=False, create=True, verify=False, image_digest=False, checksum_algorithm="xxh3",
                 checksum_file=None, resume="auto", state_dir=None, status_file=None, sync_id=None,
                 request_size=DEFAULT_REQUEST_SIZE, workers=DEFAULT_WORKERS, check_mode=False,
                 commit_interval=COMMIT_INTERVAL, commit_bytes=COMMIT_BYTES):
        self.src = src
        self.dest = dest
        self.mode = mode
        self.extents = extents
        self.extent_file = extent_file
        self.extents_check = extents_check
        self.dest_is_zero = dest_is_zero
        self.create = create
        self.verify = verify
        self.image_digest = image_digest
        self.checksum_algorithm = checksum_algorithm
        self.checksum_file = checksum_file
        self.resume = resume
        self.state_dir = state_dir or default_state_dir()
        self.status_file = status_file
        self.sync_id = sync_id
        self.request_size = request_size
        self.workers = workers
        self.check_mode = check_mode
        self.commit_interval = commit_interval
        self.commit_bytes = commit_bytes


class Stats(object):
    __slots__ = ("read", "written", "zeroed", "unchanged", "skipped_zero", "differing", "done")

    def __init__(self):
        self.read = self.written = self.zeroed = self.unchanged = self.skipped_zero = 0
        self.differing = self.done = 0

    def add(self, other):
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _sha(data):
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _target_id(dest):
    if is_nbd_url(dest):
        return "nbd:" + dest
    exists, kind = describe_local(dest)
    if exists and kind == "block":
        rdev = os.stat(dest).st_rdev
        return "block:%d:%d" % (os.major(rdev), os.minor(rdev))
    return "file:" + os.path.realpath(dest)


def _fingerprint(endpoint):
    ident = endpoint.identity()
    return ":".join(str(x) for x in ident)


def _intersect(ranges, others):
    """Intersection of two sorted, non-overlapping range lists."""
    out = []
    j = 0
    for off, length in ranges:
        end = off + length
        while j < len(others) and others[j][0] + others[j][1] <= off:
            j += 1
        k = j
        while k < len(others) and others[k][0] < end:
            start = max(off, others[k][0])
            stop = min(end, others[k][0] + others[k][1])
            if stop > start:
                out.append((start, stop - start))
            k += 1
    return out


def load_extents(req, capacity):
    """Parse, check and normalise the requested extents. Returns ``(extents, input_info)``."""
    raw = []
    metadata = {}
    name = "extents"
    coverage, reason = extlib.COVERAGE_CHANGED, None
    if req.extent_file:
        name = "extent_file %s" % req.extent_file
        try:
            metadata, raw = extlib.read_extent_file(req.extent_file)
        except (IOError, OSError) as exc:
            raise ValidationError("cannot read extent_file %s: %s" % (req.extent_file, exc))
        except extlib.ExtentError as exc:
            raise ValidationError(str(exc))
        cap = metadata.get("capacity")
        if cap is not None and cap != capacity:
            raise ValidationError("extent_file %s was written for a disk of capacity %d bytes but the source %s "
                                  "is %d bytes; the extent list does not belong to this source (or the disk was "
                                  "resized: run a full sync)" % (req.extent_file, cap, req.src, capacity))
        try:
            coverage, starting_offset, reason = extlib.coverage_of(metadata, name="extent_file %s" % req.extent_file)
        except extlib.ExtentError as exc:
            raise ValidationError(str(exc))
        if starting_offset > 0:
            raise ValidationError("extent_file %s lists only the range from starting_offset=%d to the end of the "
                                  "disk; what changed before offset %d is unknown, so applying it could leave the "
                                  "target inconsistent. List the changes again from offset 0"
                                  % (req.extent_file, starting_offset, starting_offset))
    if req.extents is not None:
        try:
            raw = raw + extlib.parse_extents(req.extents)
        except extlib.ExtentError as exc:
            raise ValidationError(str(exc))
    is_sorted = all(raw[i][0] <= raw[i + 1][0] for i in range(len(raw) - 1))
    strict = req.extents_check == "strict"
    try:
        normalized = extlib.normalize(raw, capacity=capacity, unsorted="reject" if strict else "sort",
                                      overlapping="reject" if strict else "merge", name=name)
    except extlib.ExtentError as exc:
        raise ValidationError(str(exc))
    input_bytes = extlib.total_bytes(raw)
    info = {
        "count": len(raw),
        "bytes": input_bytes,
        "sorted": is_sorted,
        "overlapping_bytes": input_bytes - extlib.total_bytes(normalized),
        "normalized_count": len(normalized),
        "metadata": dict((k, v) for k, v in metadata.items()),
        "coverage": coverage,
    }
    if reason is not None:
        info["coverage_from"] = reason
    notes = []
    if not is_sorted:
        notes.append("the extents were not sorted by offset; they were sorted")
    if info["overlapping_bytes"]:
        notes.append("overlapping extents were merged (%d bytes listed twice)" % info["overlapping_bytes"])
    info["normalization"] = "; ".join(notes) if notes else "none needed"
    return normalized, info


class Engine(object):
    """One ``block_sync`` run. ``run()`` returns the result dict or raises ``BlockCopyError``."""

    def __init__(self, req, warn=None):
        self.req = req
        self.warn = warn or (lambda msg: None)
        self.src = None
        self.dst = None
        self.dest_created = False
        self.sessions = []
        self.result = {}
        self._lock = threading.Lock()
        self._completed = []
        self._pending = 0
        # the first non-zero granule of the last data piece finished since the last commit (a witness candidate)
        self._mark = None
        self.resumed_bytes = 0
        self.total_bytes = 0
        self.error = None
        self.stop = threading.Event()
        self._wake = threading.Event()
        self.stats = []
        self.hasher = None
        self.src_digests = {}
        self.src_have = {}
        self.dst_digests = {}
        self.dst_have = {}

    # -- validation and plan -------------------------------------------------------------------
    def _resolve_mode(self):
        req = self.req
        has_list = req.extents is not None or bool(req.extent_file)
        mode = req.mode
        if mode is None:
            if not has_list:
                raise ValidationError("nothing to copy: give extents or extent_file, or set mode to allocated, "
                                      "all or compare")
            mode = "extents"
        if mode not in MODES:
            raise ValidationError("mode %r is not one of %s" % (mode, ", ".join(MODES)))
        if mode == "extents" and not has_list:
            raise ValidationError("mode extents needs extents or extent_file")
        if mode in ("allocated", "all") and has_list:
            raise ValidationError("extents/extent_file only apply to mode extents or compare, not %s" % mode)
        if req.dest_is_zero and mode not in ("allocated", "all"):
            raise ValidationError("dest_is_zero is only for a first full sync (mode allocated or all) into a new "
                                  "or zeroed target; an incremental sync must write extents that changed to zeros")
        rs = req.request_size
        if rs < MIN_REQUEST_SIZE or rs > MAX_REQUEST_SIZE or rs % 4096:
            raise ValidationError("request_size %d must be a multiple of 4096 between %d and %d" % (
                rs, MIN_REQUEST_SIZE, MAX_REQUEST_SIZE))
        if req.workers < 1 or req.workers > 64:
            raise ValidationError("workers %d must be between 1 and 64" % req.workers)
        if req.resume not in ("auto", "restart"):
            raise ValidationError("resume %r must be auto or restart" % req.resume)
        return mode

    def _open(self, mode):
        req = self.req
        self.src = open_endpoint(req.src, writable=False)
        if "://" in req.dest and not is_nbd_url(req.dest):
            raise ValidationError("%s: unsupported URL scheme; use a file or block-device path, or an NBD URL "
                                  "(nbd://host:port/export, nbd+unix:///export?socket=/path)" % req.dest)
        if is_nbd_url(req.dest):
            self.dst = open_endpoint(req.dest, writable=not req.check_mode)
            if req.check_mode and self.dst.read_only:
                raise ValidationError("NBD export %s is read-only; it cannot be the target" % req.dest)
            return
        if not req.dest or req.dest.endswith("/"):
            raise ValidationError("dest %r is not a file, block device or NBD URL; name the target itself (a path "
                                  "that does not end in /)" % req.dest)
        exists, _kind = describe_local(req.dest)
        if not exists and os.path.islink(req.dest):
            raise ValidationError("target %s is a symbolic link to %s, which does not exist; point it at the target "
                                  "or give the target's own path" % (req.dest, os.readlink(req.dest)))
        if not exists:
            if mode == "extents":
                raise ValidationError(
                    "target %s does not exist; an incremental sync (mode extents) writes only the changed extents "
                    "and needs the target of the previous full sync. Run a full sync first (mode allocated or "
                    "all), which creates the file" % req.dest)
            if not req.create:
                raise ValidationError("target %s does not exist and create is false" % req.dest)
            parent = os.path.dirname(os.path.abspath(req.dest))
            if not os.path.isdir(parent):
                raise ValidationError("cannot create target %s: folder %s does not exist" % (req.dest, parent))
            if not os.access(parent, os.W_OK):
                raise ValidationError("cannot create target %s: folder %s is not writable" % (req.dest, parent))
            # created later, after every check passed and the lock is held
            self.dest_created = True
            return
        if req.check_mode:
            # claimed like the run would (O_EXCL on a block device): a mounted target fails here already
            self.dst = LocalEndpoint(req.dest, writable=False, exclusive=True)
            if not os.access(req.dest, os.W_OK):
                raise ValidationError("target %s is read-only (no write permission); make it writable or choose "
                                      "another target" % req.dest)
            if self.dst.kind == "block":
                from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_io import block_device_read_only
                if block_device_read_only(self.dst.fd):
                    raise ValidationError("block device %s is read-only (BLKROGET)" % req.dest)
        else:
            self.dst = LocalEndpoint(req.dest, writable=True, exclusive=True)

    def _validate_pair(self):
        req = self.req
        if req.checksum_file and not req.check_mode:
            folder = os.path.dirname(os.path.abspath(req.checksum_file))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise ValidationError("checksum_file %s cannot be written: folder %s %s; create it or choose another "
                                      "path" % (req.checksum_file, folder,
                                                "is not writable" if os.path.isdir(folder) else "does not exist"))
        if self.dst is None:
            return
        same = self.src.identity() == self.dst.identity()
        if not same and isinstance(self.src, LocalEndpoint) and isinstance(self.dst, LocalEndpoint):
            backing_src = self.src.backing_file_identity()
            backing_dst = self.dst.backing_file_identity()
            same = (backing_src is not None and backing_src == self.dst.identity()) or \
                (backing_dst is not None and backing_dst == self.src.identity()) or \
                (backing_src is not None and backing_src == backing_dst)
        if same:
            raise ValidationError("source %s and target %s are the same %s; copying onto itself is refused" % (
                req.src, req.dest, "loop device backing file" if not self.src.identity() == self.dst.identity()
                else "object"))
        if self.dst.size < self.src.size:
            raise ValidationError("target %s is %d bytes, smaller than the source %s (%d bytes); grow the target "
                                  "first (truncate -s / qemu-img resize / a larger volume)" % (
                                      req.dest, self.dst.size, req.src, self.src.size))
        if self.dst.size > self.src.size:
            self.warn("target %s (%d bytes) is larger than the source (%d bytes); bytes after offset %d are "
                      "not touched" % (req.dest, self.dst.size, self.src.size, self.src.size))

    def _check_alignment(self, ranges):
        """Refuse, before anything is written, ranges an NBD server would reject: it may require requests to
        start and end on its minimum block size (the end of the disk excepted)."""
        for endpoint, role in ((self.src, "source"), (self.dst, "target")):
            block = getattr(endpoint, "min_block", 1) if endpoint is not None else 1
            if block <= 1:
                continue
            for off, length in ranges:
                if off % block or ((off + length) % block and off + length != self.src.size):
                    raise ValidationError(
                        "extent at offset %d, length %d is not aligned to the %d-byte minimum block size of the NBD "
                        "%s %s; widen the extents to multiples of %d bytes (changed-block lists normally are)"
                        % (off, length, block, role, endpoint.name, block))

    def _plan(self, mode):
        req = self.req
        size = self.src.size
        info = None
        copy = []
        zero = []
        allocation_known = None
        if mode == "extents":
            copy, info = load_extents(req, size)
            if info["coverage"] == extlib.COVERAGE_ALLOCATED:
                # the list is all the data of the source: whatever it does not list reads as zeros there, and
                # must on the target too (data the source no longer holds would stay otherwise)
                zero = extlib.subtract([(0, size)], copy) if size else []
        elif mode == "compare":
            if req.extents is not None or req.extent_file:
                copy, info = load_extents(req, size)
                if info["coverage"] == extlib.COVERAGE_ALLOCATED:
                    raise ValidationError(
                        "%s lists all the data of the source (%s): what it leaves out must become zeros on the "
                        "target, which mode compare does not do; use mode extents with it (or mode compare "
                        "without the list)" % ("extent_file %s" % req.extent_file if req.extent_file else "extents",
                                               info.get("coverage_from") or "coverage=allocated"))
            else:
                copy = [(0, size)] if size else []
        elif mode == "all":
            copy = [(0, size)] if size else []
        else:
            alloc = self.src.allocation(0, size) if size else []
            allocation_known = alloc is not None
            if alloc is None:
                copy = [(0, size)] if size else []
                self.warn("the source %s cannot report allocation (block devices cannot, NBD servers need "
                          "base:allocation); every byte is read and zeros are detected instead" % req.src)
            else:
                copy = extlib.normalize([(o, n) for o, n, d in alloc if d])
                zero = extlib.normalize([(o, n) for o, n, d in alloc if not d])
        return copy, zero, info, allocation_known

    def _plan_id(self, mode, copy, zero):
        src_ident = list(self.src.identity())
        if self.src.kind == "file":
            st = os.fstat(self.src.fd)
            src_ident.append(st.st_mtime_ns)
        return _sha({
            "v": PLAN_VERSION, "mode": mode, "src": [str(x) for x in src_ident], "size": self.src.size,
            "dest": _target_id(self.req.dest), "copy": _sha(copy), "zero": _sha(zero), "sync_id": self.req.sync_id,
        })[:32]

    # -- pieces ----------------------------------------------------------------------------------
    def _pieces(self, extents, done, piece, kind):
        starts = [o for o, _n in extents]
        for off, length in extlib.subtract(extents, done):
            idx = bisect.bisect_right(starts, off) - 1
            eoff = extents[idx][0]
            end = off + length
            pos = off
            while pos < end:
                slot = (pos - eoff) // piece
                pstart = eoff + slot * piece
                pend = min(pstart + piece, eoff + extents[idx][1])
                stop = min(pend, end)
                yield (pos, kind, stop - pos, idx, slot, pos == pstart and stop == pend)
                pos = stop

    # -- workers ---------------------------------------------------------------------------------
    def _next(self):
        with self._lock:
            try:
                return next(self._iter)
            except StopIteration:
                return None

    def _complete(self, off, length, mark=None):
        with self._lock:
            self._completed.append((off, length))
            if mark is not None:
                self._mark = mark
            self._pending += length
            wake = self._pending >= self.req.commit_bytes
        if wake:
            self._wake.set()

    def _emit(self, dst, off, view, a, b, is_zero, st):
        if is_zero:
            if self.skip_zero:
                st.skipped_zero += b - a
            else:
                dst.zero(off + a, b - a)
                st.zeroed += b - a
        else:
            dst.write(off + a, view[a:b])
            st.written += b - a

    def _write_detect(self, dst, off, data, st, all_zero=None):
        n = len(data)
        zero = self.zero
        if all_zero is None:
            all_zero = zero.startswith(data)
        if all_zero:
            self._emit(dst, off, data, 0, n, True, st)
            return
        if n <= GRANULE:
            self._emit(dst, off, data, 0, n, False, st)
            return
        view = memoryview(data)
        run_start = 0
        run_zero = None
        pos = 0
        while pos < n:
            end = min(pos + GRANULE, n)
            is_zero = zero.startswith(view[pos:end])
            if run_zero is None:
                run_zero = is_zero
            elif is_zero != run_zero:
                self._emit(dst, off, view, run_start, pos, run_zero, st)
                run_start = pos
                run_zero = is_zero
            pos = end
        self._emit(dst, off, view, run_start, n, run_zero, st)

    def _first_data(self, off, data, all_zero=None):
        """``(offset, length)`` of the first non-zero 64 KiB granule of ``data`` (read at ``off``), or None.
        After the piece is done the target holds these bytes: a place worth a witness."""
        if all_zero is None:
            all_zero = self.zero.startswith(data)
        if all_zero:
            return None
        view = memoryview(data)
        n = len(view)
        pos = 0
        while pos < n:
            end = min(pos + GRANULE, n)
            if not self.zero.startswith(view[pos:end]):
                return off + pos, end - pos
            pos = end
        return None

    def _write_differences(self, dst, off, sbuf, sview, tview, st):
        """Compare mode: write only the 64 KiB granules that differ."""
        n = len(sview)
        run_start = None
        pos = 0
        while pos <= n:
            end = min(pos + GRANULE, n)
            differs = pos < n and not sbuf.startswith(tview[pos:end], pos)
            if differs and run_start is None:
                run_start = pos
            elif not differs and run_start is not None:
                st.differing += pos - run_start
                if not self.req.check_mode:
                    self._write_detect(dst, off + run_start, sview[run_start:pos], st)
                run_start = None
            if pos >= n:
                break
            pos = end

    def _digest(self, data, all_zero=None):
        if all_zero is None:
            all_zero = self.zero.startswith(data)
        return self.hasher.zero_piece(len(data)) if all_zero else self.hasher.piece(data)

    def _store_digest(self, digests, have, idx, slot, digest):
        size = self.hasher.size
        digests[idx][slot * size:(slot + 1) * size] = digest
        have[idx][slot] = 1

    def _target_digest(self, dst, off, length, buf, source_zero):
        """Digest of a target piece, read back. Where the source piece is all zeros and the target
        reports a hole for the whole piece (SEEK_DATA, NBD block status), the hole is what is checked:
        it reads as zeros by definition, and reading a just-punched hole back costs more than the
        copy of a data piece."""
        if source_zero:
            alloc = dst.allocation(off, length)
            if alloc is not None and not any(is_data for _o, _n, is_data in alloc):
                return self.hasher.zero_piece(length)
        return self._digest(dst.read(off, length, buf))

    def _zero_target_ranges(self, dst, off, length):
        """Parts of a source hole that must be zeroed on the target (skips target holes)."""
        if self.skip_zero:
            return []
        alloc = dst.allocation(off, length) if hasattr(dst, "allocation") else None
        if alloc is None:
            return [(off, length)]
        return [(o, n) for o, n, is_data in alloc if is_data]

    def _worker(self, index):
        st = self.stats[index]
        src, dst = self.sessions[index]
        buf = bytearray(self.piece)
        tbuf = bytearray(self.piece) if self.mode == "compare" or self.hash_pieces else None
        behind = None
        try:
            if isinstance(dst, LocalEndpoint) and not self.req.check_mode:
                behind = dst.write_behind(WRITE_BEHIND)
            while not self.stop.is_set():
                item = self._next()
                if item is None:
                    return
                off, kind, length, idx, slot, full = item
                mark = None
                if kind == ZERO:
                    for zoff, zlen in self._zero_target_ranges(dst, off, length):
                        dst.zero(zoff, zlen)
                        st.zeroed += zlen
                else:
                    before = st.written
                    data = src.read(off, length, buf)
                    st.read += length
                    hashed = self.hash_pieces and full
                    # compare mode finds zeros itself, in the granules that differ
                    source_zero = self.zero.startswith(data) if hashed or self.mode != "compare" else None
                    if hashed:
                        self._store_digest(self.src_digests, self.src_have, idx, slot,
                                           self._digest(data, source_zero))
                    if self.mode == "compare":
                        tview = memoryview(dst.read(off, length, tbuf))
                        st.read += length
                        sbuf = data if not isinstance(data, memoryview) else buf
                        if sbuf.startswith(tview):
                            st.unchanged += length
                        else:
                            self._write_differences(dst, off, sbuf, memoryview(data), tview, st)
                    else:
                        self._write_detect(dst, off, data, st, source_zero)
                    if hashed:
                        # read back at once, while the piece is hot in the caches: the verification pass
                        # after the copy only reads what was not checked here (resumed or partial pieces)
                        self._store_digest(self.dst_digests, self.dst_have, idx, slot,
                                           self._target_digest(dst, off, length, tbuf, source_zero))
                    if behind is not None and st.written > before:
                        behind.written(off, length)
                    if not self.req.check_mode:
                        mark = self._first_data(off, data, source_zero)
                st.done += length
                self._complete(off, length, mark)
        except Exception as exc:  # pylint: disable=broad-except
            self.error = exc
            self.stop.set()
        finally:
            if behind is not None:
                behind.close()
            self._wake.set()

    def _open_sessions(self, count):
        sessions = [(self.src, self.dst)]
        for _i in range(1, count):
            src = self.src.session() if self.src.parallel else self.src
            dst = self.dst.session() if (self.dst is not None and self.dst.parallel) else self.dst
            sessions.append((src, dst))
        return sessions

    def _close_sessions(self):
        for src, dst in self.sessions[1:]:
            if src is not self.src:
                src.close()
            if dst is not self.dst and dst is not None:
                dst.close()
        self.sessions = []

    def _run_pool(self, items, worker_fn, progress=None, count=None):
        self._iter = iter(items)
        count = count or self.workers
        threads = []

        def run(index):
            try:
                worker_fn(index)
            finally:
                self._wake.set()  # the pool notices a finished worker at once, not at the next poll

        for index in range(count):
            thread = threading.Thread(target=run, args=(index,), name="block_sync-%d" % index)
            thread.daemon = True
            thread.start()
            threads.append(thread)
        try:
            while True:
                self._wake.clear()  # before the check: a worker that ends after it wakes the wait below
                if not [t for t in threads if t.is_alive()]:
                    break
                self._wake.wait(0.2)
                if progress is not None and self.error is None:
                    progress()
        except BaseException:
            # a failed commit (flush or state write) or an interruption: no worker may go on writing, and
            # none may still use an endpoint when the caller closes it
            self.stop.set()
            for thread in threads:
                thread.join()
            raise
        for thread in threads:
            thread.join()
        if self.error is not None:
            raise self.error

    # -- commits ---------------------------------------------------------------------------------
    def _commit(self, force=False, complete=False, save=True):
        """Flush the target, then record what was finished before the flush started (``save=False``:
        in memory only, for the caller's next save)."""
        with self._lock:
            if not self._completed and not complete:
                return
            if not force and self._pending < self.req.commit_bytes and \
                    time.time() - self._last_commit < self.req.commit_interval:
                return
            taken = self._completed
            mark = self._mark
            self._completed = []
            self._mark = None
            self._pending = 0
        self.dst.flush()
        self.state.add_done(taken)
        self._add_witness(mark)
        if complete:
            self.state.status = "complete"
        if save:
            self.state.save()
        self._last_commit = time.time()

    def _progress(self):
        self._commit()
        done = self.resumed_bytes + sum(s.done for s in self.stats)
        self.status.write("running", done, self.total_bytes)

    # -- verification ----------------------------------------------------------------------------
    def _verify(self, copy, zero):
        hasher = self.hasher
        size = hasher.size
        tdig = self.dst_digests
        mismatched_zero = []
        # pieces the copy already read back and hashed on both sides are not read again
        items = [(off, kind, length, idx, slot) for off, kind, length, idx, slot, _full in heapq.merge(
            self._pieces(copy, [], self.piece, COPY), self._pieces(zero, [], ZERO_PIECE, ZERO))
            if kind == ZERO or not (self.src_have[idx][slot] and self.dst_have[idx][slot])]
        lock = threading.Lock()

        def worker(index):
            src, dst = self.sessions[index]
            buf = bytearray(self.piece)
            try:
                while not self.stop.is_set():
                    item = self._next()
                    if item is None:
                        return
                    off, kind, length, idx, slot = item
                    if kind == ZERO:
                        alloc = dst.allocation(off, length)
                        ranges = [(o, n) for o, n, d in alloc if d] if alloc is not None else [(off, length)]
                        for roff, rlen in ranges:
                            pos = roff
                            while pos < roff + rlen:
                                step = min(roff + rlen - pos, self.piece)
                                if not self.zero.startswith(dst.read(pos, step, buf)):
                                    with lock:
                                        mismatched_zero.append((pos, step))
                                pos += step
                        continue
                    if not self.src_have[idx][slot]:
                        self._store_digest(self.src_digests, self.src_have, idx, slot,
                                           self._digest(src.read(off, length, buf)))
                    source_zero = self.src_digests[idx][slot * size:(slot + 1) * size] == hasher.zero_piece(length)
                    self._store_digest(tdig, self.dst_have, idx, slot,
                                       self._target_digest(dst, off, length, buf, source_zero))
            except Exception as exc:  # pylint: disable=broad-except
                self.error = exc
                self.stop.set()

        started = time.time()
        self._run_pool(items, worker)
        mismatches = []
        lines = []
        src_all = bytearray()
        dst_all = bytearray()
        for idx, (eoff, elen) in enumerate(copy):
            sd = bytes(self.src_digests[idx])
            td = bytes(tdig[idx])
            s_hex = hasher.combine(sd)
            t_hex = hasher.combine(td)
            src_all += bytes.fromhex(s_hex)
            dst_all += bytes.fromhex(t_hex)
            if sd != td:
                for slot in range(len(sd) // size):
                    if sd[slot * size:(slot + 1) * size] != td[slot * size:(slot + 1) * size]:
                        poff = eoff + slot * self.piece
                        mismatches.append((poff, min(self.piece, eoff + elen - poff)))
            if self.req.checksum_file:
                lines.append("%d %d %s %s" % (eoff, elen, s_hex, t_hex))
        mismatches = extlib.normalize(mismatches + mismatched_zero)
        result = {
            "algorithm": self.req.checksum_algorithm,
            "piece_size": self.piece,
            "extents": len(copy),
            "bytes": extlib.total_bytes(copy),
            "zero_bytes_checked": extlib.total_bytes(zero),
            "source_digest": hasher.combine(bytes(src_all)),
            "target_digest": hasher.combine(bytes(dst_all)),
            "mismatches": [{"offset": o, "length": n} for o, n in mismatches[:100]],
            "mismatch_count": len(mismatches),
            "seconds": round(time.time() - started, 3),
            "passed": not mismatches,
        }
        if self.req.checksum_file:
            from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_state import atomic_write
            header = ["# cbt.toolkit block_sync checksums v1", "# algorithm=%s" % self.req.checksum_algorithm,
                      "# piece_size=%d" % self.piece, "# source=%s" % self.req.src, "# target=%s" % self.req.dest,
                      "# columns=offset length source_digest target_digest"]
            try:
                atomic_write(self.req.checksum_file, "\n".join(header + lines) + "\n")
            except (IOError, OSError) as exc:
                raise BlockCopyError("cannot write checksum_file %s: %s" % (self.req.checksum_file, exc))
            result["checksum_file"] = self.req.checksum_file
        return result, mismatches

    def _image_digest(self, endpoint_index, size):
        """blkhash-style digest of ``[0, size)``: hash of the digests of 4 MiB blocks (zero blocks cached)."""
        hasher = self.hasher
        dsize = hasher.size
        nblocks = -(-size // DIGEST_BLOCK)
        digests = bytearray(nblocks * dsize)
        primary = self.sessions[0][endpoint_index]
        alloc = primary.allocation(0, size) if size else []
        data_ranges = [(o, n) for o, n, d in alloc if d] if alloc is not None else [(0, size)]
        data_blocks = set()
        for off, length in data_ranges:
            for b in range(off // DIGEST_BLOCK, -(-(off + length) // DIGEST_BLOCK)):
                data_blocks.add(b)
        for b in range(nblocks):
            if b not in data_blocks:
                length = min(DIGEST_BLOCK, size - b * DIGEST_BLOCK)
                digests[b * dsize:(b + 1) * dsize] = hasher.zero_piece(length)
        items = sorted(data_blocks)

        def worker(index):
            ep = self.sessions[index][endpoint_index]
            buf = bytearray(DIGEST_BLOCK)
            try:
                while not self.stop.is_set():
                    b = self._next()
                    if b is None:
                        return
                    off = b * DIGEST_BLOCK
                    length = min(DIGEST_BLOCK, size - off)
                    digests[b * dsize:(b + 1) * dsize] = self._digest(ep.read(off, length, buf))
            except Exception as exc:  # pylint: disable=broad-except
                self.error = exc
                self.stop.set()

        self._run_pool(items, worker)
        return hasher.combine(bytes(digests))

    # -- main ------------------------------------------------------------------------------------
    def _created_target(self):
        """Whether this run created the target file."""
        return self.dest_created and self.dst is not None and bool(getattr(self.dst, "created", False))

    def target_changed(self):
        """Whether this run wrote to the target (or created it) so far."""
        return self._created_target() or any(s.written or s.zeroed for s in self.stats)

    def run(self):
        started = time.time()
        req = self.req
        mode = self._resolve_mode()
        self.mode = mode
        try:
            return self._run(mode, started)
        except Exception as exc:
            # a failed run may already have written: the module reports changed from this
            exc.target_changed = self.target_changed()
            raise
        finally:
            self._close_sessions()
            if self.dst is not None:
                self.dst.close()
            if self.src is not None:
                self.src.close()

    def _run(self, mode, started):
        req = self.req
        if req.verify or req.image_digest:
            self.hasher = PieceHasher(req.checksum_algorithm)
        self._open(mode)
        self._validate_pair()
        copy, zero, info, allocation_known = self._plan(mode)
        self._check_alignment(copy + zero)
        plan_id = self._plan_id(mode, copy, zero)
        piece = min(req.request_size, self.src.max_request,
                    self.dst.max_request if self.dst is not None else MAX_REQUEST_SIZE)
        self.piece = piece
        self.zero = zero_bytes(max(piece, GRANULE))
        self.skip_zero = bool(req.dest_is_zero or self.dest_created)
        self.state_saved = False
        self.hash_pieces = bool(req.verify and not req.check_mode)
        result = self.result
        result.update({
            "changed": False, "source": req.src, "target": req.dest, "mode": mode, "size": self.src.size,
            "dest_size": self.dst.size if self.dst is not None else self.src.size,
            "dest_created": bool(self.dest_created), "plan_id": plan_id, "sync_id": req.sync_id,
            "src_kind": self.src.kind,
            "dest_kind": self.dst.kind if self.dst is not None else "file",
            "plan": {"extents": len(copy), "bytes": extlib.total_bytes(copy), "hole_extents": len(zero),
                     "hole_bytes": extlib.total_bytes(zero),
                     "zeroes_unlisted": bool(info is not None and mode == "extents"
                                             and info["coverage"] == extlib.COVERAGE_ALLOCATED)},
            "request_size": piece, "workers": req.workers,
            "bytes_read": 0, "bytes_written": 0, "bytes_zeroed": 0, "bytes_unchanged": 0,
            "bytes_differing": 0, "bytes_skipped_zero": 0, "bytes_resumed": 0, "resumed": False,
            "already_complete": False,
        })
        if info is not None:
            result["input_extents"] = info
        if allocation_known is not None:
            result["allocation_known"] = allocation_known
        files = StateFiles(req.state_dir, _target_id(req.dest), req.status_file)
        result["state_file"] = files.state
        result["status_file"] = files.status
        target_fp = _fingerprint(self.dst) if self.dst is not None else None

        if req.check_mode:
            # check mode takes no lock: it decides on the state as it reads now
            old = self._read_state(files, target_fp, plan_id)
            return self._check_mode_result(mode, copy, zero, old, plan_id, files, started)

        files.ensure_dir()
        lock = TargetLock(files.lock, req.dest)
        lock.acquire()
        try:
            old = None
            if self.dst is None:
                self.dst = LocalEndpoint(req.dest, writable=True, create_size=self.src.size)
                if not self.dst.created:
                    raise ValidationError("target %s appeared while this run was starting; re-run" % req.dest)
                target_fp = _fingerprint(self.dst)
            else:
                # read under the lock: another run may have changed the state until it released the lock
                old = self._read_state(files, target_fp, plan_id)
            if isinstance(self.dst, LocalEndpoint):
                lock.lock_target(self.dst.fd)
            try:
                return self._locked_run(mode, copy, zero, old, plan_id, files, target_fp, started)
            except BaseException:
                self._remove_unrecorded_target()
                raise
        finally:
            lock.release()

    def _remove_unrecorded_target(self):
        """A target file this run created, but failed before its resume state said "running" (the state
        folder is full or not writable), is removed: nothing would tell a later run that it is no replica."""
        if not self._created_target() or self.state_saved:
            return
        try:
            os.unlink(self.req.dest)
        except OSError as exc:
            self.warn("could not remove the target %s this run created before it failed: %s; delete it before "
                      "using it as a replica" % (self.req.dest, exc))

    def _read_state(self, files, target_fp, plan_id):
        """The resume state of this target, if it is of this target and can still be trusted.

        ``dest_is_zero`` describes a fresh target: once a run has written to it (a state of it exists, even
        one that is not trusted or cannot be read), it may hold data where the source has zeros now, so zero
        ranges are written after all."""
        old, written_before = self._load_state(files, target_fp, plan_id)
        if written_before and self.req.dest_is_zero and not self.dest_created:
            self.skip_zero = False
            self.warn("dest_is_zero is ignored: an earlier run wrote to target %s (resume state %s), so it may hold "
                      "data where the source has zeros; zero ranges are written" % (self.req.dest, files.state))
        return old

    def _load_state(self, files, target_fp, plan_id):
        """``(state or None, whether a state of this target exists)``."""
        try:
            old_data = read_json(files.state)
            old = ResumeState.from_dict(files, old_data) if old_data is not None else None
        except (BlockCopyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            if self.req.resume == "restart":
                self.warn("resume: restart: the resume state %s cannot be read (%s); it is replaced"
                          % (files.state, exc))
                return None, True
            if isinstance(exc, BlockCopyError):
                raise
            raise BlockCopyError("resume state %s is damaged (%s: %s); delete it or set resume: restart"
                                 % (files.state, type(exc).__name__, exc))
        if old is None or old_data.get("target_fingerprint") != target_fp:
            return None, False
        return self._trusted_state(old, plan_id), True

    def _distrusted(self, old, plan_id):
        """What is left of a state that cannot be trusted: nothing, unless it is an unfinished run of another
        plan. That one keeps guarding the extents it had still to copy, with none of its progress believed."""
        if old.plan_id == plan_id or old.status == "complete":
            return None
        old.done = []
        old.witnesses = []
        return old

    def _trusted_state(self, old, plan_id):
        """``old``, unless what it records can no longer be trusted (then None, with a warning):

        * it records data (non-zero bytes) as copied but no sample of the target to check that the target
          still holds it: a target re-created in place reads as zeros and could not be told apart;
        * a sample of the target it recorded (``witnesses``) reads differently now: the target was
          re-created or written by something else since, even though path and inode match;
        * it is an unfinished run of this plan from an NBD export or a block device without ``sync_id``:
          nothing shows that the source still serves the same data (a file's mtime is in the plan).
        """
        req = self.req
        if old.plan_id == plan_id and old.status != "complete" and old.done and self.src.kind != "file" \
                and not req.sync_id and req.resume == "auto":
            self.warn("an unfinished run copied %d bytes of this plan from %s, but an NBD export or block device "
                      "cannot show that it still serves the same data; copying everything again. Set sync_id to "
                      "the snapshot's identity (changeId, snapshot id) to resume such runs"
                      % (extlib.total_bytes(old.done), req.src))
            return None
        if old.done and not old.witnesses and old.holds_data is not False:
            self.warn("the resume state %s of target %s records %d bytes as copied%s, but no sample of the target "
                      "to check that the target still holds them (a target re-created in place reads as zeros). "
                      "The saved progress is ignored and the whole plan is copied"
                      % (old.files.state, req.dest, extlib.total_bytes(old.done),
                         ", data among them" if old.holds_data else " (a state written by an older version)"))
            return self._distrusted(old, plan_id)
        if self.dst is None:
            return old
        buf = bytearray(max([w[1] for w in old.witnesses] or [0]))
        for off, length, want in old.witnesses:
            if extlib.subtract([(off, length)], old.done):
                continue  # no longer recorded as done (a verification mismatch): nothing to compare
            if hashlib.sha256(self.dst.read(off, length, buf)).hexdigest() != want:
                self.warn("target %s no longer holds what its resume state %s recorded: %d bytes at offset %d "
                          "read back after an earlier flush differ now (the target was re-created or written by "
                          "something else). The saved progress is ignored and the whole plan is copied"
                          % (req.dest, old.files.state, length, off))
                return self._distrusted(old, plan_id)
        return old

    def _add_witness(self, mark):
        """Read back, after the commit's flush, the first non-zero granule of the last data piece this commit
        finished (``mark``: ``(offset, length)`` or None) and keep its digest as a witness of the target."""
        if mark is None:
            return
        self.state.holds_data = True
        off, length = mark
        length = min(length, WITNESS_LENGTH)
        data = self.dst.read(off, length, bytearray(length))
        if not self.zero.startswith(data):  # zeros prove nothing: a re-created target reads as zeros
            self.state.add_witness(off, len(data), hashlib.sha256(data).hexdigest())

    def _resume_decision(self, copy, zero, old, plan_id, files):
        """Return the ranges already done (None: the plan is complete for its sync_id), or raise when an
        unfinished, uncovered run is in the way. Reads only; check mode uses it too."""
        req = self.req
        if old is None:
            return []
        if old.plan_id == plan_id:
            if req.resume == "restart":
                self.warn("resume: restart: ignoring %d bytes already copied by %s run of this plan"
                          % (extlib.total_bytes(old.done), "a completed" if old.status == "complete" else "an unfinished"))
                return []
            if old.status == "complete":
                return None if req.sync_id else []
            return old.done
        if old.status == "complete":
            return []
        plan = read_plan(files.plan)
        if plan is None or plan[0] != old.plan_id:
            remaining = [(0, max(self.src.size, 1))]
        else:
            remaining = extlib.subtract(extlib.normalize(plan[1] + plan[2]), old.done)
        uncovered = extlib.subtract(remaining, extlib.normalize(copy + zero)) if remaining else []
        if self.mode in ("all", "compare") and not (req.extents is not None or req.extent_file):
            uncovered = extlib.subtract(remaining, [(0, self.src.size)])
        if not uncovered:
            return []
        if req.resume == "restart":
            self.warn("resume: restart: an unfinished run of a different plan (started %s) left %d bytes in %d "
                      "extents uncopied that this run does not cover; the target may be inconsistent until they "
                      "are copied" % (old.created, extlib.total_bytes(uncovered), len(uncovered)))
            return []
        raise ValidationError(
            "an unfinished block_sync run of a different plan (started %s, state %s) still has %d bytes in %d "
            "extents to copy to %s that this run does not cover (first at offset %d); finish it by re-running "
            "that task, run a full sync (mode all or allocated), or set resume: restart to accept a target that "
            "may be inconsistent" % (old.created, files.state, extlib.total_bytes(uncovered), len(uncovered),
                                     req.dest, uncovered[0][0]))

    def _check_mode_result(self, mode, copy, zero, old, plan_id, files, started):
        req = self.req
        result = self.result
        done = self._resume_decision(copy, zero, old, plan_id, files)
        if done is None:
            result["already_complete"] = True
            result["duration_seconds"] = round(time.time() - started, 3)
            return result
        if done:
            result["resumed"] = True
            result["bytes_resumed"] = extlib.total_bytes(_intersect(extlib.normalize(copy + zero), done))
        remaining_copy = extlib.subtract(copy, done)
        remaining_zero = extlib.subtract(zero, done)
        if mode == "compare" and self.dst is not None:
            self.workers = max(1, min(req.workers, 64))
            self.sessions = self._open_sessions(self.workers if self.src.parallel and self.dst.parallel else 1)
            self.workers = len(self.sessions)
            self.stats = [Stats() for _s in self.sessions]
            self.skip_zero = True
            self._run_pool(self._pieces(copy, [], self.piece, COPY), self._worker)
            total = Stats()
            for s in self.stats:
                total.add(s)
            result["bytes_read"] = total.read
            result["bytes_differing"] = total.differing
            result["bytes_unchanged"] = total.unchanged
            result["changed"] = total.differing > 0
        else:
            will_zero = 0
            if not self.skip_zero and self.dst is not None:
                for off, length in remaining_zero:
                    will_zero += extlib.total_bytes(self._zero_target_ranges(self.dst, off, length))
            result["bytes_to_copy"] = extlib.total_bytes(remaining_copy)
            result["bytes_to_zero"] = will_zero
            result["extents_to_copy"] = len(remaining_copy)
            result["changed"] = bool(remaining_copy or will_zero or self.dest_created)
        result["duration_seconds"] = round(time.time() - started, 3)
        return result

    def _start_workers(self, copy):
        """Open the sessions of the workers (and, for verification, the digest tables of ``copy``)."""
        req = self.req
        parallel = self.src.parallel and self.dst.parallel
        workers = req.workers if parallel or isinstance(self.src, LocalEndpoint) or \
            isinstance(self.dst, LocalEndpoint) else 1
        self.sessions = self._open_sessions(max(1, workers))
        self.workers = len(self.sessions)
        self.result["workers"] = self.workers
        self.stats = [Stats() for _s in self.sessions]
        if self.hasher is not None and req.verify:
            for idx, (_off, length) in enumerate(copy):
                slots = -(-length // self.piece)
                self.src_digests[idx] = bytearray(slots * self.hasher.size)
                self.src_have[idx] = bytearray(slots)
                self.dst_digests[idx] = bytearray(slots * self.hasher.size)
                self.dst_have[idx] = bytearray(slots)

    def _status_failed(self, exc):
        """The progress file says the run failed, with the reason (whatever ended it)."""
        done = self.resumed_bytes + sum(s.done for s in self.stats)  # every piece counts once: total once copied
        self.status.write("failed", done, self.total_bytes, message=str(exc) or exc.__class__.__name__, force=True)

    def _locked_run(self, mode, copy, zero, old, plan_id, files, target_fp, started):
        req = self.req
        result = self.result
        done = self._resume_decision(copy, zero, old, plan_id, files)
        self.total_bytes = extlib.total_bytes(copy) + extlib.total_bytes(zero)
        if done is None:
            return self._already_complete(mode, copy, zero, old, plan_id, files, started)
        continuing = old is not None and old.plan_id == plan_id and old.status == "running" and \
            done is old.done
        if continuing:
            # the same unfinished plan: keep its state file as it is until the next commit
            self.state = old
            result["resumed"] = bool(done)
        else:
            self.state = ResumeState(files, plan_id, target_fp, {
                "src": req.src, "dest": req.dest, "mode": mode, "sync_id": req.sync_id, "size": self.src.size,
                "plan_bytes": self.total_bytes})
            write_plan(files.plan, plan_id, copy, zero)
            self.state.save()  # "running" is on disk before the first byte is written
        self.state_saved = True
        self.resumed_bytes = extlib.total_bytes(_intersect(extlib.normalize(copy + zero), done))
        result["bytes_resumed"] = self.resumed_bytes
        self.status = StatusFile(files.status, {"src": req.src, "dest": req.dest, "plan_id": plan_id,
                                                "mode": mode, "pid": os.getpid()})
        self.status.write("running", self.resumed_bytes, self.total_bytes, force=True)
        # from here on, whatever ends the run (a copy, flush, state, verification or digest error, an
        # interruption) leaves the progress file saying so
        try:
            return self._copy_and_check(copy, zero, done, started)
        except BaseException as exc:
            self._status_failed(exc)
            raise

    def _copy_and_check(self, copy, zero, done, started):
        req = self.req
        result = self.result
        self._start_workers(copy)
        self._last_commit = time.time()
        copy_started = time.time()
        items = heapq.merge(self._pieces(copy, done, self.piece, COPY), self._pieces(zero, done, ZERO_PIECE, ZERO))
        self._run_pool(items, self._worker, progress=self._progress)
        # one flush for the remaining work; without verification the run is complete with it. With
        # verification, what this flush made durable is saved with the verdict, in one state write
        # (killed while verifying, a re-run copies again what the last periodic commit did not record)
        finish_now = not (req.verify or req.image_digest)
        self._commit(force=True, complete=finish_now, save=finish_now)
        copy_seconds = time.time() - copy_started
        total = Stats()
        for s in self.stats:
            total.add(s)
        result.update({
            "bytes_read": total.read, "bytes_written": total.written, "bytes_zeroed": total.zeroed,
            "bytes_unchanged": total.unchanged, "bytes_differing": total.differing,
            "bytes_skipped_zero": total.skipped_zero,
            "copy_seconds": round(copy_seconds, 3),
            "throughput_bytes_per_second": int(total.done / copy_seconds) if copy_seconds > 0 else 0,
        })
        result["changed"] = bool(total.written or total.zeroed or self.dest_created)
        self._checks(copy, zero)
        if not finish_now:
            self.state.status = "complete"
            self.state.save()
        result["duration_seconds"] = round(time.time() - started, 3)
        self.status.write("complete", self.total_bytes, self.total_bytes, force=True,
                          extra={"bytes_written": total.written, "bytes_zeroed": total.zeroed})
        return result

    def _already_complete(self, mode, copy, zero, old, plan_id, files, started):
        """A run of this plan with this sync_id completed: nothing is copied. A requested verification or
        image digest still runs (it only reads), so the result confirms the replica."""
        req = self.req
        result = self.result
        result["already_complete"] = True
        self.state = old
        self.resumed_bytes = self.total_bytes
        self.status = StatusFile(files.status, {"src": req.src, "dest": req.dest, "plan_id": plan_id,
                                                "mode": mode, "pid": os.getpid()})
        message = "already complete for sync_id %s" % req.sync_id
        if req.verify or req.image_digest:
            try:
                self._start_workers(copy)
                self._checks(copy, zero)
            except BaseException as exc:
                self._status_failed(exc)
                raise
            message += "; %s passed" % " and ".join(
                name for name, asked in (("verification", req.verify), ("image digest", req.image_digest)) if asked)
        result["duration_seconds"] = round(time.time() - started, 3)
        self.status.write("complete", self.total_bytes, self.total_bytes, message=message, force=True)
        return result

    def _checks(self, copy, zero):
        """The optional verification and whole-image digests, after the copy (or of a completed plan).
        A failure makes the plan unfinished again, so that the next run does not report it complete."""
        req = self.req
        result = self.result
        if req.verify:
            self.status.write("verifying", self.total_bytes, self.total_bytes, force=True)
            verification, mismatches = self._verify(copy, zero)
            result["verification"] = verification
            if mismatches:
                self.state.done = extlib.subtract(self.state.done, mismatches)
                self.state.status = "running"
                self.state.save()
                raise VerificationError(
                    "verification failed: %d ranges of target %s differ from source %s (first at offset %d); "
                    "they were removed from the resume state, so re-running copies them again. If it fails "
                    "again, the source changes while it is read (use a snapshot) or the target does not keep "
                    "what is written" % (len(mismatches), req.dest, req.src, mismatches[0][0]), result)
        if req.image_digest:
            self.status.write("digesting", self.total_bytes, self.total_bytes, force=True)
            t0 = time.time()
            src_digest = self._image_digest(0, self.src.size)
            dst_digest = self._image_digest(1, self.src.size)
            result["image_digest"] = {
                "algorithm": req.checksum_algorithm, "block_size": DIGEST_BLOCK, "length": self.src.size,
                "source": src_digest, "target": dst_digest, "match": src_digest == dst_digest,
                "seconds": round(time.time() - t0, 3)}
            if src_digest != dst_digest:
                self.state.status = "running"
                self.state.save()  # the copied ranges are in place; the run stays unfinished
                raise VerificationError(
                    "whole-image digests differ after the sync: source %s %s, target %s %s. The copied extents "
                    "are in place, but the target as a whole is not a replica of the source: the change list "
                    "missed changes, or the target was not in sync with the previous change point. Run a full "
                    "sync (mode allocated or all, or compare)" % (req.src, src_digest, req.dest, dst_digest),
                    result)


def run_sync(req, warn=None):
    return Engine(req, warn=warn).run()
