# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""odf_cbt_enable / odf_cbt_info on an OpenShift-like cluster (SCC without secret volumes as in
ODF 4.20/4.21, OpenShift service CA) with ODF 4.19 and 4.20 cephcsi-operators played by the test bed."""

import base64
import json

import pytest
import yaml

from odf_bed import failed, ok

ENABLE = "odf_cbt_enable"
INFO = "odf_cbt_info"
SIDECAR = "csi-snapshot-metadata"


def _snapshot(bed, ns, driver):
    """What must not change when the module is not supposed to change anything."""
    crd = bed.crd()
    return {"driver_rv": bed.driver(ns, driver)["metadata"]["resourceVersion"],
            "containers": bed.containers(ns, driver), "ours": bed.ours(ns),
            "crd_rv": crd["metadata"]["resourceVersion"] if crd else None,
            "sms": bool(bed.sms(driver)) if crd else False}


@pytest.fixture(scope="module")
def odf420(ocp_bed):
    """ODF 4.20 namespace whose cephcsi-operator image has the CBT code."""
    return ocp_bed.setup_odf("odf420", "4.20.0")


def test_odf_419_diagnosis_and_no_changes(ocp_bed, own_odf, run_module):
    driver, op = own_odf(ocp_bed, "odf419", "4.19.0")
    before = _snapshot(ocp_bed, "odf419", driver)
    assert len(before["containers"]) == 8

    info, run = run_module(INFO, ocp_bed.info_args(driver=driver, namespace="odf419"))
    ok(info, run)
    diag = info["diagnosis"]
    assert diag["cbt_supported"] is False and diag["cbt_enabled"] is False
    assert "cephcsi-operator 4.19.0 predates snapshot-metadata support" in diag["reason"]
    assert diag["odf"]["version"] == "4.19.0" and diag["operator"]["csv"] == "cephcsi-operator.v4.19.0-rhodf"
    assert diag["kubernetes"]["openshift"] is True and diag["kubernetes"]["version"].startswith("v1.")
    assert diag["ctrlplugin"]["container_count"] == 8 and diag["ctrlplugin"]["sidecar_present"] is False
    assert diag["scc"]["allows_secret_volumes"] is False

    for check in (True, False):
        res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace="odf419"), check=check)
        failed(res, run)
        assert "4.19.0 predates snapshot-metadata support" in res["msg"]
        assert res["changed"] is False and res["actions"] == []
        assert res["diagnosis"]["cbt_supported"] is False
    assert _snapshot(ocp_bed, "odf419", driver) == before
    assert op.reconciles[driver] == 1


def test_odf_420_image_without_cbt_code_is_explained(ocp_bed, own_odf, run_module):
    """The seed's case: ODF 4.20 whose cephcsi-operator image predates PR #274 (8 containers, not 9)."""
    driver = own_odf(ocp_bed, "odf420old", "4.20.0", cbt_code=False)[0]
    before = _snapshot(ocp_bed, "odf420old", driver)
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace="odf420old"))
    failed(res, run)
    assert res["msg"].startswith("operator image predates snapshot-metadata support")
    assert "snapshotmetadataservices.cbt.storage.k8s.io" in res["msg"] and "release-4.20" in res["msg"]
    assert res["diagnosis"]["operator"]["sms_permission"] is False
    assert res["diagnosis"]["ctrlplugin"]["container_count"] == 8
    assert res["changed"] is False
    assert _snapshot(ocp_bed, "odf420old", driver) == before


def test_check_mode_changes_nothing(ocp_bed, odf420, run_module):
    driver = odf420[0]
    before = _snapshot(ocp_bed, "odf420", driver)
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace="odf420"), check=True, diff=True)
    ok(res, run)
    assert res["changed"] is True
    text = "\n".join(res["actions"])
    if before["crd_rv"] is None:
        assert "would create CustomResourceDefinition snapshotmetadataservices.cbt.storage.k8s.io" in text
    assert "would create Service odf420/csi-snapshot-metadata" in text
    assert "would create SnapshotMetadataService %s" % driver in text
    assert "would update Driver odf420/%s" % driver in text
    assert len(res["diff"]) >= 3
    assert _snapshot(ocp_bed, "odf420", driver) == before
    ocp_bed.check_loops()


