# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every source kind to every target kind: file, loop block device, nbdkit (unix socket) and
qemu-nbd (TCP loopback). Full sync, incremental sync with extents that changed to zeros,
verification, compare mode. Drives the engine directly (the module runs are in test_module.py)."""

import itertools
import os

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _blockcopy as bc

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
