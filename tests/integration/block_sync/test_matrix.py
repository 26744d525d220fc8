# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every source kind to every target kind: file, loop block device, nbdkit (unix socket) and
qemu-nbd (TCP loopback). Full sync, incremental sync with extents that changed to zeros,
verification, compare mode. Drives the engine directly (the module runs are in test_module.py)."""

import itertools
import os
import time

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy as bc
from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy_io as bio
from testbed.nbd import NbdExport

from blocksync_helpers import KINDS, KiB, MiB, make_image, read_range, sha_of  # pylint: disable=import-error

SIZE = 8 * MiB
CHANGES = [(100 * KiB, 5000), (MiB + 64 * KiB, 192 * KiB), (3 * MiB, 512 * KiB), (6 * MiB + 4 * KiB, 8 * KiB),
           (SIZE - 4 * KiB, 4 * KiB)]
ZEROED = (3 * MiB, 512 * KiB)  # data that changes to zeros


def sync(workdir, src, dest, **kw):
    kw.setdefault("state_dir", str(workdir / "state"))
    kw.setdefault("request_size", 256 * KiB)
    kw.setdefault("workers", 3)
    return bc.run_sync(bc.SyncRequest(src, dest, **kw))


def change_source(path):
    with open(path, "r+b") as f:
        for index, (off, length) in enumerate(CHANGES):
            f.seek(off)
            f.write(bytes(length) if (off, length) == ZEROED else os.urandom(length))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("src_kind,dst_kind", list(itertools.product(KINDS, KINDS)))
def test_full_then_incremental(workdir, endpoints, src_kind, dst_kind):
    src_img = make_image(workdir / "src.img", SIZE, seed=1)
    dst_img = make_image(workdir / "dst.img", SIZE, seed=2, layout="d")  # stale data everywhere
    src = endpoints.expose(src_img, src_kind, readonly=True)
    dst = endpoints.expose(dst_img, dst_kind)

    full = sync(workdir, src, dst, mode="allocated", verify=True, checksum_algorithm="xxh3")
    assert full["changed"] and full["verification"]["passed"]
    assert full["src_kind"] == {"nbdkit": "nbd", "qemu-nbd": "nbd"}.get(src_kind, src_kind)
    assert full["dest_kind"] == {"nbdkit": "nbd", "qemu-nbd": "nbd"}.get(dst_kind, dst_kind)
    if src_kind != "block":
        assert full["allocation_known"] is True and full["plan"]["hole_bytes"] == 2 * MiB
    assert full["bytes_written"] == 4 * MiB  # zero-filled data and holes are never written as data
    assert sha_of(dst_img, SIZE) == sha_of(src_img, SIZE)

    change_source(src_img)
    inc = sync(workdir, src, dst, extents=[{"offset": o, "length": n} for o, n in reversed(CHANGES)],
               verify=True, checksum_algorithm="blake3", image_digest=True)
    assert inc["input_extents"]["sorted"] is False
    assert inc["bytes_zeroed"] >= ZEROED[1] and inc["verification"]["passed"] and inc["image_digest"]["match"]
    assert inc["bytes_read"] == sum(n for _o, n in CHANGES)
    assert sha_of(dst_img, SIZE) == sha_of(src_img, SIZE)
    assert read_range(dst_img, *ZEROED) == bytes(ZEROED[1])


@pytest.mark.parametrize("src_kind,dst_kind", [("file", "nbdkit"), ("nbdkit", "block"), ("qemu-nbd", "file"),
                                               ("block", "qemu-nbd")])
def test_compare_mode(workdir, endpoints, src_kind, dst_kind):
    src_img = make_image(workdir / "src.img", SIZE, seed=1)
    dst_img = make_image(workdir / "dst.img", SIZE, seed=1)
    change_source(src_img)
    src = endpoints.expose(src_img, src_kind, readonly=True)
    dst = endpoints.expose(dst_img, dst_kind)
    check = sync(workdir, src, dst, mode="compare", check_mode=True)
    assert check["changed"] and check["bytes_written"] == 0 and check["bytes_differing"] > 0
    assert sha_of(dst_img, SIZE) != sha_of(src_img, SIZE)
    result = sync(workdir, src, dst, mode="compare")
    assert result["bytes_differing"] == check["bytes_differing"]
    assert sha_of(dst_img, SIZE) == sha_of(src_img, SIZE)
    assert sync(workdir, src, dst, mode="compare")["changed"] is False


def test_nbd_target_zeroes_without_writing_data(workdir, endpoints):
    """Against nbdkit (can_zero) a changed-to-zero extent is an NBD zero request, not data."""
    src_img = make_image(workdir / "src.img", SIZE, seed=1)
    dst_img = make_image(workdir / "dst.img", SIZE, seed=1)
    with open(src_img, "r+b") as f:
        f.seek(0)
        f.write(bytes(MiB))
    dst = endpoints.expose(dst_img, "nbdkit")
    result = sync(workdir, src_img, dst, extents=[[0, MiB]])
    assert result["bytes_written"] == 0 and result["bytes_zeroed"] == MiB
    assert read_range(dst_img, 0, MiB) == bytes(MiB)


@pytest.mark.parametrize("src_kind,dst_kind", [("qemu-nbd-single", "file"), ("file", "qemu-nbd-single")])
def test_workers_share_a_connection_without_multi_conn(workdir, endpoints, src_kind, dst_kind):
    # one connection for all workers: reads with several requests in flight, writes, verification reads
    # and the flushes of frequent commits (main thread) all take turns on it
    size = 32 * MiB
    src_img = make_image(workdir / "src.img", size, seed=3)
    dst_img = make_image(workdir / "dst.img", size, seed=4, layout="d")
    src = endpoints.expose(src_img, src_kind, readonly=True)
    dst = endpoints.expose(dst_img, dst_kind)
    result = sync(workdir, src, dst, mode="all", verify=True, request_size=4 * MiB, workers=4,
                  commit_bytes=4 * MiB)
    assert result["workers"] == 4 and result["verification"]["passed"]
    assert sha_of(dst_img, size) == sha_of(src_img, size)


def _interrupt_nbd_run_at(workdir, uri, dst, stop_at, **kw):
    """A run from an NBD source that fails at ``stop_at`` after committing what came before."""
    real_read = bio.NbdEndpoint.read

    def failing(self, offset, length, buf):
        if offset >= stop_at:
            time.sleep(0.5)  # let the main thread commit what is finished
            raise bio.ReadError(self.name, offset, length, OSError(5, "simulated"))
        return real_read(self, offset, length, buf)

    bio.NbdEndpoint.read = failing
    try:
        with pytest.raises(bio.ReadError):
            sync(workdir, uri, dst, mode="all", request_size=MiB, workers=1, commit_bytes=MiB, **kw)
    finally:
        bio.NbdEndpoint.read = real_read


@pytest.mark.parametrize("sync_id", [None, "snap-2"], ids=["no-sync-id", "sync-id"])
def test_an_nbd_source_resumes_only_with_its_snapshot_identity(workdir, sync_id):
    """A killed run from an NBD export, then the same URL serving another snapshot: without sync_id
    the saved progress is not trusted and everything is copied from the new snapshot; with the
    snapshot's sync_id (the same snapshot served again) the run resumes."""
    snap1 = make_image(workdir / "snap1.img", SIZE, seed=21, layout="d")
    snap2 = make_image(workdir / "snap2.img", SIZE, seed=21, layout="d")
    change_source(snap2)  # differs from snap1 inside the range the first run finishes
    dst = make_image(workdir / "dst.img", SIZE, seed=22, layout="d")
    served = snap1 if sync_id is None else snap2
    export = NbdExport.nbdkit(str(served), readonly=True, name="same-url", verbose=False).start()
    uri = export.uri
    try:
        _interrupt_nbd_run_at(workdir, uri, str(dst), 4 * MiB, sync_id=sync_id)
    finally:
        export.stop()
    export = NbdExport.nbdkit(str(snap2), readonly=True, name="same-url", verbose=False).start()
    try:
        assert export.uri == uri
        warnings = []
        result = bc.run_sync(bc.SyncRequest(uri, str(dst), mode="all", request_size=MiB, workers=1,
                                            state_dir=str(workdir / "state"), sync_id=sync_id),
                             warn=warnings.append)
    finally:
        export.stop()
    if sync_id is None:
        assert result["resumed"] is False and any("cannot show that it still serves" in w for w in warnings)
    else:
        assert result["resumed"] is True and result["bytes_resumed"] >= 3 * MiB and not warnings
    assert sha_of(dst, SIZE) == sha_of(snap2, SIZE)


