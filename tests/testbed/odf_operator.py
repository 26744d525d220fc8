# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-bed controllers that play ceph-csi-operator, the OpenShift service CA and the bits of
kube-controller-manager/kubelet/SCC admission that the ODF CBT tests need, against a real
kube-apiserver (no kubelet, no controller-manager runs in the test bed).

``FakeCephCsiOperator`` behaves like the ceph-csi-operator builds the ODF notes describe:

* It reconciles a Driver only when triggered: the Driver is created or updated (any change,
  annotations included: the real controller has no predicate on Drivers), the OperatorConfig's
  ``driverSpecDefaults`` change, or the operator pod is deleted (a restart; the pod is recreated).
  SnapshotMetadataService objects are **not** watched.
* It adds the ``csi-snapshot-metadata`` container to the RBD ctrlplugin Deployment only if its
  image has the CBT code (``profile.cbt_code``) and its gate holds: 4.20-4.23 builds look up a
  SnapshotMetadataService named after the Driver with *their* API version (v1alpha1 before 4.23,
  v1beta1 from 4.23; an unserved version reads as "absent"); later builds need only the
  ``tls-key`` volume and pass ``--audience``. The TLS mount exists only if the Driver has that volume.
* Images come from the built-in default, overlaid by the OperatorConfig's image-set ConfigMap and
  then the Driver's.

Rollouts play the Deployment/ReplicaSet controllers, SCC admission and the kubelet: pods of a new
template are admitted only if every volume type is allowed by the SecurityContextConstraints
(``FailedCreate`` event and a ``ReplicaFailure`` condition otherwise); the sidecar container is
ready only when its TLS mount exists and the Secret behind it has ``tls.crt`` and ``tls.key``
(``FailedMount`` events otherwise); Deployment and pod status are written through the status
subresources.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import random
import re
import string
import threading
import time
import traceback
from urllib.parse import quote, urlencode

from testbed.core import log_dir

SIDECAR = "csi-snapshot-metadata"
OPERATOR_POD_LABELS = {"control-plane": "ceph-csi-op-controller-manager"}
OPERATOR_CONFIG = "ceph-csi-operator-config"
NAME_RE = re.compile(r"^(?:.+\.)?(rbd|cephfs|nfs|nvmeof)\.csi\.ceph\.com$")
BASE_CONTAINERS = ["csi-rbdplugin", "csi-provisioner", "csi-resizer", "csi-attacher", "csi-snapshotter",
                   "csi-omap-generator", "csi-addons", "log-rotator"]
IMAGE_DEFAULTS = {
    "provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v5.2.0",
    "attacher": "registry.k8s.io/sig-storage/csi-attacher:v4.8.1",
    "resizer": "registry.k8s.io/sig-storage/csi-resizer:v1.13.2",
    "snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.2.1",
    "plugin": "quay.io/cephcsi/cephcsi:v3.15.0",
    "addons": "quay.io/csiaddons/k8s-sidecar:v0.12.0",
}
CONTAINER_IMAGE_KEY = {"csi-rbdplugin": "plugin", "csi-provisioner": "provisioner", "csi-resizer": "resizer",
                       "csi-attacher": "attacher", "csi-snapshotter": "snapshotter", "csi-omap-generator": "plugin",
                       "csi-addons": "addons", "log-rotator": "plugin"}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suffix(n=5):
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _unused in range(n))


class ApiError(Exception):
    def __init__(self, status, text):
        super().__init__("HTTP %s: %s" % (status, text[:500]))
        self.status = status
        self.text = text


