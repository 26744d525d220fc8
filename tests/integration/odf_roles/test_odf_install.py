# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.odf_install through real ansible-playbook against a real kube-apiserver, with the
OLM simulator (tests/testbed/olm_sim.py) playing OLM and the ODF operators."""

from __future__ import annotations

import pytest

from odf_roles_util import INSTALL_PLAYBOOK as INSTALL
from odf_roles_util import assert_idempotent, assert_ok, changed_tasks, failure_messages, fact, install_vars, recap
from testbed.olm_sim import odf_catalog, res_path

NS = "openshift-storage"
CSVS_420 = [b.csv for b in odf_catalog("4.20")]


def csv_phases(env, ns=NS):
    return {c["metadata"]["name"]: c.get("status", {}).get("phase")
            for c in env.kube.list(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", ns))}


@pytest.mark.slow
def test_install_check_mode_install_and_idempotence(odf_env, run_playbook):
    env = odf_env
    extra = install_vars(env)
    assert sorted(CSVS_420) == sorted(extra.get("odf_install_expected_csvs", CSVS_420))

    # Check mode on an empty cluster: reports changes, creates nothing.
    check = run_playbook(INSTALL, extra_vars=extra, check=True)
    assert_ok(check)
    assert recap(check)["changed"] > 0
    assert env.kube.get("/api/v1/namespaces/%s" % NS) is None
    assert env.kube.list(res_path("operators.coreos.com/v1alpha1", "catalogsources")) == []

    first = run_playbook(INSTALL, extra_vars=extra)
    assert_ok(first)
    # 11/11 CSVs Succeeded, StorageCluster Ready: what the seed reached by hand.
    assert csv_phases(env) == {name: "Succeeded" for name in CSVS_420}
    sc = env.kube.get(res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster"))
    assert sc["status"]["phase"] == "Ready"
    device_set = sc["spec"]["storageDeviceSets"][0]
    assert device_set["dataPVCTemplate"]["spec"]["storageClassName"] == "gp3-csi"
    assert device_set["dataPVCTemplate"]["spec"]["volumeMode"] == "Block"
    # Manual approval: the one InstallPlan for the 11 CSVs was approved by the role.
    sub = env.kube.get(res_path("operators.coreos.com/v1alpha1", "subscriptions", NS, "odf-operator"))
    assert sub["spec"]["installPlanApproval"] == "Manual" and sub["spec"]["channel"] == "stable-4.20"
    plans = env.kube.list(res_path("operators.coreos.com/v1alpha1", "installplans", NS))
    assert [p["spec"]["approved"] for p in plans] == [True]
    ns = env.kube.get("/api/v1/namespaces/%s" % NS)
    assert ns["metadata"]["labels"]["openshift.io/cluster-monitoring"] == "true"
    assert len(env.kube.list(res_path("operators.coreos.com/v1", "operatorgroups", NS))) == 1
    for node in ("worker-0", "worker-1", "worker-2"):
        labels = env.kube.get("/api/v1/nodes/%s" % node)["metadata"]["labels"]
        assert labels["cluster.ocs.openshift.io/openshift-storage"] == ""
    console = env.kube.get("/apis/operator.openshift.io/v1/consoles/cluster")
    assert console["spec"]["plugins"] == ["monitoring-plugin", "odf-console"]
    result = fact(first, "odf_install_result")
    assert result["install_plans_approved"] == [plans[0]["metadata"]["name"]]
    assert result["storagecluster"]["phase"] == "Ready"
    assert sorted(result["csvs"]) == sorted(CSVS_420)

    # Idempotence: a second run and a check-mode run change nothing.
    assert_idempotent(run_playbook(INSTALL, extra_vars=extra))
    assert_idempotent(run_playbook(INSTALL, extra_vars=extra, check=True))
    env.assert_sim_healthy()


@pytest.mark.slow
def test_install_waits_fail_with_clear_messages(odf_env, run_playbook):
    env = odf_env
    short = {"odf_install_timeout_catalog_source": 6, "odf_install_timeout_csvs": 8,
             "odf_install_timeout_storagecluster": 6, "odf_install_timeout_install_plan": 10}

    # 1. A catalog that never becomes READY.
    env.sim.unready_catalogs.add("broken-catalog")
    run = run_playbook(INSTALL, extra_vars=install_vars(env, odf_install_catalog_source_name="broken-catalog", **short))
    assert run.rc != 0
    msg = " ".join(failure_messages(run))
    assert "CatalogSource openshift-marketplace/broken-catalog is not READY after 6 s" in msg, msg
    assert "TRANSIENT_FAILURE" in msg and "quay.io/cbt-test/odf-catalog:4.20" in msg, msg
    assert env.kube.get("/api/v1/namespaces/%s" % NS) is None

    # 2. One CSV fails: the message lists it with phase and reason, and the ten that succeeded.
    env.sim.failing_csvs.add("cephcsi-operator.v4.20.0")
    run = run_playbook(INSTALL, extra_vars=install_vars(env, **short))
    assert run.rc != 0
    msg = " ".join(failure_messages(run))
    assert "1 of 11 expected CSVs in openshift-storage did not reach Succeeded within 8 s" in msg, msg
    assert "cephcsi-operator.v4.20.0=Failed (InstallCheckFailed: install timeout" in msg, msg
    assert "ocs-operator.v4.20.0" in msg.split("Succeeded:")[1]

    # 3. The StorageCluster never gets Ready: phase and conditions are in the message.
    env.sim.failing_csvs.clear()
    env.sim.never_ready_storageclusters.add("ocs-storagecluster")
    run = run_playbook(INSTALL, extra_vars=install_vars(env, **short))
    assert run.rc != 0
    msg = " ".join(failure_messages(run))
    assert "StorageCluster openshift-storage/ocs-storagecluster is not Ready after 6 s: phase 'Progressing'" in msg, msg
    assert "Waiting on Ceph cluster to initialize" in msg and "CephCluster ocs-storagecluster-cephcluster" in msg, msg

    # Once the cluster gets Ready the same run succeeds, then is idempotent.
    env.sim.never_ready_storageclusters.clear()
    assert_ok(run_playbook(INSTALL, extra_vars=install_vars(env, **short)))
    assert_idempotent(run_playbook(INSTALL, extra_vars=install_vars(env, **short)))
    env.assert_sim_healthy()


@pytest.mark.slow
def test_install_plan_outside_the_expected_csvs_is_not_approved(odf_env, run_playbook):
    env = odf_env
    pinned = [c for c in CSVS_420 if not c.startswith("recipe.")]
    run = run_playbook(INSTALL, extra_vars=install_vars(env, odf_install_expected_csvs=pinned,
                                                        odf_install_timeout_csvs=5))
    assert run.rc != 0
    plans = env.kube.list(res_path("operators.coreos.com/v1alpha1", "installplans", NS))
    assert len(plans) == 1 and plans[0]["spec"]["approved"] is False
    warned = [r for r in run.task_results() if r["_task"].endswith("Warn about InstallPlans left unapproved")]
    assert "recipe.v0.0.1" in str(warned), warned
    msg = " ".join(failure_messages(run))
    assert "10 of 10 expected CSVs" in msg and "InstallPlans waiting for approval: %s" % plans[0]["metadata"]["name"] in msg, msg
    assert csv_phases(env) == {}
    assert "Approve InstallPlans that install only the expected CSVs" not in " ".join(changed_tasks(run))
