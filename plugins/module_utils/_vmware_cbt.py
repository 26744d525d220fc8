# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changed Block Tracking on vSphere: enable / disable / reset with the stun cycle, snapshots
and the QueryChangedDiskAreas paging loop.

This utility is private to the cbt.toolkit collection; its interface may change at any time.

VMware's documented procedure (VDDK "Enable Changed Block Tracking", KB 1020128, KB 2139574):
``ReconfigVM_Task(changeTrackingEnabled=True)`` only takes effect after a stun-unstun cycle;
a snapshot create + remove is that cycle. Each eligible disk then carries a ``changeId`` in
its backing. A VM with the VM-level flag on but a disk without ``changeId`` is NOT ready.
Reset = disable, stun cycle, enable, stun cycle; the next copy must be a full one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random
import time

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareApiError,
    VmwareError,
    VmwarePermissionDenied,
    VmwareTaskTimeout,
    VmwareUnreachable,
    fault_name,
    fault_text,
    is_fault,
    unfinished_task,
    vim,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import (
    ChangeIdError,
    describe_disks,
    parse_change_id,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import (
    connection_problem,
    hw_version_number,
    read_vm,
    vm_facts,
    vm_label,
)

PRIV_CHANGE_TRACKING = "VirtualMachine.Config.ChangeTracking"
PRIV_CREATE_SNAPSHOT = "VirtualMachine.State.CreateSnapshot"
PRIV_REMOVE_SNAPSHOT = "VirtualMachine.State.RemoveSnapshot"
PRIV_DISK_READ = "VirtualMachine.Provisioning.DiskRandomRead"

TEMP_SNAPSHOT_DESCRIPTION = ("Temporary snapshot taken by cbt.toolkit.vmware_cbt to initialise Changed Block "
                             "Tracking (stun cycle). It is removed automatically; safe to delete.")

# QueryChangedDiskAreas faults after which only a full copy is safe (VDDK guide, KB 1020128).
FULL_SYNC_FAULTS = ("FileFault", "NotFound", "InvalidArgument", "MethodNotFound")


class CbtError(VmwareError):
    """A CBT operation failed. ``kind``: unsupported, reconfigure_failed, init_snapshot_failed,
    no_change_id, snapshot_remove_failed, snapshot_failed, query_failed, extent_file_failed, inaccessible."""

    def __init__(self, msg, kind="cbt_failed", fault=None, **details):
        super(CbtError, self).__init__(msg, fault=fault, **details)
        self.kind = kind


class ConsolidationFailed(CbtError):
    """A snapshot was removed, but the disk consolidation that vCenter asked for afterwards
    failed. ``reason`` is the consolidation's error text."""

    def __init__(self, msg, reason, fault=None, **details):
        super(ConsolidationFailed, self).__init__(msg, kind="snapshot_remove_failed", fault=fault, **details)
        self.reason = reason


CONSOLIDATE_ADVICE = ("consolidate the VM's disks in vCenter (Snapshots > Consolidate) before the next snapshot is "
                      "taken, then run again")


def append_message(exc, extra):
    exc.msg = "%s; %s" % (exc.msg, extra)
    exc.args = (exc.msg,)


# -- snapshots ----------------------------------------------------------------------------

def flatten_snapshots(snapshot_info):
    """Pre-order list of ``{name, moid, ref, description, create_time, id, parent, depth}``."""
    out = []

    def walk(nodes, parent, depth):
        for node in nodes or []:
            out.append({
                "name": node.name,
                "moid": getattr(node.snapshot, "_moId", None),
                "ref": node.snapshot,
                "description": getattr(node, "description", None),
                "create_time": node.createTime.isoformat() if getattr(node, "createTime", None) else None,
                "id": getattr(node, "id", None),
                "quiesced": bool(getattr(node, "quiesced", False)),
                "parent": parent,
                "depth": depth,
            })
            walk(getattr(node, "childSnapshotList", None), node.name, depth + 1)

    if snapshot_info is not None:
        walk(getattr(snapshot_info, "rootSnapshotList", None), None, 0)
    return out


def snapshot_public(snap):
    return dict((k, v) for k, v in snap.items() if k != "ref")


def read_snapshots(client, vm, vm_name=None):
    props = client.properties(vm, ["snapshot"], what="reading the snapshots of VM '%s'" % (vm_name or vm._moId))
    return flatten_snapshots(props.get("snapshot"))


def find_snapshot(snapshots, ident, vm_text):
    """By MoID first, then by name. Raises CbtError (not found / ambiguous)."""
    by_moid = [s for s in snapshots if s["moid"] == ident]
    if by_moid:
        return by_moid[0]
    by_name = [s for s in snapshots if s["name"] == ident]
    if len(by_name) == 1:
        return by_name[0]
    if not by_name:
        available = ", ".join("'%s' (%s)" % (s["name"], s["moid"]) for s in snapshots) or "none"
        raise CbtError("snapshot '%s' not found on VM %s; snapshots: %s" % (ident, vm_text, available),
                       kind="not_found")
    raise CbtError("snapshot name '%s' is ambiguous on VM %s: %s; give the snapshot moid instead"
                   % (ident, vm_text, ", ".join("%s (created %s)" % (s["moid"], s["create_time"]) for s in by_name)),
                   kind="ambiguous")


def snapshot_disks(client, snapshot_ref, what):
    props = client.properties(snapshot_ref, ["config.hardware.device"], what=what)
    return describe_disks(props.get("config.hardware.device") or [])


def create_snapshot(client, vm, name, description, memory, quiesce, timeout, vm_text):
    what = "creating snapshot '%s' of VM %s" % (name, vm_text)
    info = client.run_task(what, vm.CreateSnapshot_Task, name=name, description=description,
                           memory=bool(memory), quiesce=bool(quiesce), timeout=timeout,
                           expected_privilege=PRIV_CREATE_SNAPSHOT)
    return info.result


# seconds to wait, at most, for a cancelled snapshot creation task that had not finished
SETTLE_TIMEOUT = 30


def settle_task(client, task, what, timeout, expected_privilege=None):
    """Cancel ``task``, whose wait ended before the task did (timeout, interruption), and wait
    at most ``timeout`` seconds for its end (a task that is not cancelable runs on). Returns
    ``(result or None, finished)``; a task that ended in error is finished without a result."""
    try:
        client.invoke("cancelling the task of %s" % what, task.CancelTask)
    except Exception:  # pylint: disable=broad-except
        pass  # not cancelable or already finished: the wait tells
    try:
        info = client.wait_task(task, what, timeout=max(1, timeout), expected_privilege=expected_privilege)
    except Exception as exc:  # pylint: disable=broad-except
        return None, unfinished_task(exc) is None  # a failed task may still have left its work behind
    return getattr(info, "result", None), True


def remove_snapshot(client, vm, snapshot_ref, name, timeout, vm_text, attempts=3):
    """Remove one snapshot (consolidating), retrying a failed task; then consolidate if vCenter
    still says so. Returns None, the last removal error (the snapshot may still be there), or a
    :class:`ConsolidationFailed` (the snapshot is gone, the disks still need consolidation).

    A removal task still running when its wait ended (timeout, lost connection) is waited for once
    more, at most ``SETTLE_TIMEOUT`` seconds; no second removal of the same snapshot is started
    while it runs."""
    what = "removing snapshot '%s' (%s) of VM %s" % (name, getattr(snapshot_ref, "_moId", "?"), vm_text)
    last = None
    for attempt in range(attempts):
        try:
            client.run_task(what, snapshot_ref.RemoveSnapshot_Task, removeChildren=False, consolidate=True,
                            timeout=timeout, expected_privilege=PRIV_REMOVE_SNAPSHOT)
            last = None
            break
        except VmwareError as exc:
            last = exc
            task = unfinished_task(exc)
            if task is not None:
                last = _settle_removal(client, task, what, min(timeout, SETTLE_TIMEOUT))
                if last is None or isinstance(last, VmwareTaskTimeout):
                    break  # removed, or still running: never a second removal beside it
            if is_fault(last.fault, "ManagedObjectNotFound"):
                last = None  # already gone
                break
            if isinstance(last, VmwarePermissionDenied):
                break
            still_there = [s for s in read_snapshots(client, vm) if s["moid"] == getattr(snapshot_ref, "_moId", None)]
            if not still_there:
                last = None
                break
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
    if last is not None:
        return last
    try:
        consolidate_if_needed(client, vm, timeout, vm_text)
    except VmwareError as exc:
        return ConsolidationFailed("snapshot '%s' (%s) of VM %s was removed, but consolidating the VM's disks "
                                   "afterwards failed: %s; %s" % (name, getattr(snapshot_ref, "_moId", "?"), vm_text,
                                                                  exc.msg, CONSOLIDATE_ADVICE),
                                   exc.msg, fault=exc.fault)
    return None


def _settle_removal(client, task, what, timeout):
    """Wait once more for a removal task whose wait ended before it did. Returns None (it
    succeeded), its error (it failed: another attempt may follow), or a VmwareTaskTimeout naming
    the task (still running)."""
    moid = getattr(task, "_moId", "?")
    try:
        client.wait_task(task, what, timeout=max(1, timeout), expected_privilege=PRIV_REMOVE_SNAPSHOT)
        return None
    except VmwareError as exc:
        if unfinished_task(exc) is None:
            return exc
        why = exc.msg
    return VmwareTaskTimeout("%s: its task %s had not finished when this run stopped waiting for it (%s), so no second "
                             "removal was started. vCenter usually finishes it: check the task in vCenter, then run "
                             "again" % (what, moid, why), task=moid)


def consolidate_if_needed(client, vm, timeout, vm_text):
    needed = client.properties(vm, ["runtime.consolidationNeeded"],
                               what="reading the consolidation state of VM %s" % vm_text).get("runtime.consolidationNeeded")
    if needed:
        client.run_task("consolidating the disks of VM %s" % vm_text, vm.ConsolidateVMDisks_Task, timeout=timeout,
                        expected_privilege=PRIV_REMOVE_SNAPSHOT)
        return True
    return False


# -- CBT state machine ----------------------------------------------------------------------

class CbtManager(object):
    """Plan and apply ``state: enabled | disabled | reset`` on one VM."""

    # seconds to wait for a cancelled, unfinished creation task of a temporary snapshot
    settle_timeout = SETTLE_TIMEOUT

    def __init__(self, client, vm, prefix="cbt-toolkit-init", timeout=3600, check_mode=False):
        self.client = client
        self.vm = vm
        self.prefix = prefix
        self.timeout = timeout
        self.check_mode = check_mode
        self.record = None
        self.snapshots = []
        self.actions = []
        self.warnings = []
        self.init_snapshots = []
        self.changed = False  # set once something persistent changed (reconfigure, stale snapshot removed)
        self.refresh()

    # reading

    def refresh(self):
        self.record = read_vm(self.client, self.vm)
        self.snapshots = read_snapshots(self.client, self.vm, self.record["props"].get("name"))
        return self.record

    @property
    def label(self):
        return vm_label(self.record)

    @property
    def cbt_enabled(self):
        return bool(self.record["props"].get("config.changeTrackingEnabled"))

    def facts(self):
        return vm_facts(self.record)

    def disks(self):
        return describe_disks(self.record["props"].get("config.hardware.device") or [])

    def disks_without_change_id(self):
        return [d for d in self.disks() if d["eligible"] and not d["change_id"]]

    def stale_snapshots(self):
        prefix = self.prefix
        found = [s for s in self.snapshots if s["name"] == prefix or s["name"].startswith(prefix + "-")]
        return sorted(found, key=lambda s: -s["depth"])  # children first

    # checks

    def check_supported(self):
        props = self.record["props"]
        problem = connection_problem(props)
        if problem is not None:
            raise CbtError("VM %s cannot be reached by vCenter (runtime.connectionState is %s), so its CBT cannot be "
                           "changed or initialised: %s, then run again" % ((self.label,) + problem), kind="inaccessible")
        if props.get("config.template"):
            raise CbtError("VM %s is a template; templates cannot be snapshotted, so CBT cannot be initialised. "
                           "Convert it to a virtual machine first" % self.label, kind="unsupported")
        number = hw_version_number(props.get("config.version"))
        if number is not None and number < 7:
            raise CbtError("VM %s has virtual hardware %s; Changed Block Tracking needs vmx-07 or later. Upgrade "
                           "the VM's compatibility (virtual hardware) first" % (self.label, props.get("config.version")),
                           kind="unsupported")
        if props.get("capability.changeTrackingSupported") is False:
            raise CbtError("VM %s does not support Changed Block Tracking (capability.changeTrackingSupported is "
                           "false): check that the host is ESXi 4.0 or later and the VM hardware version" % self.label,
                           kind="unsupported")

    # planning

    def plan(self, state, initialize=True):
        steps = []
        if state == "enabled":
            if not self.cbt_enabled:
                steps.append("enable")
            if initialize and (not self.cbt_enabled or self.disks_without_change_id()):
                steps.append("initialize")
        elif state == "disabled":
            if self.cbt_enabled:
                steps.append("disable")
                if initialize and str(self.record["props"].get("runtime.powerState")) == "poweredOn":
                    steps.append("stun")
        elif state == "reset":
            if self.cbt_enabled:
                steps.extend(["disable", "stun"])
            steps.extend(["enable", "initialize"])
        else:
            raise CbtError("unknown state '%s'" % state, kind="invalid")
        return steps

    @staticmethod
    def describe_step(step):
        return {
            "enable": "enable change tracking (ReconfigVM_Task changeTrackingEnabled=true)",
            "disable": "disable change tracking (ReconfigVM_Task changeTrackingEnabled=false)",
            "initialize": "initialise CBT with a temporary snapshot (create, check every eligible disk's changeId, remove)",
            "stun": "stun cycle with a temporary snapshot (create, remove) so the change takes effect",
        }[step]

    # applying

    def reconfigure(self, enabled):
        verb = "enable" if enabled else "disable"
        what = "reconfiguring VM %s to %s change tracking" % (self.label, verb)
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=bool(enabled))
        try:
            self.client.run_task(what, self.vm.ReconfigVM_Task, spec=spec, timeout=self.timeout,
                                 expected_privilege=PRIV_CHANGE_TRACKING)
        except VmwarePermissionDenied:
            raise
        except VmwareError as exc:
            task = unfinished_task(exc)
            later = ""
            if task is not None:
                # vCenter may still apply it: the task reports the change as possible, never as none
                self.changed = True
                later = ("; its task %s had not finished when this run stopped waiting for it, so vCenter may still "
                         "apply the change: run again to see where the VM stands" % getattr(task, "_moId", "?"))
            raise CbtError("Could not %s CBT on VM %s: reconfigure failed: %s%s"
                           % (verb, self.label, fault_text(exc.fault) if exc.fault is not None else exc.msg, later),
                           kind="reconfigure_failed", fault=exc.fault)
        self.changed = True
        self.refresh()
        if self.cbt_enabled != bool(enabled):
            raise CbtError("Could not %s CBT on VM %s: vCenter accepted the reconfiguration but "
                           "config.changeTrackingEnabled is still %s; check the VM hardware version and host"
                           % (verb, self.label, str(self.cbt_enabled).lower()), kind="reconfigure_failed")

    def temp_name(self):
        return "%s-%s-%04x" % (self.prefix, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), random.randint(0, 0xFFFF))

    def stun_cycle(self, require_change_ids):
        """Create a temporary snapshot, read its disks, remove it -- the removal happens on
        every path. Returns the snapshot's disk list."""
        name = self.temp_name()
        record = {"name": name, "moid": None, "removed": False}
        self.init_snapshots.append(record)
        snap = None
        create_error = None
        eligible_keys = set(d["key"] for d in self.disks() if d["eligible"])
        try:
            try:
                snap = create_snapshot(self.client, self.vm, name, TEMP_SNAPSHOT_DESCRIPTION, False, False,
                                       self.timeout, self.label)
            except BaseException as exc:
                create_error = exc
                if isinstance(exc, VmwareError) and not isinstance(exc, VmwarePermissionDenied):
                    raise CbtError("CBT initialization failed for VM %s: creating the temporary snapshot '%s' failed: %s"
                                   % (self.label, name, fault_text(exc.fault) if exc.fault is not None else exc.msg),
                                   kind="init_snapshot_failed", fault=exc.fault)
                raise
            record["moid"] = getattr(snap, "_moId", None)
            disks = snapshot_disks(self.client, snap, "reading the disks of the temporary snapshot '%s'" % name)
            if require_change_ids:
                missing = [d for d in disks if d["key"] in eligible_keys and not d["change_id"]]
                if missing:
                    raise CbtError(
                        "CBT initialization failed for VM %s: %s still without changeId after the stun cycle "
                        "(snapshot create/remove); vCenter did not start tracking %s. Check that the datastore "
                        "supports CBT and the host is ESXi 4.0+, or power-cycle the VM and run again"
                        % (self.label, ", ".join("disk %s '%s' (%s)" % (d["key"], d["label"], d["file"]) for d in missing),
                           "it" if len(missing) == 1 else "them"),
                        kind="no_change_id", disks_without_change_id=[d["key"] for d in missing])
        except BaseException as exc:
            problem = self._remove_temp(snap, name, record, create_error)
            if problem is not None and isinstance(exc, VmwareError):
                if isinstance(problem, ConsolidationFailed):
                    append_message(exc, "in addition %s" % problem.msg)
                else:
                    append_message(exc, "in addition the temporary snapshot could not be removed: %s" % problem.msg)
            raise
        problem = self._remove_temp(snap, name, record)
        if problem is not None:
            raise problem
        return disks

    def _remove_temp(self, snap, name, record, create_error=None):
        """Remove the temporary snapshot. Without ``snap`` (``create_error`` ended its creation),
        a creation task that had not finished (timeout, interruption) is cancelled and waited for
        first, then the snapshot is looked up by name (a failed task may have created it anyway).
        ``removed`` is set only when the snapshot was removed or provably never created. Returns
        None or a CbtError (a :class:`ConsolidationFailed` when the snapshot was removed)."""
        try:
            settled = True
            create_task = unfinished_task(create_error) if create_error is not None else None
            if snap is None and create_task is not None:
                snap, settled = self._settle_create(create_task, name)
            elif snap is None and isinstance(create_error, (VmwareUnreachable, KeyboardInterrupt, SystemExit)):
                settled = False  # stopped before vCenter answered: the task may have been started
            targets = []
            if snap is not None:
                targets.append((snap, getattr(snap, "_moId", None)))
            else:
                for s in read_snapshots(self.client, self.vm, self.record["props"].get("name")):
                    if s["name"] == name:
                        targets.append((s["ref"], s["moid"]))
            if not targets and not settled:
                if create_task is not None:
                    why = ("its creation task (%s) had not finished when this run stopped waiting for it"
                           % getattr(create_task, "_moId", "?"))
                else:
                    why = "its creation was interrupted before vCenter answered"
                return CbtError("the temporary snapshot '%s' of VM %s was not removed: %s, so vCenter may still create "
                                "the snapshot. The next run removes it (cleanup_stale_snapshots: true), or remove it "
                                "in vCenter" % (name, self.label, why), kind="snapshot_remove_failed")
            for ref, moid in targets:
                record["moid"] = record["moid"] or moid
                error = remove_snapshot(self.client, self.vm, ref, name, self.timeout, self.label)
                if isinstance(error, ConsolidationFailed):
                    record["removed"] = True
                    return ConsolidationFailed(
                        "the temporary snapshot '%s' (%s) of VM %s was removed, but consolidating the VM's disks "
                        "afterwards failed: %s; %s" % (name, moid, self.label, error.reason, CONSOLIDATE_ADVICE),
                        error.reason, fault=error.fault)
                if error is not None:
                    return CbtError("the temporary snapshot '%s' (%s) of VM %s could not be removed: %s. Remove it in "
                                    "vCenter, or run again with cleanup_stale_snapshots: true"
                                    % (name, moid, self.label, error.msg), kind="snapshot_remove_failed",
                                    fault=error.fault)
            record["removed"] = True
            return None
        except VmwareError as exc:
            return CbtError("the temporary snapshot '%s' of VM %s could not be removed: %s. Remove it in vCenter, or "
                            "run again with cleanup_stale_snapshots: true" % (name, self.label, exc.msg),
                            kind="snapshot_remove_failed", fault=exc.fault)

    def _settle_create(self, task, name):
        """Cancel the unfinished creation task of the temporary snapshot ``name`` and wait at most
        ``settle_timeout`` seconds for its end. Returns ``(snapshot or None, finished)``."""
        return settle_task(self.client, task, "creating the temporary snapshot '%s' of VM %s" % (name, self.label),
                           min(self.timeout, self.settle_timeout), PRIV_CREATE_SNAPSHOT)

    def remove_stale(self, stale):
        removed = []
        for snap in stale:
            error = remove_snapshot(self.client, self.vm, snap["ref"], snap["name"], self.timeout, self.label)
            if isinstance(error, ConsolidationFailed):
                self.changed = True
                raise ConsolidationFailed("the stale temporary snapshot '%s' (%s) of VM %s was removed, but "
                                          "consolidating the VM's disks afterwards failed: %s; %s"
                                          % (snap["name"], snap["moid"], self.label, error.reason, CONSOLIDATE_ADVICE),
                                          error.reason, fault=error.fault)
            if error is not None:
                raise CbtError("removing the stale temporary snapshot '%s' (%s) of VM %s failed: %s"
                               % (snap["name"], snap["moid"], self.label, error.msg),
                               kind="snapshot_remove_failed", fault=error.fault)
            removed.append(snapshot_public(snap))
            self.changed = True
        self.refresh()
        return removed


