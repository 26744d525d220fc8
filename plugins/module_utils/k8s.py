# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes connection options and API client shared by the collection's Kubernetes modules.

The options and their ``K8S_AUTH_*`` environment fallbacks follow kubernetes.core, so
``module_defaults`` written for kubernetes.core work here too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import traceback

from ansible.module_utils.basic import missing_required_lib

# re-exported: the modules take the connection options from here
from ansible_collections.cbt.toolkit.plugins.module_utils._k8s_args import (  # noqa: F401 pylint: disable=unused-import
    K8sModule, k8s_auth_argument_spec, kubeconfig_secrets)

try:
    import kubernetes  # noqa: F401 pylint: disable=unused-import
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    # ApiException is re-exported for the modules that catch it.
    from kubernetes.client.rest import ApiException  # noqa: F401 pylint: disable=unused-import
    import urllib3
    try:
        from urllib3 import HTTPHeaderDict
    except ImportError:  # urllib3 1.x
        from urllib3._collections import HTTPHeaderDict
    HAS_KUBERNETES = True
    KUBERNETES_IMP_ERR = None
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMP_ERR = traceback.format_exc()
    ApiException = Exception


class K8sConnectionError(Exception):
    """The cluster could not be reached or the credentials are not usable."""


def require_kubernetes(module):
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMP_ERR)


def build_configuration(params):
    """Return a ``kubernetes.client.Configuration`` from module parameters.

    Explicit options win over the kubeconfig; TLS verification stays on unless
    ``validate_certs: false`` is given.
    """
    configuration = k8s_client.Configuration()
    kubeconfig = params.get("kubeconfig")
    context = params.get("context")
    explicit_host = params.get("host")
    try:
        if kubeconfig is not None:
            if isinstance(kubeconfig, dict):
                k8s_config.load_kube_config_from_dict(kubeconfig, context=context,
                                                      client_configuration=configuration)
            else:
                k8s_config.load_kube_config(config_file=str(kubeconfig), context=context,
                                            client_configuration=configuration)
        elif not explicit_host:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(context=context, client_configuration=configuration)
    except (k8s_config.ConfigException, OSError, ValueError, TypeError) as exc:
        raise K8sConnectionError("could not load Kubernetes configuration%s: %s" % (
            (" from kubeconfig %s" % kubeconfig) if isinstance(kubeconfig, str) else "", exc))
    if explicit_host:
        configuration.host = explicit_host
    if params.get("api_key"):
        configuration.api_key = {"authorization": "Bearer %s" % params["api_key"]}
    if params.get("username"):
        configuration.username = params["username"]
    if params.get("password"):
        configuration.password = params["password"]
    if params.get("client_cert"):
        configuration.cert_file = params["client_cert"]
    if params.get("client_key"):
        configuration.key_file = params["client_key"]
    if params.get("ca_cert"):
        configuration.ssl_ca_cert = params["ca_cert"]
    if params.get("validate_certs") is not None:
        configuration.verify_ssl = params["validate_certs"]
    if params.get("proxy"):
        configuration.proxy = params["proxy"]
    if params.get("no_proxy"):
        configuration.no_proxy = params["no_proxy"]
    if not configuration.host:
        raise K8sConnectionError("no Kubernetes API server is known: set 'host' or 'kubeconfig' "
                                 "(or K8S_AUTH_HOST / K8S_AUTH_KUBECONFIG)")
    return configuration


IMPERSONATE_GROUP = "Impersonate-Group"


def _urllib3_major():
    try:
        return int(str(urllib3.__version__).split(".", 1)[0])
    except (AttributeError, ValueError):
        return 0


def _send_every_group(api, groups):
    """Send one ``Impersonate-Group`` header per group on every request of ``api``.

    The API server reads each header line as one group (it does not split on commas), but the
    client keeps its headers in a dict, so ``set_default_header`` leaves only the last group. Its
    REST layer hands that dict to ``pool_manager.request``: this wrapper passes an urllib3
    ``HTTPHeaderDict`` instead, holding every group, which urllib3 2.x sends as one line per value.
    """
    pool = api.rest_client.pool_manager
    send = pool.request

    def request(method, url, *args, **kwargs):
        headers = kwargs.pop("headers", None)
        headers = HTTPHeaderDict(pool.headers if headers is None else headers)
        headers.discard(IMPERSONATE_GROUP)
        for group in groups:
            headers.add(IMPERSONATE_GROUP, group)
        return send(method, url, *args, headers=headers, **kwargs)
    pool.request = request


def get_api_client(params):
    """An ``ApiClient`` for the parameters, with impersonation headers when asked."""
    configuration = build_configuration(params)
    groups = list(params.get("impersonate_groups") or [])
    api = k8s_client.ApiClient(configuration)
    if params.get("impersonate_user"):
        api.set_default_header("Impersonate-User", params["impersonate_user"])
    if len(groups) == 1:
        api.set_default_header(IMPERSONATE_GROUP, groups[0])
    elif groups:
        # Where urllib3 would merge the repeated headers into one "a, b" line (urllib3 1.x for requests
        # with a body; an HTTP proxy forwarding to a plain-http API server), the API server would see
        # one group: refuse rather than impersonate the wrong groups.
        why = None
        plain_http = str(configuration.host or "").lower().startswith("http://")
        if _urllib3_major() < 2:
            why = "urllib3 %s joins repeated headers into one: install urllib3 2.0 or later" % (
                getattr(urllib3, "__version__", "unknown"))
        elif plain_http and isinstance(getattr(api.rest_client, "pool_manager", None), urllib3.ProxyManager):
            why = "the HTTP proxy %s joins them into one for the plain-http API server %s: use https" % (
                configuration.proxy, configuration.host)
        if why:
            getattr(api, "close", lambda: None)()
            raise K8sConnectionError("impersonate_groups has %d groups, which must go as separate %s headers "
                                     "(the API server does not split a comma-separated one), but %s, or give "
                                     "a single group" % (len(groups), IMPERSONATE_GROUP, why))
        _send_every_group(api, groups)
    return api


def api_error_message(exc, what):
    """A one-line explanation of an ``ApiException`` naming the object and what to do."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or ""
    detail = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            detail = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            detail = str(body)[:300]
    hint = {
        401: "the credentials were rejected: check the token, client certificate or kubeconfig",
        403: "permission denied: grant the user the RBAC permission named above",
        404: "not found: check the name and namespace",
        409: "conflict: the object changed or already exists; re-run to retry",
        422: "the API server rejected the object as invalid",
    }.get(status, "")
    parts = ["%s failed" % what]
    if status:
        parts.append("HTTP %s %s" % (status, reason))
    elif reason:
        parts.append(str(reason))  # no HTTP status: the reason is all there is (e.g. a refused websocket)
    if detail:
        parts.append(detail)
    if hint:
        parts.append(hint)
    return ": ".join(parts)
