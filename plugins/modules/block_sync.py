#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: block_sync
short_description: Copy changed (or allocated, or differing) blocks between disk images, block devices and NBD exports
version_added: 0.1.0
description:
  - Copies byte ranges from a source to a target. Either can be a regular file (sparse files are kept sparse),
    a block device, or an NBD export (C(nbd://host:port/export), C(nbd+unix:///export?socket=/path)).
  - What is copied is chosen by O(mode) - an extent list from VMware changed-block tracking or CSI snapshot
    metadata (incremental sync), the allocated data of the source (first full sync, holes skipped), every byte,
    or only the ranges whose contents differ (when no change tracking is available).
  - Extents are validated, sorted, merged and cut into requests of O(request_size); several requests are in
    flight at once (one file descriptor or one NBD connection per worker). Zeros are detected per 64 KiB and
    never written as data - holes are punched in files, C(BLKZEROOUT)/C(fallocate) is used on block devices
    and NBD C(WRITE_ZEROES) on exports. The target is flushed once at the end (and at each resume commit).
  - The run is resumable. Finished ranges are recorded in a resume state in O(state_dir) only after the target
    was flushed, so after a crash or C(kill -9) the same task continues where it stopped. A lock
    prevents two runs writing the same target. A run is only marked complete after the final flush and the
    optional verification.
  - Everything is checked before the first write - extents beyond the source size, a target smaller than the
    source, unsorted or overlapping extents (normalised, or rejected with O(extents_check=strict)), a read-only
    target, source and target being the same object (also through a loop device).
  - Progress (bytes done, total, rate, ETA) is written to O(status_file) about once a second, so the task
    can run with C(async)/C(poll) and be watched.
  - NBD URLs need libnbd's Python binding, a distribution package (Debian/Ubuntu C(python3-libnbd),
    Fedora/RHEL C(python3-libnbd)); it is not on PyPI. Run the module with the system Python
    (C(ansible_python_interpreter=/usr/bin/python3)) on such hosts. Files and block devices need nothing
    beyond the Python standard library.
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
requirements:
  - Linux (C(fallocate), C(SEEK_DATA), block-device ioctls).
  - libnbd Python binding (module C(nbd)) when O(src) or O(dest) is an NBD URL.
  - Python C(xxhash) for O(checksum_algorithm=xxh3), C(blake3) for O(checksum_algorithm=blake3), only
    when O(verify) or O(image_digest) is used; C(sha256) needs nothing extra.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Validates everything and reports what would be copied (O(mode=compare) reads both sides to find the
        differences) without writing, creating files, taking the lock or touching the resume state.
  diff_mode:
    support: partial
    details:
      - Returns a summary of the target before and after (size, ranges and bytes to write), not the data.
  platform:
    platforms: posix
options:
  src:
    description:
      - The source - path of a regular file or block device, or an NBD URL.
      - It must not change while it is copied; use a snapshot (VMware snapshot, CSI VolumeSnapshot, LVM
        snapshot) for anything in use.
    type: str
    required: true
  dest:
    description:
      - The target - path of a regular file or block device, or an NBD URL of a writable export.
      - A missing file is created (sparse, mode C(0600), the size of the source) for O(mode=allocated),
        O(mode=all) and O(mode=compare) when O(create=true). O(mode=extents) refuses a missing target, because
        an incremental sync on an empty file would produce a disk with holes where the unchanged data belongs.
      - Block-device targets are opened exclusively (C(O_EXCL)), so a mounted device is refused.
    type: str
    required: true
  mode:
    description:
      - V(extents) copies the ranges in O(extents) and/or O(extent_file) (the default when either is given).
      - V(allocated) copies the allocated data of the source (C(SEEK_DATA)/C(SEEK_HOLE) on files, NBD block
        status on exports) and makes the source's holes read as zeros on the target (free on new files). A
        block-device source cannot report allocation; every byte is read then, with zero detection.
      - V(all) reads every byte of the source.
      - V(compare) reads both sides (limited to O(extents)/O(extent_file) when given) and writes only the 64 KiB
        pieces that differ; for when no change tracking is available. An extent list that covers all the data of
        the source (C(coverage=allocated)) is refused here, as what it leaves out must be zeroed; use V(extents) with it.
    type: str
    choices: [extents, allocated, all, compare]
  extents:
    description:
      - Ranges to copy, as a list of C({offset, length}) dictionaries (C(start)/C(length) and
        C(byte_offset)/C(size_bytes) are accepted too), C([offset, length]) pairs or C("offset:length") strings,
        in bytes.
      - Combined with O(extent_file) when both are given.
    type: list
    elements: raw
  extent_file:
    description:
      - A file in the collection's extent format (written by C(cbt.toolkit.csi_snapshot_diff) and the VMware
        changed-area query) - one C(offset length) line per extent, C(#) comments. A C(# capacity=N) line must
        match the source size.
      - A C(# coverage=allocated) line (also the older marks C(# call=allocated) and C(# change_id=*)) says the
        list holds all the data of the source rather than the changes since the target's change point, as
        written when the changes are unknown. Then everything the list does not name is made zero on the target
        too (where the target holds data), so no data the source no longer has stays behind; the result says so
        in RV(plan.zeroes_unlisted). C(# coverage=changed) or no such line is a delta.
      - A list with C(# starting_offset=N) (N > 0) covers only the disk from offset N on and is refused; list the
        changes again from offset 0.
    type: path
  extents_check:
    description:
      - V(normalize) sorts unsorted extents and merges overlapping ones (the result says what it did in
        RV(input_extents.normalization)). V(strict) rejects unsorted or overlapping input.
      - Extents beyond the end of the source are always rejected.
    type: str
    choices: [normalize, strict]
    default: normalize
  dest_is_zero:
    description:
      - Promise that the target reads as zeros (a new volume). Zero ranges are then skipped instead of zeroed.
      - Only allowed with O(mode=allocated) or O(mode=all); a newly created target file implies it.
      - Ignored, with a warning, once a run has written to the target (its resume state exists) - a retry after a
        failed run, or a run after an earlier sync, may find data where the source has zeros.
    type: bool
    default: false
  create:
    description:
      - Create a missing target file (see O(dest)).
    type: bool
    default: true
  verify:
    description:
      - Read every copied piece back from the target right after writing it and compare its checksum with that
        of the source data, hashed while it was copied. Pieces not checked during the copy (ranges copied by an
        earlier, interrupted run, whose source is read again, and pieces cut where that run stopped) are read
        back after the final flush. Mismatching ranges fail the task and are removed from the resume state.
      - Ranges made zero (source holes) are checked after the final flush to read as zeros.
      - A piece that is all zeros on the source is checked through the target's allocation where the target
        reports a hole for the whole piece (C(SEEK_DATA)/C(SEEK_HOLE) on files, block status on NBD exports),
        because a hole reads as zeros. Where the target holds data there, the piece is read back and compared.
      - On local targets the read-back is usually served from the page cache, so it checks what the kernel holds
        for the target, not the device's media.
    type: bool
    default: false
  image_digest:
    description:
      - After the sync, compute a whole-image digest of the source and of the target (first source-size bytes),
        the hash of the digests of 4 MiB blocks, with zero blocks and holes hashed from a cached digest. The task
        fails when they differ - for an incremental sync that means the change list missed changes or the
        target was not in sync before.
      - Reads both images completely (holes skipped), so it costs a full read of each.
    type: bool
    default: false
  checksum_algorithm:
    description:
      - Hash used by O(verify) and O(image_digest). V(xxh3) (xxh3-128, needs the Python C(xxhash) library) and
        V(blake3) (needs C(blake3)) are far faster than V(sha256), which only needs the standard library and is
        the fallback where neither library is installed.
    type: str
    choices: [xxh3, blake3, sha256]
    default: xxh3
  checksum_file:
    description:
      - Write the per-extent checksums (C(offset length source_digest target_digest) lines) to this file.
        Requires O(verify=true).
    type: path
  resume:
    description:
      - V(auto) continues an unfinished run of the same plan (same source, target, mode and extents) and refuses
        to start when an unfinished run of a different plan left ranges this run does not cover.
      - Saved progress is only trusted while the target still holds it - each commit reads back a small sample
        of data it wrote, and a re-run compares those samples first. A target re-created or written by
        something else since (even at the same path, inode or device number) is copied whole again, with a
        warning. So is a target whose saved progress records data but no such sample.
      - From an NBD export or a block device, an unfinished run is only continued with O(sync_id) - nothing else
        shows that the same URL or device still serves the same snapshot (a regular file's modification time is
        part of the plan). Without it the run copies everything again, with a warning.
      - V(restart) ignores any saved progress and copies the whole plan (with a warning about uncovered ranges),
        also a plan already completed for its O(sync_id), and replaces a resume state that cannot be read.
      - A saved progress that is no longer trusted still counts for an unfinished run of a different plan - the
        ranges that run had still to copy must be covered by this one, or this run is refused.
    type: str
    choices: [auto, restart]
    default: auto
  state_dir:
    description:
      - Folder for the lock, the resume state and the default status file, one set per target.
      - Defaults to C($XDG_STATE_HOME/cbt.toolkit/block_sync) (C(~/.local/state/cbt.toolkit/block_sync)) on the
        managed host. Keep it on persistent storage for resume to survive reboots.
    type: path
  status_file:
    description:
      - Where to write progress JSON (C(state), C(bytes_done), C(bytes_total), C(percent),
        C(rate_bytes_per_second), C(eta_seconds)). Defaults to C(<state_dir>/<key>.status.json).
    type: path
  sync_id:
    description:
      - An identifier of this change point, for example the VMware changeId or the CSI snapshot id.
      - When a previous run with the same O(sync_id), source, target, mode and extents completed, the task copies
        nothing and reports RV(already_complete=true) and C(changed=false). A requested O(verify) or O(image_digest)
        still runs and is reported; when it fails, the plan is marked unfinished, so the next run copies again
        what differs. Without O(sync_id), every run copies again.
      - Give it whenever the source is an NBD export or a block device, so that an interrupted run can resume.
    type: str
  request_size:
    description:
      - Size of one read/write request in bytes (multiple of 4096, 64 KiB to 32 MiB; capped by the NBD server's
        maximum). The default suits local disks and NBD alike.
    type: int
    default: 4194304
  workers:
    description:
      - Requests in flight - worker threads, each with its own NBD connection when the server allows several
        (multi-conn). Against an NBD server without multi-conn one connection is shared.
    type: int
    default: 4
notes:
  - The lock is an C(flock) on a file in O(state_dir) plus, for local targets, on the target itself; it protects
    against concurrent runs on the same host.
  - Ranges are recorded as done at commits (every few seconds or 1 GiB) after flushing the target; an
    interrupted run repeats at most the work since the last commit. Repeating a range is harmless because the
    source must not change (use a snapshot).
seealso:
  - module: cbt.toolkit.cbt_checkpoint
"""

EXAMPLES = r"""
- name: First full sync of a VM disk exported by nbdkit (holes skipped)
  cbt.toolkit.block_sync:
    src: "nbd+unix:///?socket=/run/migration/disk0.sock"
    dest: /dev/mapper/vg0-vm1_disk0
    mode: allocated
    dest_is_zero: true
    verify: true
    sync_id: "{{ migration_snapshot_moid }}"  # lets an interrupted run resume from the export
  vars:
    ansible_python_interpreter: /usr/bin/python3

- name: Incremental sync of the changed extents, resumable, watched through its status file
  cbt.toolkit.block_sync:
    src: /dev/rbd/pool/vol-snap2
    dest: /backup/vol.img
    extent_file: /backup/changes-snap1-snap2.extents
    sync_id: "{{ snapshot_id }}"
    verify: true
    status_file: /backup/vol.sync-status.json
  async: 7200
  poll: 30

- name: Inline extents (for example from a VMware changed-area query)
  cbt.toolkit.block_sync:
    src: nbd://127.0.0.1:10809/disk0
    dest: /var/lib/images/vm1.raw
    sync_id: "{{ change_id }}"
    extents:
      - {offset: 0, length: 1048576}
      - {offset: 73400320, length: 65536}

- name: No change tracking available - copy only what differs
  cbt.toolkit.block_sync:
    src: /dev/vg0/data-snap
    dest: /dev/vg1/data-replica
    mode: compare
  register: sync

- name: Show what would be copied
  cbt.toolkit.block_sync:
    src: /images/base.img
    dest: /images/copy.img
    extent_file: /tmp/changes.extents
  check_mode: true
  diff: true
"""

RETURN = r"""
source:
  description: The source (O(src)).
  returned: always
  type: str
target:
  description: The target (O(dest)). Not returned as C(dest), so Ansible does not mix file attributes of the
    target into the result.
  returned: always
  type: str
mode:
  description: The mode used.
  returned: always
  type: str
  sample: extents
size:
  description: Size of the source in bytes.
  returned: always
  type: int
dest_size:
  description: Size of the target in bytes.
  returned: always
  type: int
dest_created:
  description: Whether the target file was (or, in check mode, would be) created.
  returned: always
  type: bool
src_kind:
  description: V(file), V(block) or V(nbd).
  returned: always
  type: str
dest_kind:
  description: V(file), V(block) or V(nbd).
  returned: always
  type: str
plan:
  description: What this run covers.
  returned: always
  type: dict
  contains:
    extents:
      description: Number of ranges to read (after sorting and merging).
      type: int
    bytes:
      description: Bytes in those ranges.
      type: int
    hole_extents:
      description: Number of source holes to make zero on the target (mode allocated).
      type: int
    hole_bytes:
      description: Bytes in those holes.
      type: int
    zeroes_unlisted:
      description: Whether the extent file lists all the data of the source (C(coverage=allocated)), so that
        everything it does not list is made zero on the target (counted in RV(plan.hole_bytes)).
      type: bool
plan_id:
  description: Identifier of the plan (source, target, mode, extents, sync_id); the resume state is tied to it.
  returned: always
  type: str
input_extents:
  description: What the given extents looked like and how they were normalised.
  returned: when O(extents) or O(extent_file) is given
  type: dict
  contains:
    count:
      description: Extents given.
      type: int
    bytes:
      description: Bytes given (overlaps counted twice).
      type: int
    sorted:
      description: Whether they were sorted by offset.
      type: bool
    overlapping_bytes:
      description: Bytes removed by merging overlaps.
      type: int
    normalized_count:
      description: Extents after sorting and merging touching/overlapping ones.
      type: int
    normalization:
      description: What was done, in words.
      type: str
    metadata:
      description: C(# key=value) metadata of the extent file.
      type: dict
    coverage:
      description: V(changed) (a delta) or V(allocated) (all the data of the source), from the extent file's
        metadata.
      type: str
    coverage_from:
      description: The metadata that decided RV(input_extents.coverage) (C(coverage=allocated),
        C(call=allocated), C(change_id=*), C(coverage=changed)); absent for a list without such a mark.
      type: str
allocation_known:
  description: In mode allocated, whether the source could report its allocation.
  returned: when O(mode=allocated)
  type: bool
bytes_read:
  description: Bytes read (both sides in mode compare).
  returned: always
  type: int
bytes_written:
  description: Bytes written as data.
  returned: always
  type: int
bytes_zeroed:
  description: Bytes made zero on the target without writing data (holes punched, BLKZEROOUT, NBD zero).
  returned: always
  type: int
bytes_skipped_zero:
  description: Zero bytes neither written nor zeroed because the target was known to be zero.
  returned: always
  type: int
bytes_unchanged:
  description: Bytes found identical on both sides (mode compare).
  returned: always
  type: int
bytes_differing:
  description: Bytes found different (mode compare).
  returned: always
  type: int
bytes_to_copy:
  description: Bytes that would be read and copied.
  returned: in check mode, except mode compare
  type: int
bytes_to_zero:
  description: Hole bytes that would be zeroed on the target.
  returned: in check mode, except mode compare
  type: int
extents_to_copy:
  description: Ranges that would be copied.
  returned: in check mode, except mode compare
  type: int
resumed:
  description: Whether an interrupted run of the same plan was continued.
  returned: always
  type: bool
bytes_resumed:
  description: Bytes already done by the interrupted run and skipped now.
  returned: always
  type: int
already_complete:
  description: Whether a completed run with the same O(sync_id) and plan made this run unnecessary.
  returned: always
  type: bool
request_size:
  description: Request size used.
  returned: always
  type: int
workers:
  description: Workers used.
  returned: always
  type: int
copy_seconds:
  description: Time spent copying, including the final flush and, with O(verify), the read-back of each piece.
  returned: when something was copied
  type: float
duration_seconds:
  description: Time of the whole run, including verification.
  returned: always
  type: float
throughput_bytes_per_second:
  description: Bytes of the plan processed per second of copying.
  returned: when something was copied
  type: int
verification:
  description: Per-extent checksum verification (also of a plan found already complete).
  returned: when O(verify=true) and not in check mode
  type: dict
  contains:
    algorithm:
      description: The checksum algorithm.
      type: str
    piece_size:
      description: Ranges are hashed in pieces of this size; an extent's digest is the hash of its piece digests.
      type: int
    extents:
      description: Extents verified.
      type: int
    bytes:
      description: Bytes verified.
      type: int
    zero_bytes_checked:
      description: Hole bytes checked to read as zeros.
      type: int
    source_digest:
      description: Digest over all extent digests of the source.
      type: str
    target_digest:
      description: Digest over all extent digests of the target.
      type: str
    passed:
      description: Whether all ranges matched.
      type: bool
    mismatch_count:
      description: Number of mismatching ranges.
      type: int
    mismatches:
      description: The first 100 mismatching ranges (C(offset), C(length)).
      type: list
      elements: dict
    checksum_file:
      description: Where per-extent checksums were written.
      type: str
    seconds:
      description: Time spent verifying after the copy (the read-back of pieces during the copy counts in
        RV(copy_seconds)).
      type: float
image_digest:
  description: Whole-image digests of source and target (also of a plan found already complete).
  returned: when O(image_digest=true) and not in check mode
  type: dict
  contains:
    algorithm:
      description: The checksum algorithm.
      type: str
    block_size:
      description: Block size of the digest (4 MiB).
      type: int
    length:
      description: Bytes covered (the source size).
      type: int
    source:
      description: Digest of the source.
      type: str
    target:
      description: Digest of the target.
      type: str
    match:
      description: Whether they are equal.
      type: bool
    seconds:
      description: Time spent.
      type: float
state_file:
  description: The resume state of this target.
  returned: always
  type: str
status_file:
  description: The progress file.
  returned: always
  type: str
sync_id:
  description: The O(sync_id) given.
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy import (
    DEFAULT_REQUEST_SIZE,
    DEFAULT_WORKERS,
    SyncRequest,
    VerificationError,
    run_sync,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_hash import MissingHashLibrary
from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy_io import (
    NBD_IMPORT_ERROR,
    BlockCopyError,
    MissingNbdBinding,
)


def argument_spec():
    return dict(
        src=dict(type="str", required=True),
        dest=dict(type="str", required=True),
        mode=dict(type="str", choices=["extents", "allocated", "all", "compare"]),
        extents=dict(type="list", elements="raw"),
        extent_file=dict(type="path"),
        extents_check=dict(type="str", choices=["normalize", "strict"], default="normalize"),
        dest_is_zero=dict(type="bool", default=False),
        create=dict(type="bool", default=True),
        verify=dict(type="bool", default=False),
        image_digest=dict(type="bool", default=False),
        checksum_algorithm=dict(type="str", choices=["xxh3", "blake3", "sha256"], default="xxh3"),
        checksum_file=dict(type="path"),
        resume=dict(type="str", choices=["auto", "restart"], default="auto"),
        state_dir=dict(type="path"),
        status_file=dict(type="path"),
        sync_id=dict(type="str"),
        request_size=dict(type="int", default=DEFAULT_REQUEST_SIZE),
        workers=dict(type="int", default=DEFAULT_WORKERS),
    )


def _diff(result, check_mode):
    dest = result.get("target")
    before = "target: %s\nsize: %s\n" % (dest, "absent" if result.get("dest_created") else result.get("dest_size"))
    if check_mode:
        written = result.get("bytes_to_copy", result.get("bytes_differing", 0))
        zeroed = result.get("bytes_to_zero", 0)
        extents = result.get("extents_to_copy", result.get("plan", {}).get("extents", 0))
    else:
        written = result.get("bytes_written", 0)
        zeroed = result.get("bytes_zeroed", 0)
        extents = result.get("plan", {}).get("extents", 0)
    after = "target: %s\nsize: %s\nranges from %s (mode %s): %d\nbytes written%s: %d\nbytes zeroed%s: %d\n" % (
        dest, result.get("dest_size"), result.get("source"), result.get("mode"), extents,
        " (at most, zeros are detected while copying)" if check_mode and result.get("mode") != "compare" else "",
        written, " (at most)" if check_mode else "", zeroed)
    return {"before_header": dest, "after_header": dest, "before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[("mode", "extents", ("extents", "extent_file"), True)],
    )
    p = module.params
    if p["checksum_file"] and not p["verify"]:
        module.fail_json(msg="checksum_file needs verify: true")
    if p["mode"] is None and p["extents"] is None and not p["extent_file"]:
        module.fail_json(msg="nothing to copy: give extents or extent_file, or set mode to allocated, all or compare")
    req = SyncRequest(
        src=p["src"], dest=p["dest"], mode=p["mode"], extents=p["extents"], extent_file=p["extent_file"],
        extents_check=p["extents_check"], dest_is_zero=p["dest_is_zero"], create=p["create"], verify=p["verify"],
        image_digest=p["image_digest"], checksum_algorithm=p["checksum_algorithm"],
        checksum_file=p["checksum_file"], resume=p["resume"], state_dir=p["state_dir"],
        status_file=p["status_file"], sync_id=p["sync_id"], request_size=p["request_size"],
        workers=p["workers"], check_mode=module.check_mode)
    try:
        result = run_sync(req, warn=module.warn)
    except MissingNbdBinding as exc:
        module.fail_json(msg=str(exc), exception=NBD_IMPORT_ERROR)
    except MissingHashLibrary as exc:
        module.fail_json(msg="%s; install it (pip install %s) or set checksum_algorithm: sha256" % (
            missing_required_lib(exc.library), exc.library), exception=exc.traceback)
    except VerificationError as exc:
        result = dict(exc.result)
        result["msg"] = str(exc)
        result["changed"] = bool(result.get("bytes_written") or result.get("bytes_zeroed")
                                 or result.get("dest_created"))
        module.fail_json(**result)
    except BlockCopyError as exc:
        module.fail_json(msg=str(exc), source=p["src"], target=p["dest"],
                         changed=getattr(exc, "target_changed", False))
    except Exception as exc:  # pylint: disable=broad-except
        module.fail_json(msg="block_sync from %s to %s failed unexpectedly: %s" % (p["src"], p["dest"], exc),
                         exception=traceback.format_exc(), changed=getattr(exc, "target_changed", False))
    if module._diff:
        result["diff"] = _diff(result, module.check_mode)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
