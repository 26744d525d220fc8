# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.cephcsi_operator_deploy (and the build+deploy playbook) against a real kube-apiserver
with ODF installed by cbt.toolkit.odf_install; the OLM simulator re-applies the patched CSV's
deployment and plays the rollout and the kubelet."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from odf_roles_util import (PLAYBOOKS, assert_idempotent, assert_ok, build_vars, changed_tasks, failure_messages, fact,
                            install_odf, recap)
from testbed.olm_sim import res_path

NS = "openshift-storage"
CSV = "cephcsi-operator.v4.20.0"
STOCK_IMAGE = "quay.io/ocs-dev/cephcsi-operator:main-f73fca8"
PLAYBOOK = str(PLAYBOOKS / "cephcsi_operator_build_deploy.yml")

DEPLOY = """
- name: Deploy the operator image
  hosts: localhost
  gather_facts: false
  roles:
    - role: cbt.toolkit.cephcsi_operator_deploy
"""


def csv_image(env):
    csv = env.kube.get(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS, CSV))
    dep = next(d for d in csv["spec"]["install"]["spec"]["deployments"] if d["name"] == "ceph-csi-controller-manager")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "manager")["image"]


def operator_pods(env):
    pods = env.kube.list("/api/v1/namespaces/%s/pods" % NS, label_selector="app.kubernetes.io/name=ceph-csi-controller-manager")
    return [(p["status"]["containerStatuses"][0]["image"], p["status"]["containerStatuses"][0]["imageID"])
            for p in pods if p.get("status", {}).get("containerStatuses")]


def cephcsi_subscription(env):
    subs = env.kube.list(res_path("operators.coreos.com/v1alpha1", "subscriptions", NS))
    return next(s for s in subs if s["spec"]["name"] == "cephcsi-operator")


@pytest.mark.slow
def test_build_deploy_playbook_runs_the_pushed_digest(odf_env, run_playbook, operator_repo, registry, buildah_storage,
                                                      tmp_path):
    env = odf_env
    install_odf(env, run_playbook)
    assert csv_image(env) == STOCK_IMAGE
    extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                       cephcsi_operator_build_platform="linux/amd64",
                       cephcsi_operator_build_image="%s/cbt/cephcsi-operator-deploy" % registry.host,
                       cbt_k8s_auth=env.auth, cephcsi_operator_deploy_poll_interval=1,
                       cephcsi_operator_deploy_timeout=60)

    # Check mode: the image does not exist yet, so the deployment half is skipped; nothing changes in the cluster.
    check = run_playbook(PLAYBOOK, extra_vars=extra, check=True)
    assert_ok(check)
    assert csv_image(env) == STOCK_IMAGE

    run = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_ok(run)
    built = fact(run, "cephcsi_operator_build_result")
    deployed = fact(run, "cephcsi_operator_deploy_result")
    ref = built["reference_by_digest"]
    assert ref.startswith("%s/cbt/cephcsi-operator-deploy@sha256:" % registry.host)
    assert csv_image(env) == ref
    assert deployed["previous_image"] == STOCK_IMAGE and deployed["image"] == ref and deployed["patched"] is True
    assert [(r["image"], r["image_id"], r["ready"]) for r in deployed["running"]] == [(ref, ref, True)]
    assert operator_pods(env) == [(ref, ref)]          # only the new pod is left
    assert cephcsi_subscription(env)["spec"]["installPlanApproval"] == "Manual"
    assert env.sim.events_matching("Deployment openshift-storage/ceph-csi-controller-manager re-applied from CSV %s" % CSV)
    csv = env.kube.get(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS, CSV))
    assert csv["status"]["phase"] == "Succeeded"

    assert_idempotent(run_playbook(PLAYBOOK, extra_vars=extra))
    assert_idempotent(run_playbook(PLAYBOOK, extra_vars=extra, check=True))
    env.assert_sim_healthy()


