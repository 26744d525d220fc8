# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbtsim's frozen snapshot copies built incrementally: after a snapshot is removed, the next frozen
copy is made from the previous one by re-copying only the blocks written since, so its cost grows with
the changed bytes. What is served must not change: every frozen copy must equal the live disk at the
moment its snapshot was taken - bytes, and holes (the allocation map "*" answers from) - whichever way
it was made, across rounds of writes of every kind, snapshot removals, stacked snapshots and reverts.

The oracle is the live disk file read by the test right after each snapshot task finished (no write
happens in between) and the bytes of the frozen copy read back over NBD.
"""

import hashlib
import os
import random

import nbd  # python3-libnbd (Debian package), reached through the venv's system site packages
import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from testbed.cbtsim import CbtSim

MiB = 1 << 20
KiB = 1 << 10
DISK = 24 * MiB
KEY = 2000


@pytest.fixture(scope="module")
def sim():
    peer = CbtSim(name="frozen", vms=0).start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def si(sim):
    conn = sim.connect()
    yield conn
    Disconnect(conn)


def run(task):
    WaitForTask(task)
    return task.info.result


def data_extents(path, size):
    """Raw data (non-hole) extents of a file: what SEEK_DATA/SEEK_HOLE report."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            out.append((data, hole - data))
            pos = hole
    finally:
        os.close(fd)
    return out


def image(path, size=DISK):
    with open(path, "rb") as handle:
        data = handle.read()
    assert len(data) == size
    return hashlib.sha256(data).hexdigest(), data_extents(path, size)


def nbd_digest(sim, moid, snap_moid, size=DISK):
    exp = sim.export(moid, snap_moid, KEY)
    try:
        h = nbd.NBD()
        h.connect_uri(exp["uri"])
        try:
            data = b"".join(h.pread(4 * MiB, off) for off in range(0, size, 4 * MiB))
        finally:
            h.shutdown()
    finally:
        sim.unexport(exp["id"])
    return hashlib.sha256(data).hexdigest()


def frozen_of(sim, moid, snap_moid):
    for snap in sim.vm(moid)["snapshots"]:
        if snap["moid"] == snap_moid:
            (disk,) = [d for d in snap["disks"] if d["key"] == KEY]
            return disk
    raise AssertionError("snapshot %s not found in the simulator" % snap_moid)


