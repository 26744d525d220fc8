# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the odf_cbt_enable / odf_cbt_info wrappers: input validation happens before any
connection, API failures become fail_json with the diagnosis, results carry the documented keys."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_module
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeError
from ansible_collections.cbt.toolkit.plugins.modules import odf_cbt_enable, odf_cbt_info
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import ExitJson, FailJson, run_module


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if the module tries to connect."""
    def boom(params):
        raise AssertionError("the module connected although the input was invalid")
    monkeypatch.setattr(_odf_module, "get_api_client", boom)


@pytest.mark.parametrize("args, words", [
    ({"driver": "x.cephfs.csi.ceph.com"}, "RBD driver only"),
    ({"sidecar_image": "no image"}, "not a valid image reference"),
    ({"namespace": "UPPER"}, "not a valid namespace name"),
    ({"cert_validity_days": 30}, "must be larger than cert_renew_before_days"),
])
def test_bad_input_fails_before_connecting(no_cluster, args, words):
    res = run_module(odf_cbt_enable, dict(args, kubeconfig="/nonexistent"), expect=FailJson)
    assert words in res["msg"]


def test_info_rejects_bad_driver_before_connecting(no_cluster):
    res = run_module(odf_cbt_info, {"driver": "nope", "kubeconfig": "/nonexistent"}, expect=FailJson)
    assert "not a valid Driver name" in res["msg"] or "not a ceph-csi driver" in res["msg"]


def test_unreachable_cluster_is_a_clean_failure():
    res = run_module(odf_cbt_info, {"kubeconfig": "/nonexistent/kubeconfig"}, expect=FailJson)
    assert "could not load Kubernetes configuration" in res["msg"]


def test_api_error_during_gather_is_reported_with_the_object(monkeypatch):
    monkeypatch.setattr(_odf_module, "get_api_client", lambda params: object())

    def gather(api, st):
        raise KubeError(500, "Internal Server Error", '{"message": "etcd is down"}', "GET /apis")
    monkeypatch.setattr(dg, "gather", gather)
    res = run_module(odf_cbt_enable, {"kubeconfig": "/x"}, expect=FailJson)
    assert res["msg"] == "GET /apis failed: HTTP 500 Internal Server Error: etcd is down"
    assert res["changed"] is False and res["actions"] == []


def test_info_returns_the_diagnosis(monkeypatch):
    monkeypatch.setattr(_odf_module, "get_api_client", lambda params: object())
    facts = dg.Facts()
    facts.groups = {}
    facts.server_version = {"gitVersion": "v1.37.2"}
    monkeypatch.setattr(dg, "gather", lambda api, st: facts)
    res = run_module(odf_cbt_info, {"kubeconfig": "/x"}, expect=ExitJson)
    assert res["changed"] is False
    diag = res["diagnosis"]
    assert diag["cbt_enabled"] is False and diag["kubernetes"]["version"] == "v1.37.2"
    assert diag["reason"].startswith("the csi.ceph.io API (ceph-csi-operator Driver CRD) is not installed")
    assert set(diag) >= {"cbt_supported", "problems", "odf", "operator", "crd", "driver", "ctrlplugin", "sidecar",
                         "scc", "sms", "service", "tls"}
