# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cluster whose SnapshotMetadataService CRD (not installed by this collection) serves only v1beta1:
the version trap for an ODF 4.20 cephcsi-operator (reads v1alpha1), and the right CRD for ODF 4.23, whose
ocs-client-operator already set up Service, certificate and Driver volume."""

import base64

from odf_bed import failed, ok

ENABLE = "odf_cbt_enable"
INFO = "odf_cbt_info"
SIDECAR = "csi-snapshot-metadata"
VOLUME = {"volume": {"name": "tls-key", "projected": {"sources": [{"secret": {"name": "manual-tls"}}]}},
          "mount": {"name": "tls-key", "mountPath": "/tmp/certificates", "readOnly": True}}


def test_trap_is_real_detected_explained_and_fixed(trap_bed, own_odf, run_module):
    ns = "trap420"
    driver, op = own_odf(trap_bed, ns, "4.20.0")
    drv_path = "/apis/csi.ceph.io/v1/namespaces/%s/drivers/%s" % (ns, driver)

    # 1. the trap is real: a v1beta1 SMS plus the tls-key volume, and still no sidecar
    trap_bed.create("/apis/cbt.storage.k8s.io/v1beta1/snapshotmetadataservices", {
        "apiVersion": "cbt.storage.k8s.io/v1beta1", "kind": "SnapshotMetadataService", "metadata": {"name": driver},
        "spec": {"address": "x.%s.svc:6443" % ns, "audience": driver, "caCert": "eA=="}})
    trap_bed.rest.merge(drv_path, {"spec": {"controllerPlugin": {"volumes": [VOLUME]}},
                                   "metadata": {"annotations": {"test/poke": "1"}}})
    trap_bed.wait_for("reconcile", lambda: op.reconciles.get(driver, 0) >= 2)
    assert SIDECAR not in trap_bed.containers(ns, driver)

    # 2. the diagnosis names it
    info, run = run_module(INFO, trap_bed.info_args(driver=driver, namespace=ns))
    ok(info, run)
    diag = info["diagnosis"]
    assert diag["reason"].startswith("CRD version trap: the SnapshotMetadataService CRD serves only v1beta1 but "
                                     "the cephcsi-operator 4.20.0 reads v1alpha1"), diag["reason"]
    assert diag["crd"]["missing_versions"] == ["v1alpha1"] and diag["crd"]["managed_by_us"] is False
    assert diag["cbt_supported"] is True and diag["cbt_enabled"] is False

    # clean the manual attempt away (the module does not take over foreign objects)
    trap_bed.rest.delete("/apis/cbt.storage.k8s.io/v1beta1/snapshotmetadataservices/%s" % driver)
    trap_bed.rest.merge(drv_path, {"spec": {"controllerPlugin": {"volumes": None}}})

    # 3. enabling fails with the explanation and changes nothing
    crd_rv = trap_bed.crd()["metadata"]["resourceVersion"]
    res, run = run_module(ENABLE, trap_bed.run_args(driver=driver, namespace=ns))
    failed(res, run)
    assert res["msg"].startswith("CRD version trap"), res["msg"]
    assert "crd_add_missing_versions=true" in res["msg"]
    assert res["changed"] is False and trap_bed.ours(ns) == []
    assert trap_bed.crd()["metadata"]["resourceVersion"] == crd_rv

    # 4. serve v1alpha1 as well: enabled
    args = trap_bed.run_args(driver=driver, namespace=ns, crd_add_missing_versions=True)
    res, run = run_module(ENABLE, args, diff=True)
    ok(res, run)
    assert "update CustomResourceDefinition snapshotmetadataservices.cbt.storage.k8s.io" in res["actions"]
    crd = trap_bed.crd()
    assert [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]] == [
        ("v1beta1", True, True), ("v1alpha1", True, False)]
    assert crd["metadata"]["annotations"]["cbt.toolkit/added-served-versions"] == "v1alpha1"
    assert res["diagnosis"]["cbt_enabled"] is True, res["diagnosis"]["problems"]
    assert trap_bed.containers(ns, driver)[-1] == SIDECAR
    assert crd["status"]["storedVersions"] == ["v1beta1"]

    res, run = run_module(ENABLE, args)
    assert res["changed"] is False, res["actions"]

    # 5. absent: our version entry goes, the foreign CRD stays
    res, run = run_module(ENABLE, dict(args, state="absent"))
    ok(res, run)
    crd = trap_bed.crd()
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1beta1"]
    assert "cbt.toolkit/added-served-versions" not in (crd["metadata"].get("annotations") or {})
    assert SIDECAR not in trap_bed.containers(ns, driver)
    assert trap_bed.ours(ns) == []
    trap_bed.check_loops()


def test_odf_423_automation_and_image_override(trap_bed, own_odf, run_module):
    """ODF 4.23: ocs-client-operator made the Service, the serving cert, the Driver's tls-key volume and a
    ConfigMap named after the driver; the operator reads v1beta1, so the v1beta1-only CRD is right. The module
    only adds the SnapshotMetadataService (from that ConfigMap) and makes the operator reconcile."""
    ns = "odf423"
    driver = own_odf(trap_bed, ns, "4.23.0")[0]
    svc = "openshift-storage-rbd-snapshot-metadata"
    trap_bed.create("/api/v1/namespaces/%s/services" % ns, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc, "annotations": {
            "service.beta.openshift.io/serving-cert-secret-name": "%s-tls" % svc}},
        "spec": {"selector": {"app": "%s-ctrlplugin" % driver}, "ports": [{"port": 6443, "targetPort": 50051}]}})
    ca_pem = trap_bed.wait_for("service CA bundle", lambda: (trap_bed.get(
        "/api/v1/namespaces/%s/configmaps/openshift-service-ca.crt" % ns) or {}).get("data", {}).get("service-ca.crt"))
    trap_bed.create("/api/v1/namespaces/%s/configmaps" % ns, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": driver},
        "data": {"address": "%s.%s.svc:6443" % (svc, ns), "audience": driver, "caCert": ca_pem,
                 "driverName": driver}})
    volume = {"volume": {"name": "tls-key", "projected": {"sources": [{"secret": {"name": "%s-tls" % svc}}]}},
              "mount": {"name": "tls-key", "mountPath": "/tmp/certificates", "readOnly": True}}
    trap_bed.rest.merge("/apis/csi.ceph.io/v1/namespaces/%s/drivers/%s" % (ns, driver),
                        {"spec": {"controllerPlugin": {"volumes": [volume]}}})
    trap_bed.wait_for("reconcile", lambda: trap_bed.deployment(ns, driver)["spec"]["template"]["spec"]["volumes"][0]
                      ["name"] == "tls-key")
    assert SIDECAR not in trap_bed.containers(ns, driver)
    crd_rv = trap_bed.crd()["metadata"]["resourceVersion"]
    args = trap_bed.run_args(driver=driver, namespace=ns)

    res, run = run_module(ENABLE, dict(args, reconcile_trigger="restart_operator"))
    ok(res, run)
    assert res["tls"] == {"provider": "odf", "secret_name": "%s-tls" % svc}
    assert [a for a in res["actions"] if not a.startswith("deleted pod")] == [
        "create SnapshotMetadataService %s" % driver]
    assert res["sms"] == {"name": driver, "api_version": "v1beta1", "audience": driver,
                          "address": "%s.%s.svc:6443" % (svc, ns)}
    assert base64.b64decode(trap_bed.sms(driver)["spec"]["caCert"]).decode() == ca_pem
    assert "crd_version_mismatch" not in [p["code"] for p in res["diagnosis"]["problems"]]
    assert trap_bed.crd()["metadata"]["resourceVersion"] == crd_rv
    assert trap_bed.containers(ns, driver)[-1] == SIDECAR and res["diagnosis"]["cbt_enabled"] is True
    assert trap_bed.ours(ns) == ["sms/%s" % driver]

    res, run = run_module(ENABLE, args)
    assert res["changed"] is False, res["actions"]

    # absent without any Driver change of ours: the module pokes the Driver and leaves no annotation behind
    res, run = run_module(ENABLE, dict(args, state="absent"))
    ok(res, run)
    assert res["actions"] == ["delete SnapshotMetadataService %s" % driver,
                              "update Driver %s/%s" % (ns, driver), "update Driver %s/%s" % (ns, driver)]
    assert SIDECAR not in trap_bed.containers(ns, driver)
    drv = trap_bed.driver(ns, driver)
    assert drv["spec"]["controllerPlugin"]["volumes"] == [volume]          # ocs-client-operator's, kept
    assert not (drv["metadata"].get("annotations") or {})
    assert trap_bed.ours(ns) == []

    # an image override goes through a Driver image set of ours
    image = "registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.0.0"
    res, run = run_module(ENABLE, dict(args, sidecar_image=image))
    ok(res, run)
    dep = trap_bed.deployment(ns, driver)
    side = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == SIDECAR][0]
    assert side["image"] == image
    assert res["diagnosis"]["sidecar"]["delta_base_field"] == "handle"
    assert res["diagnosis"]["sidecar"]["reads_sms_version"] == "v1beta1"
    assert trap_bed.driver(ns, driver)["spec"]["imageSet"] == {"name": "csi-snapshot-metadata-images"}
    res, run = run_module(ENABLE, dict(args, state="absent"))
    ok(res, run)
    assert trap_bed.ours(ns) == [] and trap_bed.driver(ns, driver)["spec"].get("imageSet") is None
    assert SIDECAR not in trap_bed.containers(ns, driver)
    trap_bed.check_loops()
