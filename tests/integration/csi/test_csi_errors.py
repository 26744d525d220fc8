# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every failure of csi_snapshot_diff against the real chain says what is wrong and what to do:
wrong audience (UNAUTHENTICATED), missing RBAC (PERMISSION_DENIED), bad CA and wrong certificate
name (TLS), OUT_OF_RANGE, INVALID_ARGUMENT from the sidecar and from the driver, UNIMPLEMENTED,
NOT_FOUND and FAILED_PRECONDITION on the base (full sync), UNAVAILABLE after bounded retries,
INTERNAL from the sidecar's authentication, unusable snapshots and Kubernetes permission problems."""

import base64
import time

import pytest
import yaml

from csi_helpers import AUDIENCE, NAMESPACE, SA_NO_RBAC, module_args, params, run_flow  # pylint: disable=import-error
from testbed.csi import ServingCert

from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import CsiDiffError


def one_snapshot(chain, size=1 << 20):
    vol = chain.volume(size)
    vol.fill(4096, 8192, 9)
    return vol, vol.snapshot()


def fails(cluster, **kw):
    with pytest.raises(CsiDiffError) as err:
        run_flow(cluster, **kw)
    return err.value


@pytest.fixture
def fixed(beta_bed):
    chain = beta_bed.chains["fixed"]
    chain.driver.clear_faults()
    yield chain
    chain.driver.clear_faults()


def test_wrong_audience_is_unauthenticated(beta_bed, fixed, run_module):
    _vol, snap = one_snapshot(fixed)
    result, run = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot=snap, sms_audience="wrong",
                                                              connect_to=fixed.sidecar.local_address))
    assert result.get("failed") is True, run
    assert result["grpc_code"] == "UNAUTHENTICATED"
    assert "did not accept the token of ServiceAccount apps/backup-client for audience 'wrong'" in result["msg"]
    assert "sms_audience" in result["msg"] and "unauthenticated user" in result["msg"]
    assert "Traceback" not in run.stdout + run.stderr


def test_missing_rbac_is_permission_denied(beta_bed, fixed):
    _vol, snap = one_snapshot(fixed)
    err = fails(beta_bed.cluster, snapshot=snap, service_account=SA_NO_RBAC, connect_to=fixed.sidecar.local_address)
    assert err.extra["grpc_code"] == "PERMISSION_DENIED"
    assert "denied ServiceAccount apps/%s" % SA_NO_RBAC in err.msg
    assert "grant it 'get' on volumesnapshots.snapshot.storage.k8s.io in namespace apps" in err.msg


def test_bad_ca_and_wrong_certificate_name_fail_tls(beta_bed, fixed):
    _vol, snap = one_snapshot(fixed)
    other = ServingCert(["elsewhere.invalid"])
    err = fails(beta_bed.cluster, snapshot=snap, sms_ca_cert=other.ca_pem.decode(),
                connect_to=fixed.sidecar.local_address, retries=1)
    assert "TLS verification of the SnapshotMetadata service" in err.msg and "spec.caCert" in err.msg
    err = fails(beta_bed.cluster, snapshot=snap, sms_address="not-the-cert-name.csi-driver.svc:6443",
                connect_to=fixed.sidecar.local_address, retries=1)
    assert "TLS verification" in err.msg and "must name 'not-the-cert-name.csi-driver.svc'" in err.msg


def test_starting_offset_beyond_the_volume_is_out_of_range(beta_bed, fixed):
    vol, snap = one_snapshot(fixed)
    err = fails(beta_bed.cluster, snapshot=snap, starting_offset=vol.size, connect_to=fixed.sidecar.local_address)
    assert err.extra["grpc_code"] == "OUT_OF_RANGE"
    assert "starting_offset %d is outside the volume" % vol.size in err.msg
    assert "out of range for volume size %d" % vol.size in err.msg


def test_snapshot_of_another_driver_is_rejected_by_the_sidecar(beta_bed, fixed):
    """The target belongs to the 'variable' driver but we connect to the 'fixed' driver's sidecar."""
    _vol, snap = one_snapshot(beta_bed.chains["variable"])
    err = fails(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address)
    assert err.extra["grpc_code"] == "INVALID_ARGUMENT"
    assert "does not belong to the CSI driver 'fixed.csi-test.cbt.toolkit.io'" in err.msg
    assert "taken by another CSI driver" in err.msg