@pytest.mark.slow
def test_deploy_refusals_manual_approval_and_rollout_timeout(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook, odf_install_approval="Automatic")
    assert cephcsi_subscription(env)["spec"]["installPlanApproval"] == "Automatic"
    digest_ref = "quay.io/cbt-test/cephcsi-operator@sha256:%s" % hashlib.sha256(b"custom build").hexdigest()
    base = {"cephcsi_operator_deploy_k8s_auth": env.auth, "cephcsi_operator_deploy_poll_interval": 1,
            "cephcsi_operator_deploy_timeout": 8}

    # A moving tag is refused before anything is touched.
    run = run_playbook(DEPLOY, extra_vars=dict(base, cephcsi_operator_deploy_image="quay.io/cbt-test/cephcsi-operator:latest"))
    assert run.rc != 0 and "must be an image reference by digest" in " ".join(failure_messages(run))
    # A container name that the CSV does not have: the message lists the ones it has.
    run = run_playbook(DEPLOY, extra_vars=dict(base, cephcsi_operator_deploy_image=digest_ref,
                                               cephcsi_operator_deploy_container="operator"))
    msg = " ".join(failure_messages(run))
    assert run.rc != 0 and "has no container 'operator' (found: manager)" in msg, msg
    assert csv_image(env) == STOCK_IMAGE

    # An image the nodes cannot pull: the CSV is patched, the rollout wait fails and says why.
    bad_ref = "quay.io/cbt-test/cephcsi-operator@sha256:%s" % hashlib.sha256(b"unpullable").hexdigest()
    env.sim.unpullable_images.add(bad_ref)
    run = run_playbook(DEPLOY, extra_vars=dict(base, cephcsi_operator_deploy_image=bad_ref))
    msg = " ".join(failure_messages(run))
    assert run.rc != 0 and "did not roll out %s within 8 s" % bad_ref in msg, msg
    assert "ImagePullBackOff" in msg and "openshift-config/pull-secret" in msg, msg

    # The good image replaces the bad one (the test op guards the current value), then nothing changes.
    run = run_playbook(DEPLOY, extra_vars=dict(base, cephcsi_operator_deploy_image=digest_ref,
                                               cephcsi_operator_deploy_timeout=60))
    assert_ok(run)
    result = fact(run, "cephcsi_operator_deploy_result")
    assert result["previous_image"] == bad_ref and result["image"] == digest_ref
    assert operator_pods(env) == [(digest_ref, digest_ref)]
    assert cephcsi_subscription(env)["spec"]["installPlanApproval"] == "Manual"
    # Only the cephcsi Subscription was switched (default scope "package").
    others = [s for s in env.kube.list(res_path("operators.coreos.com/v1alpha1", "subscriptions", NS))
              if s["spec"]["name"] != "cephcsi-operator"]
    assert {s["spec"]["installPlanApproval"] for s in others} == {"Automatic"}
    assert_idempotent(run_playbook(DEPLOY, extra_vars=dict(base, cephcsi_operator_deploy_image=digest_ref)))
    env.assert_sim_healthy()


# ---- snapshot-metadata permissions in the CSV ------------------------------------------------------

OPERATOR_SA = "ceph-csi-controller-manager"
RBD_SA = "ceph-csi-rbd-ctrlplugin-sa"
GRANT_TASK = "cbt.toolkit.cephcsi_operator_deploy : Grant the snapshot-metadata permissions in the CSV"
BIND_TASK = "cbt.toolkit.cephcsi_operator_deploy : Bind the snapshot-metadata permissions to the service accounts"
OPERATOR_RULE = {"apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"],
                 "verbs": ["get", "list", "watch"]}
SAR_RULE = {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
TOKEN_RULE = {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
CTRL_SMS_RULE = {"apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"], "verbs": ["get", "list"]}
DRIVERS_RULE = {"apiGroups": ["csi.ceph.io"], "resources": ["drivers", "operatorconfigs"],
                "verbs": ["get", "list", "watch", "update", "patch"]}
# A CSV of an image built before ceph-csi-operator PR #274: the operator may only list snapshotmetadataservices
# (a subset of the verbs it needs); the ctrlplugin has tokenreviews already, but neither subjectaccessreviews nor
# snapshotmetadataservices.
STALE_PERMISSIONS = [
    {"serviceAccountName": OPERATOR_SA, "rules": [DRIVERS_RULE, {
        "apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"], "verbs": ["list"]}]},
    {"serviceAccountName": RBD_SA, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        TOKEN_RULE]},
    {"serviceAccountName": "ceph-csi-cephfs-ctrlplugin-sa", "rules": [TOKEN_RULE]},
]


def csv_path():
    return res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS, CSV)


def csv_permissions(env):
    return env.kube.get(csv_path())["spec"]["install"]["spec"]["clusterPermissions"]


def set_csv_permissions(env, perms):
    env.kube.json_patch(csv_path(), [{"op": "replace", "path": "/spec/install/spec/clusterPermissions", "value": perms}],
                        ok404=False)
    assert csv_permissions(env) == perms


def rules_of(perms, sa):
    return [rule for entry in perms if entry["serviceAccountName"] == sa for rule in entry.get("rules") or []]


def task_result(run, name):
    return next(r for r in run.task_results() if r["_task"] == name)


