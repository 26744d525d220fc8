# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes side of ``csi_snapshot_diff``: VolumeSnapshot / VolumeSnapshotContent lookups, the
SnapshotMetadataService (CR or ODF ConfigMap), ServiceAccount tokens, sidecar version detection
and the pod behind the service for a port-forward.

This utility is private to the cbt.toolkit collection. Callers check ``k8s.HAS_KUBERNETES`` first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import datetime
import re
import time

from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import ApiException, api_error_message

try:
    from kubernetes import client as k8s_client
except ImportError:  # the module reports missing_required_lib before using anything here
    k8s_client = None

try:
    # What the kubernetes client raises when the API server is not reached at all (connection refused,
    # DNS, timeouts, a certificate that fails verification): urllib3's MaxRetryError and kin.
    from urllib3.exceptions import HTTPError as ApiTransportError
    from urllib3.exceptions import MaxRetryError
    from urllib3.exceptions import SSLError as _Urllib3SSLError
except ImportError:  # urllib3 comes with kubernetes; without it nothing here runs
    class ApiTransportError(Exception):
        """Placeholder: urllib3 is not installed."""

    class MaxRetryError(ApiTransportError):
        """Placeholder: urllib3 is not installed."""

    class _Urllib3SSLError(ApiTransportError):
        """Placeholder: urllib3 is not installed."""

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"
SMS_GROUP = "cbt.storage.k8s.io"
SMS_VERSIONS = ("v1beta1", "v1alpha1")
SMS_PLURAL = "snapshotmetadataservices"
SIDECAR_CONTAINER = "csi-snapshot-metadata"
PEM_MARKER = "-----BEGIN CERTIFICATE-----"


class CsiDiffError(Exception):
    """A final error with a message that names the object and what to do."""

    def __init__(self, msg, **extra):
        super(CsiDiffError, self).__init__(msg)
        self.msg = msg
        self.extra = extra


def _status_of(exc):
    return getattr(exc, "status", None)


def _get(dct, *path):
    for key in path:
        if not isinstance(dct, dict):
            return None
        dct = dct.get(key)
    return dct


class SnapshotInfo:
    """A VolumeSnapshot and its bound VolumeSnapshotContent, with what is wrong with them."""

    def __init__(self, namespace, name):
        self.namespace = namespace
        self.name = name
        self.uid = None
        self.pvc = None
        self.class_name = None
        self.content_name = None
        self.driver = None
        self.handle = None
        self.restore_size = None
        self.creation_time = None          # VolumeSnapshot status.creationTime (RFC 3339 text)
        self.content_creation_time = None  # VolumeSnapshotContent status.creationTime (ns since the epoch)
        self.volume_handle = None          # VolumeSnapshotContent spec.source.volumeHandle (source volume)
        self.problem = None  # why the snapshot cannot be used, or None

    def as_dict(self):
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "persistent_volume_claim": self.pvc,
            "volume_snapshot_class": self.class_name,
            "volume_snapshot_content": self.content_name,
            "driver": self.driver,
            "snapshot_handle": self.handle,
            "restore_size": self.restore_size,
            "creation_time": self.creation_time,
            "source_volume_handle": self.volume_handle,
        }


