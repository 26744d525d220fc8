# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.odf_uninstall through real ansible-playbook against a real kube-apiserver. ODF is
installed first with cbt.toolkit.odf_install; the OLM simulator plays OLM, ocs-operator, Rook,
ceph-csi-operator and the namespace controller, and holds finalizers where a test asks it to."""

from __future__ import annotations

import pytest

from odf_roles_util import (UNINSTALL_PLAYBOOK, assert_idempotent, assert_ok, failure_messages, fact, install_odf,
                            recap, uninstall_vars)
from testbed.olm_sim import res_path

NS = "openshift-storage"
ODF_GROUPS = ("ocs.openshift.io", "odf.openshift.io", "ceph.rook.io", "noobaa.io", "objectbucket.io", "csi.ceph.io",
              "csiaddons.openshift.io")


def add_consumers(env):
    """An application namespace with a PVC and a VolumeSnapshot on ODF storage."""
    k = env.kube
    k.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}})
    k.create("/api/v1/namespaces/app/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "app"},
        "spec": {"storageClassName": "ocs-storagecluster-ceph-rbd", "volumeMode": "Block",
                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    k.create(res_path("snapshot.storage.k8s.io/v1", "volumesnapshots", "app"), {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "snap", "namespace": "app"},
        "spec": {"volumeSnapshotClassName": "ocs-storagecluster-rbdplugin-snapclass",
                 "source": {"persistentVolumeClaimName": "data"}}})


def add_leftovers(env):
    """What an ODF cluster leaves around besides its operators: taints, rack labels, an SCC, a released PV."""
    k = env.kube
    k.merge("/api/v1/nodes/worker-1", {"spec": {"taints": [
        {"key": "node.ocs.openshift.io/storage", "value": "true", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}})
    k.merge("/api/v1/nodes/worker-2", {"metadata": {"labels": {"topology.rook.io/rack": "rack1"}}})
    k.create(res_path("security.openshift.io/v1", "securitycontextconstraints"), {
        "apiVersion": "security.openshift.io/v1", "kind": "SecurityContextConstraints",
        "metadata": {"name": "ceph-csi-op-scc"}, "allowPrivilegedContainer": True})
    k.create("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-released"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Delete",
                 "csi": {"driver": "openshift-storage.rbd.csi.ceph.com", "volumeHandle": "0001-0011-openshift-storage-x"}}})
    k.merge("/api/v1/persistentvolumes/pvc-released/status", {"status": {"phase": "Released"}})


def odf_crds(env):
    return sorted(c["metadata"]["name"] for c in env.kube.list("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
                  if c["spec"]["group"] in ODF_GROUPS)


def assert_uninstalled(env):
    k = env.kube
    assert k.get("/api/v1/namespaces/%s" % NS) is None
    assert odf_crds(env) == []
    assert [s["metadata"]["name"] for s in k.list("/apis/storage.k8s.io/v1/storageclasses")] == ["gp3-csi"]
    assert k.list(res_path("snapshot.storage.k8s.io/v1", "volumesnapshotclasses")) == []
    assert k.list("/apis/storage.k8s.io/v1/csidrivers") == []
    assert k.list(res_path("operators.coreos.com/v1", "operators")) == []
    assert k.list(res_path("console.openshift.io/v1", "consoleplugins")) == []
    assert k.get("/apis/operator.openshift.io/v1/consoles/cluster")["spec"]["plugins"] == ["monitoring-plugin"]
    assert k.list(res_path("security.openshift.io/v1", "securitycontextconstraints")) == []
    for node in k.list("/api/v1/nodes"):
        labels = node["metadata"].get("labels", {})
        assert "cluster.ocs.openshift.io/openshift-storage" not in labels and "topology.rook.io/rack" not in labels
        assert "node.ocs.openshift.io/storage" not in [t["key"] for t in node["spec"].get("taints", [])]
    assert [t["key"] for t in k.get("/api/v1/nodes/worker-1")["spec"]["taints"]] == ["dedicated"]


@pytest.mark.slow
def test_uninstall_refusals_then_documented_order_and_idempotence(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook)
    add_consumers(env)
    add_leftovers(env)
    sc_path = res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster")
    base = uninstall_vars(env, odf_uninstall_catalog_sources=[{"name": "odf-catalogsource",
                                                               "namespace": "openshift-marketplace"}])

    # 1. No confirmation: the inventory runs, nothing is touched.
    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=base)
    assert run.rc != 0 and recap(run)["changed"] == 0
    msg = " ".join(failure_messages(run))
    assert "Refusing to uninstall ODF from openshift-storage without confirmation" in msg, msg
    assert "app/data" in msg and "app/snap" in msg, msg
    inventory = fact(run, "odf_uninstall_inventory")
    assert inventory["pvcs"] == ["app/data"] and inventory["volume_snapshots"] == ["app/snap"]
    assert inventory["storageclusters"] == ["ocs-storagecluster"] and len(inventory["odf_subscriptions"]) == 11
    assert inventory["nodes_tainted"] == ["worker-1"]

    # 2. Confirmed but graceful while consumers exist: refused, it would wait forever.
    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=dict(base, odf_uninstall_confirm=True))
    assert run.rc != 0 and recap(run)["changed"] == 0
    assert "A graceful uninstall waits until no PVC or ObjectBucketClaim uses ODF storage" in " ".join(failure_messages(run))
    assert env.kube.get(sc_path) is not None

    # 3. Check mode of the real thing: reports the deletions, deletes nothing.
    full = dict(base, odf_uninstall_confirm=True, odf_uninstall_delete_consumers=True)
    check = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=full, check=True)
    assert_ok(check)
    assert recap(check)["changed"] > 0
    assert env.kube.get(sc_path) is not None and env.kube.get("/api/v1/namespaces/app/persistentvolumeclaims/data")
    assert "StorageCluster/ocs-storagecluster" in fact(check, "odf_uninstall_result")["deleted"]

    # 4. The uninstall.
    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=full)
    assert_ok(run)
    assert_uninstalled(env)
    assert env.kube.get("/api/v1/namespaces/app/persistentvolumeclaims/data") is None
    assert env.kube.get(res_path("snapshot.storage.k8s.io/v1", "volumesnapshots", "app", "snap")) is None
    assert env.kube.get("/api/v1/persistentvolumes/pvc-released") is None
    assert env.kube.list(res_path("operators.coreos.com/v1alpha1", "catalogsources")) == []
    result = fact(run, "odf_uninstall_result")
    assert result["unblocked"] == []       # the documented order needs no finalizer surgery
    deleted = result["deleted"]
    order = [deleted.index(x) for x in ("PersistentVolumeClaim/app/data", "StorageCluster/ocs-storagecluster",
                                        "ClientProfile/openshift-storage", "ClusterServiceVersion/cephcsi-operator.v4.20.0",
                                        "Namespace/openshift-storage", "CustomResourceDefinition/storageclusters.ocs.openshift.io")]
    assert order == sorted(order), deleted
    # The annotations reached the StorageCluster before its deletion, the cleanup jobs ran, and the
    # ClientProfile finalizer was released by the (still running) ceph-csi operator.
    assert len(env.sim.events_matching("cluster-cleanup-job-worker-")) == 3
    assert env.sim.events_matching("finalizer csi.ceph.com/cleanup released on ClientProfile openshift-storage/openshift-storage")

    # 5. Idempotence: a re-run and a check-mode re-run change nothing.
    again = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=full)
    assert_idempotent(again)
    assert fact(again, "odf_uninstall_result")["was_installed"] is False
    assert_idempotent(run_playbook(UNINSTALL_PLAYBOOK, extra_vars=full, check=True))
    env.assert_sim_healthy()


@pytest.mark.slow
def test_forced_uninstall_with_hanging_finalizers_and_sweep(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook)
    add_consumers(env)
    # The StorageCluster and the ClientProfile never get released by their "operators", and the
    # ocs-client-operator ConfigMap keeps its finalizer: the hangs reported on live 4.20 uninstalls.
    env.sim.hold.update({"StorageCluster", "ClientProfile", "ConfigMap/ocs-client-operator-config"})
    short = dict(odf_uninstall_confirm=True, odf_uninstall_mode="forced", odf_uninstall_timeout_storagecluster=4,
                 odf_uninstall_timeout_cephcsi=4, odf_uninstall_timeout_namespace=6, odf_uninstall_timeout_crds=6,
                 odf_uninstall_timeout_after_sweep=20)

    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, **short))
    assert run.rc != 0
    msg = " ".join(failure_messages(run))
    assert "StorageCluster deletion in openshift-storage did not finish within 4 s" in msg, msg
    assert "finalizers ['storagecluster.ocs.openshift.io']" in msg and "mode=forced" in msg, msg
    assert "odf_uninstall_finalizer_sweep=true" in msg, msg
    sc = env.kube.get(res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster"))
    assert sc["metadata"]["annotations"]["uninstall.ocs.openshift.io/mode"] == "forced"
    assert sc["metadata"].get("deletionTimestamp")

    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, odf_uninstall_finalizer_sweep=True, **short))
    assert_ok(run)
    unblocked = {(u["kind"], u["name"]): u for u in fact(run, "odf_uninstall_result")["unblocked"]}
    assert {("StorageCluster", "ocs-storagecluster"), ("ClientProfile", "openshift-storage"),
            ("ConfigMap", "ocs-client-operator-config")} <= set(unblocked), unblocked
    assert unblocked[("ClientProfile", "openshift-storage")]["finalizers"] == ["csi.ceph.com/cleanup"]
    assert unblocked[("StorageCluster", "ocs-storagecluster")]["while_waiting_for"] == "StorageCluster deletion"
    reports = [r for r in run.task_results() if r["_task"].endswith("Report each unblocked object")]
    assert "removed finalizers ['csi.ceph.com/cleanup'] from ClientProfile openshift-storage/openshift-storage" in str(reports)
    assert env.kube.get("/api/v1/namespaces/%s" % NS) is None and odf_crds(env) == []
    # Forced mode does not delete the consumers.
    assert env.kube.get("/api/v1/namespaces/app/persistentvolumeclaims/data") is not None

    assert_idempotent(run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, odf_uninstall_finalizer_sweep=True,
                                                                                 **short)))
    env.assert_sim_healthy()


@pytest.mark.slow
def test_failed_cleanup_job_stops_the_uninstall(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook)
    env.sim.failing_cleanup_jobs = True
    run = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, odf_uninstall_confirm=True,
                                                                     odf_uninstall_timeout_cleanup_jobs=10))
    assert run.rc != 0
    msg = " ".join(failure_messages(run))
    assert "Rook cleanup job(s) failed: cluster-cleanup-job-worker-0, cluster-cleanup-job-worker-1, " \
           "cluster-cleanup-job-worker-2" in msg, msg
    assert "odf_uninstall_ignore_failed_cleanup_jobs=true" in msg
    # The operators were not removed: nothing after the StorageCluster ran.
    assert len(env.kube.list(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS))) == 11

    # A re-run still stops on the failed jobs; after the disks were wiped by hand the user says so.
    rerun = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, odf_uninstall_confirm=True))
    assert rerun.rc != 0 and "Rook cleanup job(s) failed" in " ".join(failure_messages(rerun))
    done = run_playbook(UNINSTALL_PLAYBOOK, extra_vars=uninstall_vars(env, odf_uninstall_confirm=True,
                                                                      odf_uninstall_ignore_failed_cleanup_jobs=True))
    assert_ok(done)
    assert env.kube.get("/api/v1/namespaces/%s" % NS) is None
    env.assert_sim_healthy()
