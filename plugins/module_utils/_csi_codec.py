# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Protobuf wire codec for the Kubernetes SnapshotMetadata gRPC API (``snapshotmetadata`` package).

This utility is private to the cbt.toolkit collection.

The API is tiny (two requests, one response shape), so the collection encodes and decodes it by
hand instead of shipping ``protoc`` output: generated ``*_pb2.py`` files pin minimum protobuf and
grpcio runtimes, and this needs neither protobuf nor a code generator, only grpcio's raw
``unary_stream`` calls with bytes.

Wire layout (field numbers from the API's ``schema.proto``)::

    GetMetadataAllocatedRequest: 1 security_token, 2 namespace, 3 snapshot_name,
                                 4 starting_offset (int64), 5 max_results (int32)
    GetMetadataDeltaRequest:     1 security_token, 2 namespace, 3 base_snapshot_id (a base
                                 snapshot *name* for sidecar v0.1.0), 4 target_snapshot_name,
                                 5 starting_offset (int64), 6 max_results (int32)
    Get*Response:                1 block_metadata_type (enum), 2 volume_capacity_bytes (int64),
                                 3 repeated BlockMetadata
    BlockMetadata:               1 byte_offset (int64), 2 size_bytes (int64)

Decoding speed matters (a 1 TiB volume at 4 KiB blocks is 268 million tuples), so responses
have a fast path: when every tuple of a message has the same encoded length (the normal case:
equal sizes, offsets of one magnitude) the tuples form a strided byte array and are decoded
column-wise with C-level slicing and big-integer arithmetic. Anything else (zero offsets,
mixed lengths, unknown fields, other field orders) goes through the general decoder, which is
exact but slower. Both are checked against each other in the unit tests.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct

SERVICE = "snapshotmetadata.SnapshotMetadata"
METHOD_ALLOCATED = "/%s/GetMetadataAllocated" % SERVICE
METHOD_DELTA = "/%s/GetMetadataDelta" % SERVICE

BLOCK_METADATA_TYPES = {0: "UNKNOWN", 1: "FIXED_LENGTH", 2: "VARIABLE_LENGTH"}

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


class DecodeError(ValueError):
    """A response is not a valid SnapshotMetadata message."""


# ---------------------------------------------------------------- encoding

def _varint(value):
    if value < 0:
        value += 1 << 64  # int64/int32 negatives are 10-byte two's complement varints
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_field(number, text):
    if not text:
        return b""
    data = text.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number, value, low, high, name):
    value = int(value)
    if not low <= value <= high:
        raise ValueError("%s %d is out of range" % (name, value))
    if not value:
        return b""
    return _varint(number << 3) + _varint(value)


def encode_allocated_request(security_token, namespace, snapshot_name, starting_offset=0, max_results=0):
    return b"".join((
        _string_field(1, security_token),
        _string_field(2, namespace),
        _string_field(3, snapshot_name),
        _int_field(4, starting_offset, _INT64_MIN, _INT64_MAX, "starting_offset"),
        _int_field(5, max_results, _INT32_MIN, _INT32_MAX, "max_results"),
    ))


def encode_delta_request(security_token, namespace, base_snapshot, target_snapshot_name,
                         starting_offset=0, max_results=0):
    """``base_snapshot`` is the base CSI snapshot handle (sidecar v0.2.0+) or, for sidecar
    v0.1.0, the base VolumeSnapshot name: both travel in field 3."""
    return b"".join((
        _string_field(1, security_token),
        _string_field(2, namespace),
        _string_field(3, base_snapshot),
        _string_field(4, target_snapshot_name),
        _int_field(5, starting_offset, _INT64_MIN, _INT64_MAX, "starting_offset"),
        _int_field(6, max_results, _INT32_MIN, _INT32_MAX, "max_results"),
    ))


# ---------------------------------------------------------------- decoding (general)