def workload(sim, moid, rng, seed):
    """A round of guest writes of every kind; returns the bytes touched, rounded out to 64 KiB blocks."""
    ops = []
    for i in range(rng.randint(3, 8)):
        kind = rng.choice(["random", "random", "zero", "byte", "discard", "tiny"])
        length = rng.choice([512, 4096, 65536, 100 * KiB, 700 * KiB, 2 * MiB])
        off = rng.randrange(0, DISK - length)
        if kind == "tiny":
            off, length, kind = rng.randrange(0, DISK - 3), 3, "random"
        pattern = {"random": "random", "zero": "zero", "byte": "byte:0x5a", "discard": "discard"}[kind]
        sim.write(moid, KEY, off, length, pattern=pattern, seed=seed * 100 + i)
        ops.append((off, length))
    touched = set()
    for off, length in ops:
        touched.update(range(off // (64 * KiB), (off + length - 1) // (64 * KiB) + 1))
    return len(touched) * 64 * KiB


def check_frozen(sim, moid, snap, live, how=None, at_most=None):
    disk = frozen_of(sim, moid, snap._moId)
    assert image(disk["path"]) == live, "frozen copy of %s differs from the live disk at snapshot time" % snap.name
    if how:
        assert disk["freeze"] == how, (snap.name, disk)
    if at_most is not None:
        assert disk["freeze_bytes"] <= at_most, (snap.name, disk["freeze_bytes"], at_most)
    return disk


def test_frozen_copies_stay_exact_over_rounds_removals_and_reverts(sim, si):
    info = sim.create_vm("frozen-rounds", cbt_enabled=True, disks=[{"size": DISK, "fill": {
        "random_percent": 40, "seed": 5, "zero_regions": [[3 * MiB, 200 * KiB]]}}])
    moid, live_path = info["moid"], info["disks"][0]["path"]
    vm = vim.VirtualMachine(moid, si._stub)
    rng = random.Random(4242)

    # round 0: the first frozen copy is a full one
    prev = run(vm.CreateSnapshot_Task("r0", "", False, False))
    live = image(live_path)
    first = check_frozen(sim, moid, prev, live, how="full")
    assert first["freeze_bytes"] > 8 * MiB, "the fill is copied"

    # warm rounds as the migration role runs them: remove the previous snapshot, the guest writes,
    # snapshot -> every later copy is incremental and copies at most the blocks written
    for rnd in range(1, 7):
        run(prev.RemoveSnapshot_Task(removeChildren=False))
        written = workload(sim, moid, rng, rnd)
        snap = run(vm.CreateSnapshot_Task("r%d" % rnd, "", False, False))
        live = image(live_path)
        check_frozen(sim, moid, snap, live, how="incremental", at_most=written)
        assert nbd_digest(sim, moid, snap._moId) == live[0]
        prev = snap
    # "*" answers from the incrementally built copy: the allocated blocks of the live disk then
    star = vm.QueryChangedDiskAreas(snapshot=prev, deviceKey=KEY, startOffset=0, changeId="*")
    blocks = set()
    for off, length in live[1]:
        blocks.update(range(off // (64 * KiB), (off + length - 1) // (64 * KiB) + 1))
    got = set()
    page_start = 0
    while page_start < DISK:
        for a in star.changedArea:
            got.update(range(a.start // (64 * KiB), (a.start + a.length - 1) // (64 * KiB) + 1))
        page_start = star.startOffset + star.length
        if page_start < DISK:
            star = vm.QueryChangedDiskAreas(snapshot=prev, deviceKey=KEY, startOffset=page_start, changeId="*")
    assert got == blocks

    # revert to the newest snapshot: the live disk is that copy again; the next copy stays incremental
    sim.write(moid, KEY, 5 * MiB, MiB, pattern="byte:0x11")
    run(prev.RevertToSnapshot_Task())
    assert image(live_path) == image(frozen_of(sim, moid, prev._moId)["path"])
    written = workload(sim, moid, rng, 50)
    run(prev.RemoveSnapshot_Task(removeChildren=False))
    snap = run(vm.CreateSnapshot_Task("after-revert", "", False, False))
    check_frozen(sim, moid, snap, image(live_path), how="incremental", at_most=written)

    # revert to an older (stacked) snapshot: what differs from the newest copy is unknown -> full copy
    written = workload(sim, moid, rng, 60)
    newer = run(vm.CreateSnapshot_Task("stacked", "", False, False))
    check_frozen(sim, moid, newer, image(live_path), how="full")
    workload(sim, moid, rng, 61)
    run(snap.RevertToSnapshot_Task())
    run(newer.RemoveSnapshot_Task(removeChildren=False))
    run(snap.RemoveSnapshot_Task(removeChildren=False))
    workload(sim, moid, rng, 62)
    last = run(vm.CreateSnapshot_Task("after-old-revert", "", False, False))
    check_frozen(sim, moid, last, image(live_path), how="full")
    assert nbd_digest(sim, moid, last._moId) == image(live_path)[0]

    # removing the snapshot keeps its copy only as the disk's spare; destroying the VM removes it
    run(last.RemoveSnapshot_Task(removeChildren=False))
    frozen_dir = os.path.join(str(sim.workdir / "state"), "frozen", moid)
    assert sorted(os.listdir(frozen_dir)) == ["spare-%d.img" % KEY]
    run(vm.PowerOffVM_Task())
    run(vm.Destroy_Task())
    assert not os.path.exists(frozen_dir) or os.listdir(frozen_dir) == []


def test_a_live_disk_changed_behind_the_simulator_gets_a_full_copy(sim, si):
    info = sim.create_vm("frozen-outside", disks=[{"size": DISK, "fill": {"random_percent": 20, "seed": 9}}])
    moid, live_path = info["moid"], info["disks"][0]["path"]
    vm = vim.VirtualMachine(moid, si._stub)
    run(run(vm.CreateSnapshot_Task("a", "", False, False)).RemoveSnapshot_Task(removeChildren=False))
    with open(live_path, "r+b") as handle:   # not through the control API: the simulator cannot know
        handle.seek(7 * MiB)
        handle.write(b"\xee" * 4096)
    snap = run(vm.CreateSnapshot_Task("b", "", False, False))
    check_frozen(sim, moid, snap, image(live_path), how="full")
    run(snap.RemoveSnapshot_Task(removeChildren=False))