class Discovery:
    def __init__(self, api_client):
        self.api_client = api_client
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.core = k8s_client.CoreV1Api(api_client)
        self.apps = k8s_client.AppsV1Api(api_client)
        self.discovery_api = k8s_client.DiscoveryV1Api(api_client)

    # ------------------------------------------------------------ snapshots

    def snapshot(self, namespace, name, role):
        """Look up a VolumeSnapshot and its content. Permission and connection problems raise;
        problems of the snapshot itself are recorded in ``info.problem``."""
        info = SnapshotInfo(namespace, name)
        what = "VolumeSnapshot %s/%s (%s)" % (namespace, name, role)
        try:
            vs = self.custom.get_namespaced_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace,
                                                          "volumesnapshots", name)
        except ApiException as exc:
            if _status_of(exc) == 404:
                info.problem = ("%s does not exist (or the VolumeSnapshot CRD snapshot.storage.k8s.io/v1 is not "
                                "installed)" % what)
                return info
            raise CsiDiffError(api_error_message(exc, "reading %s" % what) + (
                "; the Kubernetes user needs 'get' on volumesnapshots.snapshot.storage.k8s.io in namespace %s"
                % namespace if _status_of(exc) == 403 else ""))
        info.uid = _get(vs, "metadata", "uid")
        info.pvc = _get(vs, "spec", "source", "persistentVolumeClaimName")
        info.class_name = _get(vs, "spec", "volumeSnapshotClassName")
        status = vs.get("status") or {}
        info.restore_size = status.get("restoreSize")
        info.creation_time = status.get("creationTime")
        info.content_name = status.get("boundVolumeSnapshotContentName")
        if status.get("error"):
            err = status["error"]
            info.problem = "%s has an error: %s" % (what, err.get("message") if isinstance(err, dict) else err)
            return info
        if status.get("readyToUse") is not True:
            info.problem = "%s is not ready to use (status.readyToUse is %s)" % (what, status.get("readyToUse"))
            return info
        if not info.content_name:
            info.problem = "%s is not bound to a VolumeSnapshotContent (status.boundVolumeSnapshotContentName is empty)" % what
            return info
        try:
            vsc = self.custom.get_cluster_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents",
                                                        info.content_name)
        except ApiException as exc:
            if _status_of(exc) == 404:
                info.problem = "VolumeSnapshotContent %s bound to %s does not exist" % (info.content_name, what)
                return info
            raise CsiDiffError(api_error_message(exc, "reading VolumeSnapshotContent %s of %s" % (
                info.content_name, what)) + (
                "; the Kubernetes user needs cluster-wide 'get' on volumesnapshotcontents.snapshot.storage.k8s.io"
                if _status_of(exc) == 403 else ""))
        info.driver = _get(vsc, "spec", "driver")
        info.volume_handle = _get(vsc, "spec", "source", "volumeHandle")
        info.content_creation_time = _get(vsc, "status", "creationTime")
        ref = _get(vsc, "spec", "volumeSnapshotRef") or {}
        if ref.get("name") != name or ref.get("namespace") != namespace or (
                ref.get("uid") and info.uid and ref.get("uid") != info.uid):
            info.problem = ("VolumeSnapshotContent %s is bound to VolumeSnapshot %s/%s (uid %s), not to %s (uid %s)"
                            % (info.content_name, ref.get("namespace"), ref.get("name"), ref.get("uid"), what, info.uid))
            return info
        vsc_status = vsc.get("status") or {}
        info.handle = vsc_status.get("snapshotHandle")
        if vsc_status.get("error"):
            err = vsc_status["error"]
            info.problem = "VolumeSnapshotContent %s of %s has an error: %s" % (
                info.content_name, what, err.get("message") if isinstance(err, dict) else err)
        elif vsc_status.get("readyToUse") is not True:
            info.problem = "VolumeSnapshotContent %s of %s is not ready to use" % (info.content_name, what)
        elif not info.handle:
            info.problem = "VolumeSnapshotContent %s of %s has no status.snapshotHandle" % (info.content_name, what)
        return info

    # ------------------------------------------------------------ SnapshotMetadataService

    def metadata_service(self, driver, config_map_namespace=None):
        """The SnapshotMetadataService for ``driver``: its CR (v1beta1, then v1alpha1), else the ODF
        4.23+ ConfigMap named after the driver. Returns a dict or None when nothing exists."""
        last_error = None
        for version in SMS_VERSIONS:
            try:
                obj = self.custom.get_cluster_custom_object(SMS_GROUP, version, SMS_PLURAL, driver)
            except ApiException as exc:
                if _status_of(exc) == 404:
                    continue
                if _status_of(exc) == 403:
                    last_error = exc
                    continue
                raise CsiDiffError(api_error_message(exc, "reading SnapshotMetadataService %s (%s/%s)" % (
                    driver, SMS_GROUP, version)))
            spec = obj.get("spec") or {}
            return {
                "source": "SnapshotMetadataService %s (%s/%s)" % (driver, SMS_GROUP, version),
                "kind": "SnapshotMetadataService",
                "api_version": "%s/%s" % (SMS_GROUP, version),
                "name": driver,
                "address": spec.get("address"),
                "audience": spec.get("audience"),
                "ca_cert": spec.get("caCert"),
            }
        if config_map_namespace:
            try:
                cm = self.core.read_namespaced_config_map(driver, config_map_namespace)
            except ApiException as exc:
                if _status_of(exc) not in (403, 404):
                    raise CsiDiffError(api_error_message(exc, "reading ConfigMap %s/%s" % (config_map_namespace, driver)))
                if _status_of(exc) == 403 and last_error is None:
                    last_error = exc
                cm = None
            if cm is not None and cm.data and cm.data.get("address"):
                return {
                    "source": "ConfigMap %s/%s" % (config_map_namespace, driver),
                    "kind": "ConfigMap",
                    "api_version": "v1",
                    "name": driver,
                    "address": cm.data.get("address"),
                    "audience": cm.data.get("audience"),
                    "ca_cert": cm.data.get("caCert"),
                }
        if last_error is not None:
            raise CsiDiffError("%s; the Kubernetes user needs 'get' on snapshotmetadataservices.cbt.storage.k8s.io"
                               % api_error_message(last_error, "reading SnapshotMetadataService %s" % driver))
        return None

    # ------------------------------------------------------------ tokens

    def service_account_from_credentials(self):
        """``(namespace, name)`` of the ServiceAccount the Kubernetes credentials belong to, or None."""
        try:
            review = k8s_client.AuthenticationV1Api(self.api_client).create_self_subject_review(
                k8s_client.V1SelfSubjectReview())
        except (ApiException, AttributeError, ValueError):
            return None
        username = getattr(getattr(getattr(review, "status", None), "user_info", None), "username", None) or ""
        parts = username.split(":")
        if len(parts) == 4 and parts[0] == "system" and parts[1] == "serviceaccount":
            return parts[2], parts[3]
        return None

    # ------------------------------------------------------------ service, pods, sidecar version

    def service_for_address(self, address):
        """``(namespace, name, port, service)`` when ``address`` names a Service
        (``<svc>.<ns>[.svc[.<domain>]]:<port>``), else None."""
        host, port = split_address(address)
        parts = host.split(".")
        if len(parts) < 2 or re.match(r"^[0-9.]+$", host) or ":" in host:
            return None
        if len(parts) > 2 and parts[2] != "svc":
            return None
        name, namespace = parts[0], parts[1]
        try:
            svc = self.core.read_namespaced_service(name, namespace)
        except ApiException as exc:
            if _status_of(exc) in (403, 404):
                return None
            raise CsiDiffError(api_error_message(exc, "reading Service %s/%s" % (namespace, name)))
        return namespace, name, port, svc

    def sidecar_version(self, address):
        """Find the csi-snapshot-metadata image behind the service address.

        Returns ``(version_tuple or None, evidence)``; the evidence says where it looked."""
        found = self.service_for_address(address)
        if found is None:
            return None, "the address %s does not name a readable Service" % address
        namespace, name, _port, svc = found
        selector = (svc.spec.selector or {}) if svc.spec else {}
        if not selector:
            return None, "Service %s/%s has no selector" % (namespace, name)
        images = []
        try:
            for dep in self.apps.list_namespaced_deployment(namespace).items:
                labels = (dep.spec.template.metadata.labels or {}) if dep.spec and dep.spec.template.metadata else {}
                if all(labels.get(k) == v for k, v in selector.items()):
                    images.extend(("Deployment %s/%s" % (namespace, dep.metadata.name), c)
                                  for c in dep.spec.template.spec.containers or [])
        except ApiException as exc:
            if _status_of(exc) not in (403, 404):
                raise CsiDiffError(api_error_message(exc, "listing Deployments in %s" % namespace))
        if not images:
            label_selector = ",".join("%s=%s" % kv for kv in sorted(selector.items()))
            try:
                for pod in self.core.list_namespaced_pod(namespace, label_selector=label_selector).items:
                    images.extend(("Pod %s/%s" % (namespace, pod.metadata.name), c) for c in pod.spec.containers or [])
            except ApiException as exc:
                if _status_of(exc) not in (403, 404):
                    raise CsiDiffError(api_error_message(exc, "listing Pods in %s" % namespace))
        for owner, container in images:
            image = container.image or ""
            if container.name == SIDECAR_CONTAINER or "snapshot-metadata" in image.rsplit("/", 1)[-1]:
                where = "image %s of container %s in %s" % (image, container.name, owner)
                tag = image_tag(image)
                if tag is None:
                    return None, "%s has no version tag" % where
                if not is_upstream_sidecar_image(image):
                    # A downstream build (ODF's ose-csi-external-snapshot-metadata-rhel9:v4.20) is tagged
                    # with the product version, which says nothing about the sidecar version inside.
                    return None, ("%s is not the upstream %s image, so its tag %s is not the sidecar version"
                                  % (where, SIDECAR_CONTAINER, tag))
                version = parse_image_version(image)
                if version is not None:
                    return version, where
                return None, "%s has no version tag (tag %s)" % (where, tag)
        return None, "no %s container found behind Service %s/%s" % (SIDECAR_CONTAINER, namespace, name)

    def port_forward_target(self, address):
        """``(namespace, pod, port)`` of a ready pod serving the Service named by ``address``."""
        found = self.service_for_address(address)
        if found is None:
            raise CsiDiffError("transport port_forward needs the SnapshotMetadataService address to name a readable "
                               "Service as <service>.<namespace>[.svc]:<port>, got %s; the Kubernetes user needs 'get' "
                               "on services; or use transport: direct from inside the cluster" % address)
        namespace, name, port, svc = found
        svc_port = None
        for sp in svc.spec.ports or []:
            if sp.port == port:
                svc_port = sp
        if svc_port is None:
            raise CsiDiffError("Service %s/%s has no port %d (from address %s)" % (namespace, name, port, address))
        target = svc_port.target_port if svc_port.target_port is not None else port
        try:
            slices = self.discovery_api.list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=%s" % name).items
        except ApiException as exc:
            raise CsiDiffError("%s; the Kubernetes user needs 'list' on endpointslices.discovery.k8s.io"
                               % api_error_message(exc, "listing EndpointSlices of Service %s/%s" % (namespace, name)))
        for eps in slices:
            number = None
            for ep_port in eps.ports or []:
                if (ep_port.name or None) == (svc_port.name or None):
                    number = ep_port.port
            if number is None:
                number = target if isinstance(target, int) else None
            for ep in eps.endpoints or []:
                ready = ep.conditions.ready if ep.conditions is not None else True
                ref = ep.target_ref
                if ready is not False and ref is not None and ref.kind == "Pod" and number:
                    return ref.namespace or namespace, ref.name, int(number)
        raise CsiDiffError("Service %s/%s has no ready pod to port-forward to; check that the CSI controller with the "
                           "csi-snapshot-metadata sidecar is running" % (namespace, name))


