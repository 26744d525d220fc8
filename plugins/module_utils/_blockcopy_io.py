# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sources and targets of ``block_sync``: regular files, block devices and NBD exports.

Private to the collection. Every endpoint offers the same small interface (``read``, ``write``,
``zero``, ``flush``, ``allocation``, ``session``) so the copy engine does not care what it talks
to. Errors are raised as ``BlockCopyError`` subclasses whose message names the endpoint, the
offset and what to do.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
import sys
import threading
import traceback

try:
    import nbd  # python3-libnbd (Debian/Ubuntu) or libnbd-python (Fedora/RHEL); not on PyPI
    HAS_NBD = True
    NBD_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the host
    nbd = None
    HAS_NBD = False
    NBD_IMPORT_ERROR = traceback.format_exc()

# Linux ioctl and fallocate numbers (include/uapi/linux/fs.h, falloc.h)
BLKROGET = 0x125E
BLKSSZGET = 0x1268
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SYNC_FILE_RANGE_WAIT_BEFORE = 0x01
SYNC_FILE_RANGE_WRITE = 0x02
SYNC_FILE_RANGE_WAIT_AFTER = 0x04

NBD_SCHEMES = ("nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://")
# Largest single NBD request we send; servers commonly advertise 32 MiB and libnbd refuses > 64 MiB.
NBD_MAX_REQUEST = 32 * 1024 * 1024
# Reads larger than this are split into requests of this size, all in flight at once.
NBD_READ_SPLIT = 1024 * 1024
# Largest single zero / block-status request (NBD lengths are 32 bit).
BIG_REQUEST = 1024 * 1024 * 1024
ZERO_ALIGN = 4096

_ZERO_CACHE = {}


def zero_bytes(length):
    """A shared, immutable buffer of ``length`` zero bytes (cached)."""
    buf = _ZERO_CACHE.get(length)
    if buf is None:
        buf = bytes(length)
        if len(_ZERO_CACHE) < 16:
            _ZERO_CACHE[length] = buf
    return buf


class BlockCopyError(Exception):
    """A failure the user can act on; the message names object, value and remedy."""


class ValidationError(BlockCopyError):
    """Bad input detected before anything was written."""


class ReadError(BlockCopyError):
    def __init__(self, endpoint, offset, length, exc):
        self.offset = offset
        self.length = length
        BlockCopyError.__init__(self, "read error on source %s at offset %d (length %d): %s; nothing at or "
                                "after this offset was recorded as copied, re-run the task after fixing "
                                "the source" % (endpoint, offset, length, _explain(exc)))


class WriteError(BlockCopyError):
    def __init__(self, endpoint, offset, length, exc, what="write"):
        self.offset = offset
        self.length = length
        BlockCopyError.__init__(self, "%s error on target %s at offset %d (length %d): %s; the resume state "
                                "was not advanced past this offset, re-run the task after fixing the target"
                                % (what, endpoint, offset, length, _explain(exc)))


class MissingNbdBinding(BlockCopyError):
    pass


def _explain(exc):
    if isinstance(exc, OSError) and exc.errno:
        return "[Errno %d] %s" % (exc.errno, os.strerror(exc.errno))
    return str(exc) or exc.__class__.__name__


def is_nbd_url(value):
    return isinstance(value, str) and value.lower().startswith(NBD_SCHEMES)


def require_nbd(url):
    if not HAS_NBD:
        raise MissingNbdBinding(
            "%s is an NBD URL, which needs libnbd's Python binding (module 'nbd'), but it cannot be imported "
            "by %s. Install the distribution package (Debian/Ubuntu: python3-libnbd, Fedora/RHEL: "
            "python3-libnbd or libnbd-python; it is not on PyPI) and run the module with that system Python "
            "(ansible_python_interpreter: /usr/bin/python3)" % (url, sys.executable))


_LIBC = []


def _libc():
    if not _LIBC:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # pragma: no cover - not glibc; find_library runs ldconfig, so only as a fallback
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        sfr = getattr(libc, "sync_file_range", None)
        if sfr is not None:
            sfr.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _LIBC.append((libc, sfr))
    return _LIBC[0]


