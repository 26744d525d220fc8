# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private: the SnapshotMetadataService CustomResourceDefinition that odf_cbt_enable installs.

Written for this collection from the published facts of KEP-3314 (group ``cbt.storage.k8s.io``,
kind ``SnapshotMetadataService``, cluster scope, ``spec.address``/``audience``/``caCert``
required, ``caCert`` a base64 ``format: byte`` string). Upstream external-snapshot-metadata
ships ``v1alpha1`` (v0.1.0, v0.2.0) or ``v1beta1`` (v1.0.0 and later), never both; the schemas
are identical. The CRD built here can serve both, with ``v1beta1`` as the storage version, so
that:

* a ceph-csi-operator 4.20-4.22 (v1alpha1 client) and a v0.x sidecar find the object,
* a 4.23+ operator, a v1.x sidecar and v1.x backup clients find it too,
* a later upgrade to the upstream v1beta1-only CRD is accepted by the API server (only
  ``v1beta1`` ever appears in ``status.storedVersions``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy

GROUP = "cbt.storage.k8s.io"
KIND = "SnapshotMetadataService"
LIST_KIND = "SnapshotMetadataServiceList"
PLURAL = "snapshotmetadataservices"
SINGULAR = "snapshotmetadataservice"
SHORT_NAMES = ["sms"]
CRD_NAME = "%s.%s" % (PLURAL, GROUP)
KNOWN_VERSIONS = ("v1alpha1", "v1beta1")
STORAGE_VERSION = "v1beta1"
# Groups ending in .k8s.io are protected: the API server wants to know where the API was approved.
API_APPROVED = "https://github.com/kubernetes-csi/external-snapshot-metadata/pull/2"

_SCHEMA = {
    "type": "object",
    "description": "SnapshotMetadataService tells backup applications where a CSI driver's "
                   "snapshot metadata (changed block tracking) gRPC service listens and how to "
                   "authenticate to it. Cluster-scoped; by convention named after the CSI driver.",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "description": "Where and how to reach the snapshot metadata service.",
            "required": ["address", "audience", "caCert"],
            "properties": {
                "address": {
                    "type": "string",
                    "description": "TCP endpoint of the gRPC service as host:port, without a scheme, "
                                   "e.g. csi-snapshot-metadata.openshift-storage.svc:6443.",
                },
                "audience": {
                    "type": "string",
                    "description": "Audience that the client's ServiceAccount token must carry.",
                },
                "caCert": {
                    "type": "string",
                    "format": "byte",
                    "description": "PEM bundle of the CA(s) that signed the service's serving "
                                   "certificate, base64-encoded.",
                },
            },
        },
    },
}


def version_entry(version, storage):
    """One ``spec.versions`` item for ``version``."""
    if version not in KNOWN_VERSIONS:
        raise ValueError("unknown SnapshotMetadataService API version %r (known: %s)"
                         % (version, ", ".join(KNOWN_VERSIONS)))
    return {
        "name": version,
        "served": True,
        "storage": bool(storage),
        "schema": {"openAPIV3Schema": copy.deepcopy(_SCHEMA)},
        "additionalPrinterColumns": [
            {"name": "Address", "type": "string", "jsonPath": ".spec.address"},
            {"name": "Audience", "type": "string", "jsonPath": ".spec.audience"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }


def sms_crd(versions=KNOWN_VERSIONS, storage=STORAGE_VERSION, labels=None):
    """The CRD manifest serving ``versions`` with ``storage`` as the storage version."""
    versions = [v for v in KNOWN_VERSIONS if v in set(versions)]
    if not versions:
        raise ValueError("at least one SnapshotMetadataService version must be served")
    if storage not in versions:
        storage = versions[-1]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "annotations": {"api-approved.kubernetes.io": API_APPROVED},
            "labels": dict(labels or {}),
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "scope": "Cluster",
            "versions": [version_entry(v, v == storage) for v in versions],
        },
    }


def served_versions(crd):
    """Versions a CRD object serves, in declaration order."""
    return [v.get("name") for v in ((crd or {}).get("spec") or {}).get("versions") or [] if v.get("served")]


def storage_version(crd):
    for ver in ((crd or {}).get("spec") or {}).get("versions") or []:
        if ver.get("storage"):
            return ver.get("name")
    return None


def sms_object(name, api_version, address, audience, ca_cert_b64, labels=None):
    """A SnapshotMetadataService manifest."""
    return {
        "apiVersion": "%s/%s" % (GROUP, api_version),
        "kind": KIND,
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"address": address, "audience": audience, "caCert": ca_cert_b64},
    }
