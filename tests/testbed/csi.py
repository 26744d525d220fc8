# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CSI snapshot-metadata chain for the integration tests, as local processes.

    bed = SnapshotBed(cluster, sms_version="v1beta1").install()      # CRDs, RBAC
    driver = CsiTestDriver(block_type="FIXED_LENGTH").start()        # our CSI driver, unix socket
    tls = ServingCert(["csi-snapshot-metadata.csi-driver.svc", "localhost"])
    sidecar = Sidecar("v1.1.0", cluster, driver, tls).start()        # real external-snapshot-metadata
    bed.create_sms(driver.name, "csi-snapshot-metadata.csi-driver.svc:6443", "audience", tls.ca_pem)

The sidecar is the real ``csi-snapshot-metadata`` built from the Go module proxy (tests/peers/
snapshot-metadata*); it talks to the kube-apiserver with ``--kubeconfig`` (a client-certificate
user with the sidecar's RBAC) and to the driver over its unix socket. The CSI driver is our own
``csi-test-driver`` (tests/peers/csi-test-driver) because the upstream hostpath driver is refused
by the module proxy. There is no kubelet: tests play the snapshot controller by creating
VolumeSnapshotContent and VolumeSnapshot objects with their status set, matching the driver.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from testbed.core import PeerError, Process, bin_dir, free_port, output_dir, port_open, require_binary
from testbed.kube import cert_pem, issue_cert, key_pem, new_ca, write_private

MANIFESTS = Path(__file__).resolve().parents[1] / "integration" / "csi" / "manifests"
DEFAULT_DRIVER = "csi-test.cbt.toolkit.io"
SIDECAR_USER = "csi-snapshot-metadata"
SIDECAR_GROUP = "cbt:snapshot-metadata-sidecars"
_SEQ = itertools.count(1)


def _workdir(kind: str) -> Path:
    path = output_dir() / "csi" / ("%s-%d-%d" % (kind, int(time.time() * 1000) % 10 ** 8, next(_SEQ)))
    path.mkdir(parents=True, exist_ok=True)
    return path


class ServingCert:
    """A private CA and a TLS serving certificate for the given DNS names (and 127.0.0.1)."""

    def __init__(self, dns_names, ip_addresses=("127.0.0.1",), workdir=None):
        self.workdir = Path(workdir or _workdir("tls"))
        self.dns_names = list(dns_names)
        ca_key, ca = new_ca("cbt-test snapshot-metadata CA")
        key, cert = issue_cert(ca_key, ca, self.dns_names[0], dns_names=self.dns_names,
                               ip_addresses=ip_addresses, server=True)
        self.ca_pem = cert_pem(ca)
        self.cert_pem = cert_pem(cert)
        self.key_pem = key_pem(key)
        self.ca_file = self.workdir / "ca.crt"
        self.ca_file.write_bytes(self.ca_pem)
        self.cert_file = self.workdir / "tls.crt"
        self.cert_file.write_bytes(self.cert_pem)
        self.key_file = write_private(self.workdir / "tls.key", self.key_pem)


class CsiTestDriver:
    """tests/peers/csi-test-driver: volumes are files, snapshots frozen copies, JSON control API."""

    def __init__(self, name: str = DEFAULT_DRIVER, block_type: str = "FIXED_LENGTH", max_results: int = 256,
                 block_size: int = 4096):
        self.name = name
        self.block_type = block_type
        self.max_results = max_results
        self.block_size = block_size
        self.workdir = _workdir("driver")
        self.socket = self.workdir / "csi.sock"
        self.control_port = None
        self.process = None

    def start(self) -> "CsiTestDriver":
        binary = require_binary("csi-test-driver", bin_dir() / "csi-test-driver")
        self.control_port = free_port()
        self.process = Process("csi-test-driver", [
            binary, "--endpoint", "unix://%s" % self.socket, "--drivername", self.name,
            "--data-dir", self.workdir / "data", "--snapshot-metadata-block-type", self.block_type,
            "--max-results", self.max_results, "--block-size", self.block_size,
            "--control-address", "127.0.0.1:%d" % self.control_port,
        ], log_name="csi-test-driver-%s.log" % self.workdir.name).start()
        self.process.wait_ready(lambda: self.socket.exists() and port_open(self.control_port), timeout=30,
                                what="listening on its CSI socket and control port")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.control_port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise PeerError("csi-test-driver", "control API %s %s failed: HTTP %s %s" % (
                method, path, exc.code, exc.read().decode(errors="replace")), self.process.argv, self.process.log)

    def create_volume(self, volume_id: str, size: int) -> dict:
        return self._call("POST", "/volumes", {"id": volume_id, "size": size})

    def write(self, volume_id: str, offset: int, data: bytes) -> None:
        self._call("POST", "/volumes/%s/write" % volume_id,
                   {"offset": offset, "data": base64.b64encode(data).decode()})

    def fill(self, volume_id: str, offset: int, length: int, byte: int) -> None:
        self._call("POST", "/volumes/%s/write" % volume_id, {"offset": offset, "length": length, "fill": byte})

    def snapshot(self, snapshot_id: str, volume_id: str, ready: bool = True) -> dict:
        return self._call("POST", "/snapshots", {"id": snapshot_id, "volume": volume_id, "ready": ready})

    def synthetic_snapshot(self, snapshot_id: str, count: int, stride: int = 8192, extent: int = 4096) -> dict:
        """A snapshot without data: ``count`` extents of ``extent`` bytes every ``stride`` bytes."""
        return self._call("POST", "/synthetic-snapshots", {"id": snapshot_id, "volume": "synthetic",
                                                           "count": count, "stride": stride, "extent": extent})

    def set_ready(self, snapshot_id: str, ready: bool) -> None:
        self._call("PATCH", "/snapshots/%s" % snapshot_id, {"ready": ready})

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._call("DELETE", "/snapshots/%s" % snapshot_id)

    def fault(self, code: str, after_messages: int = 0, message: str = "", rpc: str = "", times: int = 1) -> None:
        self._call("POST", "/faults", {"code": code, "after_messages": after_messages, "message": message,
                                       "rpc": rpc, "times": times})

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def calls(self) -> list:
        return self._call("GET", "/calls") or []

    def clear_calls(self) -> None:
        self._call("DELETE", "/calls")


def grpc_health(port: int, ca_pem: bytes, server_name: str, timeout: float = 2.0) -> bool:
    """True when the gRPC health service on 127.0.0.1:port answers SERVING (raw bytes, no stubs)."""
    import grpc  # pylint: disable=import-outside-toplevel

    channel = grpc.secure_channel("127.0.0.1:%d" % port, grpc.ssl_channel_credentials(ca_pem),
                                  options=[("grpc.ssl_target_name_override", server_name)])
    try:
        reply = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=timeout)
        return reply == b"\x08\x01"  # HealthCheckResponse{status: SERVING}
    except grpc.RpcError:
        return False
    finally:
        channel.close()


