# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the extent file of csi_snapshot_diff says it covers: ``coverage=changed`` for a delta,
``coverage=allocated`` for allocated blocks (also the fallback for an unusable base), and
``starting_offset=N`` for a listing that did not start at 0. ``call=...`` stays as it was."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import coverage_of, read_extent_file
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_k8s import (
    FlowDiscovery,
    flow_params,
    snap_info,
    use_flow,
)
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_stream import message

CAPACITY = 1 << 20
TUPLES = [(0, 4096), (65536, 8192), (524288, 4096)]


class FakeTransport:
    """Serves TUPLES from the request's starting offset (field 4 of Allocated, 5 of Delta, varints)."""

    def __init__(self):
        self.calls = []

    def open_stream(self, method, request):
        self.calls.append(method)
        start = _starting_offset(request, 5 if method == _csi_diff.METHOD_DELTA else 4)
        yield message(2, CAPACITY, [t for t in TUPLES if t[0] + t[1] > start])

    def close(self):
        pass


def _starting_offset(request, field):
    pos = 0
    while pos < len(request):
        key, pos = _varint(request, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(request, pos)
            if number == field:
                return value
        else:
            length, pos = _varint(request, pos)
            pos += length
    return 0


def _varint(data, pos):
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def run_to_file(monkeypatch, tmp_path, snapshots, **params):
    use_flow(monkeypatch, FlowDiscovery(snapshots))
    transport = FakeTransport()
    out = tmp_path / "list.extents"
    result = _csi_diff.run(flow_params(transport="direct", output_file=str(out), **params), None,
                           transport_factory=lambda *a: transport)
    meta, extents = read_extent_file(str(out))
    return result, meta, extents, transport


def test_unusable_base_with_allocated_fallback_is_a_full_copy_list(monkeypatch, tmp_path):
    # the base VolumeSnapshot does not exist: on_base_unusable=allocated lists the allocated blocks
    result, meta, extents, transport = run_to_file(monkeypatch, tmp_path, {"tue": snap_info("tue")},
                                                   snapshot="tue", base_snapshot="mon", on_base_unusable="allocated")
    assert result["full_sync_required"] is True and result["call"] == "allocated"
    assert transport.calls == [_csi_diff.METHOD_ALLOCATED]
    assert meta["coverage"] == "allocated" and meta["call"] == "allocated"
    assert "starting_offset" not in meta
    assert coverage_of(meta) == ("allocated", 0, "coverage=allocated")
    assert extents == TUPLES


def test_allocated_listing_says_allocated(monkeypatch, tmp_path):
    _result, meta, _extents, _t = run_to_file(monkeypatch, tmp_path, {"tue": snap_info("tue")}, snapshot="tue")
    assert meta["coverage"] == "allocated" and meta["call"] == "allocated"


def test_delta_says_changed(monkeypatch, tmp_path):
    snaps = {"mon": snap_info("mon"), "tue": snap_info("tue")}
    result, meta, extents, transport = run_to_file(monkeypatch, tmp_path, snaps, snapshot="tue", base_snapshot="mon",
                                                   base_snapshot_mode="handle")
    assert result["call"] == "delta" and transport.calls == [_csi_diff.METHOD_DELTA]
    assert meta["coverage"] == "changed" and meta["call"] == "delta"
    assert coverage_of(meta) == ("changed", 0, "coverage=changed")
    assert extents == TUPLES


@pytest.mark.parametrize("base", [None, "mon"])
def test_starting_offset_is_recorded(monkeypatch, tmp_path, base):
    snaps = {"mon": snap_info("mon"), "tue": snap_info("tue")}
    extra = {"base_snapshot": base, "base_snapshot_mode": "handle"} if base else {}
    result, meta, extents, _t = run_to_file(monkeypatch, tmp_path, snaps, snapshot="tue", starting_offset=65536,
                                            **extra)
    assert meta["starting_offset"] == "65536"
    assert coverage_of(meta)[:2] == ("changed" if base else "allocated", 65536)
    assert extents == TUPLES[1:] and result["starting_offset"] == 65536
