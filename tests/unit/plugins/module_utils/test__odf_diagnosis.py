# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _crds_sms as crds
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg

DRIVER = "openshift-storage.rbd.csi.ceph.com"


def params(**kw):
    base = dict(driver=DRIVER, namespace="openshift-storage")
    base.update(kw)
    return base


def csv(name, version, sms=True, phase="Succeeded"):
    rules = [{"apiGroups": ["csi.ceph.io"], "resources": ["drivers"], "verbs": ["get", "list", "watch"]}]
    if sms:
        rules.append({"apiGroups": [crds.GROUP], "resources": [crds.PLURAL], "verbs": ["get", "list", "watch"]})
    return {"metadata": {"name": name}, "spec": {"version": version, "install": {"strategy": "deployment", "spec": {
        "clusterPermissions": [{"serviceAccountName": "ceph-csi-controller-manager", "rules": rules}]}}},
        "status": {"phase": phase}}


def deployment(containers, sidecar_image=None, tls_mount=True, ready=True, generation=2):
    conts = [{"name": c, "image": "img"} for c in containers]
    if sidecar_image:
        mounts = [{"name": "socket-dir", "mountPath": "/csi"}]
        if tls_mount:
            mounts.append({"name": "tls-key", "mountPath": dg.TLS_MOUNT_PATH})
        conts.append({"name": dg.SIDECAR, "image": sidecar_image, "volumeMounts": mounts})
    n = 2 if ready else 0
    return {"metadata": {"name": DRIVER + "-ctrlplugin", "generation": generation},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": DRIVER + "-ctrlplugin"}},
                     "template": {"spec": {"containers": conts}}},
            "status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": n,
                       "availableReplicas": n}}


BASE8 = ["csi-rbdplugin", "csi-provisioner", "csi-resizer", "csi-attacher", "csi-snapshotter",
         "csi-omap-generator", "csi-addons", "log-rotator"]


@pytest.mark.parametrize("text, expected", [
    ("4.20.3-rhodf", (4, 20, 3)), ("v0.1.0", (0, 1, 0)), ("cephcsi-operator.v4.19.0", (4, 19, 0)),
    ("4.21", (4, 21, 0)), ("latest", None), (None, None)])
def test_parse_version(text, expected):
    assert dg.parse_version(text) == expected


@pytest.mark.parametrize("image", [
    "registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.2.0",
    "quay.io:5000/org/csi-snapshot-metadata@sha256:" + "a" * 64,
    "localhost/sidecar:1.0",
    "csi-snapshot-metadata:v1.0.0"])
def test_parse_image_accepts_pinned_references(image):
    assert dg.parse_image(image)["repository"].endswith(("csi-snapshot-metadata", "sidecar"))


@pytest.mark.parametrize("image, words", [
    ("not an image!", "not a valid image reference"),
    ("registry.k8s.io/sig-storage/csi-snapshot-metadata", "neither a tag nor a digest"),
    ("Registry/UPPER:v1", "not a valid image reference"),
    ("repo@sha256:short", "not a valid image reference")])
def test_parse_image_rejects_bad_references(image, words):
    with pytest.raises(dg.InputError) as err:
        dg.parse_image(image)
    assert words in str(err.value) and "sidecar_image" in str(err.value)


def test_classify_operator_versions():
    old = dg.classify_operator((4, 19, 0), False)
    assert old["supports_cbt"] is False and "predates snapshot-metadata support" in old["reason"]
    assert "4.19.0" in old["reason"]
    pre = dg.classify_operator((4, 20, 0), False)
    assert pre["supports_cbt"] is False
    assert pre["reason"].startswith("operator image predates snapshot-metadata support")
    ok20 = dg.classify_operator((4, 20, 0), True)
    assert (ok20["supports_cbt"], ok20["sms_api_version"], ok20["trigger"]) == (
        True, "v1alpha1", "snapshotmetadataservice_and_tls_volume")
    ok23 = dg.classify_operator((4, 23, 1), True)
    assert ok23["sms_api_version"] == "v1beta1" and not ok23["passes_audience"]
    new = dg.classify_operator((5, 0, 0), False)
    assert (new["supports_cbt"], new["trigger"], new["passes_audience"]) == (True, "tls_volume", True)
    unknown = dg.classify_operator(None, None)
    assert unknown["supports_cbt"] is None and unknown["sms_api_version"] is None


def test_sidecar_versions_and_delta_field():
    assert dg.sidecar_sms_version((0, 1, 0), False) == "v1alpha1"
    assert dg.sidecar_sms_version((1, 0, 0), False) == "v1beta1"
    assert dg.sidecar_sms_version((1, 0, 0), True) is None
    assert dg.delta_base_field((0, 1, 0)) == "name"
    assert dg.delta_base_field((0, 2, 0)) == "handle"
    assert dg.required_sms_versions({"trigger": "snapshotmetadataservice_and_tls_volume",
                                     "sms_api_version": "v1alpha1"}, (1, 0, 0)) == ["v1alpha1", "v1beta1"]
    assert dg.required_sms_versions({"trigger": "tls_volume", "sms_api_version": "v1beta1",
                                     "passes_audience": True}, (1, 0, 0)) == []


