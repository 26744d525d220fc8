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
    # downstream builds are tagged with the product version, not the sidecar's (ODF 4.20 ships v0.1.0)
    ("registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v4.20", None),
    ("quay.io/x/ose-csi-external-snapshot-metadata-rhel9:v4.21.0@sha256:" + "c" * 64, None),
    ("example.com/csi-snapshot-metadata-fork:v1.1.0", None),
    ("example.com/csi-snapshot-metadata/custom:v1.1.0", None),
])
def test_parse_image_version(image, version):
    assert k8s.parse_image_version(image) == version


class FakeCustom:
    def __init__(self, objects=None, errors=None):
        self.objects = objects or {}
        self.errors = errors or {}
        self.calls = []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return self.get_cluster_custom_object(group, version, plural, "%s/%s" % (namespace, name))

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
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    kind, reason = _csi_diff.choose_transport({"transport": "auto"}, "svc.ns.svc", "https://10.0.0.1:443")
    assert kind == "direct" and "https://10.0.0.1:443" in reason


@pytest.mark.parametrize("env_host, env_port, api_host, direct", [
    ("10.0.0.1", "443", "https://10.0.0.1:443", True),
    ("10.0.0.1", "443", "https://10.0.0.1", True),
    ("10.0.0.1", None, "https://10.0.0.1:443", True),
    ("10.0.0.1", "6443", "https://10.0.0.1:6443", True),
    ("fd00:10:96::1", "443", "https://[fd00:10:96::1]:443", True),
    ("FD00:10:96::1", "443", "https://[fd00:10:96::1]:443", True),
    # an AWX / AAP job pod that manages another cluster through a kubeconfig
    ("10.0.0.1", "443", "https://api.other.example.com:6443", False),
    ("10.0.0.1", "443", "https://10.0.0.1:6443", False),
    ("10.0.0.1", "443", None, False),
    ("fd00:10:96::1", "443", "https://[fd00:10:96::2]:443", False),
])
def test_running_in_a_pod_means_direct_only_for_its_own_api_server(monkeypatch, env_host, env_port, api_host, direct):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", env_host)
    if env_port is None:
        monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    else:
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", env_port)

    def no_dns(host, port):
        raise socket.gaierror("no")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    kind, reason = _csi_diff.choose_transport({"transport": "auto"}, "sms.csi-driver.svc", api_host)
    assert kind == ("direct" if direct else "port_forward"), reason
    if not direct:
        assert "does not resolve" in reason


