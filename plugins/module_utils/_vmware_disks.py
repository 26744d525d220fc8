# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Virtual disks: description, CBT eligibility and changeId parsing.

This utility is private to the cbt.toolkit collection; its interface may change at any time.

VMware's rules (KB 1020128, VDDK "Enable Changed Block Tracking"): independent disks
(persistent or non-persistent), physical-compatibility RDMs and Ver1 backings cannot be
tracked; FlatVer2, SparseVer2, SeSparse, virtual-compatibility RDMs and RawDiskVer2 can.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import vim

# "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81": 16 hex bytes, spaces or dashes, "/", sequence.
_CHANGE_ID_RE = re.compile(r"^\s*((?:[0-9A-Fa-f]{2}[ \-]?){15}[0-9A-Fa-f]{2})\s*/\s*(\d+)\s*$")


class ChangeIdError(ValueError):
    pass


def parse_change_id(change_id):
    """Return ``(uuid_key, sequence)``; ``uuid_key`` is the 32 lower-case hex digits of the
    UUID part (spacing ignored). Raises ChangeIdError for anything else (``*`` included)."""
    if change_id is None:
        raise ChangeIdError("no changeId")
    match = _CHANGE_ID_RE.match(str(change_id))
    if not match:
        raise ChangeIdError(
            "'%s' is not a vSphere changeId; expected '<16 hex bytes>/<sequence>' such as "
            "'52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81', or '*' for all allocated areas"
            % change_id)
    return re.sub(r"[^0-9a-f]", "", match.group(1).lower()), int(match.group(2))


def change_id_uuid(change_id):
    """The UUID part of a changeId as written by vSphere (before the '/'), or None."""
    if not change_id:
        return None
    try:
        parse_change_id(change_id)
    except ChangeIdError:
        return None
    return str(change_id).rsplit("/", 1)[0].strip()


def _controller_kind(device):
    checks = [
        ("scsi", "VirtualSCSIController"),
        ("sata", "VirtualSATAController"),
        ("ide", "VirtualIDEController"),
        ("nvme", "VirtualNVMEController"),
    ]
    for kind, name in checks:
        klass = getattr(vim.vm.device, name, None)
        if klass is not None and isinstance(device, klass):
            return kind
    return None


def _backing_kind(backing):
    for name in ("FlatVer2BackingInfo", "SparseVer2BackingInfo", "SeSparseBackingInfo",
                 "RawDiskMappingVer1BackingInfo", "PartitionedRawDiskVer2BackingInfo",
                 "RawDiskVer2BackingInfo", "FlatVer1BackingInfo", "SparseVer1BackingInfo",
                 "LocalPMemBackingInfo"):
        klass = getattr(vim.vm.device.VirtualDisk, name, None)
        if klass is not None and isinstance(backing, klass):
            return name.replace("BackingInfo", "")
    return type(backing).__name__.split(".")[-1] if backing is not None else None


TRACKABLE_BACKINGS = ("FlatVer2", "SparseVer2", "SeSparse", "RawDiskMappingVer1", "RawDiskVer2",
                      "PartitionedRawDiskVer2")


def disk_eligibility(disk):
    """``(eligible, reason)`` for change tracking on one VirtualDisk device."""
    backing = disk.backing
    kind = _backing_kind(backing)
    mode = getattr(backing, "diskMode", None)
    if kind in ("FlatVer1", "SparseVer1"):
        return False, ("%s backing (ESX 2.x disk format) cannot be tracked; convert the disk to a "
                       "current format" % kind)
    if kind == "RawDiskMappingVer1" and getattr(backing, "compatibilityMode", None) == "physicalMode":
        return False, ("physical-compatibility RDM: I/O bypasses the ESXi storage stack, CBT cannot "
                       "track it; copy it another way or switch it to virtual compatibility")
    if mode and str(mode).startswith("independent"):
        return False, ("independent disk (%s) is excluded from snapshots and cannot be tracked; "
                       "change the disk mode to persistent to include it" % mode)
    if kind not in TRACKABLE_BACKINGS:
        return False, "%s backing does not support change tracking" % (kind or "unknown")
    return True, None


def _capacity(disk):
    value = getattr(disk, "capacityInBytes", None)
    if value:
        return int(value)
    kb = getattr(disk, "capacityInKB", None)
    return int(kb) * 1024 if kb else 0


def describe_disks(devices):
    """Sorted list of dicts describing every VirtualDisk in ``devices``."""
    controllers = {}
    for device in devices or []:
        kind = _controller_kind(device)
        if kind:
            controllers[device.key] = (kind, getattr(device, "busNumber", None))
    disks = []
    for device in devices or []:
        if not isinstance(device, vim.vm.device.VirtualDisk):
            continue
        backing = device.backing
        eligible, reason = disk_eligibility(device)
        kind, bus = controllers.get(device.controllerKey, (None, None))
        unit = getattr(device, "unitNumber", None)
        change_id = getattr(backing, "changeId", None) or None
        disks.append({
            "key": device.key,
            "label": getattr(getattr(device, "deviceInfo", None), "label", None),
            "file": getattr(backing, "fileName", None) or getattr(backing, "descriptorFileName", None),
            "capacity_bytes": _capacity(device),
            "controller_type": kind,
            "controller_bus": bus,
            "controller_key": device.controllerKey,
            "unit_number": unit,
            "device_node": "%s%s:%s" % (kind, bus, unit) if kind and bus is not None and unit is not None else None,
            "backing": _backing_kind(backing),
            "disk_mode": getattr(backing, "diskMode", None),
            "eligible": eligible,
            "reason": reason,
            "change_id": change_id,
        })
    disks.sort(key=lambda d: d["key"])
    return disks


def disks_by_key(disks):
    return dict((d["key"], d) for d in disks)
