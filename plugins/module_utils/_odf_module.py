# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnsibleModule glue shared by ``odf_cbt_enable`` and ``odf_cbt_info``: the module with its
libraries checked, the validated settings and the API connection, each failing the module cleanly."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.cbt.toolkit.plugins.module_utils.k8s import (
    K8sConnectionError, K8sModule, get_api_client, k8s_auth_argument_spec, require_kubernetes)
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeApi
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_tls


def odf_module(options, cryptography_required):
    """An ``AnsibleModule`` (check mode supported) with the Kubernetes connection options and ``options``;
    the secrets of an inline ``kubeconfig`` are never logged or returned.

    It fails without the kubernetes library. Without cryptography it fails when
    ``cryptography_required``, else it warns that the diagnosis leaves out the certificate summary.
    """
    spec = k8s_auth_argument_spec()
    spec.update(options)
    module = K8sModule(argument_spec=spec, supports_check_mode=True)
    require_kubernetes(module)
    if not _odf_tls.HAS_CRYPTOGRAPHY:
        if cryptography_required:
            module.fail_json(msg=missing_required_lib("cryptography"), exception=_odf_tls.CRYPTOGRAPHY_IMP_ERR)
        module.warn("%s: the diagnosis leaves out the certificate summary" % missing_required_lib("cryptography"))
    return module


def module_settings(module):
    """The validated ``Settings`` of the module parameters; invalid input fails the module."""
    try:
        return dg.Settings(module.params)
    except dg.InputError as exc:
        module.fail_json(msg=str(exc))


def connect(module):
    """A ``KubeApi`` for the module's connection options; a configuration problem fails the module."""
    try:
        return KubeApi(get_api_client(module.params))
    except K8sConnectionError as exc:
        module.fail_json(msg=str(exc))
