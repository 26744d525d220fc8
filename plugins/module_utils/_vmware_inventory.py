# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory lookups: one VM by name / UUID / MoID, many VMs in one PropertyCollector
retrieval, inventory paths, datacenters, folders and clusters.

This utility is private to the cbt.toolkit collection; its interface may change at any time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_client import (
    VmwareAmbiguous,
    VmwareNotFound,
    VmwareApiError,
    is_fault,
    object_spec,
    property_spec,
    view_traversal,
    vim,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_fastretrieve import (
    FastPathUnavailable,
    SessionExpired,
    retrieve_views,
)

# Read on every VM the CBT modules look at. Explicit paths only (see _vmware_client).
VM_PROPERTIES = [
    "name",
    "parent",
    "parentVApp",
    "config.uuid",
    "config.instanceUuid",
    "config.version",
    "config.template",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "capability.changeTrackingSupported",
    "runtime.powerState",
    "runtime.connectionState",
    "runtime.consolidationNeeded",
    "rootSnapshot",
]
VM_PROPERTIES_NO_DISKS = [p for p in VM_PROPERTIES if p != "config.hardware.device"]


def _entity_specs():
    return [
        property_spec(vim.Folder, ["name", "parent"]),
        property_spec(vim.Datacenter, ["name", "parent"]),
        property_spec(vim.VirtualApp, ["name", "parentFolder", "parentVApp"]),
    ]


def _moid(obj):
    return getattr(obj, "_moId", None) if obj is not None else None


class EntityTree(object):
    """Names and parents of folders, datacenters and vApps, to build inventory paths."""

    def __init__(self, root_moid):
        self.root = root_moid
        self.names = {}
        self.parents = {}

    def add(self, obj, props):
        moid = _moid(obj)
        self.names[moid] = props.get("name", moid)
        parent = props.get("parent") or props.get("parentVApp") or props.get("parentFolder")
        self.parents[moid] = _moid(parent)

    def path_of(self, name, parent_moid):
        parts = [name]
        seen = set()
        current = parent_moid
        while current and current != self.root and current not in seen:
            seen.add(current)
            parts.append(self.names.get(current, current))
            current = self.parents.get(current)
        return "/" + "/".join(reversed(parts))


def entity_tree(client):
    """One retrieval of all folder/datacenter/vApp names and parents."""
    root = client.content.rootFolder
    rows = client.with_views([(root, [vim.Folder, vim.Datacenter, vim.VirtualApp])], lambda views: client.retrieve(
        [_view_spec(views[0])], _entity_specs(), what="reading the inventory tree"))
    tree = EntityTree(_moid(root))
    for obj, props, _missing in rows:
        tree.add(obj, props)
    return tree


def vm_parent_moid(props):
    return _moid(props.get("parent")) or _moid(props.get("parentVApp"))


def _view_spec(view):
    """Everything a container view holds, the view itself skipped."""
    return object_spec(view, skip=True, select_set=[view_traversal()])


def _find_by_name(client, vim_type, name, container=None, kind="object"):
    container = container or client.content.rootFolder
    return client.with_views([(container, [vim_type])], lambda views: client.retrieve(
        [_view_spec(views[0])], [property_spec(vim_type, ["name"])], what="looking up %s '%s'" % (kind, name)))


def find_datacenter(client, name):
    rows = _find_by_name(client, vim.Datacenter, name, kind="datacenter")
    matches = [obj for obj, props, _m in rows if props.get("name") == name]
    if not matches:
        available = sorted(props.get("name", "") for _o, props, _m in rows)
        raise VmwareNotFound("datacenter '%s' not found; available datacenters: %s"
                             % (name, ", ".join(available) or "none"))
    if len(matches) > 1:
        raise VmwareAmbiguous("datacenter name '%s' is not unique (%s); use folder with a full path"
                              % (name, ", ".join(_moid(m) for m in matches)),
                              matches=[{"moid": _moid(m)} for m in matches])
    return matches[0]


def normalize_folder(folder, datacenter=None):
    """``/DC0/vm/x``, ``DC0/vm/x``, or with ``datacenter``: ``x``, ``vm/x``, ``/vm/x`` ->
    ``DC0/vm/x`` (the form FindByInventoryPath wants). ``datacenter`` may be the datacenter's own
    inventory path (``Region1/DC0``: datacenters can sit in folders)."""
    path = "/".join(p for p in folder.strip().split("/") if p)
    if datacenter:
        datacenter = "/".join(p for p in datacenter.split("/") if p)
        dc_name = datacenter.rsplit("/", 1)[-1]
        above = datacenter[:len(datacenter) - len(dc_name)]
        if path == datacenter or path.startswith(datacenter + "/"):
            return path
        if above and (path == dc_name or path.startswith(dc_name + "/")):
            return above + path
        if path == "vm" or path.startswith("vm/"):
            return "%s/%s" % (datacenter, path)
        return "%s/vm/%s" % (datacenter, path) if path else "%s/vm" % datacenter
    return path


def datacenter_path(client, dc_ref):
    """Inventory path of a datacenter, without the leading slash (``Region1/DC0`` in a folder)."""
    tree = entity_tree(client)
    moid = _moid(dc_ref)
    return tree.path_of(tree.names.get(moid, moid), tree.parents.get(moid)).lstrip("/")


def resolve_folder(client, folder, datacenter=None, dc_ref=None):
    prefix = None
    if datacenter:
        dc_ref = dc_ref if dc_ref is not None else find_datacenter(client, datacenter)
        prefix = datacenter_path(client, dc_ref)
    path = normalize_folder(folder, prefix)
    found = client.invoke("looking up folder '%s'" % folder, client.content.searchIndex.FindByInventoryPath, path)
    if found is None or not isinstance(found, (vim.Folder, vim.Datacenter, vim.VirtualApp)):
        hint = "" if datacenter or "/" in path else " (give the full path /<datacenter>/vm/<folder> or set datacenter)"
        raise VmwareNotFound("folder '%s' not found (looked for inventory path '/%s')%s"
                             % (folder, path, hint))
    return found


def find_cluster(client, name, container=None):
    rows = _find_by_name(client, vim.ClusterComputeResource, name, container=container, kind="cluster")
    matches = [obj for obj, props, _m in rows if props.get("name") == name]
    if not matches:
        available = sorted(props.get("name", "") for _o, props, _m in rows)
        raise VmwareNotFound("cluster '%s' not found; available clusters: %s"
                             % (name, ", ".join(available) or "none"))
    if len(matches) > 1:
        raise VmwareAmbiguous("cluster name '%s' is not unique (%s); set datacenter"
                              % (name, ", ".join(_moid(m) for m in matches)),
                              matches=[{"moid": _moid(m)} for m in matches])
    return matches[0]


def scope_container(client, datacenter=None, folder=None, cluster=None):
    """The inventory object to search below, and a text naming it."""
    dc_ref = find_datacenter(client, datacenter) if datacenter else None
    if folder:
        return resolve_folder(client, folder, datacenter, dc_ref), "folder '%s'" % folder
    if cluster:
        return find_cluster(client, cluster, dc_ref), "cluster '%s'" % cluster
    if dc_ref is not None:
        return dc_ref, "datacenter '%s'" % datacenter
    return client.content.rootFolder, "the whole inventory"


def _describe_matches(client, rows):
    tree = entity_tree(client)
    matches = []
    for obj, props, _m in rows:
        matches.append({"moid": _moid(obj), "name": props.get("name"),
                        "path": tree.path_of(props.get("name"), vm_parent_moid(props)),
                        "instance_uuid": props.get("config.instanceUuid")})
    return sorted(matches, key=lambda m: m["path"])


def find_vm(client, name=None, uuid=None, use_instance_uuid=False, moid=None, datacenter=None, folder=None,
            cluster=None):
    """Return the VM managed object named by exactly one of name / uuid / moid.

    Raises VmwareNotFound (naming where it looked) or VmwareAmbiguous (listing every match
    with MoID and inventory path).
    """
    if moid:
        vm = client.mo(vim.VirtualMachine, moid)
        try:
            client.properties(vm, ["name"], what="looking up VM moid '%s'" % moid)
        except VmwareApiError as exc:
            if is_fault(exc.fault, "ManagedObjectNotFound", "InvalidArgument"):
                raise VmwareNotFound("VM with moid '%s' not found in vCenter %s" % (moid, client.endpoint))
            raise
        return vm
    if uuid:
        dc_ref = find_datacenter(client, datacenter) if datacenter else None
        kind = "instance UUID" if use_instance_uuid else "BIOS UUID"
        found = client.invoke("looking up the VM with %s '%s'" % (kind, uuid),
                              client.content.searchIndex.FindAllByUuid,
                              datacenter=dc_ref, uuid=uuid, vmSearch=True, instanceUuid=bool(use_instance_uuid))
        found = [f for f in (found or []) if isinstance(f, vim.VirtualMachine)]
        if not found:
            other = "BIOS" if use_instance_uuid else "instance"
            raise VmwareNotFound("no VM with %s '%s'%s; if this is the %s UUID set use_instance_uuid: %s"
                                 % (kind, uuid, " in datacenter '%s'" % datacenter if datacenter else "",
                                    other, "false" if use_instance_uuid else "true"))
        if len(found) > 1:
            rows = client.retrieve([object_spec(f) for f in found],
                                   [property_spec(vim.VirtualMachine,
                                                  ["name", "parent", "parentVApp", "config.instanceUuid"])],
                                   what="describing VMs with %s '%s'" % (kind, uuid))
            matches = _describe_matches(client, rows)
            raise VmwareAmbiguous("%d VMs share the %s '%s' (cloned VMs keep the BIOS UUID): %s; use moid "
                                  "or the instance UUID (use_instance_uuid: true)"
                                  % (len(matches), kind, uuid, _format_matches(matches)), matches=matches)
        return found[0]
    if not name:
        raise VmwareNotFound("no VM given: set one of name, uuid or moid")
    container, scope = scope_container(client, datacenter=datacenter, folder=folder, cluster=cluster)
    rows = client.with_views([(container, [vim.VirtualMachine])], lambda views: client.retrieve(
        [_view_spec(views[0])], [property_spec(vim.VirtualMachine, ["name", "parent", "parentVApp", "config.instanceUuid"])],
        what="looking up VM '%s'" % name))
    matches = [r for r in rows if r[1].get("name") == name]
    if len(matches) > 1 and folder:
        # the folder names the VM directly in it; VMs of the same name in its subfolders do not compete
        direct = [r for r in matches if vm_parent_moid(r[1]) == _moid(container)]
        if len(direct) == 1:
            matches = direct
    if not matches:
        similar = sorted(r[1].get("name") for r in rows if (r[1].get("name") or "").lower() == name.lower())
        hint = "; did you mean %s?" % ", ".join("'%s'" % s for s in similar) if similar else \
            "; VM names are case-sensitive, or use uuid / moid"
        raise VmwareNotFound("VM '%s' not found in %s%s" % (name, scope, hint))
    if len(matches) > 1:
        described = _describe_matches(client, matches)
        raise VmwareAmbiguous("VM name '%s' is ambiguous in %s: %d VMs match: %s; set folder (or "
                              "datacenter) to the one you mean, or use uuid / moid"
                              % (name, scope, len(described), _format_matches(described)), matches=described)
    return matches[0][0]


def _format_matches(matches):
    return "; ".join("%s (moid %s)" % (m["path"], m["moid"]) for m in matches)


# Use the fast reader (_vmware_fastretrieve) for whole-scope retrievals; False forces pyVmomi.
FAST_RETRIEVE = True

ENTITY_PATHS = (("Folder", ["name", "parent"]), ("Datacenter", ["name", "parent"]),
                ("VirtualApp", ["name", "parentFolder", "parentVApp"]))


def collect_vms(client, container=None, refs=None, include_disks=True, page_size=None, fast=None):
    """All VMs below ``container`` (or exactly ``refs``) with their CBT-relevant properties and
    inventory paths, in ONE PropertyCollector retrieval. Returns a list of dicts
    ``{"ref", "moid", "props", "missing", "path"}``."""
    paths = VM_PROPERTIES if include_disks else VM_PROPERTIES_NO_DISKS
    fast = FAST_RETRIEVE if fast is None else fast
    containers = [] if refs is not None else [(container or client.content.rootFolder, [vim.VirtualMachine])]
    containers.append((client.content.rootFolder, [vim.Folder, vim.Datacenter, vim.VirtualApp]))

    def read(views):
        if fast and refs is None:
            try:
                return retrieve_views(client, views, [("VirtualMachine", paths)] + list(ENTITY_PATHS),
                                      page_size=page_size)
            except SessionExpired:
                client.relogin()  # the views went with the session: with_views creates them again
            except FastPathUnavailable:
                pass
        vm_specs = [object_spec(r) for r in refs] if refs is not None else []
        return client.retrieve(vm_specs + [_view_spec(v) for v in views],
                               [property_spec(vim.VirtualMachine, paths)] + _entity_specs(),
                               what="reading VM properties", page_size=page_size)

    rows = client.with_views(containers, read)
    tree = EntityTree(_moid(client.content.rootFolder))
    vms = []
    for obj, props, missing in rows:
        if isinstance(obj, vim.VirtualMachine):
            vms.append({"ref": obj, "moid": _moid(obj), "props": props, "missing": missing})
        else:
            tree.add(obj, props)
    for record in vms:
        props = record["props"]
        record["path"] = tree.path_of(props.get("name", record["moid"]), vm_parent_moid(props))
    vms.sort(key=lambda r: (r["path"], r["moid"]))
    return vms


def read_vm(client, vm, include_snapshots=False):
    """One VM's record (as ``collect_vms``), optionally with its snapshot tree."""
    records = collect_vms(client, refs=[vm], include_disks=True)
    if not records:
        raise VmwareNotFound("VM %s disappeared from vCenter" % _moid(vm))
    record = records[0]
    if include_snapshots:
        record["props"]["snapshot"] = client.properties(vm, ["snapshot"], what="reading the snapshots of VM '%s'"
                                                        % record["props"].get("name")).get("snapshot")
    return record


def hw_version_number(version):
    """``vmx-13`` -> 13; None when unknown."""
    if not version:
        return None
    text = str(version)
    digits = text.rsplit("-", maxsplit=1)[-1]
    try:
        return int(digits)
    except ValueError:
        return None


# runtime.connectionState other than "connected": what it means and what to do. vCenter leaves the
# VM's config unset then, so nothing about its CBT can be told.
CONNECTION_ADVICE = {
    "disconnected": "its host is disconnected from vCenter: reconnect the host",
    "orphaned": "it is no longer registered on its host: remove it from the inventory and register its .vmx again",
    "inaccessible": "its files cannot be reached (datastore unavailable or removed): bring the datastore back",
    "invalid": "its configuration is invalid: repair the .vmx or register the VM again",
}


def connection_problem(props):
    """None for a VM vCenter can reach; otherwise ``(state, advice)``."""
    state = props.get("runtime.connectionState")
    if state is None or str(state) == "connected":
        return None
    return str(state), CONNECTION_ADVICE.get(str(state), "check the VM in vCenter")


def vm_facts(record, include_disks=True):
    """The per-VM result dict shared by vmware_cbt, vmware_cbt_info and the snapshot modules."""
    props = record["props"]
    cbt = bool(props.get("config.changeTrackingEnabled"))
    facts = {
        "name": props.get("name"),
        "moid": record["moid"],
        "instance_uuid": props.get("config.instanceUuid"),
        "bios_uuid": props.get("config.uuid"),
        "power_state": str(props["runtime.powerState"]) if props.get("runtime.powerState") is not None else None,
        "hw_version": props.get("config.version"),
        "path": record["path"],
        "template": bool(props.get("config.template")),
        "cbt_enabled": cbt,
        "change_tracking_supported": bool(props.get("capability.changeTrackingSupported")),
        "consolidation_needed": bool(props.get("runtime.consolidationNeeded")),
        "has_snapshots": bool(props.get("rootSnapshot")),
    }
    if record.get("missing"):
        facts["unreadable_properties"] = sorted(record["missing"])
    problem = connection_problem(props)
    facts["connection_state"] = str(props["runtime.connectionState"]) if props.get("runtime.connectionState") else None
    facts["accessible"] = problem is None
    if include_disks:
        disks = describe_disks(props.get("config.hardware.device") or [])
        facts["disks"] = disks
        eligible = [d for d in disks if d["eligible"]]
        facts["cbt_initialized"] = bool(cbt and eligible and all(d["change_id"] for d in eligible))
    if problem is not None:
        # unknown, not false: vCenter cannot read the VM's configuration
        facts.update(cbt_enabled=None, change_tracking_supported=None,
                     inaccessible_reason="connectionState is %s: %s" % problem)
        if include_disks:
            facts["cbt_initialized"] = None
    return facts


def vm_label(record):
    return "'%s' (%s, moid %s)" % (record["props"].get("name"), record["path"], record["moid"])
