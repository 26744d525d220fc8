# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the odf_cbt_enable / odf_cbt_info wrappers: input validation happens before any
connection, API failures become fail_json with the diagnosis, results carry the documented keys."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeError
from ansible_collections.cbt.toolkit.plugins.modules import odf_cbt_enable, odf_cbt_info


class Exit(Exception):
    pass


class Fail(Exception):
    pass


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    def exit_json(self, **kw):
        raise Exit(kw)

    def fail_json(self, **kw):
        raise Fail(kw)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if the module tries to connect."""
    def boom(params):
        raise AssertionError("the module connected although the input was invalid")
    monkeypatch.setattr(odf_cbt_enable, "get_api_client", boom)
    monkeypatch.setattr(odf_cbt_info, "get_api_client", boom)


@pytest.mark.parametrize("args, words", [
    ({"driver": "x.cephfs.csi.ceph.com"}, "RBD driver only"),
    ({"sidecar_image": "no image"}, "not a valid image reference"),
    ({"namespace": "UPPER"}, "not a valid namespace name"),
    ({"cert_validity_days": 30}, "must be larger than cert_renew_before_days"),
])
def test_bad_input_fails_before_connecting(no_cluster, args, words):
    with patch_module_args(dict(args, kubeconfig="/nonexistent")):
        with pytest.raises(Fail) as err:
            odf_cbt_enable.main()
    assert words in err.value.args[0]["msg"]


def test_info_rejects_bad_driver_before_connecting(no_cluster):
    with patch_module_args({"driver": "nope", "kubeconfig": "/nonexistent"}):
        with pytest.raises(Fail) as err:
            odf_cbt_info.main()
    assert "not a valid Driver name" in err.value.args[0]["msg"] or "not a ceph-csi driver" in err.value.args[0]["msg"]


def test_unreachable_cluster_is_a_clean_failure():
    with patch_module_args({"kubeconfig": "/nonexistent/kubeconfig"}):
        with pytest.raises(Fail) as err:
            odf_cbt_info.main()
    assert "could not load Kubernetes configuration" in err.value.args[0]["msg"]


def test_api_error_during_gather_is_reported_with_the_object(monkeypatch):
    monkeypatch.setattr(odf_cbt_enable, "get_api_client", lambda params: object())

    def gather(api, st):
        raise KubeError(500, "Internal Server Error", '{"message": "etcd is down"}', "GET /apis")
    monkeypatch.setattr(dg, "gather", gather)
    with patch_module_args({"kubeconfig": "/x"}):
        with pytest.raises(Fail) as err:
            odf_cbt_enable.main()
    res = err.value.args[0]
    assert res["msg"] == "GET /apis failed: HTTP 500 Internal Server Error: etcd is down"
    assert res["changed"] is False and res["actions"] == []


def test_info_returns_the_diagnosis(monkeypatch):
    monkeypatch.setattr(odf_cbt_info, "get_api_client", lambda params: object())
    facts = dg.Facts()
    facts.groups = {}
    facts.server_version = {"gitVersion": "v1.37.2"}
    monkeypatch.setattr(dg, "gather", lambda api, st: facts)
    with patch_module_args({"kubeconfig": "/x"}):
        with pytest.raises(Exit) as out:
            odf_cbt_info.main()
    res = out.value.args[0]
    assert res["changed"] is False
    diag = res["diagnosis"]
    assert diag["cbt_enabled"] is False and diag["kubernetes"]["version"] == "v1.37.2"
    assert diag["reason"].startswith("the csi.ceph.io API (ceph-csi-operator Driver CRD) is not installed")
    assert set(diag) >= {"cbt_supported", "problems", "odf", "operator", "crd", "driver", "ctrlplugin", "sidecar",
                         "scc", "sms", "service", "tls"}
