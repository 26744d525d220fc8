# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resume state, target lock and progress status file of ``block_sync``.

Per target there are four files in the state folder, named after a hash of the target:
``<key>.lock`` (``flock``-ed while a run writes the target), ``<key>.plan`` (the extents of the
current run, in the shared extent format, written once), ``<key>.json`` (resume state: which
ranges are durably copied; rewritten atomically, fsync-ed, only after the target was flushed) and
``<key>.status.json`` (progress for people and ``async_status`` pollers).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time

from ansible_collections.cbt.toolkit.plugins.module_utils import extents as extlib
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_io import BlockCopyError

STATE_VERSION = 1
# how many samples of the target a resume state keeps (see ResumeState.witnesses)
WITNESSES = 8


class LockError(BlockCopyError):
    pass


def default_state_dir():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "cbt.toolkit", "block_sync")


def target_key(target_id):
    return hashlib.sha256(target_id.encode("utf-8")).hexdigest()[:24]


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, text, durable=True):
    """Replace ``path`` atomically (temp file + rename); with ``durable``, fsync the data first.

    The folder is fsync-ed only when the file is new. Replacing an existing file needs no folder
    fsync for crash (kill -9) safety, and after a power loss an older state only means repeating
    work: every state names less done work than the one after it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    existed = os.path.exists(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable and not existed:
        fsync_dir(directory)


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise BlockCopyError("cannot read %s: %s" % (path, exc))
    except ValueError as exc:
        raise BlockCopyError("resume state %s is not valid JSON (%s); delete it or set resume: restart"
                             % (path, exc))


class StateFiles(object):
    def __init__(self, state_dir, target_id, status_file=None):
        self.dir = state_dir
        self.target_id = target_id
        self.key = target_key(target_id)
        base = os.path.join(state_dir, self.key)
        self.lock = base + ".lock"
        self.plan = base + ".plan"
        self.state = base + ".json"
        self.status = status_file or (base + ".status.json")

    def ensure_dir(self):
        try:
            if not os.path.isdir(self.dir):
                os.makedirs(self.dir, 0o700)
        except OSError as exc:
            raise BlockCopyError("cannot create the state folder %s: %s; set state_dir to a writable folder"
                                 % (self.dir, exc))


class TargetLock(object):
    """An exclusive ``flock`` on the lock file (and on the local target itself, when given)."""

    def __init__(self, path, target_name):
        self.path = path
        self.target_name = target_name
        self.fd = None

    def acquire(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            try:
                with open(self.path) as handle:
                    info = json.load(handle)
                holder = " (pid %s on %s, started %s)" % (info.get("pid"), info.get("host"), info.get("started"))
            except (IOError, OSError, ValueError):
                pass
            os.close(self.fd)
            self.fd = None
            raise LockError("another block_sync run%s is writing to target %s (lock file %s); wait for it to "
                            "finish or stop it, then re-run" % (holder, self.target_name, self.path))
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info.encode("utf-8"), 0)
        return self

    def lock_target(self, target_fd):
        """Also ``flock`` the local target itself (covers runs with another state_dir)."""
        try:
            fcntl.flock(target_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockError("target %s is locked (flock) by another program; another block_sync run with a "
                                "different state_dir may be writing to it" % self.target_name)
            raise

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def write_plan(path, plan_id, copy_extents, zero_extents):
    """Write the plan: copy extents, then zero extents, each in the shared extent format."""
    lines = [extlib.FORMAT_HEADER, "# plan_id=%s" % plan_id, "# kind=block_sync-plan"]
    lines.append("# section=copy")
    lines.extend("%d %d" % e for e in copy_extents)
    lines.append("# section=zero")
    lines.extend("%d %d" % e for e in zero_extents)
    atomic_write(path, "\n".join(lines) + "\n")


def read_plan(path):
    """Return ``(plan_id, copy_extents, zero_extents)`` or None."""
    try:
        handle = open(path)
    except (IOError, OSError):
        return None
    plan_id = None
    sections = {"copy": [], "zero": []}
    current = None
    with handle:
        for line in handle:
            line = line.strip()
            if line.startswith("# plan_id="):
                plan_id = line.split("=", 1)[1]
            elif line.startswith("# section="):
                current = line.split("=", 1)[1]
            elif line and not line.startswith("#") and current in sections:
                off, length = line.split()[:2]
                sections[current].append((int(off), int(length)))
    return plan_id, sections["copy"], sections["zero"]


class ResumeState(object):
    """What is durably done for one plan on one target."""

    def __init__(self, files, plan_id, target_fingerprint, meta):
        self.files = files
        self.plan_id = plan_id
        self.target_fingerprint = target_fingerprint
        self.meta = dict(meta)
        self.done = []
        self.status = "running"
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # [offset, length, sha256] of small samples of finished data ranges, read back from the target
        # after a flush: a resumed run checks them first, so a target re-created or rewritten since (same
        # path, inode or device number) is not taken for the one this state describes
        self.witnesses = []
        # whether a done range holds data (non-zero bytes) on the target; such a state is only trusted with a
        # witness. None: a state written before this was recorded (unknown)
        self.holds_data = False

    def add_witness(self, offset, length, digest):
        self.witnesses = (self.witnesses + [[offset, length, digest]])[-WITNESSES:]

    def to_dict(self):
        data = dict(self.meta)
        data.update({
            "version": STATE_VERSION,
            "plan_id": self.plan_id,
            "target_fingerprint": self.target_fingerprint,
            "status": self.status,
            "created": self.created,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "done": [[o, n] for o, n in self.done],
            "done_bytes": extlib.total_bytes(self.done),
            "witnesses": self.witnesses,
            "holds_data": self.holds_data,
        })
        return data

    def save(self):
        atomic_write(self.files.state, json.dumps(self.to_dict(), sort_keys=True))

    def add_done(self, ranges):
        if ranges:
            self.done = extlib.normalize(list(self.done) + list(ranges))

    @classmethod
    def from_dict(cls, files, data):
        state = cls(files, data.get("plan_id"), data.get("target_fingerprint"), {
            k: v for k, v in data.items()
            if k not in ("version", "plan_id", "target_fingerprint", "status", "created", "updated", "done",
                         "done_bytes", "witnesses", "holds_data")})
        state.status = data.get("status", "running")
        state.created = data.get("created", state.created)
        state.done = extlib.normalize([(int(o), int(n)) for o, n in data.get("done", [])])
        state.witnesses = [[int(w[0]), int(w[1]), str(w[2])] for w in data.get("witnesses", [])][-WITNESSES:]
        holds = data.get("holds_data")
        state.holds_data = None if holds is None else bool(holds)
        return state


class StatusFile(object):
    """Progress for ``async`` users: bytes done, total, rate, ETA. Written at most once a second."""

    def __init__(self, path, base):
        self.path = path
        self.base = dict(base)
        self.started = time.time()
        self._last = 0.0

    def write(self, state, done, total, message=None, force=False, extra=None):
        now = time.time()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed if done else 0.0
        data = dict(self.base)
        data.update({
            "state": state,
            "pid": os.getpid(),
            "bytes_done": done,
            "bytes_total": total,
            "percent": round(100.0 * done / total, 2) if total else 100.0,
            "rate_bytes_per_second": int(rate),
            "eta_seconds": int((total - done) / rate) if rate > 0 and total > done else (0 if total <= done else None),
            "elapsed_seconds": round(elapsed, 3),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        })
        if message:
            data["message"] = message
        if extra:
            data.update(extra)
        try:
            atomic_write(self.path, json.dumps(data, sort_keys=True) + "\n", durable=False)
        except (IOError, OSError):
            pass  # progress is best effort; never fail a copy because of it
