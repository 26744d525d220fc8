# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CRD version trap: an ODF 4.20 cephcsi-operator reads SnapshotMetadataService v1alpha1, but the
cluster's CRD (not installed by this collection) serves only v1beta1."""

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


def test_v1beta1_reader_is_happy_with_the_v1beta1_crd(trap_bed, own_odf, run_module):
    """ODF 4.23 reads v1beta1: the same CRD is fine, no trap reported, nothing added to the CRD."""
    ns = "trap423"
    driver = own_odf(trap_bed, ns, "4.23.0")[0]
    crd_rv = trap_bed.crd()["metadata"]["resourceVersion"]
    res, run = run_module(ENABLE, trap_bed.run_args(driver=driver, namespace=ns,
                                                    sidecar_image="registry.k8s.io/sig-storage/"
                                                                  "csi-snapshot-metadata:v1.0.0"))
    ok(res, run)
    assert "crd_version_mismatch" not in [p["code"] for p in res["diagnosis"]["problems"]]
    assert trap_bed.crd()["metadata"]["resourceVersion"] == crd_rv
    assert res["sms"]["api_version"] == "v1beta1"
    dep = trap_bed.deployment(ns, driver)
    side = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == SIDECAR][0]
    assert side["image"] == "registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.0.0"
    assert res["diagnosis"]["sidecar"]["delta_base_field"] == "handle"
    res, run = run_module(ENABLE, trap_bed.run_args(driver=driver, namespace=ns, state="absent"))
    ok(res, run)
    assert trap_bed.ours(ns) == [] and trap_bed.driver(ns, driver)["spec"].get("imageSet") is None
