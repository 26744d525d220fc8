# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/odf_reinstall.yml: the seed's journey from ODF 4.19 to 4.20 through a custom catalog,
against a real kube-apiserver with the OLM simulator."""

from __future__ import annotations

import pytest

from odf_roles_util import PLAYBOOKS, assert_idempotent, assert_ok, fact, install_odf, recap
from testbed.olm_sim import odf_catalog, res_path

NS = "openshift-storage"
PLAYBOOK = str(PLAYBOOKS / "odf_reinstall.yml")


@pytest.mark.slow
def test_reinstall_419_to_420_then_rerun_changes_nothing(odf_env, run_playbook):
    env = odf_env
    csvs_419 = [b.csv for b in odf_catalog("4.19")]
    csvs_420 = [b.csv for b in odf_catalog("4.20")]
    install_odf(env, run_playbook, odf_install_catalog_source_name="odf-catalog-419",
                odf_install_catalog_source_image="quay.io/cbt-test/odf-catalog:4.19",
                odf_install_channel="stable-4.19", odf_install_expected_csvs=csvs_419)
    old_sc = env.kube.get(res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster"))
    assert env.kube.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/storagesystems.odf.openshift.io")

    extra = {
        "cbt_k8s_auth": env.auth,
        "odf_uninstall_confirm": True,
        "odf_uninstall_poll_interval": 1,
        "odf_uninstall_catalog_sources": [{"name": "odf-catalog-419", "namespace": "openshift-marketplace"}],
        "odf_install_catalog_source_name": "odf-catalog-420",
        "odf_install_catalog_source_image": "quay.io/cbt-test/odf-catalog:4.20",
        "odf_install_device_set_storage_class": "gp3-csi",
        "odf_install_storage_nodes": ["worker-0", "worker-1", "worker-2"],
        "odf_install_poll_interval": 1,
    }
    run = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_ok(run)
    phases = {c["metadata"]["name"]: c["status"]["phase"]
              for c in env.kube.list(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS))}
    assert phases == {name: "Succeeded" for name in csvs_420}
    sc = env.kube.get(res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster"))
    assert sc["status"]["phase"] == "Ready" and sc["metadata"]["uid"] != old_sc["metadata"]["uid"]
    catalogs = [c["metadata"]["name"] for c in env.kube.list(res_path("operators.coreos.com/v1alpha1", "catalogsources"))]
    assert catalogs == ["odf-catalog-420"]
    # The 4.19-only StorageSystem CRD went with the uninstall and 4.20 does not bring it back.
    assert env.kube.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/storagesystems.odf.openshift.io") is None
    assert "CatalogSource/odf-catalog-419" in fact(run, "odf_uninstall_result")["deleted"]

    # Re-running finds 4.20 in place: no uninstall, no change.
    again = run_playbook(PLAYBOOK, extra_vars=extra)
    assert_idempotent(again)
    assert fact(again, "odf_reinstall_in_place") is True
    assert recap(again)["changed"] == 0

    # After a z-stream update the installed CSVs differ from the pinned list: a re-run of the same
    # command must not tear the storage down; the install step names the CSVs that differ.
    bumped = [name.replace("odf-operator.v4.20.0", "odf-operator.v4.20.1") for name in csvs_420]
    drift = run_playbook(PLAYBOOK, extra_vars=dict(extra, odf_install_expected_csvs=bumped, odf_install_timeout_csvs=2))
    assert drift.rc != 0, drift
    assert fact(drift, "odf_reinstall_in_place") is True
    notes = [r.get("msg", "") for r in drift.task_results() if r.get("msg")]
    assert any("Installed CSVs not in odf_install_expected_csvs: odf-operator.v4.20.0" in n for n in notes), notes
    failure = [r for r in drift.task_results() if r.get("failed")][-1]["msg"]
    assert "odf-operator.v4.20.1=missing" in failure and "Other CSVs present: odf-operator.v4.20.0" in failure, failure
    kept = env.kube.get(res_path("ocs.openshift.io/v1", "storageclusters", NS, "ocs-storagecluster"))
    assert kept["metadata"]["uid"] == sc["metadata"]["uid"] and kept["status"]["phase"] == "Ready"
    assert fact(drift, "odf_uninstall_result") is None, "the uninstall must not run"
    env.assert_sim_healthy()