def test_nbd_source_with_a_small_maximum_request(workdir):
    """An export that allows at most 64 KiB per request (and fails larger ones): the copy, verification and
    the whole-image digests all keep to it."""
    src = make_image(os.path.join(workdir, "small-max.img"), 6 * MiB, seed=11)
    export = NbdExport.nbdkit(src, readonly=True, filters=["blocksize-policy"], name="small-max",
                              filter_args=["blocksize-minimum=512", "blocksize-preferred=4096",
                                           "blocksize-maximum=65536", "blocksize-error-policy=error"]).start()
    try:
        dst = os.path.join(workdir, "small-max-copy.img")
        result = sync(workdir, export.uri, dst, mode="all", verify=True, image_digest=True)
        assert result["request_size"] == 64 * KiB and result["verification"]["passed"]
        assert result["image_digest"]["match"] is True
        assert sha_of(dst, 6 * MiB) == sha_of(src, 6 * MiB)
    finally:
        export.stop()


def test_a_block_device_target_in_use_is_refused_also_in_check_mode(workdir, endpoints):
    """A target another program holds exclusively (as a mount or LVM does) is refused by check mode too,
    not only by the run."""
    src = make_image(os.path.join(workdir, "busy-src.img"), 4 * MiB, seed=12)
    dev = endpoints.expose(make_image(os.path.join(workdir, "busy-dst.img"), 4 * MiB, seed=13), "block")
    holder = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        for check_mode in (True, False):
            with pytest.raises(bio.ValidationError) as err:
                sync(workdir, src, dev, mode="all", check_mode=check_mode)
            assert "is in use" in str(err.value), (check_mode, err.value)
    finally:
        os.close(holder)
    assert sync(workdir, src, dev, mode="all", check_mode=True)["changed"] is True


