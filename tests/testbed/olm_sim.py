# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A test controller that plays OLM and the ODF operators against a real kube-apiserver.

The test bed has no kube-controller-manager, no kubelet and no OLM. This controller polls the API
server and does what those would do for the ODF roles:

* **OLM** - marks CatalogSources READY; resolves Subscriptions against a small in-memory catalog
  (chosen by the CatalogSource image), creating the dependent Subscriptions of ``odf-operator``
  (as ``odf-dependencies`` does) and one InstallPlan (``RequiresApproval`` with Manual approval);
  once approved, installs the bundles' CRDs (from ``tests/integration/odf_roles/crds``), the CSVs,
  their operator Deployments and the cluster-scoped ``Operator`` objects; moves CSVs to
  ``Succeeded`` after their Deployments rolled out; re-applies a CSV's deployment spec when the CSV
  changes (``olm.deployment-spec-hash``), which is how a patched image rolls out.
* **Deployment controller and kubelet** for OLM-owned Deployments: creates pods, marks them Running
  and Ready with an ``imageID``, deletes pods of older templates and updates the Deployment status.
* **ocs-operator / rook / ceph-csi-operator / odf-operator** - StorageCluster finalizer, default
  uninstall annotations, CephCluster, storage classes, snapshot class, CSIDrivers, StorageClient,
  ceph-csi Driver and ClientProfile (finalizer ``csi.ceph.com/cleanup``, released only while the
  ceph-csi CSV exists), status phase ``Ready``; on deletion it honours
  ``uninstall.ocs.openshift.io/mode`` (graceful waits while PVCs/OBCs use ODF storage) and
  ``uninstall.ocs.openshift.io/cleanup-policy`` (``delete`` runs ``cluster-cleanup-job-<node>``
  Jobs), then releases its finalizers. odf-operator publishes ConsolePlugin ``odf-console``.
* **Namespace controller** - deletes the content of terminating namespaces, reports
  ``NamespaceContentRemaining`` / ``NamespaceFinalizersRemaining`` conditions like the real
  controller, and finalizes the namespace (``/finalize``) once it is empty.
* **Garbage collection** of the Deployments and pods of deleted CSVs.

Tests steer it with ``hold`` (kinds or ``Kind/name`` whose finalizers it never releases),
``unready_catalogs``, ``failing_csvs``, ``never_ready_storageclusters``, ``unpullable_images`` and
``failing_cleanup_jobs``. ``events`` records what it did; ``errors`` what went wrong (tests assert
it stays empty).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import threading
import time
import traceback
from pathlib import Path

import requests
import yaml

from testbed.core import log_dir

CRD_DIR = Path(__file__).resolve().parents[1] / "integration" / "odf_roles" / "crds"
PLATFORM_CRD_FILES = ("olm.yaml", "openshift.yaml", "snapshot.yaml")

OLM_GROUP = "operators.coreos.com"
SC_FINALIZER = "storagecluster.ocs.openshift.io"
CEPHCLUSTER_FINALIZER = "cephcluster.ceph.rook.io"
STORAGECLIENT_FINALIZER = "storageclient.ocs.openshift.io"
CLIENTPROFILE_FINALIZER = "csi.ceph.com/cleanup"
CLIENT_CONFIG_FINALIZER = "ocs-client-operator.ocs.openshift.io/storageused"
NODE_LABEL = "cluster.ocs.openshift.io/openshift-storage"
MODE_ANN = "uninstall.ocs.openshift.io/mode"
POLICY_ANN = "uninstall.ocs.openshift.io/cleanup-policy"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_hash(obj, length=10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------------------------
# The catalog
# ------------------------------------------------------------------------------------------------

class Bundle:
    """One operator bundle in the simulated catalog."""

    def __init__(self, package, csv, deployments=(), crd_groups=(), console_plugin=None, version=None,
                 cluster_permissions=()):
        self.package = package
        self.cluster_permissions = list(cluster_permissions)
        self.csv = csv
        self.deployments = list(deployments)    # (deployment name, container name, image)
        self.crd_groups = list(crd_groups)
        self.console_plugin = console_plugin
        self.version = version or csv.split(".v", 1)[-1]

    def csv_spec(self):
        deployments = []
        for name, container, image in self.deployments:
            labels = {"app.kubernetes.io/name": name}
            deployments.append({
                "name": name,
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": name,
                            "containers": [{"name": container, "image": image, "args": ["--leader-elect"],
                                            "command": ["/" + container]}],
                        },
                    },
                },
            })
        return {
            "displayName": self.package,
            "version": self.version,
            "install": {"strategy": "deployment", "spec": {"deployments": deployments,
                                                           "clusterPermissions": self.cluster_permissions}},
            "installModes": [{"type": "OwnNamespace", "supported": True}],
        }


