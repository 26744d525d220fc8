# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the shared extent format and arithmetic (plugins/module_utils/extents.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import random

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import extents as ex


def test_parse_accepts_every_documented_form():
    items = [{"offset": 1, "length": 2}, {"start": 3, "length": 4}, {"byte_offset": 5, "size_bytes": 6},
             [7, 8], (9, 10), "11:12", "13 14", {"offset": "15", "length": 16.0}]
    assert ex.parse_extents(items) == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


@pytest.mark.parametrize("item", [{"offset": 1}, "1:2:3", 5, [1], {"offset": 1.5, "length": 2},
                                  {"offset": True, "length": 2}, {"offset": "x", "length": 1}])
def test_parse_rejects_garbage_naming_the_item(item):
    with pytest.raises(ex.ExtentError) as err:
        ex.parse_extents([[0, 1], item])
    assert "extents[1]" in str(err.value)


def test_normalize_sorts_merges_and_drops_empty():
    assert ex.normalize([(10, 5), (0, 5), (5, 5), (12, 10), (30, 0)]) == [(0, 22)]
    assert ex.normalize([(0, 4), (8, 4)]) == [(0, 4), (8, 4)]


def test_normalize_rejects_as_asked():
    with pytest.raises(ex.ExtentError, match="not sorted"):
        ex.normalize([(5, 1), (0, 1)], unsorted="reject")
    with pytest.raises(ex.ExtentError, match="overlaps"):
        ex.normalize([(0, 5), (4, 1)], overlapping="reject")
    with pytest.raises(ex.ExtentError, match="beyond the size 10"):
        ex.normalize([(8, 4)], capacity=10)
    with pytest.raises(ex.ExtentError, match="negative"):
        ex.normalize([(-1, 4)])


def test_coalesce_split_total():
    assert ex.coalesce([(0, 4), (6, 4), (20, 1)], gap=2) == [(0, 10), (20, 1)]
    assert list(ex.split([(0, 10)], 4)) == [(0, 4), (4, 4), (8, 2)]
    assert ex.total_bytes([(0, 4), (10, 6)]) == 10
    with pytest.raises(ex.ExtentError):
        list(ex.split([(0, 1)], 0))


def test_subtract_matches_a_brute_force_model():
    rnd = random.Random(7)
    for _round in range(200):
        def ranges():
            pts = sorted(rnd.sample(range(200), rnd.randrange(0, 12) * 2))
            return [(pts[i], pts[i + 1] - pts[i]) for i in range(0, len(pts), 2)]
        a, b = ranges(), ranges()
        want = set(x for o, n in a for x in range(o, o + n)) - set(x for o, n in b for x in range(o, o + n))
        got = ex.subtract(a, b)
        assert set(x for o, n in got for x in range(o, o + n)) == want
        assert got == sorted(got)


def test_file_roundtrip_is_atomic_and_keeps_metadata(tmp_path):
    path = str(tmp_path / "c.extents")
    info = ex.write_extent_file(path, [(0, 4096), (8192, 512)], {"capacity": 1 << 20, "source": "a b", "none": None})
    assert info == {"path": path, "count": 2, "bytes": 4608}
    meta, extents = ex.read_extent_file(path)
    assert meta == {"capacity": 1 << 20, "source": "a b"} and extents == [(0, 4096), (8192, 512)]
    assert open(path).readline().strip() == ex.FORMAT_HEADER
    with pytest.raises(ex.ExtentError):
        with ex.ExtentFileWriter(path) as writer:
            writer.add(10, 1)
            writer.add(5, 1)
    assert ex.read_extent_file(path)[1] == [(0, 4096), (8192, 512)]  # the old file is untouched
    assert [n for n in os.listdir(str(tmp_path)) if n.startswith(".")] == []


def test_read_rejects_bad_lines(tmp_path):
    path = tmp_path / "bad.extents"
    path.write_text("0 10\nzero ten\n")
    with pytest.raises(ex.ExtentError, match="line 2"):
        ex.read_extent_file(str(path))
    path.write_text("# capacity=lots\n0 1\n")
    with pytest.raises(ex.ExtentError, match="capacity"):
        ex.read_extent_file(str(path))