def task_messages(run):
    return [str(r.get("msg", "")) for r in run.task_results()]


@pytest.mark.slow
def can(env, service_account, group, resource, verb):
    """What the API server's RBAC authorizer answers for the service account (a SubjectAccessReview)."""
    review = env.kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:%s:%s" % (NS, service_account),
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:%s" % NS],
                 "resourceAttributes": {"group": group, "resource": resource, "verb": verb}}})
    return review["status"].get("allowed") is True


BOUND = ["cbt-toolkit-snapshot-metadata-%s" % sa for sa in (OPERATOR_SA, RBD_SA)]
NEEDED = [(OPERATOR_SA, "cbt.storage.k8s.io", "snapshotmetadataservices", verb) for verb in ("get", "list", "watch")] + [
    (RBD_SA, "authorization.k8s.io", "subjectaccessreviews", "create"),
    (RBD_SA, "authentication.k8s.io", "tokenreviews", "create"),
    (RBD_SA, "cbt.storage.k8s.io", "snapshotmetadataservices", "list")]


def test_deploy_grants_snapshot_metadata_permissions(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook)
    for name in BOUND:
        for kind in ("clusterrolebindings", "clusterroles"):
            env.kube.delete("/apis/rbac.authorization.k8s.io/v1/%s/%s" % (kind, name))
    digest_ref = "quay.io/cbt-test/cephcsi-operator@sha256:%s" % hashlib.sha256(b"rbac build").hexdigest()
    base = {"cephcsi_operator_deploy_k8s_auth": env.auth, "cephcsi_operator_deploy_poll_interval": 1,
            "cephcsi_operator_deploy_timeout": 60, "cephcsi_operator_deploy_image": digest_ref}
    set_csv_permissions(env, copy.deepcopy(STALE_PERMISSIONS))
    assert dg.csv_grants_sms(env.kube.get(csv_path())) is False      # odf_cbt_enable would refuse this operator

    # Check mode (with diff): the change is reported, nothing is written.
    check = run_playbook(DEPLOY, extra_vars=base, check=True, diff=True)
    assert_ok(check)
    assert GRANT_TASK in changed_tasks(check), changed_tasks(check)
    diff = json.dumps(task_result(check, GRANT_TASK).get("diff"))
    assert "subjectaccessreviews" in diff and "snapshotmetadataservices" in diff, diff
    assert csv_permissions(env) == STALE_PERMISSIONS and csv_image(env) == STOCK_IMAGE
    assert not [n for n in NEEDED if can(env, *n)]  # the test bed's OLM creates no RBAC from the CSV
    planned = fact(check, "cephcsi_operator_deploy_result")["rbac"]
    assert planned["patched"] is True
    assert planned["added"] == [{"service_account": OPERATOR_SA, "rules": [OPERATOR_RULE]},
                                {"service_account": RBD_SA, "rules": [SAR_RULE, CTRL_SMS_RULE]}]

    # The real run adds exactly the missing rules to the existing entries (tokenreviews was granted already).
    run = run_playbook(DEPLOY, extra_vars=base)
    assert_ok(run)
    perms = csv_permissions(env)
    assert perms == [
        {"serviceAccountName": OPERATOR_SA, "rules": STALE_PERMISSIONS[0]["rules"] + [OPERATOR_RULE]},
        {"serviceAccountName": RBD_SA, "rules": STALE_PERMISSIONS[1]["rules"] + [SAR_RULE, CTRL_SMS_RULE]},
        STALE_PERMISSIONS[2],
    ]
    result = fact(run, "cephcsi_operator_deploy_result")
    assert result["rbac"]["patched"] is True and result["rbac"]["added"] == planned["added"]
    assert (result["rbac"]["operator_service_account"], result["rbac"]["rbd_ctrlplugin_service_account"]) == (
        OPERATOR_SA, RBD_SA)
    assert result["patched"] is True and csv_image(env) == digest_ref
    assert dg.csv_grants_sms(env.kube.get(csv_path())) is True       # odf_cbt_enable now accepts the operator
    # and the service accounts really hold the permissions, whatever OLM makes of the edited CSV
    assert result["rbac"]["cluster_roles_bound"] == BOUND
    assert [n for n in NEEDED if not can(env, *n)] == []
    for name in BOUND:
        role = env.kube.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/%s" % name)
        assert role["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cbt.toolkit"

    # A second run and a check-mode run change nothing.
    again = run_playbook(DEPLOY, extra_vars=base)
    assert_idempotent(again)
    expected = dict(result["rbac"], patched=False, added=[], cluster_roles_bound=[])
    assert fact(again, "cephcsi_operator_deploy_result")["rbac"] == expected
    assert_idempotent(run_playbook(DEPLOY, extra_vars=base, check=True))
    assert csv_permissions(env) == perms

    # Permissions granted differently ("*" verbs, verb supersets, split over rules or entries) are left alone.
    granted = [
        {"serviceAccountName": OPERATOR_SA, "rules": [DRIVERS_RULE, {
            "apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"], "verbs": ["*"]}]},
        {"serviceAccountName": RBD_SA, "rules": [
            {"apiGroups": ["authorization.k8s.io", "authentication.k8s.io"],
             "resources": ["subjectaccessreviews", "tokenreviews"], "verbs": ["create", "get"]},
            {"apiGroups": ["cbt.storage.k8s.io"], "resources": ["snapshotmetadataservices"], "verbs": ["get"]}]},
        {"serviceAccountName": RBD_SA, "rules": [
            {"apiGroups": ["*"], "resources": ["snapshotmetadataservices"], "verbs": ["list", "watch"]}]},
    ]
    set_csv_permissions(env, copy.deepcopy(granted))
    run = run_playbook(DEPLOY, extra_vars=base)
    assert_idempotent(run)
    assert csv_permissions(env) == granted
    assert fact(run, "cephcsi_operator_deploy_result")["rbac"]["added"] == []

    # Turned off: a CSV without the rules stays as it is.
    set_csv_permissions(env, copy.deepcopy(STALE_PERMISSIONS))
    off = dict(base, cephcsi_operator_deploy_snapshot_metadata_rbac=False)
    assert_idempotent(run_playbook(DEPLOY, extra_vars=off, check=True))
    run = run_playbook(DEPLOY, extra_vars=off)
    assert_idempotent(run)
    assert csv_permissions(env) == STALE_PERMISSIONS
    assert fact(run, "cephcsi_operator_deploy_result")["rbac"] == {
        "enabled": False, "patched": False, "added": [], "cluster_roles_bound": [], "operator_service_account": "",
        "rbd_ctrlplugin_service_account": ""}
    env.assert_sim_healthy()