def odf_catalog(version: str = "4.20") -> list:
    """The 11 ODF bundles of 4.20 (upstream CSV names) or 4.19 (z-stream .5)."""
    if version == "4.20":
        v, nb, addons = "4.20.0", "5.20.0", "0.13.0"
        cephcsi_image = "quay.io/ocs-dev/cephcsi-operator:main-f73fca8"
    elif version == "4.19":
        v, nb, addons = "4.19.5", "5.19.5", "0.12.0"
        cephcsi_image = "quay.io/ocs-dev/cephcsi-operator:release-4.19"
    else:
        raise ValueError("no simulated catalog for ODF %s" % version)

    def img(name):
        return "quay.io/ocs-dev/%s:%s" % (name, v)

    bundles = [
        Bundle("odf-operator", "odf-operator.v%s" % v,
               [("odf-operator-controller-manager", "manager", img("odf-operator"))],
               crd_groups=["odf.openshift.io"] if version == "4.19" else [], console_plugin="odf-console"),
        Bundle("odf-dependencies", "odf-dependencies.v%s" % v),
        Bundle("ocs-operator", "ocs-operator.v%s" % v, [("ocs-operator", "ocs-operator", img("ocs-operator"))],
               crd_groups=["ocs.openshift.io"]),
        Bundle("ocs-client-operator", "ocs-client-operator.v%s" % v,
               [("ocs-client-operator-controller-manager", "manager", img("ocs-client-operator"))]),
        Bundle("rook-ceph-operator", "rook-ceph-operator.v%s" % v,
               [("rook-ceph-operator", "rook-ceph-operator", img("rook-ceph"))], crd_groups=["ceph.rook.io"]),
        Bundle("mcg-operator", "noobaa-operator.v%s" % nb, [("noobaa-operator", "noobaa-operator", img("mcg-operator"))],
               crd_groups=["noobaa.io", "objectbucket.io"]),
        Bundle("odf-csi-addons-operator", "csi-addons.v%s" % addons,
               [("csi-addons-controller-manager", "manager", img("csi-addons"))], crd_groups=["csiaddons.openshift.io"]),
        Bundle("cephcsi-operator", "cephcsi-operator.v%s" % v,
               [("ceph-csi-controller-manager", "manager", cephcsi_image)], crd_groups=["csi.ceph.io"],
               cluster_permissions=[{"serviceAccountName": "ceph-csi-controller-manager", "rules": [
                   {"apiGroups": ["csi.ceph.io"], "resources": ["drivers", "operatorconfigs"],
                    "verbs": ["get", "list", "watch", "update", "patch"]}] + (
                   # The release-4.20 bundle grants the operator read access to SnapshotMetadataServices.
                   [{"apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"],
                     "verbs": ["get", "list", "watch"]}] if version == "4.20" else [])}]),
        Bundle("odf-prometheus-operator", "odf-prometheus-operator.v%s" % v,
               [("odf-prometheus-operator", "prometheus-operator", img("odf-prometheus-operator"))]),
        Bundle("recipe", "recipe.v0.0.1", [("recipe-controller-manager", "manager", img("recipe"))]),
        Bundle("odf-external-snapshotter-operator", "odf-external-snapshotter-operator.v%s" % v,
               [("snapshot-controller", "snapshot-controller", img("odf-external-snapshotter"))]),
    ]
    return bundles


def catalog_for_image(image: str) -> list:
    return odf_catalog("4.19" if "4.19" in (image or "") else "4.20")


def crd_documents(files=None, groups=None) -> list:
    """CRD manifests from the test CRD folder, optionally limited to files or API groups."""
    docs = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        if files is not None and path.name not in files:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and (groups is None or doc["spec"]["group"] in groups):
                docs.append(doc)
    return docs


# ------------------------------------------------------------------------------------------------
# A small REST client (requests + the cluster's admin client certificate)
# ------------------------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status, method, path, body):
        self.status = status
        super().__init__("%s %s -> %s: %s" % (method, path, status, str(body)[:500]))


def res_path(api_version: str, plural: str, namespace=None, name=None, sub=None) -> str:
    base = "/api/v1" if api_version == "v1" else "/apis/%s" % api_version
    parts = [base]
    if namespace:
        parts.append("namespaces/%s" % namespace)
    parts.append(plural)
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


class Kube:
    """Minimal JSON REST access to the test cluster as its admin."""

    def __init__(self, cluster):
        self.base = cluster.host.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False   # REQUESTS_CA_BUNDLE would override the cluster CA
        self.verify = str(cluster.ca_file)
        self.session.cert = (str(cluster.admin_cert_file), str(cluster.admin_key_file))

    def request(self, method, path, body=None, params=None, content_type="application/json", ok404=False):
        for attempt in range(20):
            resp = self.session.request(method, self.base + path, params=params,
                                        data=None if body is None else json.dumps(body),
                                        headers={"Content-Type": content_type, "Accept": "application/json"},
                                        verify=self.verify, timeout=30)
            # 429 "storage is (re)initializing" follows CRD changes for a moment.
            if resp.status_code != 429 or attempt == 19:
                break
            time.sleep(0.25)
        if resp.status_code == 404 and ok404:
            return None
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, method, path, resp.text)
        return resp.json() if resp.content else {}

    def get(self, path):
        return self.request("GET", path, ok404=True)

    def list(self, path, label_selector=None):
        params = {"labelSelector": label_selector} if label_selector else None
        doc = self.request("GET", path, params=params, ok404=True)
        return (doc or {}).get("items", [])

    def create(self, path, obj, ok_exists=True):
        try:
            return self.request("POST", path, obj)
        except ApiError as exc:
            if exc.status == 409 and ok_exists:
                return None
            raise

    def merge(self, path, patch, ok404=True):
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json", ok404=ok404)

    def json_patch(self, path, ops, ok404=True):
        return self.request("PATCH", path, ops, content_type="application/json-patch+json", ok404=ok404)

    def put(self, path, obj, ok404=True):
        return self.request("PUT", path, obj, ok404=ok404)

    def delete(self, path, grace=None):
        # Background propagation, as the namespace controller and the garbage collector do: the API's
        # default for batch/v1 Jobs is "orphan", whose finalizer only the (absent) garbage collector removes.
        params = {"propagationPolicy": "Background"}
        if grace is not None:
            params["gracePeriodSeconds"] = grace
        return self.request("DELETE", path, params=params, ok404=True)

    def apply_crds(self, docs, timeout=30.0):
        """Create CRDs that do not exist yet and wait until they are Established."""
        names = []
        for doc in docs:
            names.append(doc["metadata"]["name"])
            self.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending and time.monotonic() < deadline:
            still = []
            for name in pending:
                crd = self.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/%s" % name) or {}
                conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
                if conds.get("Established") != "True" or crd.get("metadata", {}).get("deletionTimestamp"):
                    still.append(name)
            pending = still
            if pending:
                time.sleep(0.1)
        if pending:
            raise RuntimeError("CRDs not Established within %.0f s: %s" % (timeout, ", ".join(pending)))
        # Discovery of new groups lags a little behind Established.
        time.sleep(0.3)


# ------------------------------------------------------------------------------------------------
# The simulator
# ------------------------------------------------------------------------------------------------