def diff_view(facts):
    """What ``--diff`` shows for one VM."""
    return {
        "cbt_enabled": facts.get("cbt_enabled"),
        "disks": dict(("%s %s" % (d["key"], d["label"]), d["change_id"] if d["eligible"] else "(not eligible: %s)" % d["reason"])
                      for d in facts.get("disks") or []),
    }


# -- QueryChangedDiskAreas ------------------------------------------------------------------

class FullSyncRequired(Exception):
    """Only a full copy is safe; ``reason`` says why."""

    def __init__(self, reason, fault=None):
        super(FullSyncRequired, self).__init__(reason)
        self.reason = reason
        self.fault = fault


def check_change_id_lineage(change_id, disk, snapshot_text):
    """Raise FullSyncRequired if ``change_id`` cannot be a base for this disk's changeId at the
    snapshot (no changeId, different UUID = CBT was reset). ``*`` passes."""
    current = disk.get("change_id")
    if not current:
        raise FullSyncRequired("disk %s '%s' has no changeId at snapshot %s: CBT is off or not initialised on this "
                               "disk; run cbt.toolkit.vmware_cbt (state: enabled) and copy the whole disk once"
                               % (disk["key"], disk["label"], snapshot_text))
    if change_id == "*":
        return
    uuid, _seq = parse_change_id(change_id)
    try:
        current_uuid, _cur_seq = parse_change_id(current)
    except ChangeIdError:
        raise FullSyncRequired("the disk's changeId '%s' at snapshot %s is not in the vSphere format; copy the "
                               "whole disk" % (current, snapshot_text))
    if uuid != current_uuid:
        raise FullSyncRequired(
            "changeId '%s' belongs to another CBT epoch than the disk's current changeId '%s' at snapshot %s (the UUID "
            "part differs): CBT was reset (disabled and enabled, storage vMotion, or a crash) since that changeId was "
            "taken, so changes since then are unknown; copy the whole disk" % (change_id, current, snapshot_text))