def fallocate(fd, mode, offset, length):
    """``fallocate(2)``; raises ``OSError`` (Python has no wrapper for the hole-punching modes)."""
    if _libc()[0].fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sync_file_range(fd, offset, length, flags=SYNC_FILE_RANGE_WRITE):
    """Start (and with the WAIT flags, wait for) write-back of a range; raises ``OSError``.

    No durability guarantee (no metadata, no device cache flush). A write-back error reported to
    the waiting form is consumed by it (the kernel's per-file error cursor advances), so a later
    ``fsync`` would no longer see it: the caller must not ignore it.
    """
    func = _libc()[1]
    if func is not None and func(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def stat_identity(st):
    """What makes a local file or block device the same object: device number, or device and inode."""
    if stat.S_ISBLK(st.st_mode):
        return ("block", st.st_rdev)
    return ("file", st.st_dev, st.st_ino)


class WriteBehind(object):
    """Write-behind window of one worker on a local target, as nbdcopy keeps one.

    Write-back of every written piece starts at once; while more than ``window`` bytes are in
    flight, the oldest piece is waited for and dropped from the page cache. Dirty pages never pile
    up, so writes are not throttled in bursts by the kernel, the final flush is short and the copy
    does not push the rest of the page cache out.

    The waits go through a file descriptor of its own: waiting consumes a write-back error for the
    descriptor it is made on, and the target's own descriptor must still see it at the flush that
    precedes every resume-state commit. The error also fails the worker at once (``WriteError``).
    """

    def __init__(self, endpoint, window):
        self.endpoint = endpoint
        self.window = window
        self.pending = collections.deque()
        self.in_flight = 0
        try:
            self.fd = os.open(endpoint.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise WriteError(endpoint.name, 0, endpoint.size, exc, what="reopening for write-back")
        if stat_identity(os.fstat(self.fd)) != endpoint.identity():
            os.close(self.fd)
            self.fd = None
            raise BlockCopyError("target %s was replaced by another file while it was being written; nothing more "
                                 "is recorded as copied, re-run the task" % endpoint.name)

    def written(self, offset, length):
        self._sync(offset, length, SYNC_FILE_RANGE_WRITE)
        self.pending.append((offset, length))
        self.in_flight += length
        while self.in_flight > self.window:
            old_offset, old_length = self.pending.popleft()
            self.in_flight -= old_length
            self._sync(old_offset, old_length,
                       SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
            try:
                os.posix_fadvise(self.fd, old_offset, old_length, os.POSIX_FADV_DONTNEED)
            except (OSError, AttributeError):  # pragma: no cover
                pass

    def _sync(self, offset, length, flags):
        try:
            sync_file_range(self.fd, offset, length, flags)
        except OSError as exc:
            raise WriteError(self.endpoint.name, offset, length, exc, what="write-back")

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def block_device_size(fd):
    return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]


def block_device_read_only(fd):
    return struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0] != 0


def loop_backing_file(rdev):
    """The backing file of a loop device (by device number), or None."""
    path = "/sys/dev/block/%d:%d/loop/backing_file" % (os.major(rdev), os.minor(rdev))
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except (IOError, OSError):
        return None


class Endpoint(object):
    """Common interface. ``kind`` is ``file``, ``block`` or ``nbd``."""

    kind = None
    size = 0
    read_only = True
    max_request = BIG_REQUEST
    min_block = 1  # requests must start and end on multiples of this (an NBD server's minimum block size)
    can_zero = True
    parallel = True  # several sessions may work at once

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return self.name

    def identity(self):
        raise NotImplementedError

    def session(self):
        """An endpoint usable from another thread (may be ``self`` when that is thread-safe)."""
        return self

    def close(self):
        pass


class LocalEndpoint(Endpoint):
    """A regular file or a block device, used through positional system calls (thread-safe)."""

    def __init__(self, path, writable=False, create_size=None, exclusive=False):
        Endpoint.__init__(self, path)
        self.path = path
        self.fd = None
        self.created = False
        self._zero_mode = None
        flags = os.O_RDWR if writable else os.O_RDONLY
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT or create_size is None:
                raise ValidationError("%s cannot be opened: %s" % (path, _explain(exc)))
            st = None
        if st is None:
            try:
                self.fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise ValidationError("cannot create target file %s: %s" % (path, _explain(exc)))
            self.created = True
            os.ftruncate(self.fd, create_size)
            st = os.fstat(self.fd)
        elif stat.S_ISBLK(st.st_mode):
            if exclusive:
                flags |= os.O_EXCL  # refused by the kernel while mounted or claimed (LVM, RAID, dm)
            try:
                self.fd = os.open(path, flags)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise ValidationError("block device %s is in use (mounted, part of LVM/RAID/device-mapper, "
                                          "or opened exclusively by another program); unmount or release it "
                                          "before writing to it" % path)
                if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise ValidationError("block device %s cannot be opened for %s: %s" % (
                        path, "writing (read-only target?)" if writable else "reading", _explain(exc)))
                raise ValidationError("block device %s cannot be opened: %s" % (path, _explain(exc)))
        elif stat.S_ISREG(st.st_mode):
            try:
                self.fd = os.open(path, flags)
            except OSError as exc:
                if writable and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise ValidationError("target file %s is read-only (%s); make it writable or choose another "
                                          "target" % (path, _explain(exc)))
                raise ValidationError("%s cannot be opened: %s" % (path, _explain(exc)))
        else:
            raise ValidationError("%s is neither a regular file nor a block device nor an NBD URL "
                                  "(nbd://, nbd+unix://); character devices, directories and pipes are not "
                                  "supported" % path)
        self.stat = os.fstat(self.fd)
        if stat.S_ISBLK(self.stat.st_mode):
            self.kind = "block"
            self.size = block_device_size(self.fd)
            self.read_only = block_device_read_only(self.fd) or not writable
            if writable and block_device_read_only(self.fd):
                os.close(self.fd)
                self.fd = None
                raise ValidationError("block device %s is read-only (BLKROGET); run 'blockdev --setrw %s' if it "
                                      "really is the target" % (path, path))
        else:
            self.kind = "file"
            self.size = self.stat.st_size
            self.read_only = not writable

    def identity(self):
        return stat_identity(self.stat)

    def backing_file_identity(self):
        """For a loop device: identity of the file behind it (to catch source == target)."""
        if self.kind != "block":
            return None
        backing = loop_backing_file(self.stat.st_rdev)
        if not backing:
            return None
        try:
            return stat_identity(os.stat(backing))
        except OSError:
            return None

    def fileno(self):
        return self.fd

    def read(self, offset, length, buf):
        """Read exactly ``length`` bytes into ``buf`` (a bytearray); return a memoryview of them."""
        view = memoryview(buf)[:length]
        done = 0
        while done < length:
            try:
                n = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as exc:
                raise ReadError(self.name, offset + done, length - done, exc)
            if n == 0:
                raise ReadError(self.name, offset + done, length - done,
                                OSError(errno.EIO, "unexpected end of data (the source is shorter than %d bytes; "
                                        "was it truncated while copying?)" % (offset + length)))
            done += n
        return view

    def write(self, offset, data):
        done = 0
        length = len(data)
        view = memoryview(data)
        while done < length:
            try:
                n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise WriteError(self.name, offset + done, length - done, exc)
            done += n

    def zero(self, offset, length):
        """Make ``[offset, offset+length)`` read as zeros without writing data where possible."""
        if length <= 0:
            return
        start = -(-offset // ZERO_ALIGN) * ZERO_ALIGN
        end = ((offset + length) // ZERO_ALIGN) * ZERO_ALIGN
        if end <= start:
            self.write(offset, zero_bytes(length))
            return
        if start > offset:
            self.write(offset, zero_bytes(start - offset))
        self._zero_aligned(start, end - start)
        if offset + length > end:
            self.write(end, zero_bytes(offset + length - end))

    def _zero_aligned(self, offset, length):
        modes = ["punch", "zero_range", "blkzeroout", "write"] if self.kind == "block" else \
            ["punch", "zero_range", "write"]
        if self._zero_mode is not None:
            modes = modes[modes.index(self._zero_mode):]
        for mode in modes:
            try:
                if mode == "punch":
                    fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                elif mode == "zero_range":
                    fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                elif mode == "blkzeroout":
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                else:
                    pos = offset
                    end = offset + length
                    while pos < end:
                        step = min(end - pos, 4 * 1024 * 1024)
                        self.write(pos, zero_bytes(step))
                        pos += step
                self._zero_mode = mode
                return
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS, errno.ENOTTY):
                    continue
                raise WriteError(self.name, offset, length, exc, what="zeroing")

    def flush(self):
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise WriteError(self.name, 0, self.size, exc, what="flush (fsync)")

    def write_behind(self, window):
        """A write-behind window of ``window`` bytes for one worker writing to this target."""
        return WriteBehind(self, window)

    def allocation(self, offset, length):
        """``[(offset, length, is_data)]`` covering the range, or None when the kernel cannot tell.

        Uses SEEK_DATA/SEEK_HOLE; block devices have no such information.
        """
        if self.kind != "file":
            return None
        end = offset + length
        out = []
        pos = offset
        try:
            while pos < end:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        data = end
                    else:
                        raise
                data = min(data, end)
                if data > pos:
                    out.append((pos, data - pos, False))
                if data >= end:
                    break
                hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
                out.append((data, hole - data, True))
                pos = hole
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                return None
            raise ReadError(self.name, pos, end - pos, exc)
        return out

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            finally:
                self.fd = None


class NbdEndpoint(Endpoint):
    """An NBD export through libnbd. Each session is one connection (several only with multi-conn)."""

    kind = "nbd"

    def __init__(self, url, writable=False, _primary=None):
        Endpoint.__init__(self, url)
        require_nbd(url)
        self.url = url
        self.writable = writable
        self.handle = nbd.NBD()
        try:
            self.handle.set_handle_name("cbt-block_sync")
        except Exception:  # pylint: disable=broad-except
            pass
        try:
            self.handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            self.handle.connect_uri(url)
        except nbd.Error as exc:
            raise ValidationError("cannot connect to NBD export %s: %s; check that the server runs and the URL "
                                  "(socket path, host, port, export name) is right" % (url, exc))
        h = self.handle
        self.size = h.get_size()
        self.read_only = bool(h.is_read_only())
        if writable and self.read_only:
            self.close()
            raise ValidationError("NBD export %s is read-only (the server was started read-only); start it "
                                  "writable or choose another target" % url)
        self.multi_conn = bool(h.can_multi_conn())
        self.can_zero = bool(writable and h.can_zero())
        self.can_flush = bool(h.can_flush())
        self.has_allocation = bool(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        maximum = 0
        try:
            maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
        except Exception:  # pylint: disable=broad-except
            maximum = 0
        self.max_request = min(maximum or NBD_MAX_REQUEST, NBD_MAX_REQUEST)
        try:
            self.min_block = max(1, h.get_block_size(nbd.SIZE_MINIMUM) or 1)
        except Exception:  # pylint: disable=broad-except
            self.min_block = 1
        self.parallel = self.multi_conn
        self._primary = _primary
        # one operation at a time on this connection: a read waits for its requests by polling the
        # handle, and another thread's command on it (a flush at a commit, the writes of workers
        # sharing a connection that is not multi-conn) must not take their replies in between
        self._lock = threading.Lock()

    def identity(self):
        return ("nbd", self.url)

    def session(self):
        if self.multi_conn:
            return NbdEndpoint(self.url, writable=self.writable, _primary=self)
        return self

    def read(self, offset, length, buf):
        """Read ``length`` bytes into ``buf`` (a bytearray; a small read returns new bytes instead).

        A large read is sent as several requests of ``NBD_READ_SPLIT`` bytes in flight at once on
        this connection, so the server reads them in parallel, as nbdcopy keeps many requests in
        flight. All but the last go through libnbd's asynchronous API straight into ``buf``; the
        last is synchronous, and libnbd's own wait for it (with Python's GIL released) takes in the
        other replies too. Waiting for them through the asynchronous API instead returns to Python
        at every poll and needs the GIL each time, which another busy thread may hold for 5 ms. A
        small read is one synchronous request.
        """
        h = self.handle
        split = min(NBD_READ_SPLIT, self.max_request)  # a server may allow less than 1 MiB per request
        if length <= split:
            try:
                with self._lock:
                    return h.pread(length, offset)
            except nbd.Error as exc:
                raise ReadError(self.name, offset, length, exc)
        view = memoryview(buf)[:length]
        cookies = []
        failed = None
        with self._lock:
            try:
                pos = 0
                while pos < length:
                    step = min(length - pos, split)
                    if pos + step < length:
                        cookies.append((offset + pos, step, h.aio_pread(
                            nbd.Buffer.from_buffer(view[pos:pos + step]), offset + pos)))
                    else:
                        view[pos:] = h.pread(step, offset + pos)
                    pos += step
            except nbd.Error as exc:
                failed = (offset + pos, min(length - pos, split), exc)
            # every request sent is waited for, failed or not: none may still write into ``buf`` later
            for chunk_offset, chunk_length, cookie in cookies:
                try:
                    while not h.aio_command_completed(cookie):
                        h.poll(-1)
                except nbd.Error as exc:
                    if failed is None or chunk_offset < failed[0]:
                        failed = (chunk_offset, chunk_length, exc)
        if failed is not None:
            raise ReadError(self.name, failed[0], failed[1], failed[2])
        return view

    def write(self, offset, data):
        try:
            with self._lock:
                self.handle.pwrite(data, offset)
        except nbd.Error as exc:
            raise WriteError(self.name, offset, len(data), exc)

    def zero(self, offset, length):
        if length <= 0:
            return
        pos = offset
        end = offset + length
        while pos < end:
            if self.can_zero:
                step = min(end - pos, BIG_REQUEST)
                try:
                    with self._lock:
                        self.handle.zero(step, pos)
                except nbd.Error as exc:
                    raise WriteError(self.name, pos, step, exc, what="zeroing")
            else:
                step = min(end - pos, 4 * 1024 * 1024, self.max_request)
                self.write(pos, zero_bytes(step))
            pos += step

    def flush(self):
        if not self.can_flush:
            return
        try:
            with self._lock:
                self.handle.flush()
        except nbd.Error as exc:
            raise WriteError(self.name, 0, self.size, exc, what="flush")

    def allocation(self, offset, length):
        if not self.has_allocation:
            return None
        end = offset + length
        out = []
        pos = offset
        while pos < end:
            entries = []

            def callback(metacontext, _offset, extents, _err):
                if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                    entries.extend(extents)
                return 0

            try:
                with self._lock:
                    self.handle.block_status(min(end - pos, BIG_REQUEST), pos, callback)
            except nbd.Error as exc:
                raise ReadError(self.name, pos, end - pos, exc)
            if not entries:
                raise ReadError(self.name, pos, end - pos, OSError(errno.EPROTO, "empty block status reply"))
            for index in range(0, len(entries) - 1, 2):
                ext_len = min(entries[index], end - pos)
                if ext_len <= 0:
                    break
                is_data = not (entries[index + 1] & nbd.STATE_ZERO)
                if out and out[-1][2] == is_data and out[-1][0] + out[-1][1] == pos:
                    out[-1] = (out[-1][0], out[-1][1] + ext_len, is_data)
                else:
                    out.append((pos, ext_len, is_data))
                pos += ext_len
                if pos >= end:
                    break
        return out

    def close(self):
        handle = getattr(self, "handle", None)
        if handle is not None:
            try:
                handle.shutdown()
            except Exception:  # pylint: disable=broad-except
                pass
            try:
                handle.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self.handle = None


def open_endpoint(spec, writable=False, create_size=None, exclusive=True):
    """Open ``spec`` (a path or an NBD URL)."""
    if not spec or not isinstance(spec, str):
        raise ValidationError("%r is not a path or an NBD URL" % (spec,))
    if is_nbd_url(spec):
        return NbdEndpoint(spec, writable=writable)
    if "://" in spec:
        raise ValidationError("%s: unsupported URL scheme; use a file or block-device path, or an NBD URL "
                              "(nbd://host:port/export, nbd+unix:///export?socket=/path)" % spec)
    # a source is read while others may use it; only a target is claimed
    return LocalEndpoint(spec, writable=writable, create_size=create_size, exclusive=exclusive and writable)


def describe_local(spec):
    """``(exists, kind)`` of a local path without opening it."""
    try:
        st = os.stat(spec)
    except OSError:
        return False, None
    if stat.S_ISBLK(st.st_mode):
        return True, "block"
    if stat.S_ISREG(st.st_mode):
        return True, "file"
    return True, "other"
