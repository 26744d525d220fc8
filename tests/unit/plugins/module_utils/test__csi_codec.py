# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hand-written SnapshotMetadata protobuf codec: requests byte for byte, responses through both
the strided fast path and the general decoder, compared with an independent encoder."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_codec as codec
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.pb_writer import pb_varint


# Fields and messages, built on the independent protobuf writer (not the module's code).
def pb_field(number, wire, payload):
    key = pb_varint(number << 3 | wire)
    if wire == 2:
        return key + pb_varint(len(payload)) + payload
    return key + payload


def pb_tuple(offset, size, extra=b""):
    body = b""
    if offset:
        body += pb_field(1, 0, pb_varint(offset))
    if size:
        body += pb_field(2, 0, pb_varint(size))
    return pb_field(3, 2, body + extra)


def pb_response(block_type, capacity, tuples, order="normal"):
    head = b""
    if block_type:
        head += pb_field(1, 0, pb_varint(block_type))
    if capacity:
        head += pb_field(2, 0, pb_varint(capacity))
    body = b"".join(pb_tuple(o, s) for o, s in tuples)
    return body + head if order == "header_last" else head + body


def test_allocated_request_bytes():
    data = codec.encode_allocated_request("tok", "ns1", "snap", 4096, 128)
    assert data == (pb_field(1, 2, b"tok") + pb_field(2, 2, b"ns1") + pb_field(3, 2, b"snap")
                    + pb_field(4, 0, pb_varint(4096)) + pb_field(5, 0, pb_varint(128)))


def test_delta_request_bytes_and_zero_defaults():
    data = codec.encode_delta_request("tok", "ns1", "base-handle", "target", 0, 0)
    # proto3: zero starting_offset / max_results are not on the wire
    assert data == (pb_field(1, 2, b"tok") + pb_field(2, 2, b"ns1") + pb_field(3, 2, b"base-handle")
                    + pb_field(4, 2, b"target"))
    data = codec.encode_delta_request("t", "n", "b", "x", 1 << 40, 7)
    assert data.endswith(pb_field(5, 0, pb_varint(1 << 40)) + pb_field(6, 0, pb_varint(7)))


def test_request_unicode_and_range_checks():
    data = codec.encode_allocated_request("t", "n", "snäp")
    assert pb_field(3, 2, "snäp".encode("utf-8")) in data
    with pytest.raises(ValueError):
        codec.encode_allocated_request("t", "n", "s", 0, 1 << 31)
    with pytest.raises(ValueError):
        codec.encode_delta_request("t", "n", "b", "s", 1 << 63, 0)


@pytest.mark.parametrize("tuples", [
    [(4096 * i, 4096) for i in range(1, 257)],                       # fixed, aligned
    [(1 << 40 + i % 3, 4 << 20) for i in range(3)],                  # sorted? (values only matter here)
    [(0, 4096), (8192, 4096)],                                       # offset 0: field omitted
    [(5, 1), (6, 1), (127, 1), (128, 1)],                            # one-byte varints, mixed widths
    [(i * (4 << 20), 4 << 20) for i in range(300)],                  # VARIABLE_LENGTH object-sized
    [],
])
def test_decode_matches_general_and_input(tuples):
    msg = pb_response(2, 1 << 41, tuples)
    fast = codec.decode_response(msg)
    slow = codec.decode_response_general(msg)
    assert fast == slow
    assert fast[0] == 2 and fast[1] == 1 << 41
    assert list(zip(fast[2], fast[3])) == list(tuples)


def test_decode_random_fuzz_against_general():
    rng = random.Random(1234)
    for _trial in range(3000):
        count = rng.randint(0, 60)
        magnitude = rng.choice((7, 14, 21, 28, 35, 42, 49, 56, 62))
        offsets = sorted(rng.sample(range(0, 1 << magnitude), min(count, (1 << magnitude) - 1)))
        sizes = [rng.choice((1, 4096, 65536, 4 << 20, rng.randint(1, 1 << 40))) for _off in offsets]
        tuples = list(zip(offsets, sizes))
        msg = pb_response(rng.choice((0, 1, 2)), rng.randint(0, 1 << 50), tuples,
                          order=rng.choice(("normal", "header_last")))
        result = codec.decode_response(msg)
        assert result == codec.decode_response_general(msg)
        assert list(zip(result[2], result[3])) == tuples


def test_fast_path_is_taken_for_uniform_messages(monkeypatch):
    calls = []
    original = codec._decode_strided

    def spy(region):
        out = original(region)
        calls.append(out is not None)
        return out
    monkeypatch.setattr(codec, "_decode_strided", spy)
    codec.decode_response(pb_response(1, 1 << 30, [(4096 * i, 4096) for i in range(64, 200)]))
    assert calls == [True]
    # offsets crossing 2**21 change the varint width: two uniform runs, each strided
    del calls[:]
    codec.decode_response(pb_response(1, 1 << 30, [((1 << 21) + 4096 * i, 4096) for i in range(-100, 100)]))
    assert calls == [False, True, True]


def test_unknown_fields_are_skipped():
    body = pb_tuple(4096, 512, extra=pb_field(9, 2, b"xyz") + pb_field(10, 0, pb_varint(5)))
    msg = pb_field(1, 0, b"\x01") + pb_field(7, 5, b"\x00\x00\x00\x00") + pb_field(2, 0, pb_varint(1 << 20)) + body
    msg += pb_field(8, 1, b"\x00" * 8)
    assert codec.decode_response(msg) == (1, 1 << 20, [4096], [512])


def test_negative_values_decode_as_int64():
    msg = pb_field(2, 0, pb_varint(1 << 20)) + pb_field(3, 2, pb_field(1, 0, pb_varint(-4096)) + pb_field(2, 0, pb_varint(1)))
    assert codec.decode_response(msg) == (0, 1 << 20, [-4096], [1])


@pytest.mark.parametrize("data", [
    b"\x1a\x05\x08\x80",             # truncated tuple
    b"\x10\x80\x80",                 # truncated varint
    b"\x1a\x02\x08",                 # varint runs past the tuple
    b"\x0b",                         # wire type 3 (groups) is not supported
    b"\x10" + b"\xff" * 11,          # varint too long
])
def test_malformed_messages_raise(data):
    with pytest.raises(codec.DecodeError):
        codec.decode_response(data)


def test_strided_never_disagrees_with_general_on_mutations():
    region = b"".join(pb_tuple(4096 * i, 4096) for i in range(100, 110))
    assert codec._decode_strided(region) is not None
    accepted = 0
    for pos in range(len(region)):
        for bit in (0x01, 0x10, 0x80):
            mutated = bytearray(region)
            mutated[pos] ^= bit
            out = codec._decode_strided(bytes(mutated))
            if out is None:
                continue
            accepted += 1
            general = codec.decode_response_general(bytes(mutated))
            assert (general[2], general[3]) == out
    assert accepted > 0  # value-only mutations keep the layout and must still decode identically
