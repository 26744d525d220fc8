#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: odf_cbt_enable
short_description: Turn CSI changed block tracking on or off for ceph-csi RBD in OpenShift Data Foundation
version_added: 0.1.0
description:
  - Makes ceph-csi-operator run the C(csi-snapshot-metadata) sidecar (KEP-3314 SnapshotMetadata service) next to
    the RBD controller plugin, so backup tools can ask which blocks changed between two VolumeSnapshots.
  - Diagnoses first, and returns the diagnosis in every case; in check mode the diagnosis and the planned
    changes are all it does. The diagnosis covers the ODF and cephcsi-operator versions (from their
    ClusterServiceVersions), whether the operator image knows about CBT (its CSV permissions for
    C(snapshotmetadataservices)), the SnapshotMetadataService CRD and the versions it serves, the RBD ctrlplugin
    Deployment's containers and sidecar image, and the volume types the C(ceph-csi-op-scc) SecurityContextConstraints allow.
  - With O(state=present) it makes every piece exist and match, in this order. The SnapshotMetadataService CRD
    (shipped with this collection; it serves C(v1alpha1) and C(v1beta1), storage C(v1beta1)) when it is missing.
    The TLS material. The Service in front of the sidecar's port 50051. The SnapshotMetadataService named after the
    driver (address, audience, base64 CA bundle). The C(tls-key) volume on the Driver CR (projected form where the SCC
    has no C(secret) volumes). Then it triggers the operator's reconcile when the sidecar is still missing, and waits
    until the ctrlplugin rollout has a ready C(csi-snapshot-metadata) container.
  - TLS comes from the OpenShift service CA (serving-cert annotation on the Service, CA from ConfigMap
    C(openshift-service-ca.crt)), from ODF itself (ODF 4.23 and later publish a ConfigMap named after the driver), or
    from a private CA that the module generates and keeps in a Secret, renewing the server certificate before it expires.
  - With O(state=absent) it removes everything it created and only that (objects carry the label
    C(app.kubernetes.io/managed-by=cbt.toolkit); Driver volumes are recognised by their Secret), and waits until the
    operator has removed the sidecar.
  - Objects owned by this collection are written with server-side apply, field manager C(cbt.toolkit); objects of
    other owners (the Driver CR, a CRD installed by someone else) are patched with a C(resourceVersion) precondition
    so the operator's concurrent changes are never overwritten.
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
options:
  state:
    description:
      - V(present) enables the sidecar, V(absent) removes what this module created.
    type: str
    choices: [present, absent]
    default: present
  driver:
    description:
      - Name of the ceph-csi-operator C(Driver) CR of the RBD driver (also the CSI driver name and the
        SnapshotMetadataService name).
    type: str
    default: openshift-storage.rbd.csi.ceph.com
  namespace:
    description:
      - Namespace of the Driver CR and of its ctrlplugin Deployment. The Service and Secrets are created here.
    type: str
    default: openshift-storage
  operator_namespace:
    description:
      - Namespace of the cephcsi-operator ClusterServiceVersion, OperatorConfig and pod. Defaults to O(namespace).
    type: str
  scc_name:
    description:
      - SecurityContextConstraints used by the ceph-csi pods on OpenShift; read to choose the C(tls-key) volume type.
    type: str
    default: ceph-csi-op-scc
  service_name:
    description:
      - Name of the Service in front of the sidecar. Also the prefix of the default Secret and ConfigMap names.
    type: str
    default: csi-snapshot-metadata
  service_port:
    description:
      - Port of the Service (forwarded to the sidecar's port 50051).
    type: int
    default: 6443
  address:
    description:
      - C(host:port) published in the SnapshotMetadataService. Defaults to C(<service_name>.<namespace>.svc:<service_port>)
        (with O(tls_provider=odf), to the address in ODF's ConfigMap). The host must be one of the certificate's DNS names.
    type: str
  audience:
    description:
      - Audience published in the SnapshotMetadataService; backup clients request tokens for it. Defaults to O(driver).
    type: str
  tls_provider:
    description:
      - Where the sidecar's serving certificate comes from.
      - V(auto) picks V(odf) when ConfigMap O(driver) in O(namespace) has C(address) and C(caCert) (ODF 4.23 and
        later), else V(service_ca) on OpenShift when ConfigMap C(openshift-service-ca.crt) exists in O(namespace),
        else V(self_managed).
      - V(service_ca) annotates the Service with C(service.beta.openshift.io/serving-cert-secret-name) and publishes
        the service CA bundle.
      - V(self_managed) generates a private CA (Secret O(ca_secret_name)) and a server certificate (Secret
        O(tls_secret_name), type C(kubernetes.io/tls)) for C(<svc>), C(<svc>.<ns>), C(<svc>.<ns>.svc) and
        C(<svc>.<ns>.svc.<cluster_domain>).
      - V(odf) uses what ocs-client-operator set up (Service, Secret, Driver volume) and only adds the CRD and the
        SnapshotMetadataService.
    type: str
    choices: [auto, odf, service_ca, self_managed]
    default: auto
  tls_secret_name:
    description:
      - Secret holding the sidecar's certificate (C(tls.crt), C(tls.key)). Defaults to C(<service_name>-tls).
    type: str
  ca_secret_name:
    description:
      - Secret holding the private CA with O(tls_provider=self_managed). Defaults to C(<service_name>-ca).
    type: str
  cert_validity_days:
    description:
      - Lifetime of a generated server certificate (O(tls_provider=self_managed)).
    type: int
    default: 365
  ca_validity_days:
    description:
      - Lifetime of a generated CA (O(tls_provider=self_managed)).
    type: int
    default: 3650
  cert_renew_before_days:
    description:
      - Reissue the server certificate (or regenerate the CA) when it expires within this many days, is not signed by
        the current CA, or lacks a DNS name. A renewed server certificate keeps the CA, so the published C(caCert)
        does not change; the sidecar reloads the files itself.
    type: int
    default: 30
  cluster_domain:
    description:
      - Cluster DNS domain used for the fully qualified Service name in generated certificates.
    type: str
    default: cluster.local
  tls_volume_type:
    description:
      - Form of the Driver's C(tls-key) volume. V(auto) uses V(projected) when the SCC O(scc_name) does not allow
        C(secret) volumes (ODF 4.20 and 4.21), and on OpenShift also when that SCC cannot be read or does not exist
        (a projected volume is admitted either way); else V(secret). The choice and its reason are in
        RV(diagnosis.scc).
    type: str
    choices: [auto, secret, projected]
    default: auto
  sidecar_image:
    description:
      - Image of the C(csi-snapshot-metadata) sidecar, with a tag or digest (for example V(v0.2.0) or later so that
        clients can send CSI snapshot handles). Set through the Driver's C(imageSet) ConfigMap (created when the
        Driver has none; otherwise only the C(snapshot-metadata) key of the existing one is set).
    type: str
  sms_api_version:
    description:
      - SnapshotMetadataService API version the running cephcsi-operator reads. V(auto) derives it from the operator
        CSV version (4.20 to 4.22 read V(v1alpha1), 4.23 and later V(v1beta1)).
    type: str
    choices: [auto, v1alpha1, v1beta1]
    default: auto
  manage_crd:
    description:
      - Install the SnapshotMetadataService CRD when it is missing (and keep the one this module installed up to date).
    type: bool
    default: true
  crd_add_missing_versions:
    description:
      - When a CRD installed by someone else does not serve a version the operator or the sidecar reads (the
        C(v1alpha1)/C(v1beta1) version trap), add that version as an additional served version (same schema, no
        conversion). Without it the module fails and explains the trap. Removed again by O(state=absent).
    type: bool
    default: false
  remove_crd:
    description:
      - With O(state=absent), delete the CRD if this module installed it and no other SnapshotMetadataService uses it.
    type: bool
    default: true
  reconcile_trigger:
    description:
      - How to make the operator rebuild the ctrlplugin Deployment when the sidecar is still missing (the operator does
        not watch SnapshotMetadataService objects).
      - V(annotate) updates the annotation C(cbt.toolkit/reconcile-requested-at) on the Driver; V(restart_operator)
        deletes the operator pods (label C(control-plane=ceph-csi-op-controller-manager)); V(none) only warns.
    type: str
    choices: [annotate, restart_operator, none]
    default: annotate
  wait:
    description:
      - Wait until the sidecar is ready (or removed, with O(state=absent)).
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait. On timeout the module fails with the Deployment's containers, rollout conditions and events.
    type: int
    default: 300
  wait_sleep:
    description:
      - Seconds between checks while waiting.
    type: float
    default: 5.0
extends_documentation_fragment:
  - cbt.toolkit.k8s_auth
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Uses server-side dry runs; nothing is written.
  diff_mode:
    support: full
    details: One diff per object; Secret values are shown as fingerprints.
  platform:
    platforms: posix
requirements:
  - kubernetes >= 24.2.0
  - cryptography >= 3.1
notes:
  - The user needs, besides read access, rights to create CRDs, Services, Secrets and SnapshotMetadataServices and
    to patch the Driver. M(cbt.toolkit.odf_cbt_info) needs only read access.
  - On ODF 4.20 the stock cephcsi-operator image may predate snapshot-metadata support; the diagnosis says so
    (no C(snapshotmetadataservices) permission in its CSV) and the module fails without changing anything.
  - The Ceph side must support C(rbd_diff_iterate3) (Ceph Squid 19.2.3 or later); that is not visible through the
    Kubernetes API.
seealso:
  - module: cbt.toolkit.odf_cbt_info
  - name: KEP-3314 CSI changed block tracking
    description: The Kubernetes enhancement behind the SnapshotMetadata service.
    link: https://github.com/kubernetes/enhancements/tree/master/keps/sig-storage/3314-csi-changed-block-tracking
"""

EXAMPLES = r"""
- name: Enable changed block tracking on ODF (OpenShift service CA, defaults for ODF names)
  cbt.toolkit.odf_cbt_enable:
    state: present
  register: cbt

- name: Show why CBT is or is not enabled
  ansible.builtin.debug:
    msg: "{{ cbt.diagnosis.reason }}"

- name: ODF 4.20 with a newer sidecar (clients can send CSI snapshot handles) and an operator restart
  cbt.toolkit.odf_cbt_enable:
    sidecar_image: registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.2.0
    reconcile_trigger: restart_operator
    wait_timeout: 600

- name: Plain Kubernetes with upstream ceph-csi-operator and self-managed TLS
  cbt.toolkit.odf_cbt_enable:
    kubeconfig: ~/.kube/config
    driver: rook-ceph.rbd.csi.ceph.com
    namespace: rook-ceph
    tls_provider: self_managed
    sms_api_version: v1beta1
    cert_validity_days: 180
    cert_renew_before_days: 30

- name: The cluster has a v1beta1-only CRD but the operator reads v1alpha1 - serve both
  cbt.toolkit.odf_cbt_enable:
    crd_add_missing_versions: true

- name: Turn it off again, leaving nothing of ours behind
  cbt.toolkit.odf_cbt_enable:
    state: absent
"""

RETURN = r"""
changed:
  description: Whether anything was (or, in check mode, would be) created, changed or deleted.
  returned: always
  type: bool
actions:
  description: What was done (or would be done in check mode), one line per object.
  returned: always
  type: list
  elements: str
  sample: ["create CustomResourceDefinition snapshotmetadataservices.cbt.storage.k8s.io",
           "update Driver openshift-storage/openshift-storage.rbd.csi.ceph.com"]
sms:
  description: The SnapshotMetadataService as published (empty with O(state=absent)).
  returned: success
  type: dict
  contains:
    name:
      description: Object name (the driver name).
      type: str
    api_version:
      description: API version it was written with.
      type: str
    address:
      description: C(host:port) of the Service.
      type: str
    audience:
      description: Token audience.
      type: str
tls:
  description: TLS material in use (empty with O(state=absent)).
  returned: success
  type: dict
  contains:
    provider:
      description: V(odf), V(service_ca) or V(self_managed).
      type: str
    secret_name:
      description: Secret mounted as the C(tls-key) volume.
      type: str
    ca_secret_name:
      description: Secret of the private CA (V(self_managed)).
      type: str
    renewed:
      description: Whether the server certificate was reissued in this run (V(self_managed)).
      type: bool
    renew_reasons:
      description: Why it was reissued.
      type: list
      elements: str
    ca_renewed:
      description: Whether the private CA was regenerated (the published C(caCert) changed).
      type: bool
    not_after:
      description: Expiry of the server certificate (UTC, ISO 8601).
      type: str
    dns_names:
      description: DNS names in the server certificate.
      type: list
      elements: str
diagnosis:
  description:
    - Why CBT is or is not available, read after the changes (before them in check mode and on failure).
    - The same structure is returned by M(cbt.toolkit.odf_cbt_info).
  returned: always
  type: dict
  contains:
    cbt_supported:
      description: Whether the running operator can run the sidecar (V(null) when its version is unknown).
      type: bool
    cbt_enabled:
      description: Whether the sidecar is ready and the SnapshotMetadataService published, with no blocking problem.
      type: bool
    reason:
      description: One sentence a human can act on (the first blocking problem, or what is enabled).
      type: str
      sample: "operator image predates snapshot-metadata support: ..."
    problems:
      description: Every finding, each with C(code), C(message) and C(blocking).
      type: list
      elements: dict
    kubernetes:
      description: C(version) of the API server and whether it is C(openshift).
      type: dict
    odf:
      description: C(csv) name and C(version) of the odf-operator CSV.
      type: dict
    operator:
      description:
        - cephcsi-operator C(csv), C(version), C(sms_permission), C(supports_cbt), C(trigger)
          (V(snapshotmetadataservice_and_tls_volume) or V(tls_volume)), C(sms_api_version) it reads, C(passes_audience).
      type: dict
    crd:
      description:
        - SnapshotMetadataService CRD C(present), C(served_versions), C(storage_version), C(managed_by_us),
          C(required_versions) (what the operator and sidecar read) and C(missing_versions).
      type: dict
    driver:
      description: Driver C(found), its C(tls_volume) (C(present), C(type), C(secret_name), C(mount_path)) and C(image_set).
      type: dict
    ctrlplugin:
      description:
        - The RBD ctrlplugin Deployment - C(containers), C(container_count), C(sidecar_present), C(sidecar_image),
          C(sidecar_tls_mounted), C(rollout_complete), C(sidecar_ready), C(conditions), C(expected_sidecar_image).
      type: dict
    sidecar:
      description:
        - Effective sidecar C(image) and C(version), C(delta_base_field) (V(name) for v0.1.0, V(handle) for v0.2.0 and
          later; what M(cbt.toolkit.csi_snapshot_diff) must send as the base snapshot), C(reads_sms_version).
      type: dict
    scc:
      description:
        - SCC C(found), its C(volumes) and C(allows_secret_volumes), and the C(tls_volume_type) this module uses for
          the Driver's C(tls-key) volume with C(tls_volume_type_reason).
      type: dict
    sms:
      description: SnapshotMetadataService C(present), C(api_version), C(address), C(audience), C(managed_by_us).
      type: dict
    service:
      description: Service C(present) and C(managed_by_us).
      type: dict
    tls:
      description: C(provider), C(secret_name), C(secret_present) and the server C(certificate) summary.
      type: dict
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeError
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_enable import Engine, EnableError
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_module import connect, module_settings, odf_module


def main():
    module = odf_module(dg.enable_argument_spec(), cryptography_required=True)
    st = module_settings(module)
    api = connect(module)

    engine = Engine(api, st, check_mode=module.check_mode, warn=module.warn)
    diagnosis = None
    try:
        facts = dg.gather(api, st)
        diagnosis = dg.diagnose(st, facts)
        if st.state == "present":
            engine.present(facts, diagnosis)
        else:
            engine.absent(facts)
        if engine.changed and not module.check_mode:
            diagnosis = dg.diagnose(st, dg.gather(api, st))
    except (EnableError, KubeError) as exc:
        extra = getattr(exc, "extra", {}) or {}
        result = dict(msg=str(exc), changed=engine.changed, actions=engine.actions, diagnosis=diagnosis or {})
        if module._diff:
            result["diff"] = engine.diffs
        result.update(extra)
        module.fail_json(**result)

    result = dict(changed=engine.changed, actions=engine.actions, diagnosis=diagnosis,
                  sms=engine.sms_result if st.state == "present" else {},
                  tls=engine.tls_result if st.state == "present" else {})
    if module._diff:
        result["diff"] = engine.diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