def test_enable_idempotent_diff_and_absent(ocp_bed, odf420, run_module):
    driver, op = odf420
    ns = "odf420"
    args = ocp_bed.run_args(driver=driver, namespace=ns)

    # present: everything created, the operator adds the sidecar, the rollout gets ready
    res, run = run_module(ENABLE, args, diff=True)
    ok(res, run)
    assert res["changed"] is True
    diag = res["diagnosis"]
    assert diag["cbt_enabled"] is True, diag["problems"]
    assert diag["reason"].startswith("CBT is enabled")
    containers = ocp_bed.containers(ns, driver)
    assert len(containers) == 9 and containers[-1] == SIDECAR
    assert res["tls"]["provider"] == "service_ca"
    assert res["sms"] == {"name": driver, "api_version": "v1alpha1", "audience": driver,
                          "address": "csi-snapshot-metadata.%s.svc:6443" % ns}
    headers = [d["after_header"] for d in res["diff"]]
    assert any("Service %s/csi-snapshot-metadata" % ns in h for h in headers), headers
    assert any("Driver %s/%s" % (ns, driver) in h for h in headers), headers

    # what exists in the cluster
    crd = ocp_bed.crd()
    assert [v["name"] for v in crd["spec"]["versions"] if v["served"]] == ["v1alpha1", "v1beta1"]
    sms_a = ocp_bed.sms(driver, "v1alpha1")
    assert sms_a is not None and ocp_bed.sms(driver, "v1beta1") is not None
    ca_pem = base64.b64decode(sms_a["spec"]["caCert"]).decode()
    svc_ca = ocp_bed.get("/api/v1/namespaces/%s/configmaps/openshift-service-ca.crt" % ns)["data"]["service-ca.crt"]
    assert ca_pem == svc_ca
    svc = ocp_bed.get("/api/v1/namespaces/%s/services/csi-snapshot-metadata" % ns)
    assert svc["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"] == \
        "csi-snapshot-metadata-tls"
    assert svc["spec"]["ports"][0]["port"] == 6443 and svc["spec"]["ports"][0]["targetPort"] == 50051
    assert svc["spec"]["selector"] == {"app": "%s-ctrlplugin" % driver}
    vols = ocp_bed.driver(ns, driver)["spec"]["controllerPlugin"]["volumes"]
    assert vols == [{"volume": {"name": "tls-key", "projected": {"sources": [
        {"secret": {"name": "csi-snapshot-metadata-tls"}}]}},
        "mount": {"name": "tls-key", "mountPath": "/tmp/certificates", "readOnly": True}}]
    assert ocp_bed.driver(ns, driver)["spec"]["controllerPlugin"]["replicas"] == 2  # operator's fields untouched
    assert diag["sidecar"]["delta_base_field"] == "name"   # ODF 4.20 ships sidecar v0.1.0
    assert "sidecar_name_based_delta" in [p["code"] for p in diag["problems"]]

    # second run: nothing to do
    res2, run = run_module(ENABLE, args, diff=True)
    ok(res2, run)
    assert res2["changed"] is False, res2["actions"]
    assert res2["actions"] == [] and res2["diff"] == []
    assert res2["diagnosis"]["cbt_enabled"] is True
    res3, run = run_module(ENABLE, args, check=True)
    assert res3["changed"] is False, res3["actions"]

    info, run = run_module(INFO, ocp_bed.info_args(driver=driver, namespace=ns))
    assert info["changed"] is False and info["diagnosis"]["cbt_enabled"] is True

    # absent: nothing of ours left, the operator removes the sidecar
    res4, run = run_module(ENABLE, dict(args, state="absent"), diff=True)
    ok(res4, run)
    assert res4["changed"] is True
    assert ocp_bed.containers(ns, driver) == containers[:-1]
    assert ocp_bed.ours(ns) == []
    assert ocp_bed.crd() is None
    drv = ocp_bed.driver(ns, driver)
    assert "volumes" not in drv["spec"].get("controllerPlugin", {})
    assert not any(k.startswith("cbt.toolkit/") for k in (drv["metadata"].get("annotations") or {}))
    assert ocp_bed.get("/api/v1/namespaces/%s/secrets/csi-snapshot-metadata-tls" % ns) is None
    assert res4["diagnosis"]["cbt_enabled"] is False
    res5, run = run_module(ENABLE, dict(args, state="absent"))
    assert res5["changed"] is False, res5["actions"]
    ocp_bed.check_loops()


