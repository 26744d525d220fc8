# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # vCenter / ESXi connection options (plugins/module_utils/vmware.py vmware_argument_spec()).
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The hostname or IP address of the vCenter Server or ESXi host.
      - If not set, the value of the E(VMWARE_HOST) environment variable is used.
    type: str
  username:
    description:
      - The user name to log in with.
      - If not set, the value of the E(VMWARE_USER) environment variable is used.
    type: str
    aliases: [admin, user]
  password:
    description:
      - The password of O(username).
      - If not set, the value of the E(VMWARE_PASSWORD) environment variable is used.
    type: str
    aliases: [pass, pwd]
  port:
    description:
      - The HTTPS port of the vSphere API.
      - If not set, the value of the E(VMWARE_PORT) environment variable is used.
    type: int
    default: 443
  validate_certs:
    description:
      - Whether the server's TLS certificate is verified. Keep V(true) in production.
      - If not set, the value of the E(VMWARE_VALIDATE_CERTS) environment variable is used.
    type: bool
    default: true
  ca_cert:
    description:
      - PEM file with the CA certificate(s) that signed the vCenter certificate, used instead of the system trust
        store when O(validate_certs=true).
      - If not set, the value of the E(VMWARE_CA_CERT) environment variable is used.
    type: path
  proxy_host:
    description:
      - Address of an HTTP proxy (CONNECT tunnel) through which the vSphere API is reached.
      - If not set, the value of the E(VMWARE_PROXY_HOST) environment variable is used.
    type: str
  proxy_port:
    description:
      - Port of O(proxy_host).
      - If not set, the value of the E(VMWARE_PROXY_PORT) environment variable is used.
    type: int
notes:
  - All VMware modules of this collection are also available in the C(cbt.toolkit.vmware) action group for
    C(module_defaults).
requirements:
  - pyVmomi >= 8.0.3.0.1
"""

    # One VM chosen by name (+ datacenter/folder), BIOS/instance UUID or MoID.
    VM_IDENTITY = r"""
options:
  name:
    description:
      - Name of the VM (case-sensitive).
      - When several VMs have this name the module fails and lists them; narrow the search with O(folder) or
        O(datacenter), or use O(uuid) or O(moid).
      - Exactly one of O(name), O(uuid) and O(moid) is required.
    type: str
  uuid:
    description:
      - BIOS UUID of the VM, or its instance UUID when O(use_instance_uuid=true).
      - Cloned VMs can share a BIOS UUID; the module then fails and lists them.
    type: str
  use_instance_uuid:
    description:
      - Whether O(uuid) is the vCenter instance UUID instead of the BIOS UUID.
    type: bool
    default: false
  moid:
    description:
      - Managed object ID of the VM, for example V(vm-42).
    type: str
  datacenter:
    description:
      - Name of the datacenter to search in.
    type: str
  folder:
    description:
      - VM folder to search in, including its subfolders.
      - A full inventory path V(/DC1/vm/prod), or relative to O(datacenter) (V(prod), V(vm/prod)).
    type: str
"""
