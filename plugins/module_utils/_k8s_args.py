# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Kubernetes connection options (kubernetes.core's names and ``K8S_AUTH_*`` fallbacks).

Apart from ``k8s`` so that a module which only may talk to Kubernetes (``cbt_checkpoint`` with
its SQLite or PostgreSQL backend) declares the options without importing the kubernetes client,
which costs about 0.15 s of every run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule, env_fallback


def k8s_auth_argument_spec():
    return dict(
        kubeconfig=dict(type="raw", fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
        context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
        host=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_HOST"])),
        api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_API_KEY"])),
        username=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_USERNAME"])),
        password=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_PASSWORD"])),
        client_cert=dict(type="path", aliases=["cert_file"], fallback=(env_fallback, ["K8S_AUTH_CERT_FILE"])),
        client_key=dict(type="path", aliases=["key_file"], no_log=False, fallback=(env_fallback, ["K8S_AUTH_KEY_FILE"])),
        ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=(env_fallback, ["K8S_AUTH_SSL_CA_CERT"])),
        validate_certs=dict(type="bool", aliases=["verify_ssl"], fallback=(env_fallback, ["K8S_AUTH_VERIFY_SSL"])),
        proxy=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_PROXY"])),
        no_proxy=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_NO_PROXY"])),
        impersonate_user=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_IMPERSONATE_USER"])),
        impersonate_groups=dict(type="list", elements="str", fallback=(env_fallback, ["K8S_AUTH_IMPERSONATE_GROUPS"])),
    )


# Keys of a kubeconfig whose values are secrets wherever they appear: a user's token, private key and
# password, and the tokens and client secret of an auth-provider's config. Certificates are public.
KUBECONFIG_SECRET_KEYS = frozenset((
    "token", "client-key-data", "password",
    "id-token", "refresh-token", "access-token", "client-secret",
))


def kubeconfig_secrets(kubeconfig):
    """The secret strings of a kubeconfig given inline as a dict (``set()`` for a path or nothing):
    every value under ``KUBECONFIG_SECRET_KEYS`` at any depth, and the ``value`` of every ``env``
    entry of an ``exec`` credential plugin."""
    found = set()

    def walk(node, in_exec=False):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in KUBECONFIG_SECRET_KEYS and isinstance(value, (str, bytes, int, float)) \
                        and not isinstance(value, bool):
                    found.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
                elif key == "env" and in_exec and isinstance(value, list):
                    for entry in value:
                        if isinstance(entry, dict) and entry.get("value") not in (None, ""):
                            found.add(str(entry["value"]))
                else:
                    walk(value, in_exec or key == "exec")
        elif isinstance(node, list):
            for item in node:
                walk(item, in_exec)

    if isinstance(kubeconfig, dict):
        walk(kubeconfig)
    found.discard("")
    return found


class K8sModule(AnsibleModule):
    """An ``AnsibleModule`` that hides the secrets of an inline ``kubeconfig`` from the moment the
    parameters are read: the invocation logged to syslog or the journal, the ``invocation`` of the
    result (shown with ``-vvv``) and the result of a failed argument check."""

    def _load_params(self):
        super(K8sModule, self)._load_params()
        params = getattr(self, "params", None)
        if isinstance(params, dict) and hasattr(self, "no_log_values"):
            self.no_log_values.update(kubeconfig_secrets(params.get("kubeconfig")))
