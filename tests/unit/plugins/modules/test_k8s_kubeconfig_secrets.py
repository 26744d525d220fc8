# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An inline ``kubeconfig`` (a dict) carries tokens, private keys and passwords: the Kubernetes modules
hide them from the logged invocation, the result's ``invocation`` (-vvv) and messages."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import subprocess
import sys

import pytest
from ansible.module_utils import basic

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint_configmap, _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_module
from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import K8sConnectionError, kubeconfig_secrets
from ansible_collections.cbt.toolkit.plugins.modules import (
    cbt_checkpoint,
    cbt_checkpoint_info,
    csi_snapshot_diff,
    odf_cbt_enable,
    odf_cbt_info,
)
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import FailJson, run_module

SECRETS = {
    "token": "sha256~user-bearer-token-0123456789",
    "key": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCmtleS1kYXRh",
    "password": "correct-horse-battery-staple",
    "id_token": "eyJhbGciOiJSUzI1NiJ9.id-token-payload.sig",
    "refresh_token": "refresh-token-9f8e7d6c",
    "client_secret": "oidc-client-secret-abc123",
    "access_token": "ya29.access-token-xyz",
    "exec_env": "aws-secret-access-key-value-42",
}
CERT = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCnB1YmxpYw=="


def inline_kubeconfig(server="https://127.0.0.1:6443"):
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": CERT}}],
        "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "admin"}},
                     {"name": "oidc", "context": {"cluster": "c", "user": "oidc"}}],
        "users": [
            {"name": "admin", "user": {"token": SECRETS["token"], "client-certificate-data": CERT,
                                       "client-key-data": SECRETS["key"]}},
            {"name": "basic", "user": {"username": "admin", "password": SECRETS["password"]}},
            {"name": "oidc", "user": {"auth-provider": {"name": "oidc", "config": {
                "client-id": "k8s", "idp-issuer-url": "https://idp.example.com",
                "id-token": SECRETS["id_token"], "refresh-token": SECRETS["refresh_token"],
                "client-secret": SECRETS["client_secret"], "access-token": SECRETS["access_token"]}}}},
            {"name": "eks", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
                                              "env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": SECRETS["exec_env"]}]}}},
        ],
    }


def test_every_secret_of_an_inline_kubeconfig_is_found():
    found = kubeconfig_secrets(inline_kubeconfig())
    assert found == set(SECRETS.values())
    assert CERT not in found and "admin" not in found and "k8s" not in found


@pytest.mark.parametrize("value", [None, "/home/me/.kube/config", {}, {"users": None}, {"users": [{"user": None}]}])
def test_no_inline_kubeconfig_no_secrets(value):
    assert kubeconfig_secrets(value) == set()


def capture_modules(monkeypatch):
    """The AnsibleModule instances built, and what they logged (the invocation goes to syslog/journal)."""
    original = basic.AnsibleModule.__init__
    modules, logged = [], []

    def init(self, *a, **kw):
        modules.append(self)
        original(self, *a, **kw)
    monkeypatch.setattr(basic.AnsibleModule, "__init__", init)
    monkeypatch.setattr(basic.AnsibleModule, "log", lambda self, msg, log_args=None: logged.append((msg, log_args)))
    return modules, logged


def refuse_connection(params):
    raise K8sConnectionError("could not load Kubernetes configuration: test")


@pytest.mark.parametrize("module, args", [
    (odf_cbt_info, {}),
    (odf_cbt_enable, {}),
    (csi_snapshot_diff, {"namespace": "ns", "snapshot": "s"}),
    # the ConfigMap backend of the checkpoint store takes the same connection options
    (cbt_checkpoint, {"backend": "configmap", "configmap_name": "cp", "configmap_namespace": "ns", "source_id": "s",
                      "target": "t", "state": "absent"}),
    (cbt_checkpoint_info, {"backend": "configmap", "configmap_name": "cp", "configmap_namespace": "ns"}),
])
def test_modules_hide_the_secrets(monkeypatch, module, args):
    modules, logged = capture_modules(monkeypatch)
    monkeypatch.setattr(_odf_module, "get_api_client", refuse_connection)
    monkeypatch.setattr(csi_snapshot_diff, "get_api_client", refuse_connection)
    monkeypatch.setattr(_checkpoint_configmap.k8s_utils, "get_api_client", refuse_connection)
    monkeypatch.setattr(_csi_diff, "run", lambda *a, **kw: {})
    run_module(module, dict(args, kubeconfig=inline_kubeconfig()), expect=FailJson)
    assert set(SECRETS.values()) <= modules[0].no_log_values
    assert logged, "the invocation was not logged"
    text = json.dumps([str(m) for m in logged])
    for secret in SECRETS.values():
        assert secret not in text


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_invocation_of_a_real_run_shows_no_secret(tmp_path):
    """The module in its own process, as Ansible runs it: the result's invocation.module_args (shown
    with -vvv) has the kubeconfig with its secrets masked; the failure names the unreachable server."""
    path = odf_cbt_info.__file__
    root = path[:path.rindex(os.sep + "ansible_collections" + os.sep)]
    args = tmp_path / "args.json"
    server = "https://127.0.0.1:%d" % closed_port()
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"kubeconfig": inline_kubeconfig(server),
                                                        "_ansible_tmpdir": str(tmp_path)}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.cbt.toolkit.plugins.modules.odf_cbt_info",
                           str(args)], env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                          check=False)  # a failing module exits 1
    result = json.loads(proc.stdout)
    assert result["failed"] is True
    kubeconfig = result["invocation"]["module_args"]["kubeconfig"]
    assert kubeconfig["users"][0]["user"]["client-certificate-data"] == CERT
    everything = proc.stdout + proc.stderr
    for secret in SECRETS.values():
        assert secret not in everything
    assert "the Kubernetes API server %s could not be reached" % server in result["msg"]
