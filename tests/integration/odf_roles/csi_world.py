# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-bed controller for the CBT verification of the ODF role tests: it plays the CSI external
provisioner, the snapshot controller and the kubelet for one CSI driver, backed by the real
``csi-test-driver`` (tests/testbed/csi.py) whose snapshot metadata the real
``csi-snapshot-metadata`` sidecar serves.

* PVCs of a storage class whose provisioner is the driver get a volume in the driver, a bound
  PersistentVolume (``spec.csi``) and ``status.phase=Bound``.
* VolumeSnapshots of those PVCs get a snapshot in the driver, a VolumeSnapshotContent with
  ``status.snapshotHandle`` and ``readyToUse``, and their own status.
* Jobs whose pod mounts such a PVC as a raw block device and runs ``dd`` are executed: the ``dd``
  operands (``of`` = the device path, ``bs``, ``seek``, ``count``) become a write of random bytes
  through the driver's control API, then the Job is marked succeeded. Writes are recorded in
  ``writes``; with ``drop_writes`` the Job "succeeds" without writing (to prove a verification
  can fail).
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from testbed.core import log_dir
from testbed.olm_sim import ApiError, Kube, now, res_path

SIZES = {"": 1, "c": 1, "w": 2, "b": 512, "k": 1024, "K": 1024, "M": 1 << 20, "G": 1 << 30}


def parse_quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(text[:-len(suffix)]) * mult
    return int(text)


def parse_dd_size(text: str) -> int:
    unit = text[-1] if text and not text[-1].isdigit() else ""
    return int(text[:-1] if unit else text) * SIZES[unit]