def test_in_pod_managing_another_cluster_resolves_the_service_itself(monkeypatch):
    """Outside the managed cluster's network the DNS check still decides, not KUBERNETES_SERVICE_HOST."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [("ok",)])
    kind, reason = _csi_diff.choose_transport({"transport": "auto"}, "sms.csi-driver.svc", "https://api.other:6443")
    assert kind == "direct" and "resolves from here" in reason


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


# ---------------------------------------------------------------- sidecar version from the image


class FakeWorkload:
    """Service ``sms/csi-driver`` selecting a Deployment whose sidecar container runs ``image``."""

    def __init__(self, image, container="csi-snapshot-metadata"):
        from kubernetes import client as kc  # pylint: disable=import-outside-toplevel
        self.service = kc.V1Service(metadata=kc.V1ObjectMeta(name="sms", namespace="csi-driver"),
                                    spec=kc.V1ServiceSpec(selector={"app": "ctrl"}))
        template = kc.V1PodTemplateSpec(
            metadata=kc.V1ObjectMeta(labels={"app": "ctrl"}),
            spec=kc.V1PodSpec(containers=[kc.V1Container(name="csi-rbdplugin", image="quay.io/cephcsi/cephcsi:v3.15.0"),
                                          kc.V1Container(name=container, image=image)]))
        self.deployment = kc.V1Deployment(metadata=kc.V1ObjectMeta(name="ctrlplugin", namespace="csi-driver"),
                                          spec=kc.V1DeploymentSpec(selector=kc.V1LabelSelector(), template=template))

    def read_namespaced_service(self, name, namespace):
        assert (name, namespace) == ("sms", "csi-driver")
        return self.service

    def list_namespaced_deployment(self, namespace):
        class Items:
            items = [self.deployment]
        return Items


def workload_discovery(image, container="csi-snapshot-metadata"):
    d = discovery()
    d.core = d.apps = FakeWorkload(image, container)
    return d


def test_sidecar_version_trusts_only_the_upstream_image():
    version, evidence = workload_discovery("registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.1.0").sidecar_version(
        "sms.csi-driver.svc:6443")
    assert version == (1, 1, 0) and "Deployment csi-driver/ctrlplugin" in evidence


@pytest.mark.parametrize("image", [
    "registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v4.20",
    "registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v4.21@sha256:" + "d" * 64,
])
def test_odf_downstream_image_tag_is_not_the_sidecar_version(image):
    """ODF 4.20/4.21 tag their v0.1.0 sidecar build v4.20/v4.21: read as 4.20.0 >= 0.2.0 it made auto
    send the base handle with the probe off, which v0.1.0 cannot serve."""
    d = workload_discovery(image)
    version, evidence = d.sidecar_version("sms.csi-driver.svc:6443")
    assert version is None
    assert "is not the upstream csi-snapshot-metadata image" in evidence and image in evidence
    mode, reason, probe = _csi_diff.decide_base_mode({"base_snapshot_mode": "auto", "sidecar_version": None}, d,
                                                     {"address": "sms.csi-driver.svc:6443"}, "mon", "h-mon")
    assert (mode, probe) == ("handle", True)
    assert "version unknown" in reason and ("v4.20" in reason or "v4.21" in reason)


def test_sidecar_image_without_tag_is_unknown():
    version, evidence = workload_discovery("quay.io/x/ose-csi-external-snapshot-metadata-rhel9@sha256:" + "b" * 64
                                           ).sidecar_version("sms.csi-driver.svc:6443")
    assert version is None and "has no version tag" in evidence


# ---------------------------------------------------------------- snapshot fields, order and volume


def snapshot_objects(name, pvc="data", volume_handle="vol-1", created="2026-12-07T10:00:00Z",
                     content_created=1796637600000000000):
    vs = {"metadata": {"name": name, "namespace": "apps", "uid": "uid-%s" % name},
          "spec": {"source": {"persistentVolumeClaimName": pvc}},
          "status": {"readyToUse": True, "boundVolumeSnapshotContentName": "content-%s" % name}}
    if created:
        vs["status"]["creationTime"] = created
    vsc = {"spec": {"driver": "drv", "source": {"volumeHandle": volume_handle} if volume_handle else
                    {"snapshotHandle": "h-%s" % name},
                    "volumeSnapshotRef": {"name": name, "namespace": "apps", "uid": "uid-%s" % name}},
           "status": {"readyToUse": True, "snapshotHandle": "h-%s" % name}}
    if content_created:
        vsc["status"]["creationTime"] = content_created
    return {("snapshot.storage.k8s.io", "v1", "volumesnapshots", "apps/%s" % name): vs,
            ("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", "content-%s" % name): vsc}


def test_snapshot_reads_creation_times_and_the_source_volume():
    info = discovery(FakeCustom(snapshot_objects("mon"))).snapshot("apps", "mon", "base")
    assert info.problem is None
    assert info.creation_time == "2026-12-07T10:00:00Z" and info.content_creation_time == 1796637600000000000
    assert info.volume_handle == "vol-1"
    assert info.as_dict()["source_volume_handle"] == "vol-1" and info.as_dict()["creation_time"] == info.creation_time
    pre = discovery(FakeCustom(snapshot_objects("old", volume_handle=None, created=None, content_created=None)))
    info = pre.snapshot("apps", "old", "base")  # pre-provisioned content: no source volume, no times
    assert info.problem is None and info.volume_handle is None and info.creation_time is None


@pytest.mark.parametrize("text, expected", [
    ("2026-12-07T10:00:00Z", datetime.datetime(2026, 12, 7, 10, 0, 0, tzinfo=datetime.timezone.utc)),
    ("2026-12-07T10:00:00.25Z", datetime.datetime(2026, 12, 7, 10, 0, 0, 250000, tzinfo=datetime.timezone.utc)),
    ("2026-12-07T11:00:00+01:00", datetime.datetime(2026, 12, 7, 10, 0, 0, tzinfo=datetime.timezone.utc)),
    ("yesterday", None),
    (None, None),
    ("2026-13-40T10:00:00Z", None),
])
def test_parse_creation_time(text, expected):
    assert k8s.parse_creation_time(text) == expected


# The module flow with a fake Discovery: base/target checks happen before any service lookup.

def fake_pem():
    import certifi  # pylint: disable=import-outside-toplevel
    with open(certifi.where()) as handle:
        return handle.read()


class FlowDiscovery:
    """What ``_csi_diff.run`` asks of ``Discovery``: fixed snapshots, an SMS, a pod to port-forward to."""

    def __init__(self, snapshots, version=(None, "no workload"), fail_on_service=False):
        self.snapshots = snapshots
        self.version = version
        self.fail_on_service = fail_on_service

    def snapshot(self, namespace, name, role):
        if name in self.snapshots:
            return self.snapshots[name]
        info = k8s.SnapshotInfo(namespace, name)
        info.problem = "VolumeSnapshot %s/%s (%s) does not exist" % (namespace, name, role)
        return info

    def metadata_service(self, driver, config_map_namespace=None):
        assert not self.fail_on_service, "the base/target problem must be caught before the service lookup"
        return {"source": "SnapshotMetadataService %s (cbt.storage.k8s.io/v1beta1)" % driver,
                "kind": "SnapshotMetadataService", "api_version": "cbt.storage.k8s.io/v1beta1", "name": driver,
                "address": "sms.csi-driver.svc:6443", "audience": "aud", "ca_cert": fake_pem()}

    def sidecar_version(self, address):
        return self.version

    def port_forward_target(self, address):
        return "csi-driver", "ctrl-0", 50051

    def service_account_from_credentials(self):
        return None


class FlowTokens:
    def __init__(self, api_client, namespace, name, audience, expiration_seconds=3600, on_token=None):
        self.minted = 0

    def get(self, force=False):
        self.minted += 1
        return "token"


def flow_params(**overrides):
    params = {k: v.get("default") for k, v in _csi_diff.argument_spec().items()}
    params.update(namespace="apps", service_account="backup-client", retry_delay=0.0)
    params.update(overrides)
    return params


def use_flow(monkeypatch, fake):
    monkeypatch.setattr(_csi_diff, "Discovery", lambda api_client: fake)
    monkeypatch.setattr(_csi_diff, "TokenSource", FlowTokens)


def snap_info(name, pvc="data", volume="vol-1", created=None, content_created=None):
    info = k8s.SnapshotInfo("apps", name)
    info.pvc, info.driver, info.content_name, info.handle = pvc, "drv", "content-%s" % name, "h-%s" % name
    info.volume_handle, info.creation_time, info.content_creation_time = volume, created, content_created
    return info


def flow_fails(monkeypatch, base, target):
    use_flow(monkeypatch, FlowDiscovery({"mon": base, "tue": target}, fail_on_service=True))
    with pytest.raises(k8s.CsiDiffError) as err:
        _csi_diff.run(flow_params(snapshot="tue", base_snapshot="mon"), None)
    return err.value


def test_base_created_after_the_target_is_refused(monkeypatch):
    err = flow_fails(monkeypatch, snap_info("mon", created="2026-12-08T10:00:00Z"),
                     snap_info("tue", created="2026-12-07T10:00:00Z"))
    assert "base VolumeSnapshot apps/mon was created at 2026-12-08T10:00:00Z, after the target VolumeSnapshot " \
           "apps/tue (created at 2026-12-07T10:00:00Z" in err.msg
    assert "swap base_snapshot and snapshot" in err.msg


def test_same_second_is_ordered_by_the_contents(monkeypatch):
    """VolumeSnapshot times have second precision; the contents' nanosecond times break a tie."""
    err = flow_fails(monkeypatch, snap_info("mon", created="2026-12-07T10:00:00Z", content_created=1796637600500000000),
                     snap_info("tue", created="2026-12-07T10:00:00Z", content_created=1796637600100000000))
    assert "created at 2026-12-07T10:00:00.500000000Z, after the target" in err.msg
    assert "VolumeSnapshotContent status.creationTime, content-mon and content-tue" in err.msg


