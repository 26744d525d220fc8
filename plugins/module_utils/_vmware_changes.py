# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changed areas of one or more disks of a VM at a snapshot, in one vSphere session.

The requests are checked before anything is asked (changeId format, repeated disks or files),
the disks before the first query (present at the snapshot, trackable by CBT), and the extent
files appear only once every disk's query has succeeded: a failed call leaves none of them.
A disk whose changes are unknown (reset CBT, a query fault vSphere documents as "copy
everything") is not a failure: its result says ``full_sync_required`` with the reason and its
extents cover the whole disk.

Used by vmware_cbt_changes and by vmware_migration_snapshot (``changes``).

This utility is private to the cbt.toolkit collection; its interface may change at any time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import fault_name
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_cbt import (
    CbtError,
    ExtentCollector,
    FullSyncRequired,
    check_change_id_lineage,
    iter_changed_areas,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import ChangeIdError, parse_change_id
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import (
    COVERAGE_ALLOCATED,
    COVERAGE_CHANGED,
    ExtentFileWriter,
    publish_all,
)

DISK_KEYS = ("key", "label", "file", "capacity_bytes", "backing", "disk_mode", "eligible", "reason", "change_id")

# the options of one disk request, shared by the modules' argument specs
DISK_REQUEST_OPTIONS = dict(
    key=dict(type="int", required=True, no_log=False),
    change_id=dict(type="str", required=True),
    extent_file=dict(type="path"),
)


class ChangeRequest(object):
    __slots__ = ("key", "change_id", "extent_file")

    def __init__(self, key, change_id, extent_file):
        self.key = key
        self.change_id = change_id
        self.extent_file = extent_file


def _invalid(msg):
    return CbtError(msg, kind="invalid_argument")


def parse_requests(entries, coalesce_gap, max_results, what="disks"):
    """``entries``: dicts with key, change_id, extent_file; ``what``: the option that lists them
    (None for the single-disk options). Returns ChangeRequest objects; raises
    CbtError(kind=invalid_argument) on bad input."""
    if coalesce_gap < 0:
        raise _invalid("coalesce_gap must not be negative, got %d" % coalesce_gap)
    if max_results < 0:
        raise _invalid("max_results must not be negative, got %d" % max_results)
    if not entries:
        raise _invalid("%s must name at least one disk" % what)
    requests = []
    for i, entry in enumerate(entries):
        key, change_id, extent_file = entry["key"], entry["change_id"], entry.get("extent_file")
        label = "change_id" if what is None else "%s[%d].change_id (disk %d)" % (what, i, key)
        change_id = (change_id or "").strip()
        if change_id != "*":
            try:
                parse_change_id(change_id)
            except ChangeIdError as exc:
                raise _invalid("%s: %s" % (label, exc))
        if extent_file:
            if os.path.isdir(extent_file):
                raise _invalid("extent file %s of disk %d is a folder; give the path of a file in it" % (extent_file, key))
            folder = os.path.dirname(os.path.abspath(extent_file))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
                raise _invalid("extent file %s of disk %d: folder %s %s; create it or choose another path"
                               % (extent_file, key, folder,
                                  "is not writable" if os.path.isdir(folder) else "does not exist"))
        requests.append(ChangeRequest(key, change_id, extent_file))
    for field, values in (("key", [r.key for r in requests]),
                          ("extent_file", [r.extent_file for r in requests if r.extent_file])):
        repeated = sorted(set(v for v in values if values.count(v) > 1), key=str)
        if repeated:
            raise _invalid("%s: each %s may appear once; repeated: %s (list each disk once, with an extent file of "
                           "its own)" % (what, field, ", ".join(str(v) for v in repeated)))
    return requests


def pick_disk(key, disks, live, vm_text, where):
    """The disk ``key`` in ``disks`` (``where``: "at snapshot 'x' (snapshot-1)", "in its current
    configuration"); an error for a disk CBT cannot track (looked up in ``live`` too: an
    independent disk is not in a snapshot) or one that is not there."""
    disk = [d for d in disks if d["key"] == key]
    found = (disk or [d for d in live if d["key"] == key] or [None])[0]
    if found is not None and not found["eligible"]:
        raise CbtError("disk %d '%s' (%s) of VM %s cannot be tracked by CBT (%s); snapshots do not capture it either, "
                       "so its changes cannot be queried: copy it another way"
                       % (found["key"], found["label"], found["file"], vm_text, found["reason"]), kind="unsupported")
    if not disk:
        raise CbtError("VM %s has no disk with key %d %s; disks: %s"
                       % (vm_text, key, where,
                          ", ".join("%d (%s, %s)" % (d["key"], d["label"], d["file"]) for d in disks) or "none"),
                       kind="not_found")
    return disk[0]


def _query_disk(client, vm, source, snap, snap_text, vm_text, disk, request, coalesce_gap, max_results, warn):
    """One disk's changed areas; returns its result and its extent file writer (not yet closed)."""
    capacity = disk["capacity_bytes"]
    change_id = request.change_id
    result = dict(key=disk["key"], disk=dict((k, disk.get(k)) for k in DISK_KEYS), capacity=capacity,
                  change_id=change_id, snapshot_change_id=disk["change_id"], full_sync_required=False, reason=None,
                  pages=0, extent_file=None)
    metadata = {
        "capacity": capacity,
        "source": "%s/disk-%d@%s" % (source["source"], disk["key"], snap["moid"]),
        "change_id": change_id,
        "snapshot_change_id": disk["change_id"],
        "disk_key": disk["key"],
        "vm": source["vm"],
        "vm_instance_uuid": source["vm_instance_uuid"],
        "snapshot": snap["moid"],
        # change id "*" asks for the allocated areas: all the data of the disk, not a delta
        "coverage": COVERAGE_ALLOCATED if change_id == "*" else COVERAGE_CHANGED,
    }
    writer = None
    try:
        if request.extent_file:
            writer = ExtentFileWriter(request.extent_file, metadata=dict(metadata, full_sync_required="false"))
        collector = ExtentCollector(capacity, gap=coalesce_gap, max_results=max_results,
                                    sink=writer.add if writer else None)
        check_change_id_lineage(change_id, disk, snap_text)
        what = "querying the changed areas of disk %d of VM %s at snapshot %s" % (disk["key"], vm_text, snap_text)
        for _start, _length, areas in iter_changed_areas(client, vm, snap["ref"], disk["key"], capacity, change_id,
                                                         what):
            result["pages"] += 1
            for area_start, area_length in areas:
                collector.add(area_start, area_length)
        collector.finish()
    except FullSyncRequired as full:
        if writer is not None:
            writer.abort()
            writer = ExtentFileWriter(request.extent_file, metadata=dict(metadata, full_sync_required="true",
                                                                         reason=full.reason, coverage=COVERAGE_ALLOCATED))
        collector = ExtentCollector(capacity, max_results=max_results, sink=writer.add if writer else None)
        collector.add(0, capacity)
        collector.finish()
        result.update(full_sync_required=True, reason=full.reason)
        if full.fault is not None:
            result["fault"] = fault_name(full.fault)
        warn("full copy required for disk %d of VM %s: %s" % (disk["key"], vm_text, full.reason))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result.update(extents=collector.kept, count=collector.count, changed_bytes=collector.bytes,
                  extents_truncated=collector.count > len(collector.kept))
    return result, writer


def query_changes(client, vm, vm_text, facts, snap, snap_disks, live_disks, requests, coalesce_gap, max_results,
                  warn):
    """Changed areas of every requested disk at ``snap`` (a read_snapshots entry): one result per
    request, in order, and the seconds the queries took. ``snap_disks``: describe_disks of the
    snapshot; ``live_disks``: of the VM now. ``warn(text)`` gets one warning per disk that needs a
    full copy."""
    began = time.monotonic()
    snap_text = "'%s' (%s)" % (snap["name"], snap["moid"])
    picked = [pick_disk(r.key, snap_disks, live_disks, vm_text, "at snapshot %s" % snap_text) for r in requests]
    source = {
        "source": "vmware://%s/%s" % (client.hostname, facts["instance_uuid"] or facts["moid"]),
        "vm": facts["name"],
        "vm_instance_uuid": facts["instance_uuid"],
        "snapshot": snap["moid"],
    }
    results, writers = [], []
    try:
        for disk, request in zip(picked, requests):
            result, writer = _query_disk(client, vm, source, snap, snap_text, vm_text, disk, request, coalesce_gap,
                                         max_results, warn)
            results.append(result)
            writers.append(writer)
    except BaseException:
        for writer in writers:
            if writer is not None:
                writer.abort()
        raise
    # every query succeeded: the extent files appear now, all of them or none
    files = [(result, writer) for result, writer in zip(results, writers) if writer is not None]
    try:
        published = publish_all([writer for _result, writer in files])
    except OSError as exc:
        raise CbtError("writing the extent file %s failed: %s; no extent file of this call was kept. Free space "
                       "there or choose another path, then run again" % (exc.filename, exc.strerror or exc),
                       kind="extent_file_failed")
    for (result, _writer), done in zip(files, published):
        result["extent_file"] = done["path"]
    return results, round(time.monotonic() - began, 3)


def summary(results, seconds):
    """The multi-disk result: every disk's result, whether any needs a full copy, the bytes, the time."""
    return dict(disks=results, full_sync_required=any(r["full_sync_required"] for r in results),
                changed_bytes=sum(r["changed_bytes"] for r in results), query_seconds=seconds)
