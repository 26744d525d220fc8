# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.cephcsi_operator_deploy (and the build+deploy playbook) against a real kube-apiserver
with ODF installed by cbt.toolkit.odf_install; the OLM simulator re-applies the patched CSV's
deployment and plays the rollout and the kubelet."""

from __future__ import annotations

import hashlib

import pytest

from odf_roles_util import PLAYBOOKS, assert_idempotent, assert_ok, build_vars, failure_messages, fact, install_odf
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