class Rest:
    """Dict-in, dict-out REST calls through a kubernetes ``ApiClient`` (test-bed code, client >= 35)."""

    def __init__(self, api_client):
        self.client = api_client

    def req(self, method, path, body=None, query=None, content_type="application/json"):
        if query:
            path += "?" + urlencode(query)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.client.param_serialize(method, path, header_params=headers, auth_settings=["BearerToken"])
        method, url, hdrs = serialized[0], serialized[1], serialized[2]
        resp = self.client.call_api(method, url, header_params=hdrs,
                                    body=body, _request_timeout=30)
        resp.read()
        text = (resp.data or b"").decode()
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else {}

    def get(self, path):
        try:
            return self.req("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path, label_selector=None):
        query = {"labelSelector": label_selector} if label_selector else None
        try:
            return self.req("GET", path, query=query).get("items") or []
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise

    def create(self, path, body):
        return self.req("POST", path, body)

    def put(self, path, body):
        return self.req("PUT", path, body)

    def merge(self, path, body):
        return self.req("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path):
        try:
            self.req("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def event(self, namespace, kind, name, reason, message, etype="Warning", component="fake-controller"):
        """Record a core/v1 Event (deduplicated by object, reason and message like the real recorder)."""
        digest = hashlib.sha1(("%s/%s/%s/%s" % (kind, name, reason, message)).encode()).hexdigest()[:10]
        ev_name = "%s.%s" % (name, digest)
        path = "/api/v1/namespaces/%s/events" % namespace
        existing = self.get("%s/%s" % (path, ev_name))
        now = _now()
        if existing:
            existing["count"] = existing.get("count", 1) + 1
            existing["lastTimestamp"] = now
            self.put("%s/%s" % (path, ev_name), existing)
            return
        self.create(path, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": ev_name, "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace,
                               "apiVersion": "apps/v1" if kind in ("Deployment", "ReplicaSet") else "v1"},
            "reason": reason, "message": message, "type": etype, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": component},
        })


def _ns_path(namespace, plural, name=None, group=None, version="v1", sub=None):
    base = "/api/v1" if not group else "/apis/%s/%s" % (group, version)
    path = "%s/namespaces/%s/%s" % (base, namespace, plural)
    if name:
        path += "/" + quote(name, safe="")
    if sub:
        path += "/" + sub
    return path


class OperatorProfile:
    """What a ceph-csi-operator image does about the snapshot-metadata sidecar."""

    def __init__(self, version, cbt_code, sms_version, gate, passes_audience, sidecar_image):
        self.version = version
        self.cbt_code = cbt_code
        self.sms_version = sms_version      # API version of its SnapshotMetadataService client
        self.gate = gate                    # "sms" (SMS named after the Driver) or "volume" (tls-key volume)
        self.passes_audience = passes_audience
        self.sidecar_image = sidecar_image

    @classmethod
    def odf(cls, version, cbt_code=True):
        """The cephcsi-operator of an ODF release (``cbt_code=False``: an image built before PR #274)."""
        major, minor = (int(x) for x in version.split(".")[:2])
        ver = (major, minor)
        if ver < (4, 20):
            return cls(version, False, None, None, False, None)
        tag = "v0.1.0" if ver < (4, 22) else "v0.2.0" if ver < (4, 24) else "v1.0.0"
        return cls(version, cbt_code, "v1alpha1" if ver < (4, 23) else "v1beta1",
                   "sms" if ver < (4, 24) else "volume", ver >= (4, 24),
                   "registry.k8s.io/sig-storage/csi-snapshot-metadata:%s" % tag)

    @classmethod
    def upstream_main(cls):
        """ceph/ceph-csi-operator after PRs #513/#519: the tls-key volume alone turns the sidecar on."""
        return cls("upstream-main", True, "v1beta1", "volume", True,
                   "registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.0.0")


class _Loop:
    """A polling thread with a log file; errors are kept, logged and re-raised by ``check()``."""

    def __init__(self, api_client, name, poll=0.2):
        self.name = name
        self.rest = Rest(api_client)
        self.poll = poll
        self.errors = []
        self._stop = threading.Event()
        self._thread = None
        self._logf = open(log_dir() / ("%s.log" % self.name), "a")  # pylint: disable=consider-using-with

    def log(self, msg):
        self._logf.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))
        self._logf.flush()

    def tick(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # pylint: disable=broad-except
                self.errors.append(repr(exc))
                self.log("ERROR %s\n%s" % (exc, traceback.format_exc()))
            self._stop.wait(self.poll)

    def start(self):
        self.tick()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._logf.close()

    def check(self):
        if self.errors:
            raise AssertionError("%s failed: %s (log: %s)" % (self.name, self.errors[-3:],
                                                              log_dir() / ("%s.log" % self.name)))


class FakeCephCsiOperator(_Loop):
    """ceph-csi-operator for the Drivers of one namespace (see the module docstring)."""

    def __init__(self, api_client, namespace, profile, operator_namespace=None, scc_name="ceph-csi-op-scc",
                 poll=0.2, log_name=None):
        super().__init__(api_client, log_name or "fake-ceph-csi-operator-%s" % namespace, poll)
        self.namespace = namespace
        self.operator_namespace = operator_namespace or namespace
        self.profile = profile
        self.scc_name = scc_name
        self.reconciles = {}
        self.restarts = 0
        self._seen_driver_rv = {}
        self._seen_opconfig = None
        self._operator_pod_uid = None
        self._written_generation = {}

    # -- triggers ------------------------------------------------------------------------------
    def tick(self):
        restart = self._ensure_operator_pod()
        opconfig = self.rest.get(_ns_path(self.operator_namespace, "operatorconfigs", OPERATOR_CONFIG,
                                          "csi.ceph.io"))
        defaults = json.dumps(((opconfig or {}).get("spec") or {}).get("driverSpecDefaults"), sort_keys=True)
        all_drivers = restart or defaults != self._seen_opconfig
        self._seen_opconfig = defaults
        for driver in self.rest.list(_ns_path(self.namespace, "drivers", group="csi.ceph.io")):
            name = driver["metadata"]["name"]
            rv = driver["metadata"]["resourceVersion"]
            deploy = self.rest.get(_ns_path(self.namespace, "deployments", "%s-ctrlplugin" % name, "apps"))
            edited = deploy is not None and \
                deploy["metadata"].get("generation") != self._written_generation.get(name)
            if all_drivers or rv != self._seen_driver_rv.get(name) or deploy is None or edited:
                self._seen_driver_rv[name] = rv
                self.reconcile(driver, opconfig)
        for deploy in self.rest.list(_ns_path(self.namespace, "deployments", group="apps"),
                                     label_selector="app.kubernetes.io/managed-by=fake-ceph-csi-operator"):
            self.rollout(deploy)

    def _ensure_operator_pod(self):
        """The operator pod; recreate it when deleted and report a restart."""
        ns = self.operator_namespace
        self._ensure_sa(ns, "ceph-csi-controller-manager")
        pods = [p for p in self.rest.list(_ns_path(ns, "pods"), label_selector="control-plane=%s"
                                          % OPERATOR_POD_LABELS["control-plane"])
                if not p["metadata"].get("deletionTimestamp")]
        if pods:
            uid = pods[0]["metadata"]["uid"]
            first = self._operator_pod_uid is None
            self._operator_pod_uid = uid
            return first
        pod = self.rest.create(_ns_path(ns, "pods"), {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ceph-csi-controller-manager-%s" % _suffix(), "labels": dict(OPERATOR_POD_LABELS)},
            "spec": {"serviceAccountName": "ceph-csi-controller-manager",
                     "containers": [{"name": "manager", "image": "quay.io/ocs-dev/cephcsi-operator:%s"
                                     % self.profile.version, "args": ["--leader-elect"]}]},
        })
        self._set_pod_status(pod, {"manager": True})
        restarted = self._operator_pod_uid is not None
        self._operator_pod_uid = pod["metadata"]["uid"]
        if restarted:
            self.restarts += 1
            self.log("operator pod recreated (restart #%d): reconciling every Driver" % self.restarts)
        return True

    def _ensure_sa(self, ns, name):
        if self.rest.get(_ns_path(ns, "serviceaccounts", name)) is None:
            try:
                self.rest.create(_ns_path(ns, "serviceaccounts"),
                                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
            except ApiError as exc:
                if exc.status != 409:
                    raise

    # -- the Driver reconcile ------------------------------------------------------------------
    def _sms_exists(self, name):
        version = self.profile.sms_version
        path = "/apis/cbt.storage.k8s.io/%s/snapshotmetadataservices/%s" % (version, quote(name, safe=""))
        return self.rest.get(path) is not None   # 404 for "no such object" and for "no such API version"

    def _imageset(self, namespace, name, what):
        cm = self.rest.get(_ns_path(namespace, "configmaps", name))
        if cm is None:
            raise ApiError(404, "%s image set ConfigMap %s/%s not found" % (what, namespace, name))
        return cm.get("data") or {}

    def reconcile(self, driver, opconfig):
        name = driver["metadata"]["name"]
        self.reconciles[name] = self.reconciles.get(name, 0) + 1
        match = NAME_RE.match(name)
        if not match:
            self.log("reconcile %s: invalid driver name" % name)
            return
        dtype = match.group(1)
        defaults = ((opconfig or {}).get("spec") or {}).get("driverSpecDefaults") or {}
        spec = driver.get("spec") or {}
        images = dict(IMAGE_DEFAULTS)
        if self.profile.sidecar_image:
            images["snapshot-metadata"] = self.profile.sidecar_image
        try:
            if (defaults.get("imageSet") or {}).get("name"):
                images.update(self._imageset(self.operator_namespace, defaults["imageSet"]["name"], "operator config"))
            if (spec.get("imageSet") or {}).get("name"):
                images.update(self._imageset(self.namespace, spec["imageSet"]["name"], "driver"))
        except ApiError as exc:
            self.log("reconcile %s failed: %s" % (name, exc))
            return
        cp = spec.get("controllerPlugin") or {}
        volumes = cp.get("volumes") or ((defaults.get("controllerPlugin") or {}).get("volumes")) or []
        tls_entry = next((v for v in volumes if (v.get("volume") or {}).get("name") == "tls-key"), None)
        sidecar = False
        if self.profile.cbt_code and dtype == "rbd":
            sidecar = self._sms_exists(name) if self.profile.gate == "sms" else tls_entry is not None
        deploy_name = "%s-ctrlplugin" % name
        containers = []
        for cname in BASE_CONTAINERS:
            containers.append({"name": cname, "image": images[CONTAINER_IMAGE_KEY[cname]],
                               "args": ["--v=0"], "volumeMounts": [{"name": "socket-dir", "mountPath": "/csi"}]})
        if sidecar:
            args = ["--v=0", "--timeout=150s", "--port=50051", "--csi-address=unix:///csi/csi-provisioner.sock",
                    "--tls-cert=/tmp/certificates/tls.crt", "--tls-key=/tmp/certificates/tls.key"]
            if self.profile.passes_audience:
                args.append("--audience=%s" % name)
            mounts = [{"name": "socket-dir", "mountPath": "/csi"}]
            if tls_entry is not None:
                mounts.append(tls_entry.get("mount") or {"name": "tls-key", "mountPath": "/tmp/certificates"})
            containers.append({"name": SIDECAR, "image": images["snapshot-metadata"], "args": args,
                               "ports": [{"containerPort": 50051, "protocol": "TCP"}], "volumeMounts": mounts})
        pod_volumes = [v.get("volume") for v in volumes if v.get("volume")] + [
            {"name": "socket-dir", "emptyDir": {"medium": "Memory"}},
            {"name": "host-dev", "hostPath": {"path": "/dev"}},
            {"name": "ceph-csi-configs", "projected": {"sources": [{"configMap": {"name": "ceph-csi-config"}}]}},
            {"name": "keys-tmp-dir", "emptyDir": {"medium": "Memory"}},
        ]
        body = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deploy_name, "namespace": self.namespace,
                         "labels": {"app": deploy_name, "app.kubernetes.io/managed-by": "fake-ceph-csi-operator"},
                         "ownerReferences": [{"apiVersion": "csi.ceph.io/v1", "kind": "Driver", "name": name,
                                              "uid": driver["metadata"]["uid"], "controller": True}]},
            "spec": {
                "replicas": cp.get("replicas", 2),
                "selector": {"matchLabels": {"app": deploy_name}},
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": {"app": deploy_name}},
                    "spec": {"serviceAccountName": "ceph-csi-%s-ctrlplugin-sa" % dtype,
                             "containers": containers, "volumes": pod_volumes},
                },
            },
        }
        self._ensure_sa(self.namespace, "ceph-csi-%s-ctrlplugin-sa" % dtype)
        path = _ns_path(self.namespace, "deployments", deploy_name, "apps")
        current = self.rest.get(path)
        if current is None:
            out = self.rest.create(_ns_path(self.namespace, "deployments", group="apps"), body)
        else:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            out = self.rest.put(path, body)
        self._written_generation[name] = out["metadata"].get("generation")
        self.log("reconciled %s (#%d): %d containers%s, generation %s" % (
            name, self.reconciles[name], len(containers), " with sidecar" if sidecar else "",
            out["metadata"].get("generation")))

    # -- Deployment/ReplicaSet controller, SCC admission and kubelet ------------------------------
    def _scc_refusal(self, pod_spec):
        if not self.scc_name:
            return None
        scc = self.rest.get("/apis/security.openshift.io/v1/securitycontextconstraints/%s" % self.scc_name)
        if scc is None:
            return None
        allowed = scc.get("volumes") or []
        if "*" in allowed:
            return None
        for idx, vol in enumerate(pod_spec.get("volumes") or []):
            vtype = next((k for k in vol if k != "name"), None)
            if vtype not in allowed:
                return ("unable to validate against any security context constraint: [provider \"%s\": "
                        "spec.volumes[%d]: Invalid value: \"%s\": %s volumes are not allowed to be used]"
                        % (self.scc_name, idx, vtype, vtype))
        return None

    def _secret_ok(self, ns, pod_spec, volume_name):
        vol = next((v for v in pod_spec.get("volumes") or [] if v.get("name") == volume_name), None)
        if vol is None:
            return False, "volume %s not defined" % volume_name
        names = []
        if "secret" in vol:
            names.append(vol["secret"].get("secretName"))
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                names.append(src["secret"].get("name"))
        for sname in names:
            secret = self.rest.get(_ns_path(ns, "secrets", sname))
            if secret is None:
                return False, "MountVolume.SetUp failed for volume \"%s\" : secret \"%s\" not found" % (
                    volume_name, sname)
            data = secret.get("data") or {}
            if "tls.crt" not in data or "tls.key" not in data:
                return False, "secret %s has no tls.crt/tls.key" % sname
        return True, None

    def _container_ready(self, ns, pod):
        """{container: ready} like a kubelet would see it, plus events to record."""
        spec = pod["spec"]
        ready = {}
        events = []
        mount_ok = {}
        for vol in spec.get("volumes") or []:
            if "secret" in vol or "projected" in vol:
                ok, why = self._secret_ok(ns, spec, vol["name"])
                mount_ok[vol["name"]] = ok
                if not ok and why and why.startswith("MountVolume"):
                    events.append(("FailedMount", why))
        pod_mountable = all(mount_ok.values())
        for cont in spec["containers"]:
            good = pod_mountable
            if cont["name"] == SIDECAR:
                tls_mount = next((m for m in cont.get("volumeMounts") or []
                                  if m.get("mountPath") == "/tmp/certificates"), None)
                if tls_mount is None:
                    good = False
                    if pod_mountable:
                        events.append(("BackOff", "Back-off restarting failed container %s: open "
                                       "/tmp/certificates/tls.crt: no such file or directory" % SIDECAR))
                elif not mount_ok.get(tls_mount["name"], False):
                    good = False
            ready[cont["name"]] = good
        return ready, events

    def _set_pod_status(self, pod, ready):
        statuses = []
        for cont in pod["spec"]["containers"]:
            ok = ready.get(cont["name"], False)
            state = {"running": {"startedAt": _now()}} if ok else {"waiting": {"reason": "ContainerCreating"}}
            statuses.append({"name": cont["name"], "image": cont["image"], "imageID": "", "ready": ok,
                             "started": ok, "restartCount": 0, "state": state})
        all_ready = all(s["ready"] for s in statuses)
        status = {
            "phase": "Running" if all_ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if all_ready else "False",
                            "lastTransitionTime": _now()},
                           {"type": "ContainersReady", "status": "True" if all_ready else "False",
                            "lastTransitionTime": _now()}],
            "containerStatuses": statuses,
        }
        old = pod.get("status") or {}
        if [(s["name"], s["ready"]) for s in old.get("containerStatuses") or []] == \
                [(s["name"], s["ready"]) for s in statuses]:
            return all_ready
        self.rest.merge(_ns_path(pod["metadata"]["namespace"], "pods", pod["metadata"]["name"], sub="status"),
                        {"status": status})
        return all_ready

    def rollout(self, deploy):
        ns = deploy["metadata"]["namespace"]
        name = deploy["metadata"]["name"]
        template = deploy["spec"]["template"]
        thash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        replicas = deploy["spec"].get("replicas", 1)
        gen = deploy["metadata"].get("generation", 1)
        pods = [p for p in self.rest.list(_ns_path(ns, "pods"), label_selector="app=%s" % name)
                if not p["metadata"].get("deletionTimestamp")]
        current = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == thash]
        old = [p for p in pods if p not in current]
        rs_name = "%s-%s" % (name, thash)
        conditions = []
        if len(current) < replicas:
            refusal = self._scc_refusal(template["spec"])
            if refusal:
                msg = "Error creating: pods \"%s-\" is forbidden: %s" % (rs_name, refusal)
                self.rest.event(ns, "ReplicaSet", rs_name, "FailedCreate", msg, component="replicaset-controller")
                ready_old = sum(1 for p in old if all(c.get("ready") for c in
                                                      (p.get("status") or {}).get("containerStatuses") or []))
                conditions = [
                    {"type": "Available", "status": "True" if ready_old >= replicas else "False",
                     "reason": "MinimumReplicasAvailable" if ready_old >= replicas else "MinimumReplicasUnavailable",
                     "message": "Deployment has %s availability." % ("minimum" if ready_old else "no")},
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                     "message": "ReplicaSet \"%s\" is progressing." % rs_name},
                    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": msg},
                ]
                self._write_deploy_status(deploy, {"observedGeneration": gen, "replicas": len(old),
                                                   "updatedReplicas": 0, "readyReplicas": ready_old,
                                                   "availableReplicas": ready_old,
                                                   "unavailableReplicas": max(replicas - ready_old, 0),
                                                   "conditions": conditions})
                return
            for pod in old:
                self.rest.delete(_ns_path(ns, "pods", pod["metadata"]["name"]))
            for _unused in range(replicas - len(current)):
                labels = dict(template["metadata"].get("labels") or {}, **{"pod-template-hash": thash})
                pod = self.rest.create(_ns_path(ns, "pods"), {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "%s-%s" % (rs_name, _suffix()), "labels": labels},
                    "spec": template["spec"],
                })
                current.append(pod)
            self.log("rollout %s: %d pods of template %s" % (name, len(current), thash))
        for pod in current[replicas:]:
            self.rest.delete(_ns_path(ns, "pods", pod["metadata"]["name"]))
        current = current[:replicas]
        n_ready = 0
        for pod in current:
            ready, events = self._container_ready(ns, pod)
            for reason, message in events:
                self.rest.event(ns, "Pod", pod["metadata"]["name"], reason, message, component="kubelet")
            if self._set_pod_status(pod, ready):
                n_ready += 1
        conditions = [
            {"type": "Available", "status": "True" if n_ready >= replicas else "False",
             "reason": "MinimumReplicasAvailable" if n_ready >= replicas else "MinimumReplicasUnavailable",
             "message": "Deployment has %s availability." % ("minimum" if n_ready >= replicas else "no")},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if n_ready >= replicas else "ReplicaSetUpdated",
             "message": "ReplicaSet \"%s\" has %s." % (rs_name, "successfully progressed" if n_ready >= replicas
                                                       else "is progressing")},
        ]
        self._write_deploy_status(deploy, {"observedGeneration": gen, "replicas": len(current),
                                           "updatedReplicas": len(current), "readyReplicas": n_ready,
                                           "availableReplicas": n_ready,
                                           "unavailableReplicas": max(replicas - n_ready, 0),
                                           "conditions": conditions})

    def _write_deploy_status(self, deploy, status):
        old = deploy.get("status") or {}
        keys = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        same = all(old.get(k, 0) == status.get(k, 0) for k in keys) and \
            [(c.get("type"), c.get("status"), c.get("reason")) for c in old.get("conditions") or []] == \
            [(c["type"], c["status"], c["reason"]) for c in status["conditions"]]
        if same:
            return
        for cond in status["conditions"]:
            cond.setdefault("lastUpdateTime", _now())
            cond.setdefault("lastTransitionTime", _now())
        self.rest.merge(_ns_path(deploy["metadata"]["namespace"], "deployments", deploy["metadata"]["name"],
                                 "apps", sub="status"), {"status": status})


