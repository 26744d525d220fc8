# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private: read the cluster and explain whether CSI changed block tracking can work and why not.

``gather()`` only reads (it is the whole of check mode's view of the cluster); ``diagnose()``
turns the facts into the documented ``diagnosis`` structure with ``cbt_supported``,
``cbt_enabled``, a human ``reason`` and a list of ``problems``.

How ceph-csi-operator decides to add the ``csi-snapshot-metadata`` container to the RBD
ctrlplugin Deployment (ceph-csi-operator PR #274 and later):

* ODF 4.20-4.22: a cluster-scoped SnapshotMetadataService named like the Driver CR, read with a
  ``v1alpha1`` client (no such API version = "absent"), **and** a ``tls-key`` volume in
  ``spec.controllerPlugin.volumes`` of the Driver; the CSV grants the operator access to
  ``snapshotmetadataservices`` (an image built before PR #274 does not).
* ODF 4.23: the same gate with a ``v1beta1`` client.
* Later (upstream PR #513/#519): the ``tls-key`` volume alone; the sidecar gets ``--audience``.
* The operator does not watch SnapshotMetadataService objects: it acts on the next Driver
  change or operator restart.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import re

from ansible_collections.cbt.toolkit.plugins.module_utils import _crds_sms as crds
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_tls as tls
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeError, api_path, is_ours

SIDECAR = "csi-snapshot-metadata"
SIDECAR_PORT = 50051
TLS_VOLUME = "tls-key"
TLS_MOUNT_PATH = "/tmp/certificates"
IMAGE_KEY = "snapshot-metadata"
OPERATOR_CONFIG_NAME = "ceph-csi-operator-config"
OPERATOR_POD_LABEL = "control-plane=ceph-csi-op-controller-manager"
OPERATOR_CSV_PREFIX = "cephcsi-operator."
ODF_CSV_PREFIX = "odf-operator."
RECONCILE_ANNOTATION = "cbt.toolkit/reconcile-requested-at"
ADDED_VERSIONS_ANNOTATION = "cbt.toolkit/added-served-versions"
SERVING_CERT_ANNOTATION = "service.beta.openshift.io/serving-cert-secret-name"
SERVICE_CA_ORIGIN_ANNOTATION = "service.beta.openshift.io/originating-service-name"
OPENSHIFT_CA_CONFIGMAP = "openshift-service-ca.crt"
OPENSHIFT_CA_KEY = "service-ca.crt"
OPENSHIFT_GROUPS = ("security.openshift.io", "config.openshift.io")

DRIVER_NAME_RE = re.compile(r"^(?:.+\.)?(rbd|cephfs|nfs|nvmeof)\.csi\.ceph\.com$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# registry[:port]/path[:tag][@digest] with a tag or a digest (no implicit "latest").
_IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


class InputError(Exception):
    """Bad module input: the message names the option, the value and what to do."""


# ----------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------
def parse_version(text):
    """``(major, minor, patch)`` from ``4.20.3-rhodf``, ``v0.1.0``, ``cephcsi-operator.v4.20.0``."""
    if not text:
        return None
    match = _VERSION_RE.search(str(text))
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def version_str(ver):
    return None if ver is None else "%d.%d.%d" % ver


def parse_image(image):
    """Split an image reference; raise ``InputError`` when it is not one or has no tag/digest."""
    match = _IMAGE_RE.match(image or "")
    if not match:
        raise InputError("sidecar_image %r is not a valid image reference: use "
                         "registry/repository:tag or registry/repository@sha256:<64 hex>" % (image,))
    if not match.group("tag") and not match.group("digest"):
        raise InputError("sidecar_image %r has neither a tag nor a digest: pin one (e.g. "
                         "registry.k8s.io/sig-storage/csi-snapshot-metadata:v0.2.0) so the sidecar "
                         "version is known" % (image,))
    return {"registry": match.group("registry"), "repository": match.group("path"),
            "tag": match.group("tag"), "digest": match.group("digest")}


def image_tag(image):
    if not image:
        return None
    try:
        return parse_image(image).get("tag")
    except InputError:
        # a running image we did not choose: take what follows the last ':' after the last '/'
        tail = image.split("@")[0].rsplit("/", 1)[-1]
        return tail.split(":", 1)[1] if ":" in tail else None


def sidecar_version_of(image, operator_version):
    """Upstream sidecar version of an image, or None.

    Only images named ``.../csi-snapshot-metadata`` carry the upstream version in their tag; a
    downstream build (e.g. ODF's ``ose-csi-external-snapshot-metadata-rhel9:v4.20``) is tagged with
    the product version, so the sidecar version the ODF release ships is assumed instead.
    """
    if image:
        repo = image.split("@")[0]
        tail = repo.rsplit("/", 1)[-1]
        if tail.split(":", 1)[0] == SIDECAR:
            ver = parse_version(image_tag(image))
            if ver is not None:
                return ver
            return None
    return parse_version(default_sidecar_tag(operator_version))


def driver_type(driver):
    match = DRIVER_NAME_RE.match(driver or "")
    return match.group(1) if match else None


def classify_operator(version, sms_permission):
    """What a cephcsi-operator of ``version`` does about the snapshot-metadata sidecar.

    ``sms_permission``: whether its CSV grants access to snapshotmetadataservices (None: unknown).
    """
    out = {"supports_cbt": None, "trigger": "snapshotmetadataservice_and_tls_volume",
           "sms_api_version": None, "passes_audience": False, "reason": None}
    if version is None:
        out["reason"] = ("the cephcsi-operator version is unknown (no ClusterServiceVersion found); "
                         "assuming the SnapshotMetadataService + tls-key volume gate")
        return out
    vtxt = version_str(version)
    if version < (4, 20, 0):
        out["supports_cbt"] = False
        out["trigger"] = None
        out["reason"] = ("cephcsi-operator %s predates snapshot-metadata support: the csi-snapshot-metadata "
                         "sidecar came with ceph-csi-operator PR #274, first in ODF 4.20. Upgrade ODF to 4.20 "
                         "or later (or run a custom cephcsi-operator image built from red-hat-storage/"
                         "ceph-csi-operator release-4.20 or later: roles cbt.toolkit.cephcsi_operator_build and "
                         "cbt.toolkit.cephcsi_operator_deploy)" % vtxt)
        return out
    if version >= (4, 24, 0):
        out.update(supports_cbt=True, trigger="tls_volume", sms_api_version="v1beta1", passes_audience=True)
        return out
    out["sms_api_version"] = "v1beta1" if version >= (4, 23, 0) else "v1alpha1"
    if sms_permission is False:
        out["supports_cbt"] = False
        out["reason"] = ("operator image predates snapshot-metadata support: the cephcsi-operator %s CSV grants "
                         "no access to snapshotmetadataservices.cbt.storage.k8s.io, so its image was built "
                         "before ceph-csi-operator PR #274 and never adds the csi-snapshot-metadata container. "
                         "Build a custom cephcsi-operator image from red-hat-storage/ceph-csi-operator "
                         "release-%d.%d and patch the cephcsi-operator CSV with it (roles cbt.toolkit.cephcsi_operator_build "
                         "and cbt.toolkit.cephcsi_operator_deploy; the deploy role also adds the snapshot-metadata "
                         "permissions to the CSV clusterPermissions: snapshotmetadataservices get/list/watch for the "
                         "operator, subjectaccessreviews and tokenreviews create and snapshotmetadataservices get/list "
                         "for the RBD ctrlplugin), then re-run" % (vtxt, version[0], version[1]))
        return out
    out["supports_cbt"] = True if sms_permission else None
    if sms_permission is None:
        out["reason"] = "the cephcsi-operator CSV permissions could not be read"
    return out


def default_sidecar_tag(version):
    """The snapshot-metadata image tag an ODF release defaults to (None: not known)."""
    if version is None:
        return None
    if (4, 20, 0) <= version < (4, 22, 0):
        return "v0.1.0"
    if (4, 22, 0) <= version < (4, 23, 0):
        return "v0.2.0"
    return None


def sidecar_sms_version(sidecar_version, passes_audience):
    """The SMS API version the sidecar reads for its audience (None: it does not read it/unknown)."""
    if passes_audience or sidecar_version is None:
        return None
    return "v1alpha1" if sidecar_version < (1, 0, 0) else "v1beta1"


def delta_base_field(sidecar_version):
    """``GetMetadataDelta`` field 3: base snapshot name (v0.1.0) or CSI handle (v0.2.0+)."""
    if sidecar_version is None:
        return None
    return "name" if sidecar_version < (0, 2, 0) else "handle"


def csv_grants_sms(csv):
    """Whether a CSV's (cluster) permissions allow reading snapshotmetadataservices."""
    strategy = ((csv.get("spec") or {}).get("install") or {}).get("spec") or {}
    for key in ("clusterPermissions", "permissions"):
        for perm in strategy.get(key) or []:
            for rule in perm.get("rules") or []:
                groups = rule.get("apiGroups") or []
                resources = rule.get("resources") or []
                verbs = rule.get("verbs") or []
                if (crds.GROUP in groups or "*" in groups) and \
                        (crds.PLURAL in resources or "*" in resources) and \
                        ("get" in verbs or "*" in verbs):
                    return True
    return False


def _csv_version(csv):
    return parse_version((csv.get("spec") or {}).get("version")) or \
        parse_version((csv.get("metadata") or {}).get("name"))


def pick_csv(csvs, prefix):
    """The installed CSV of a package (Succeeded first, then the highest version)."""
    cands = [c for c in csvs if ((c.get("metadata") or {}).get("name") or "").startswith(prefix)]
    if not cands:
        return None

    def key(csv):
        phase = (csv.get("status") or {}).get("phase")
        return (phase == "Succeeded", _csv_version(csv) or (0, 0, 0))
    return sorted(cands, key=key)[-1]


def _labels_selector(match_labels):
    return ",".join("%s=%s" % (k, v) for k, v in sorted((match_labels or {}).items()))


def _containers(deploy):
    spec = (((deploy or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    return spec.get("containers") or []


def _find(items, name):
    for item in items or []:
        if item.get("name") == name:
            return item
    return None


def tls_volume_of(driver):
    """The ``tls-key`` entry of the Driver's controller plugin volumes, or None."""
    vols = (((driver or {}).get("spec") or {}).get("controllerPlugin") or {}).get("volumes") or []
    for entry in vols:
        if ((entry.get("volume") or {}).get("name")) == TLS_VOLUME:
            return entry
    return None


def volume_secret(entry):
    """``(type, secret name)`` of a Driver volume entry."""
    vol = (entry or {}).get("volume") or {}
    if "secret" in vol:
        return "secret", (vol.get("secret") or {}).get("secretName")
    if "projected" in vol:
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                return "projected", (src.get("secret") or {}).get("name")
        return "projected", None
    for kind in ("csi", "configMap", "emptyDir", "hostPath"):
        if kind in vol:
            return kind, None
    return None, None


def sidecar_status(deploy, pods=None):
    """Presence, image, mount and readiness of the sidecar in a ctrlplugin Deployment."""
    out = {"found": deploy is not None, "containers": [], "container_count": 0, "sidecar_present": False,
           "sidecar_image": None, "sidecar_tls_mounted": False, "rollout_complete": False,
           "replicas": None, "ready_replicas": None, "updated_replicas": None,
           "pods_with_ready_sidecar": None, "sidecar_ready": False, "conditions": []}
    if deploy is None:
        return out
    containers = _containers(deploy)
    out["containers"] = [c.get("name") for c in containers]
    out["container_count"] = len(containers)
    side = _find(containers, SIDECAR)
    spec = deploy.get("spec") or {}
    status = deploy.get("status") or {}
    replicas = spec.get("replicas", 1)
    out["replicas"] = replicas
    out["ready_replicas"] = status.get("readyReplicas", 0)
    out["updated_replicas"] = status.get("updatedReplicas", 0)
    out["conditions"] = ["%s=%s%s" % (c.get("type"), c.get("status"),
                                      (" (%s)" % c.get("message")) if c.get("message") else "")
                         for c in status.get("conditions") or []]
    generation = (deploy.get("metadata") or {}).get("generation", 0)
    out["rollout_complete"] = bool(
        status.get("observedGeneration", 0) >= generation and
        status.get("updatedReplicas", 0) == replicas and
        status.get("availableReplicas", 0) >= replicas and
        status.get("replicas", 0) == replicas)
    if side is None:
        return out
    out["sidecar_present"] = True
    out["sidecar_image"] = side.get("image")
    out["sidecar_tls_mounted"] = any(m.get("mountPath") == TLS_MOUNT_PATH for m in side.get("volumeMounts") or [])
    ready_pods = None
    if pods is not None:
        ready_pods = 0
        for pod in pods:
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            for cst in (pod.get("status") or {}).get("containerStatuses") or []:
                if cst.get("name") == SIDECAR and cst.get("ready"):
                    ready_pods += 1
        out["pods_with_ready_sidecar"] = ready_pods
    out["sidecar_ready"] = bool(out["rollout_complete"] and out["sidecar_tls_mounted"] and
                                (ready_pods is None or ready_pods >= 1))
    return out


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
class Settings(object):
    """Validated module input with the derived names."""

    def __init__(self, params):
        def opt(name, default):
            value = params.get(name)
            return default if value is None else value

        self.state = opt("state", "present")
        self.driver = params["driver"]
        self.namespace = params["namespace"]
        self.operator_namespace = opt("operator_namespace", self.namespace)
        self.scc_name = opt("scc_name", "ceph-csi-op-scc")
        self.service_name = opt("service_name", "csi-snapshot-metadata")
        self.service_port = int(opt("service_port", 6443))
        self.tls_secret_name = opt("tls_secret_name", "%s-tls" % self.service_name)
        self.ca_secret_name = opt("ca_secret_name", "%s-ca" % self.service_name)
        self.images_configmap = "%s-images" % self.service_name
        self.audience = opt("audience", self.driver)
        self.address = params.get("address")
        self.tls_provider = opt("tls_provider", "auto")
        self.cert_validity_days = int(opt("cert_validity_days", 365))
        self.ca_validity_days = int(opt("ca_validity_days", 3650))
        self.cert_renew_before_days = int(opt("cert_renew_before_days", 30))
        self.cluster_domain = opt("cluster_domain", "cluster.local")
        self.tls_volume_type = opt("tls_volume_type", "auto")
        self.sidecar_image = params.get("sidecar_image")
        self.sms_api_version = opt("sms_api_version", "auto")
        self.manage_crd = opt("manage_crd", True)
        self.crd_add_missing_versions = opt("crd_add_missing_versions", False)
        self.remove_crd = opt("remove_crd", True)
        self.reconcile_trigger = opt("reconcile_trigger", "annotate")
        self.wait = opt("wait", True)
        self.wait_timeout = int(opt("wait_timeout", 300))
        self.wait_sleep = float(opt("wait_sleep", 5))
        self.deployment_name = "%s-ctrlplugin" % self.driver
        self.validate()

    def validate(self):
        if not self.driver or len(self.driver) > 253 or not _DNS1123_SUBDOMAIN.match(self.driver):
            raise InputError("driver %r is not a valid Driver name (a DNS subdomain such as "
                             "openshift-storage.rbd.csi.ceph.com)" % (self.driver,))
        dtype = driver_type(self.driver)
        if dtype is None:
            raise InputError("driver %r is not a ceph-csi driver name: ceph-csi-operator names Drivers "
                             "'[<prefix>.](rbd|cephfs|nfs|nvmeof).csi.ceph.com'" % (self.driver,))
        if dtype != "rbd":
            raise InputError("driver %r is a %s driver: changed block tracking (SnapshotMetadata) is "
                             "implemented by the RBD driver only; use e.g. openshift-storage.rbd.csi.ceph.com"
                             % (self.driver, dtype))
        for opt in ("namespace", "operator_namespace"):
            val = getattr(self, opt)
            if not val or len(val) > 63 or not _DNS1123_LABEL.match(val):
                raise InputError("%s %r is not a valid namespace name (lower-case DNS label)" % (opt, val))
        for opt in ("service_name",):
            val = getattr(self, opt)
            if len(val) > 63 or not _DNS1123_LABEL.match(val) or val[0].isdigit():
                raise InputError("%s %r is not a valid Service name (lower-case DNS label starting "
                                 "with a letter, at most 63 characters)" % (opt, val))
        for opt in ("tls_secret_name", "ca_secret_name"):
            val = getattr(self, opt)
            if len(val) > 253 or not _DNS1123_SUBDOMAIN.match(val):
                raise InputError("%s %r is not a valid Secret name" % (opt, val))
        if not 1 <= self.service_port <= 65535:
            raise InputError("service_port %s is not a TCP port (1-65535)" % self.service_port)
        if self.sidecar_image:
            parse_image(self.sidecar_image)
        if self.cert_renew_before_days < 1:
            raise InputError("cert_renew_before_days must be at least 1")
        if self.cert_validity_days <= self.cert_renew_before_days:
            raise InputError("cert_validity_days (%s) must be larger than cert_renew_before_days (%s), "
                             "otherwise every run renews the certificate"
                             % (self.cert_validity_days, self.cert_renew_before_days))
        if self.ca_validity_days <= self.cert_validity_days:
            raise InputError("ca_validity_days (%s) must be larger than cert_validity_days (%s)"
                             % (self.ca_validity_days, self.cert_validity_days))
        if self.address is not None:
            if "://" in self.address or ":" not in self.address:
                raise InputError("address %r must be host:port without a scheme" % (self.address,))
        if self.wait_timeout < 0 or self.wait_sleep <= 0:
            raise InputError("wait_timeout must be >= 0 and wait_sleep > 0")

    @property
    def dns_names(self):
        return tls.service_dns_names(self.service_name, self.namespace, self.cluster_domain)

    def default_address(self):
        return "%s.%s.svc:%d" % (self.service_name, self.namespace, self.service_port)


# ----------------------------------------------------------------------------------------------
# reading the cluster
# ----------------------------------------------------------------------------------------------
class Facts(object):
    """Raw objects read from the cluster (``None`` = absent) and what could not be read."""

    def __init__(self):
        self.forbidden = []
        self.server_version = None
        self.groups = {}
        self.openshift = False
        self.namespace = None
        self.namespace_exists = None
        self.driver_api_version = None
        self.driver = None
        self.driver_readable = True
        self.drivers_in_namespace = []
        self.operator_csv = None
        self.odf_csv = None
        self.csvs_readable = None
        self.operator_config = None
        self.deployment = None
        self.pods = None
        self.scc = None
        self.crd = None
        self.crd_readable = True
        self.sms_served_versions = []
        self.sms = None
        self.sms_version = None
        self.service = None
        self.tls_secret = None
        self.ca_secret = None
        self.secrets_readable = True
        self.odf_configmap = None
        self.openshift_ca = None
        self.driver_imageset_cm = None
        self.operator_imageset_cm = None
        self.operator_pods = None


def _read(facts, what, func, default=None):
    try:
        return func()
    except KubeError as exc:
        if exc.forbidden:
            facts.forbidden.append("%s: %s" % (what, exc.api_message or "forbidden"))
            return default
        raise


def preferred_version(groups, group, preferred=("v1", "v1beta1", "v1alpha1")):
    versions = groups.get(group) or []
    for ver in preferred:
        if ver in versions:
            return ver
    return versions[0] if versions else None


def gather(api, st):
    """Read everything the diagnosis and the enable/disable steps need. Read-only."""
    facts = Facts()
    facts.server_version = api.server_version()
    facts.groups = api.api_groups()
    facts.openshift = any(g in facts.groups for g in OPENSHIFT_GROUPS)
    facts.namespace = _read(facts, "namespace %s" % st.namespace,
                            lambda: api.get(api_path("", "v1", "namespaces", st.namespace)), default=False)
    facts.namespace_exists = None if facts.namespace is False else facts.namespace is not None

    # ceph-csi-operator Driver, OperatorConfig and the ctrlplugin Deployment
    facts.driver_api_version = preferred_version(facts.groups, "csi.ceph.io")
    if facts.driver_api_version and facts.namespace_exists is not False:
        dpath = api_path("csi.ceph.io", facts.driver_api_version, "drivers", st.driver, st.namespace)
        facts.driver = _read(facts, "Driver %s/%s" % (st.namespace, st.driver), lambda: api.get(dpath),
                             default=False)
        facts.driver_readable = facts.driver is not False
        if facts.driver is False:
            facts.driver = None
        elif facts.driver is None:
            items = _read(facts, "Drivers in %s" % st.namespace, lambda: api.list(
                api_path("csi.ceph.io", facts.driver_api_version, "drivers", namespace=st.namespace)), default=[])
            facts.drivers_in_namespace = [(i.get("metadata") or {}).get("name") for i in items]
        facts.operator_config = _read(facts, "OperatorConfig %s/%s" % (st.operator_namespace, OPERATOR_CONFIG_NAME),
                                      lambda: api.get(api_path("csi.ceph.io", facts.driver_api_version,
                                                               "operatorconfigs", OPERATOR_CONFIG_NAME,
                                                               st.operator_namespace)))
    if facts.namespace_exists is not False:
        facts.deployment = _read(facts, "Deployment %s/%s" % (st.namespace, st.deployment_name), lambda: api.get(
            api_path("apps", "v1", "deployments", st.deployment_name, st.namespace)))
        if facts.deployment is not None:
            sel = ((facts.deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if sel:
                facts.pods = _read(facts, "Pods of %s" % st.deployment_name, lambda: api.list(
                    api_path("", "v1", "pods", namespace=st.namespace), label_selector=_labels_selector(sel)))

    # OLM: operator and ODF versions
    if "operators.coreos.com" in facts.groups:
        csvs = _read(facts, "ClusterServiceVersions in %s" % st.operator_namespace, lambda: api.list(
            api_path("operators.coreos.com", "v1alpha1", "clusterserviceversions", namespace=st.operator_namespace)))
        facts.csvs_readable = csvs is not None
        csvs = csvs or []
        facts.operator_csv = pick_csv(csvs, OPERATOR_CSV_PREFIX)
        facts.odf_csv = pick_csv(csvs, ODF_CSV_PREFIX)

    # OpenShift SCC
    if "security.openshift.io" in facts.groups:
        facts.scc = _read(facts, "SecurityContextConstraints %s" % st.scc_name, lambda: api.get(
            api_path("security.openshift.io", "v1", "securitycontextconstraints", st.scc_name)))

    # SnapshotMetadataService CRD and the CR named after the driver
    crd = _read(facts, "CustomResourceDefinition %s" % crds.CRD_NAME, lambda: api.get(
        api_path("apiextensions.k8s.io", "v1", "customresourcedefinitions", crds.CRD_NAME)), default=False)
    if crd is False:
        facts.crd_readable = False
        facts.crd = None
        facts.sms_served_versions = [v for v in crds.KNOWN_VERSIONS if v in (facts.groups.get(crds.GROUP) or [])]
    else:
        facts.crd = crd
        facts.sms_served_versions = crds.served_versions(crd) if crd else []
    for ver in reversed([v for v in crds.KNOWN_VERSIONS if v in facts.sms_served_versions]):
        sms = _read(facts, "SnapshotMetadataService %s" % st.driver, lambda v=ver: api.get(
            api_path(crds.GROUP, v, crds.PLURAL, st.driver)))
        if sms is not None:
            facts.sms, facts.sms_version = sms, ver
        break

    # Service, TLS material, ODF >= 4.23 ConfigMap, OpenShift service CA, image sets
    if facts.namespace_exists is not False:
        ns = st.namespace
        facts.service = _read(facts, "Service %s/%s" % (ns, st.service_name), lambda: api.get(
            api_path("", "v1", "services", st.service_name, ns)))
        before = len(facts.forbidden)
        facts.tls_secret = _read(facts, "Secret %s/%s" % (ns, st.tls_secret_name), lambda: api.get(
            api_path("", "v1", "secrets", st.tls_secret_name, ns)))
        facts.ca_secret = _read(facts, "Secret %s/%s" % (ns, st.ca_secret_name), lambda: api.get(
            api_path("", "v1", "secrets", st.ca_secret_name, ns)))
        facts.secrets_readable = len(facts.forbidden) == before
        facts.odf_configmap = _read(facts, "ConfigMap %s/%s" % (ns, st.driver), lambda: api.get(
            api_path("", "v1", "configmaps", st.driver, ns)))
        if facts.openshift:
            facts.openshift_ca = _read(facts, "ConfigMap %s/%s" % (ns, OPENSHIFT_CA_CONFIGMAP), lambda: api.get(
                api_path("", "v1", "configmaps", OPENSHIFT_CA_CONFIGMAP, ns)))
        imageset = (((facts.driver or {}).get("spec") or {}).get("imageSet") or {}).get("name")
        if imageset:
            facts.driver_imageset_cm = _read(facts, "ConfigMap %s/%s" % (ns, imageset), lambda: api.get(
                api_path("", "v1", "configmaps", imageset, ns)))
    op_imageset = ((((facts.operator_config or {}).get("spec") or {}).get("driverSpecDefaults") or {})
                   .get("imageSet") or {}).get("name")
    if op_imageset:
        facts.operator_imageset_cm = _read(
            facts, "ConfigMap %s/%s" % (st.operator_namespace, op_imageset), lambda: api.get(
                api_path("", "v1", "configmaps", op_imageset, st.operator_namespace)))
    return facts


# ----------------------------------------------------------------------------------------------
# interpreting the facts
# ----------------------------------------------------------------------------------------------
def odf_configmap_values(cm):
    """``(address, audience, ca_pem)`` from the ODF >= 4.23 ConfigMap named after the driver."""
    data = (cm or {}).get("data") or {}
    if data.get("address") and data.get("caCert"):
        return data.get("address"), data.get("audience"), data.get("caCert")
    return None


def secret_text(secret, key):
    data = ((secret or {}).get("data") or {}).get(key)
    if not data:
        return None
    try:
        return base64.b64decode(data).decode("ascii")
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def resolve_tls_provider(st, facts):
    if st.tls_provider != "auto":
        return st.tls_provider
    if odf_configmap_values(facts.odf_configmap):
        return "odf"
    if facts.openshift and ((facts.openshift_ca or {}).get("data") or {}).get(OPENSHIFT_CA_KEY):
        return "service_ca"
    return "self_managed"


def scc_allows_secret(scc):
    if scc is None:
        return None
    vols = scc.get("volumes") or []
    return "secret" in vols or "*" in vols


def volume_type_choice(st, facts):
    """``(type, reason)`` of the Driver's tls-key volume: ``secret``, or ``projected`` with a secret source."""
    if st.tls_volume_type != "auto":
        return st.tls_volume_type, "tls_volume_type=%s was requested" % st.tls_volume_type
    allows = scc_allows_secret(facts.scc)
    if allows is False:
        return "projected", "SecurityContextConstraints %s allows no secret volumes (only %s)" % (
            st.scc_name, ", ".join((facts.scc or {}).get("volumes") or []) or "none")
    if allows is None and facts.openshift:
        why = "reading it was denied" if any(f.startswith("SecurityContextConstraints") for f in facts.forbidden) \
            else "not found"
        # ceph-csi-op-scc of ODF 4.20 and 4.21 lists no secret volume type; a projected volume with a
        # secret source is admitted by it and by the later ones that allow secret volumes too
        return "projected", ("SecurityContextConstraints %s is unknown (%s), and the ceph-csi-op-scc of "
                             "ODF 4.20 and 4.21 admits no secret volumes: a projected volume is admitted either way; "
                             "set tls_volume_type to choose" % (st.scc_name, why))
    if allows:
        return "secret", "SecurityContextConstraints %s allows secret volumes" % st.scc_name
    return "secret", "not OpenShift: no SecurityContextConstraints restrict volume types"


def resolve_volume_type(st, facts):
    return volume_type_choice(st, facts)[0]


def operator_profile(st, facts):
    """Operator version, CBT support and the SMS API version(s) that must be served."""
    csv = facts.operator_csv
    version = _csv_version(csv) if csv else None
    perm = csv_grants_sms(csv) if csv else None
    prof = classify_operator(version, perm)
    if st.sms_api_version != "auto":
        prof["sms_api_version"] = st.sms_api_version
    prof["version"] = version
    prof["sms_permission"] = perm
    return prof


def expected_sidecar_image(st, facts, prof):
    """The image the operator will use for the sidecar, and where that comes from."""
    if st.sidecar_image:
        return st.sidecar_image, "sidecar_image option"
    cm = facts.driver_imageset_cm
    if cm and ((cm.get("data") or {}).get(IMAGE_KEY)):
        return cm["data"][IMAGE_KEY], "Driver imageSet ConfigMap %s" % cm["metadata"]["name"]
    cm = facts.operator_imageset_cm
    if cm and ((cm.get("data") or {}).get(IMAGE_KEY)):
        return cm["data"][IMAGE_KEY], "OperatorConfig imageSet ConfigMap %s" % cm["metadata"]["name"]
    tag = default_sidecar_tag(prof.get("version"))
    if tag:
        return "registry.k8s.io/sig-storage/csi-snapshot-metadata:%s" % tag, "operator default"
    return None, None


def required_sms_versions(prof, sidecar_version):
    """SMS API versions the CRD must serve for the operator and the sidecar to find the object."""
    req = []
    if prof.get("trigger") == "snapshotmetadataservice_and_tls_volume" and prof.get("sms_api_version"):
        req.append(prof["sms_api_version"])
    side = sidecar_sms_version(sidecar_version, prof.get("passes_audience"))
    if side and side not in req:
        req.append(side)
    return [v for v in crds.KNOWN_VERSIONS if v in req]


def diagnose(st, facts):
    """The ``diagnosis`` return value."""
    problems = []

    def problem(code, message, blocking=True):
        problems.append({"code": code, "message": message, "blocking": blocking})

    prof = operator_profile(st, facts)
    status = sidecar_status(facts.deployment, facts.pods)
    running = status.get("sidecar_image")
    expected, expected_src = expected_sidecar_image(st, facts, prof)
    effective = st.sidecar_image or running or expected
    sidecar_version = sidecar_version_of(effective, prof.get("version"))
    required = required_sms_versions(prof, sidecar_version)
    served = list(facts.sms_served_versions)
    missing_versions = [v for v in required if v not in served]
    tls_entry = tls_volume_of(facts.driver)
    vol_type, vol_secret = volume_secret(tls_entry)
    allows_secret = scc_allows_secret(facts.scc)
    vol_choice = volume_type_choice(st, facts)
    provider = resolve_tls_provider(st, facts)

    # -- the gates, most fundamental first
    if facts.namespace_exists is False:
        problem("namespace_missing", "namespace %s does not exist" % st.namespace)
    if not facts.driver_api_version:
        problem("driver_api_missing", "the csi.ceph.io API (ceph-csi-operator Driver CRD) is not installed: "
                "ceph-csi-operator (ODF 4.19 or later) must run in the cluster")
    elif not facts.driver_readable:
        problem("driver_unreadable", "Driver %s/%s could not be read (RBAC)" % (st.namespace, st.driver))
    elif facts.driver is None and facts.namespace_exists is not False:
        problem("driver_missing", "Driver %s not found in namespace %s (Drivers there: %s)" % (
            st.driver, st.namespace, ", ".join(facts.drivers_in_namespace) or "none"))
    if prof["supports_cbt"] is False:
        problem("operator_unsupported", prof["reason"])
    if facts.csvs_readable is False and st.sms_api_version == "auto":
        problem("operator_unknown", "the cephcsi-operator ClusterServiceVersion in %s could not be read; "
                "the operator's CBT support is unknown" % st.operator_namespace, blocking=False)
    elif facts.operator_csv is None and "operators.coreos.com" in facts.groups:
        problem("operator_unknown", "no cephcsi-operator ClusterServiceVersion in namespace %s: the operator "
                "version is unknown (set operator_namespace, or sms_api_version if it is not OLM-managed)"
                % st.operator_namespace, blocking=False)
    if facts.crd is None and not served:
        problem("crd_missing", "the SnapshotMetadataService CRD (%s) is not installed" % crds.CRD_NAME)
    elif missing_versions:
        who = []
        if prof.get("sms_api_version") in missing_versions and \
                prof.get("trigger") == "snapshotmetadataservice_and_tls_volume":
            who.append("the cephcsi-operator %s reads %s" % (
                version_str(prof.get("version")) or "(unknown version)", prof["sms_api_version"]))
        side_v = sidecar_sms_version(sidecar_version, prof.get("passes_audience"))
        if side_v in missing_versions:
            who.append("the %s sidecar %s reads %s" % (SIDECAR, version_str(sidecar_version), side_v))
        problem("crd_version_mismatch",
                "CRD version trap: the SnapshotMetadataService CRD serves only %s but %s. A missing API "
                "version looks like 'no SnapshotMetadataService' to the operator, which then silently "
                "never adds the sidecar (and a sidecar reading a missing version fails every RPC). Serve %s "
                "as well: set crd_add_missing_versions=true, or install the CRD of external-snapshot-metadata "
                "v0.1.0/v0.2.0 (v1alpha1) or v1.x (v1beta1) that matches" % (
                    ", ".join(served), " and ".join(who), ", ".join(missing_versions)))
    if facts.sms is None:
        problem("sms_missing", "no SnapshotMetadataService named %s" % st.driver)
    if tls_entry is None:
        problem("tls_volume_missing", "Driver %s has no '%s' volume in spec.controllerPlugin.volumes"
                % (st.driver, TLS_VOLUME))
    elif vol_type == "secret" and allows_secret is False:
        problem("scc_forbids_secret_volume",
                "Driver %s mounts '%s' as a secret volume but SecurityContextConstraints %s allows only %s: "
                "the ctrlplugin pods will not be admitted; use a projected volume (tls_volume_type=projected)"
                % (st.driver, TLS_VOLUME, st.scc_name, ", ".join((facts.scc or {}).get("volumes") or [])))
    if provider != "odf" and facts.service is None:
        problem("service_missing", "Service %s/%s in front of port %d is missing"
                % (st.namespace, st.service_name, SIDECAR_PORT))
    if facts.deployment is None and facts.driver is not None:
        problem("ctrlplugin_missing", "Deployment %s/%s (the RBD controller plugin) does not exist"
                % (st.namespace, st.deployment_name))
    elif facts.deployment is not None and not status["sidecar_present"]:
        problem("sidecar_missing", "Deployment %s has %d containers (%s) and no %s: the operator adds it only "
                "when its conditions hold, and it does not watch SnapshotMetadataService objects, so after "
                "creating one the Driver must change or the operator restart" % (
                    st.deployment_name, status["container_count"], ", ".join(status["containers"]), SIDECAR))
    elif status["sidecar_present"] and not status["sidecar_tls_mounted"]:
        problem("sidecar_without_tls", "the %s container does not mount %s (the Driver's %s volume was absent "
                "when the operator added it)" % (SIDECAR, TLS_MOUNT_PATH, TLS_VOLUME))
    elif status["sidecar_present"] and not status["sidecar_ready"]:
        problem("sidecar_not_ready", "the %s container is not ready yet (rollout complete: %s, conditions: %s)"
                % (SIDECAR, status["rollout_complete"], "; ".join(status["conditions"]) or "none"))
    if st.sidecar_image and running and running != st.sidecar_image:
        problem("sidecar_image_mismatch", "the running %s image is %s, not %s" % (SIDECAR, running, st.sidecar_image))
    if sidecar_version is not None and sidecar_version < (0, 2, 0):
        problem("sidecar_name_based_delta", "sidecar %s (%s) expects the base snapshot *name* in GetMetadataDelta "
                "(v0.2.0+ expects the CSI handle); clients must use base_snapshot_mode=name, or set sidecar_image "
                "to v0.2.0 or later" % (version_str(sidecar_version), effective), blocking=False)

    blocking = [p for p in problems if p["blocking"]]
    enabled = bool(status["sidecar_ready"] and facts.sms is not None and not blocking)
    supported = prof["supports_cbt"]
    if supported is None and (status["sidecar_present"] or enabled):
        supported = True
    if blocking:
        reason = blocking[0]["message"]
    elif enabled:
        reason = "CBT is enabled: %s runs %s and SnapshotMetadataService %s points at %s" % (
            st.deployment_name, running, st.driver, ((facts.sms or {}).get("spec") or {}).get("address"))
    else:
        reason = "CBT is not enabled"
    if facts.forbidden:
        problem("forbidden", "some objects could not be read (RBAC): %s" % "; ".join(facts.forbidden),
                blocking=False)

    tls_info = {"provider": provider, "secret_name": st.tls_secret_name if provider != "odf" else vol_secret,
                "secret_present": facts.tls_secret is not None if facts.secrets_readable else None,
                "certificate": None}
    crt = secret_text(facts.tls_secret, "tls.crt")
    if crt and tls.HAS_CRYPTOGRAPHY:
        try:
            tls_info["certificate"] = tls.cert_info(crt)
        except tls.TlsError:
            tls_info["certificate"] = None
    sms_spec = (facts.sms or {}).get("spec") or {}
    odf_ver = _csv_version(facts.odf_csv) if facts.odf_csv else None
    return {
        "cbt_supported": supported,
        "cbt_enabled": enabled,
        "reason": reason,
        "problems": problems,
        "kubernetes": {"version": (facts.server_version or {}).get("gitVersion"), "openshift": facts.openshift},
        "odf": {"csv": ((facts.odf_csv or {}).get("metadata") or {}).get("name"), "version": version_str(odf_ver)},
        "operator": {
            "namespace": st.operator_namespace,
            "csv": ((facts.operator_csv or {}).get("metadata") or {}).get("name"),
            "version": version_str(prof.get("version")),
            "sms_permission": prof.get("sms_permission"),
            "supports_cbt": prof["supports_cbt"],
            "trigger": prof.get("trigger"),
            "sms_api_version": prof.get("sms_api_version"),
            "passes_audience": prof.get("passes_audience"),
        },
        "crd": {
            "name": crds.CRD_NAME,
            "present": bool(facts.crd) or bool(served),
            "served_versions": served,
            "storage_version": crds.storage_version(facts.crd) if facts.crd else None,
            "managed_by_us": is_ours(facts.crd) if facts.crd else False,
            "required_versions": required,
            "missing_versions": missing_versions,
        },
        "driver": {
            "name": st.driver,
            "namespace": st.namespace,
            "found": facts.driver is not None,
            "tls_volume": {"present": tls_entry is not None, "type": vol_type, "secret_name": vol_secret,
                           "mount_path": ((tls_entry or {}).get("mount") or {}).get("mountPath")},
            "image_set": (((facts.driver or {}).get("spec") or {}).get("imageSet") or {}).get("name"),
        },
        "ctrlplugin": dict(status, name=st.deployment_name, expected_sidecar_image=expected,
                           expected_sidecar_image_source=expected_src),
        "sidecar": {"image": effective, "version": version_str(sidecar_version),
                    "delta_base_field": delta_base_field(sidecar_version),
                    "reads_sms_version": sidecar_sms_version(sidecar_version, prof.get("passes_audience"))},
        "scc": {"name": st.scc_name, "found": facts.scc is not None,
                "volumes": (facts.scc or {}).get("volumes"), "allows_secret_volumes": allows_secret,
                "tls_volume_type": vol_choice[0], "tls_volume_type_reason": vol_choice[1]},
        "sms": {"name": st.driver, "present": facts.sms is not None, "api_version": facts.sms_version,
                "address": sms_spec.get("address"), "audience": sms_spec.get("audience"),
                "ca_cert_present": bool(sms_spec.get("caCert")), "managed_by_us": is_ours(facts.sms)},
        "service": {"name": st.service_name, "present": facts.service is not None,
                    "managed_by_us": is_ours(facts.service)},
        "tls": tls_info,
    }


# ----------------------------------------------------------------------------------------------
# argument specs shared by odf_cbt_enable and odf_cbt_info
# ----------------------------------------------------------------------------------------------
def lookup_argument_spec():
    """Options naming the objects (both modules)."""
    return dict(
        driver=dict(type="str", default="openshift-storage.rbd.csi.ceph.com"),
        namespace=dict(type="str", default="openshift-storage"),
        operator_namespace=dict(type="str"),
        scc_name=dict(type="str", default="ceph-csi-op-scc"),
        service_name=dict(type="str", default="csi-snapshot-metadata"),
        service_port=dict(type="int", default=6443),
        tls_secret_name=dict(type="str"),
        ca_secret_name=dict(type="str"),
        tls_provider=dict(type="str", default="auto", choices=["auto", "odf", "service_ca", "self_managed"]),
        sms_api_version=dict(type="str", default="auto", choices=["auto", "v1alpha1", "v1beta1"]),
        sidecar_image=dict(type="str"),
        cluster_domain=dict(type="str", default="cluster.local"),
    )


def enable_argument_spec():
    """Options of odf_cbt_enable on top of the lookup options."""
    spec = lookup_argument_spec()
    spec.update(
        state=dict(type="str", default="present", choices=["present", "absent"]),
        audience=dict(type="str"),
        address=dict(type="str"),
        cert_validity_days=dict(type="int", default=365),
        ca_validity_days=dict(type="int", default=3650),
        cert_renew_before_days=dict(type="int", default=30),
        tls_volume_type=dict(type="str", default="auto", choices=["auto", "secret", "projected"]),
        manage_crd=dict(type="bool", default=True),
        crd_add_missing_versions=dict(type="bool", default=False),
        remove_crd=dict(type="bool", default=True),
        reconcile_trigger=dict(type="str", default="annotate", choices=["annotate", "restart_operator", "none"]),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=300),
        wait_sleep=dict(type="float", default=5.0),
    )
    return spec