@pytest.mark.slow
def test_deploy_permissions_without_the_named_ctrlplugin_entry(odf_env, run_playbook):
    env = odf_env
    install_odf(env, run_playbook)
    digest_ref = "quay.io/cbt-test/cephcsi-operator@sha256:%s" % hashlib.sha256(b"rbac build 2").hexdigest()
    base = {"cephcsi_operator_deploy_k8s_auth": env.auth, "cephcsi_operator_deploy_poll_interval": 1,
            "cephcsi_operator_deploy_timeout": 60, "cephcsi_operator_deploy_image": digest_ref}

    # The stock 4.20 test CSV grants the operator rule and has no ctrlplugin entry: a warning, no change.
    stock = csv_permissions(env)
    run = run_playbook(DEPLOY, extra_vars=base)
    assert_ok(run)
    assert csv_permissions(env) == stock and GRANT_TASK not in changed_tasks(run)
    warning = [m for m in task_messages(run) if m.startswith("WARNING:")]
    assert len(warning) == 1 and "no clusterPermissions entry for service account '%s'" % RBD_SA in warning[0], warning
    assert fact(run, "cephcsi_operator_deploy_result")["rbac"]["rbd_ctrlplugin_service_account"] == ""

    # A ctrlplugin entry under another name is found by "rbd" + "ctrlplugin"; an operator without an entry gets one.
    set_csv_permissions(env, [{"serviceAccountName": "odf-rbd-ctrlplugin", "rules": [TOKEN_RULE]},
                              {"serviceAccountName": "ceph-csi-nfs-ctrlplugin-sa", "rules": []}])
    run = run_playbook(DEPLOY, extra_vars=base)
    assert_ok(run)
    assert recap(run).get("changed", 0) == 2 and changed_tasks(run) == [BIND_TASK, GRANT_TASK], changed_tasks(run)
    assert can(env, "odf-rbd-ctrlplugin", "authorization.k8s.io", "subjectaccessreviews", "create")
    assert not [m for m in task_messages(run) if m.startswith("WARNING:")]
    assert csv_permissions(env) == [
        {"serviceAccountName": "odf-rbd-ctrlplugin", "rules": [TOKEN_RULE, SAR_RULE, CTRL_SMS_RULE]},
        {"serviceAccountName": "ceph-csi-nfs-ctrlplugin-sa", "rules": []},
        {"serviceAccountName": OPERATOR_SA, "rules": [OPERATOR_RULE]},
    ]
    assert_idempotent(run_playbook(DEPLOY, extra_vars=base))
    env.assert_sim_healthy()