class Sidecar:
    """The real external-snapshot-metadata sidecar as a local process."""

    def __init__(self, version: str, cluster, driver: CsiTestDriver, tls: ServingCert, audience: str | None = None,
                 extra_args=(), kubeconfig=None, max_streaming_duration_min: int | None = None):
        self.version = version
        self.cluster = cluster
        self.driver = driver
        self.tls = tls
        self.audience = audience
        self.extra_args = list(extra_args)
        self.kubeconfig = kubeconfig
        self.max_streaming_duration_min = max_streaming_duration_min
        self.port = None
        self.process = None

    @property
    def binary_name(self) -> str:
        return "csi-snapshot-metadata-%s" % self.version

    def start(self) -> "Sidecar":
        binary = require_binary(self.binary_name, bin_dir() / self.binary_name)
        kubeconfig = self.kubeconfig or self.cluster.user_kubeconfig(SIDECAR_USER, groups=[SIDECAR_GROUP])
        self.port = free_port()
        argv = [binary, "--kubeconfig", kubeconfig, "--csi-address", self.driver.socket,
                "--tls-cert", self.tls.cert_file, "--tls-key", self.tls.key_file, "--port", self.port,
                "--http-endpoint", "127.0.0.1:%d" % free_port(), "--v", 4]
        if self.audience:
            argv += ["--audience", self.audience]
        if self.max_streaming_duration_min is not None:
            argv += ["--max-streaming-duration-min", self.max_streaming_duration_min]
        argv += self.extra_args
        self.process = Process(self.binary_name, argv, log_name="%s-%d.log" % (self.binary_name, self.port)).start()
        self.process.wait_ready(lambda: grpc_health(self.port, self.tls.ca_pem, self.tls.dns_names[0]), timeout=60,
                                what="SERVING on its gRPC health service")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def local_address(self) -> str:
        return "127.0.0.1:%d" % self.port


