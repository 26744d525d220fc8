# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnsibleModule glue shared by ``cbt_checkpoint`` and ``cbt_checkpoint_info``: the backend options
(documented in the doc fragment ``checkpoint_backend``) and the store opened from them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint import (
    CheckpointError,
    ConflictError,
    MissingLibrary,
    open_store,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._k8s_args import K8sModule, k8s_auth_argument_spec

BACKEND_REQUIRED_IF = [
    ("backend", "postgresql", ("postgresql_dsn",)),
    ("backend", "configmap", ("configmap_name", "configmap_namespace")),
]


def backend_argument_spec():
    """The backend options and the Kubernetes connection options (for the ConfigMap backend)."""
    spec = dict(
        backend=dict(type="str", choices=["sqlite", "postgresql", "configmap"], default="sqlite"),
        sqlite_path=dict(type="path"),
        postgresql_dsn=dict(type="str", no_log=True),
        postgresql_password=dict(type="str", no_log=True),
        table=dict(type="str", default="cbt_checkpoints"),
        connect_timeout=dict(type="int", default=10),
        configmap_name=dict(type="str"),
        configmap_namespace=dict(type="str"),
        history_limit=dict(type="int", default=100),
    )
    spec.update(k8s_auth_argument_spec())
    return spec


def checkpoint_module(options, required_if=(), **kwargs):
    """An ``AnsibleModule`` (check mode supported) with the backend options and ``options``; the secrets
    of an inline ``kubeconfig`` (ConfigMap backend) are hidden like ``no_log`` options."""
    spec = backend_argument_spec()
    spec.update(options)
    return K8sModule(argument_spec=spec, supports_check_mode=True,
                     required_if=BACKEND_REQUIRED_IF + list(required_if), **kwargs)


@contextlib.contextmanager
def opened_store(module, check_mode):
    """The store named in the module parameters, closed on leaving (also on exit_json / fail_json).

    A missing backend library, a compare-and-set conflict (with the stored ``current``) and any other
    store problem end the module with ``fail_json``.
    """
    store = None
    try:
        store = open_store(module.params, check_mode=check_mode)
        yield store
    except MissingLibrary as exc:
        module.fail_json(msg=missing_required_lib(exc.library), exception=exc.import_error)
    except ConflictError as exc:
        module.fail_json(msg=str(exc), current=exc.current, conflicts=exc.conflicts, conflict=True)
    except CheckpointError as exc:
        module.fail_json(msg=str(exc))
    finally:
        if store is not None:
            store.close()