class FakeServiceCA(_Loop):
    """The OpenShift service CA operator: serving-cert Secrets, CA bundle injection, and the
    ``openshift-service-ca.crt`` ConfigMap in every namespace."""

    def __init__(self, api_client, poll=0.2, log_name="fake-service-ca"):
        super().__init__(api_client, log_name, poll)
        # test-bed CA (cryptography is a test requirement)
        from cryptography import x509  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
        from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel
        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshift-service-serving-signer@test")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                        .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(minutes=5))
                        .not_valid_after(now + datetime.timedelta(days=780))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM).decode()

    def _serving_cert(self, service, namespace):
        x509, ser = self._x509, self._ser
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        names = ["%s.%s.svc" % (service, namespace), "%s.%s.svc.cluster.local" % (service, namespace)]
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, names[0])]))
                .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=730))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(self.ca_key, self._hashes.SHA256()))
        crt = cert.public_bytes(ser.Encoding.PEM) + self.ca_cert.public_bytes(ser.Encoding.PEM)
        pkey = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return crt, pkey

    def tick(self):
        for ns in self.rest.list("/api/v1/namespaces"):
            nsname = ns["metadata"]["name"]
            if ns.get("status", {}).get("phase") == "Terminating":
                continue
            path = _ns_path(nsname, "configmaps", "openshift-service-ca.crt")
            if self.rest.get(path) is None:
                self.rest.create(_ns_path(nsname, "configmaps"), {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "openshift-service-ca.crt",
                                 "annotations": {"service.beta.openshift.io/inject-cabundle": "true"}},
                    "data": {"service-ca.crt": self.ca_pem}})
        for svc in self.rest.list("/api/v1/services"):
            ann = svc["metadata"].get("annotations") or {}
            secret_name = ann.get("service.beta.openshift.io/serving-cert-secret-name")
            if not secret_name:
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            if self.rest.get(_ns_path(ns, "secrets", secret_name)) is None:
                current = self.rest.get(_ns_path(ns, "services", name))
                if current is None or current["metadata"]["uid"] != svc["metadata"]["uid"]:
                    continue  # deleted since the list: no certificate for a Service that is gone
                crt, key = self._serving_cert(name, ns)
                self.rest.create(_ns_path(ns, "secrets"), {
                    "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": secret_name, "annotations": {
                        "service.beta.openshift.io/originating-service-name": name,
                        "service.beta.openshift.io/originating-service-uid": svc["metadata"]["uid"]},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                             "uid": svc["metadata"]["uid"]}]},
                    "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}})
                self.log("serving cert %s/%s for Service %s" % (ns, secret_name, name))
            if ann.get("service.beta.openshift.io/serving-cert-signed-by") is None:
                self.rest.merge(_ns_path(ns, "services", name), {"metadata": {"annotations": {
                    "service.beta.openshift.io/serving-cert-signed-by": "openshift-service-serving-signer@test"}}})
        # the garbage collector's part: a serving certificate goes with the Service that owns it
        services = set((v["metadata"]["namespace"], v["metadata"]["uid"]) for v in self.rest.list("/api/v1/services"))
        for secret in self.rest.list("/api/v1/secrets"):
            meta = secret["metadata"]
            owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Service"]
            if owners and (meta.get("annotations") or {}).get("service.beta.openshift.io/originating-service-name") \
                    and not any((meta["namespace"], o.get("uid")) in services for o in owners):
                self.rest.delete(_ns_path(meta["namespace"], "secrets", meta["name"]))
                self.log("serving cert %s/%s removed with its Service" % (meta["namespace"], meta["name"]))
        for cm in self.rest.list("/api/v1/configmaps"):
            ann = cm["metadata"].get("annotations") or {}
            if ann.get("service.beta.openshift.io/inject-cabundle") == "true" and \
                    (cm.get("data") or {}).get("service-ca.crt") != self.ca_pem:
                self.rest.merge(_ns_path(cm["metadata"]["namespace"], "configmaps", cm["metadata"]["name"]),
                                {"data": {"service-ca.crt": self.ca_pem}})
