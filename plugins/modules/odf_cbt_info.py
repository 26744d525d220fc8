#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: odf_cbt_info
short_description: Explain whether CSI changed block tracking works for ceph-csi RBD in OpenShift Data Foundation, and why not
version_added: 0.1.0
description:
  - Reads the cluster and returns the same C(diagnosis) as M(cbt.toolkit.odf_cbt_enable), without changing anything.
  - Covers the ODF and cephcsi-operator versions (ClusterServiceVersions), whether the operator image knows about
    CBT (its CSV permissions for C(snapshotmetadataservices)), the SnapshotMetadataService CRD and the versions it
    serves against the versions the operator and the sidecar read, the SnapshotMetadataService, the Driver's
    C(tls-key) volume, the RBD ctrlplugin Deployment's containers, sidecar image and readiness, the Service, the TLS
    certificate, and the volume types the SCC allows.
  - Needs read access only; objects the user may not read are listed as a problem with code C(forbidden).
author:
  - cbt.toolkit maintainers (@cbt-toolkit)
options:
  driver:
    description:
      - Name of the ceph-csi-operator C(Driver) CR of the RBD driver.
    type: str
    default: openshift-storage.rbd.csi.ceph.com
  namespace:
    description:
      - Namespace of the Driver CR and its ctrlplugin Deployment.
    type: str
    default: openshift-storage
  operator_namespace:
    description:
      - Namespace of the cephcsi-operator ClusterServiceVersion and OperatorConfig. Defaults to O(namespace).
    type: str
  scc_name:
    description:
      - SecurityContextConstraints used by the ceph-csi pods on OpenShift.
    type: str
    default: ceph-csi-op-scc
  service_name:
    description:
      - Service in front of the sidecar, as named for M(cbt.toolkit.odf_cbt_enable).
    type: str
    default: csi-snapshot-metadata
  service_port:
    description:
      - Port of that Service.
    type: int
    default: 6443
  tls_secret_name:
    description:
      - Secret with the sidecar's certificate. Defaults to C(<service_name>-tls).
    type: str
  ca_secret_name:
    description:
      - Secret with the private CA (self-managed TLS). Defaults to C(<service_name>-ca).
    type: str
  tls_provider:
    description:
      - TLS provider to assume, as for M(cbt.toolkit.odf_cbt_enable); V(auto) detects it.
    type: str
    choices: [auto, odf, service_ca, self_managed]
    default: auto
  sms_api_version:
    description:
      - SnapshotMetadataService API version the operator reads; V(auto) derives it from the operator version.
    type: str
    choices: [auto, v1alpha1, v1beta1]
    default: auto
  sidecar_image:
    description:
      - Sidecar image you intend to run; used to work out which API version the sidecar reads and the
        C(delta_base_field). Defaults to the running or configured image.
    type: str
  cluster_domain:
    description:
      - Cluster DNS domain, for the certificate's expected DNS names.
    type: str
    default: cluster.local
extends_documentation_fragment:
  - cbt.toolkit.k8s_auth
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Read-only module.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - kubernetes >= 24.2.0
  - cryptography >= 3.1 (optional, for the certificate summary)
seealso:
  - module: cbt.toolkit.odf_cbt_enable
"""

EXAMPLES = r"""
- name: Why is changed block tracking not available?
  cbt.toolkit.odf_cbt_info:
  register: cbt

- name: Stop early with the explanation
  ansible.builtin.assert:
    that: cbt.diagnosis.cbt_supported
    fail_msg: "{{ cbt.diagnosis.reason }}"

- name: Tell the backup job which base-snapshot field the sidecar expects (csi_snapshot_diff's base_snapshot_mode)
  ansible.builtin.set_fact:
    backup_base_snapshot_mode: "{{ cbt.diagnosis.sidecar.delta_base_field | default('auto', true) }}"

- name: Diagnose an upstream ceph-csi-operator deployment
  cbt.toolkit.odf_cbt_info:
    driver: rook-ceph.rbd.csi.ceph.com
    namespace: rook-ceph
"""

RETURN = r"""
diagnosis:
  description:
    - Why CBT is or is not available. See the C(diagnosis) return value of M(cbt.toolkit.odf_cbt_enable) for every key.
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
      description: One sentence a human can act on.
      type: str
      sample: "cephcsi-operator 4.19.0 predates snapshot-metadata support: ..."
    problems:
      description: Every finding, each with C(code), C(message) and C(blocking).
      type: list
      elements: dict
    kubernetes:
      description: C(version) and C(openshift).
      type: dict
    odf:
      description: C(csv) and C(version) of odf-operator.
      type: dict
    operator:
      description: cephcsi-operator C(csv), C(version), C(sms_permission), C(supports_cbt), C(trigger), C(sms_api_version).
      type: dict
    crd:
      description: CRD C(present), C(served_versions), C(storage_version), C(required_versions), C(missing_versions).
      type: dict
    driver:
      description: Driver C(found), C(tls_volume), C(image_set).
      type: dict
    ctrlplugin:
      description: ctrlplugin Deployment C(containers), C(sidecar_present), C(sidecar_image), C(sidecar_ready), C(conditions).
      type: dict
    sidecar:
      description: Effective sidecar C(image), C(version), C(delta_base_field), C(reads_sms_version).
      type: dict
    scc:
      description:
        - SCC C(found), C(volumes), C(allows_secret_volumes), and the C(tls_volume_type) that M(cbt.toolkit.odf_cbt_enable)
          would use for the Driver's C(tls-key) volume with C(tls_volume_type_reason).
      type: dict
    sms:
      description: SnapshotMetadataService C(present), C(api_version), C(address), C(audience).
      type: dict
    service:
      description: Service C(present), C(managed_by_us).
      type: dict
    tls:
      description: C(provider), C(secret_name), C(secret_present), C(certificate).
      type: dict
"""

from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeError
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_module import connect, module_settings, odf_module


def main():
    module = odf_module(dg.lookup_argument_spec(), cryptography_required=False)
    st = module_settings(module)
    api = connect(module)
    try:
        facts = dg.gather(api, st)
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, diagnosis=dg.diagnose(st, facts))


if __name__ == "__main__":
    main()
