# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnsibleModule glue for the VMware modules: argument spec assembly, connecting, turning
typed errors into ``fail_json`` results (message, ``error_kind``, matches, privileges) and
always logging out.

This utility is private to the cbt.toolkit collection; its interface may change at any time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.cbt.toolkit.plugins.module_utils.vmware import (
    VM_IDENTITY_MUTUALLY_EXCLUSIVE,
    VM_IDENTITY_REQUIRED_ONE_OF,
    vm_identity_argument_spec,
    vmware_argument_spec,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    HAS_PYVMOMI,
    PYVMOMI_IMP_ERR,
    VmwareAmbiguous,
    VmwareClient,
    VmwareError,
    VmwarePermissionDenied,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_inventory import find_vm


class VmwareModule(object):
    """``with_vm_identity`` adds name/uuid/use_instance_uuid/moid/datacenter/folder and the
    matching mutually_exclusive/required_one_of rules. ``error_prefix`` starts every failure
    message (e.g. the seed's "CBT enablement check failed - migration cannot proceed: ")."""

    def __init__(self, argument_spec, with_vm_identity=True, error_prefix="", **kwargs):
        spec = vmware_argument_spec()
        if with_vm_identity:
            spec.update(vm_identity_argument_spec())
            kwargs["mutually_exclusive"] = list(kwargs.get("mutually_exclusive") or []) + VM_IDENTITY_MUTUALLY_EXCLUSIVE
            kwargs["required_one_of"] = list(kwargs.get("required_one_of") or []) + VM_IDENTITY_REQUIRED_ONE_OF
        spec.update(argument_spec)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params
        self.error_prefix = error_prefix
        self.client = None
        self.warnings = []
        if not HAS_PYVMOMI:
            self.module.fail_json(msg=missing_required_lib("pyVmomi"), exception=PYVMOMI_IMP_ERR,
                                  error_kind="missing_library")

    @property
    def check_mode(self):
        return self.module.check_mode

    @property
    def diff_mode(self):
        return self.module._diff

    def connect(self):
        self.client = VmwareClient.from_params(self.params)
        self.client.connect()
        return self.client

    def find_vm(self):
        p = self.params
        return find_vm(self.client, name=p.get("name"), uuid=p.get("uuid"), use_instance_uuid=p.get("use_instance_uuid"),
                       moid=p.get("moid"), datacenter=p.get("datacenter"), folder=p.get("folder"))

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None

    def warn(self, text):
        self.warnings.append(text)
        self.module.warn(text)

    def exit(self, **result):
        self.close()
        self.module.exit_json(**result)

    def fail(self, exc, prefix=None, **extra):
        prefix = self.error_prefix if prefix is None else prefix
        result = dict(extra)
        result["msg"] = prefix + getattr(exc, "msg", str(exc))
        result["error_kind"] = getattr(exc, "kind", "error")
        if getattr(exc, "fault", None) is not None:
            result["fault"] = getattr(exc, "fault_name", None)
        if isinstance(exc, VmwareAmbiguous):
            result["matches"] = exc.matches
        if isinstance(exc, VmwarePermissionDenied):
            result["missing_privileges"] = exc.privileges
        for key, value in (getattr(exc, "details", None) or {}).items():
            result.setdefault(key, value)
        self.close()
        self.module.fail_json(**result)

    def run(self, func):
        """Run ``func(self)`` (which calls ``self.exit``); typed errors become clean failures."""
        try:
            func(self)
        except VmwareError as exc:
            self.fail(exc)
        except Exception as exc:  # pylint: disable=broad-except
            self.close()
            self.module.fail_json(msg="%sunexpected error: %s: %s" % (self.error_prefix, type(exc).__name__, exc),
                                  error_kind="internal_error", exception=traceback.format_exc())