def test_csv_permissions_and_pick():
    assert dg.csv_grants_sms(csv("cephcsi-operator.v4.20.0", "4.20.0", sms=True))
    assert not dg.csv_grants_sms(csv("cephcsi-operator.v4.20.0", "4.20.0", sms=False))
    csvs = [csv("cephcsi-operator.v4.19.0", "4.19.0", phase="Replacing"), csv("cephcsi-operator.v4.20.1", "4.20.1"),
            csv("odf-operator.v4.20.1", "4.20.1")]
    assert dg.pick_csv(csvs, dg.OPERATOR_CSV_PREFIX)["metadata"]["name"] == "cephcsi-operator.v4.20.1"
    assert dg.pick_csv(csvs, "nothing.") is None


def test_sidecar_status_reports_containers_and_readiness():
    st = dg.sidecar_status(deployment(BASE8))
    assert st["container_count"] == 8 and not st["sidecar_present"] and st["rollout_complete"]
    st = dg.sidecar_status(deployment(BASE8, "x/csi-snapshot-metadata:v0.1.0"), pods=[])
    assert st["sidecar_present"] and st["sidecar_tls_mounted"] and not st["sidecar_ready"]
    pod = {"metadata": {}, "status": {"containerStatuses": [{"name": dg.SIDECAR, "ready": True}]}}
    st = dg.sidecar_status(deployment(BASE8, "x/csi-snapshot-metadata:v0.1.0"), pods=[pod])
    assert st["sidecar_ready"] and st["pods_with_ready_sidecar"] == 1
    st = dg.sidecar_status(deployment(BASE8, "x:v0.1.0", tls_mount=False), pods=[pod])
    assert not st["sidecar_ready"] and not st["sidecar_tls_mounted"]
    stale = deployment(BASE8, "x:v0.1.0", generation=3)
    stale["status"]["observedGeneration"] = 2
    assert not dg.sidecar_status(stale)["rollout_complete"]
    assert dg.sidecar_status(None)["found"] is False


@pytest.mark.parametrize("kw, words", [
    (dict(driver="openshift-storage.cephfs.csi.ceph.com"), "RBD driver only"),
    (dict(driver="example.com"), "not a ceph-csi driver name"),
    (dict(driver="Bad_Name"), "not a valid Driver name"),
    (dict(namespace="Not-A-Namespace"), "namespace"),
    (dict(service_port=70000), "service_port"),
    (dict(service_port=0), "service_port 0"),
    (dict(wait_timeout=-1), "wait_timeout"),
    (dict(sidecar_image="nope nope"), "sidecar_image"),
    (dict(cert_validity_days=20, cert_renew_before_days=30), "cert_validity_days"),
    (dict(ca_validity_days=100, cert_validity_days=365), "ca_validity_days"),
    (dict(address="https://x:1"), "address"),
    (dict(service_name="9starts-with-digit"), "service_name")])
def test_settings_reject_bad_input(kw, words):
    with pytest.raises(dg.InputError) as err:
        dg.Settings(params(**kw))
    assert words in str(err.value)


def test_settings_defaults():
    st = dg.Settings(params())
    assert st.operator_namespace == "openshift-storage"
    assert st.tls_secret_name == "csi-snapshot-metadata-tls" and st.ca_secret_name == "csi-snapshot-metadata-ca"
    assert st.default_address() == "csi-snapshot-metadata.openshift-storage.svc:6443"
    assert st.audience == DRIVER and st.deployment_name == DRIVER + "-ctrlplugin"


def facts_for(operator_csv=None, crd_versions=None, deploy=None, driver=True, sms=False, scc_volumes=None,
              tls_volume=None):
    f = dg.Facts()
    f.server_version = {"gitVersion": "v1.33.4"}
    f.groups = {"csi.ceph.io": ["v1"], "operators.coreos.com": ["v1alpha1"], "security.openshift.io": ["v1"]}
    f.openshift = True
    f.namespace_exists = True
    f.driver_api_version = "v1"
    if driver:
        spec = {}
        if tls_volume:
            spec = {"controllerPlugin": {"volumes": [tls_volume]}}
        f.driver = {"metadata": {"name": DRIVER}, "spec": spec}
    f.operator_csv = operator_csv
    f.csvs_readable = True
    if crd_versions:
        f.crd = crds.sms_crd(versions=crd_versions)
        f.sms_served_versions = list(crd_versions)
    f.deployment = deploy
    f.pods = []
    if sms:
        f.sms = crds.sms_object(DRIVER, "v1beta1", "a:1", DRIVER, "eA==")
        f.sms_version = "v1beta1"
    if scc_volumes is not None:
        f.scc = {"metadata": {"name": "ceph-csi-op-scc"}, "volumes": scc_volumes}
    return f


