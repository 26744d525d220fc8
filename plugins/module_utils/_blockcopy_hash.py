# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksums for ``block_sync`` verification: xxh3-128 (PyPI xxhash), BLAKE3 (PyPI blake3), or
SHA-256 from hashlib. Only the library of the chosen algorithm is needed.

Digests are block based (like blkhash): a range is cut into fixed pieces, each piece is hashed,
and the digest of the range is the hash of the concatenated piece digests. Zero pieces use a
cached digest, so holes cost nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import traceback

try:
    import xxhash
    XXHASH_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the host
    xxhash = None
    XXHASH_IMPORT_ERROR = traceback.format_exc()

try:
    import blake3
    BLAKE3_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the host
    blake3 = None
    BLAKE3_IMPORT_ERROR = traceback.format_exc()

ALGORITHMS = ("xxh3", "blake3", "sha256")
# name -> (python library, pip package, distribution package hint)
LIBRARIES = {
    "xxh3": ("xxhash", "xxhash", "python3-xxhash"),
    "blake3": ("blake3", "blake3", "python3-blake3"),
}


class MissingHashLibrary(Exception):
    def __init__(self, algorithm):
        self.algorithm = algorithm
        self.library = LIBRARIES[algorithm][1]
        self.traceback = XXHASH_IMPORT_ERROR if algorithm == "xxh3" else BLAKE3_IMPORT_ERROR
        Exception.__init__(self, "checksum_algorithm %s needs the Python library %s" % (algorithm, self.library))


def hasher_factory(algorithm):
    """A callable returning a fresh hash object (``update``/``digest``/``hexdigest``)."""
    if algorithm == "xxh3":
        if xxhash is None:
            raise MissingHashLibrary(algorithm)
        return xxhash.xxh3_128
    if algorithm == "blake3":
        if blake3 is None:
            raise MissingHashLibrary(algorithm)
        return blake3.blake3
    if algorithm == "sha256":
        return hashlib.sha256
    raise ValueError("unknown checksum algorithm %r; choose one of %s" % (algorithm, ", ".join(ALGORITHMS)))


def digest_size(algorithm):
    return len(hasher_factory(algorithm)().digest())


class PieceHasher(object):
    """Hash pieces; all-zero pieces hit a per-length cache."""

    def __init__(self, algorithm):
        self.algorithm = algorithm
        self.new = hasher_factory(algorithm)
        self.size = len(self.new().digest())
        self._zero = {}

    def piece(self, data):
        h = self.new()
        h.update(data)
        return h.digest()

    def zero_piece(self, length):
        digest = self._zero.get(length)
        if digest is None:
            h = self.new()
            chunk = bytes(min(length, 4 * 1024 * 1024))
            left = length
            while left > 0:
                step = min(left, len(chunk))
                h.update(chunk[:step] if step < len(chunk) else chunk)
                left -= step
            digest = h.digest()
            self._zero[length] = digest
        return digest

    def combine(self, digests):
        h = self.new()
        h.update(digests)
        return h.hexdigest()
