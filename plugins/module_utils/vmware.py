# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vCenter / ESXi connection options shared by the collection's VMware modules.

The options and their ``VMWARE_*`` environment fallbacks follow vmware.vmware's
``base_argument_spec()``, so ``module_defaults`` written for vmware.vmware (group
``cbt.toolkit.vmware``) work unchanged. ``ca_cert`` is an addition: verify a vCenter whose
certificate is signed by a private CA without turning verification off.

Everything else VMware-related lives in the private ``_vmware_*`` files of this folder and is
not a public interface of the collection.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import env_fallback


def vmware_argument_spec():
    """Connection options: hostname, username, password, port, validate_certs, ca_cert,
    proxy_host, proxy_port (each with its ``VMWARE_*`` environment fallback)."""
    return dict(
        hostname=dict(type="str", fallback=(env_fallback, ["VMWARE_HOST"])),
        username=dict(type="str", aliases=["user", "admin"], fallback=(env_fallback, ["VMWARE_USER"])),
        password=dict(type="str", aliases=["pass", "pwd"], no_log=True,
                      fallback=(env_fallback, ["VMWARE_PASSWORD"])),
        port=dict(type="int", default=443, fallback=(env_fallback, ["VMWARE_PORT"])),
        validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["VMWARE_VALIDATE_CERTS"])),
        ca_cert=dict(type="path", fallback=(env_fallback, ["VMWARE_CA_CERT"])),
        proxy_host=dict(type="str", fallback=(env_fallback, ["VMWARE_PROXY_HOST"])),
        proxy_port=dict(type="int", fallback=(env_fallback, ["VMWARE_PROXY_PORT"])),
    )


def vm_identity_argument_spec():
    """How a module names one VM: ``name`` (with ``datacenter``/``folder`` to disambiguate),
    ``uuid`` (BIOS UUID, or instance UUID with ``use_instance_uuid``) or ``moid``."""
    return dict(
        name=dict(type="str"),
        uuid=dict(type="str"),
        use_instance_uuid=dict(type="bool", default=False),
        moid=dict(type="str"),
        datacenter=dict(type="str"),
        folder=dict(type="str"),
    )


# Use with AnsibleModule(mutually_exclusive=..., required_one_of=...).
VM_IDENTITY_MUTUALLY_EXCLUSIVE = [["name", "uuid", "moid"]]
VM_IDENTITY_REQUIRED_ONE_OF = [["name", "uuid", "moid"]]
