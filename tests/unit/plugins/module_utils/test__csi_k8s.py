# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes side of csi_snapshot_diff with mocked API clients: caCert decoding, addresses and image
versions, the SnapshotMetadataService lookup order, TokenRequest re-minting, the base-mode decision
and the transport choice."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import socket

import pytest
from kubernetes.client.rest import ApiException

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_k8s as k8s

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def api_error(status):
    exc = ApiException(status=status, reason="x")
    exc.body = '{"message": "denied"}'
    return exc


def test_decode_ca_base64_pem_and_errors():
    assert k8s.decode_ca(base64.b64encode(PEM.encode()).decode(), "sms") == PEM.encode()
    assert k8s.decode_ca(PEM, "cm") == PEM.encode()
    assert k8s.decode_ca(PEM.encode(), "cm") == PEM.encode()
    with pytest.raises(k8s.CsiDiffError, match="has no caCert"):
        k8s.decode_ca("", "SnapshotMetadataService x")
    with pytest.raises(k8s.CsiDiffError, match="neither PEM nor base64"):
        k8s.decode_ca("not base64 !!", "x")
    with pytest.raises(k8s.CsiDiffError, match="does not contain a PEM certificate"):
        k8s.decode_ca(base64.b64encode(b"hello").decode(), "x")


@pytest.mark.parametrize("address, expected", [
    ("svc.ns:6443", ("svc.ns", 6443)),
    ("openshift-storage-rbd-snapshot-metadata.openshift-storage.svc:6443",
     ("openshift-storage-rbd-snapshot-metadata.openshift-storage.svc", 6443)),
    ("127.0.0.1:50051", ("127.0.0.1", 50051)),
    ("[::1]:443", ("::1", 443)),
])
def test_split_address(address, expected):
    assert k8s.split_address(address) == expected


@pytest.mark.parametrize("address", ["https://svc:443", "svc", "svc:0", "svc:99999", ":80", "svc:http"])
def test_split_address_rejects(address):
    with pytest.raises(ValueError):
        k8s.split_address(address)


@pytest.mark.parametrize("image, version", [
    ("registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.1.0", (0, 1, 0)),
    ("registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.1.0@sha256:" + "a" * 64, (1, 1, 0)),
    ("localhost:5000/csi-snapshot-metadata:1.0", (1, 0, 0)),
    ("localhost:5000/csi-snapshot-metadata", None),
    ("quay.io/x/ose-csi-external-snapshot-metadata-rhel9@sha256:" + "b" * 64, None),
    ("x/csi-snapshot-metadata:latest", None),
])
def test_parse_image_version(image, version):
    assert k8s.parse_image_version(image) == version


class FakeCustom:
    def __init__(self, objects=None, errors=None):
        self.objects = objects or {}
        self.errors = errors or {}
        self.calls = []

    def get_cluster_custom_object(self, group, version, plural, name):
        key = (group, version, plural, name)
        self.calls.append(key)
        if key in self.errors:
            raise self.errors[key]
        if key in self.objects:
            return self.objects[key]
        raise api_error(404)


class FakeCore:
    def __init__(self, config_maps=None):
        self.config_maps = config_maps or {}
        self.tokens = 0

    def read_namespaced_config_map(self, name, namespace):
        if (namespace, name) in self.config_maps:
            return self.config_maps[(namespace, name)]
        raise api_error(404)


def discovery(custom=None, core=None):
    d = k8s.Discovery.__new__(k8s.Discovery)
    d.custom = custom or FakeCustom()
    d.core = core or FakeCore()
    return d


def sms(address="a.b:1"):
    return {"spec": {"address": address, "audience": "aud", "caCert": base64.b64encode(PEM.encode()).decode()}}


def test_sms_v1beta1_first_then_v1alpha1():
    custom = FakeCustom({("cbt.storage.k8s.io", "v1alpha1", "snapshotmetadataservices", "drv"): sms()})
    found = discovery(custom).metadata_service("drv", "openshift-storage")
    assert found["api_version"] == "cbt.storage.k8s.io/v1alpha1" and found["address"] == "a.b:1"
    assert [c[1] for c in custom.calls] == ["v1beta1", "v1alpha1"]


def test_sms_configmap_fallback_and_nothing():
    class Cm:
        data = {"address": "x.y:6443", "audience": "drv", "caCert": PEM}
    d = discovery(core=FakeCore({("openshift-storage", "drv"): Cm()}))
    found = d.metadata_service("drv", "openshift-storage")
    assert found["source"] == "ConfigMap openshift-storage/drv" and found["ca_cert"] == PEM
    assert discovery().metadata_service("drv", "openshift-storage") is None


