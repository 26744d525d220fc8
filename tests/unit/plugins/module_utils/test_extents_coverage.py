# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an extent list covers (``coverage``, ``starting_offset`` metadata) and the VMware writer's marks."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_changes as vc
from ansible_collections.cbt.toolkit.plugins.module_utils import extents as ex
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import FullSyncRequired

MiB = 1024 * 1024
CHANGE_ID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81"


@pytest.mark.parametrize("metadata,expected", [
    ({}, ("changed", 0, None)),
    ({"coverage": "changed"}, ("changed", 0, "coverage=changed")),
    ({"coverage": "allocated"}, ("allocated", 0, "coverage=allocated")),
    ({"call": "allocated"}, ("allocated", 0, "call=allocated")),
    ({"call": "GetMetadataDelta"}, ("changed", 0, None)),
    ({"change_id": "*"}, ("allocated", 0, "change_id=*")),
    ({"change_id": CHANGE_ID}, ("changed", 0, None)),
    ({"coverage": "changed", "change_id": "*"}, ("changed", 0, "coverage=changed")),
    ({"coverage": "allocated", "starting_offset": "4096"}, ("allocated", 4096, "coverage=allocated")),
    ({"starting_offset": "0"}, ("changed", 0, None)),
])
def test_coverage_of_metadata(metadata, expected):
    assert ex.coverage_of(metadata) == expected


@pytest.mark.parametrize("metadata,needle", [
    ({"coverage": "some"}, "coverage=some"),
    ({"starting_offset": "x"}, "starting_offset=x"),
    ({"starting_offset": "-1"}, "negative"),
])
def test_coverage_of_rejects_unknown_values(metadata, needle):
    with pytest.raises(ex.ExtentError) as err:
        ex.coverage_of(metadata, name="extent_file /x")
    assert needle in str(err.value) and "/x" in str(err.value)


class FakeClient(object):
    hostname = "vc.example.com"


def _query(tmp_path, monkeypatch, change_id, areas=None, full=None):
    disk = {"key": 2000, "label": "Hard disk 1", "file": "[ds] vm/vm.vmdk", "capacity_bytes": 8 * MiB,
            "backing": "flat", "disk_mode": "persistent", "eligible": True, "reason": None,
            "change_id": "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/90"}

    def changed_areas(client, vm, ref, key, capacity, change_id, what):
        if full is not None:
            raise FullSyncRequired(full)
        yield 0, capacity, areas or []

    monkeypatch.setattr(vc, "iter_changed_areas", changed_areas)
    monkeypatch.setattr(vc, "check_change_id_lineage", lambda change_id, disk, text: None)
    path = str(tmp_path / "disk.extents")
    requests = vc.parse_requests([{"key": 2000, "change_id": change_id, "extent_file": path}], 0, 0)
    snap = {"name": "s1", "moid": "snapshot-1", "ref": object()}
    facts = {"instance_uuid": "5011", "moid": "vm-1", "name": "vm1"}
    warnings = []
    results, _seconds = vc.query_changes(FakeClient(), object(), "vm1", facts, snap, [disk], [disk], requests, 0, 0,
                                         warnings.append)
    return ex.read_extent_file(results[0]["extent_file"]), results[0]


def test_vmware_allocated_query_is_marked_allocated(tmp_path, monkeypatch):
    (metadata, extents), _result = _query(tmp_path, monkeypatch, "*", areas=[(0, MiB)])
    assert metadata["coverage"] == "allocated" and extents == [(0, MiB)]
    assert ex.coverage_of(metadata)[0] == "allocated"


def test_vmware_delta_is_marked_changed(tmp_path, monkeypatch):
    (metadata, extents), _result = _query(tmp_path, monkeypatch, CHANGE_ID, areas=[(MiB, 4096)])
    assert metadata["coverage"] == "changed" and extents == [(MiB, 4096)]


def test_vmware_full_sync_listing_is_marked_allocated(tmp_path, monkeypatch):
    (metadata, extents), result = _query(tmp_path, monkeypatch, CHANGE_ID, full="CBT was reset")
    assert result["full_sync_required"] is True
    assert metadata["coverage"] == "allocated" and metadata["full_sync_required"] == "true"
    assert extents == [(0, 8 * MiB)]
