# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ODF test bed of the odf_cbt_enable / odf_cbt_info integration tests: a real kube-apiserver
with the test CRDs from ``manifests/`` and the stand-ins of ``testbed.odf_operator``."""

import time
from pathlib import Path

import yaml

from testbed.odf_operator import FakeCephCsiOperator, FakeServiceCA, OperatorProfile, Rest, ApiError

MANIFESTS = Path(__file__).parent / "manifests"
OPENSHIFT_CRDS = ["securitycontextconstraints.security.openshift.io", "clusterversions.config.openshift.io"]
ODF_CRDS = ["drivers.csi.ceph.io", "operatorconfigs.csi.ceph.io"]
OLM_CRDS = ["clusterserviceversions.operators.coreos.com"]
SCC_420 = ["configMap", "emptyDir", "hostPath", "projected"]     # ceph-csi-op-scc on ODF 4.20/4.21
ODF_SIDECAR_IMAGE = "registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v%s"
FAST = {"wait_sleep": 0.5, "wait_timeout": 90}


def ok(res, run):
    """Assert an Ansible task result succeeded; show its message and output otherwise."""
    assert res.get("failed") is not True, "module failed: %s\n%s" % (res.get("msg"), res.get("exception", ""))
    assert "Traceback" not in run.stdout + run.stderr, run
    return res


def failed(res, run):
    """Assert a task failed cleanly (no traceback) and return its message."""
    assert res.get("failed") is True, "module did not fail: %r" % (res,)
    # ansible-core 2.19 reports "(traceback unavailable)" for every fail_json without a traceback
    assert res.get("exception") in (None, "(traceback unavailable)"), res.get("exception")
    assert "Traceback" not in run.stdout + run.stderr, run
    return res["msg"]


def _csv(package, version, sms_rule):
    rules = [{"apiGroups": ["csi.ceph.io"], "resources": ["drivers", "operatorconfigs"],
              "verbs": ["get", "list", "watch", "update", "patch"]},
             {"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"], "verbs": ["*"]}]
    if sms_rule:
        rules.append({"apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"],
                      "verbs": ["get", "list", "watch"]})
    return {
        "apiVersion": "operators.coreos.com/v1alpha1", "kind": "ClusterServiceVersion",
        "metadata": {"name": "%s.v%s-rhodf" % (package, version)},
        "spec": {"version": "%s-rhodf" % version, "displayName": package, "install": {
            "strategy": "deployment", "spec": {
                "clusterPermissions": [{"serviceAccountName": "ceph-csi-controller-manager", "rules": rules}],
                "deployments": [{"name": "ceph-csi-controller-manager" if package == "cephcsi-operator"
                                 else package, "spec": {}}]}}},
    }


class Bed:
    """A running KubeCluster plus the ODF stand-ins installed in it."""

    def __init__(self, cluster, openshift):
        self.cluster = cluster
        self.api_client = cluster.api_client()
        self.rest = Rest(self.api_client)
        self.openshift = openshift
        self.loops = []

    # -- plumbing --------------------------------------------------------------------------------
    def apply_manifest(self, name):
        doc = yaml.safe_load((MANIFESTS / ("%s.yaml" % name)).read_text())
        self.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        self.wait_crd(doc["metadata"]["name"])
        return doc

    def create(self, path, body):
        try:
            return self.rest.create(path, body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            return None

    def wait_crd(self, name, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = self.rest.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/%s" % name)
            conds = ((crd or {}).get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                return
            time.sleep(0.2)
        raise AssertionError("CRD %s not Established after %s s" % (name, timeout))

    def wait_for(self, what, func, timeout=60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = func()
            if last:
                return last
            time.sleep(0.25)
        for loop in self.loops:
            loop.check()
        raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))

    def check_loops(self):
        for loop in self.loops:
            loop.check()

    def stop(self):
        for loop in self.loops:
            loop.stop()

    def retire(self, loop):
        """Stop a test's own controller (fewer pollers for the next tests); report its errors."""
        loop.stop()
        self.loops.remove(loop)
        loop.check()

    # -- objects ---------------------------------------------------------------------------------
    def get(self, path):
        return self.rest.get(path)

    def deployment(self, ns, driver):
        return self.get("/apis/apps/v1/namespaces/%s/deployments/%s-ctrlplugin" % (ns, driver))

    def containers(self, ns, driver):
        dep = self.deployment(ns, driver)
        return [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] if dep else None

    def driver(self, ns, driver):
        return self.get("/apis/csi.ceph.io/v1/namespaces/%s/drivers/%s" % (ns, driver))

    def sms(self, driver, version="v1beta1"):
        return self.get("/apis/cbt.storage.k8s.io/%s/snapshotmetadataservices/%s" % (version, driver))

    def crd(self):
        return self.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                        "snapshotmetadataservices.cbt.storage.k8s.io")

    def ours(self, ns):
        """Objects carrying the collection's managed-by label in ``ns`` (and cluster-wide SMS/CRD)."""
        sel = "app.kubernetes.io/managed-by=cbt.toolkit"
        found = []
        for plural in ("services", "secrets", "configmaps"):
            for item in self.rest.list("/api/v1/namespaces/%s/%s" % (ns, plural), label_selector=sel):
                found.append("%s/%s" % (plural, item["metadata"]["name"]))
        crd = self.crd()
        if crd and (crd["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "cbt.toolkit":
            found.append("crd")
        sms = set()
        for ver in ("v1beta1", "v1alpha1"):
            for item in self.rest.list("/apis/cbt.storage.k8s.io/%s/snapshotmetadataservices" % ver,
                                       label_selector=sel):
                sms.add("sms/%s" % item["metadata"]["name"])
        return found + sorted(sms)

    # -- an ODF-like namespace -------------------------------------------------------------------
    def setup_odf(self, ns, version, cbt_code=True, profile=None, olm=True, imageset=True, replicas=2):
        """Namespace with cephcsi/odf CSVs, OperatorConfig + image set, the RBD Driver and its operator."""
        driver = "%s.rbd.csi.ceph.com" % ns
        profile = profile or OperatorProfile.odf(version, cbt_code=cbt_code)
        self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if olm:
            for package, sms_rule in (("cephcsi-operator", profile.cbt_code and profile.gate == "sms"),
                                      ("odf-operator", False)):
                csv = self.create("/apis/operators.coreos.com/v1alpha1/namespaces/%s/clusterserviceversions" % ns,
                                  _csv(package, version, sms_rule))
                if csv:
                    self.rest.merge("/apis/operators.coreos.com/v1alpha1/namespaces/%s/clusterserviceversions/%s/"
                                    "status" % (ns, csv["metadata"]["name"]), {"status": {"phase": "Succeeded"}})
        if imageset:
            minor = ".".join(version.split(".")[:2])
            self.create("/api/v1/namespaces/%s/configmaps" % ns, {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "csi-images-v%s" % minor},
                "data": {"snapshot-metadata": ODF_SIDECAR_IMAGE % minor,
                         "plugin": "registry.redhat.io/odf4/cephcsi-rhel9:v%s" % minor}})
            self.create("/apis/csi.ceph.io/v1/namespaces/%s/operatorconfigs" % ns, {
                "apiVersion": "csi.ceph.io/v1", "kind": "OperatorConfig",
                "metadata": {"name": "ceph-csi-operator-config"},
                "spec": {"driverSpecDefaults": {"imageSet": {"name": "csi-images-v%s" % minor}}}})
        self.create("/apis/csi.ceph.io/v1/namespaces/%s/drivers" % ns, {
            "apiVersion": "csi.ceph.io/v1", "kind": "Driver", "metadata": {"name": driver},
            "spec": {"controllerPlugin": {"replicas": replicas}}})
        op = FakeCephCsiOperator(self.cluster.api_client(), ns, profile, scc_name="ceph-csi-op-scc" if self.openshift else None,
                                 poll=0.3, log_name="fake-ceph-csi-operator-%s-%s" % (self.cluster.name, ns)).start()
        self.loops.append(op)
        self.wait_for("ctrlplugin of %s" % driver, lambda: (self.deployment(ns, driver) or {}).get("status", {})
                      .get("readyReplicas") == replicas)
        return driver, op

    def info_args(self, **kw):
        args = {"kubeconfig": str(self.cluster.kubeconfig)}
        args.update(kw)
        return args

    def run_args(self, **kw):
        args = {"kubeconfig": str(self.cluster.kubeconfig)}
        args.update(FAST)
        args.update(kw)
        return args


def start_bed(name, openshift, olm=True, extra=()):
    from testbed.kube import KubeCluster  # pylint: disable=import-outside-toplevel

    # No Endpoints for the kubernetes Service on loopback (the apiserver refuses 127.0.0.1 as a public IP
    # for its endpoint reconciler); harmless if the test bed passes it too.
    cluster = KubeCluster(name=name, extra_apiserver_args=["--endpoint-reconciler-type=none"]).start()
    bed = Bed(cluster, openshift)
    try:
        for crd in ODF_CRDS + (OLM_CRDS if olm else []) + (OPENSHIFT_CRDS if openshift else []) + list(extra):
            bed.apply_manifest(crd)
        if openshift:
            bed.create("/apis/config.openshift.io/v1/clusterversions", {
                "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion", "metadata": {"name": "version"},
                "spec": {"channel": "stable-4.20"}})
            bed.create("/apis/security.openshift.io/v1/securitycontextconstraints", {
                "apiVersion": "security.openshift.io/v1", "kind": "SecurityContextConstraints",
                "metadata": {"name": "ceph-csi-op-scc"}, "volumes": list(SCC_420),
                "allowHostDirVolumePlugin": True, "allowPrivilegedContainer": True})
            bed.loops.append(FakeServiceCA(cluster.api_client(), poll=0.3,
                                           log_name="fake-service-ca-%s" % name).start())
    except BaseException:
        bed.stop()
        cluster.stop()
        raise
    return bed
