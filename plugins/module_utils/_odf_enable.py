# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private: make the snapshot-metadata sidecar of ceph-csi-operator exist (or go away).

Every object this collection creates carries ``app.kubernetes.io/managed-by: cbt.toolkit`` and is
written with server-side apply under the field manager ``cbt.toolkit``; conflicts are forced only
on objects that carry that label. Objects of other owners (the Driver CR, a CRD installed by
someone else) are changed with a merge or JSON patch that carries the ``resourceVersion`` read just
before, so a concurrent change by the operator makes the patch fail and be retried instead of
being overwritten. Changes are computed with a server-side dry run first, which gives honest
``changed``/diff results and makes check mode exact.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import copy
import datetime
import time

from ansible_collections.cbt.toolkit.plugins.module_utils import _crds_sms as crds
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_tls as tls
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import (
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, MERGE_PATCH, FIELD_MANAGER, KubeError, api_path, is_ours)

OUR_LABELS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, "app.kubernetes.io/part-of": "cbt.toolkit",
              "app.kubernetes.io/component": "snapshot-metadata"}
_VOLATILE_META = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")


GRACE_SECONDS = 10


def _needs_reconcile(status, expected_image):
    """Why the operator must (re)build the ctrlplugin Deployment, or None."""
    if not status["found"]:
        return "ctrlplugin Deployment missing"
    if not status["sidecar_present"]:
        return "sidecar missing"
    if not status["sidecar_tls_mounted"]:
        return "sidecar without TLS mount"
    if expected_image and status["sidecar_image"] != expected_image:
        return "sidecar image differs"
    return None


class EnableError(Exception):
    """A failure whose message names the object and what to do; ``extra`` goes into the result."""

    def __init__(self, msg, **extra):
        super(EnableError, self).__init__(msg)
        self.extra = extra


def _meta(obj):
    return (obj or {}).get("metadata") or {}


def normalize(obj):
    """An object without server bookkeeping, for comparisons and diffs."""
    if obj is None:
        return None
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for key in _VOLATILE_META:
        meta.pop(key, None)
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    if not meta.get("labels"):
        meta.pop("labels", None)
    return out


def redact(obj):
    """Secrets are shown by fingerprint only."""
    if obj is None or obj.get("kind") != "Secret":
        return obj
    out = copy.deepcopy(obj)
    for field in ("data", "stringData"):
        if out.get(field):
            out[field] = dict((k, "<redacted %s>" % tls.fingerprint(v or "")) for k, v in out[field].items())
    return out


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(text):
    return base64.b64encode(text.encode("ascii")).decode("ascii")


