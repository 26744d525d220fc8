# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Impersonation headers of ``get_api_client``: every group of ``impersonate_groups`` goes as its own
``Impersonate-Group`` header line (the API server does not split a comma-separated one), checked on
what the client hands to urllib3 and on what a local HTTP server receives."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3

from ansible_collections.cbt.toolkit.plugins.module_utils import k8s
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeApi

GROUPS = ["system:authenticated", "team-a", "team-b"]


class _Recorder(BaseHTTPRequestHandler):
    seen = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append({"method": self.command, "path": self.path,
                          "user": self.headers.get_all("Impersonate-User"),
                          "groups": self.headers.get_all("Impersonate-Group")})
        body = json.dumps({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "ns1"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1], _Recorder.seen
    httpd.shutdown()
    httpd.server_close()


def params(host, groups=None, **kw):
    base = dict(host=host, api_key="t0ken", impersonate_user="alice", impersonate_groups=groups)
    base.update(kw)
    return base


def test_every_group_reaches_the_server_for_requests_with_and_without_a_body(server):
    host, seen = server
    api = KubeApi(k8s.get_api_client(params(host, GROUPS)))
    api.request("GET", "/api/v1/namespaces/ns1")
    api.request("PATCH", "/api/v1/namespaces/ns1", body={"metadata": {"labels": {"a": "b"}}},
                content_type="application/merge-patch+json")
    api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "ns1"}})
    api.request("DELETE", "/api/v1/namespaces/ns1")
    # the generated API classes go through the same REST layer
    core = k8s.k8s_client.CoreV1Api(k8s.get_api_client(params(host, GROUPS)))
    core.read_namespace("ns1")
    assert [r["method"] for r in seen] == ["GET", "PATCH", "POST", "DELETE", "GET"]
    for rec in seen:
        assert rec["groups"] == GROUPS, rec
        assert rec["user"] == ["alice"]


def test_headers_handed_to_urllib3_carry_one_line_per_group(server, monkeypatch):
    host, seen = server
    handed = []
    original = urllib3.PoolManager.request

    def spy(self, method, url, *args, **kwargs):
        headers = kwargs.get("headers")
        items = list(headers.items())
        handed.append([v for k, v in items if k.lower() == "impersonate-group"])
        return original(self, method, url, *args, **kwargs)
    monkeypatch.setattr(urllib3.PoolManager, "request", spy)
    api = KubeApi(k8s.get_api_client(params(host, GROUPS)))
    api.request("GET", "/api/v1/namespaces/ns1")
    api.request("PATCH", "/api/v1/namespaces/ns1", body={"metadata": {}}, content_type="application/merge-patch+json")
    assert handed == [GROUPS, GROUPS]
    # the client's own default headers are untouched: nothing leaks between ApiClients
    assert "Impersonate-Group" not in k8s.get_api_client(params(host, GROUPS)).default_headers


@pytest.mark.parametrize("groups, expected", [(["team-a"], ["team-a"]), (None, None), ([], None)])
def test_one_group_or_none(server, groups, expected):
    host, seen = server
    KubeApi(k8s.get_api_client(params(host, groups))).request("GET", "/api/v1/namespaces/ns1")
    assert seen[0]["groups"] == expected and seen[0]["user"] == ["alice"]


def test_several_groups_fail_clearly_where_urllib3_would_merge_them(server, monkeypatch):
    host, seen = server
    monkeypatch.setattr(k8s, "_urllib3_major", lambda: 1)
    with pytest.raises(k8s.K8sConnectionError) as err:
        k8s.get_api_client(params(host, GROUPS))
    msg = str(err.value)
    assert "impersonate_groups has 3 groups" in msg and "separate Impersonate-Group headers" in msg
    assert "install urllib3 2.0 or later" in msg and "or give a single group" in msg
    # one group is a single header: fine with any urllib3
    KubeApi(k8s.get_api_client(params(host, ["team-a"]))).request("GET", "/api/v1/namespaces/ns1")
    assert seen[0]["groups"] == ["team-a"]


def test_several_groups_through_an_http_proxy_to_plain_http_fail_clearly(server):
    host, seen = server
    with pytest.raises(k8s.K8sConnectionError) as err:
        k8s.get_api_client(params(host, GROUPS, proxy="http://127.0.0.1:9"))
    assert "HTTP proxy http://127.0.0.1:9" in str(err.value) and "use https" in str(err.value)
    # https API servers are reached through a CONNECT tunnel: the headers stay separate
    assert k8s.get_api_client(params("https://127.0.0.1:6443", GROUPS, proxy="http://127.0.0.1:9")) is not None
    assert seen == []