def iter_changed_areas(client, vm, snapshot_ref, disk_key, capacity, change_id, what):
    """Page through QueryChangedDiskAreas following vSphere's rules: start at 0, continue at
    ``startOffset + length`` of the returned window until the capacity, never stop on an
    empty page. Yields ``(window_start, window_length, [(start, length), ...])``.

    Raises FullSyncRequired for FileFault / NotFound / InvalidArgument / MethodNotFound and for
    windows that make no progress or leave gaps."""
    start = 0
    while start < capacity:
        try:
            info = client.invoke(what, vm.QueryChangedDiskAreas, snapshot=snapshot_ref, deviceKey=disk_key,
                                 startOffset=start, changeId=change_id, expected_privilege=PRIV_DISK_READ)
        except VmwareApiError as exc:
            name = fault_name(exc.fault)
            if is_fault(exc.fault, *FULL_SYNC_FAULTS):
                raise FullSyncRequired(_qcda_reason(name, exc.fault, start, change_id), fault=exc.fault)
            raise
        window_start = int(getattr(info, "startOffset", start) or 0)
        window_length = int(getattr(info, "length", 0) or 0)
        if window_start > start:
            raise FullSyncRequired("QueryChangedDiskAreas skipped bytes %d-%d (asked for offset %d, got a window "
                                   "starting at %d); copy the whole disk" % (start, window_start, start, window_start))
        end = window_start + window_length
        if window_length <= 0 or end <= start:
            raise FullSyncRequired("QueryChangedDiskAreas made no progress at offset %d (window %d+%d); copy the "
                                   "whole disk" % (start, window_start, window_length))
        areas = sorted((int(a.start), int(a.length)) for a in (getattr(info, "changedArea", None) or []))
        yield window_start, window_length, areas
        start = end


