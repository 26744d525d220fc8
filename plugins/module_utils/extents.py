# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's shared extent format and extent-list arithmetic.

One format is written by ``csi_snapshot_diff`` and ``vmware_cbt_changes`` and read by
``block_sync``. It is plain text, one extent per line, ``<offset> <length>`` in decimal bytes,
sorted, non-overlapping. Lines starting with ``#`` are comments; the first one identifies the
format and ``# key=value`` comments carry metadata (``capacity``, ``source``, ...). The same
file is accepted as-is by nbdkit's extentlist filter.

Example::

    # cbt.toolkit extents v1
    # capacity=10737418240
    # coverage=changed
    # block_metadata_type=VARIABLE_LENGTH
    0 4194304
    8388608 65536

What a list means is said by two metadata keys (read them with ``coverage_of``):

``coverage``
    ``changed`` (also when the key is absent): a delta - the ranges that changed since the change
    point the target is at; everything else on the target is already right. ``allocated``: the
    listed ranges are all the data of the source; everything else in ``[0, capacity)`` reads as
    zeros (a writer falls back to this when the changes are unknown, for example a CSI base
    snapshot that cannot be used or a VMware query with change id ``*``). Applied to an existing
    target, an ``allocated`` list must also make everything it does not list zero there, or data
    the source no longer holds stays on the target. Files written before the key existed are
    read as ``allocated`` when they carry ``call=allocated`` or ``change_id=*``.
``starting_offset``
    ``N``: the listing covers only ``[N, capacity)`` (a listing resumed part-way); what changed
    before ``N`` is not in it. Absent or ``0``: it covers the whole disk.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import tempfile

FORMAT_HEADER = "# cbt.toolkit extents v1"


class ExtentError(ValueError):
    """An extent list is invalid. The message names the extent and what to do."""


