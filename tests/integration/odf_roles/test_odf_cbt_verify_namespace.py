# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The odf_cbt role's verify entry point (playbooks/odf_cbt_verify.yml) and its scratch namespace, against
a real kube-apiserver (with the OLM simulator's namespace controller, so deleted namespaces go away):
a namespace that the role did not create (no app.kubernetes.io/managed-by=cbt.toolkit label) is refused
and never deleted; the labelled namespace of an earlier run is removed and that removal is reported."""

from __future__ import annotations

from odf_roles_util import PLAYBOOKS, changed_tasks, failure_messages, recap

LABEL = "app.kubernetes.io/managed-by"


def _namespace(env, name, labels=None):
    env.kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": name, "labels": labels or {}}})
    env.kube.create("/api/v1/namespaces/%s/configmaps" % name, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "precious"}, "data": {"k": "v"}})
    return env.kube.get("/api/v1/namespaces/%s" % name)


def _verify(env, run_playbook, namespace):
    # No provisioner serves the storage class: the PVC stays Pending and the run fails at that wait,
    # after the scratch namespace was (re)created - enough to see what is deleted and reported.
    return run_playbook(str(PLAYBOOKS / "odf_cbt_verify.yml"), extra_vars={
        "cbt_k8s_auth": env.auth, "odf_cbt_verify_namespace": namespace,
        "odf_cbt_verify_timeout": 2, "odf_cbt_verify_poll_interval": 1})


def test_verify_refuses_a_namespace_it_did_not_create_and_replaces_its_own(odf_env, run_playbook):
    env = odf_env
    for name, labels in (("cbt-verify-foreign", None), ("cbt-verify-other", {LABEL: "someone-else"})):
        before = _namespace(env, name, labels)
        run = _verify(env, run_playbook, name)
        assert run.rc != 0, run
        msg = " ".join(failure_messages(run))
        assert ("Namespace %s exists and does not carry the label app.kubernetes.io/managed-by=cbt.toolkit" % name
                in msg), msg
        assert "Choose another namespace with odf_cbt_verify_namespace" in msg, msg
        # failed before anything was created or deleted: the namespace and its content are untouched
        assert recap(run).get("changed", 0) == 0, changed_tasks(run)
        after = env.kube.get("/api/v1/namespaces/%s" % name)
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert "deletionTimestamp" not in after["metadata"] and after["status"]["phase"] == "Active"
        assert env.kube.get("/api/v1/namespaces/%s/configmaps/precious" % name)["data"] == {"k": "v"}
        assert env.kube.get("/api/v1/namespaces/%s/serviceaccounts/cbt-verify-client" % name) is None

    # the scratch namespace of an earlier run (kept with odf_cbt_verify_cleanup: false) carries the label:
    # it is removed (a change), the run creates its own and deletes that again (no change)
    earlier = _namespace(env, "cbt-verify", {LABEL: "cbt.toolkit"})
    run = _verify(env, run_playbook, "cbt-verify")
    assert run.rc != 0, run
    msg = " ".join(failure_messages(run))
    assert "failed at 'Wait for the PVC to be bound'" in msg, msg
    assert [t.split(" : ")[-1] for t in changed_tasks(run)] == ["Remove the scratch namespace of an earlier run"]
    deleted = [r for r in run.task_results() if (r["_task"] or "").endswith("Delete the scratch namespace")]
    assert len(deleted) == 1 and not deleted[0].get("skipped") and deleted[0].get("changed") is False, deleted
    assert env.kube.get("/api/v1/namespaces/cbt-verify") is None
    assert earlier["metadata"]["uid"]
    env.assert_sim_healthy()


def test_verify_refuses_a_wait_for_first_consumer_class_before_creating_anything(odf_env, run_playbook):
    env = odf_env
    env.kube.create("/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "cbt-wffc"},
        "provisioner": "openshift-storage.rbd.csi.ceph.com", "volumeBindingMode": "WaitForFirstConsumer"})
    try:
        run = run_playbook(str(PLAYBOOKS / "odf_cbt_verify.yml"), extra_vars={
            "cbt_k8s_auth": env.auth, "odf_cbt_verify_namespace": "cbt-verify-wffc",
            "odf_cbt_verify_storage_class": "cbt-wffc", "odf_cbt_verify_timeout": 60, "odf_cbt_verify_poll_interval": 1})
        assert run.rc != 0, run
        msg = " ".join(failure_messages(run))
        assert "StorageClass cbt-wffc has volumeBindingMode WaitForFirstConsumer" in msg, msg
        assert "volumeBindingMode Immediate" in msg, msg
        assert recap(run).get("changed", 0) == 0, changed_tasks(run)
        assert env.kube.get("/api/v1/namespaces/cbt-verify-wffc") is None, "nothing may be created"
    finally:
        env.kube.delete("/apis/storage.k8s.io/v1/storageclasses/cbt-wffc")
