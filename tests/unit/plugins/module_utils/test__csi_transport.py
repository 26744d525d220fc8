# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Port-forward proxy of csi_snapshot_diff with the Kubernetes websocket mocked (there is no kubelet
in the test bed): one port-forward per accepted connection, bytes carried both ways, errors kept."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import threading

import kubernetes.stream
import pytest
from kubernetes.client.rest import ApiException

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_stream
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_transport as tr
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import CsiDiffError
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_k8s import (
    FlowDiscovery,
    fake_pem,
    flow_params,
    snap_info,
    use_flow,
)


def echo_upper(sock):
    """The 'pod' side: answer every chunk in upper case until closed."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data.upper())
    finally:
        sock.close()


class FakePortForward:
    """What kubernetes.stream.portforward returns: .socket(port), .error(port), .close()."""

    instances = []

    def __init__(self, api_method, name, namespace, ports):
        self.args = (api_method, name, namespace, ports)
        ours, pod = socket.socketpair()
        threading.Thread(target=echo_upper, args=(pod,), daemon=True).start()
        self._socket = ours
        self.closed = False
        FakePortForward.instances.append(self)

    def socket(self, port):
        assert str(port) == self.args[3]
        return self._socket

    def error(self, port):
        return None

    def close(self):
        self.closed = True
        self._socket.close()


def talk(address, payload):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break  # the proxy dropped a connection it could not forward
            if not chunk:
                break
            got += chunk
        return got


def test_port_forward_through_the_kubernetes_client(monkeypatch):
    FakePortForward.instances = []
    monkeypatch.setattr(kubernetes.stream, "portforward", FakePortForward)
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051)
    address = proxy.start()
    try:
        assert address.startswith("127.0.0.1:")
        assert talk(address, b"hello") == b"HELLO"
        big = bytes(range(97, 123)) * 20000
        assert talk(address, big) == big.upper()
    finally:
        proxy.close()
    assert proxy.connections == 2 and proxy.errors == []
    first = FakePortForward.instances[0]
    method, pod, namespace, ports = first.args
    assert method.__name__ == "connect_get_namespaced_pod_portforward"
    assert (pod, namespace, ports) == ("ctrl-0", "csi-driver", "50051")
    assert all(pf.closed for pf in FakePortForward.instances)


def refused_proxy_errors(exc):
    """The errors a proxy records when its connector raises ``exc``; the client's connection is closed."""
    def refuse():
        raise exc
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, connector=refuse)
    address = proxy.start()
    try:
        assert talk(address, b"x") == b""
    finally:
        proxy.close()
    return proxy.errors


def test_connector_failure_is_recorded_and_connection_closed():
    errors = refused_proxy_errors(RuntimeError("pods \"ctrl-0\" is forbidden: cannot create resource pods/portforward"))
    assert "pods/portforward" in errors[0] and "csi-driver/ctrl-0 port 50051" in errors[0]


def test_pump_stops_when_either_side_closes():
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (tr.pump(a2, b1, threading.Event()), done.set()), daemon=True)
    thread.start()
    a1.sendall(b"ping")
    assert b2.recv(10) == b"ping"
    b2.sendall(b"pong")
    assert a1.recv(10) == b"pong"
    b2.close()
    assert done.wait(5)
    for s in (a1, a2, b1):
        s.close()


# What kubernetes.stream raises when the API server refuses the port-forward websocket (RBAC).
FORBIDDEN = ApiException(status=0, reason=(
    "Handshake status 403 Forbidden -+-+- {'audit-id': 'a1', 'content-type': 'application/json', "
    "'content-length': '331'} -+-+- b'{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
    "\"status\":\"Failure\",\"message\":\"pods \\\\\"ctrl-0\\\\\" is forbidden: User \\\\\"backup\\\\\" cannot "
    "create resource \\\\\"pods/portforward\\\\\" in API group \\\\\"\\\\\" in the namespace \\\\\"csi-driver\\\\\"\","
    "\"reason\":\"Forbidden\",\"code\":403}'"))


def test_forbidden_port_forward_names_the_missing_permission():
    error = refused_proxy_errors(FORBIDDEN)[0]
    assert error.startswith("port-forward to pod csi-driver/ctrl-0 port 50051 failed: Handshake status 403 Forbidden: "
                            'pods "ctrl-0" is forbidden: User "backup" cannot create resource "pods/portforward"')
    assert error.endswith("; the Kubernetes user needs 'create' on pods/portforward in namespace csi-driver "
                          "(grant 'get' and 'create')")
    assert "audit-id" not in error  # the response headers are noise