class SnapshotBed:
    """CRDs, RBAC and the snapshot objects of one kube-apiserver, set up as a snapshot controller would."""

    def __init__(self, cluster, sms_versions=("v1beta1",)):
        self.cluster = cluster
        self.sms_versions = tuple(sms_versions)
        self.api = cluster.api_client()
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        self.client = client
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)

    @property
    def sms_version(self) -> str:
        return self.sms_versions[0]

    # ---- setup
    def install(self) -> "SnapshotBed":
        from kubernetes import utils  # pylint: disable=import-outside-toplevel
        docs = list(yaml.safe_load_all((MANIFESTS / "snapshot-crds.yaml").read_text()))
        sms = yaml.safe_load((MANIFESTS / "snapshotmetadataservice-crd.yaml").read_text())
        versions = [v for v in sms["spec"]["versions"] if v["name"] in self.sms_versions]
        if not versions:
            raise ValueError("no SnapshotMetadataService version among %s" % (self.sms_versions,))
        for v in versions:
            v["storage"] = v["name"] == self.sms_versions[0]
        sms["spec"]["versions"] = versions
        docs.append(sms)
        for doc in docs:
            self.ext.create_custom_resource_definition(doc)
        for doc in docs:
            self._wait_established(doc["metadata"]["name"])
        for doc in yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()):
            utils.create_from_dict(self.api, doc)
        return self

    def _wait_established(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = self.ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
            if conds.get("Established") == "True":
                return
            time.sleep(0.1)
        raise PeerError("kube-apiserver", "CRD %s not established after %.0f s" % (name, timeout))

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def service_account(self, namespace: str, name: str, may_get_snapshots: bool = True) -> str:
        """A ServiceAccount; with ``may_get_snapshots`` a Role+RoleBinding letting it get VolumeSnapshots."""
        self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        if may_get_snapshots:
            self.rbac.create_namespaced_role(namespace, {
                "metadata": {"name": "%s-get-snapshots" % name},
                "rules": [{"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"],
                           "verbs": ["get"]}]})
            self.rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": "%s-get-snapshots" % name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "%s-get-snapshots" % name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
        return name

    def operator_kubeconfig(self, username: str, token_namespace: str):
        """A kubeconfig for a least-privilege user of csi_snapshot_diff."""
        path = self.cluster.user_kubeconfig(username)
        self.rbac.create_cluster_role_binding({
            "metadata": {"name": "cbt-test-diff-operator-%s" % username},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "cbt-test-snapshot-diff-operator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}]})
        self.rbac.create_namespaced_role(token_namespace, {
            "metadata": {"name": "cbt-test-token-%s" % username},
            "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]})
        self.rbac.create_namespaced_role_binding(token_namespace, {
            "metadata": {"name": "cbt-test-token-%s" % username},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cbt-test-token-%s" % username},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}]})
        return path

    def create_sms(self, driver: str, address: str, audience: str, ca_pem: bytes, version: str | None = None) -> dict:
        body = {
            "apiVersion": "cbt.storage.k8s.io/%s" % (version or self.sms_version),
            "kind": "SnapshotMetadataService",
            "metadata": {"name": driver},
            "spec": {"address": address, "audience": audience, "caCert": base64.b64encode(ca_pem).decode()},
        }
        return self.custom.create_cluster_custom_object("cbt.storage.k8s.io", version or self.sms_version,
                                                        "snapshotmetadataservices", body)

    def delete_sms(self, driver: str) -> None:
        self.custom.delete_cluster_custom_object("cbt.storage.k8s.io", self.sms_version, "snapshotmetadataservices",
                                                 driver)

    def create_class(self, name: str, driver: str, default: bool = True, parameters=None) -> None:
        annotations = {"snapshot.storage.kubernetes.io/is-default-class": "true"} if default else {}
        self.custom.create_cluster_custom_object("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": name, "annotations": annotations},
            "driver": driver, "deletionPolicy": "Delete", "parameters": parameters or {}})

    def publish_snapshot(self, namespace: str, name: str, driver: str, handle: str, pvc: str = "data",
                         ready: bool = True, class_name: str | None = None, restore_size: int | None = None,
                         content_name: str | None = None) -> dict:
        """Create a VolumeSnapshotContent + VolumeSnapshot pair with status, as the snapshot
        controller does after the driver's CreateSnapshot. Returns ``{"vs": ..., "vsc": ...}``."""
        content_name = content_name or "snapcontent-%s-%s" % (namespace, name)
        vs_spec = {"source": {"persistentVolumeClaimName": pvc}}
        if class_name:
            vs_spec["volumeSnapshotClassName"] = class_name
        vs = self.custom.create_namespaced_custom_object("snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name}, "spec": vs_spec})
        vsc = self.custom.create_cluster_custom_object("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name},
            "spec": {"deletionPolicy": "Delete", "driver": driver, "source": {"volumeHandle": pvc},
                     "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                           "name": name, "namespace": namespace, "uid": vs["metadata"]["uid"]}}})
        vsc_status = {"readyToUse": ready, "snapshotHandle": handle, "creationTime": int(time.time() * 1e9)}
        if restore_size is not None:
            vsc_status["restoreSize"] = restore_size
        vsc = self.custom.patch_cluster_custom_object_status(
            "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", content_name, {"status": vsc_status})
        vs_status = {"readyToUse": ready, "boundVolumeSnapshotContentName": content_name,
                     "creationTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if restore_size is not None:
            vs_status["restoreSize"] = str(restore_size)
        vs = self.custom.patch_namespaced_custom_object_status(
            "snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots", name, {"status": vs_status})
        return {"vs": vs, "vsc": vsc}

    def set_snapshot_ready(self, namespace: str, name: str, ready: bool) -> None:
        self.custom.patch_namespaced_custom_object_status(
            "snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots", name, {"status": {"readyToUse": ready}})

    def delete_snapshot(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots", name)

    def sidecar_workload(self, namespace: str, service: str, port: int, image: str, app: str,
                         target_port: int = 50051) -> None:
        """A Service and a Deployment object (nothing runs them) that say which sidecar image serves the
        address, as a CSI controller Deployment would; also an EndpointSlice naming a pod (its address is
        a documentation IP from TEST-NET-1: object data only, nothing ever connects to it)."""
        self.core.create_namespaced_service(namespace, {
            "metadata": {"name": service},
            "spec": {"selector": {"app": app}, "ports": [{"name": "grpc", "port": port, "targetPort": target_port}]}})
        self.apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": "%s-ctrlplugin" % app},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"containers": [
                                      {"name": "csi-plugin", "image": "example.invalid/csi-test-driver:v0.1.0"},
                                      {"name": "csi-snapshot-metadata", "image": image,
                                       "ports": [{"containerPort": target_port}]}]}}}})
        self.discovery.create_namespaced_endpoint_slice(namespace, {
            "metadata": {"name": "%s-1" % service, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": target_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": "%s-ctrlplugin-0" % app, "namespace": namespace}}]})