def test_sms_forbidden_says_which_permission():
    errors = {("cbt.storage.k8s.io", v, "snapshotmetadataservices", "drv"): api_error(403)
              for v in ("v1beta1", "v1alpha1")}
    with pytest.raises(k8s.CsiDiffError, match="needs 'get' on snapshotmetadataservices.cbt.storage.k8s.io"):
        discovery(FakeCustom(errors=errors)).metadata_service("drv", None)


class TokenCore:
    def __init__(self, lifetimes):
        self.lifetimes = list(lifetimes)
        self.requests = []

    def create_namespaced_service_account_token(self, name, namespace, body):
        self.requests.append((name, namespace, body.spec.audiences, body.spec.expiration_seconds))
        now = datetime.datetime.now(datetime.timezone.utc)

        class Status:
            token = "tok-%d" % len(self.requests)
            expiration_timestamp = now + datetime.timedelta(seconds=self.lifetimes.pop(0))

        class Resp:
            status = Status
        return Resp


def token_source(core, seen, expiration=600):
    src = k8s.TokenSource(None, "ns", "sa", "aud", expiration, on_token=seen.append)
    src.core = core
    return src


def test_token_minted_once_then_reminted_near_expiry():
    core = TokenCore([3600, 20, 3600])
    seen = []
    src = token_source(core, seen)
    assert src.get() == "tok-1" and src.get() == "tok-1"
    assert src.get(force=True) == "tok-2"      # forced (UNAUTHENTICATED after a resume)
    assert src.get() == "tok-3"                # tok-2 expires within the margin
    assert seen == ["tok-1", "tok-2", "tok-3"]
    assert core.requests[0] == ("sa", "ns", ["aud"], 600)


def test_token_errors_name_the_permission():
    class Denied:
        def create_namespaced_service_account_token(self, name, namespace, body):
            raise api_error(403)
    with pytest.raises(k8s.CsiDiffError) as err:
        token_source(Denied(), []).get()
    assert "needs 'create' on serviceaccounts/token in namespace ns" in err.value.msg
    assert "tok-" not in err.value.msg


def test_decide_base_mode():
    class D:
        def __init__(self, version):
            self.version = version

        def sidecar_version(self, address):
            return self.version, "image x:%s" % (self.version,)
    params = {"base_snapshot_mode": "auto", "sidecar_version": None}
    assert _csi_diff.decide_base_mode(params, D((1, 1, 0)), {"address": "a:1"}, "b", "h")[0] == "handle"
    assert _csi_diff.decide_base_mode(params, D((0, 1, 0)), {"address": "a:1"}, "b", "h")[0] == "name"
    mode, reason, probe = _csi_diff.decide_base_mode(params, D(None), {"address": "a:1"}, "b", "h")
    assert (mode, probe) == ("handle", True) and "version unknown" in reason
    assert _csi_diff.decide_base_mode(params, D(None), {"address": "a:1"}, None, "h")[:2] == (
        "handle", "only base_snapshot_handle was given, so the handle is sent")
    explicit = dict(params, sidecar_version="v0.1.0")
    assert _csi_diff.decide_base_mode(explicit, D((9, 9, 9)), {"address": "a:1"}, "b", "h")[0] == "name"
    assert _csi_diff.decide_base_mode(dict(params, base_snapshot_mode="name"), D(None), {}, "b", "h")[0] == "name"


def test_choose_transport(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert _csi_diff.choose_transport({"transport": "auto", "connect_to": "127.0.0.1:1"}, "x")[0] == "direct"
    assert _csi_diff.choose_transport({"transport": "port_forward"}, "localhost")[0] == "port_forward"

    def no_dns(host, port):
        raise socket.gaierror("no")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    kind, reason = _csi_diff.choose_transport({"transport": "auto"}, "svc.ns.svc")
    assert kind == "port_forward" and "does not resolve" in reason
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert _csi_diff.choose_transport({"transport": "auto"}, "svc.ns.svc")[0] == "direct"


@pytest.mark.parametrize("change, text", [
    ({"base_snapshot": "a", "base_snapshot_handle": "h"}, "mutually exclusive"),
    ({"base_snapshot_mode": "name", "base_snapshot_handle": "h"}, "set base_snapshot, not base_snapshot_handle"),
    ({"token_expiration": 60}, "at least 600"),
    ({"starting_offset": -1}, "must not be negative"),
    ({"max_results": -5}, "between 0"),
    ({"sidecar_version": "latest"}, "is not a version"),
    ({"sms_address": "https://x:1"}, "sms_address"),
    ({"connect_to": "nohost"}, "connect_to"),
    ({"connect_to": "127.0.0.1:5", "transport": "port_forward"}, "mutually exclusive"),
])
def test_check_params(change, text):
    params = {k: v.get("default") for k, v in _csi_diff.argument_spec().items()}
    params.update(namespace="ns", snapshot="s")
    assert _csi_diff.check_params(params) is None
    params.update(change)
    assert text in _csi_diff.check_params(params)