class CsiWorld:
    """See the module docstring."""

    def __init__(self, cluster, driver, interval: float = 0.3, name: str = "csi-world"):
        self.kube = Kube(cluster)
        self.driver = driver
        self.interval = interval
        self.drop_writes = False
        self.writes: list = []
        self.errors: list = []
        self.events: list = []
        self.log = log_dir() / ("%s-%s.log" % (name, cluster.id))
        self._stop = threading.Event()
        self._thread = None
        self._volumes = {}     # (ns, pvc) -> volume id

    def start(self) -> "CsiWorld":
        self._thread = threading.Thread(target=self._run, name="csi-world", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _record(self, what):
        self.events.append(what)
        with open(self.log, "a") as handle:
            handle.write("%s %s\n" % (time.strftime("%H:%M:%S"), what))

    def _run(self):
        while not self._stop.is_set():
            for step in (self._provision, self._snapshot, self._run_jobs):
                try:
                    step()
                except ApiError as exc:
                    if exc.status in (404, 409) or "being terminated" in str(exc):
                        continue
                    self._error(exc)
                except Exception as exc:  # pylint: disable=broad-except
                    self._error(exc)
            self._stop.wait(self.interval)

    def _error(self, exc):
        msg = "%s: %s\n%s" % (type(exc).__name__, exc, traceback.format_exc())
        self.errors.append(msg)
        with open(self.log, "a") as handle:
            handle.write("ERROR " + msg + "\n")

    def _our_classes(self):
        return {s["metadata"]["name"] for s in self.kube.list("/apis/storage.k8s.io/v1/storageclasses")
                if s.get("provisioner") == self.driver.name}

    # ---- external-provisioner ------------------------------------------------------------------
    def _provision(self):
        classes = self._our_classes()
        for pvc in self.kube.list("/api/v1/persistentvolumeclaims"):
            meta, spec = pvc["metadata"], pvc.get("spec", {})
            if spec.get("storageClassName") not in classes or meta.get("deletionTimestamp"):
                continue
            if pvc.get("status", {}).get("phase") == "Bound":
                continue
            ns, name = meta["namespace"], meta["name"]
            volume = "vol-%s" % meta["uid"]
            size = parse_quantity(spec["resources"]["requests"]["storage"])
            self.driver.create_volume(volume, size)
            pv_name = "pvc-%s" % meta["uid"]
            self.kube.create("/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "annotations": {
                    "pv.kubernetes.io/provisioned-by": self.driver.name}},
                "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                         "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                         "volumeMode": spec.get("volumeMode", "Filesystem"),
                         "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec["storageClassName"],
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                                      "name": name, "uid": meta["uid"]},
                         "csi": {"driver": self.driver.name, "volumeHandle": volume}}})
            self.kube.merge("/api/v1/persistentvolumes/%s/status" % pv_name, {"status": {"phase": "Bound"}})
            self.kube.merge("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (ns, name),
                            {"spec": {"volumeName": pv_name}})
            self.kube.merge("/api/v1/namespaces/%s/persistentvolumeclaims/%s/status" % (ns, name), {"status": {
                "phase": "Bound", "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "capacity": {"storage": spec["resources"]["requests"]["storage"]}}})
            self._volumes[(ns, name)] = volume
            self._record("provisioned %s/%s as %s (%d bytes)" % (ns, name, volume, size))

    def _volume_of(self, ns, pvc_name):
        if (ns, pvc_name) in self._volumes:
            return self._volumes[(ns, pvc_name)]
        pvc = self.kube.get("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (ns, pvc_name))
        if not pvc or not pvc.get("spec", {}).get("volumeName"):
            return None
        pv = self.kube.get("/api/v1/persistentvolumes/%s" % pvc["spec"]["volumeName"])
        if not pv or pv["spec"].get("csi", {}).get("driver") != self.driver.name:
            return None
        return pv["spec"]["csi"]["volumeHandle"]

    # ---- snapshot-controller -------------------------------------------------------------------
    def _snapshot(self):
        classes = {c["metadata"]["name"] for c in self.kube.list(res_path("snapshot.storage.k8s.io/v1",
                                                                          "volumesnapshotclasses"))
                   if c.get("driver") == self.driver.name}
        for vs in self.kube.list(res_path("snapshot.storage.k8s.io/v1", "volumesnapshots")):
            meta, spec = vs["metadata"], vs.get("spec", {})
            if meta.get("deletionTimestamp") or vs.get("status", {}).get("boundVolumeSnapshotContentName"):
                continue
            if spec.get("volumeSnapshotClassName") not in classes:
                continue
            ns = meta["namespace"]
            volume = self._volume_of(ns, spec.get("source", {}).get("persistentVolumeClaimName"))
            if volume is None:
                continue
            handle = "snap-%s" % meta["uid"]
            self.driver.snapshot(handle, volume)
            content = "snapcontent-%s" % meta["uid"]
            self.kube.create(res_path("snapshot.storage.k8s.io/v1", "volumesnapshotcontents"), {
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": content},
                "spec": {"deletionPolicy": "Delete", "driver": self.driver.name,
                         "volumeSnapshotClassName": spec["volumeSnapshotClassName"],
                         "source": {"volumeHandle": volume},
                         "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                               "name": meta["name"], "namespace": ns, "uid": meta["uid"]}}})
            self.kube.merge(res_path("snapshot.storage.k8s.io/v1", "volumesnapshotcontents", name=content, sub="status"),
                            {"status": {"readyToUse": True, "snapshotHandle": handle,
                                        "creationTime": int(time.time() * 1e9)}})
            self.kube.merge(res_path("snapshot.storage.k8s.io/v1", "volumesnapshots", ns, meta["name"], "status"),
                            {"status": {"readyToUse": True, "boundVolumeSnapshotContentName": content,
                                        "creationTime": now()}})
            self._record("snapshot %s/%s of %s -> %s" % (ns, meta["name"], volume, handle))

    # ---- kubelet for dd Jobs -------------------------------------------------------------------
    def _run_jobs(self):
        for job in self.kube.list("/apis/batch/v1/jobs"):
            meta = job["metadata"]
            status = job.get("status", {})
            if meta.get("deletionTimestamp") or status.get("succeeded") or status.get("failed"):
                continue
            pod = job["spec"]["template"]["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            for container in pod.get("containers", []):
                devices = {d["devicePath"]: claims.get(d["name"]) for d in container.get("volumeDevices", [])}
                argv = container.get("command", []) + container.get("args", [])
                if not argv or argv[0] != "dd" or not devices:
                    continue
                ops = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
                pvc = devices.get(ops.get("of"))
                volume = self._volume_of(meta["namespace"], pvc) if pvc else None
                if volume is None:
                    continue   # not bound yet: the pod would not start either
                bs = parse_dd_size(ops.get("bs", "512"))
                offset = int(ops.get("seek", "0")) * bs
                length = int(ops.get("count", "1")) * bs
                if not self.drop_writes:
                    data = os.urandom(length)
                    for start in range(0, length, 1 << 20):
                        self.driver.write(volume, offset + start, data[start:start + (1 << 20)])
                self.writes.append({"namespace": meta["namespace"], "volume": volume, "offset": offset,
                                    "length": length, "dropped": self.drop_writes})
                stamp = now()
                self.kube.merge("/apis/batch/v1/namespaces/%s/jobs/%s/status" % (meta["namespace"], meta["name"]), {
                    "status": {"startTime": stamp, "completionTime": stamp, "succeeded": 1, "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                         "message": "Reached expected number of succeeded pods", "lastTransitionTime": stamp},
                        {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                         "message": "Reached expected number of succeeded pods", "lastTransitionTime": stamp}]}})
                self._record("Job %s/%s: dd wrote %d bytes at %d of %s%s" % (
                    meta["namespace"], meta["name"], length, offset, volume, " (DROPPED)" if self.drop_writes else ""))