def _read_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if shift >= 63 and result >= 1 << 64:
                raise DecodeError("varint longer than 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def _as_int64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _skip(buf, pos, end, wire_type):
    if wire_type == 0:
        return _read_varint(buf, pos, end)[1]
    if wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _read_varint(buf, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    else:
        raise DecodeError("unsupported wire type %d" % wire_type)
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _decode_block(buf, pos, end):
    offset = 0
    size = 0
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 1 and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            offset = _as_int64(value)
        elif number == 2 and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            size = _as_int64(value)
        else:
            pos = _skip(buf, pos, end, wire_type)
    return offset, size


def _decode_general(buf, pos, end, offsets, sizes, header):
    """Decode fields from ``pos``; ``header`` is a 2-item list [type, capacity] updated in place."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 3 and wire_type == 2:
            length, pos = _read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("truncated BlockMetadata")
            offset, size = _decode_block(buf, pos, stop)
            offsets.append(offset)
            sizes.append(size)
            pos = stop
        elif number == 1 and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            header[0] = _as_int64(value)
        elif number == 2 and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            header[1] = _as_int64(value)
        else:
            pos = _skip(buf, pos, end, wire_type)


# ---------------------------------------------------------------- decoding (strided fast path)

_CLEAR_HIGH = bytes(bytearray(b & 0x7F for b in range(256)))
_HIGH_BIT = bytes(bytearray(1 if b & 0x80 else 0 for b in range(256)))
_MASKS = {}


def _masks(count):
    masks = _MASKS.get(count)
    if masks is None:
        def repeat(pattern, width, times):
            return int.from_bytes(pattern.to_bytes(width, "little") * times, "little")
        masks = (repeat(0x007F, 2, 4 * count), repeat(0x3F80, 2, 4 * count),
                 repeat(0x00003FFF, 4, 2 * count), repeat(0x0FFFC000, 4, 2 * count),
                 repeat(0x000000000FFFFFFF, 8, count), repeat(0x00FFFFFFF0000000, 8, count))
        if len(_MASKS) > 256:
            _MASKS.clear()
        _MASKS[count] = masks
    return masks


def _column(region, start, stride, width, count):
    """The ``count`` varints of ``width`` (<= 8) bytes found at ``region[start + i * stride]``."""
    if width == 1:
        return list(bytearray(region[start::stride][:count]))
    packed = bytearray(8 * count)
    for j in range(width):
        packed[j::8] = region[start + j::stride][:count].translate(_CLEAR_HIGH)
    # Each 8-byte lane now holds 7-bit groups in byte order; squeeze out the gaps (SWAR).
    value = int.from_bytes(bytes(packed), "little")
    m1, m2, m3, m4, m5, m6 = _masks(count)
    value = (value & m1) | ((value >> 1) & m2)      # 2 bytes -> 14 bits
    if width > 2:
        value = (value & m3) | ((value >> 2) & m4)  # 4 bytes -> 28 bits
        if width > 4:
            value = (value & m5) | ((value >> 4) & m6)  # 8 bytes -> 56 bits
    return list(struct.unpack("<%dQ" % count, value.to_bytes(8 * count, "little")))


def _decode_strided(region):
    """Decode ``region`` (only field-3 entries, all with the same layout
    ``1a L 08 <offset varint> 10 <size varint>``) or return None when it is not that."""
    size = len(region)
    if size < 6 or region[0] != 0x1A or region[2] != 0x08:
        return None
    length = region[1]
    stride = length + 2
    count, rest = divmod(size, stride)
    if rest or length < 4 or length > 18:
        return None
    off_width = 1
    while off_width < length and region[2 + off_width] & 0x80:
        off_width += 1
    size_width = length - off_width - 2
    if off_width > 8 or not 1 <= size_width <= 8:
        return None
    if (region[0::stride] != b"\x1a" * count
            or region[1::stride] != bytes(bytearray((length,))) * count
            or region[2::stride] != b"\x08" * count
            or region[3 + off_width::stride] != b"\x10" * count):
        return None
    cont = b"\x01" * count
    last = b"\x00" * count
    for j in range(off_width):
        if region[3 + j::stride].translate(_HIGH_BIT) != (cont if j < off_width - 1 else last):
            return None
    for j in range(size_width):
        if region[4 + off_width + j::stride].translate(_HIGH_BIT) != (cont if j < size_width - 1 else last):
            return None
    return (_column(region, 3, stride, off_width, count),
            _column(region, 4 + off_width, stride, size_width, count))


def decode_response(buf):
    """Decode a Get*Response. Returns ``(block_metadata_type, volume_capacity_bytes, offsets, sizes)``
    with ``offsets`` and ``sizes`` as lists of ints (same length)."""
    if not isinstance(buf, (bytes, bytearray)):
        buf = bytes(buf)
    end = len(buf)
    header = [0, 0]
    pos = 0
    # Header fields (normally 1 and 2, in that order) come before the tuples.
    while pos < end and buf[pos] != 0x1A:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number in (1, 2) and wire_type == 0:
            value, pos = _read_varint(buf, pos, end)
            header[number - 1] = _as_int64(value)
        elif number == 3:
            pos -= 1  # a multi-byte key for field 3 is impossible; let the general path complain
            break
        else:
            pos = _skip(buf, pos, end, wire_type)
    if pos >= end:
        return header[0], header[1], [], []
    fast = _decode_strided(buf[pos:])
    if fast is not None:
        return header[0], header[1], fast[0], fast[1]
    offsets = []
    sizes = []
    pos = _decode_runs(buf, pos, end, offsets, sizes)
    if pos < end:
        _decode_general(buf, pos, end, offsets, sizes, header)
    return header[0], header[1], offsets, sizes


_MIN_RUN = 8


def _decode_runs(buf, pos, end, offsets, sizes):
    """Decode the field-3 entries starting at ``pos`` run by run: consecutive tuples of equal encoded
    length go through the strided decoder (mixed varint widths, e.g. VARIABLE_LENGTH sizes or
    offsets crossing a power of 128 inside one message). Returns where it stopped."""
    starts = []
    append = starts.append
    limit = end - 1
    while pos < limit and buf[pos] == 0x1A and buf[pos + 1] < 0x80:
        append(pos)
        pos += buf[pos + 1] + 2
    if pos > end:
        raise DecodeError("truncated BlockMetadata")
    count = len(starts)
    i = 0
    while i < count:
        first = starts[i]
        length = buf[first + 1]
        j = i + 1
        while j < count and buf[starts[j] + 1] == length:
            j += 1
        stop = starts[j] if j < count else pos
        decoded = _decode_strided(buf[first:stop]) if j - i >= _MIN_RUN else None
        if decoded is not None:
            offsets.extend(decoded[0])
            sizes.extend(decoded[1])
        else:
            _decode_general(buf, first, stop, offsets, sizes, [0, 0])
        i = j
    return pos


def decode_response_general(buf):
    """The general decoder alone (for tests and as a reference)."""
    header = [0, 0]
    offsets = []
    sizes = []
    _decode_general(buf, 0, len(buf), offsets, sizes, header)
    return header[0], header[1], offsets, sizes
