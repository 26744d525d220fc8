# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the block_sync integration tests: images, endpoints of every kind, digests."""

import hashlib
import random

from testbed.nbd import LoopDevice, NbdExport

KiB = 1024
MiB = 1024 * KiB
KINDS = ("file", "block", "nbdkit", "qemu-nbd")


def make_image(path, size, seed=1, layout="dz.d.dzd"):
    """1 MiB granules: d = random data, z = zeros written as data, . = hole."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for index, off in enumerate(range(0, size, MiB)):
            kind = layout[index % len(layout)]
            if kind in "dz":
                f.seek(off)
                f.write(rnd.randbytes(min(MiB, size - off)) if kind == "d" else bytes(min(MiB, size - off)))
    return str(path)


def sha_of(path, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 4 * MiB))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def read_range(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(length)


class Endpoints:
    """Expose image files as file paths, loop devices or NBD URLs; cleans up at the end."""

    def __init__(self):
        self._cleanup = []

    def expose(self, image, kind, readonly=False):
        if kind == "file":
            return image
        if kind == "block":
            loop = LoopDevice(image, read_only=readonly).attach()
            self._cleanup.append(loop.detach)
            return loop.device
        if kind == "nbdkit":
            export = NbdExport.nbdkit(image, transport="unix", readonly=readonly).start()
        elif kind == "qemu-nbd":
            export = NbdExport.qemu_nbd(image, transport="tcp", readonly=readonly).start()
        elif kind == "qemu-nbd-single":  # one client at a time: no multi-conn
            export = NbdExport.qemu_nbd(image, transport="unix", readonly=readonly, shared=1).start()
        else:
            raise ValueError(kind)
        self._cleanup.append(export.stop)
        return export.uri

    def close(self):
        for func in reversed(self._cleanup):
            func()
        self._cleanup = []