class OlmSim:
    """See the module docstring."""

    def __init__(self, cluster, interval: float = 0.3, name: str = "olm-sim"):
        self.cluster = cluster
        self.kube = Kube(cluster)
        self.interval = interval
        self.name = name
        self.hold: set = set()
        self.unready_catalogs: set = set()
        self.failing_csvs: set = set()
        self.never_ready_storageclusters: set = set()
        self.unpullable_images: set = set()
        self.failing_cleanup_jobs = False
        self.events: list = []
        self.errors: list = []
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._discovery = (0.0, [])
        self._ensured: set = set()
        self.log = log_dir() / ("%s.log" % name)

    # ---- life cycle -----------------------------------------------------------------------------

    def install_platform_crds(self):
        """OLM, OpenShift and snapshot CRDs: what OpenShift itself provides."""
        self.kube.apply_crds(crd_documents(files=PLATFORM_CRD_FILES))

    def start(self) -> "OlmSim":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _record(self, what: str):
        line = "%s %s" % (time.strftime("%H:%M:%S"), what)
        with self._lock:
            self.events.append(what)
        with open(self.log, "a") as handle:
            handle.write(line + "\n")

    def _run(self):
        while not self._stop.is_set():
            self.reconcile_once()
            self._stop.wait(self.interval)

    def _guard(self, step, *args):
        """Run one reconcile step; record unexpected errors without stopping the other steps."""
        try:
            step(*args)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in str(exc):
                return   # a controller writing into a terminating namespace: refused, as in a real cluster
            if exc.status == 404 and "namespaces" in str(exc) and "not found" in str(exc):
                return   # acting on a list taken before the namespace went away
            self._error(exc)
        except Exception as exc:  # pylint: disable=broad-except
            self._error(exc)

    def _error(self, exc):
        msg = "%s: %s\n%s" % (type(exc).__name__, exc, traceback.format_exc())
        with self._lock:
            self.errors.append(msg)
        with open(self.log, "a") as handle:
            handle.write("ERROR " + msg + "\n")

    def events_matching(self, text: str) -> list:
        with self._lock:
            return [e for e in self.events if text in e]

    def held(self, kind: str, name: str) -> bool:
        return kind in self.hold or ("%s/%s" % (kind, name)) in self.hold

    # ---- one pass -------------------------------------------------------------------------------

    def reconcile_once(self):
        k, g = self.kube, self._guard
        lists = {}

        def fetch(key, path, label_selector=None):
            lists[key] = k.list(path, label_selector=label_selector)

        g(fetch, "catalogsources", res_path("%s/v1alpha1" % OLM_GROUP, "catalogsources"))
        for cs in lists.get("catalogsources", []):
            g(self._catalog_source, cs)
        g(fetch, "subscriptions", res_path("%s/v1alpha1" % OLM_GROUP, "subscriptions"))
        for sub in lists.get("subscriptions", []):
            g(self._subscription, sub)
        g(fetch, "installplans", res_path("%s/v1alpha1" % OLM_GROUP, "installplans"))
        for ip in lists.get("installplans", []):
            g(self._install_plan, ip)
        g(fetch, "csvs", res_path("%s/v1alpha1" % OLM_GROUP, "clusterserviceversions"))
        csvs = lists.get("csvs")
        if csvs is None:
            return
        for csv in csvs:
            g(self._csv, csv)
        g(self._garbage_collect, csvs)
        g(fetch, "deployments", "/apis/apps/v1/deployments", "olm.owner")
        for dep in lists.get("deployments", []):
            g(self._deployment, dep)
        g(fetch, "storageclusters", res_path("ocs.openshift.io/v1", "storageclusters"))
        for sc in lists.get("storageclusters", []):
            g(self._storage_cluster, sc, csvs)
        g(fetch, "clientprofiles", res_path("csi.ceph.io/v1", "clientprofiles"))
        for cp in lists.get("clientprofiles", []):
            g(self._client_profile, cp, csvs)
        g(fetch, "configmaps", "/api/v1/configmaps", "cbt.testbed/ocs-client-config")
        for cm in lists.get("configmaps", []):
            g(self._client_config, cm)
        g(fetch, "namespaces", "/api/v1/namespaces")
        for ns in lists.get("namespaces", []):
            if ns["metadata"].get("deletionTimestamp"):
                g(self._terminate_namespace, ns)

    # ---- OLM ------------------------------------------------------------------------------------

    def _catalog_source(self, cs):
        name, ns = cs["metadata"]["name"], cs["metadata"]["namespace"]
        state = cs.get("status", {}).get("connectionState", {}).get("lastObservedState")
        want = "TRANSIENT_FAILURE" if name in self.unready_catalogs else "READY"
        if state != want:
            self.kube.merge(res_path("%s/v1alpha1" % OLM_GROUP, "catalogsources", ns, name, "status"), {"status": {
                "connectionState": {"lastObservedState": want, "address": "%s.%s.svc:50051" % (name, ns),
                                    "lastConnect": now()},
                "registryService": {"protocol": "grpc", "serviceName": name, "serviceNamespace": ns, "port": "50051"}}})
            self._record("CatalogSource %s/%s %s" % (ns, name, want))

    def _catalog(self, sub):
        spec = sub.get("spec", {})
        cs = self.kube.get(res_path("%s/v1alpha1" % OLM_GROUP, "catalogsources", spec.get("sourceNamespace"),
                                    spec.get("source")))
        if not cs:
            return None, "CatalogSource %s/%s not found" % (spec.get("sourceNamespace"), spec.get("source"))
        if cs.get("status", {}).get("connectionState", {}).get("lastObservedState") != "READY":
            return None, "CatalogSource %s/%s is not READY" % (spec.get("sourceNamespace"), spec.get("source"))
        return catalog_for_image(cs.get("spec", {}).get("image", "")), None

    def _set_sub_status(self, sub, status):
        self.kube.merge(res_path("%s/v1alpha1" % OLM_GROUP, "subscriptions", sub["metadata"]["namespace"],
                                 sub["metadata"]["name"], "status"), {"status": status})

    def _subscription(self, sub):
        meta, spec, status = sub["metadata"], sub.get("spec", {}), sub.get("status", {})
        if meta.get("deletionTimestamp") or status.get("installPlanRef") or status.get("installedCSV"):
            return
        ns = meta["namespace"]
        catalog, problem = self._catalog(sub)
        if catalog is None:
            self._set_sub_status(sub, {"state": "", "lastUpdated": now(), "conditions": [
                {"type": "CatalogSourcesUnhealthy", "status": "True", "reason": "UnhealthyCatalogSourceFound",
                 "message": problem}]})
            return
        by_pkg = {b.package: b for b in catalog}
        bundle = by_pkg.get(spec.get("name"))
        if bundle is None:
            self._set_sub_status(sub, {"state": "", "lastUpdated": now(), "conditions": [
                {"type": "ResolutionFailed", "status": "True", "reason": "ConstraintsNotSatisfiable",
                 "message": "no operators found in package %s in the catalog referenced by subscription %s"
                            % (spec.get("name"), meta["name"])}]})
            return
        subs = self.kube.list(res_path("%s/v1alpha1" % OLM_GROUP, "subscriptions", ns))
        subscribed = {s["spec"].get("name"): s for s in subs}
        wanted = [bundle]
        if bundle.package == "odf-operator":   # odf-dependencies pulls in every other ODF package
            wanted += [b for b in catalog if b.package != "odf-operator"]
        members = []
        for b in wanted:
            s = subscribed.get(b.package)
            if s is None:
                s_name = "%s-%s-%s-%s" % (b.package, spec.get("channel", "stable"), spec.get("source"),
                                          spec.get("sourceNamespace"))
                s = self.kube.create(res_path("%s/v1alpha1" % OLM_GROUP, "subscriptions", ns), {
                    "apiVersion": "%s/v1alpha1" % OLM_GROUP, "kind": "Subscription",
                    "metadata": {"name": s_name, "namespace": ns},
                    "spec": {"name": b.package, "channel": spec.get("channel"), "source": spec.get("source"),
                             "sourceNamespace": spec.get("sourceNamespace"),
                             "installPlanApproval": spec.get("installPlanApproval", "Automatic")}})
                if s is None:
                    continue
                self._record("created dependent Subscription %s" % s_name)
            if s["metadata"]["name"] == meta["name"] or not s.get("status", {}).get("installedCSV"):
                members.append((s, b))
        manual = spec.get("installPlanApproval") == "Manual" or any(
            s["spec"].get("installPlanApproval") == "Manual" for s, _unused in members)
        ip_name = "install-%s" % short_hash([meta["uid"], time.time()], 5)
        ip = self.kube.create(res_path("%s/v1alpha1" % OLM_GROUP, "installplans", ns), {
            "apiVersion": "%s/v1alpha1" % OLM_GROUP, "kind": "InstallPlan",
            "metadata": {"name": ip_name, "namespace": ns, "ownerReferences": [
                {"apiVersion": "%s/v1alpha1" % OLM_GROUP, "kind": "Subscription", "name": s["metadata"]["name"],
                 "uid": s["metadata"]["uid"]} for s, _unused in members]},
            "spec": {"approval": "Manual" if manual else "Automatic", "approved": not manual,
                     "clusterServiceVersionNames": [b.csv for _unused, b in members], "generation": 1}})
        self.kube.merge(res_path("%s/v1alpha1" % OLM_GROUP, "installplans", ns, ip_name, "status"), {"status": {
            "phase": "RequiresApproval" if manual else "Installing",
            "catalogSources": [spec.get("source")]}})
        ref = {"apiVersion": "%s/v1alpha1" % OLM_GROUP, "kind": "InstallPlan", "name": ip_name, "namespace": ns,
               "uid": ip["metadata"]["uid"]}
        for s, b in members:
            self._set_sub_status(s, {"installPlanRef": ref, "installplan": {"name": ip_name, "kind": "InstallPlan",
                                                                            "apiVersion": ref["apiVersion"]},
                                     "currentCSV": b.csv, "state": "UpgradePending", "lastUpdated": now(),
                                     "conditions": [{"type": "InstallPlanPending", "status": "True",
                                                     "reason": "RequiresApproval" if manual else "Installing"}]})
        self._record("InstallPlan %s/%s for %s (%s)" % (ns, ip_name, ", ".join(b.csv for _unused, b in members),
                                                        "Manual" if manual else "Automatic"))

    def _install_plan(self, ip):
        meta, spec = ip["metadata"], ip.get("spec", {})
        if meta.get("deletionTimestamp") or not spec.get("approved") or ip.get("status", {}).get("phase") == "Complete":
            return
        ns = meta["namespace"]
        subs = self.kube.list(res_path("%s/v1alpha1" % OLM_GROUP, "subscriptions", ns))
        catalog = None
        for s in subs:
            if s.get("status", {}).get("installPlanRef", {}).get("name") == meta["name"]:
                catalog, _unused = self._catalog(s)
                if catalog:
                    break
        if catalog is None:
            return
        by_csv = {b.csv: b for b in catalog}
        for csv_name in spec.get("clusterServiceVersionNames", []):
            bundle = by_csv[csv_name]
            if bundle.crd_groups:
                self.kube.apply_crds(crd_documents(groups=bundle.crd_groups))
            self.kube.create(res_path("%s/v1alpha1" % OLM_GROUP, "clusterserviceversions", ns), {
                "apiVersion": "%s/v1alpha1" % OLM_GROUP, "kind": "ClusterServiceVersion",
                "metadata": {"name": csv_name, "namespace": ns,
                             "labels": {"operators.coreos.com/%s.%s" % (bundle.package, ns): ""},
                             "annotations": {"olm.targetNamespaces": ns}},
                "spec": bundle.csv_spec()})
            self.kube.create("/apis/%s/v1/operators" % OLM_GROUP, {
                "apiVersion": "%s/v1" % OLM_GROUP, "kind": "Operator",
                "metadata": {"name": "%s.%s" % (bundle.package, ns)}, "spec": {}})
        self.kube.merge(res_path("%s/v1alpha1" % OLM_GROUP, "installplans", ns, meta["name"], "status"),
                        {"status": {"phase": "Complete"}})
        for s in subs:
            if s.get("status", {}).get("installPlanRef", {}).get("name") == meta["name"]:
                self._set_sub_status(s, {"installedCSV": s["status"].get("currentCSV"), "state": "AtLatestKnown",
                                         "lastUpdated": now(), "conditions": []})
        self._record("InstallPlan %s/%s executed: %s" % (ns, meta["name"], ", ".join(spec["clusterServiceVersionNames"])))

    def _csv_status(self, csv, phase, reason, message):
        current = csv.get("status", {})
        if current.get("phase") == phase and current.get("reason") == reason:
            return
        self.kube.merge(res_path("%s/v1alpha1" % OLM_GROUP, "clusterserviceversions", csv["metadata"]["namespace"],
                                 csv["metadata"]["name"], "status"), {"status": {
                                     "phase": phase, "reason": reason, "message": message, "lastUpdateTime": now(), "lastTransitionTime": now()}})
        self._record("CSV %s %s" % (csv["metadata"]["name"], phase))

    def _csv(self, csv):
        meta = csv["metadata"]
        if meta.get("deletionTimestamp"):
            return
        ns, name = meta["namespace"], meta["name"]
        if name in self.failing_csvs:
            self._csv_status(csv, "Failed", "InstallCheckFailed",
                             "install timeout: deployment rollout did not finish (simulated)")
            return
        deployments = csv.get("spec", {}).get("install", {}).get("spec", {}).get("deployments", [])
        all_ready = True
        for dspec in deployments:
            spec_hash = short_hash(dspec["spec"])
            path = "/apis/apps/v1/namespaces/%s/deployments/%s" % (ns, dspec["name"])
            current = self.kube.get(path)
            desired = {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": dspec["name"], "namespace": ns,
                             "labels": {"olm.owner": name, "olm.owner.kind": "ClusterServiceVersion",
                                        "olm.owner.namespace": ns},
                             "annotations": {"olm.deployment-spec-hash": spec_hash}},
                "spec": copy.deepcopy(dspec["spec"]),
            }
            if current is None:
                self.kube.create("/apis/apps/v1/namespaces/%s/deployments" % ns, desired)
                self._record("Deployment %s/%s created for CSV %s" % (ns, dspec["name"], name))
                all_ready = False
                continue
            if current["metadata"].get("annotations", {}).get("olm.deployment-spec-hash") != spec_hash:
                desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.kube.put(path, desired)
                self._record("Deployment %s/%s re-applied from CSV %s (spec hash %s)" % (ns, dspec["name"], name, spec_hash))
                self._csv_status(csv, "InstallReady", "InstallWaiting", "deployment spec changed")
                all_ready = False
                continue
            st = current.get("status", {})
            want = current["spec"].get("replicas", 1)
            if not (st.get("observedGeneration", 0) >= current["metadata"]["generation"]
                    and st.get("updatedReplicas", 0) == want and st.get("availableReplicas", 0) == want
                    and st.get("replicas", 0) == want):
                all_ready = False
        if all_ready:
            self._csv_status(csv, "Succeeded", "InstallSucceeded", "install strategy completed with no errors")
            bundle = next((b for b in odf_catalog("4.20") + odf_catalog("4.19") if b.csv == name), None)
            if bundle is not None and bundle.console_plugin:
                self.kube.create("/apis/console.openshift.io/v1/consoleplugins", {
                    "apiVersion": "console.openshift.io/v1", "kind": "ConsolePlugin",
                    "metadata": {"name": bundle.console_plugin},
                    "spec": {"displayName": "ODF Plugin", "backend": {"type": "Service", "service": {
                        "name": bundle.console_plugin, "namespace": ns, "port": 9001, "basePath": "/"}}}})
        elif csv.get("status", {}).get("phase") not in ("InstallReady", "Installing"):
            self._csv_status(csv, "Installing", "InstallWaiting", "waiting for the deployments to roll out")

    def _garbage_collect(self, csvs):
        alive = {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in csvs}
        for dep in self.kube.list("/apis/apps/v1/deployments", label_selector="olm.owner"):
            meta = dep["metadata"]
            if (meta["namespace"], meta["labels"]["olm.owner"]) not in alive:
                self._delete_pods(dep)
                self.kube.delete("/apis/apps/v1/namespaces/%s/deployments/%s" % (meta["namespace"], meta["name"]))
                self._record("Deployment %s/%s garbage-collected (CSV gone)" % (meta["namespace"], meta["name"]))

    # ---- Deployment controller + kubelet --------------------------------------------------------

    def _pods_of(self, dep):
        sel = ",".join("%s=%s" % kv for kv in sorted(dep["spec"]["selector"]["matchLabels"].items()))
        return self.kube.list("/api/v1/namespaces/%s/pods" % dep["metadata"]["namespace"], label_selector=sel)

    def _delete_pods(self, dep, keep_hash=None):
        for pod in self._pods_of(dep):
            if keep_hash is None or pod["metadata"].get("labels", {}).get("pod-template-hash") != keep_hash:
                self.kube.delete("/api/v1/namespaces/%s/pods/%s" % (pod["metadata"]["namespace"], pod["metadata"]["name"]),
                                 grace=0)
                self._record("Pod %s deleted" % pod["metadata"]["name"])

    def _node_name(self):
        nodes = self.kube.list("/api/v1/nodes")
        return nodes[0]["metadata"]["name"] if nodes else None

    def _deployment(self, dep):
        meta, spec = dep["metadata"], dep["spec"]
        if meta.get("deletionTimestamp"):
            return
        ns = meta["namespace"]
        tmpl_hash = short_hash(spec["template"])
        replicas = spec.get("replicas", 1)
        self._delete_pods(dep, keep_hash=tmpl_hash)
        pods = [p for p in self._pods_of(dep) if p["metadata"].get("labels", {}).get("pod-template-hash") == tmpl_hash]
        for _unused in range(len(pods), replicas):
            tmpl = copy.deepcopy(spec["template"])
            labels = dict(tmpl.get("metadata", {}).get("labels", {}), **{"pod-template-hash": tmpl_hash})
            pod_spec = tmpl["spec"]
            node = self._node_name()
            if node:
                pod_spec["nodeName"] = node
            pod = self.kube.create("/api/v1/namespaces/%s/pods" % ns, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "%s-%s-" % (meta["name"], tmpl_hash), "namespace": ns, "labels": labels,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True}]},
                "spec": pod_spec}, ok_exists=False)
            self._record("Pod %s created for Deployment %s/%s" % (pod["metadata"]["name"], ns, meta["name"]))
            pods.append(pod)
        ready = 0
        for pod in pods[:replicas]:
            if self._run_pod(pod):
                ready += 1
        status = {"observedGeneration": meta["generation"], "replicas": len(pods), "updatedReplicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready,
                  "conditions": [{"type": "Available", "status": "True" if ready >= replicas else "False",
                                  "reason": "MinimumReplicasAvailable" if ready >= replicas else "MinimumReplicasUnavailable",
                                  "message": "%d/%d replicas available" % (ready, replicas)}]}
        current = dep.get("status", {})
        if any(current.get(k) != v for k, v in status.items() if k != "conditions") or \
                [c.get("status") for c in current.get("conditions", [])] != [status["conditions"][0]["status"]]:
            self.kube.merge("/apis/apps/v1/namespaces/%s/deployments/%s/status" % (ns, meta["name"]), {"status": status})

    def _run_pod(self, pod):
        """Play the kubelet: Running/Ready unless an image is marked unpullable. Returns readiness."""
        status = pod.get("status", {})
        containers = pod["spec"]["containers"]
        bad = [c for c in containers if c["image"] in self.unpullable_images]
        if status.get("phase") == ("Pending" if bad else "Running") and status.get("containerStatuses"):
            return not bad
        statuses = []
        for c in containers:
            image = c["image"]
            image_id = image if "@sha256:" in image else "%s@sha256:%s" % (
                image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image,
                hashlib.sha256(image.encode()).hexdigest())
            if c in bad:
                statuses.append({"name": c["name"], "image": image, "imageID": "", "ready": False, "restartCount": 0,
                                 "started": False, "state": {"waiting": {
                                     "reason": "ImagePullBackOff",
                                     "message": 'Back-off pulling image "%s"' % image}}})
            else:
                statuses.append({"name": c["name"], "image": image, "imageID": image_id, "ready": True,
                                 "restartCount": 0, "started": True, "state": {"running": {"startedAt": now()}}})
        self.kube.merge("/api/v1/namespaces/%s/pods/%s/status" % (pod["metadata"]["namespace"], pod["metadata"]["name"]),
                        {"status": {
                            "phase": "Pending" if bad else "Running", "podIP": "10.128.0.%d" % (len(self.events) % 250 + 2),
                            "startTime": now(),
                            "conditions": [{"type": "Ready", "status": "False" if bad else "True",
                                            "lastTransitionTime": now()},
                                           {"type": "ContainersReady", "status": "False" if bad else "True",
                                            "lastTransitionTime": now()}],
                            "containerStatuses": statuses}})
        return not bad

    # ---- ocs-operator / rook / ceph-csi / ocs-client-operator -----------------------------------

    @staticmethod
    def _csv_succeeded(csvs, ns, prefix):
        return any(c["metadata"]["namespace"] == ns and c["metadata"]["name"].startswith(prefix)
                   and not c["metadata"].get("deletionTimestamp")
                   and c.get("status", {}).get("phase") == "Succeeded" for c in csvs)

    @staticmethod
    def _csv_exists(csvs, ns, prefix):
        return any(c["metadata"]["namespace"] == ns and c["metadata"]["name"].startswith(prefix)
                   and not c["metadata"].get("deletionTimestamp") for c in csvs)

    def _remove_finalizer(self, path, obj, finalizer, what):
        fins = obj["metadata"].get("finalizers", [])
        if finalizer in fins:
            self.kube.json_patch(path, [{"op": "test", "path": "/metadata/finalizers", "value": fins},
                                        {"op": "replace", "path": "/metadata/finalizers",
                                         "value": [f for f in fins if f != finalizer]}])
            self._record("finalizer %s released on %s" % (finalizer, what))

    def _storage_cluster(self, sc, csvs):
        meta = sc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        path = res_path("ocs.openshift.io/v1", "storageclusters", ns, name)
        if not self._csv_succeeded(csvs, ns, "ocs-operator."):
            return
        if meta.get("deletionTimestamp"):
            self._delete_storage_cluster(sc, path)
            return
        fins = meta.get("finalizers", [])
        if SC_FINALIZER not in fins:
            self.kube.merge(path, {"metadata": {"finalizers": fins + [SC_FINALIZER]}})
        ann = meta.get("annotations", {})
        fix = {}
        if ann.get(MODE_ANN) not in ("graceful", "forced"):
            fix[MODE_ANN] = "graceful"
        if ann.get(POLICY_ANN) not in ("delete", "retain"):
            fix[POLICY_ANN] = "delete"
        if fix:
            self.kube.merge(path, {"metadata": {"annotations": fix}})
        cephcsi_ready = self._csv_succeeded(csvs, ns, "cephcsi-operator.")
        if (meta["uid"], cephcsi_ready) not in self._ensured:
            self._ensure_storage(ns, name, csvs)
            self._ensured.add((meta["uid"], cephcsi_ready))
        if name in self.never_ready_storageclusters:
            status = {"phase": "Progressing", "conditions": [
                {"type": "ReconcileComplete", "status": "False", "reason": "ReconcileFailed",
                 "message": "Waiting on Ceph cluster to initialize (simulated)"},
                {"type": "Available", "status": "False", "reason": "Init", "message": "CephCluster not ready"}]}
        else:
            status = {"phase": "Ready", "conditions": [
                {"type": "ReconcileComplete", "status": "True", "reason": "ReconcileCompleted",
                 "message": "Reconcile completed successfully"},
                {"type": "Available", "status": "True", "reason": "ReconcileCompleted", "message": ""},
                {"type": "Progressing", "status": "False", "reason": "ReconcileCompleted", "message": ""}]}
        if sc.get("status", {}).get("phase") != status["phase"]:
            self.kube.merge(path + "/status", {"status": status})
            self._record("StorageCluster %s/%s %s" % (ns, name, status["phase"]))

    def _ensure_storage(self, ns, name, csvs):
        k = self.kube
        prov = "%s.rbd.csi.ceph.com" % ns
        if k.get(res_path("ceph.rook.io/v1", "cephclusters", ns, "%s-cephcluster" % name)) is None:
            k.create(res_path("ceph.rook.io/v1", "cephclusters", ns), {
                "apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
                "metadata": {"name": "%s-cephcluster" % name, "namespace": ns, "finalizers": [CEPHCLUSTER_FINALIZER]},
                "spec": {"dataDirHostPath": "/var/lib/rook"}})
            k.merge(res_path("ceph.rook.io/v1", "cephclusters", ns, "%s-cephcluster" % name, "status"),
                    {"status": {"phase": "Ready", "message": "Cluster created successfully",
                                "ceph": {"health": "HEALTH_OK"}}})
            self._record("CephCluster %s/%s-cephcluster created" % (ns, name))
        for sc_name, provisioner in (("%s-ceph-rbd" % name, prov), ("%s-cephfs" % name, "%s.cephfs.csi.ceph.com" % ns),
                                     ("%s.noobaa.io" % ns, "%s.noobaa.io/obc" % ns)):
            k.create("/apis/storage.k8s.io/v1/storageclasses", {
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": sc_name},
                "provisioner": provisioner, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"})
        k.create("/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": "%s-rbdplugin-snapclass" % name}, "driver": prov, "deletionPolicy": "Delete"})
        for driver in (prov, "%s.cephfs.csi.ceph.com" % ns):
            k.create("/apis/storage.k8s.io/v1/csidrivers", {
                "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": driver},
                "spec": {"attachRequired": True, "podInfoOnMount": False}})
        k.create(res_path("ocs.openshift.io/v1alpha1", "storageclients"), {
            "apiVersion": "ocs.openshift.io/v1alpha1", "kind": "StorageClient",
            "metadata": {"name": name, "finalizers": [STORAGECLIENT_FINALIZER]}, "spec": {}})
        k.create("/api/v1/namespaces/%s/configmaps" % ns, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ocs-client-operator-config", "namespace": ns, "finalizers": [CLIENT_CONFIG_FINALIZER],
                         "labels": {"cbt.testbed/ocs-client-config": "true"}},
            "data": {"csiImagesVersion": "v4.20"}})
        if self._csv_succeeded(csvs, ns, "cephcsi-operator."):
            for driver in (prov, "%s.cephfs.csi.ceph.com" % ns):
                k.create(res_path("csi.ceph.io/v1", "drivers", ns), {
                    "apiVersion": "csi.ceph.io/v1", "kind": "Driver", "metadata": {"name": driver, "namespace": ns},
                    "spec": {"controllerPlugin": {"volumes": []}}})
            k.create(res_path("csi.ceph.io/v1", "operatorconfigs", ns), {
                "apiVersion": "csi.ceph.io/v1", "kind": "OperatorConfig",
                "metadata": {"name": "ceph-csi-operator-config", "namespace": ns}, "spec": {}})
            k.create(res_path("csi.ceph.io/v1", "clientprofiles", ns), {
                "apiVersion": "csi.ceph.io/v1", "kind": "ClientProfile",
                "metadata": {"name": "openshift-storage", "namespace": ns, "finalizers": [CLIENTPROFILE_FINALIZER]},
                "spec": {"cephConnectionRef": {"name": "ocs-storagecluster"}}})

    def _odf_consumers(self, ns):
        scs = {s["metadata"]["name"] for s in self.kube.list("/apis/storage.k8s.io/v1/storageclasses")
               if s.get("provisioner", "").startswith(ns + ".")}
        out = ["PersistentVolumeClaim %s/%s" % (p["metadata"]["namespace"], p["metadata"]["name"])
               for p in self.kube.list("/api/v1/persistentvolumeclaims")
               if p["metadata"]["namespace"] != ns and p.get("spec", {}).get("storageClassName") in scs]
        out += ["ObjectBucketClaim %s/%s" % (o["metadata"]["namespace"], o["metadata"]["name"])
                for o in self.kube.list(res_path("objectbucket.io/v1alpha1", "objectbucketclaims"))
                if o["metadata"]["namespace"] != ns and o.get("spec", {}).get("storageClassName") in scs]
        return out

    def _delete_storage_cluster(self, sc, path):
        meta = sc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        k = self.kube
        if SC_FINALIZER not in meta.get("finalizers", []):
            return
        if sc.get("status", {}).get("phase") != "Deleting":
            k.merge(path + "/status", {"status": {"phase": "Deleting"}})
        if self.held("StorageCluster", name):
            return
        ann = meta.get("annotations", {})
        cc_name = "%s-cephcluster" % name
        cc_path = res_path("ceph.rook.io/v1", "cephclusters", ns, cc_name)
        cc = k.get(cc_path)
        if ann.get(MODE_ANN, "graceful") == "graceful":
            consumers = self._odf_consumers(ns)
            if consumers:
                message = ('CephCluster "%s/%s" will not be deleted until all dependents are removed: %s'
                           % (ns, cc_name, ", ".join(consumers)))
                if cc is not None and cc.get("status", {}).get("message") != message:
                    k.merge(cc_path + "/status", {"status": {"phase": "Deleting", "message": message}})
                    self._record("graceful uninstall waits for %s" % ", ".join(consumers))
                return
        if cc is not None:
            if not cc["metadata"].get("deletionTimestamp"):
                k.delete(cc_path)
                if ann.get(POLICY_ANN, "delete") == "delete":
                    self._cleanup_jobs(ns)
            if self.held("CephCluster", cc_name):
                k.merge(cc_path + "/status", {"status": {"phase": "Deleting", "message":
                        "CephCluster deletion blocked: CephBlockPoolRadosNamespace ocs-storagecluster-cephblockpool-builtin-implicit"
                                                         " still exists (simulated)"}})
                return
            cc = k.get(cc_path)
            if cc is not None:
                self._remove_finalizer(cc_path, cc, CEPHCLUSTER_FINALIZER, "CephCluster %s/%s" % (ns, cc_name))
                return
        for sc_name in ("%s-ceph-rbd" % name, "%s-cephfs" % name, "%s.noobaa.io" % ns):
            k.delete("/apis/storage.k8s.io/v1/storageclasses/%s" % sc_name)
        k.delete("/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/%s-rbdplugin-snapclass" % name)
        client_path = res_path("ocs.openshift.io/v1alpha1", "storageclients", name=name)
        client = k.get(client_path)
        if client is not None:
            if not client["metadata"].get("deletionTimestamp"):
                k.delete(client_path)
                client = k.get(client_path)
            if client is not None:
                if self.held("StorageClient", name):
                    return
                self._remove_finalizer(client_path, client, STORAGECLIENT_FINALIZER, "StorageClient %s" % name)
        self._remove_finalizer(path, sc, SC_FINALIZER, "StorageCluster %s/%s" % (ns, name))

    def _cleanup_jobs(self, ns):
        nodes = self.kube.list("/api/v1/nodes", label_selector=NODE_LABEL)
        for node in nodes:
            job_name = "cluster-cleanup-job-%s" % node["metadata"]["name"]
            job = self.kube.create("/apis/batch/v1/namespaces/%s/jobs" % ns, {
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job_name, "namespace": ns},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never", "nodeName": node["metadata"]["name"],
                    "containers": [{"name": "host-cleanup", "image": "quay.io/ceph/ceph:v19",
                                    "command": ["rook", "ceph", "clean", "host"]}]}}}})
            if job is None:
                continue
            start = now()
            if self.failing_cleanup_jobs:
                status = {"startTime": start, "failed": 1, "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": "Job has reached the specified backoff limit", "lastTransitionTime": start},
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": "Job has reached the specified backoff limit", "lastTransitionTime": start}]}
            else:
                status = {"startTime": start, "completionTime": start, "succeeded": 1, "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                     "message": "Reached expected number of succeeded pods", "lastTransitionTime": start},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                     "message": "Reached expected number of succeeded pods", "lastTransitionTime": start}]}
            self.kube.merge("/apis/batch/v1/namespaces/%s/jobs/%s/status" % (ns, job_name), {"status": status})
            self._record("Job %s/%s %s" % (ns, job_name, "failed" if self.failing_cleanup_jobs else "succeeded"))

    def _client_profile(self, cp, csvs):
        meta = cp["metadata"]
        if not meta.get("deletionTimestamp") or self.held("ClientProfile", meta["name"]):
            return
        ns = meta["namespace"]
        # Only the running ceph-csi operator removes csi.ceph.com/cleanup.
        if self._csv_exists(csvs, ns, "cephcsi-operator."):
            self._remove_finalizer(res_path("csi.ceph.io/v1", "clientprofiles", ns, meta["name"]), cp,
                                   CLIENTPROFILE_FINALIZER, "ClientProfile %s/%s" % (ns, meta["name"]))

    def _client_config(self, cm):
        meta = cm["metadata"]
        if not meta.get("deletionTimestamp") or self.held("ConfigMap", meta["name"]):
            return
        self._remove_finalizer("/api/v1/namespaces/%s/configmaps/%s" % (meta["namespace"], meta["name"]), cm,
                               CLIENT_CONFIG_FINALIZER, "ConfigMap %s/%s" % (meta["namespace"], meta["name"]))

    # ---- namespace controller -------------------------------------------------------------------

    def _namespaced_resources(self):
        stamp, cached = self._discovery
        if time.monotonic() - stamp < 2.0:
            return cached
        out = []
        core = self.kube.get("/api/v1") or {}
        for r in core.get("resources", []):
            if r.get("namespaced") and "/" not in r["name"] and {"list", "delete"} <= set(r.get("verbs", [])):
                out.append(("v1", r["name"]))
        for group in (self.kube.get("/apis") or {}).get("groups", []):
            gv = group["preferredVersion"]["groupVersion"]
            doc = self.kube.get("/apis/%s" % gv) or {}
            for r in doc.get("resources", []):
                if r.get("namespaced") and "/" not in r["name"] and {"list", "delete"} <= set(r.get("verbs", [])):
                    out.append((gv, r["name"]))
        self._discovery = (time.monotonic(), out)
        return out

    def _terminate_namespace(self, ns):
        name = ns["metadata"]["name"]
        remaining, finalizers = {}, {}
        for gv, plural in self._namespaced_resources():
            if plural == "events":
                continue
            try:
                items = self.kube.list(res_path(gv, plural, name))
            except ApiError as exc:
                if exc.status in (404, 405, 403):
                    continue
                raise
            for obj in items:
                meta = obj["metadata"]
                if not meta.get("deletionTimestamp"):
                    self.kube.delete(res_path(gv, plural, name, meta["name"]), grace=0 if plural == "pods" else None)
                    obj = self.kube.get(res_path(gv, plural, name, meta["name"]))
                    if obj is None:
                        continue
                key = "%s.%s" % (plural, gv.split("/")[0]) if "/" in gv else plural
                remaining[key] = remaining.get(key, 0) + 1
                for fin in obj["metadata"].get("finalizers", []):
                    finalizers[fin] = finalizers.get(fin, 0) + 1
        if remaining:
            conditions = [
                {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
                 "message": "Some resources are remaining: %s" % ", ".join(
                     "%s has %d resource instances" % kv for kv in sorted(remaining.items())),
                 "lastTransitionTime": now()},
                {"type": "NamespaceFinalizersRemaining", "status": "True" if finalizers else "False",
                 "reason": "SomeFinalizersRemain" if finalizers else "ContentHasNoFinalizers",
                 "message": "Some content in the namespace has finalizers remaining: %s" % ", ".join(
                     "%s in %d resource instances" % kv for kv in sorted(finalizers.items())) if finalizers else "",
                 "lastTransitionTime": now()}]
            old = {c["type"]: c.get("message") for c in ns.get("status", {}).get("conditions", [])}
            if old != {c["type"]: c["message"] for c in conditions}:
                self.kube.merge("/api/v1/namespaces/%s/status" % name, {"status": {"conditions": conditions}})
            return
        if "kubernetes" in ns.get("spec", {}).get("finalizers", []):
            fresh = self.kube.get("/api/v1/namespaces/%s" % name)
            if fresh is None:
                return
            fresh["spec"]["finalizers"] = [f for f in fresh["spec"].get("finalizers", []) if f != "kubernetes"]
            self.kube.put("/api/v1/namespaces/%s/finalize" % name, fresh)
            self._record("Namespace %s finalized" % name)
