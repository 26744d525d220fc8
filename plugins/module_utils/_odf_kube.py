# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private: a small JSON REST layer over the shared Kubernetes ``ApiClient``.

The ODF modules read and write a handful of objects whose API groups may or may not be installed
(OLM, OpenShift, ceph-csi-operator, SnapshotMetadataService). Talking to paths directly keeps
"the API group is missing" (404 on discovery) and "the object is missing" apart, avoids the
dynamic client's discovery cache, and gives server-side apply with a field manager.

Works with both generations of the ``kubernetes`` Python client (``call_api`` before and after
the openapi-generator 7 rewrite).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

try:
    from urllib.parse import quote, urlencode
except ImportError:  # pragma: no cover - Python 2 is not supported by this collection
    from urllib import quote, urlencode  # type: ignore

from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import HAS_KUBERNETES, ApiException, api_error_message
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import ApiTransportError, api_unreachable_message

FIELD_MANAGER = "cbt.toolkit"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "cbt.toolkit"

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(Exception):
    """An API call failed. ``status`` is the HTTP status (0 when the server was not reached; ``cause``
    is then the exception, explained with the API server of ``api_client``)."""

    def __init__(self, status, reason, body, what, method=None, path=None, cause=None, api_client=None):
        self.status = status
        self.reason = reason
        self.body = body
        self.what = what
        self.method = method
        self.path = path
        self.api_message = ""
        self.details = {}
        if body:
            try:
                doc = json.loads(body)
                self.api_message = doc.get("message", "") or ""
                self.details = doc.get("details") or {}
            except (ValueError, AttributeError, TypeError):
                self.api_message = str(body)[:300]
        if not status and isinstance(cause, (ApiTransportError, OSError)):
            # urllib3 / socket / TLS errors: name the server, the cause and what to check
            message = "%s failed: %s" % (what, api_unreachable_message(cause, api_client))
        else:
            message = api_error_message(self, what)
        super(KubeError, self).__init__(message)

    @property
    def not_found(self):
        return self.status == 404

    @property
    def forbidden(self):
        return self.status == 403

    @property
    def conflict(self):
        return self.status == 409


def quote_name(name):
    return quote(str(name), safe="")


def api_path(group, version, plural, name=None, namespace=None, subresource=None):
    """``/api/v1/...`` or ``/apis/<group>/<version>/...`` for a resource."""
    base = "/api/%s" % version if not group else "/apis/%s/%s" % (group, version)
    if namespace:
        base += "/namespaces/%s" % quote_name(namespace)
    base += "/%s" % plural
    if name:
        base += "/%s" % quote_name(name)
    if subresource:
        base += "/%s" % subresource
    return base


def is_ours(obj):
    """True when the object carries this collection's managed-by label."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


class KubeApi(object):
    """JSON requests against one API server through a configured ``ApiClient``."""

    def __init__(self, api_client, request_timeout=30):
        self.api_client = api_client
        self.request_timeout = request_timeout
        self._groups = None

    # -- transport -----------------------------------------------------------------------------
    def _raw(self, method, path, query=None, body=None, content_type="application/json"):
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if query:
            path = path + "?" + urlencode(query)
        client = self.api_client
        # The client serializes bodies itself for JSON content types; apply patches go as JSON text
        # (valid YAML), which every client version sends unchanged.
        if content_type == APPLY_PATCH and body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        if hasattr(client, "param_serialize"):
            # kubernetes >= 35 (openapi-generator 7): serialize, then send.
            req = client.param_serialize(method, path, header_params=headers, body=None,
                                         auth_settings=["BearerToken"])
            method_s, url, hdrs = req[0], req[1], req[2]
            resp = client.call_api(method_s, url, header_params=hdrs, body=body,
                                   _request_timeout=self.request_timeout)
            resp.read()
            status, data = resp.status, resp.data
            reason = getattr(resp, "reason", "")
        else:  # pragma: no cover - older kubernetes clients
            resp = client.call_api(path, method, header_params=headers, body=body,
                                   auth_settings=["BearerToken"], _preload_content=False,
                                   _return_http_data_only=True, _request_timeout=self.request_timeout)
            status, data = resp.status, resp.data
            reason = getattr(resp, "reason", "")
        return status, reason, data

    def request(self, method, path, query=None, body=None, content_type="application/json", what=None):
        """Send a request and return the decoded JSON body; raise ``KubeError`` on failure."""
        what = what or "%s %s" % (method, path)
        try:
            status, reason, data = self._raw(method, path, query=query, body=body, content_type=content_type)
        except Exception as exc:  # pylint: disable=broad-except
            if HAS_KUBERNETES and isinstance(exc, ApiException):
                raise KubeError(getattr(exc, "status", 0) or 0, getattr(exc, "reason", ""),
                                getattr(exc, "body", None), what, method, path)
            # urllib3 / socket / TLS errors: the server was not reached
            raise KubeError(0, "%s: %s" % (type(exc).__name__, exc), None, what, method, path, cause=exc,
                            api_client=self.api_client)
        text = data.decode("utf-8") if isinstance(data, bytes) else (data or "")
        if not 200 <= int(status) <= 299:
            raise KubeError(int(status), reason, text, what, method, path)
        if not text:
            return {}
        try:
            return json.loads(text)
        except ValueError:
            return {"raw": text}

    # -- verbs ---------------------------------------------------------------------------------
    def get(self, path, what=None):
        """The object, or ``None`` when it (or its API group) does not exist."""
        try:
            return self.request("GET", path, what=what)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    def list(self, path, label_selector=None, field_selector=None, what=None):
        """List items, ``[]`` when the API is not installed."""
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        try:
            doc = self.request("GET", path, query=query or None, what=what)
        except KubeError as exc:
            if exc.not_found:
                return []
            raise
        return doc.get("items") or []

    def apply(self, path, obj, force=False, dry_run=False, what=None):
        """Server-side apply ``obj`` with the collection's field manager."""
        query = {"fieldManager": FIELD_MANAGER}
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", path, query=query, body=obj, content_type=APPLY_PATCH, what=what)

    def patch(self, path, body, content_type=MERGE_PATCH, dry_run=False, what=None):
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", path, query=query, body=body, content_type=content_type, what=what)

    def create(self, path, obj, dry_run=False, what=None):
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("POST", path, query=query, body=obj, what=what)

    def delete(self, path, dry_run=False, what=None, propagation="Background"):
        """Delete; ``False`` when it was already gone."""
        query = {}
        if dry_run:
            query["dryRun"] = "All"
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", path, query=query or None, body=body, what=what)
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    # -- discovery -----------------------------------------------------------------------------
    def api_groups(self):
        """``{group: [versions]}`` from ``/apis`` (cached per instance)."""
        if self._groups is None:
            doc = self.request("GET", "/apis", what="API discovery (GET /apis)")
            groups = {}
            for grp in doc.get("groups") or []:
                groups[grp.get("name")] = [v.get("version") for v in grp.get("versions") or []]
            self._groups = groups
        return self._groups

    def forget_discovery(self):
        self._groups = None

    def server_version(self):
        try:
            return self.request("GET", "/version", what="server version (GET /version)")
        except KubeError as exc:
            if exc.forbidden:
                return {}
            raise