class Engine(object):
    """One run of odf_cbt_enable: plan (check mode) or apply, and record actions and diffs."""

    def __init__(self, api, st, check_mode=False, warn=None, sleep=time.sleep, clock=time.monotonic):
        self.api = api
        self.st = st
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.sleep = sleep
        self.clock = clock
        self.actions = []
        self.diffs = []
        self.tls_result = {}
        self.sms_result = {}

    # ------------------------------------------------------------------------------------------
    # recording
    # ------------------------------------------------------------------------------------------
    def _record(self, action, kind, name, before=None, after=None, namespace=None):
        label = "%s %s" % (kind, ("%s/%s" % (namespace, name)) if namespace else name)
        verb = action if not self.check_mode else "would %s" % action
        self.actions.append("%s %s" % (verb, label))
        self.diffs.append({
            "before_header": "%s (before)" % label,
            "after_header": "%s (after)" % label,
            "before": redact(normalize(before)) or {},
            "after": redact(normalize(after)) or {},
        })

    @property
    def changed(self):
        return bool(self.actions)

    # ------------------------------------------------------------------------------------------
    # primitives
    # ------------------------------------------------------------------------------------------
    def apply(self, kind, path, desired, current, force, namespace=None):
        """Server-side apply ``desired`` if the dry run says it changes something. True if changed."""
        name = desired["metadata"]["name"]
        what = "apply %s %s" % (kind, ("%s/%s" % (namespace, name)) if namespace else name)
        try:
            planned = self.api.apply(path, desired, force=force, dry_run=True, what=what)
        except KubeError as exc:
            if exc.conflict:
                raise EnableError(
                    "%s: the object exists and other field managers own fields this module sets (%s). It was not "
                    "created by cbt.toolkit (no %s=%s label), so its fields are not taken over: make them match, "
                    "or delete the object and re-run" % (what, exc.api_message, MANAGED_BY_LABEL, MANAGED_BY_VALUE))
            if self.check_mode and (exc.not_found or exc.forbidden):
                planned = desired if current is None else _merge(current, desired)
                if exc.forbidden:
                    self.warn("%s: the server-side dry run was refused (%s); the diff is approximate"
                              % (what, exc.api_message))
            else:
                raise
        if current is not None and normalize(current) == normalize(planned):
            return False
        self._record("create" if current is None else "update", kind, name, current, planned, namespace)
        if not self.check_mode:
            self.api.apply(path, desired, force=force, what=what)
        return True

    def delete(self, kind, path, current, namespace=None):
        if current is None:
            return False
        self._record("delete", kind, _meta(current).get("name"), current, None, namespace)
        if not self.check_mode:
            self.api.delete(path, what="delete %s %s" % (kind, _meta(current).get("name")))
        return True

    def patch_with_precondition(self, kind, path, build_patch, read, namespace=None, content_type=MERGE_PATCH):
        """Patch an object we do not own: ``build_patch(current)`` -> patch or None. Retries on conflict."""
        for attempt in range(4):
            current = read()
            if current is None:
                raise EnableError("%s %s disappeared while it was being changed; re-run" % (kind, path))
            body = build_patch(current)
            if body is None:
                return False
            name = _meta(current).get("name")
            what = "patch %s %s" % (kind, ("%s/%s" % (namespace, name)) if namespace else name)
            try:
                planned = self.api.patch(path, body, content_type=content_type, dry_run=True, what=what)
            except KubeError as exc:
                if exc.conflict and attempt < 3:
                    continue
                if self.check_mode and exc.forbidden:
                    planned = _merge(current, body)
                    self.warn("%s: the server-side dry run was refused (%s); the diff is approximate"
                              % (what, exc.api_message))
                else:
                    raise
            if normalize(planned) == normalize(current):
                return False
            if not self.check_mode:
                try:
                    planned = self.api.patch(path, body, content_type=content_type, what=what)
                except KubeError as exc:
                    if exc.conflict and attempt < 3:
                        continue
                    raise
            self._record("update", kind, name, current, planned, namespace)
            return True
        raise EnableError("%s %s kept changing while it was being patched; re-run" % (kind, path))

    # ------------------------------------------------------------------------------------------
    # CRD
    # ------------------------------------------------------------------------------------------
    def crd_path(self):
        return api_path("apiextensions.k8s.io", "v1", "customresourcedefinitions", crds.CRD_NAME)

    def ensure_crd(self, facts, required):
        st = self.st
        crd = facts.crd
        if crd is None and not facts.crd_readable:
            served = facts.sms_served_versions
            if not served:
                raise EnableError("the SnapshotMetadataService CRD is not installed and this user may not read "
                                  "or create CustomResourceDefinitions: ask a cluster admin to run this with "
                                  "cluster-admin rights, or to install the CRD")
            if [v for v in required if v not in served]:
                raise EnableError("the SnapshotMetadataService CRD serves %s but %s is needed, and this user may "
                                  "not read CustomResourceDefinitions" % (", ".join(served), ", ".join(required)))
            return False
        if crd is None:
            if not st.manage_crd:
                raise EnableError("the SnapshotMetadataService CRD %s is not installed and manage_crd=false: "
                                  "install it (serving %s) or set manage_crd=true"
                                  % (crds.CRD_NAME, ", ".join(required) or "v1alpha1 and/or v1beta1"))
            changed = self.apply("CustomResourceDefinition", self.crd_path(), crds.sms_crd(labels=OUR_LABELS),
                                 None, force=True)
            self._wait_crd_established()
            return changed
        if is_ours(crd):
            changed = self.apply("CustomResourceDefinition", self.crd_path(), crds.sms_crd(labels=OUR_LABELS),
                                 crd, force=True)
            if changed:
                self._wait_crd_established()
            return changed
        served = crds.served_versions(crd)
        missing = [v for v in required if v not in served]
        if not missing:
            return False
        if not st.crd_add_missing_versions:
            raise EnableError(
                "CRD version trap: the SnapshotMetadataService CRD %s (not installed by cbt.toolkit) serves only %s, "
                "but %s must be served for the operator/sidecar in this cluster to find the object; with only %s the "
                "operator treats the SnapshotMetadataService as absent and never adds the sidecar. Set "
                "crd_add_missing_versions=true to add %s as a served version (same schema, no conversion needed), "
                "or install the matching upstream CRD" % (
                    crds.CRD_NAME, ", ".join(served), ", ".join(missing), ", ".join(served), ", ".join(missing)))
        changed = self.patch_with_precondition(
            "CustomResourceDefinition", self.crd_path(),
            lambda cur: self._crd_add_versions_patch(cur, missing),
            lambda: self.api.get(self.crd_path()))
        if changed:
            self._wait_crd_established()
        return changed

    @staticmethod
    def _crd_add_versions_patch(crd, versions):
        """A merge patch (with resourceVersion precondition) adding served versions to a CRD."""
        served = crds.served_versions(crd)
        todo = [v for v in versions if v not in served]
        if not todo:
            return None
        new = copy.deepcopy((crd.get("spec") or {}).get("versions") or [])
        names = [v.get("name") for v in new]
        for ver in todo:
            if ver in names:  # declared but not served
                new[names.index(ver)]["served"] = True
            else:
                new.append(crds.version_entry(ver, False))
        annotations = _meta(crd).get("annotations") or {}
        recorded = [v for v in annotations.get(dg.ADDED_VERSIONS_ANNOTATION, "").split(",") if v]
        return {"metadata": {"resourceVersion": _meta(crd).get("resourceVersion"),
                             "annotations": {dg.ADDED_VERSIONS_ANNOTATION: ",".join(sorted(set(recorded + todo)))}},
                "spec": {"versions": new}}

    def _wait_crd_established(self, timeout=60):
        if self.check_mode:
            return
        deadline = self.clock() + timeout
        while True:
            crd = self.api.get(self.crd_path())
            conds = ((crd or {}).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                ready = True
                for ver in crds.served_versions(crd):
                    try:
                        self.api.request("GET", api_path(crds.GROUP, ver, crds.PLURAL), query={"limit": "1"},
                                         what="list SnapshotMetadataServices %s" % ver)
                    except KubeError as exc:
                        if not exc.not_found:
                            raise
                        ready = False
                if ready:
                    self.api.forget_discovery()
                    return
            if self.clock() > deadline:
                raise EnableError("CustomResourceDefinition %s is not Established after %d s: conditions %s"
                                  % (crds.CRD_NAME, timeout, conds))
            self.sleep(0.5)

    # ------------------------------------------------------------------------------------------
    # TLS
    # ------------------------------------------------------------------------------------------
    def ensure_self_managed_tls(self, facts):
        """CA and server certificate Secrets; returns the CA PEM to publish."""
        st = self.st
        ns = st.namespace
        ca_path = api_path("", "v1", "secrets", st.ca_secret_name, ns)
        tls_path = api_path("", "v1", "secrets", st.tls_secret_name, ns)
        self.check_self_managed_secrets(facts)
        ca_crt = dg.secret_text(facts.ca_secret, "tls.crt") if is_ours(facts.ca_secret) else None
        ca_key = dg.secret_text(facts.ca_secret, "tls.key") if is_ours(facts.ca_secret) else None
        ca_problems = tls.ca_problems(ca_crt, ca_key, st.cert_renew_before_days)
        renewed_ca = False
        if ca_problems:
            ca_crt, ca_key = tls.generate_ca("cbt.toolkit snapshot-metadata CA for %s" % st.driver,
                                             st.ca_validity_days)
            renewed_ca = facts.ca_secret is not None
        ca_secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": st.ca_secret_name, "namespace": ns, "labels": dict(OUR_LABELS)},
            "data": {"tls.crt": _b64(ca_crt), "tls.key": _b64(ca_key)},
        }
        if facts.ca_secret is not None and not is_ours(facts.ca_secret):
            self.delete("Secret", ca_path, facts.ca_secret, ns)
            facts.ca_secret = None
        self.apply("Secret", ca_path, ca_secret, facts.ca_secret, force=True, namespace=ns)

        crt = key = None
        if is_ours(facts.tls_secret):
            crt = dg.secret_text(facts.tls_secret, "tls.crt")
            key = dg.secret_text(facts.tls_secret, "tls.key")
        problems = tls.server_cert_problems(crt, key, ca_crt, st.dns_names, st.cert_renew_before_days)
        if problems:
            crt, key = tls.issue_server_cert(ca_crt, ca_key, st.dns_names, st.cert_validity_days)
        tls_secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": st.tls_secret_name, "namespace": ns, "labels": dict(OUR_LABELS)},
            "data": {"tls.crt": _b64(crt), "tls.key": _b64(key), "ca.crt": _b64(ca_crt)},
        }
        if facts.tls_secret is not None and not is_ours(facts.tls_secret):
            # left over from the OpenShift service CA for our Service: ours to replace
            self.delete("Secret", tls_path, facts.tls_secret, ns)
            facts.tls_secret = None
        self.apply("Secret", tls_path, tls_secret, facts.tls_secret, force=True, namespace=ns)
        info = tls.cert_info(crt)
        self.tls_result = {
            "provider": "self_managed", "secret_name": st.tls_secret_name, "ca_secret_name": st.ca_secret_name,
            "renewed": bool(problems) and facts.tls_secret is not None, "renew_reasons": problems if facts.tls_secret
            is not None else [], "ca_renewed": renewed_ca, "ca_renew_reasons": ca_problems if renewed_ca else [],
            "not_after": info["not_after"], "dns_names": info["dns_names"],
            "ca_not_after": tls.cert_info(ca_crt)["not_after"],
        }
        return ca_crt

    def check_self_managed_secrets(self, facts, provider="self_managed"):
        """Secrets in the way that this module must not overwrite (self_managed) or mount without knowing
        where they come from (service_ca: only the TLS Secret, which the service CA must issue)."""
        st = self.st
        pairs = ((facts.ca_secret, "ca_secret_name"), (facts.tls_secret, "tls_secret_name"))
        if provider == "service_ca":
            pairs = pairs[1:]
        for secret, opt in pairs:
            origin = (_meta(secret).get("annotations") or {}).get(dg.SERVICE_CA_ORIGIN_ANNOTATION)
            if secret is not None and not is_ours(secret) and origin != st.service_name:
                if provider == "service_ca":
                    raise EnableError(
                        "Secret %s/%s exists and was created neither by cbt.toolkit nor by the OpenShift service "
                        "CA for Service %s (annotation %s is %s): the service CA does not overwrite it, so the "
                        "sidecar would serve a certificate of unknown origin; choose another tls_secret_name or "
                        "delete it" % (st.namespace, _meta(secret).get("name"), st.service_name,
                                       dg.SERVICE_CA_ORIGIN_ANNOTATION, repr(origin) if origin else "absent"))
                raise EnableError("Secret %s/%s exists and was not created by cbt.toolkit: choose another %s "
                                  "or delete it" % (st.namespace, _meta(secret).get("name"), opt))

    def service_ca_cert_info(self, facts):
        """Summary of the service CA's certificate in the TLS Secret, or ``None`` when none was issued yet;
        a certificate that does not parse fails with the Secret and what to do."""
        st = self.st
        if facts.tls_secret is None or is_ours(facts.tls_secret):
            return None  # none yet, or ours from self_managed, which is dropped for the service CA's
        crt = dg.secret_text(facts.tls_secret, "tls.crt")
        if not crt:
            return None
        try:
            return tls.cert_info(crt)
        except tls.TlsError as exc:
            raise EnableError("Secret %s/%s (tls_provider=service_ca) has a tls.crt that is not a readable PEM "
                              "certificate: %s; delete the Secret so that the OpenShift service CA issues it again "
                              "for Service %s" % (st.namespace, st.tls_secret_name, exc, st.service_name))

    def drop_self_managed_tls(self, facts):
        """Switching to the OpenShift service CA: our generated Secrets would block it."""
        ns = self.st.namespace
        if is_ours(facts.tls_secret):
            self.delete("Secret", api_path("", "v1", "secrets", self.st.tls_secret_name, ns), facts.tls_secret, ns)
            facts.tls_secret = None
        if is_ours(facts.ca_secret):
            self.delete("Secret", api_path("", "v1", "secrets", self.st.ca_secret_name, ns), facts.ca_secret, ns)
            facts.ca_secret = None

    # ------------------------------------------------------------------------------------------
    # Service, SMS, Driver
    # ------------------------------------------------------------------------------------------
    def service_manifest(self, provider):
        st = self.st
        meta = {"name": st.service_name, "namespace": st.namespace, "labels": dict(OUR_LABELS)}
        if provider == "service_ca":
            meta["annotations"] = {dg.SERVING_CERT_ANNOTATION: st.tls_secret_name}
        return {
            "apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": st.deployment_name},
                "ports": [{"name": "snapshot-metadata", "protocol": "TCP", "port": st.service_port,
                           "targetPort": dg.SIDECAR_PORT}],
            },
        }

    def ensure_service(self, facts, provider):
        st = self.st
        if facts.service is not None and not is_ours(facts.service):
            raise EnableError("Service %s/%s exists and was not created by cbt.toolkit: choose another "
                              "service_name or delete it" % (st.namespace, st.service_name))
        return self.apply("Service", api_path("", "v1", "services", st.service_name, st.namespace),
                          self.service_manifest(provider), facts.service, force=True, namespace=st.namespace)

    def ensure_sms(self, facts, prof, address, audience, ca_pem):
        st = self.st
        served = facts.sms_served_versions or list(crds.KNOWN_VERSIONS)
        version = prof.get("sms_api_version") if prof.get("sms_api_version") in served else served[-1]
        desired = crds.sms_object(st.driver, version, address, audience, _b64(ca_pem), labels=OUR_LABELS)
        current = facts.sms
        if current is not None:
            current = dict(current, apiVersion="%s/%s" % (crds.GROUP, version))
        self.sms_result = {"name": st.driver, "api_version": version, "address": address, "audience": audience}
        if current is not None and not is_ours(current):
            if (current.get("spec") or {}) == desired["spec"]:
                self.warn("SnapshotMetadataService %s exists, was not created by cbt.toolkit and already matches; "
                          "left as it is (state=absent will not remove it)" % st.driver)
                return False
            raise EnableError(
                "SnapshotMetadataService %s exists and was not created by cbt.toolkit, with a different spec "
                "(address %s, audience %s; wanted %s, %s): delete it, or make this module's options (address, "
                "audience, tls_provider) match it" % (
                    st.driver, (current.get("spec") or {}).get("address"),
                    (current.get("spec") or {}).get("audience"), address, audience))
        return self.apply("SnapshotMetadataService", api_path(crds.GROUP, version, crds.PLURAL, st.driver), desired,
                          current, force=True)

    def driver_path(self, facts):
        return api_path("csi.ceph.io", facts.driver_api_version, "drivers", self.st.driver, self.st.namespace)

    def tls_volume_entry(self, vol_type, secret_name):
        if vol_type == "projected":
            volume = {"name": dg.TLS_VOLUME, "projected": {"sources": [{"secret": {"name": secret_name}}]}}
        else:
            volume = {"name": dg.TLS_VOLUME, "secret": {"secretName": secret_name}}
        return {"volume": volume, "mount": {"name": dg.TLS_VOLUME, "mountPath": dg.TLS_MOUNT_PATH, "readOnly": True}}

    def ensure_driver(self, facts, vol_entry, imageset):
        """tls-key volume (and imageSet) on the Driver, patched with a resourceVersion precondition."""
        st = self.st

        def build(cur):
            spec = cur.get("spec") or {}
            cp = spec.get("controllerPlugin") or {}
            vols = list(cp.get("volumes") or [])
            new = []
            replaced = False
            for entry in vols:
                if ((entry.get("volume") or {}).get("name")) == dg.TLS_VOLUME:
                    if not replaced and vol_entry is not None:
                        new.append(vol_entry)
                    replaced = True
                    continue
                new.append(entry)
            if not replaced and vol_entry is not None:
                new.append(vol_entry)
            patch_spec = {}
            if vol_entry is not None and new != vols:
                patch_spec["controllerPlugin"] = {"volumes": new}
            if imageset is not None and (spec.get("imageSet") or {}).get("name") != imageset:
                patch_spec["imageSet"] = {"name": imageset}
            if not patch_spec:
                return None
            return {"metadata": {"resourceVersion": _meta(cur).get("resourceVersion")}, "spec": patch_spec}
        return self.patch_with_precondition("Driver", self.driver_path(facts), build,
                                            lambda: self.api.get(self.driver_path(facts)), st.namespace)

    def ensure_image(self, facts):
        """Point the sidecar image at ``sidecar_image``; returns the Driver imageSet name to set (or None)."""
        st = self.st
        ns = st.namespace
        cm = facts.driver_imageset_cm
        imageset = (((facts.driver or {}).get("spec") or {}).get("imageSet") or {}).get("name")
        if imageset and imageset != st.images_configmap:
            if cm is None:
                raise EnableError("Driver %s names imageSet ConfigMap %s/%s, which does not exist: fix the Driver "
                                  "or create it" % (st.driver, ns, imageset))
            # someone else's image set: own just our key in it
            desired = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": imageset, "namespace": ns},
                       "data": {dg.IMAGE_KEY: st.sidecar_image}}
            self.apply("ConfigMap", api_path("", "v1", "configmaps", imageset, ns), desired, cm, force=False,
                       namespace=ns)
            return None
        current = cm if imageset == st.images_configmap else None
        if current is None:
            current = self.api.get(api_path("", "v1", "configmaps", st.images_configmap, ns))
        desired = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": st.images_configmap, "namespace": ns, "labels": dict(OUR_LABELS)},
                   "data": {dg.IMAGE_KEY: st.sidecar_image}}
        if current is not None and not is_ours(current):
            raise EnableError("ConfigMap %s/%s exists and was not created by cbt.toolkit: choose another "
                              "service_name or delete it" % (ns, st.images_configmap))
        self.apply("ConfigMap", api_path("", "v1", "configmaps", st.images_configmap, ns), desired, current,
                   force=True, namespace=ns)
        return st.images_configmap

    # ------------------------------------------------------------------------------------------
    # reconcile trigger and waiting
    # ------------------------------------------------------------------------------------------
    def trigger(self, facts, reason):
        st = self.st
        mode = st.reconcile_trigger
        if mode == "none":
            self.warn("the operator must reconcile Driver %s (%s) but reconcile_trigger=none: annotate the Driver "
                      "or restart the ceph-csi-operator pod" % (st.driver, reason))
            return False
        if mode == "restart_operator":
            pods = self.api.list(api_path("", "v1", "pods", namespace=st.operator_namespace),
                                 label_selector=dg.OPERATOR_POD_LABEL)
            if not pods:
                raise EnableError("reconcile_trigger=restart_operator but no pod labelled %s runs in namespace %s: "
                                  "set operator_namespace, or use reconcile_trigger=annotate"
                                  % (dg.OPERATOR_POD_LABEL, st.operator_namespace))
            for pod in pods:
                name = _meta(pod).get("name")
                self.actions.append("%s pod %s/%s (operator restart: %s)" % (
                    "would delete" if self.check_mode else "deleted", st.operator_namespace, name, reason))
                if not self.check_mode:
                    self.api.delete(api_path("", "v1", "pods", name, st.operator_namespace),
                                    what="delete operator pod %s/%s" % (st.operator_namespace, name))
            return True
        stamp = _now_iso()

        def build(cur):
            return {"metadata": {"resourceVersion": _meta(cur).get("resourceVersion"),
                                 "annotations": {dg.RECONCILE_ANNOTATION: "%s %s" % (stamp, reason)}}}
        return self.patch_with_precondition("Driver", self.driver_path(facts), build,
                                            lambda: self.api.get(self.driver_path(facts)), st.namespace)

    def read_rollout(self):
        st = self.st
        deploy = self.api.get(api_path("apps", "v1", "deployments", st.deployment_name, st.namespace))
        pods = None
        if deploy is not None:
            sel = ((deploy.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if sel:
                try:
                    pods = self.api.list(api_path("", "v1", "pods", namespace=st.namespace),
                                         label_selector=dg._labels_selector(sel))
                except KubeError as exc:
                    if not exc.forbidden:
                        raise
        return deploy, pods

    def events_for(self, name_prefix, limit=12):
        st = self.st
        try:
            events = self.api.list(api_path("", "v1", "events", namespace=st.namespace))
        except KubeError:
            return []
        mine = [e for e in events if ((e.get("involvedObject") or {}).get("name") or "") == name_prefix or
                ((e.get("involvedObject") or {}).get("name") or "").startswith(name_prefix + "-")]

        def when(ev):
            return ev.get("lastTimestamp") or ev.get("eventTime") or _meta(ev).get("creationTimestamp") or ""
        mine.sort(key=when)
        out = []
        for ev in mine[-limit:]:
            obj = ev.get("involvedObject") or {}
            out.append("%s %s %s %s: %s" % (when(ev), ev.get("type"), ev.get("reason"),
                                            "%s/%s" % (obj.get("kind"), obj.get("name")), ev.get("message")))
        return out

    def wait_for(self, want_present, expected_image=None):
        """Wait until the sidecar is ready (or gone). Raises ``EnableError`` with containers and events."""
        st = self.st
        deadline = self.clock() + st.wait_timeout
        while True:
            deploy, pods = self.read_rollout()
            status = dg.sidecar_status(deploy, pods)
            if want_present:
                done = status["sidecar_ready"] and (not expected_image or status["sidecar_image"] == expected_image)
            else:
                done = deploy is None or (not status["sidecar_present"] and status["rollout_complete"])
            if done:
                return status
            if self.clock() >= deadline:
                break
            self.sleep(st.wait_sleep)
        events = self.events_for(st.deployment_name)
        hints = []
        text = " ".join(events)
        if "secret volumes are not allowed" in text or "unable to validate against any security context" in text:
            hints.append("the SCC refuses the tls-key volume type: use tls_volume_type=projected")
        if "FailedMount" in text:
            hints.append("a volume cannot be mounted: check that Secret %s/%s exists"
                         % (st.namespace, st.tls_secret_name))
        if want_present and deploy is not None and not status["sidecar_present"]:
            hints.append("the operator did not add the %s container: check the ceph-csi-operator logs (pods "
                         "labelled %s in %s), or retry with reconcile_trigger=restart_operator"
                         % (dg.SIDECAR, dg.OPERATOR_POD_LABEL, st.operator_namespace))
        if want_present and expected_image and status["sidecar_image"] not in (None, expected_image):
            hints.append("the sidecar runs %s, not %s" % (status["sidecar_image"], expected_image))
        msg = ("timed out after %d s waiting for the %s container of Deployment %s/%s to be %s. Containers: %s. "
               "Rollout: %d/%s updated, %s ready; conditions: %s. Events: %s.%s" % (
                   st.wait_timeout, dg.SIDECAR, st.namespace, st.deployment_name,
                   "ready" if want_present else "removed",
                   ", ".join(status["containers"]) or "(Deployment missing)",
                   status["updated_replicas"] or 0, status["replicas"], status["ready_replicas"],
                   "; ".join(status["conditions"]) or "none", " | ".join(events) or "none",
                   (" Hint: " + "; ".join(hints)) if hints else ""))
        raise EnableError(msg, ctrlplugin=status, events=events)

    # ------------------------------------------------------------------------------------------
    # the two states
    # ------------------------------------------------------------------------------------------
    def present(self, facts, diagnosis):
        st = self.st
        if facts.namespace_exists is False:
            raise EnableError("namespace %s does not exist: set namespace to where the ceph-csi Driver CR lives "
                              "(ODF: openshift-storage)" % st.namespace)
        if not facts.driver_api_version:
            raise EnableError(diagnosis["reason"])
        if not facts.driver_readable:
            raise EnableError("Driver %s/%s could not be read: %s. Permission denied: grant the user get/patch on "
                              "drivers.csi.ceph.io in %s" % (st.namespace, st.driver, "; ".join(facts.forbidden),
                                                             st.namespace))
        if facts.driver is None:
            raise EnableError("Driver %s not found in namespace %s (Drivers there: %s): set driver to the RBD "
                              "Driver CR name" % (
                                  st.driver, st.namespace, ", ".join(facts.drivers_in_namespace) or "none"))
        prof = dg.operator_profile(st, facts)
        if prof["supports_cbt"] is False:
            raise EnableError(prof["reason"])
        if facts.operator_csv is None and prof.get("version") is None:
            self.warn("the cephcsi-operator version is unknown (no ClusterServiceVersion in %s): assuming it adds "
                      "the sidecar for a SnapshotMetadataService plus a tls-key volume" % st.operator_namespace)
        provider = dg.resolve_tls_provider(st, facts)
        required = diagnosis["crd"]["required_versions"] or ([prof["sms_api_version"]]
                                                             if prof.get("sms_api_version") else [])

        # 0. everything that can fail on input is checked before the first change
        address = st.address or st.default_address()
        audience = st.audience
        tls_entry = dg.tls_volume_of(facts.driver)
        cur_secret = dg.volume_secret(tls_entry)[1]
        ca_pem = None
        service_ca_cert = None
        if provider == "odf":
            values = dg.odf_configmap_values(facts.odf_configmap)
            if not values:
                raise EnableError("tls_provider=odf needs ConfigMap %s/%s with address and caCert (created by "
                                  "ocs-client-operator in ODF 4.23 and later); use tls_provider=service_ca or "
                                  "self_managed" % (st.namespace, st.driver))
            address = st.address or values[0]
            audience = st.audience if st.audience != st.driver or not values[1] else values[1]
            ca_pem = values[2]
            if tls_entry is None:
                raise EnableError("tls_provider=odf but Driver %s has no '%s' volume yet: ocs-client-operator adds it "
                                  "in ODF 4.23 and later; wait for it or use tls_provider=service_ca"
                                  % (st.driver, dg.TLS_VOLUME))
        else:
            if tls_entry is not None and cur_secret not in (st.tls_secret_name, None):
                raise EnableError("Driver %s already has a '%s' volume using Secret %s, not %s: this module does "
                                  "not replace TLS material it did not create. Set tls_secret_name=%s if that "
                                  "Secret serves the Service %s, or remove the volume" % (
                                      st.driver, dg.TLS_VOLUME, cur_secret, st.tls_secret_name, cur_secret,
                                      st.service_name))
            if provider == "service_ca":
                ca_pem = ((facts.openshift_ca or {}).get("data") or {}).get(dg.OPENSHIFT_CA_KEY)
                if not ca_pem:
                    raise EnableError("tls_provider=service_ca but ConfigMap %s/%s has no %s: is the OpenShift "
                                      "service CA operator running?" % (st.namespace, dg.OPENSHIFT_CA_CONFIGMAP,
                                                                        dg.OPENSHIFT_CA_KEY))
            if facts.service is not None and not is_ours(facts.service):
                raise EnableError("Service %s/%s exists and was not created by cbt.toolkit: choose another "
                                  "service_name or delete it" % (st.namespace, st.service_name))
            if provider in ("self_managed", "service_ca"):
                self.check_self_managed_secrets(facts, provider)
            if provider == "service_ca":
                service_ca_cert = self.service_ca_cert_info(facts)

        # 1. CRD
        self.ensure_crd(facts, required)
        if self.check_mode and facts.crd is None:
            facts.sms_served_versions = list(crds.KNOWN_VERSIONS)
        elif not self.check_mode:
            crd = self.api.get(self.crd_path()) if facts.crd_readable else None
            if crd is not None:
                facts.sms_served_versions = crds.served_versions(crd)

        # 2. TLS and Service
        if provider == "odf":
            self.tls_result = {"provider": "odf", "secret_name": cur_secret}
        elif provider == "service_ca":
            self.drop_self_managed_tls(facts)
            self.ensure_service(facts, provider)
            self.tls_result = {"provider": "service_ca", "secret_name": st.tls_secret_name,
                               "ca_configmap": dg.OPENSHIFT_CA_CONFIGMAP}
            if service_ca_cert is not None and facts.tls_secret is not None:
                self.tls_result.update(not_after=service_ca_cert["not_after"], dns_names=service_ca_cert["dns_names"])
        else:
            self.ensure_service(facts, provider)      # first: drops a service CA annotation of ours
            ca_pem = self.ensure_self_managed_tls(facts)

        # 3. SnapshotMetadataService
        self.ensure_sms(facts, prof, address, audience, ca_pem)

        # 4. Driver: image set, tls-key volume
        imageset = self.ensure_image(facts) if st.sidecar_image else None
        vol_entry = None
        if provider != "odf":
            vol_type = dg.resolve_volume_type(st, facts)
            vol_entry = self.tls_volume_entry(vol_type, st.tls_secret_name)
        driver_changed = self.ensure_driver(facts, vol_entry, imageset)

        # 5. reconcile and wait. A Driver change makes the operator reconcile by itself: give it a moment
        # before annotating (the operator does not watch SnapshotMetadataService objects).
        expected_image = st.sidecar_image
        grace = min(GRACE_SECONDS, st.wait_timeout) if (driver_changed and st.wait and not self.check_mode) else 0
        deadline = self.clock() + grace
        while True:
            deploy, pods = self.read_rollout()
            needs = _needs_reconcile(dg.sidecar_status(deploy, pods), expected_image)
            if not needs or self.clock() >= deadline:
                break
            self.sleep(min(1.0, st.wait_sleep))
        if needs and not (self.check_mode and driver_changed):
            self.trigger(facts, needs)
        if self.check_mode or not st.wait:
            return
        self.wait_for(True, expected_image)

    def absent(self, facts):
        st = self.st
        ns = st.namespace
        deploy_had_sidecar = dg.sidecar_status(facts.deployment, None)["sidecar_present"]
        prof = dg.operator_profile(st, facts)
        removed = {"sms": False, "volume": False}

        # SnapshotMetadataService
        if facts.sms is not None:
            if is_ours(facts.sms):
                removed["sms"] = self.delete("SnapshotMetadataService",
                                             api_path(crds.GROUP, facts.sms_version, crds.PLURAL, st.driver),
                                             facts.sms)
            else:
                self.warn("SnapshotMetadataService %s was not created by cbt.toolkit; left in place" % st.driver)

        # Driver: our tls-key volume, our image set, our annotation
        driver_changed = False
        if facts.driver is not None:
            driver_path = self.driver_path(facts)

            def build(cur):
                spec = cur.get("spec") or {}
                vols = list(((spec.get("controllerPlugin") or {}).get("volumes")) or [])
                keep = [e for e in vols if not (((e.get("volume") or {}).get("name")) == dg.TLS_VOLUME and
                                                dg.volume_secret(e)[1] == st.tls_secret_name)]
                removed["volume"] = keep != vols
                patch = {"metadata": {"resourceVersion": _meta(cur).get("resourceVersion")}}
                spec_patch = {}
                if keep != vols:
                    spec_patch["controllerPlugin"] = {"volumes": keep or None}
                if (spec.get("imageSet") or {}).get("name") == st.images_configmap:
                    spec_patch["imageSet"] = None
                if spec_patch:
                    patch["spec"] = spec_patch
                if dg.RECONCILE_ANNOTATION in (_meta(cur).get("annotations") or {}):
                    patch["metadata"]["annotations"] = {dg.RECONCILE_ANNOTATION: None}
                return patch if len(patch) > 1 or "annotations" in patch["metadata"] else None
            driver_changed = self.patch_with_precondition("Driver", driver_path, build,
                                                          lambda: self.api.get(driver_path), ns)

        # image sets
        imageset = (((facts.driver or {}).get("spec") or {}).get("imageSet") or {}).get("name")
        if imageset and imageset != st.images_configmap and facts.driver_imageset_cm is not None:
            if _owns_field(facts.driver_imageset_cm, ("f:data", "f:%s" % dg.IMAGE_KEY)):
                empty = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": imageset, "namespace": ns}}
                self.apply("ConfigMap", api_path("", "v1", "configmaps", imageset, ns), empty,
                           facts.driver_imageset_cm, force=False, namespace=ns)
        if facts.namespace_exists is not False:
            cm_path = api_path("", "v1", "configmaps", st.images_configmap, ns)
            cm = self.api.get(cm_path)
            if is_ours(cm):
                self.delete("ConfigMap", cm_path, cm, ns)

        # Service and TLS
        if is_ours(facts.service):
            self.delete("Service", api_path("", "v1", "services", st.service_name, ns), facts.service, ns)
        tls_ann = _meta(facts.tls_secret).get("annotations") or {}
        if is_ours(facts.tls_secret) or tls_ann.get(dg.SERVICE_CA_ORIGIN_ANNOTATION) == st.service_name:
            self.delete("Secret", api_path("", "v1", "secrets", st.tls_secret_name, ns), facts.tls_secret, ns)
        if is_ours(facts.ca_secret):
            self.delete("Secret", api_path("", "v1", "secrets", st.ca_secret_name, ns), facts.ca_secret, ns)

        # CRD
        self._remove_crd(facts, removed["sms"])

        # The sidecar goes when the operator's gate turns false: SMS gone (gate with SMS) or volume gone.
        gate_off = (removed["sms"] and prof.get("trigger") != "tls_volume") or removed["volume"]
        if not (deploy_had_sidecar and gate_off):
            return
        if not driver_changed and facts.driver is not None:
            self._trigger_for_absent(facts)
        if self.check_mode or not st.wait:
            return
        self.wait_for(False)

    def _trigger_for_absent(self, facts):
        """A Driver update without leaving anything behind: add then remove our annotation."""
        if self.st.reconcile_trigger != "annotate":
            self.trigger(facts, "SnapshotMetadataService removed")
            return
        self.trigger(facts, "SnapshotMetadataService removed")
        if self.check_mode:
            return
        path = self.driver_path(facts)

        def build(cur):
            if dg.RECONCILE_ANNOTATION not in (_meta(cur).get("annotations") or {}):
                return None
            return {"metadata": {"resourceVersion": _meta(cur).get("resourceVersion"),
                                 "annotations": {dg.RECONCILE_ANNOTATION: None}}}
        self.patch_with_precondition("Driver", path, build, lambda: self.api.get(path), self.st.namespace)

    def _remove_crd(self, facts, sms_removed):
        """Delete our CRD when no SnapshotMetadataService is left: deleting a CRD deletes all its objects, so
        one named after the driver counts as gone only when this run deleted it (``sms_removed``)."""
        crd = facts.crd
        if crd is None:
            return
        if is_ours(crd):
            if not self.st.remove_crd:
                return
            others = []
            for ver in crds.served_versions(crd)[:1]:
                items = self.api.list(api_path(crds.GROUP, ver, crds.PLURAL))
                others = [_meta(i).get("name") for i in items
                          if not (sms_removed and _meta(i).get("name") == self.st.driver)]
            if others:
                why = ""
                if self.st.driver in others:
                    left = ("was not created by cbt.toolkit and is left in place"
                            if facts.sms is not None and not is_ours(facts.sms) else "was not removed by this run")
                    why = "; SnapshotMetadataService %s %s, and deleting the CRD would delete it too" % (
                        self.st.driver, left)
                self.warn("CustomResourceDefinition %s kept: other SnapshotMetadataServices still use it (%s)%s"
                          % (crds.CRD_NAME, ", ".join(others), why))
                return
            self.delete("CustomResourceDefinition", self.crd_path(), crd)
            return
        added = [v for v in (_meta(crd).get("annotations") or {}).get(dg.ADDED_VERSIONS_ANNOTATION, "").split(",")
                 if v]
        if not added:
            return

        def build(cur):
            stored = (cur.get("status") or {}).get("storedVersions") or []
            vers = (cur.get("spec") or {}).get("versions") or []
            keep = [v for v in vers if not (v.get("name") in added and not v.get("storage") and
                                            v.get("name") not in stored)]
            patch = {"metadata": {"resourceVersion": _meta(cur).get("resourceVersion")}}
            if keep != vers:
                patch["spec"] = {"versions": keep}
            if dg.ADDED_VERSIONS_ANNOTATION in (_meta(cur).get("annotations") or {}):
                patch["metadata"]["annotations"] = {dg.ADDED_VERSIONS_ANNOTATION: None}
            return patch if len(patch) > 1 or "annotations" in patch["metadata"] else None
        self.patch_with_precondition("CustomResourceDefinition", self.crd_path(), build,
                                     lambda: self.api.get(self.crd_path()))


def _merge(base, overlay):
    """JSON merge patch semantics (lists replaced, None deletes): what apply/patch would produce when
    the server refuses the dry run (check mode with read-only rights)."""
    out = copy.deepcopy(base)
    for key, val in (overlay or {}).items():
        if key == "resourceVersion":
            continue
        if val is None:
            out.pop(key, None)
        elif isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _owns_field(obj, field_path):
    """Whether our field manager owns ``field_path`` (e.g. ("f:data", "f:key")) in ``obj``."""
    for entry in _meta(obj).get("managedFields") or []:
        if entry.get("manager") != FIELD_MANAGER or entry.get("operation") != "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for part in field_path:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None:
            return True
    return False
