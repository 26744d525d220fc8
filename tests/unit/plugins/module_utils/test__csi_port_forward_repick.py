# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A port-forward pod that is replaced during a listing: on a 404 the proxy picks the pod behind the
Service again (a bounded number of times) instead of failing every resume."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import threading

from kubernetes.client.rest import ApiException

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_transport as tr
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import CsiDiffError
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_k8s import (
    FlowDiscovery,
    flow_params,
    snap_info,
    use_flow,
)
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__csi_transport import echo_upper, talk


def gone(pod):
    return ApiException(status=0, reason="Handshake status 404 Not Found -+-+- {} -+-+- b'{\"kind\":\"Status\","
                                         "\"message\":\"pods \\\\\"%s\\\\\" not found\",\"code\":404}'" % pod)


def connector_for(proxy, live):
    """Connects only to pods in ``live``; others answer 404 like the API server for a deleted pod."""
    def connect():
        if proxy.pod not in live:
            raise gone(proxy.pod)
        ours, pod = socket.socketpair()
        threading.Thread(target=echo_upper, args=(pod,), daemon=True).start()
        return ours, None
    return connect


def test_replaced_pod_is_picked_again():
    picks = []
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, sleep=lambda s: None)
    proxy._connector = connector_for(proxy, {"ctrl-1"})
    proxy.repick = lambda: picks.append(1) or ("csi-driver", "ctrl-1", 50051)
    address = proxy.start()
    try:
        assert talk(address, b"hello") == b"HELLO"
        assert talk(address, b"again") == b"AGAIN"
    finally:
        proxy.close()
    assert proxy.errors == [] and proxy.pod == "ctrl-1" and proxy.repicked == ["csi-driver/ctrl-1"]
    assert len(picks) == 1


def test_repicking_is_bounded_and_explained():
    sleeps = []
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, sleep=sleeps.append, max_repicks=3)
    proxy._connector = connector_for(proxy, set())
    proxy.repick = lambda: ("csi-driver", "ctrl-0", 50051)  # the EndpointSlice still lists the old pod
    address = proxy.start()
    try:
        assert talk(address, b"x") == b""
    finally:
        proxy.close()
    assert sleeps == [1.0, 1.0, 1.0]
    assert len(proxy.errors) == 1
    assert proxy.errors[0].startswith("port-forward to pod csi-driver/ctrl-0 port 50051 failed: Handshake status 404")
    assert "picking the pod behind the Service again did not help" in proxy.errors[0]


def test_failed_repick_is_reported_with_its_reason():
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, sleep=lambda s: None)
    proxy._connector = connector_for(proxy, set())

    def no_pod():
        raise CsiDiffError("Service csi-driver/sms has no ready pod to port-forward to; check that the CSI "
                           "controller with the csi-snapshot-metadata sidecar is running")
    proxy.repick = no_pod
    address = proxy.start()
    try:
        assert talk(address, b"x") == b""
    finally:
        proxy.close()
    assert "picking another pod behind the Service failed: Service csi-driver/sms has no ready pod" in proxy.errors[0]


def test_other_errors_are_not_repicked():
    picks = []
    proxy = tr.PortForwardProxy(None, "csi-driver", "ctrl-0", 50051, sleep=lambda s: None)

    def forbidden():
        raise ApiException(status=0, reason="Handshake status 403 Forbidden")
    proxy._connector = forbidden
    proxy.repick = lambda: picks.append(1) or ("csi-driver", "ctrl-1", 50051)
    address = proxy.start()
    try:
        talk(address, b"x")
    finally:
        proxy.close()
    assert picks == [] and "403" in proxy.errors[0]


def test_the_flow_gives_the_proxy_a_way_to_pick_the_pod_again(monkeypatch):
    fake = FlowDiscovery({"s": snap_info("s")})
    picked = []
    fake.port_forward_target = lambda address: picked.append(address) or ("csi-driver", "ctrl-%d" % len(picked), 50051)
    use_flow(monkeypatch, fake)
    proxies = []

    def proxy_factory(api_client, namespace, pod, port):
        proxy = tr.PortForwardProxy(api_client, namespace, pod, port, sleep=lambda s: None)
        proxy._connector = connector_for(proxy, set())
        proxies.append(proxy)
        return proxy

    class Refused:
        def open_stream(self, method, request):
            proxies[0].repick()  # what the proxy does on a 404
            raise tr.StreamFailure("UNAVAILABLE", "failed to connect")
            yield  # pylint: disable=unreachable

        def close(self):
            pass
    try:
        _csi_diff.run(flow_params(snapshot="s", transport="port_forward", retries=0), None,
                      proxy_factory=proxy_factory, transport_factory=lambda *a: Refused())
    except CsiDiffError:
        pass
    assert picked == ["sms.csi-driver.svc:6443", "sms.csi-driver.svc:6443"]