def test_sms_created_after_the_volume_needs_a_reconcile_trigger(ocp_bed, own_odf, run_module):
    """The operator does not watch SnapshotMetadataService objects: with the tls-key volume already on the
    Driver, creating the SMS alone changes nothing until the module triggers a reconcile."""
    ns = "odf420late"
    driver, op = own_odf(ocp_bed, ns, "4.21.0")
    ocp_bed.rest.merge("/apis/csi.ceph.io/v1/namespaces/%s/drivers/%s" % (ns, driver), {"spec": {"controllerPlugin": {
        "volumes": [{"volume": {"name": "tls-key", "projected": {"sources": [
            {"secret": {"name": "csi-snapshot-metadata-tls"}}]}},
            "mount": {"name": "tls-key", "mountPath": "/tmp/certificates", "readOnly": True}}]}}})
    ocp_bed.wait_for("reconcile after the volume", lambda: op.reconciles.get(driver) == 2)
    assert SIDECAR not in ocp_bed.containers(ns, driver)
    restarts = op.restarts

    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns,
                                                   reconcile_trigger="restart_operator"))
    ok(res, run)
    assert any(a.startswith("deleted pod %s/ceph-csi-controller-manager-" % ns) for a in res["actions"]), res["actions"]
    assert not any(a.startswith("update Driver") for a in res["actions"]), res["actions"]
    assert op.restarts == restarts + 1
    assert ocp_bed.containers(ns, driver)[-1] == SIDECAR
    assert res["diagnosis"]["cbt_enabled"] is True

    # the same with the default trigger (annotation) after a fresh start
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns, state="absent"))
    ok(res, run)
    assert SIDECAR not in ocp_bed.containers(ns, driver)
    ocp_bed.rest.merge("/apis/csi.ceph.io/v1/namespaces/%s/drivers/%s" % (ns, driver), {"spec": {"controllerPlugin": {
        "volumes": [{"volume": {"name": "tls-key", "projected": {"sources": [
            {"secret": {"name": "csi-snapshot-metadata-tls"}}]}},
            "mount": {"name": "tls-key", "mountPath": "/tmp/certificates", "readOnly": True}}]}}})
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns))
    ok(res, run)
    assert "update Driver %s/%s" % (ns, driver) in res["actions"]
    assert "cbt.toolkit/reconcile-requested-at" in ocp_bed.driver(ns, driver)["metadata"]["annotations"]
    assert ocp_bed.containers(ns, driver)[-1] == SIDECAR
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns, state="absent"))
    ok(res, run)
    assert ocp_bed.ours(ns) == [] and "cbt.toolkit/reconcile-requested-at" not in (
        ocp_bed.driver(ns, driver)["metadata"].get("annotations") or {})


def test_scc_refusing_secret_volume_times_out_with_containers_and_events(ocp_bed, own_odf, run_module):
    ns = "odf420scc"
    driver = own_odf(ocp_bed, ns, "4.20.0")[0]
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns, tls_volume_type="secret",
                                                   wait_timeout=6))
    failed(res, run)
    msg = res["msg"]
    assert msg.startswith("timed out after 6 s waiting for the csi-snapshot-metadata container of Deployment "
                          "%s/%s-ctrlplugin to be ready" % (ns, driver)), msg
    assert "Containers: csi-rbdplugin, csi-provisioner" in msg and SIDECAR in msg
    assert "FailedCreate" in msg and "secret volumes are not allowed to be used" in msg
    assert "use tls_volume_type=projected" in msg
    assert res["changed"] is True and res["events"]

    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns))   # auto -> projected
    ok(res, run)
    assert res["diagnosis"]["driver"]["tls_volume"]["type"] == "projected"
    assert res["diagnosis"]["cbt_enabled"] is True
    res, run = run_module(ENABLE, ocp_bed.run_args(driver=driver, namespace=ns, state="absent"))
    ok(res, run)
    assert ocp_bed.ours(ns) == []