def test_diagnose_odf_419_is_unsupported():
    st = dg.Settings(params())
    diag = dg.diagnose(st, facts_for(csv("cephcsi-operator.v4.19.0-rhodf", "4.19.0-rhodf", sms=False),
                                     deploy=deployment(BASE8)))
    assert diag["cbt_supported"] is False and diag["cbt_enabled"] is False
    assert "4.19.0 predates snapshot-metadata support" in diag["reason"]
    assert diag["operator"]["version"] == "4.19.0"
    assert diag["ctrlplugin"]["container_count"] == 8


def test_diagnose_image_before_pr274():
    st = dg.Settings(params())
    diag = dg.diagnose(st, facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf", sms=False),
                                     deploy=deployment(BASE8)))
    assert diag["reason"].startswith("operator image predates snapshot-metadata support")
    assert diag["operator"]["sms_permission"] is False


def test_diagnose_version_trap_is_explained():
    st = dg.Settings(params())
    diag = dg.diagnose(st, facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf"), crd_versions=["v1beta1"],
                                     deploy=deployment(BASE8), sms=True))
    codes = [p["code"] for p in diag["problems"]]
    assert "crd_version_mismatch" in codes
    trap = [p for p in diag["problems"] if p["code"] == "crd_version_mismatch"][0]["message"]
    assert "serves only v1beta1" in trap and "reads v1alpha1" in trap and "crd_add_missing_versions" in trap
    assert diag["crd"]["missing_versions"] == ["v1alpha1"]
    assert diag["cbt_supported"] is True and diag["cbt_enabled"] is False


def test_diagnose_scc_without_secret_and_enabled_case():
    st = dg.Settings(params())
    secret_vol = {"volume": {"name": "tls-key", "secret": {"secretName": "x"}},
                  "mount": {"name": "tls-key", "mountPath": dg.TLS_MOUNT_PATH}}
    diag = dg.diagnose(st, facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf"),
                                     crd_versions=["v1alpha1", "v1beta1"], deploy=deployment(BASE8), sms=True,
                                     scc_volumes=["configMap", "emptyDir", "hostPath", "projected"],
                                     tls_volume=secret_vol))
    assert "scc_forbids_secret_volume" in [p["code"] for p in diag["problems"]]
    assert dg.resolve_volume_type(st, facts_for(scc_volumes=["projected"])) == "projected"
    assert dg.resolve_volume_type(st, facts_for(scc_volumes=["projected", "secret"])) == "secret"

    projected = {"volume": {"name": "tls-key", "projected": {"sources": [{"secret": {"name": "x"}}]}},
                 "mount": {"name": "tls-key", "mountPath": dg.TLS_MOUNT_PATH}}
    f = facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf"), crd_versions=["v1alpha1", "v1beta1"],
                  deploy=deployment(BASE8, "registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.1.0"), sms=True,
                  scc_volumes=["projected"], tls_volume=projected)
    f.service = {"metadata": {"name": "csi-snapshot-metadata"}}
    f.pods = [{"metadata": {}, "status": {"containerStatuses": [{"name": dg.SIDECAR, "ready": True}]}}]
    diag = dg.diagnose(st, f)
    assert diag["cbt_enabled"] is True, diag["problems"]
    assert diag["reason"].startswith("CBT is enabled")
    assert diag["sidecar"]["delta_base_field"] == "name"
    assert diag["driver"]["tls_volume"]["type"] == "projected"


def test_name_based_sidecar_hint_names_the_real_csi_snapshot_diff_option():
    from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff

    st = dg.Settings(params())
    diag = dg.diagnose(st, facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf"),
                                     crd_versions=["v1alpha1", "v1beta1"],
                                     deploy=deployment(BASE8, "registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.1.0"),
                                     sms=True))
    hint = [p for p in diag["problems"] if p["code"] == "sidecar_name_based_delta"]
    assert len(hint) == 1 and hint[0]["blocking"] is False
    msg = hint[0]["message"]
    assert "clients must use base_snapshot_mode=name, or set sidecar_image to v0.2.0 or later" in msg
    assert "base_field_mode" not in msg
    # the option and the value the message names exist in csi_snapshot_diff
    spec = _csi_diff.argument_spec()
    assert "name" in spec["base_snapshot_mode"]["choices"]


def test_sidecar_version_only_trusts_upstream_image_names():
    assert dg.sidecar_version_of("registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.2.0", (4, 20, 0)) == (0, 2, 0)
    # downstream ODF image tagged with the product version: the release's shipped sidecar is assumed
    down = "registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v4.20"
    assert dg.sidecar_version_of(down, (4, 20, 0)) == (0, 1, 0)
    assert dg.sidecar_version_of(down, (4, 22, 0)) == (0, 2, 0)
    assert dg.sidecar_version_of(down, (4, 23, 0)) is None
    assert dg.sidecar_version_of("x/csi-snapshot-metadata@sha256:" + "a" * 64, (4, 20, 0)) is None
    assert dg.sidecar_version_of(None, (4, 21, 0)) == (0, 1, 0)