class TokenSource:
    """ServiceAccount tokens for the service's audience (TokenRequest API), re-minted near expiry.

    The token is handed to ``on_token`` (the module adds it to ``no_log_values``) and never
    appears in messages."""

    def __init__(self, api_client, namespace, name, audience, expiration_seconds=3600, on_token=None,
                 clock=time.time):
        self.core = k8s_client.CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.audience = audience
        self.expiration_seconds = expiration_seconds
        self.on_token = on_token
        self.clock = clock
        self._token = None
        self._expires = 0.0
        self.minted = 0

    def get(self, force=False):
        margin = max(30.0, self.expiration_seconds * 0.1)
        if self._token is None or force or self.clock() >= self._expires - margin:
            self._mint()
        return self._token

    def _mint(self):
        body = k8s_client.AuthenticationV1TokenRequest(spec=k8s_client.V1TokenRequestSpec(
            audiences=[self.audience], expiration_seconds=self.expiration_seconds))
        sa = "ServiceAccount %s/%s" % (self.namespace, self.name)
        try:
            resp = self.core.create_namespaced_service_account_token(self.name, self.namespace, body)
        except ApiException as exc:
            hint = ""
            if _status_of(exc) == 403:
                hint = "; the Kubernetes user needs 'create' on serviceaccounts/token in namespace %s" % self.namespace
            elif _status_of(exc) == 404:
                hint = "; create the ServiceAccount or set service_account to an existing one"
            raise CsiDiffError(api_error_message(exc, "requesting a token for %s with audience '%s'" % (
                sa, self.audience)) + hint)
        token = getattr(getattr(resp, "status", None), "token", None)
        if not token:
            raise CsiDiffError("the TokenRequest for %s returned no token" % sa)
        if self.on_token is not None:
            self.on_token(token)
        self._token = token
        self.minted += 1
        expires = getattr(resp.status, "expiration_timestamp", None)
        if isinstance(expires, datetime.datetime):
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=datetime.timezone.utc)
            self._expires = (expires - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds()
        else:
            self._expires = self.clock() + self.expiration_seconds


def split_address(address):
    """``host:port`` (or ``[v6]:port``) -> ``(host, port)``."""
    text = (address or "").strip()
    if "://" in text:
        raise ValueError("address %r must be host:port without a scheme" % address)
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _sep, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("address %r is not host:port" % address)
    return host, int(port)


def image_tag(image):
    """The tag of an image reference (``registry:5000/a/b:v1@sha256:...`` -> ``v1``), or None."""
    last = (image or "").split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    return last.rsplit(":", 1)[1] or None


def is_upstream_sidecar_image(image):
    """Whether the image repository's last path component is exactly ``csi-snapshot-metadata``: only
    the upstream image (``registry.k8s.io/sig-storage/csi-snapshot-metadata``) is tagged with the
    sidecar version. Same rule as ``_odf_diagnosis.sidecar_version_of``."""
    last = (image or "").split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0] == SIDECAR_CONTAINER