def test_extents_unaligned_to_the_servers_minimum_block_are_refused_before_writing(workdir):
    src = make_image(os.path.join(workdir, "min-src.img"), 4 * MiB, seed=14)
    dst_image = make_image(os.path.join(workdir, "min-dst.img"), 4 * MiB, seed=15)
    before = sha_of(dst_image, 4 * MiB)
    args = ["blocksize-minimum=4096", "blocksize-preferred=4096", "blocksize-maximum=1048576",
            "blocksize-error-policy=error"]
    source = NbdExport.nbdkit(src, readonly=True, filters=["blocksize-policy"], filter_args=args,
                              name="min-src").start()
    target = NbdExport.nbdkit(dst_image, filters=["blocksize-policy"], filter_args=args, name="min-dst").start()
    try:
        for src_uri, dst in ((source.uri, os.path.join(workdir, "min-copy.img")), (src, target.uri)):
            if src_uri == source.uri:
                make_image(dst, 4 * MiB, seed=15)
            with pytest.raises(bio.ValidationError) as err:
                sync(workdir, src_uri, dst, extents=[[4096, 8192], [MiB + 512, 4096]])
            assert "offset %d, length 4096 is not aligned to the 4096-byte minimum block size" % (MiB + 512) \
                in str(err.value), err.value
        assert sha_of(dst_image, 4 * MiB) == before
        result = sync(workdir, source.uri, target.uri, extents=[[4096, 8192], [MiB, 4096]])
        assert result["bytes_written"] + result["bytes_zeroed"] == 12288
        assert read_range(dst_image, MiB, 4096) == read_range(src, MiB, 4096)
    finally:
        source.stop()
        target.stop()
