# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the block_sync engine on small local files (no peers needed)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import random
import subprocess
import threading
import time

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy as bc
from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_io as bio
from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_state as bst
from ansible_collections.cbt.toolkit.plugins.module_utils import extents as extlib

KiB = 1024
MiB = 1024 * KiB


def make_image(path, size, seed=1, layout=None):
    """1 MiB granules: data, zeros written as data, or holes (deterministic)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for index, off in enumerate(range(0, size, MiB)):
            kind = layout[index % len(layout)] if layout else rnd.choice("ddz.")
            if kind == "d":
                f.seek(off)
                f.write(rnd.randbytes(min(MiB, size - off)))
            elif kind == "z":
                f.seek(off)
                f.write(bytes(min(MiB, size - off)))
    return path


def digest(path, length=None):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length) if length else f.read()).hexdigest()


def allocated(path):
    return os.stat(path).st_blocks * 512


def data_ranges(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        ep = bio.LocalEndpoint(path)
        return [(o, n) for o, n, d in ep.allocation(0, ep.size) if d]
    finally:
        os.close(fd)


def sync(tmp_path, src, dest, **kw):
    kw.setdefault("state_dir", str(tmp_path / "state"))
    warnings = []
    result = bc.run_sync(bc.SyncRequest(str(src), str(dest), **kw), warn=warnings.append)
    result["_warnings"] = warnings
    return result


@pytest.fixture
def images(tmp_path):
    src = make_image(tmp_path / "src.img", 8 * MiB, layout="dz.d.dzd")
    return src, tmp_path / "dst.img"


# -- full syncs ------------------------------------------------------------------------------
def test_allocated_creates_sparse_identical_target(tmp_path, images):
    src, dst = images
    result = sync(tmp_path, src, dst, mode="allocated", request_size=256 * KiB, workers=3)
    assert digest(src) == digest(dst)
    assert result["changed"] and result["dest_created"]
    assert result["allocation_known"] is True
    # holes stay holes, zero-filled data is not written as data
    assert result["bytes_written"] == 4 * MiB
    assert result["bytes_skipped_zero"] == 2 * MiB
    assert allocated(dst) <= 4 * MiB + 64 * KiB
    assert os.stat(dst).st_mode & 0o777 == 0o600


def test_all_mode_reads_everything_and_punches_zeros(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=9, layout="d")  # full of other data
    result = sync(tmp_path, src, dst, mode="all", request_size=1 * MiB)
    assert digest(src) == digest(dst)
    assert result["bytes_read"] == 8 * MiB
    assert result["bytes_written"] == 4 * MiB
    assert result["bytes_zeroed"] == 4 * MiB  # zero data and holes became holes
    assert allocated(dst) <= 4 * MiB + 64 * KiB


def test_allocated_zeroes_source_holes_only_where_target_has_data(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=3, layout="d.")  # data in even MiBs, holes in odd
    result = sync(tmp_path, src, dst, mode="allocated")
    assert digest(src) == digest(dst)
    # source holes at MiB 2 and 4, both data on the target: zeroed; zero-filled source data at
    # MiB 1 and 6 is punched as well (4 MiB in all); nothing else is zeroed
    assert result["plan"]["hole_bytes"] == 2 * MiB
    assert result["bytes_zeroed"] == 4 * MiB
    assert result["bytes_written"] == 4 * MiB


# -- incremental -----------------------------------------------------------------------------
def test_extents_copy_only_listed_ranges_and_zero_changed_to_zero(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    with open(src, "r+b") as f:
        f.seek(100 * KiB)
        f.write(b"\xaa" * 5000)
        f.seek(3 * MiB)
        f.write(bytes(512 * KiB))  # changed to zeros (was data)
        f.seek(7 * MiB + 4 * KiB)
        f.write(b"\x55" * 8 * KiB)
    # an unlisted change must NOT be copied
    with open(src, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"unlisted")
    result = sync(tmp_path, src, dst, extents=[
        {"offset": 100 * KiB, "length": 5000}, [3 * MiB, 512 * KiB], "%d:%d" % (7 * MiB + 4 * KiB, 8 * KiB)])
    with open(src, "rb") as a, open(dst, "rb") as b:
        for off, length in ((100 * KiB, 5000), (3 * MiB, 512 * KiB), (7 * MiB + 4 * KiB, 8 * KiB)):
            a.seek(off)
            b.seek(off)
            assert a.read(length) == b.read(length)
        b.seek(5 * MiB)
        assert b.read(8) != b"unlisted"
    assert result["bytes_written"] == 5000 + 8 * KiB
    assert result["bytes_zeroed"] == 512 * KiB
    # the zeroed range is a hole now, not written zeros
    holes = extlib.subtract([(3 * MiB, 512 * KiB)], data_ranges(str(dst)))
    assert holes == [(3 * MiB, 512 * KiB)]


def test_extent_file_with_capacity_and_normalisation_report(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    path = tmp_path / "changes.extents"
    path.write_text("# cbt.toolkit extents v1\n# capacity=%d\n%d 4096\n0 8192\n4096 8192\n" % (8 * MiB, 2 * MiB))
    result = sync(tmp_path, src, dst, extent_file=str(path))
    info = result["input_extents"]
    assert info["sorted"] is False and info["overlapping_bytes"] == 4096 and info["normalized_count"] == 2
    assert "sorted" in info["normalization"] and "merged" in info["normalization"]
    assert result["plan"] == {"extents": 2, "bytes": 12288 + 4096, "hole_extents": 0, "hole_bytes": 0,
                              "zeroes_unlisted": False}
    assert info["coverage"] == "changed"


def test_compare_mode_writes_only_differing_granules(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    with open(src, "r+b") as f:
        f.seek(MiB + 70 * KiB)
        f.write(b"x")
    check = sync(tmp_path, src, dst, mode="compare", check_mode=True)
    assert check["changed"] is True and check["bytes_differing"] == 64 * KiB and check["bytes_written"] == 0
    assert digest(src) != digest(dst)
    result = sync(tmp_path, src, dst, mode="compare")
    assert result["bytes_written"] == 64 * KiB and digest(src) == digest(dst)
    again = sync(tmp_path, src, dst, mode="compare")
    assert again["changed"] is False and again["bytes_unchanged"] == 8 * MiB


# -- validation: nothing written -------------------------------------------------------------
def _untouched(tmp_path, src, dst, message, **kw):
    before = digest(dst) if os.path.exists(dst) else None
    with pytest.raises(bio.BlockCopyError) as err:
        sync(tmp_path, src, dst, **kw)
    assert message in str(err.value), str(err.value)
    assert (digest(dst) if os.path.exists(dst) else None) == before
    assert not (tmp_path / "state").exists() or not any(
        n.endswith(".json") and not n.endswith("status.json") for n in os.listdir(tmp_path / "state"))
    return str(err.value)


def test_rejects_extent_beyond_source(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    msg = _untouched(tmp_path, src, dst, "beyond the size", extents=[[8 * MiB - 4096, 8192]])
    assert str(8 * MiB) in msg


def test_rejects_smaller_target(tmp_path, images):
    src, dst = images
    make_image(dst, 4 * MiB, seed=5)
    _untouched(tmp_path, src, dst, "smaller than the source", mode="all")


def test_rejects_same_file_and_symlink_to_it(tmp_path, images):
    src, _dst = images
    link = tmp_path / "link.img"
    os.symlink(src, link)
    _untouched(tmp_path, src, link, "are the same", mode="all")


def test_rejects_read_only_target(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    os.chmod(dst, 0o444)
    if os.geteuid() == 0:
        # root ignores permission bits; an immutable file cannot be opened for writing even by root
        proc = subprocess.run(["chattr", "+i", str(dst)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail("running as root and 'chattr +i' failed (%s): cannot make a read-only target here"
                        % proc.stderr.strip())
    try:
        _untouched(tmp_path, src, dst, "read-only", mode="all")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(dst)], check=False)


def test_strict_rejects_unsorted_and_overlapping(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    _untouched(tmp_path, src, dst, "not sorted", extents=[[MiB, 10], [0, 10]], extents_check="strict")
    _untouched(tmp_path, src, dst, "overlaps", extents=[[0, 10], [5, 10]], extents_check="strict")


def test_rejects_missing_target_for_incremental(tmp_path, images):
    src, dst = images
    _untouched(tmp_path, src, dst, "does not exist", extents=[[0, 4096]])
    assert not os.path.exists(dst)


def test_rejects_bad_options(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    _untouched(tmp_path, src, dst, "dest_is_zero", extents=[[0, 4096]], dest_is_zero=True)
    _untouched(tmp_path, src, dst, "request_size", mode="all", request_size=1000)
    _untouched(tmp_path, src, dst, "nothing to copy")
    _untouched(tmp_path, src, dst, "only apply to mode", mode="all", extents=[[0, 1]])
    _untouched(tmp_path, src, dst, "capacity", extent_file=_capfile(tmp_path, 4 * MiB))


def _capfile(tmp_path, capacity):
    path = tmp_path / "cap.extents"
    extlib.write_extent_file(str(path), [(0, 4096)], {"capacity": capacity})
    return str(path)


def test_rejects_character_device_and_bad_url(tmp_path, images):
    src, _dst = images
    _untouched(tmp_path, src, "/dev/null", "neither a regular file", mode="all")
    _untouched(tmp_path, src, "http://example.invalid/x", "unsupported URL scheme", mode="all")


def test_check_mode_writes_nothing(tmp_path, images):
    src, dst = images
    result = sync(tmp_path, src, dst, mode="allocated", check_mode=True)
    assert result["changed"] and result["dest_created"] and result["bytes_to_copy"] == 6 * MiB
    assert not os.path.exists(dst) and not (tmp_path / "state").exists()


def test_missing_nbd_binding_is_explained(tmp_path, images, monkeypatch):
    src, _dst = images
    monkeypatch.setattr(bio, "HAS_NBD", False)
    with pytest.raises(bio.MissingNbdBinding) as err:
        sync(tmp_path, src, "nbd+unix:///?socket=/nonexistent.sock", mode="all")
    assert "python3-libnbd" in str(err.value) and "/usr/bin/python3" in str(err.value)


# -- resume, lock, errors ----------------------------------------------------------------------
def test_read_error_reports_offset_and_keeps_state(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    real_read = bio.LocalEndpoint.read

    def failing(self, offset, length, buf):
        if self.path == str(src) and offset <= 5 * MiB < offset + length:
            raise bio.ReadError(self.name, offset, length, OSError(errno.EIO, "Input/output error"))
        return real_read(self, offset, length, buf)

    monkeypatch.setattr(bio.LocalEndpoint, "read", failing)
    with pytest.raises(bio.ReadError) as err:
        sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert "offset %d" % (5 * MiB) in str(err.value) and "Errno 5" in str(err.value)
    state = json.loads(open(_state_file(tmp_path)).read())
    assert state["status"] == "running"
    assert extlib.subtract([(5 * MiB, MiB)], [tuple(d) for d in state["done"]]) != []
    status = json.loads(open(_state_file(tmp_path).replace(".json", ".status.json")).read())
    assert status["state"] == "failed" and "offset" in status["message"]
    # the resume state file is unchanged by a second failing run
    before = open(_state_file(tmp_path)).read()
    with pytest.raises(bio.ReadError):
        sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert open(_state_file(tmp_path)).read() == before
    monkeypatch.setattr(bio.LocalEndpoint, "read", real_read)
    result = sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert digest(src) == digest(dst)
    assert result["resumed"] is False or result["bytes_resumed"] <= 5 * MiB


def _record_write_back(monkeypatch, fail_at=None):
    """Record every sync_file_range call; with ``fail_at``, the wait for the piece there fails with EIO."""
    calls = []
    real = bio.sync_file_range

    def recording(fd, offset, length, flags=bio.SYNC_FILE_RANGE_WRITE):
        waits = bool(flags & bio.SYNC_FILE_RANGE_WAIT_AFTER)
        calls.append((fd, offset, length, waits, os.fstat(fd)))
        if waits and fail_at is not None and offset <= fail_at < offset + length:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, offset, length, flags)

    monkeypatch.setattr(bio, "sync_file_range", recording)
    return calls


def test_write_behind_waits_on_its_own_descriptor_of_the_target(tmp_path, images, monkeypatch):
    src, dst = images
    monkeypatch.setattr(bc, "WRITE_BEHIND", 2 * MiB)
    calls = _record_write_back(monkeypatch)
    opened = []
    real_init = bio.LocalEndpoint.__init__

    def tracking(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append((self.path, self.fd, self.identity()))

    monkeypatch.setattr(bio.LocalEndpoint, "__init__", tracking)
    sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert digest(src) == digest(dst)
    (target_fd, target_identity), = [(fd, ident) for path, fd, ident in opened if path == str(dst)]
    waits = [c for c in calls if c[3]]
    # window of 2 MiB with 1 MiB pieces: every written piece but the last two is waited for
    assert waits and all(c[2] == MiB for c in waits)
    # the waits consume a write-back error for the descriptor they use, so it must not be the target's
    # (its fsync before each commit must still see the error), but the same file; the target is open
    # during every call, so its descriptor number cannot have been reused
    assert all(bio.stat_identity(c[4]) == target_identity for c in calls)
    assert all(c[0] != target_fd for c in calls)


def test_write_back_error_fails_the_run_and_is_never_recorded(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    # layout dz.d.dzd: the piece at 3 MiB holds data, and the one at 5 MiB pushes it out of the window
    monkeypatch.setattr(bc, "WRITE_BEHIND", MiB)
    _record_write_back(monkeypatch, fail_at=3 * MiB)
    with pytest.raises(bio.WriteError) as err:
        sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    message = str(err.value)
    assert "write-back error on target %s at offset %d" % (dst, 3 * MiB) in message and "Errno 5" in message
    # no commit (target flush + state) came after the failure: the range is not recorded as copied. (A range
    # committed before is safe: its flush succeeded on the target's own descriptor, see the test above.)
    state = json.loads(open(_state_file(tmp_path)).read())
    assert state["status"] == "running"
    assert extlib.subtract([(3 * MiB, MiB)], [tuple(d) for d in state["done"]]) == [(3 * MiB, MiB)]
    status = json.loads(open(_state_file(tmp_path).replace(".json", ".status.json")).read())
    assert status["state"] == "failed" and "write-back" in status["message"]
    monkeypatch.undo()
    sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert digest(src) == digest(dst)


def _state_file(tmp_path):
    names = [n for n in os.listdir(tmp_path / "state") if n.endswith(".json") and not n.endswith("status.json")]
    assert len(names) == 1, names
    return str(tmp_path / "state" / names[0])


def _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch):
    """A run in mode all that fails reading the source at 6 MiB, after committing what came before."""
    real_read = bio.LocalEndpoint.read

    def failing(self, offset, length, buf):
        if self.path == str(src) and offset >= 6 * MiB:
            time.sleep(0.5)  # let the main thread commit what is finished
            raise bio.ReadError(self.name, offset, length, OSError(errno.EIO, "boom"))
        return real_read(self, offset, length, buf)

    monkeypatch.setattr(bio.LocalEndpoint, "read", failing)
    with pytest.raises(bio.ReadError):
        sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1, commit_bytes=MiB)
    monkeypatch.setattr(bio.LocalEndpoint, "read", real_read)


def test_resume_skips_done_ranges(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch)
    done = json.loads(open(_state_file(tmp_path)).read())["done"]
    assert extlib.total_bytes(done) >= 5 * MiB
    result = sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert result["resumed"] is True and result["bytes_resumed"] >= 5 * MiB
    assert result["bytes_read"] <= 3 * MiB
    assert digest(src) == digest(dst)
    assert json.loads(open(_state_file(tmp_path)).read())["status"] == "complete"


def test_resumed_run_verifies_earlier_pieces_after_the_copy(tmp_path, images, monkeypatch):
    # source layout per MiB: d z . d . d z d; the first run stops at 6 MiB, the second verifies
    src, dst = images
    make_image(dst, 8 * MiB, seed=5, layout="d")
    _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch)
    reads = _record_target_reads(monkeypatch, dst)
    result = sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1, verify=True)
    assert result["resumed"] is True and result["verification"]["passed"]
    assert digest(src) == digest(dst)
    # every data piece of the target is read once (during the copy or, copied by the first run, after
    # it); the zero pieces are checked through the target's holes
    assert sorted(reads) == [(i * MiB, MiB) for i in (0, 3, 5, 7)]


def _unfinished_other_plan(tmp_path, dst):
    """The state of an unfinished run of another plan (0-2 MiB, the first MiB done) on this target."""
    state_path = _state_file(tmp_path)
    files = bst.StateFiles(str(tmp_path / "state"), bc._target_id(str(dst)))
    bst.write_plan(files.plan, "otherplan", [(0, 2 * MiB)], [])
    data = json.loads(open(state_path).read())
    data.update({"plan_id": "otherplan", "status": "running", "done": [[0, MiB]]})
    open(state_path, "w").write(json.dumps(data))


def test_unfinished_different_plan_is_refused_unless_covered(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    _unfinished_other_plan(tmp_path, dst)
    with pytest.raises(bio.ValidationError) as err:
        sync(tmp_path, src, dst, extents=[[4 * MiB, 4096]])
    assert "unfinished" in str(err.value) and "offset %d" % MiB in str(err.value)
    # an extent list that covers what is left is fine
    result = sync(tmp_path, src, dst, extents=[[MiB, MiB], [4 * MiB, 4096]])
    assert result["changed"]


def test_sync_id_makes_a_completed_run_a_no_op(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    first = sync(tmp_path, src, dst, extents=[[0, MiB]], sync_id="snap-7")
    assert first["changed"] and not first["already_complete"]
    second = sync(tmp_path, src, dst, extents=[[0, MiB]], sync_id="snap-7")
    assert second["already_complete"] and not second["changed"] and second["bytes_read"] == 0
    third = sync(tmp_path, src, dst, extents=[[0, MiB]], sync_id="snap-8")
    assert third["changed"] and not third["already_complete"]


def test_lock_refuses_a_second_writer(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    files = bst.StateFiles(str(tmp_path / "state"), bc._target_id(str(dst)))
    files.ensure_dir()
    holder = bst.TargetLock(files.lock, str(dst)).acquire()
    try:
        with pytest.raises(bst.LockError) as err:
            sync(tmp_path, src, dst, mode="all")
        assert "another block_sync run" in str(err.value) and "pid %d" % os.getpid() in str(err.value)
    finally:
        holder.release()
    # a lock on the target itself (another state_dir) is honoured too
    import fcntl
    fd = os.open(str(dst), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(bst.LockError):
            sync(tmp_path, src, dst, mode="all")
    finally:
        os.close(fd)
    assert sync(tmp_path, src, dst, mode="all")["changed"]


# -- verification ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["xxh3", "blake3", "sha256"])
def test_verify_and_image_digest(tmp_path, images, algorithm):
    src, dst = images
    result = sync(tmp_path, src, dst, mode="allocated", verify=True, image_digest=True,
                  checksum_algorithm=algorithm, checksum_file=str(tmp_path / "sums.txt"), request_size=MiB)
    ver = result["verification"]
    assert ver["passed"] and ver["source_digest"] == ver["target_digest"] and ver["mismatch_count"] == 0
    assert result["image_digest"]["match"] and result["image_digest"]["algorithm"] == algorithm
    lines = [line for line in open(tmp_path / "sums.txt") if not line.startswith("#")]
    assert len(lines) == result["plan"]["extents"]
    assert all(line.split()[2] == line.split()[3] for line in lines)


def test_verify_detects_a_target_that_does_not_keep_data(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    real_write = bio.LocalEndpoint.write

    def lossy(self, offset, data):
        if self.path == str(dst) and offset <= 3 * MiB < offset + len(data):
            data = bytes(memoryview(data))
            data = data[:10] + b"!" + data[11:]
        return real_write(self, offset, data)

    monkeypatch.setattr(bio.LocalEndpoint, "write", lossy)
    with pytest.raises(bc.VerificationError) as err:
        sync(tmp_path, src, dst, mode="all", verify=True, request_size=MiB)
    assert "differ" in str(err.value)
    assert err.value.result["verification"]["mismatches"][0]["offset"] == 3 * MiB
    state = json.loads(open(_state_file(tmp_path)).read())
    assert state["status"] == "running"
    assert extlib.subtract([(3 * MiB, MiB)], [tuple(d) for d in state["done"]]) == [(3 * MiB, MiB)]


def _record_target_reads(monkeypatch, dst):
    """Reads of the target by the workers (copy and verification); the witness samples the main thread
    reads back at commits and before a resume are not counted."""
    reads = []
    real_read = bio.LocalEndpoint.read

    def recording(self, offset, length, buf):
        if self.path == str(dst) and threading.current_thread().name.startswith("block_sync-"):
            reads.append((offset, length))
        return real_read(self, offset, length, buf)

    monkeypatch.setattr(bio.LocalEndpoint, "read", recording)
    return reads


def test_verify_checks_zeroed_pieces_by_the_targets_holes(tmp_path, images, monkeypatch):
    # source layout per MiB: d z . d . d z d; the target starts with data everywhere
    src, dst = images
    make_image(dst, 8 * MiB, seed=5, layout="d")
    reads = _record_target_reads(monkeypatch, dst)
    result = sync(tmp_path, src, dst, mode="all", verify=True, request_size=MiB, workers=2)
    assert result["verification"]["passed"] and result["bytes_zeroed"] == 4 * MiB
    assert digest(dst) == digest(src)
    # the punched pieces were checked through SEEK_DATA/SEEK_HOLE, the data pieces read back
    assert sorted(reads) == [(i * MiB, MiB) for i in (0, 3, 5, 7)]


def test_verify_reads_zeroed_pieces_the_target_did_not_punch(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5, layout="d")
    monkeypatch.setattr(bio.LocalEndpoint, "zero", lambda self, offset, length: None)  # a target that ignores it
    with pytest.raises(bc.VerificationError) as err:
        sync(tmp_path, src, dst, mode="all", verify=True, request_size=MiB)
    mismatches = err.value.result["verification"]["mismatches"]
    assert [(m["offset"], m["length"]) for m in mismatches] == [(1 * MiB, 2 * MiB), (4 * MiB, MiB), (6 * MiB, MiB)]


def test_image_digest_mismatch_when_change_list_is_incomplete(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    with open(src, "r+b") as f:
        f.seek(0)
        f.write(b"listed")
        f.seek(4 * MiB)
        f.write(b"missed")
    with pytest.raises(bc.VerificationError) as err:
        sync(tmp_path, src, dst, extents=[[0, 4096]], image_digest=True, checksum_algorithm="sha256")
    assert "not a replica" in str(err.value)


def test_missing_hash_library_is_reported(tmp_path, images, monkeypatch):
    from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_hash as bh
    src, dst = images
    monkeypatch.setattr(bh, "xxhash", None)
    with pytest.raises(bh.MissingHashLibrary) as err:
        sync(tmp_path, src, dst, mode="allocated", verify=True)
    assert err.value.library == "xxhash"
    assert not os.path.exists(dst)


def test_status_file_reports_progress(tmp_path, images):
    src, dst = images
    status = tmp_path / "progress.json"
    sync(tmp_path, src, dst, mode="allocated", status_file=str(status))
    data = json.loads(status.read_text())
    assert data["state"] == "complete" and data["bytes_done"] == data["bytes_total"] == 8 * MiB
    assert data["percent"] == 100.0 and "rate_bytes_per_second" in data and data["eta_seconds"] == 0


def test_pieces_cover_remaining_ranges_exactly():
    engine = bc.Engine(bc.SyncRequest("a", "b"))
    extents = [(0, 10 * MiB), (20 * MiB, 3 * MiB)]
    done = [(MiB, 2 * MiB + 5), (21 * MiB, MiB)]
    pieces = list(engine._pieces(extents, done, 4 * MiB, bc.COPY))
    covered = extlib.normalize([(p[0], p[2]) for p in pieces])
    assert covered == extlib.subtract(extents, done)
    full = [p for p in pieces if p[5]]
    assert all(p[2] == 4 * MiB or p[0] + p[2] in (10 * MiB, 23 * MiB) for p in full)
    assert (4 * MiB, bc.COPY, 4 * MiB, 0, 1, True) in pieces


def test_failed_commit_stops_every_worker_before_the_run_fails(tmp_path, images, monkeypatch):
    """A periodic commit that fails (here: the state folder is full) ends the run only after every
    worker has stopped: none goes on writing, none uses an endpoint the run then closes."""
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    real_read = bio.LocalEndpoint.read
    real_save = bst.ResumeState.save
    saves = []

    def slow_read(self, offset, length, buf):
        time.sleep(0.05)
        return real_read(self, offset, length, buf)

    def failing_save(self):
        saves.append(self.status)
        if len(saves) > 1:  # the first save marks the run as running; the next one is a commit
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self)

    monkeypatch.setattr(bio.LocalEndpoint, "read", slow_read)
    monkeypatch.setattr(bst.ResumeState, "save", failing_save)
    engine = bc.Engine(bc.SyncRequest(str(src), str(dst), mode="all", state_dir=str(tmp_path / "state"),
                                      request_size=256 * KiB, workers=3, commit_bytes=512 * KiB))
    with pytest.raises(OSError) as err:
        engine.run()
    assert err.value.errno == errno.ENOSPC
    assert engine.stop.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("block_sync-")]
    assert engine.error is None  # no worker failed on an endpoint closed under it
    assert err.value.target_changed is True  # pieces were written before the commit failed
    done = sum(s.done for s in engine.stats)
    time.sleep(0.2)
    assert sum(s.done for s in engine.stats) == done


def test_failed_run_before_any_write_reports_no_change(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)

    def failing(self, offset, length, buf):
        raise bio.ReadError(self.name, offset, length, OSError(errno.EIO, "Input/output error"))

    monkeypatch.setattr(bio.LocalEndpoint, "read", failing)
    with pytest.raises(bio.ReadError) as err:
        sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=2)
    assert err.value.target_changed is False


def _recreate_in_place(path):
    """What 'qemu-img create' or 'truncate -s 0' + grow does: same path, same inode, all zeros."""
    inode = os.stat(path).st_ino
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.truncate(0)
        f.truncate(size)
    assert os.stat(path).st_ino == inode


def test_a_target_recreated_in_place_is_not_resumed(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5, layout="d")
    _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch)
    state = json.loads(open(_state_file(tmp_path)).read())
    assert state["witnesses"] and extlib.total_bytes(state["done"]) >= 5 * MiB
    _recreate_in_place(dst)
    result = sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1)
    assert result["resumed"] is False and result["bytes_resumed"] == 0
    assert any("no longer holds what its resume state" in w for w in result["_warnings"]), result["_warnings"]
    assert digest(src) == digest(dst)


def test_a_completed_sync_id_on_a_recreated_target_copies_again(tmp_path, images):
    src, dst = images
    result = sync(tmp_path, src, dst, mode="allocated", sync_id="snap-7")
    assert result["changed"] and json.loads(open(_state_file(tmp_path)).read())["witnesses"]
    assert sync(tmp_path, src, dst, mode="allocated", sync_id="snap-7")["already_complete"] is True
    _recreate_in_place(dst)
    result = sync(tmp_path, src, dst, mode="allocated", sync_id="snap-7")
    assert result["already_complete"] is False and result["bytes_written"] > 0
    assert digest(src) == digest(dst)


def test_witnesses_are_data_read_back_after_a_flush(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=2, commit_bytes=MiB)
    witnesses = json.loads(open(_state_file(tmp_path)).read())["witnesses"]
    assert 1 <= len(witnesses) <= bst.WITNESSES
    with open(src, "rb") as f:
        for off, length, want in witnesses:
            f.seek(off)
            data = f.read(length)
            assert length == bc.WITNESS_LENGTH and data != bytes(length)  # never a zero sample
            assert hashlib.sha256(data).hexdigest() == want


# -- witnesses of data actually written ------------------------------------------------------------
def _data_then_zeros(path):
    """4 MiB of random data, then 16 MiB of zeros (a hole)."""
    with open(path, "wb") as f:
        f.write(random.Random(11).randbytes(4 * MiB))
        f.truncate(20 * MiB)
    return path


def test_a_recreated_target_whose_last_pieces_were_zeros_is_copied_again(tmp_path):
    src = _data_then_zeros(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    first = sync(tmp_path, src, dst, mode="all", sync_id="snap-1", workers=1)
    assert first["changed"] and digest(src) == digest(dst)
    state = json.loads(open(_state_file(tmp_path)).read())
    _recreate_in_place(dst)
    again = sync(tmp_path, src, dst, mode="all", sync_id="snap-1", workers=1)
    assert again["already_complete"] is False and again["changed"] is True
    assert any("no longer holds" in w for w in again["_warnings"]), again["_warnings"]
    assert digest(src) == digest(dst)
    # the witness is a place where data was written, not one of the last (zero) pieces
    assert state["holds_data"] is True and [w[0] for w in state["witnesses"]] == [0]


@pytest.mark.parametrize("legacy", [False, True])
def test_a_state_with_data_but_no_witness_is_not_trusted(tmp_path, legacy):
    src = _data_then_zeros(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    sync(tmp_path, src, dst, mode="all", sync_id="snap-1", workers=1)
    path = _state_file(tmp_path)
    data = json.loads(open(path).read())
    data["witnesses"] = []
    if legacy:
        data.pop("holds_data", None)  # written before the field existed
    open(path, "w").write(json.dumps(data))
    _recreate_in_place(dst)
    result = sync(tmp_path, src, dst, mode="all", sync_id="snap-1", workers=1)
    assert result["already_complete"] is False and result["bytes_written"] == 4 * MiB
    assert any("no sample of the target" in w for w in result["_warnings"]), result["_warnings"]
    assert digest(src) == digest(dst)


def test_a_state_of_zeros_only_needs_no_witness(tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(8 * MiB)
    dst = tmp_path / "dst.img"
    make_image(dst, 8 * MiB, seed=5, layout="d")
    sync(tmp_path, src, dst, mode="all", sync_id="snap-1")
    data = json.loads(open(_state_file(tmp_path)).read())
    assert data["holds_data"] is False and data["witnesses"] == []
    result = sync(tmp_path, src, dst, mode="all", sync_id="snap-1")
    assert result["already_complete"] is True and not result["_warnings"]


# -- the progress file after a failure past the copy ------------------------------------------------
def _status(tmp_path):
    return json.loads(open(_state_file(tmp_path).replace(".json", ".status.json")).read())


def test_status_file_says_failed_when_the_final_commit_fails(tmp_path, images, monkeypatch):
    src, dst = images
    real_save = bst.ResumeState.save

    def failing_save(self):
        if self.status == "complete":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self)

    monkeypatch.setattr(bst.ResumeState, "save", failing_save)
    with pytest.raises(OSError):
        sync(tmp_path, src, dst, mode="allocated")
    status = _status(tmp_path)
    assert status["state"] == "failed" and "No space left" in status["message"]


@pytest.mark.parametrize("step,kwargs", [("_verify", {"verify": True}), ("_image_digest", {"image_digest": True})])
def test_status_file_says_failed_when_a_check_fails(tmp_path, images, monkeypatch, step, kwargs):
    src, dst = images

    def broken(self, *args):
        raise bio.BlockCopyError("cannot read the target for the %s: boom" % step)

    monkeypatch.setattr(bc.Engine, step, broken)
    with pytest.raises(bio.BlockCopyError):
        sync(tmp_path, src, dst, mode="allocated", checksum_algorithm="sha256", **kwargs)
    status = _status(tmp_path)
    assert status["state"] == "failed" and "boom" in status["message"]


# -- a completed plan still verifies when asked ---------------------------------------------------
def test_already_complete_runs_a_requested_verification_and_digest(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", request_size=MiB)
    result = sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", request_size=MiB, verify=True,
                  image_digest=True, checksum_algorithm="sha256")
    assert result["already_complete"] is True and result["changed"] is False and result["bytes_written"] == 0
    assert result["verification"]["passed"] is True and result["verification"]["bytes"] == result["plan"]["bytes"]
    assert result["image_digest"]["match"] is True
    status = _status(tmp_path)
    assert status["state"] == "complete" and "verification and image digest passed" in status["message"]


def test_already_complete_verification_finds_a_damaged_replica(tmp_path, images):
    src, dst = images
    # one worker: the witness is in the last data piece (7 MiB), never in the damaged one
    sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", request_size=MiB, workers=1)
    with open(dst, "r+b") as f:
        f.seek(3 * MiB + 100)
        f.write(b"damage")
    with pytest.raises(bc.VerificationError) as err:
        sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", request_size=MiB, verify=True,
             checksum_algorithm="sha256")
    result = err.value.result
    assert result["already_complete"] is True and result["changed"] is False
    assert [(m["offset"], m["length"]) for m in result["verification"]["mismatches"]] == [(3 * MiB, MiB)]
    assert _status(tmp_path)["state"] == "failed"
    # the plan is unfinished again: the next run copies what differs instead of reporting it complete
    again = sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", request_size=MiB)
    assert again["already_complete"] is False and again["resumed"] is True and again["bytes_read"] == MiB
    assert digest(src) == digest(dst)


# -- the state is decided under the lock, and check mode decides alike ---------------------------
def test_check_mode_refuses_an_uncovered_unfinished_plan_like_the_run(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    _unfinished_other_plan(tmp_path, dst)
    for check_mode in (True, False):
        with pytest.raises(bio.ValidationError) as err:
            sync(tmp_path, src, dst, extents=[[4 * MiB, 4096]], check_mode=check_mode)
        assert "unfinished block_sync run of a different plan" in str(err.value)


def test_the_resume_state_is_read_again_under_the_lock(tmp_path, images, monkeypatch):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    sync(tmp_path, src, dst, extents=[[4 * MiB, 4096]], sync_id="snap-1")
    real_acquire = bst.TargetLock.acquire

    def another_run_first(self):
        # another run of a different plan held the lock and left its unfinished state behind
        _unfinished_other_plan(tmp_path, dst)
        return real_acquire(self)

    monkeypatch.setattr(bst.TargetLock, "acquire", another_run_first)
    with pytest.raises(bio.ValidationError) as err:
        sync(tmp_path, src, dst, extents=[[4 * MiB, 4096]], sync_id="snap-1")
    assert "unfinished block_sync run of a different plan" in str(err.value)


# -- extent lists of all the allocated data ------------------------------------------------------
def _moved_data(tmp_path, src, dst):
    """A synced target, then the source loses data at MiB 0 (a hole now) and gains data at MiB 2."""
    sync(tmp_path, src, dst, mode="allocated")
    fd = os.open(str(src), os.O_RDWR)
    try:
        bio.fallocate(fd, bio.FALLOC_FL_PUNCH_HOLE | bio.FALLOC_FL_KEEP_SIZE, 0, MiB)
        os.pwrite(fd, random.Random(4).randbytes(MiB), 2 * MiB)
    finally:
        os.close(fd)
    assert digest(src) != digest(dst)


@pytest.mark.parametrize("metadata", [{"coverage": "allocated"}, {"call": "allocated"}, {"change_id": "*"}])
def test_an_allocated_extent_list_zeroes_what_it_does_not_list(tmp_path, images, metadata):
    src, dst = images
    _moved_data(tmp_path, src, dst)
    path = str(tmp_path / "allocated.extents")
    extlib.write_extent_file(path, data_ranges(str(src)), dict(metadata, capacity=8 * MiB))
    check = sync(tmp_path, src, dst, extent_file=path, check_mode=True)
    assert check["changed"] and check["bytes_to_zero"] >= MiB and check["plan"]["zeroes_unlisted"] is True
    result = sync(tmp_path, src, dst, extent_file=path)
    assert result["plan"]["zeroes_unlisted"] is True and result["input_extents"]["coverage"] == "allocated"
    assert result["plan"]["hole_bytes"] == 8 * MiB - extlib.total_bytes(data_ranges(str(src)))
    assert result["bytes_zeroed"] >= MiB
    assert digest(src) == digest(dst)


def test_a_changed_extent_list_leaves_unlisted_ranges_alone(tmp_path, images):
    src, dst = images
    _moved_data(tmp_path, src, dst)
    path = str(tmp_path / "changed.extents")
    extlib.write_extent_file(path, [(2 * MiB, MiB)], {"coverage": "changed", "capacity": 8 * MiB})
    result = sync(tmp_path, src, dst, extent_file=path)
    assert result["plan"]["zeroes_unlisted"] is False and result["plan"]["hole_bytes"] == 0
    assert result["bytes_zeroed"] == 0
    assert digest(src) != digest(dst)  # the change at MiB 0 was not listed: it is not the engine's to guess


def test_a_partial_listing_is_refused(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    path = str(tmp_path / "partial.extents")
    extlib.write_extent_file(path, [(4 * MiB, MiB)], {"coverage": "allocated", "starting_offset": 4 * MiB})
    msg = _untouched(tmp_path, src, dst, "starting_offset=%d" % (4 * MiB), extent_file=path)
    assert "from offset 0" in msg


# -- review findings: retries, distrusted states, restarts, bad paths ------------------------------------
def test_dest_is_zero_is_ignored_once_a_run_wrote_to_the_target(tmp_path, images, monkeypatch):
    src, dst = images
    with open(dst, "wb") as f:
        f.truncate(8 * MiB)  # a fresh, all-zero target
    _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch)  # wrote data at 0-1 MiB (layout d z . d ...)
    with open(src, "r+b") as f:  # the source changes: its first MiB is zeros now
        f.write(bytes(MiB))
    result = sync(tmp_path, src, dst, mode="all", request_size=MiB, workers=1, dest_is_zero=True)
    assert any("dest_is_zero is ignored" in w for w in result["_warnings"]), result["_warnings"]
    assert digest(src) == digest(dst)


def test_a_distrusted_unfinished_run_of_another_plan_still_guards_its_extents(tmp_path, images, monkeypatch):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5, layout="d")
    _interrupted_at_6_mib(tmp_path, src, dst, monkeypatch)
    state = json.loads(open(_state_file(tmp_path)).read())
    off = state["witnesses"][0][0]
    with open(dst, "r+b") as f:  # something else wrote where the witness was taken
        f.seek(off)
        f.write(b"\x5a" * 16)
    with pytest.raises(bio.ValidationError) as err:
        sync(tmp_path, src, dst, extents=[[0, MiB]], request_size=MiB, workers=1)
    assert "an unfinished block_sync run of a different plan" in str(err.value)
    assert json.loads(open(_state_file(tmp_path)).read())["status"] == "running"


def test_restart_copies_a_completed_sync_id_again(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1")
    with open(dst, "r+b") as f:  # damage away from any witness
        f.seek(7 * MiB + 100)
        f.write(b"\x00" * 100)
    assert sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1")["already_complete"] is True
    result = sync(tmp_path, src, dst, mode="allocated", sync_id="snap-1", resume="restart")
    assert result["already_complete"] is False and result["changed"] and digest(src) == digest(dst)


def test_a_damaged_state_is_replaced_with_restart_only(tmp_path, images):
    src, dst = images
    sync(tmp_path, src, dst, mode="allocated")
    with open(_state_file(tmp_path), "w") as f:
        f.write('{"done": [[0, "x"]]')
    with pytest.raises(bio.BlockCopyError) as err:
        sync(tmp_path, src, dst, mode="all")
    assert "set resume: restart" in str(err.value)
    with open(_state_file(tmp_path), "w") as f:
        f.write('{"plan_id": "p", "done": [[0, "x"]]}')
    with pytest.raises(bio.BlockCopyError) as err:
        sync(tmp_path, src, dst, mode="all")
    assert "is damaged" in str(err.value) and "set resume: restart" in str(err.value)
    result = sync(tmp_path, src, dst, mode="all", resume="restart")
    assert any("cannot be read" in w for w in result["_warnings"]) and digest(src) == digest(dst)


def test_bad_target_paths_and_checksum_folder_are_refused_before_writing(tmp_path, images):
    src, dst = images
    os.symlink(str(tmp_path / "missing.img"), str(tmp_path / "dangling"))
    for check_mode in (True, False):
        _untouched(tmp_path, src, tmp_path / "dangling", "symbolic link", mode="allocated", check_mode=check_mode)
        _untouched(tmp_path, src, str(tmp_path / "new") + "/", "does not end in /", mode="allocated",
                   check_mode=check_mode)
    assert not os.path.lexists(tmp_path / "missing.img")
    make_image(dst, 8 * MiB, seed=5)
    _untouched(tmp_path, src, dst, "folder %s does not exist" % (tmp_path / "nowhere"), mode="all", verify=True,
               checksum_file=str(tmp_path / "nowhere" / "sums.txt"))


def test_compare_refuses_an_allocated_coverage_list(tmp_path, images):
    src, dst = images
    make_image(dst, 8 * MiB, seed=5)
    listfile = tmp_path / "alloc.extents"
    extlib.write_extent_file(str(listfile), [(0, MiB)], {"capacity": 8 * MiB, "coverage": "allocated"})
    _untouched(tmp_path, src, dst, "use mode extents", mode="compare", extent_file=str(listfile))


def test_extent_file_accepts_zero_padded_decimals(tmp_path):
    path = tmp_path / "padded.extents"
    path.write_text("0000008192 0000004096\n0x4000 4096\n")
    assert extlib.read_extent_file(str(path))[1] == [(8192, 4096), (16384, 4096)]


def test_a_new_target_is_removed_when_its_state_cannot_be_written(tmp_path, images, monkeypatch):
    src, dst = images

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bc, "write_plan", full)
    with pytest.raises(OSError):
        sync(tmp_path, src, dst, mode="allocated")
    assert not os.path.exists(dst)
    monkeypatch.undo()
    result = sync(tmp_path, src, dst, mode="allocated")
    assert result["dest_created"] and digest(src) == digest(dst)