def refusing_listener():
    """A peer that accepts TCP connections and closes them at once: gRPC reports 'Handshake read
    failed'."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def loop():
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            conn.close()
    threading.Thread(target=loop, daemon=True).start()
    return listener


def test_handshake_cut_by_the_connection_stays_retryable():
    """A peer closing the connection during the handshake gives 'Handshake read failed': a transport
    cut that a retry can heal (a TCP cut, a restarting sidecar), not a TLS verdict. When the cut comes
    from a refused port-forward, the proxy's error makes it final (see below)."""
    listener = refusing_listener()
    transport = tr.GrpcTransport("127.0.0.1:%d" % listener.getsockname()[1], fake_pem().encode(), "sms.csi-driver.svc",
                                 timeout=10)
    try:
        with pytest.raises(_csi_stream.StreamFailure) as err:
            list(transport.open_stream("/snapshotmetadata.SnapshotMetadata/GetMetadataAllocated", b""))
    finally:
        transport.close()
        listener.close()
    assert err.value.code == "UNAVAILABLE" and "Handshake read failed" in err.value.details
    assert not _csi_stream.is_permanent(err.value.code, err.value.details)


@pytest.mark.parametrize("details, tls", [
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Ssl Handshake Failed: "
     "ssl_error_ssl: error:1000007d:ssl routines:OPENSSL_internal:Certificate Verify Failed", True),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: tsi_protocol_failure", True),
    ("Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:CERTIFICATE_VERIFY_FAILED", True),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Handshake read failed "
     "(Socket closed)", False),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Handshake write failed", False),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused", False),
])
def test_tls_markers_match_case_insensitively(details, tls):
    assert _csi_stream.is_tls_failure(details) == tls
    assert _csi_stream.is_permanent("UNAVAILABLE", details) == tls
    ctx = {"call": "allocated", "namespace": "apps", "snapshot": "s", "address": "sms:6443", "server_name": "sms"}
    explained = _csi_stream.explain("UNAVAILABLE", details, ctx)
    assert ("TLS verification of" in explained.msg) == tls


def test_refused_port_forward_fails_at_once_with_its_reason(monkeypatch):
    """The proxy records the 403; the module fails on the first broken stream with it instead of
    retrying ~31 s and blaming the sidecar."""
    use_flow(monkeypatch, FlowDiscovery({"s": snap_info("s")}))
    proxies, sleeps = [], []

    def refuse():
        raise FORBIDDEN

    def proxy_factory(api_client, namespace, pod, port):
        proxies.append(tr.PortForwardProxy(api_client, namespace, pod, port, connector=refuse))
        return proxies[-1]
    with pytest.raises(CsiDiffError) as err:
        _csi_diff.run(flow_params(snapshot="s", transport="port_forward", retry_delay=1.0), None,
                      proxy_factory=proxy_factory, sleep=sleeps.append)
    msg = err.value.msg
    assert msg.startswith("GetMetadataAllocated for VolumeSnapshot apps/s could not reach the SnapshotMetadata service "
                          "at sms.csi-driver.svc:6443: port-forward to pod csi-driver/ctrl-0 port 50051 failed: "
                          "Handshake status 403 Forbidden")
    assert "the Kubernetes user needs 'create' on pods/portforward in namespace csi-driver" in msg
    assert "TLS verification" not in msg and "sidecar and the CSI driver are running" not in msg
    assert sleeps == [] and proxies[0].connections == 1
    assert err.value.extra["grpc_code"] == "UNAVAILABLE" and len(err.value.extra["port_forward_errors"]) == 1


def test_port_forward_error_without_status_names_both_verbs():
    msg = tr.connector_error_message(ApiException(status=0, reason="Handshake status 403 Forbidden"), "ns", "p", 1)
    assert msg == ("port-forward to pod ns/p port 1 failed: Handshake status 403 Forbidden; the Kubernetes user needs "
                   "'get' and 'create' on pods/portforward in namespace ns")


@pytest.mark.parametrize("impersonation, who", [({"impersonate_user": "alice"}, "alice"),
                                                ({"impersonate_groups": ["ops", "backup"]}, "groups ops, backup")])
def test_port_forward_refuses_to_run_with_the_callers_identity_when_impersonating(monkeypatch, impersonation, who):
    use_flow(monkeypatch, FlowDiscovery({"s": snap_info("s")}))
    proxies = []

    def proxy_factory(*args):
        proxies.append(args)
        raise AssertionError("no port-forward may be opened")
    with pytest.raises(CsiDiffError) as err:
        _csi_diff.run(flow_params(snapshot="s", transport="port_forward", **impersonation), None,
                      proxy_factory=proxy_factory)
    assert "cannot impersonate %s" % who in err.value.msg and "connect_to" in err.value.msg
    assert proxies == []
