# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt.toolkit.csi_snapshot_diff module wrapper: documentation matches the argument spec, missing
grpcio is reported, bad input fails without a traceback, tokens are registered as no_log values,
and the module never reports a change."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket

import yaml
from ansible.module_utils import basic
from kubernetes import client as k8s_client
from urllib3.exceptions import MaxRetryError, SSLError

from ansible_collections.cbt.toolkit.plugins.doc_fragments.k8s_auth import ModuleDocFragment
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import CsiDiffError
from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import k8s_auth_argument_spec
from ansible_collections.cbt.toolkit.plugins.modules import csi_snapshot_diff as mod
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import run_module


def run(args):
    return run_module(mod, args)


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(mod.DOCUMENTATION)
    options = dict(doc["options"])
    options.update(yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"])
    spec = k8s_auth_argument_spec()
    spec.update(_csi_diff.argument_spec())
    assert set(options) == set(spec)
    for name, entry in spec.items():
        documented = options[name]
        assert documented.get("type", "str") == entry.get("type", "str"), name
        assert documented.get("default") == entry.get("default"), name
        assert documented.get("choices") == entry.get("choices"), name
        assert bool(documented.get("required")) == bool(entry.get("required")), name
        assert sorted(documented.get("aliases", [])) == sorted(entry.get("aliases", [])), name
    yaml.safe_load(mod.EXAMPLES)
    yaml.safe_load(mod.RETURN)


def test_missing_grpc_is_reported(monkeypatch):
    monkeypatch.setattr(mod, "HAS_GRPC", False)
    monkeypatch.setattr(mod, "GRPC_IMP_ERR", "Traceback: No module named 'grpc'")
    result = run({"namespace": "ns", "snapshot": "s"})
    assert result["failed"] and "grpcio" in result["msg"]


def test_bad_input_fails_cleanly():
    result = run({"namespace": "ns", "snapshot": "s", "token_expiration": 10})
    assert result["failed"] and "at least 600" in result["msg"] and "exception" not in result
    result = run({"namespace": "ns", "snapshot": "s", "base_snapshot": "a", "base_snapshot_handle": "h"})
    assert result["failed"] and "mutually exclusive" in result["msg"]


def test_errors_carry_their_details(monkeypatch):
    monkeypatch.setattr(mod, "get_api_client", lambda params: object())

    def boom(params, api_client, check_mode, on_token):
        raise CsiDiffError("the base snapshot cannot be used", full_sync_required=True, full_sync_reason="gone")
    monkeypatch.setattr(_csi_diff, "run", boom)
    result = run({"namespace": "ns", "snapshot": "s", "base_snapshot": "b"})
    assert result["failed"] and result["full_sync_required"] is True and result["full_sync_reason"] == "gone"


def test_success_is_never_a_change_and_tokens_are_hidden(monkeypatch):
    monkeypatch.setattr(mod, "get_api_client", lambda params: object())
    seen = {}

    def fake_run(params, api_client, check_mode, on_token):
        on_token("eyJhbGciOiJSUzI1NiJ9.secret-token")
        seen["check_mode"] = check_mode
        return {"call": "allocated", "extent_count": 1}
    monkeypatch.setattr(_csi_diff, "run", fake_run)
    original = basic.AnsibleModule.__init__
    modules = []

    def capture(self, *a, **kw):
        original(self, *a, **kw)
        modules.append(self)
    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    result = run({"namespace": "ns", "snapshot": "s", "_ansible_check_mode": True})
    assert result["changed"] is False and result["call"] == "allocated"
    assert seen["check_mode"] is True
    assert "eyJhbGciOiJSUzI1NiJ9.secret-token" in modules[0].no_log_values


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_client_for(host):
    configuration = k8s_client.Configuration()
    configuration.host = host
    return k8s_client.ApiClient(configuration)


def test_unreachable_api_server_fails_without_a_traceback(monkeypatch):
    """The kubernetes client raises urllib3's MaxRetryError when nothing answers: a failed task that
    names the server, the cause and what to check, not a MODULE FAILURE."""
    host = "https://127.0.0.1:%d" % closed_port()
    monkeypatch.setattr(mod, "get_api_client", lambda params: api_client_for(host))
    result = run({"namespace": "ns", "snapshot": "s"})
    assert result["failed"] is True
    msg = result["msg"]
    assert msg.startswith("the Kubernetes API server %s could not be reached (request /apis/snapshot.storage.k8s.io/v1/"
                          "namespaces/ns/volumesnapshots/s): NewConnectionError" % host), msg
    assert "Connection refused" in msg
    assert "check the kubeconfig context" in msg and "reachable from this host" in msg and "CA" in msg


def test_api_server_certificate_failure_is_explained(monkeypatch):
    host = "https://api.cluster.example:6443"
    monkeypatch.setattr(mod, "get_api_client", lambda params: api_client_for(host))

    def untrusted(params, api_client, check_mode, on_token):
        raise MaxRetryError(None, "/apis/snapshot.storage.k8s.io/v1/namespaces/ns/volumesnapshots/s", reason=SSLError(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain"))
    monkeypatch.setattr(_csi_diff, "run", untrusted)
    result = run({"namespace": "ns", "snapshot": "s"})
    assert result["failed"] is True and "exception" not in result
    assert result["msg"].startswith("the TLS certificate of the Kubernetes API server %s failed verification" % host)
    assert "SSLError: [SSL: CERTIFICATE_VERIFY_FAILED]" in result["msg"]
    assert "check the CA" in result["msg"] and "kubeconfig context" in result["msg"]