def _qcda_reason(name, fault, start, change_id):
    text = fault_text(fault)
    if name == "MethodNotFound":
        return ("this vSphere endpoint does not implement QueryChangedDiskAreas (%s); changed areas are unknown, "
                "copy the whole disk" % text)
    if name == "FileFault":
        return ("QueryChangedDiskAreas reported a FileFault (%s): the change tracking data for changeId '%s' is "
                "gone or CBT was off/reset since then; copy the whole disk" % (text, change_id))
    if name == "NotFound":
        return ("QueryChangedDiskAreas reported NotFound (%s): the disk or snapshot is no longer tracked; copy the "
                "whole disk" % text)
    return ("QueryChangedDiskAreas rejected the request at offset %d (%s): changeId '%s' is not usable for this "
            "disk; copy the whole disk" % (start, text, change_id))


class ExtentCollector(object):
    """Streams areas (sorted across calls) into coalesced extents; keeps the first
    ``max_results`` for the module result and hands every extent to ``sink``."""

    def __init__(self, capacity, gap=0, max_results=1000, sink=None):
        self.capacity = capacity
        self.gap = max(0, int(gap or 0))
        self.max_results = max_results
        self.sink = sink
        self.pending = None
        self.last_end = 0
        self.count = 0
        self.bytes = 0
        self.kept = []

    def add(self, start, length):
        if length <= 0:
            return
        end = start + length
        if start < 0 or end > self.capacity:
            raise FullSyncRequired("QueryChangedDiskAreas returned an area %d+%d outside the disk (capacity %d); "
                                   "copy the whole disk" % (start, length, self.capacity))
        if self.pending is None:
            if start < self.last_end:
                raise FullSyncRequired("QueryChangedDiskAreas returned areas out of order (area at %d after one "
                                       "ending at %d); copy the whole disk" % (start, self.last_end))
            self.pending = [start, end]
        elif start <= self.pending[1] + self.gap:
            if start < self.pending[0]:
                raise FullSyncRequired("QueryChangedDiskAreas returned areas out of order (area at %d before %d); "
                                       "copy the whole disk" % (start, self.pending[0]))
            self.pending[1] = max(self.pending[1], end)
        else:
            self._emit()
            self.pending = [start, end]

    def _emit(self):
        start, end = self.pending
        self.pending = None
        self.last_end = end
        self.count += 1
        self.bytes += end - start
        if self.max_results is None or len(self.kept) < self.max_results:
            self.kept.append({"offset": start, "length": end - start})
        if self.sink is not None:
            self.sink(start, end - start)

    def finish(self):
        if self.pending is not None:
            self._emit()
        return self
