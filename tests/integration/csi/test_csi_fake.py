# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""csi_snapshot_diff against our fake SnapshotMetadata server (real kube-apiserver for discovery and
tokens): sidecar v0.1.0 semantics (base snapshot *name*, which no obtainable real sidecar has), huge
volumes, bad tuples, every status code, the ODF ConfigMap fallback, port-forward plumbing, slow
streams, token re-mint, and the token never showing up in -vvv output."""

import json

import grpc
import pytest

from csi_helpers import as_pairs, module_args, params, run_flow  # pylint: disable=import-error
from fake_sms import FIXED_LENGTH, VARIABLE_LENGTH, Fault, Volume, synthetic_volume  # pylint: disable=import-error

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import CsiDiffError
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_transport import PortForwardProxy
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import read_extent_file

BASE_EXTENTS = [(0, 4096), (1 << 20, 8192)]
DELTA_EXTENTS = [(8192, 4096), (3 << 20, 4096)]


def v010_service(fake_service):
    svc = fake_service(base_field="name")
    handle_a = svc.snapshot("mon", Volume(4 << 20, BASE_EXTENTS))
    svc.snapshot("tue", Volume(4 << 20, BASE_EXTENTS + [(3 << 20, 4096)]))
    svc.server.add_delta(handle_a, "tue", Volume(4 << 20, DELTA_EXTENTS))
    return svc, handle_a


def flow(beta_bed, svc, **kw):
    kw.setdefault("connect_to", svc.server.address)
    kw.setdefault("namespace", svc.namespace)
    return run_flow(beta_bed.cluster, **kw)


def test_v010_name_mode_from_sidecar_version(beta_bed, fake_service):
    svc, _handle = v010_service(fake_service)
    result = flow(beta_bed, svc, snapshot="tue", base_snapshot="mon", sidecar_version="v0.1.0")
    assert as_pairs(result["extents"]) == DELTA_EXTENTS
    assert result["base_snapshot_mode"]["used"] == "name"
    assert "sidecar v0.1.0 (from sidecar_version v0.1.0) takes the base snapshot name" in result["base_snapshot_mode"]["reason"]
    assert svc.server.requests[-1][3] == "mon"  # field 3 carried the VolumeSnapshot name


def test_v010_name_mode_from_the_deployment_image(beta_bed, fake_service):
    svc, _handle = v010_service(fake_service)
    svc.workload("registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.1.0")
    result = flow(beta_bed, svc, snapshot="tue", base_snapshot="mon")
    assert result["base_snapshot_mode"]["used"] == "name"
    assert "csi-snapshot-metadata:v0.1.0 of container csi-snapshot-metadata in Deployment csi-driver/" in \
        result["base_snapshot_mode"]["reason"]
    assert as_pairs(result["extents"]) == DELTA_EXTENTS


def test_v010_detected_by_probing_when_the_image_has_no_tag(beta_bed, fake_service):
    svc, handle = v010_service(fake_service)
    svc.workload("quay.example/odf/ose-csi-external-snapshot-metadata-rhel9@sha256:" + "ab" * 32)
    result = flow(beta_bed, svc, snapshot="tue", base_snapshot="mon")
    assert as_pairs(result["extents"]) == DELTA_EXTENTS
    assert result["base_snapshot_mode"]["used"] == "name"
    assert "switched to the base snapshot name" in result["base_snapshot_mode"]["reason"]
    assert "has no version tag" in result["base_snapshot_mode"]["reason"]
    assert [r[3] for r in svc.server.requests] == [handle, "mon"]


def test_odf_downstream_image_tag_is_not_taken_for_the_sidecar_version(beta_bed, fake_service):
    """ODF 4.20/4.21 run a v0.1.0 sidecar from an image tagged with the product version: auto must not
    read v4.20 as sidecar 4.20.0 (>= 0.2.0, handle without probe) but probe and switch to the name."""
    svc, handle = v010_service(fake_service)
    svc.workload("registry.redhat.io/odf4/ose-csi-external-snapshot-metadata-rhel9:v4.20")
    result = flow(beta_bed, svc, snapshot="tue", base_snapshot="mon")
    assert as_pairs(result["extents"]) == DELTA_EXTENTS
    assert result["base_snapshot_mode"]["used"] == "name"
    reason = result["base_snapshot_mode"]["reason"]
    assert "switched to the base snapshot name" in reason
    assert "is not the upstream csi-snapshot-metadata image, so its tag v4.20 is not the sidecar version" in reason
    assert [r[3] for r in svc.server.requests] == [handle, "mon"]


def test_handle_sent_to_v010_is_explained(beta_bed, fake_service):
    svc, _handle = v010_service(fake_service)
    with pytest.raises(CsiDiffError) as err:
        flow(beta_bed, svc, snapshot="tue", base_snapshot="mon", base_snapshot_mode="handle")
    assert "it is sidecar v0.1.0, which expects the base snapshot *name*" in err.value.msg
    with pytest.raises(CsiDiffError) as err:
        flow(beta_bed, svc, snapshot="tue", base_snapshot_handle="fh-mon", sidecar_version="v0.1.0")
    assert "takes the base snapshot name" in err.value.msg and "set base_snapshot" in err.value.msg


def test_handle_mode_and_base_handle_only(beta_bed, fake_service):
    svc = fake_service()
    handle = svc.snapshot("a", Volume(1 << 20, [(0, 4096)]))
    svc.snapshot("b", Volume(1 << 20, [(0, 4096)]))
    svc.server.add_delta(handle, "b", Volume(1 << 20, [(4096, 4096)], VARIABLE_LENGTH))
    result = flow(beta_bed, svc, snapshot="b", base_snapshot_handle=handle)
    assert as_pairs(result["extents"]) == [(4096, 4096)] and result["base_snapshot"] == {"snapshot_handle": handle}
    assert result["base_snapshot_mode"]["used"] == "handle"


def test_huge_volume_to_file(beta_bed, fake_service, tmp_path):
    count = 1_000_000
    svc = fake_service()
    vol = synthetic_volume(count, size=4096, stride=12288, block_type=FIXED_LENGTH)
    svc.snapshot("huge", vol)
    out = tmp_path / "huge.extents"
    result = flow(beta_bed, svc, snapshot="huge", output_file=str(out), extents_limit=1000)
    assert result["extent_count"] == count and result["total_bytes"] == count * 4096
    assert result["extents_truncated"] is True and len(result["extents"]) == 1000
    assert as_pairs(result["extents"]) == vol.extents[:1000]
    meta, extents = read_extent_file(str(out))
    assert extents == vol.extents and meta["capacity"] == vol.capacity
    coalesced = flow(beta_bed, svc, snapshot="huge", coalesce=True, extents_limit=0)
    assert coalesced["extent_count"] == count and coalesced["extents"] == []  # 12288 stride: nothing touches


def test_variable_length_coalescing(beta_bed, fake_service):
    svc = fake_service()
    extents = [(i * 4096, 4096) for i in range(0, 3000) if i % 7 != 3]
    svc.snapshot("v", Volume(3000 * 4096, extents, VARIABLE_LENGTH))
    result = flow(beta_bed, svc, snapshot="v", coalesce=True, extents_limit=10000)
    expected = []
    for off, size in extents:
        if expected and expected[-1][0] + expected[-1][1] == off:
            expected[-1] = (expected[-1][0], expected[-1][1] + size)
        else:
            expected.append((off, size))
    assert as_pairs(result["extents"]) == expected
    assert result["stream"]["tuples"] == len(extents)


@pytest.mark.parametrize("corruption, text", [
    ("overlap", "starts before"),
    ("zero", "has size_bytes 0"),
    ("beyond", "beyond volume_capacity_bytes"),
    ("type", "block_metadata_type changed"),
    ("capacity", "volume_capacity_bytes changed"),
    ("size", "FIXED_LENGTH tuple"),
])
def test_bad_tuples_fail_and_leave_no_file(beta_bed, fake_service, tmp_path, corruption, text):
    svc = fake_service()
    svc.snapshot("bad", synthetic_volume(2000, stride=8192))

    def corrupt(chunks):
        t, cap, tuples = chunks[3]
        tuples = list(tuples)
        if corruption == "overlap":
            tuples[5] = (tuples[4][0] + 2048, 4096)
        elif corruption == "zero":
            tuples[5] = (tuples[5][0], 0)
        elif corruption == "beyond":
            tuples[-1] = (cap, 4096)
        elif corruption == "type":
            t = VARIABLE_LENGTH
        elif corruption == "capacity":
            cap += 4096
        elif corruption == "size":
            tuples[5] = (tuples[5][0], 8192)
        chunks[3] = (t, cap, tuples)
        return chunks
    svc.server.corrupt = corrupt
    out = tmp_path / "bad.extents"
    with pytest.raises(CsiDiffError) as err:
        flow(beta_bed, svc, snapshot="bad", output_file=str(out))
    assert text in err.value.msg and "invalid block metadata in message 4" in err.value.msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, details, expect", [
    (grpc.StatusCode.INVALID_ARGUMENT, "namespace parameter cannot be empty", "rejected as invalid"),
    (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated user", "did not accept the token"),
    (grpc.StatusCode.PERMISSION_DENIED, "user does not have permissions", "grant it 'get' on volumesnapshots"),
    (grpc.StatusCode.OUT_OF_RANGE, "starting offset 5 is out of range", "outside the volume"),
    (grpc.StatusCode.UNIMPLEMENTED, "not supported", "does not implement this call"),
    (grpc.StatusCode.NOT_FOUND, "cannot find the snapshot", "check that the snapshot still exists"),
    (grpc.StatusCode.FAILED_PRECONDITION, "CBT is off", "do a full copy"),
    (grpc.StatusCode.UNAVAILABLE, "backend down", "gave UNAVAILABLE after 3 attempt(s) without progress"),
    (grpc.StatusCode.INTERNAL, "boom", "gave INTERNAL after 3 attempt(s) without progress"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "too slow", "gave DEADLINE_EXCEEDED after 3 attempt(s) without progress"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", "returned RESOURCE_EXHAUSTED: quota"),
])
def test_every_status_code_gives_its_message(beta_bed, fake_service, code, details, expect):
    svc = fake_service()
    svc.snapshot("s", Volume(1 << 20, [(0, 4096)]))
    svc.server.final_error = (code, details)
    with pytest.raises(CsiDiffError) as err:
        flow(beta_bed, svc, snapshot="s", retries=2)
    assert expect in err.value.msg and details in err.value.msg
    assert err.value.extra["grpc_code"] == code.name
    assert "GetMetadataAllocated for VolumeSnapshot %s/s" % svc.namespace in err.value.msg


def test_odf_configmap_fallback(beta_bed, fake_service):
    svc = fake_service(sms=False)
    svc.snapshot("s", Volume(1 << 20, [(8192, 4096)]))
    with pytest.raises(CsiDiffError) as err:
        flow(beta_bed, svc, snapshot="s")
    assert "no SnapshotMetadataService named %s" % svc.driver in err.value.msg
    try:
        beta_bed.bed.namespace("openshift-storage")
    except Exception:  # pylint: disable=broad-except
        pass  # already there from another test
    beta_bed.bed.core.create_namespaced_config_map("openshift-storage", {
        "metadata": {"name": svc.driver},
        "data": {"address": svc.address, "audience": "fake-audience", "caCert": svc.tls.ca_pem.decode(),
                 "driverName": svc.driver}})
    result = flow(beta_bed, svc, snapshot="s")
    assert result["service"]["source"] == "ConfigMap openshift-storage/%s" % svc.driver
    assert as_pairs(result["extents"]) == [(8192, 4096)]


def test_port_forward_plumbing(beta_bed, fake_service):
    """transport: port_forward resolves the pod behind the Service from its EndpointSlice and carries the
    TLS connection through a local proxy. Without a kubelet the Kubernetes port-forward websocket itself
    cannot run here: the connector is replaced by a TCP connection to the fake server."""
    import socket  # pylint: disable=import-outside-toplevel
    svc = fake_service()
    svc.snapshot("s", Volume(1 << 20, [(0, 8192)]))
    svc.workload("registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.1.0")
    made = []

    def proxy_factory(api_client, namespace, pod, port):
        proxy = PortForwardProxy(api_client, namespace, pod, port, connector=lambda: (
            socket.create_connection(("127.0.0.1", svc.server.port)), None))
        made.append((namespace, pod, port, proxy))
        return proxy
    api = beta_bed.cluster.api_client()
    result = _csi_diff.run(params(snapshot="s", transport="port_forward", namespace=svc.namespace), api,
                           proxy_factory=proxy_factory)
    assert as_pairs(result["extents"]) == [(0, 8192)]
    assert made[0][:3] == ("csi-driver", "%s-ctrlplugin-0" % svc.service, 50051)
    assert result["service"]["port_forward"]["pod"] == "%s-ctrlplugin-0" % svc.service
    assert result["service"]["server_name"] == svc.host and made[0][3].connections >= 1
    # auto: the Service host does not resolve outside a cluster, so auto picks the port-forward too
    result = _csi_diff.run(params(snapshot="s", namespace=svc.namespace), api, proxy_factory=proxy_factory)
    assert result["service"]["transport"] == "port_forward" and "does not resolve" in result["service"]["transport_reason"]


def test_port_forward_without_a_service_is_explained(beta_bed, fake_service):
    svc = fake_service()
    svc.snapshot("s", Volume(1 << 20, [(0, 8192)]))
    with pytest.raises(CsiDiffError) as err:
        run_flow(beta_bed.cluster, snapshot="s", transport="port_forward", namespace=svc.namespace)
    assert "needs the SnapshotMetadataService address to name a readable Service" in err.value.msg


def test_slow_stream_resumes_after_client_deadline(beta_bed, fake_service):
    svc = fake_service()
    vol = synthetic_volume(40, stride=8192)
    svc.snapshot("slow", vol)
    svc.server.delay = 0.25
    result = flow(beta_bed, svc, snapshot="slow", max_results=2, timeout=1, retries=2, extents_limit=100)
    assert as_pairs(result["extents"]) == vol.extents
    codes = {e["code"] for e in result["stream"]["stream_errors"]}
    assert codes == {"DEADLINE_EXCEEDED"} and result["stream"]["resumes"] >= 3


def test_token_reminted_when_rejected_on_resume(beta_bed, fake_service):
    svc = fake_service()
    vol = synthetic_volume(500, stride=8192)
    svc.snapshot("t", vol)
    svc.server.faults = [Fault(2, grpc.StatusCode.UNAVAILABLE, "sidecar restarted")]
    svc.server.token_streams = 1  # a token is good for one stream only ("expired")
    hidden = []
    result = run_flow(beta_bed.cluster, snapshot="t", connect_to=svc.server.address, max_results=10,
                      extents_limit=1000, tokens=hidden, namespace=svc.namespace)
    assert as_pairs(result["extents"]) == vol.extents
    assert result["stream"]["tokens_minted"] == 2 and len(set(hidden)) == 2
    assert [e["code"] for e in result["stream"]["stream_errors"]] == ["UNAVAILABLE", "UNAUTHENTICATED"]
    assert svc.server.tokens == [hidden[0], hidden[0], hidden[1]]


def test_token_never_in_verbose_output(beta_bed, fake_service, run_module, tmp_path):
    svc = fake_service()
    svc.snapshot("s", Volume(1 << 20, [(0, 4096)]))
    ok, run = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot="s", namespace=svc.namespace,
                                                          connect_to=svc.server.address), verbosity=3)
    assert ok.get("failed") is not True, run
    svc.server.echo_token_in_errors = True  # the server even puts the token into its error message
    bad, run2 = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot="s", namespace=svc.namespace,
                                                            connect_to=svc.server.address), verbosity=3)
    assert bad.get("failed") is True and "is not welcome here" in bad["msg"]
    assert len(svc.server.tokens) == 2 and all(len(t) > 100 for t in svc.server.tokens)
    for token in svc.server.tokens:
        for text in (run.stdout, run.stderr, run2.stdout, run2.stderr, json.dumps(ok), json.dumps(bad)):
            assert token not in text
            assert token[-40:] not in text
    assert "********" in bad["msg"]  # masked by no_log_values
    assert "<ESTABLISH LOCAL CONNECTION" in run.stdout + run.stderr or "EXEC" in run.stdout + run.stderr