def parse_image_version(image):
    """Sidecar version carried by an image tag: ``registry/sig-storage/csi-snapshot-metadata:v1.1.0``
    -> ``(1, 1, 0)``. None without a version tag, and None for any other image than the upstream
    ``csi-snapshot-metadata`` (a downstream tag such as ODF's ``v4.20`` is a product version)."""
    if not is_upstream_sidecar_image(image):
        return None
    return parse_version(image_tag(image))


def parse_version(text):
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", (text or "").strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def decode_ca(value, source):
    """PEM bytes from a caCert value: base64 of PEM (the SMS CR, as JSON gives it) or PEM itself
    (the ODF ConfigMap, a file)."""
    if value is None or value == "":
        raise CsiDiffError("%s has no caCert; set sms_ca_cert to the CA bundle (PEM) of the sidecar's certificate" % source)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value.strip()
    if PEM_MARKER not in text:
        try:
            text = base64.b64decode("".join(text.split()), validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise CsiDiffError("caCert of %s is neither PEM nor base64-encoded PEM" % source)
    if PEM_MARKER not in text:
        raise CsiDiffError("caCert of %s does not contain a PEM certificate (%s)" % (source, PEM_MARKER))
    return text.strip().encode("utf-8") + b"\n"


_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$")


def parse_creation_time(value):
    """A VolumeSnapshot ``status.creationTime`` (RFC 3339 text) as an aware datetime, or None."""
    match = _RFC3339.match(str(value).strip()) if value else None
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    offset = datetime.timedelta(0)
    if match.group(9):
        offset = datetime.timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        if match.group(9) == "-":
            offset = -offset
    try:
        return datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=datetime.timezone(offset))
    except ValueError:
        return None


