# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""block_sync against nbdcopy, nbdkit extentlist + nbdcopy --allocated and a naive loop, in one run.

See README.md next to this file. Prints medians, min/max and the ratios the issue asks for; it never
fails on a slow result (benchmarks are not pass/fail).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position
from testbed.nbd import NbdExport  # noqa: E402 pylint: disable=wrong-import-position

sys.path.insert(0, str(ansible_run.collections_root()))

from ansible_collections.cbt.toolkit.plugins.module_utils import extents as extlib  # noqa: E402
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy import SyncRequest, run_sync  # noqa: E402

MiB = 1024 * 1024
KiB = 1024


def log(msg):
    print(msg, flush=True)


# -- data ------------------------------------------------------------------------------------
def make_source(path, size, seed=1):
    """1 MiB granules: 55 % random, 10 % zero-filled (allocated zeros), 35 % holes."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, MiB):
            k = rnd.random()
            if k < 0.55:
                f.seek(off)
                f.write(rnd.randbytes(MiB))
            elif k < 0.65:
                f.seek(off)
                f.write(bytes(MiB))
        f.flush()
        os.fsync(f.fileno())


def change_sets(size, seed=2):
    """big: ~5 % in 64 KiB-4 MiB extents (64 KiB aligned); small: ~5 % in scattered 64 KiB extents."""
    rnd = random.Random(seed)
    target = size // 20
    big = []
    used = 0
    taken = set()
    while used < target:
        length = rnd.randrange(1, 65) * 64 * KiB
        off = rnd.randrange(0, (size - length) // (64 * KiB)) * 64 * KiB
        blocks = range(off // (64 * KiB), (off + length) // (64 * KiB) + 1)
        if any(b in taken for b in blocks):
            continue
        taken.update(blocks)
        big.append((off, length))
        used += length
    small = []
    used = 0
    taken = set()
    while used < target:
        block = rnd.randrange(0, size // (64 * KiB))
        if block in taken or block - 1 in taken or block + 1 in taken:
            continue
        taken.add(block)
        small.append((block * 64 * KiB, 64 * KiB))
        used += 64 * KiB
    return sorted(big), sorted(small)


def apply_changes(base, path, extents, seed):
    subprocess.run(["cp", "--sparse=always", base, path], check=True)
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        for i, (off, length) in enumerate(extents):
            f.seek(off)
            f.write(bytes(length) if i % 10 == 9 else rnd.randbytes(length))
        f.flush()
        os.fsync(f.fileno())


def evict(*paths):
    for path in paths:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def preload(*paths):
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha_extents(path, extents):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for off, length in extents:
            f.seek(off)
            h.update(f.read(length))
    return h.hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(16 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


# -- contenders ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.abspath(args.workdir)
        self.state = os.path.join(self.dir, "state")
        self.results = {}
        self.per_round = None
        self.workers = args.workers
        self.request_size = args.request_size

    def p(self, name):
        return os.path.join(self.dir, name)

    def record(self, case, seconds):
        self.results.setdefault(case, []).append(seconds)

    def ours(self, src, dest, **kw):
        if os.path.isdir(self.state):
            shutil.rmtree(self.state)
        req = SyncRequest(src, dest, state_dir=self.state, workers=self.workers, request_size=self.request_size, **kw)
        t0 = time.perf_counter()
        result = run_sync(req)
        return time.perf_counter() - t0, result

    def reset_target(self, base):
        tgt = self.p("tgt.img")
        subprocess.run(["cp", "--sparse=always", base, tgt], check=True)
        fsync_path(tgt)
        # let the file system finish what the copy left (journal commit, discards of the freed blocks)
        # before the next case starts its clock
        os.sync()
        return tgt

    def prepare_cache(self, cache, *paths):
        if cache == "cold":
            evict(*paths)
        else:
            preload(*paths)

    def full_sync(self, cache):
        src = self.p("src.img")
        out = self.p("out.img")
        for name in ("ours", "nbdcopy"):
            if os.path.exists(out):
                os.unlink(out)
            self.prepare_cache(cache, src)
            if name == "ours":
                seconds, _r = self.ours(src, out, mode="allocated")
                t0 = time.perf_counter()
                fsync_path(out)
                seconds += time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                subprocess.run(["nbdcopy", src, out], check=True)
                fsync_path(out)
                seconds = time.perf_counter() - t0
            self.record("full/%s/%s" % (cache, name), seconds)
            if self.args.check and name == "ours":
                assert sha_file(out) == self.src_sha, "full sync produced a different image"

    def changed(self, cache, setname):
        extents = self.sets[setname]
        src = self.p("src_%s.img" % setname)
        listfile = self.p("%s.extents" % setname)
        base = self.p("src.img")
        nbytes = extlib.total_bytes(extents)
        for name in ("ours", "ours_verify", "extentlist_nbdcopy", "naive", "ours_nbd_src"):
            tgt = self.reset_target(base)
            self.prepare_cache(cache, src, tgt)
            if name in ("ours", "ours_verify"):
                seconds, r = self.ours(src, tgt, extent_file=listfile, verify=(name == "ours_verify"))
                if name == "ours_verify":
                    assert r["verification"]["passed"]
            elif name == "ours_nbd_src":
                export = NbdExport.nbdkit(src, readonly=True, name="bench-src", verbose=False).start()
                try:
                    self.prepare_cache(cache, src, tgt)
                    seconds, r = self.ours(export.uri, tgt, extent_file=listfile)
                finally:
                    export.stop()
            elif name == "naive":
                t0 = time.perf_counter()
                with open(src, "rb") as fin, open(tgt, "r+b") as fout:
                    for off, length in extents:
                        fin.seek(off)
                        data = fin.read(length)
                        fout.seek(off)
                        fout.write(data)
                    fout.flush()
                    os.fsync(fout.fileno())
                seconds = time.perf_counter() - t0
            else:
                target = NbdExport.nbdkit(tgt, name="bench-tgt", verbose=False).start()
                # nbdkit 1.32's extentlist filter rejects '#' comment lines: give it a bare list
                plain = self.p("%s.nbdkit-extentlist" % setname)
                with open(plain, "w") as f:
                    f.writelines("%d %d\n" % e for e in extents)
                source = NbdExport.nbdkit(src, readonly=True, filters=["extentlist"],
                                          filter_args=["extentlist=%s" % plain], name="bench-xl", verbose=False).start()
                try:
                    self.prepare_cache(cache, src, tgt)
                    t0 = time.perf_counter()
                    subprocess.run(["nbdcopy", "--destination-is-zero", "--allocated", source.uri, target.uri],
                                   check=True)
                    seconds = time.perf_counter() - t0
                finally:
                    source.stop()
                    target.stop()
            self.record("changed-%s/%s/%s" % (setname, cache, name), seconds)
            if self.args.check:
                assert sha_extents(tgt, extents) == self.set_sha[setname], "%s copied wrong data" % name
        self.bytes[setname] = nbytes

    def setup(self):
        os.makedirs(self.dir, exist_ok=True)
        size = self.args.size
        src = self.p("src.img")
        meta = self.p("meta.json")
        want = {"size": size, "v": 2}
        have = None
        if os.path.exists(meta):
            with open(meta) as f:
                have = json.load(f)
        big, small = change_sets(size)
        self.sets = {"big": big, "small": small}
        if have != want or not os.path.exists(src):
            log("creating %d MiB source image and change sets in %s ..." % (size // MiB, self.dir))
            make_source(src, size)
            apply_changes(src, self.p("src_big.img"), big, 3)
            apply_changes(src, self.p("src_small.img"), small, 4)
            with open(meta, "w") as f:
                json.dump(want, f)
        for name, exts in self.sets.items():
            extlib.write_extent_file(self.p("%s.extents" % name), exts, {"capacity": size})
        self.src_sha = sha_file(src) if self.args.check else None
        self.set_sha = dict((n, sha_extents(self.p("src_%s.img" % n), e)) for n, e in self.sets.items()) \
            if self.args.check else {}
        self.bytes = {}
        alloc = int(subprocess.run(["du", "-B1", src], capture_output=True, text=True, check=True).stdout.split()[0])
        log("source: %d MiB virtual, %d MiB allocated; big: %d extents %.1f MiB; small: %d extents %.1f MiB" % (
            size // MiB, alloc // MiB, len(big), extlib.total_bytes(big) / MiB, len(small),
            extlib.total_bytes(small) / MiB))

    def run(self):
        self.setup()
        caches = ["cold", "warm"] if self.args.cache == "both" else [self.args.cache]
        for rep in range(self.args.repeats):
            log("round %d/%d" % (rep + 1, self.args.repeats))
            for cache in caches:
                self.full_sync(cache)
                for setname in ("big", "small"):
                    self.changed(cache, setname)
        self.report(caches)

    def stat(self, case):
        values = self.results.get(case, [])
        return statistics.median(values), min(values), max(values)

    def report(self, caches):
        log("\nworkers=%d request_size=%d, %d rounds, times in seconds (median [min-max]), MB/s from median"
            % (self.workers, self.request_size, self.args.repeats))
        for case in sorted(self.results):
            med, lo, hi = self.stat(case)
            extra = ""
            if case.startswith("changed-"):
                setname = case.split("/")[0].split("-")[1]
                extra = "  %7.0f MB/s of changed data" % (self.bytes[setname] / med / 1e6)
            else:
                extra = "  %7.0f MB/s virtual" % (self.args.size / med / 1e6)
            log("  %-40s %7.3f [%6.3f-%6.3f]%s" % (case, med, lo, hi, extra))
        log("\nratios (targets from issue 4): from the medians; [range over the rounds], rounds that met the target")
        for cache in caches:
            full = "full/%s/" % cache
            self.ratio("full sync %s: block_sync / nbdcopy time" % cache, "<=", 1.0, "%.2f",
                       lambda t: t[full + "ours"] / t[full + "nbdcopy"])
            for setname in ("big", "small"):
                c = "changed-%s/%s/" % (setname, cache)
                label = "changed %-5s %s: " % (setname, cache)
                self.ratio(label + "throughput vs extentlist+nbdcopy, file->file", ">=", 1.2, "%.2fx",
                           lambda t, c=c: t[c + "extentlist_nbdcopy"] / t[c + "ours"])
                self.ratio(label + "throughput vs extentlist+nbdcopy, NBD->file", ">=", 1.2, "%.2fx",
                           lambda t, c=c: t[c + "extentlist_nbdcopy"] / t[c + "ours_nbd_src"])
                self.ratio(label + "throughput vs naive loop", None, None, "%.2fx",
                           lambda t, c=c: t[c + "naive"] / t[c + "ours"])
                self.ratio(label + "time / full-sync time, %", "<=", 15.0, "%.1f",
                           lambda t, c=c: 100 * t[c + "ours"] / t[full + "ours"])
                self.ratio(label + "verification adds, %", "<=", 20.0, "%.1f",
                           lambda t, c=c: 100 * (t[c + "ours_verify"] - t[c + "ours"]) / t[c + "ours"])

    def ratio(self, label, op, target, fmt, fn):
        """One ratio: from the medians, and per round (each round ran every contender back to back)."""
        if self.per_round is None:  # the medians, and each round's times, by case
            self.per_round = [dict((case, self.stat(case)[0]) for case in self.results)] + [
                dict((case, values[i]) for case, values in self.results.items())
                for i in range(min(len(v) for v in self.results.values()))]
        medians = self.per_round[0]
        rounds = [fn(times) for times in self.per_round[1:]]
        text = "  %-70s %8s  [%s-%s]" % (label, fmt % fn(medians), fmt % min(rounds), fmt % max(rounds))
        if op is not None:
            met = sum(1 for r in rounds if (r <= target if op == "<=" else r >= target))
            text += "  target %s %s: %d of %d rounds" % (op, fmt % target, met, len(rounds))
        log(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=lambda s: int(float(s) * MiB), default=2048 * MiB,
                        help="image size in MiB (default 2048)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", choices=["cold", "warm", "both"], default="both")
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "output", "block_sync"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--request-size", type=int, default=4 * MiB)
    parser.add_argument("--check", action="store_true", help="also check every copy's data (slower)")
    args = parser.parse_args()
    for tool in ("nbdcopy", "nbdkit", "nbdinfo"):
        if not shutil.which(tool):
            sys.exit("%s is missing: apt-get install nbdkit libnbd-bin" % tool)
    Bench(args).run()


if __name__ == "__main__":
    main()
