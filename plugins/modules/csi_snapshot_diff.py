#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: csi_snapshot_diff
short_description: List the allocated or changed blocks of CSI volume snapshots (Kubernetes SnapshotMetadata API)
version_added: 0.1.0
description:
  - Asks the Kubernetes CSI SnapshotMetadata service (KEP-3314, the C(external-snapshot-metadata) sidecar of the CSI
    driver) which blocks are allocated in a VolumeSnapshot (C(GetMetadataAllocated)), or which blocks changed between
    a base and a target VolumeSnapshot of the same volume (C(GetMetadataDelta)).
  - Finds the service the way the reference Go client does - VolumeSnapshot, its bound VolumeSnapshotContent, the CSI
    driver, then the SnapshotMetadataService named after the driver (C(cbt.storage.k8s.io/v1beta1), then
    C(v1alpha1)) - and falls back to the ConfigMap named after the driver that OpenShift Data Foundation 4.23 and
    later publish in O(sms_config_map_namespace).
  - Authenticates with a short-lived token of a ServiceAccount (TokenRequest API) for the service's audience. The
    token is never logged or returned, and a new one is minted when a long listing outlives it.
  - Connects with TLS verified against the service's CA; there is no insecure mode. From outside the cluster it
    reaches the sidecar through a port-forward made with the Kubernetes API and still verifies the certificate
    against the service host name.
  - Pages through the stream and resumes a broken stream (C(UNAVAILABLE), C(DEADLINE_EXCEEDED), C(INTERNAL), the
    sidecar's stream time limit) from the end of the last block received, with bounded retries. Every block is checked
    (increasing, not overlapping, inside the volume, constant block type, capacity and fixed length).
  - Writes all extents to O(output_file) in the collection's extent format, read by M(cbt.toolkit.block_sync), and
    returns a summary with the first O(extents_limit) extents.
  - Read-only; it never reports a change.
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
options:
  namespace:
    description:
      - Namespace of the VolumeSnapshots.
    type: str
    required: true
  snapshot:
    description:
      - Name of the (target) VolumeSnapshot. Without a base, its allocated blocks are listed.
    type: str
    required: true
    aliases: [target_snapshot]
  base_snapshot:
    description:
      - Name of an earlier VolumeSnapshot of the same volume. The changed blocks between it and O(snapshot) are listed.
      - The module fails when the two are of different volumes (the source volume handles of their
        VolumeSnapshotContents differ, or without them the PVC names), or when the base was created after
        O(snapshot) (C(status.creationTime)).
      - When the base is missing or unusable (not ready, no handle), see O(on_base_unusable).
      - Mutually exclusive with O(base_snapshot_handle).
    type: str
  base_snapshot_handle:
    description:
      - CSI snapshot handle of the base snapshot (C(status.snapshotHandle) of its VolumeSnapshotContent), for a base
        whose VolumeSnapshot was deleted while the storage snapshot was retained.
      - Only usable with sidecars v0.2.0 and later (O(base_snapshot_mode=handle) or V(auto)).
    type: str
  base_snapshot_mode:
    description:
      - What to send as the base of a delta. Sidecar v0.1.0 (shipped with ODF 4.20 and 4.21) takes the base
        VolumeSnapshot B(name); v0.2.0 and later take the base B(handle). Both travel in the same protobuf field, so a
        wrong choice fails.
      - V(auto) uses O(sidecar_version) if given, else the image tag of the C(csi-snapshot-metadata) container in the
        Deployment (or pods) behind the service address; if the version cannot be found it sends the handle and
        switches to the name when the sidecar answers like v0.1.0. The decision and its reason are returned in
        RV(base_snapshot_mode).
      - Only the tag of the upstream image (repository name exactly C(csi-snapshot-metadata)) counts as the sidecar
        version. A downstream build such as ODF's C(ose-csi-external-snapshot-metadata-rhel9:v4.20) is tagged with
        the product version, so the sidecar version is then unknown; set O(sidecar_version) to skip the probe.
    type: str
    choices: [auto, name, handle]
    default: auto
  sidecar_version:
    description:
      - Version of the C(csi-snapshot-metadata) sidecar, for example V(v0.1.0), when O(base_snapshot_mode=auto) cannot
        read it from the cluster.
    type: str
  driver:
    description:
      - Expected CSI driver name. The module fails when the snapshot belongs to another driver.
    type: str
  service_account:
    description:
      - ServiceAccount whose token is sent to the SnapshotMetadata service. It needs C(get) on
        C(volumesnapshots.snapshot.storage.k8s.io) in O(namespace).
      - The Kubernetes user running the module needs C(create) on C(serviceaccounts/token) for it.
      - Required unless the Kubernetes credentials are themselves a ServiceAccount's (for example in a pod), which is
        then used.
    type: str
  service_account_namespace:
    description:
      - Namespace of O(service_account). Defaults to O(namespace).
    type: str
  token_expiration:
    description:
      - Lifetime in seconds of the requested token (at least 600). A new token is minted before a resumed stream when
        the current one is close to expiry.
    type: int
    default: 3600
  sms_address:
    description:
      - Override the SnapshotMetadataService C(spec.address) (C(host:port)).
    type: str
  sms_ca_cert:
    description:
      - Override the SnapshotMetadataService C(spec.caCert) with a CA bundle, as PEM text or the path of a PEM file.
    type: str
  sms_audience:
    description:
      - Override the SnapshotMetadataService C(spec.audience).
    type: str
  sms_config_map_namespace:
    description:
      - Namespace of the ConfigMap named after the driver with C(address), C(audience) and C(caCert), used when no
        SnapshotMetadataService exists (ODF 4.23 and later publish it in C(openshift-storage)).
    type: str
    default: openshift-storage
  transport:
    description:
      - How to reach the sidecar. V(direct) connects to the service address (inside the cluster). V(port_forward)
        opens a local port carried to a ready pod behind the service through the Kubernetes API (outside the
        cluster); the Kubernetes user then needs C(get) on C(services), C(list) on
        C(endpointslices.discovery.k8s.io) and C(get) and C(create) on C(pods/portforward) (the port-forward is
        a websocket C(GET), which some clusters also authorize as C(create)).
      - When the port-forward itself is refused (for example HTTP 403 from the API server), the module fails at
        once with that reason and the missing permission instead of retrying.
      - The port-forward cannot carry O(impersonate_user) or O(impersonate_groups) (the Kubernetes Python client
        sends no impersonation headers on it), so with impersonation the module refuses to port-forward; run
        C(kubectl port-forward --as ...) yourself and pass O(connect_to), or use V(direct) inside the cluster.
      - V(auto) connects directly inside a pod or when the service host name resolves, and port-forwards otherwise.
      - The certificate is verified against the host of the service address in every case.
    type: str
    choices: [auto, direct, port_forward]
    default: auto
  connect_to:
    description:
      - Connect to this C(host:port) instead of the service address, for example a C(kubectl port-forward) you run
        yourself or a load balancer in front of the sidecar. The certificate is still verified against the host of
        the service address.
      - Mutually exclusive with O(transport=port_forward).
    type: str
  starting_offset:
    description:
      - Byte offset to start the listing from (V(0) for the whole volume). Above V(0) the extent file records
        C(starting_offset=N) - it covers only the blocks from that offset on.
      - When a stream that starts above offset 0 (this option, or a stream resumed after a cut) ends without a single
        block although the volume goes on, the listing is read again from offset 0 and the blocks before the offset
        are dropped, once per offset. ceph-csi builds without its fix of March 2026 return no blocks at all from a
        non-zero offset, and that would look like the end of the list. The task fails when even the listing from
        offset 0 returns no blocks. RV(stream.rereads_from_zero) counts these reads.
    type: int
    default: 0
  max_results:
    description:
      - Maximum block tuples per streamed message; V(0) lets the driver decide (ceph-csi caps it at 128).
    type: int
    default: 0
  timeout:
    description:
      - Deadline in seconds of one stream; a stream that runs out of time is resumed where it stopped. V(0) means no
        deadline (the sidecar still ends streams after its own limit, 10 minutes by default).
    type: int
    default: 600
  retries:
    description:
      - How many times in a row a broken stream is retried without receiving anything new. Any progress resets the
        count.
    type: int
    default: 5
  retry_delay:
    description:
      - Seconds before the first retry without progress; doubled for each further one (at most 30).
    type: float
    default: 1.0
  output_file:
    description:
      - File on the managed host (the host the task runs on, not necessarily the controller) to write all extents
        to, in the collection's extent format (see M(cbt.toolkit.block_sync)). Written atomically; never left
        half-written.
      - Its metadata says what the list covers - C(coverage=changed) for a delta (C(GetMetadataDelta)),
        C(coverage=allocated) for the allocated blocks of a snapshot (C(GetMetadataAllocated), also when
        O(on_base_unusable=allocated) replaced a delta), and C(starting_offset=N) when the listing started at a
        non-zero O(starting_offset). An C(allocated) list is a full-copy list - M(cbt.toolkit.block_sync) makes
        everything it does not list zero on the target.
      - Not written in check mode.
    type: path
  coalesce:
    description:
      - Merge extents that touch into one.
    type: bool
    default: false
  extents_limit:
    description:
      - How many extents to return in RV(extents); the rest is only in O(output_file).
    type: int
    default: 1000
  on_base_unusable:
    description:
      - What to do when the base snapshot cannot serve a delta (missing, not ready, no handle, or the driver answers
        C(NOT_FOUND) or C(FAILED_PRECONDITION) for it).
      - V(report) returns RV(full_sync_required=true) with RV(full_sync_reason) and no extents.
      - V(allocated) lists the allocated blocks of O(snapshot) instead, with RV(full_sync_required=true). The
        O(output_file) is then a full-copy list (C(coverage=allocated)), not a delta - applied with
        M(cbt.toolkit.block_sync), the blocks it does not list are made zero on the target.
      - V(fail) fails the task.
    type: str
    choices: [report, allocated, fail]
    default: report
extends_documentation_fragment:
  - cbt.toolkit.k8s_auth
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Read-only; in check mode the query runs but O(output_file) is not written.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - kubernetes >= 24.2.0
  - grpcio >= 1.60.0
notes:
  - The gRPC messages are encoded by the collection itself, so neither protobuf nor generated stubs are needed.
  - The Kubernetes user needs C(get) on C(volumesnapshots) and C(volumesnapshotcontents)
    (C(snapshot.storage.k8s.io)), C(get) on C(snapshotmetadataservices.cbt.storage.k8s.io) and C(create) on
    C(serviceaccounts/token).
seealso:
  - module: cbt.toolkit.odf_cbt_enable
  - module: cbt.toolkit.block_sync
  - name: KEP-3314 CSI Changed Block Tracking
    description: The Kubernetes enhancement that defines the SnapshotMetadata API.
    link: https://github.com/kubernetes/enhancements/tree/master/keps/sig-storage/3314-csi-changed-block-tracking
"""

EXAMPLES = r"""
- name: Blocks that changed between two snapshots of a PVC, from outside the cluster
  cbt.toolkit.csi_snapshot_diff:
    kubeconfig: ~/.kube/config
    namespace: apps
    base_snapshot: db-data-monday
    snapshot: db-data-tuesday
    service_account: backup-client
    output_file: /var/lib/backup/db-data-tuesday.extents
  register: diff

- name: Copy only those blocks
  cbt.toolkit.block_sync:
    src: /dev/rbd/replicapool/db-data-tuesday
    dest: /var/lib/backup/db-data.img
    extent_file: "{{ diff.output_file }}"
  when: not diff.full_sync_required

- name: Allocated blocks of the first snapshot (full copy)
  cbt.toolkit.csi_snapshot_diff:
    namespace: apps
    snapshot: db-data-monday
    service_account: backup-client
    coalesce: true
    output_file: /var/lib/backup/db-data-monday.extents

- name: Delta against ODF 4.20 (sidecar v0.1.0 takes the base snapshot name), allocated blocks if the base is gone
  cbt.toolkit.csi_snapshot_diff:
    namespace: apps
    base_snapshot: db-data-monday
    snapshot: db-data-tuesday
    service_account: backup-client
    sidecar_version: v0.1.0
    on_base_unusable: allocated
    output_file: /var/lib/backup/db-data-tuesday.extents
  register: diff

# With full_sync_required the file is a full-copy list (coverage=allocated): block_sync copies the listed
# blocks and makes the rest of the target zero, so no data of the old base stays behind.
- name: Apply the delta, or the full copy
  cbt.toolkit.block_sync:
    src: /dev/rbd/replicapool/db-data-tuesday
    dest: /var/lib/backup/db-data.img
    extent_file: "{{ diff.output_file }}"

- name: Inside the cluster, with the address, CA and audience given explicitly
  cbt.toolkit.csi_snapshot_diff:
    namespace: apps
    base_snapshot_handle: "0001-0011-openshift-storage-0000000000000001-5f2e"
    snapshot: db-data-tuesday
    transport: direct
    sms_address: openshift-storage-rbd-snapshot-metadata.openshift-storage.svc:6443
    sms_audience: openshift-storage.rbd.csi.ceph.com
    sms_ca_cert: /etc/pki/sms-ca.crt
"""

RETURN = r"""
call:
  description: What was asked - V(allocated), V(delta), or V(none) when the base was unusable and nothing was listed.
  returned: success
  type: str
  sample: delta
namespace:
  description: Namespace of the snapshots.
  returned: success
  type: str
driver:
  description: CSI driver of the snapshots.
  returned: success
  type: str
  sample: hostpath.csi.k8s.io
snapshot:
  description: The target VolumeSnapshot and its content.
  returned: success
  type: dict
  contains:
    name:
      description: VolumeSnapshot name.
      type: str
    volume_snapshot_content:
      description: Bound VolumeSnapshotContent.
      type: str
    snapshot_handle:
      description: CSI snapshot handle.
      type: str
    persistent_volume_claim:
      description: Source PVC, when known.
      type: str
    creation_time:
      description: C(status.creationTime) of the VolumeSnapshot, when set.
      type: str
    source_volume_handle:
      description: CSI handle of the source volume (C(spec.source.volumeHandle) of the VolumeSnapshotContent), when known.
      type: str
base_snapshot:
  description: The base snapshot (same keys as RV(snapshot)), or only its C(snapshot_handle) when given as a handle.
  returned: success and a base was given
  type: dict
base_snapshot_mode:
  description: How the base was sent.
  returned: success and RV(call=delta)
  type: dict
  contains:
    requested:
      description: O(base_snapshot_mode) as given.
      type: str
    used:
      description: V(name) or V(handle).
      type: str
    reason:
      description: Why, for example the sidecar image and version found.
      type: str
      sample: "sidecar v1.1.0 (from image registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.1.0 ...) takes the base snapshot handle"
service:
  description: The SnapshotMetadata service used.
  returned: success
  type: dict
  contains:
    source:
      description: Where it was found (SnapshotMetadataService and API version, ConfigMap, or options).
      type: str
    address:
      description: Service address.
      type: str
    audience:
      description: Token audience.
      type: str
    server_name:
      description: Name the TLS certificate was verified against.
      type: str
    transport:
      description: V(direct) or V(port_forward).
      type: str
    transport_reason:
      description: Why that transport.
      type: str
    connected_to:
      description: The C(host:port) the gRPC channel connected to.
      type: str
    port_forward:
      description:
        - C(namespace), C(pod), C(port) and C(local_address) of the port-forward.
        - When the pod was gone (HTTP 404) during the listing and another pod behind the Service was picked,
          C(pod) and C(port) are the last ones used and C(pods_repicked) lists the pods picked, in order.
      type: dict
      returned: when RV(service.transport=port_forward)
block_metadata_type:
  description: V(FIXED_LENGTH) or V(VARIABLE_LENGTH), as the driver reported.
  returned: when blocks were listed
  type: str
volume_capacity_bytes:
  description: Size of the volume in bytes, as the driver reported.
  returned: when blocks were listed
  type: int
extent_count:
  description: Number of extents (after coalescing).
  returned: success
  type: int
total_bytes:
  description: Bytes covered by the extents - the changed bytes of a delta, the allocated bytes otherwise.
  returned: success
  type: int
extents:
  description: The first O(extents_limit) extents.
  returned: success
  type: list
  elements: dict
  contains:
    offset:
      description: Byte offset.
      type: int
    length:
      description: Length in bytes.
      type: int
  sample: [{"offset": 0, "length": 4194304}]
extents_truncated:
  description: Whether more extents exist than RV(extents) holds.
  returned: success
  type: bool
output_file:
  description: Path of the extent file written, or V(null) (no O(output_file), check mode, or nothing listed).
  returned: success
  type: str
full_sync_required:
  description: Whether the base snapshot could not serve a delta, so a full copy is needed.
  returned: success
  type: bool
full_sync_reason:
  description: Why a full copy is needed.
  returned: success
  type: str
  sample: "VolumeSnapshot apps/db-data-monday (base) does not exist"
stream:
  description: How the stream went.
  returned: when blocks were listed
  type: dict
  contains:
    messages:
      description: Messages received.
      type: int
    tuples:
      description: Block tuples received (before coalescing).
      type: int
    resumes:
      description: Streams resumed after an error.
      type: int
    rereads_from_zero:
      description:
        - Times the listing was read again from offset 0 because a stream from a non-zero offset ended without any
          block (see O(starting_offset)).
      type: int
    stream_errors:
      description: The last errors that caused a resume (C(code), C(message), C(starting_offset)).
      type: list
      elements: dict
    tokens_minted:
      description: Tokens requested.
      type: int
duration_seconds:
  description: Wall time of the query.
  returned: success
  type: float
"""

import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import (
    ApiException,
    K8sConnectionError,
    K8sModule,
    api_error_message,
    get_api_client,
    k8s_auth_argument_spec,
    require_kubernetes,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import (
    ApiTransportError,
    CsiDiffError,
    api_unreachable_message,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_transport import GRPC_IMP_ERR, HAS_GRPC
from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import ExtentError


def main():
    spec = k8s_auth_argument_spec()
    spec.update(_csi_diff.argument_spec())
    module = K8sModule(
        argument_spec=spec,
        mutually_exclusive=[["base_snapshot", "base_snapshot_handle"]],
        supports_check_mode=True,
    )
    require_kubernetes(module)
    if not HAS_GRPC:
        module.fail_json(msg=missing_required_lib("grpcio"), exception=GRPC_IMP_ERR)
    problem = _csi_diff.check_params(module.params)
    if problem:
        module.fail_json(msg=problem)

    def hide(token):
        module.no_log_values.add(token)

    api_client = None
    try:
        api_client = get_api_client(module.params)
        result = _csi_diff.run(module.params, api_client, check_mode=module.check_mode, on_token=hide)
    except CsiDiffError as exc:
        module.fail_json(msg=exc.msg, **exc.extra)
    except K8sConnectionError as exc:
        module.fail_json(msg=str(exc))
    except ApiTransportError as exc:  # urllib3 (MaxRetryError, SSLError): the API server was not reached
        module.fail_json(msg=api_unreachable_message(exc, api_client))
    except (ExtentError, IOError, OSError) as exc:
        module.fail_json(msg="writing the extent file %s failed: %s" % (module.params.get("output_file"), exc),
                         exception=traceback.format_exc())
    except ApiException as exc:  # ApiException is Exception itself when kubernetes is missing: keep it last
        module.fail_json(msg=api_error_message(exc, "a Kubernetes API call"))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
