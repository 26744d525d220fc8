# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resumed streams of csi_snapshot_diff: a driver that returns nothing from a non-zero offset (ceph-csi
before its fix) does not truncate the listing, and the resume floor holds over header-only messages."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_stream as st
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_stream import Server, message, run, volume


class EmptyFromOffset(Server):
    """A driver that lists nothing whenever starting_offset > 0 (one empty message, then OK)."""

    def _gen(self, start, cut):
        if start > 0:
            yield message(self.block_type, self.capacity, [])
            return
        yield from Server._gen(self, start, cut)


def test_resumed_stream_that_returns_nothing_is_read_again_from_zero():
    tuples, cap = volume(count=120, seed=5)
    server = EmptyFromOffset(tuples, cap, per=10, cuts=[(3, "UNAVAILABLE", "stream cut")])
    runner, sink = run(server)
    assert sink.kept == tuples, "the listing stopped at the cut"
    offsets = [offset for _token, offset in server.requests]
    assert offsets == [0, tuples[29][0] + tuples[29][1], 0]
    assert runner.rereads_at == [offsets[1]]
    assert runner.summary()["rereads_from_zero"] == 1
    assert runner.validator.dropped == 30


def test_user_starting_offset_with_a_driver_that_returns_nothing_from_it():
    tuples, cap = volume(count=80, seed=7, fixed=False)
    start = tuples[40][0] + 1  # inside tuple 40: it is clipped to start there
    server = EmptyFromOffset(tuples, cap, block_type=2, per=9)
    runner, sink = run(server, start=start)
    expected = [(start, tuples[40][0] + tuples[40][1] - start)] + tuples[41:]
    assert sink.kept == expected
    assert [offset for _token, offset in server.requests] == [start, 0]


def test_nothing_left_after_the_offset_is_a_normal_end():
    """A correct driver with no blocks after the offset: read again from 0, nothing new, no error."""
    tuples, cap = volume(count=40, seed=2)
    start = tuples[-1][0] + tuples[-1][1] + 4096
    assert start < cap
    runner, sink = run(Server(tuples, cap, per=8), start=start)
    assert sink.kept == [] and runner.rereads_at == [start]


def test_resume_at_the_capacity_is_not_read_again():
    tuples = [(0, 4096), (4096, 4096)]
    server = Server(tuples, 8192, per=2, cuts=[(1, "UNAVAILABLE", "gone")])
    runner, sink = run(server)
    assert sink.kept == tuples and len(server.requests) == 1 and runner.rereads_at == []


def test_driver_that_returns_nothing_even_from_zero_fails_clearly():
    tuples, cap = volume(count=50, seed=9)

    class Vanishing(Server):
        def _gen(self, start, cut):
            if len(self.requests) > 1:
                yield message(self.block_type, self.capacity, [])
                return
            yield from Server._gen(self, start, cut)
    server = Vanishing(tuples, cap, per=10, cuts=[(2, "UNAVAILABLE", "stream cut")])
    with pytest.raises(st.SnapshotMetadataError) as err:
        run(server)
    msg = err.value.msg
    resumed_at = tuples[19][0] + tuples[19][1]
    assert msg.startswith("GetMetadataAllocated for VolumeSnapshot ns/s: the CSI driver returned no blocks from "
                          "starting_offset %d (volume capacity %d bytes) and reading again from offset 0 returned no "
                          "blocks either" % (resumed_at, cap)), msg
    assert "ceph-csi" in msg and "Run the task again" in msg and "upgrade the CSI driver" in msg


def test_floor_holds_over_a_header_only_first_message():
    """The resumed stream starts with a message without tuples, then a tuple straddling the resume point."""
    first = [(0, 4096), (8192, 4096)]

    class HeaderFirst(Server):
        def _gen(self, start, cut):
            if start == 0:
                yield message(2, 65536, first)
                raise st.StreamFailure("UNAVAILABLE", "stream cut")
            assert start == 12288
            yield message(2, 65536, [])
            yield message(2, 65536, [(8192, 8192), (20480, 4096)])
    runner, sink = run(HeaderFirst([], 65536, block_type=2))
    assert sink.kept == first + [(12288, 4096), (20480, 4096)]
    assert runner.validator.clipped == 1


def test_floor_holds_over_a_message_whose_tuples_were_all_dropped():
    first = [(0, 4096), (8192, 4096), (16384, 4096)]

    class Repeats(Server):
        def _gen(self, start, cut):
            if start == 0:
                yield message(2, 65536, first)
                raise st.StreamFailure("UNAVAILABLE", "stream cut")
            yield message(2, 65536, [(0, 4096)])             # repeated, dropped
            yield message(2, 65536, [(8192, 4096), (16384, 8192)])  # repeated, then straddling
    runner, sink = run(Repeats([], 65536, block_type=2))
    assert sink.kept == first + [(20480, 4096)]
    assert runner.validator.dropped == 2 and runner.validator.clipped == 1