def _as_int(value, what):
    if isinstance(value, bool):
        raise ExtentError("%s: %r is not a whole number of bytes" % (what, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ExtentError("%s: %r is not a whole number of bytes" % (what, value))
    if isinstance(value, float) and value != number:
        raise ExtentError("%s: %r is not a whole number of bytes" % (what, value))
    return number


def parse_extents(items, name="extents"):
    """Turn user input into a list of ``(offset, length)`` tuples.

    Accepts dicts with ``offset``/``length`` (or ``start``/``length``, ``byte_offset``/
    ``size_bytes``), two-item lists, and ``"offset:length"`` or ``"offset length"`` strings.
    Order is kept; call ``normalize`` to validate.
    """
    result = []
    for index, item in enumerate(items or []):
        where = "%s[%d]" % (name, index)
        if isinstance(item, dict):
            off = item.get("offset", item.get("start", item.get("byte_offset")))
            length = item.get("length", item.get("size_bytes"))
            if off is None or length is None:
                raise ExtentError("%s: %r needs 'offset' and 'length'" % (where, item))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            off, length = item
        elif isinstance(item, str):
            parts = item.replace(":", " ").split()
            if len(parts) != 2:
                raise ExtentError("%s: %r is not 'offset:length'" % (where, item))
            off, length = parts
        else:
            raise ExtentError("%s: %r is not an extent; use {offset: N, length: N}" % (where, item))
        result.append((_as_int(off, where + ".offset"), _as_int(length, where + ".length")))
    return result


def normalize(extents, capacity=None, unsorted="sort", overlapping="merge", name="extents"):
    """Validate and return sorted, non-overlapping, coalesced ``(offset, length)`` tuples.

    ``unsorted``: ``sort`` or ``reject``. ``overlapping``: ``merge`` or ``reject``.
    Zero-length extents are dropped; negative values and extents beyond ``capacity`` raise.
    Touching extents are merged (that never changes what is copied).
    """
    checked = []
    previous = None
    is_sorted = True
    for index, (off, length) in enumerate(extents):
        if off < 0 or length < 0:
            raise ExtentError("%s[%d]: offset %d length %d: offsets and lengths must not be negative"
                              % (name, index, off, length))
        if capacity is not None and off + length > capacity:
            raise ExtentError("%s[%d]: offset %d length %d ends at %d, beyond the size %d of the "
                              "source; the extent list does not belong to this source"
                              % (name, index, off, length, off + length, capacity))
        if length == 0:
            continue
        if previous is not None and off < previous:
            is_sorted = False
        previous = off
        checked.append((off, length, index))
    if not is_sorted:
        if unsorted == "reject":
            raise ExtentError("%s are not sorted by offset; sort them or set unsorted handling to 'sort'" % name)
        checked.sort()
    merged = []
    for off, length, index in checked:
        if merged:
            last_off, last_len, last_index = merged[-1]
            last_end = last_off + last_len
            if off < last_end:
                if overlapping == "reject":
                    raise ExtentError("%s[%d] (offset %d length %d) overlaps %s[%d] (offset %d length %d)"
                                      % (name, index, off, length, name, last_index, last_off, last_len))
                merged[-1] = (last_off, max(last_end, off + length) - last_off, last_index)
                continue
            if off == last_end:
                merged[-1] = (last_off, last_len + length, last_index)
                continue
        merged.append((off, length, index))
    return [(off, length) for off, length, _index in merged]


def coalesce(extents, gap=0):
    """Merge sorted, non-overlapping extents whose distance is at most ``gap`` bytes."""
    out = []
    for off, length in extents:
        if out and off - (out[-1][0] + out[-1][1]) <= gap:
            last_off = out[-1][0]
            out[-1] = (last_off, max(out[-1][0] + out[-1][1], off + length) - last_off)
        else:
            out.append((off, length))
    return out


def split(extents, max_length):
    """Yield ``(offset, length)`` pieces no longer than ``max_length``."""
    if max_length <= 0:
        raise ExtentError("the request size must be positive, got %d" % max_length)
    for off, length in extents:
        end = off + length
        while off < end:
            step = min(max_length, end - off)
            yield off, step
            off += step


def total_bytes(extents):
    return sum(length for _off, length in extents)


def subtract(extents, done):
    """Extents minus the (sorted, non-overlapping) ranges in ``done``."""
    result = []
    done = list(done)
    j = 0
    for off, length in extents:
        end = off + length
        cur = off
        while j < len(done) and done[j][0] + done[j][1] <= cur:
            j += 1
        k = j
        while cur < end:
            if k >= len(done) or done[k][0] >= end:
                result.append((cur, end - cur))
                break
            d_off, d_len = done[k]
            if d_off > cur:
                result.append((cur, d_off - cur))
            cur = max(cur, d_off + d_len)
            k += 1
    return result


class ExtentFileWriter:
    """Stream extents into a file atomically: nothing appears at ``path`` until ``close()``.

    Extents must arrive sorted and non-overlapping (checked). ``abort()`` removes the partial
    file, so a failed query never leaves a list that looks complete.
    """

    def __init__(self, path, metadata=None, buffer_lines=65536):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        fd, self._tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
        self._file = os.fdopen(fd, "w")
        self._lines = [FORMAT_HEADER + "\n"]
        for key, value in sorted((metadata or {}).items()):
            if value is None:
                continue
            self._lines.append("# %s=%s\n" % (key, str(value).replace("\n", " ")))
        self._buffer_lines = buffer_lines
        self._end = -1
        self.count = 0
        self.bytes = 0

    def add(self, offset, length):
        if offset < self._end:
            raise ExtentError("extent at offset %d overlaps or precedes the previous extent ending at %d"
                              % (offset, self._end))
        self._lines.append("%d %d\n" % (offset, length))
        self._end = offset + length
        self.count += 1
        self.bytes += length
        if len(self._lines) >= self._buffer_lines:
            self._file.write("".join(self._lines))
            self._lines = []

    def add_many(self, extents):
        for off, length in extents:
            self.add(off, length)

    def add_batch(self, offsets, sizes, total=None, uniform=False):
        """Append many validated extents with one formatted write (the fast path for streams).

        ``offsets``/``sizes``: parallel sequences, sorted and non-overlapping; ``total``: their
        byte sum if already known; ``uniform``: every size is equal.
        """
        count = len(offsets)
        if not count:
            return
        if offsets[0] < self._end:
            raise ExtentError("extent at offset %d overlaps or precedes the previous extent ending at %d"
                              % (offsets[0], self._end))
        if self._lines:
            self._file.write("".join(self._lines))
            self._lines = []
        if uniform:
            tail = " %d\n" % sizes[0]
            self._file.write(tail.join(map(str, offsets)) + tail)
        else:
            pairs = [0] * (2 * count)
            pairs[0::2] = offsets
            pairs[1::2] = sizes
            self._file.write(("%d %d\n" * count) % tuple(pairs))
        self._end = offsets[-1] + sizes[-1]
        self.count += count
        self.bytes += sum(sizes) if total is None else total

    def finish(self):
        """Write out and fsync the temporary file; nothing appears at ``path`` yet."""
        self._file.write("".join(self._lines))
        self._lines = []
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)

    def publish(self):
        """Put the finished file at ``path`` (one rename)."""
        os.replace(self._tmp, self.path)
        return {"path": self.path, "count": self.count, "bytes": self.bytes}

    def close(self):
        self.finish()
        return self.publish()

    def abort(self):
        try:
            self._file.close()
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def publish_all(writers):
    """Close several writers all or none: every file is written and fsynced first, then each is renamed
    into place. On any failure nothing of this call stays: the temporary files are removed and the files
    already renamed into place are removed again. Returns the ``close()`` results; raises the OSError
    (``filename`` set to the extent file it concerns)."""
    published = []
    current = None
    try:
        for writer in writers:
            current = writer
            writer.finish()
        for writer in writers:
            current = writer
            published.append(writer.publish())
        return published
    except OSError as exc:
        exc.filename = current.path if current is not None else exc.filename
        raise
    finally:
        if len(published) < len(writers):
            for writer in writers:
                writer.abort()
            for done in published:
                try:
                    os.unlink(done["path"])
                except OSError:
                    pass


def write_extent_file(path, extents, metadata=None):
    with ExtentFileWriter(path, metadata) as writer:
        writer.add_many(extents)
    return {"path": path, "count": writer.count, "bytes": writer.bytes}


COVERAGE_CHANGED = "changed"
COVERAGE_ALLOCATED = "allocated"


def coverage_of(metadata, name="extent list"):
    """``(coverage, starting_offset, reason)`` of an extent list's metadata (see the module docstring).

    ``coverage`` is ``changed`` or ``allocated``; ``reason`` is the ``key=value`` that decided it (None
    for a delta without any marker). Raises ExtentError for a value it does not know.
    """
    metadata = metadata or {}
    coverage = str(metadata.get("coverage", "")).strip().lower()
    reason = None
    if coverage:
        if coverage not in (COVERAGE_CHANGED, COVERAGE_ALLOCATED):
            raise ExtentError("%s: coverage=%s is neither '%s' nor '%s'; the list cannot be applied safely"
                              % (name, metadata.get("coverage"), COVERAGE_CHANGED, COVERAGE_ALLOCATED))
        reason = "coverage=%s" % coverage
    elif str(metadata.get("call", "")).strip() == "allocated":
        coverage, reason = COVERAGE_ALLOCATED, "call=allocated"
    elif str(metadata.get("change_id", "")).strip() == "*":
        coverage, reason = COVERAGE_ALLOCATED, "change_id=*"
    else:
        coverage = COVERAGE_CHANGED
    starting_offset = 0
    if metadata.get("starting_offset") not in (None, ""):
        try:
            starting_offset = int(str(metadata["starting_offset"]).strip(), 0)
        except ValueError:
            raise ExtentError("%s: starting_offset=%s is not a number of bytes" % (name, metadata["starting_offset"]))
        if starting_offset < 0:
            raise ExtentError("%s: starting_offset=%d is negative" % (name, starting_offset))
    return coverage, starting_offset, reason


def read_extent_file(path):
    """Return ``(metadata, extents)`` from a file in the shared format (or a plain
    ``offset length`` list such as nbdkit's extentlist format)."""
    metadata = {}
    extents = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                body = line[1:].strip()
                if "=" in body and " " not in body.split("=", 1)[0]:
                    key, value = body.split("=", 1)
                    metadata[key.strip()] = value.strip()
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ExtentError("%s line %d: %r is not '<offset> <length>'" % (path, number, line))
            try:
                # decimal, zero-padded or not; 0x... hexadecimal too
                extents.append(tuple(int(tok, 10) if tok.isdigit() else int(tok, 0) for tok in parts[:2]))
            except ValueError:
                raise ExtentError("%s line %d: %r is not '<offset> <length>' in bytes" % (path, number, line))
    if "capacity" in metadata:
        try:
            metadata["capacity"] = int(metadata["capacity"])
        except ValueError:
            raise ExtentError("%s: capacity %r is not a number" % (path, metadata["capacity"]))
    return metadata, extents
