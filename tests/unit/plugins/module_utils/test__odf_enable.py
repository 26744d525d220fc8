# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _crds_sms as crds
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_enable as en


def test_sms_crd_serves_both_versions_with_v1beta1_storage():
    crd = crds.sms_crd()
    assert crd["metadata"]["name"] == "snapshotmetadataservices.cbt.storage.k8s.io"
    assert crd["metadata"]["annotations"]["api-approved.kubernetes.io"].startswith("https://")
    spec = crd["spec"]
    assert spec["scope"] == "Cluster" and spec["names"]["shortNames"] == ["sms"]
    assert crds.served_versions(crd) == ["v1alpha1", "v1beta1"] and crds.storage_version(crd) == "v1beta1"
    schema = spec["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    assert schema["properties"]["spec"]["required"] == ["address", "audience", "caCert"]
    assert schema["properties"]["spec"]["properties"]["caCert"]["format"] == "byte"
    only = crds.sms_crd(versions=["v1alpha1"])
    assert crds.served_versions(only) == ["v1alpha1"] and crds.storage_version(only) == "v1alpha1"
    with pytest.raises(ValueError):
        crds.version_entry("v2", True)


def test_crd_add_versions_patch_carries_resource_version_and_records_what_it_added():
    crd = crds.sms_crd(versions=["v1beta1"])
    crd["metadata"]["resourceVersion"] = "42"
    patch = en.Engine._crd_add_versions_patch(crd, ["v1alpha1"])
    assert patch["metadata"]["resourceVersion"] == "42"
    assert [v["name"] for v in patch["spec"]["versions"]] == ["v1beta1", "v1alpha1"]
    assert [v["storage"] for v in patch["spec"]["versions"]] == [True, False]
    assert patch["metadata"]["annotations"] == {"cbt.toolkit/added-served-versions": "v1alpha1"}
    assert en.Engine._crd_add_versions_patch(crd, ["v1beta1"]) is None


def test_normalize_and_redact():
    obj = {"kind": "Secret", "metadata": {"name": "s", "resourceVersion": "1", "managedFields": [{}],
                                          "uid": "u", "labels": {}}, "data": {"tls.key": "c2VjcmV0"}}
    norm = en.normalize(obj)
    assert norm["metadata"] == {"name": "s"}
    red = en.redact(norm)
    assert red["data"]["tls.key"].startswith("<redacted sha256:")
    assert "c2VjcmV0" not in str(red)
    assert obj["metadata"]["resourceVersion"] == "1"  # input untouched


def test_needs_reconcile_reasons():
    base = {"found": True, "sidecar_present": True, "sidecar_tls_mounted": True, "sidecar_image": "a:v1"}
    assert en._needs_reconcile(base, None) is None
    assert en._needs_reconcile(dict(base, sidecar_present=False), None) == "sidecar missing"
    assert en._needs_reconcile(dict(base, sidecar_tls_mounted=False), None) == "sidecar without TLS mount"
    assert en._needs_reconcile(base, "a:v2") == "sidecar image differs"
    assert en._needs_reconcile(dict(base, found=False), None) == "ctrlplugin Deployment missing"


def test_owns_field_reads_managed_fields():
    cm = {"metadata": {"managedFields": [
        {"manager": "someone", "operation": "Update", "fieldsV1": {"f:data": {"f:plugin": {}}}},
        {"manager": "cbt.toolkit", "operation": "Apply", "fieldsV1": {"f:data": {"f:snapshot-metadata": {}}}}]}}
    assert en._owns_field(cm, ("f:data", "f:snapshot-metadata"))
    assert not en._owns_field(cm, ("f:data", "f:plugin"))


DRIVER = "openshift-storage.rbd.csi.ceph.com"


class _FakeApi(object):
    """Cluster-scoped SnapshotMetadataServices and the CRD; DELETE of the CRD drops them all, as the API server does."""

    def __init__(self, sms):
        self.sms = {s["metadata"]["name"]: s for s in sms}
        self.deleted = []

    def list(self, path, what=None):
        assert path.endswith("/" + crds.PLURAL)
        return list(self.sms.values())

    def delete(self, path, what=None):
        self.deleted.append(path)
        if "customresourcedefinitions" in path:
            self.sms.clear()
        else:
            self.sms.pop(path.rsplit("/", 1)[-1], None)


def _absent(sms, check_mode=False, **params):
    from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
    st = dg.Settings(dict(dict(driver=DRIVER, namespace="openshift-storage", state="absent"), **params))
    facts = dg.Facts()
    facts.groups = {}
    facts.namespace_exists = False
    facts.crd = crds.sms_crd(labels=en.OUR_LABELS)
    facts.sms_served_versions = ["v1alpha1", "v1beta1"]
    facts.sms = next((s for s in sms if s["metadata"]["name"] == DRIVER), None)
    facts.sms_version = "v1beta1"
    api = _FakeApi(sms)
    warnings = []
    engine = en.Engine(api, st, check_mode=check_mode, warn=warnings.append)
    engine.absent(facts)
    return engine, api, warnings


def _sms(name, ours):
    return crds.sms_object(name, "v1beta1", "a:1", name, "eA==", labels=en.OUR_LABELS if ours else None)


def test_absent_keeps_the_crd_while_a_foreign_sms_named_after_the_driver_remains():
    engine, api, warnings = _absent([_sms(DRIVER, ours=False)])
    assert api.sms and DRIVER in api.sms                               # still there: the CRD was not deleted
    assert api.deleted == [] and engine.actions == [] and engine.changed is False
    assert "SnapshotMetadataService %s was not created by cbt.toolkit; left in place" % DRIVER in warnings
    kept = [w for w in warnings if w.startswith("CustomResourceDefinition %s kept" % crds.CRD_NAME)]
    assert kept == ["CustomResourceDefinition %s kept: other SnapshotMetadataServices still use it (%s); "
                    "SnapshotMetadataService %s was not created by cbt.toolkit and is left in place, and deleting "
                    "the CRD would delete it too" % (crds.CRD_NAME, DRIVER, DRIVER)]
    # check mode plans the same
    engine, api, warnings = _absent([_sms(DRIVER, ours=False)], check_mode=True)
    assert engine.actions == [] and api.deleted == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_absent_deletes_the_crd_after_deleting_its_own_sms(check_mode):
    engine, api, warnings = _absent([_sms(DRIVER, ours=True)], check_mode=check_mode)
    verb = "would delete" if check_mode else "delete"
    assert engine.actions == ["%s SnapshotMetadataService %s" % (verb, DRIVER),
                              "%s CustomResourceDefinition %s" % (verb, crds.CRD_NAME)]
    assert not [w for w in warnings if "kept" in w]
    if not check_mode:
        assert api.sms == {} and len(api.deleted) == 2


def test_absent_keeps_the_crd_for_other_drivers_sms():
    engine, api, warnings = _absent([_sms(DRIVER, ours=True), _sms("other.rbd.csi.ceph.com", ours=False)])
    assert engine.actions == ["delete SnapshotMetadataService %s" % DRIVER]
    assert list(api.sms) == ["other.rbd.csi.ceph.com"]
    assert warnings == ["CustomResourceDefinition %s kept: other SnapshotMetadataServices still use it "
                        "(other.rbd.csi.ceph.com)" % crds.CRD_NAME]