def _content_time(value):
    """A VolumeSnapshotContent ``status.creationTime`` (int64 nanoseconds) as an int, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _content_time_text(nanoseconds):
    seconds, nanos = divmod(nanoseconds, 10 ** 9)
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return "%s.%09dZ" % (moment.strftime("%Y-%m-%dT%H:%M:%S"), nanos)


def snapshot_order_problem(base, target):
    """Why ``base`` cannot be the base of a delta to ``target`` because it was taken after it, or None.

    Compares the VolumeSnapshots' ``status.creationTime`` (second precision); on a tie, or when
    one is missing, the VolumeSnapshotContents' ``status.creationTime`` (nanoseconds, from the
    driver). Equal or absent times are accepted: the order is then unknown, not wrong."""
    base_vs, target_vs = parse_creation_time(base.creation_time), parse_creation_time(target.creation_time)
    base_vsc, target_vsc = _content_time(base.content_creation_time), _content_time(target.content_creation_time)
    later = None
    if base_vs is not None and target_vs is not None and base_vs != target_vs:
        if base_vs > target_vs:
            later = ("VolumeSnapshot status.creationTime", base.creation_time, target.creation_time)
    elif base_vsc is not None and target_vsc is not None and base_vsc > target_vsc:
        later = ("VolumeSnapshotContent status.creationTime, %s and %s" % (base.content_name, target.content_name),
                 _content_time_text(base_vsc), _content_time_text(target_vsc))
    if later is None:
        return None
    source, base_text, target_text = later
    return ("base VolumeSnapshot %s/%s was created at %s, after the target VolumeSnapshot %s/%s (created at %s; "
            "from %s): a delta lists the changes from an earlier base to a later target; swap base_snapshot and "
            "snapshot" % (base.namespace, base.name, base_text, target.namespace, target.name, target_text, source))


def same_volume_problem(base, target):
    """Why ``base`` and ``target`` are not snapshots of the same volume, or None.

    The source volume handles of the VolumeSnapshotContents (``spec.source.volumeHandle``) decide
    when both are known: they tell a PVC deleted and recreated under the same name apart. Without
    them (pre-provisioned contents) the PVC names of the VolumeSnapshots are compared."""
    if base.volume_handle and target.volume_handle:
        if base.volume_handle == target.volume_handle:
            return None
        if base.pvc and base.pvc == target.pvc:
            return ("base VolumeSnapshot %s/%s and the target %s are both of PVC %s, but of different volumes: "
                    "volume handle %s (VolumeSnapshotContent %s) and %s (VolumeSnapshotContent %s); the PVC was "
                    "deleted and recreated under the same name after the base was taken, so the base cannot serve "
                    "a delta: copy the target in full (no base_snapshot) and use snapshots of the new volume as "
                    "bases from now on" % (base.namespace, base.name, target.name, base.pvc, base.volume_handle,
                                           base.content_name, target.volume_handle, target.content_name))
        return ("base VolumeSnapshot %s/%s is of PVC %s (volume handle %s, VolumeSnapshotContent %s) but the target "
                "%s is of PVC %s (volume handle %s, VolumeSnapshotContent %s): a delta needs two snapshots of the "
                "same volume" % (base.namespace, base.name, base.pvc, base.volume_handle, base.content_name,
                                 target.name, target.pvc, target.volume_handle, target.content_name))
    if base.pvc and target.pvc and base.pvc != target.pvc:
        return ("base VolumeSnapshot %s/%s is of PVC %s but the target %s is of PVC %s: a delta needs two snapshots "
                "of the same volume" % (base.namespace, base.name, base.pvc, target.name, target.pvc))
    return None


def api_unreachable_message(exc, api_client=None):
    """Explain a urllib3 error of the kubernetes client (the API server was not reached, or its
    certificate failed verification): the server, the cause, and what to check."""
    configuration = getattr(api_client, "configuration", None)
    host = getattr(configuration, "host", None) or "(unknown host)"
    cause = getattr(exc, "reason", None) if isinstance(exc, MaxRetryError) else None
    cause = cause if cause is not None else exc
    text = " ".join(str(cause).split())
    if len(text) > 400:
        text = text[:400] + "..."
    cause_text = "%s: %s" % (type(cause).__name__, text)
    url = getattr(exc, "url", None)
    request = (" (request %s)" % url) if url else ""
    if isinstance(cause, _Urllib3SSLError) or isinstance(exc, _Urllib3SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return ("the TLS certificate of the Kubernetes API server %s failed verification%s: %s; check the CA it is "
                "verified against (ca_cert, or certificate-authority[-data] of the kubeconfig context), that the "
                "kubeconfig context (or host) points to the intended cluster, and that the server name is in its "
                "certificate" % (host, request, cause_text))
    return ("the Kubernetes API server %s could not be reached%s: %s; check the kubeconfig context (or host / "
            "K8S_AUTH_HOST), that the API server is reachable from this host (network, proxy, firewall), and the "
            "CA its certificate is verified against (ca_cert, or certificate-authority[-data] of the kubeconfig)"
            % (host, request, cause_text))