def test_base_of_another_volume_is_rejected(beta_bed, fixed):
    vol_a, snap_a = one_snapshot(fixed)
    _vol_b, snap_b = one_snapshot(fixed)
    # by name: the module sees two different PVCs before connecting
    err = fails(beta_bed.cluster, snapshot=snap_b, base_snapshot=snap_a, connect_to=fixed.sidecar.local_address)
    assert "a delta needs two snapshots of the same volume" in err.msg and vol_a.pvc in err.msg
    # by handle: only the driver can tell, and the sidecar passes its INVALID_ARGUMENT through
    err = fails(beta_bed.cluster, snapshot=snap_b, base_snapshot_handle="h-%s" % snap_a,
                connect_to=fixed.sidecar.local_address)
    assert err.extra["grpc_code"] == "INVALID_ARGUMENT" and "same volume" in err.msg


def test_base_of_another_driver_is_rejected(beta_bed, fixed):
    _vol, target = one_snapshot(fixed)
    _other, base = one_snapshot(beta_bed.chains["variable"])
    err = fails(beta_bed.cluster, snapshot=target, base_snapshot=base, connect_to=fixed.sidecar.local_address)
    assert "belongs to CSI driver variable.csi-test.cbt.toolkit.io but the target" in err.msg


def test_unimplemented_passes_through(beta_bed, fixed):
    _vol, snap = one_snapshot(fixed)
    fixed.driver.fault("UNIMPLEMENTED", message="snapshot diff by ID feature is not supported")
    err = fails(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address)
    assert err.extra["grpc_code"] == "UNIMPLEMENTED"
    assert "does not implement this call" in err.msg and "SNAPSHOT_METADATA_SERVICE" in err.msg


@pytest.mark.parametrize("policy", ["report", "allocated", "fail"])
def test_base_deleted_on_the_storage_needs_a_full_sync(beta_bed, fixed, policy):
    vol = fixed.volume(1 << 20)
    vol.fill(0, 4096, 1)
    base = vol.snapshot()
    vol.fill(65536, 4096, 2)
    target = vol.snapshot()
    fixed.driver.delete_snapshot("h-%s" % base)  # the VolumeSnapshot is still there
    kw = dict(snapshot=target, base_snapshot=base, connect_to=fixed.sidecar.local_address, on_base_unusable=policy)
    if policy == "fail":
        err = fails(beta_bed.cluster, **kw)
        assert err.extra["full_sync_required"] is True and "NOT_FOUND" in err.extra["full_sync_reason"]
        assert "do a full copy" in err.msg
        return
    result = run_flow(beta_bed.cluster, **kw)
    assert result["full_sync_required"] is True
    assert "cannot find the base snapshot" in result["full_sync_reason"]
    if policy == "report":
        assert result["call"] == "none" and result["extents"] == [] and result["output_file"] is None
    else:
        assert result["call"] == "allocated"
        assert [(e["offset"], e["length"]) for e in result["extents"]] == vol.expected(target)


def test_failed_precondition_on_delta_needs_a_full_sync(beta_bed, fixed):
    vol = fixed.volume(1 << 20)
    vol.fill(0, 4096, 1)
    base = vol.snapshot()
    target = vol.snapshot()
    fixed.driver.fault("FAILED_PRECONDITION", message="changed block tracking is not enabled", rpc="GetMetadataDelta")
    result = run_flow(beta_bed.cluster, snapshot=target, base_snapshot=base, connect_to=fixed.sidecar.local_address)
    assert result["full_sync_required"] is True and "FAILED_PRECONDITION" in result["full_sync_reason"]


def test_unavailable_retries_are_bounded(beta_bed, fixed):
    _vol, snap = one_snapshot(fixed)
    fixed.driver.clear_calls()
    fixed.driver.fault("UNAVAILABLE", message="storage backend down", times=50)
    err = fails(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address, retries=2)
    assert "gave UNAVAILABLE after 3 attempt(s) without progress: storage backend down" in err.msg
    assert len(fixed.driver.calls()) == 3


def test_sidecar_without_its_sms_cr_is_internal(beta_bed, fixed):
    """The sidecar (no --audience) reads its SnapshotMetadataService to authenticate: without it,
    INTERNAL 'failed to authenticate user'. The module still runs thanks to the sms_* overrides."""
    _vol, snap = one_snapshot(fixed)
    beta_bed.bed.delete_sms(fixed.driver.name)
    try:
        err = fails(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address,
                    sms_address="csi-snapshot-metadata.csi-driver.svc:6443", sms_audience=AUDIENCE,
                    sms_ca_cert=str(beta_bed.tls.ca_file))
        assert err.extra["grpc_code"] == "INTERNAL"
        assert "failed to authenticate user" in err.msg and "SnapshotMetadataService CR" in err.msg
        err = fails(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address)
        assert "no SnapshotMetadataService named %s" % fixed.driver.name in err.msg
        assert "sms_address, sms_ca_cert and sms_audience" in err.msg
    finally:
        beta_bed.bed.create_sms(fixed.driver.name, "csi-snapshot-metadata.csi-driver.svc:6443", AUDIENCE,
                                beta_bed.tls.ca_pem)


