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

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_transport as tr


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


def test_connector_failure_is_recorded_and_connection_closed():
    def refuse():
        raise RuntimeError("pods \"ctrl-0\" is forbidden: cannot create resource pods/portforward")
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, connector=refuse)
    address = proxy.start()
    try:
        assert talk(address, b"x") == b""
    finally:
        proxy.close()
    assert "pods/portforward" in proxy.errors[0] and "csi-driver/ctrl-0 port 50051" in proxy.errors[0]


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