def test_pvc_recreated_under_the_same_name_is_refused(monkeypatch):
    err = flow_fails(monkeypatch, snap_info("mon", pvc="data", volume="pvc-1111"),
                     snap_info("tue", pvc="data", volume="pvc-2222"))
    assert "both of PVC data, but of different volumes: volume handle pvc-1111 (VolumeSnapshotContent " \
           "content-mon) and pvc-2222 (VolumeSnapshotContent content-tue)" in err.msg
    assert "deleted and recreated" in err.msg and "copy the target in full" in err.msg


def test_other_pvc_is_still_refused(monkeypatch):
    err = flow_fails(monkeypatch, snap_info("mon", pvc="a", volume=None), snap_info("tue", pvc="b", volume=None))
    assert "is of PVC a but the target tue is of PVC b: a delta needs two snapshots of the same volume" in err.msg
    err = flow_fails(monkeypatch, snap_info("mon", pvc="a", volume="v-a"), snap_info("tue", pvc="b", volume="v-b"))
    assert "is of PVC a (volume handle v-a" in err.msg and "a delta needs two snapshots of the same volume" in err.msg


@pytest.mark.parametrize("base, target", [
    # ordered, same volume
    (snap_info("mon", created="2026-12-07T10:00:00Z"), snap_info("tue", created="2026-12-08T10:00:00Z")),
    # same second, no content times: order unknown, accepted
    (snap_info("mon", created="2026-12-07T10:00:00Z"), snap_info("tue", created="2026-12-07T10:00:00Z")),
    # pre-provisioned contents: no source volume, no times; same PVC name
    (snap_info("mon", volume=None), snap_info("tue", volume=None)),
    # nothing known at all
    (snap_info("mon", pvc=None, volume=None), snap_info("tue", pvc=None, volume=None)),
    # one side without a time
    (snap_info("mon", created="2026-12-09T10:00:00Z"), snap_info("tue")),
    # the volume decides: a PV rebound to a PVC of another name is still the same volume
    (snap_info("mon", pvc="old-name"), snap_info("tue", pvc="new-name")),
])
def test_usable_base_passes_the_checks(base, target):
    assert k8s.same_volume_problem(base, target) is None
    assert k8s.snapshot_order_problem(base, target) is None