def test_unusable_snapshots(beta_bed, fixed):
    vol = fixed.volume(1 << 20)
    vol.fill(0, 4096, 1)
    ready = vol.snapshot()
    pending = vol.snapshot(ready=False)
    err = fails(beta_bed.cluster, snapshot=pending, connect_to=fixed.sidecar.local_address)
    assert "VolumeSnapshot apps/%s (target) is not ready to use" % pending in err.msg
    err = fails(beta_bed.cluster, snapshot="does-not-exist", connect_to=fixed.sidecar.local_address)
    assert "VolumeSnapshot apps/does-not-exist (target) does not exist" in err.msg
    result = run_flow(beta_bed.cluster, snapshot=ready, base_snapshot="gone-yesterday",
                      connect_to=fixed.sidecar.local_address)
    assert result["full_sync_required"] is True and result["call"] == "none"
    assert "VolumeSnapshot apps/gone-yesterday (base) does not exist" in result["full_sync_reason"]
    result = run_flow(beta_bed.cluster, snapshot=ready, base_snapshot=pending, connect_to=fixed.sidecar.local_address)
    assert result["full_sync_required"] is True and "(base) is not ready" in result["full_sync_reason"]


def test_kubernetes_user_without_token_permission(beta_bed, fixed, run_module):
    _vol, snap = one_snapshot(fixed)
    kubeconfig = beta_bed.cluster.user_kubeconfig("nobody-special")
    args = module_args(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address)
    args["kubeconfig"] = str(kubeconfig)
    result, run = run_module("csi_snapshot_diff", args)
    assert result.get("failed") is True, run
    assert "reading VolumeSnapshot apps/%s (target) failed: HTTP 403" % snap in result["msg"]
    assert "needs 'get' on volumesnapshots.snapshot.storage.k8s.io in namespace apps" in result["msg"]


def test_operator_without_serviceaccounts_token(beta_bed, fixed):
    _vol, snap = one_snapshot(fixed)
    beta_bed.bed.namespace("elsewhere")
    kubeconfig = beta_bed.bed.operator_kubeconfig("token-elsewhere", "elsewhere")  # token right in another ns
    from kubernetes import config  # pylint: disable=import-outside-toplevel
    api = config.new_client_from_config(config_file=str(kubeconfig))
    from csi_helpers import params  # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff  # pylint: disable=import-outside-toplevel
    with pytest.raises(CsiDiffError) as err:
        _csi_diff.run(params(snapshot=snap, connect_to=fixed.sidecar.local_address), api)
    assert "requesting a token for ServiceAccount apps/backup-client" in err.value.msg
    assert "needs 'create' on serviceaccounts/token in namespace apps" in err.value.msg


def test_untrusted_api_server_certificate_fails_cleanly(beta_bed, fixed, run_module, tmp_path):
    """A kubeconfig whose CA does not sign the API server's certificate: the kubernetes client raises
    urllib3's MaxRetryError(SSLError); the module fails with the server, the cause and what to check."""
    _vol, snap = one_snapshot(fixed)
    doc = yaml.safe_load(beta_bed.cluster.kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        ServingCert(["elsewhere.invalid"]).ca_pem).decode()
    kubeconfig = tmp_path / "wrong-ca.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(doc))
    args = module_args(beta_bed.cluster, snapshot=snap, connect_to=fixed.sidecar.local_address)
    args["kubeconfig"] = str(kubeconfig)
    result, run = run_module("csi_snapshot_diff", args)
    assert result.get("failed") is True, run
    assert "MODULE FAILURE" not in result["msg"] and "Traceback" not in run.stdout + run.stderr
    assert result["msg"].startswith("the TLS certificate of the Kubernetes API server %s failed verification"
                                    % beta_bed.cluster.host), result["msg"]
    assert "CERTIFICATE_VERIFY_FAILED" in result["msg"] and "check the CA" in result["msg"]
    assert "kubeconfig context" in result["msg"]