BAD_INPUT = [
    (dict(driver="unknown.rbd.csi.ceph.com"), "Driver unknown.rbd.csi.ceph.com not found in namespace odf420 "
                                              "(Drivers there: odf420.rbd.csi.ceph.com)"),
    (dict(namespace="no-such-namespace"), "namespace no-such-namespace does not exist"),
    (dict(sidecar_image="not an image!"), "sidecar_image 'not an image!' is not a valid image reference"),
    (dict(sidecar_image="registry.k8s.io/sig-storage/csi-snapshot-metadata"), "has neither a tag nor a digest"),
    (dict(driver="odf420.cephfs.csi.ceph.com"), "implemented by the RBD driver only"),
    (dict(service_port=0), "service_port 0 is not a TCP port"),
    (dict(cert_validity_days=10), "cert_validity_days (10) must be larger than cert_renew_before_days (30)"),
    (dict(tls_provider="odf"), "tls_provider=odf needs ConfigMap odf420/odf420.rbd.csi.ceph.com"),
]


def test_bad_input_fails_cleanly(ocp_bed, odf420, run_playbook):
    """Every bad input fails with a message naming the value and what to do, and changes nothing.
    (One playbook with a task per case: one Ansible start-up instead of one per case.)"""
    driver = odf420[0]
    before = _snapshot(ocp_bed, "odf420", driver)
    tasks = []
    for overrides, _words in BAD_INPUT:
        args = ocp_bed.run_args(driver=driver, namespace="odf420")
        args.update(overrides)
        tasks.append({"name": "bad input %s" % json.dumps(overrides), "cbt.toolkit.odf_cbt_enable": args,
                      "ignore_errors": True})
    run = run_playbook(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    results = run.task_results()
    assert len(results) == len(BAD_INPUT), run
    for (overrides, words), res in zip(BAD_INPUT, results):
        assert words in failed(res, run), (overrides, res.get("msg"))
        assert res.get("changed") is False, (overrides, res)
    assert _snapshot(ocp_bed, "odf420", driver) == before


def test_rbac_read_only_user(ocp_bed, odf420, run_module):
    driver = odf420[0]
    ocp_bed.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "odf-viewer"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]})
    ocp_bed.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "odf-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "odf-viewer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "odf-viewer"}]})
    viewer = str(ocp_bed.cluster.user_kubeconfig("odf-viewer"))
    before = _snapshot(ocp_bed, "odf420", driver)

    info, run = run_module(INFO, dict(ocp_bed.info_args(driver=driver, namespace="odf420"), kubeconfig=viewer))
    ok(info, run)
    assert info["diagnosis"]["cbt_supported"] is True and info["diagnosis"]["operator"]["version"] == "4.20.0"

    res, run = run_module(ENABLE, dict(ocp_bed.run_args(driver=driver, namespace="odf420"), kubeconfig=viewer),
                          check=True)
    ok(res, run)
    assert res["changed"] is True

    res, run = run_module(ENABLE, dict(ocp_bed.run_args(driver=driver, namespace="odf420"), kubeconfig=viewer))
    failed(res, run)
    assert "HTTP 403" in res["msg"] and 'User "odf-viewer" cannot' in res["msg"], res["msg"]
    assert "permission denied: grant the user the RBAC permission named above" in res["msg"]
    assert _snapshot(ocp_bed, "odf420", driver) == before

    nobody = str(ocp_bed.cluster.user_kubeconfig("odf-nobody"))
    info, run = run_module(INFO, dict(ocp_bed.info_args(driver=driver, namespace="odf420"), kubeconfig=nobody))
    ok(info, run)
    problems = {p["code"]: p["message"] for p in info["diagnosis"]["problems"]}
    assert "forbidden" in problems and 'Driver odf420/%s' % driver in problems["forbidden"], json.dumps(problems)