def test_refused_port_forward_fails_at_once_naming_the_permission(beta_bed, fixed):
    """transport: port_forward with a Kubernetes user that may read the Service and its EndpointSlices
    but not create pods/portforward: the API server answers the websocket with 403; the module fails on
    the first broken stream with that reason instead of retrying and blaming the sidecar."""
    _vol, snap = one_snapshot(fixed)
    user = "pf-denied"
    kubeconfig = beta_bed.bed.operator_kubeconfig(user, NAMESPACE)
    beta_bed.bed.rbac.create_namespaced_role("csi-driver", {
        "metadata": {"name": "cbt-test-find-pod-%s" % user},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
                  {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]})
    beta_bed.bed.rbac.create_namespaced_role_binding("csi-driver", {
        "metadata": {"name": "cbt-test-find-pod-%s" % user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cbt-test-find-pod-%s" % user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff  # pylint: disable=import-outside-toplevel
    sleeps = []
    started = time.monotonic()
    with pytest.raises(CsiDiffError) as err:
        _csi_diff.run(params(snapshot=snap, transport="port_forward", retry_delay=1.0),
                      beta_bed.cluster.api_client(kubeconfig), sleep=sleeps.append)
    msg = err.value.msg
    assert msg.startswith("GetMetadataAllocated for VolumeSnapshot apps/%s could not reach the SnapshotMetadata service "
                          "at csi-snapshot-metadata.csi-driver.svc:6443: port-forward to pod csi-driver/"
                          "csi-test-driver-ctrlplugin-0 port 50051 failed: Handshake status 403 Forbidden" % snap), msg
    # the kubernetes client's websocket is a GET: RBAC asks for 'get' on pods/portforward
    assert 'User "%s" cannot get resource "pods/portforward"' % user in msg
    assert "the Kubernetes user needs 'get' on pods/portforward in namespace csi-driver (grant 'get' and 'create')" in msg
    assert "TLS verification" not in msg and "sidecar and the CSI driver are running" not in msg
    assert sleeps == [] and time.monotonic() - started < 20
    # the admin may port-forward, but the pod named by the EndpointSlice does not exist here
    with pytest.raises(CsiDiffError) as err:
        run_flow(beta_bed.cluster, snapshot=snap, transport="port_forward")
    assert "port-forward to pod csi-driver/csi-test-driver-ctrlplugin-0 port 50051 failed: Handshake status 404" \
        in err.value.msg and "not found" in err.value.msg


def test_base_taken_after_the_target_is_refused(beta_bed, fixed):
    vol = fixed.volume(1 << 20)
    vol.fill(0, 4096, 1)
    earlier = vol.snapshot()
    vol.fill(8192, 4096, 2)
    later = vol.snapshot()
    err = fails(beta_bed.cluster, snapshot=earlier, base_snapshot=later, connect_to=fixed.sidecar.local_address)
    assert "base VolumeSnapshot apps/%s was created at " % later in err.msg
    assert ", after the target VolumeSnapshot apps/%s (created at " % earlier in err.msg
    assert "swap base_snapshot and snapshot" in err.msg
    fixed.driver.clear_calls()
    result = run_flow(beta_bed.cluster, snapshot=later, base_snapshot=earlier, connect_to=fixed.sidecar.local_address)
    assert [(e["offset"], e["length"]) for e in result["extents"]] == vol.expected(later, earlier)
    assert result["base_snapshot"]["creation_time"] and result["snapshot"]["source_volume_handle"] == vol.pvc


def test_pvc_recreated_under_the_same_name_is_refused(beta_bed, fixed):
    """Two volumes whose snapshots both name PVC 'data': the VolumeSnapshotContents' source volume
    handles tell them apart."""
    old = fixed.volume(1 << 20, pvc="pvc-0f1e-old")  # the bed uses the PVC name as the volume handle
    old.fill(0, 4096, 1)
    base = old.snapshot()
    new = fixed.volume(1 << 20, pvc="pvc-7a2b-new")
    new.fill(0, 4096, 2)
    target = new.snapshot()
    for name in (base, target):
        beta_bed.bed.custom.patch_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", NAMESPACE, "volumesnapshots", name,
            {"spec": {"source": {"persistentVolumeClaimName": "data"}}})
    err = fails(beta_bed.cluster, snapshot=target, base_snapshot=base, connect_to=fixed.sidecar.local_address)
    assert "base VolumeSnapshot apps/%s and the target %s are both of PVC data, but of different volumes: volume " \
           "handle pvc-0f1e-old" % (base, target) in err.msg
    assert "deleted and recreated under the same name" in err.msg
