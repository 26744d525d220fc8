# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fast reader for large ``RetrievePropertiesEx`` answers (vmware_cbt_info over thousands of VMs).

This utility is private to the cbt.toolkit collection; its interface may change at any time.

pyVmomi turns every XML element of an answer into Python objects through Python callbacks; for
1,000 VMs with their device lists (~180,000 elements, ~8 MB) that costs seconds, more than the
server needs to produce it. Here the same SOAP request goes over pyVmomi's own connection
(session cookie, TLS context, proxy tunnel), the answer is parsed by the C parser of
``xml.etree.ElementTree``, and pyVmomi objects are built only for what the CBT modules read:
simple values, managed object references, and -- from ``config.hardware.device`` -- the disks
and their controllers. Everything else in a device list is skipped unparsed.

Large answers are read in pages, pipelined: as soon as a page has arrived, the request for the
next one is sent (its continuation token is the first element of the answer), and the page is
parsed while the server produces the next -- the client's parsing and the server's encoding (and,
on a real vCenter, the network) overlap instead of taking turns.

Anything unexpected (a fault, an HTTP error, a value type it does not know) raises
``FastPathUnavailable`` and the caller uses the ordinary pyVmomi call, which then reports the
fault properly. An expired session raises ``SessionExpired`` (a ``FastPathUnavailable``): the
caller logs in again first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import escape

try:
    from pyVmomi import VmomiSupport, vim
    from pyVmomi.Iso8601 import ParseISO8601
except ImportError:  # the caller checks HAS_PYVMOMI first
    VmomiSupport = vim = ParseISO8601 = None

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
VIM_NS = "urn:vim25"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
INT_TYPES = ("int", "long", "short", "byte")
PAGE_SIZE = 250  # objects per page when the caller sets none (vCenter caps pages on its own too)
_TOKEN_RE = re.compile(br"<returnval>\s*<token>([^<]{1,200})</token>")


class FastPathUnavailable(Exception):
    """Use the ordinary pyVmomi call instead."""


class SessionExpired(FastPathUnavailable):
    """vCenter answered NotAuthenticated: log in again (session-scoped objects such as container
    views went with the old session)."""


_NOT_AUTHENTICATED_RE = re.compile(br"<detail>\s*<NotAuthenticatedFault[\s>]")


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _envelope(body):
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="%s" xmlns:xsd="%s" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>%s</soapenv:Body></soapenv:Envelope>'
            % (SOAP_ENV, XSD_NS, body))


def _moref_xml(tag, type_name, moid):
    return '<%s type="%s">%s</%s>' % (tag, escape(type_name), escape(moid), tag)


def retrieve_request(collector_moid, views, prop_specs, page_size=None):
    """SOAP body of RetrievePropertiesEx over ContainerViews.

    ``views``: ContainerView moids (each traversed to the objects it shows).
    ``prop_specs``: list of ``(wsdl type name, [paths])``."""
    parts = ['<RetrievePropertiesEx xmlns="urn:vim25">', _moref_xml("_this", "PropertyCollector", collector_moid),
             "<specSet>"]
    for type_name, paths in prop_specs:
        parts.append("<propSet><type>%s</type><all>false</all>%s</propSet>"
                     % (escape(type_name), "".join("<pathSet>%s</pathSet>" % escape(p) for p in paths)))
    for moid in views:
        parts.append('<objectSet>%s<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>cbtView</name>'
                     '<type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>'
                     % _moref_xml("obj", "ContainerView", moid))
    parts.append("</specSet><options>")
    if page_size:
        parts.append("<maxObjects>%d</maxObjects>" % int(page_size))
    parts.append("</options></RetrievePropertiesEx>")
    return _envelope("".join(parts))


def continue_request(collector_moid, token):
    return _envelope('<ContinueRetrievePropertiesEx xmlns="urn:vim25">%s<token>%s</token>'
                     '</ContinueRetrievePropertiesEx>' % (_moref_xml("_this", "PropertyCollector", collector_moid),
                                                          escape(token)))


def _post(stub, body):
    """POST over pyVmomi's connection pool, as pyVmomi does (cookie, SOAPAction)."""
    try:
        headers = {"Cookie": stub.cookie, "SOAPAction": stub.versionId,
                   "Content-Type": "text/xml; charset=UTF-8", "User-Agent": "cbt.toolkit fast retrieve"}
        conn = stub.GetConnection()
    except AttributeError as exc:
        raise FastPathUnavailable("pyVmomi stub without connection pool: %s" % exc)
    try:
        conn.request("POST", stub.path, body.encode("utf-8"), headers)
        resp = conn.getresponse()
        data = resp.read()
    except Exception as exc:
        conn.close()
        stub.DropConnections()
        raise FastPathUnavailable("transport: %s" % exc)
    stub.ReturnConnection(conn)
    if resp.status != 200:
        if _NOT_AUTHENTICATED_RE.search(data, 0, 8192):
            raise SessionExpired("NotAuthenticated")
        raise FastPathUnavailable("HTTP %s" % resp.status)
    encoding = (resp.getheader("Content-Encoding") or "identity").lower()
    if encoding != "identity":
        raise FastPathUnavailable("content encoding %s" % encoding)
    return data


def _wsdl_type(name, default_ns=VIM_NS):
    if ":" in name:
        prefix, name = name.split(":", 1)
        ns = XSD_NS if prefix in ("xsd", "xs") else default_ns
    else:
        ns = default_ns
    try:
        return VmomiSupport.GetWsdlType(ns, name)
    except KeyError:
        if ns != XSD_NS:
            try:
                return VmomiSupport.GetWsdlType(XSD_NS, name)
            except KeyError:
                pass
        raise FastPathUnavailable("unknown type %s" % name)


_IS_CACHE = {}


def _is(cls, base):
    key = (cls, base)
    known = _IS_CACHE.get(key)
    if known is None:
        try:
            known = issubclass(cls, base)
        except TypeError:
            known = False
        _IS_CACHE[key] = known
    return known


# The device fields the CBT modules read (describe_disks); other fields of kept devices are skipped.
DEVICE_FIELDS = frozenset([
    "key", "deviceInfo", "label", "summary", "controllerKey", "unitNumber", "busNumber", "capacityInKB",
    "capacityInBytes", "backing", "fileName", "descriptorFileName", "diskMode", "changeId", "compatibilityMode",
    "deviceName", "lunUuid", "uuid", "thinProvisioned", "sharing",
])


class Converter(object):
    """XML element -> Python/pyVmomi value, with an optional device filter."""

    def __init__(self, stub, keep_device=None, device_fields=DEVICE_FIELDS):
        self.stub = stub
        self.keep_device = keep_device
        self.device_fields = device_fields

    def primitive(self, text, cls, name):
        text = text or ""
        if name == "dateTime" or (cls is not None and getattr(cls, "__name__", "") == "datetime"):
            return ParseISO8601(text)
        if cls is bool or name == "boolean":
            return text.strip() == "true"
        if name in INT_TYPES or _is(cls, int):
            return cls(int(text)) if _is(cls, int) and cls is not bool else int(text)
        if name in ("double", "float"):
            return float(text)
        return text

    def moref(self, elem, default_cls=None):
        mo_type = elem.get("type")
        mo_cls = _wsdl_type(mo_type) if mo_type else default_cls
        if mo_cls is None:
            raise FastPathUnavailable("managed object reference without type")
        return mo_cls(elem.text, self.stub)

    def value(self, elem, declared=None):
        xsi = elem.get(XSI_TYPE)
        local = xsi.split(":")[-1] if xsi else None
        if local == "ManagedObjectReference":
            return self.moref(elem)
        if local == "ArrayOfManagedObjectReference":
            return [self.moref(child) for child in elem]
        cls = _wsdl_type(xsi) if xsi else declared
        if cls is None:
            return elem.text or ""
        name = xsi.split(":")[-1] if xsi else getattr(cls, "_wsdlName", "")
        if _is(cls, VmomiSupport.ManagedObject):
            return self.moref(elem, cls)
        if _is(cls, list):
            item = getattr(cls, "Item", None)
            if item is not None and self.keep_device is not None and _is(item, vim.vm.device.VirtualDevice):
                return self.devices(elem, item)
            return [self.value(child, item) for child in elem]
        if _is(cls, VmomiSupport.DataObject):
            return self.data_object(elem, cls)
        if _is(cls, VmomiSupport.Enum):
            return (elem.text or "").strip()
        return self.primitive(elem.text, cls, name)

    def devices(self, elem, item):
        """Only the devices ``keep_device(cls, key, disk_controller_keys)`` wants: by default the
        disks and the controllers they sit on (a VM has many other devices nobody here reads)."""
        typed = []
        for child in elem:
            child_xsi = child.get(XSI_TYPE)
            typed.append((child, _wsdl_type(child_xsi) if child_xsi else item))
        controller_keys = set()
        for child, cls in typed:
            if _is(cls, vim.vm.device.VirtualDisk):
                ckey = child.find("{%s}controllerKey" % VIM_NS)
                if ckey is not None and ckey.text:
                    controller_keys.add(ckey.text.strip())
        out = []
        for child, cls in typed:
            key = child.find("{%s}key" % VIM_NS)
            if self.keep_device(cls, (key.text or "").strip() if key is not None else None, controller_keys):
                out.append(self.data_object(child, cls, self.device_fields))
        return out

    def data_object(self, elem, cls, fields=None):
        obj = cls()
        arrays = {}
        for child in elem:
            field = _local(child.tag)
            if fields is not None and field not in fields:
                continue
            try:
                info = cls._GetPropertyInfo(field)
            except (AttributeError, KeyError):
                continue  # a newer server's field this pyVmomi does not know
            ptype = info.type
            try:
                if _is(ptype, list):
                    arrays.setdefault(field, []).append(self.value(child, ptype.Item))
                elif fields is not None and _is(ptype, VmomiSupport.DataObject):
                    xsi = child.get(XSI_TYPE)
                    setattr(obj, field, self.data_object(child, _wsdl_type(xsi) if xsi else ptype, fields))
                else:
                    setattr(obj, field, self.value(child, ptype))
            except (TypeError, ValueError, FastPathUnavailable):
                continue  # a field the CBT modules never read, in a form this reader does not handle
        for field, values in arrays.items():
            try:
                setattr(obj, field, values)
            except (TypeError, ValueError):
                continue
        return obj


def keep_disks_and_controllers(cls, key, disk_controller_keys):
    if _is(cls, vim.vm.device.VirtualDisk):
        return True
    return _is(cls, vim.vm.device.VirtualController) and key in disk_controller_keys


def parse_response(data, converter):
    """Rows ``(managed_object, {path: value}, [missing paths])`` and the continuation token."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FastPathUnavailable("unparsable answer: %s" % exc)
    body = root.find("{%s}Body" % SOAP_ENV)
    if body is None or len(body) == 0:
        raise FastPathUnavailable("no SOAP body")
    response = body[0]
    if _local(response.tag) == "Fault":
        raise FastPathUnavailable("fault")
    rows = []
    token = None
    returnval = response.find("{%s}returnval" % VIM_NS)
    if returnval is None:
        return rows, None
    for child in returnval:
        tag = _local(child.tag)
        if tag == "token":
            token = child.text
        elif tag == "objects":
            obj = None
            props = {}
            missing = []
            for part in child:
                ptag = _local(part.tag)
                if ptag == "obj":
                    obj = _wsdl_type(part.get("type"))(part.text, converter.stub)
                elif ptag == "propSet":
                    name = part.find("{%s}name" % VIM_NS)
                    val = part.find("{%s}val" % VIM_NS)
                    if name is None:
                        continue
                    try:
                        props[name.text] = converter.value(val) if val is not None else None
                    except (TypeError, ValueError) as exc:
                        raise FastPathUnavailable("value of %s: %s" % (name.text, exc))
                elif ptag == "missingSet":
                    path = part.find("{%s}path" % VIM_NS)
                    if path is not None:
                        missing.append(path.text)
            rows.append((obj, props, missing))
    return rows, token


def _peek_token(data):
    """The continuation token of a raw answer, read before parsing it (``token`` comes first in
    a ``RetrieveResult``)."""
    match = _TOKEN_RE.search(data, 0, 4096)
    return match.group(1).decode("utf-8") if match else None


def retrieve_views(client, views, prop_specs, page_size=None, keep_device=keep_disks_and_controllers):
    """``RetrievePropertiesEx`` over ContainerViews, parsed fast, pages pipelined.
    Raises FastPathUnavailable."""
    if VmomiSupport is None:
        raise FastPathUnavailable("pyVmomi missing")
    stub = client.stub
    collector = client.content.propertyCollector._moId
    converter = Converter(stub, keep_device)
    data = _post(stub, retrieve_request(collector, [v._moId for v in views], prop_specs, page_size or PAGE_SIZE))
    rows = []
    with ThreadPoolExecutor(max_workers=1) as fetcher:
        while True:
            token = _peek_token(data)
            pending = fetcher.submit(_post, stub, continue_request(collector, token)) if token else None
            try:
                more, parsed_token = parse_response(data, converter)
            except FastPathUnavailable:
                if pending is not None:
                    pending.exception()  # let the request finish before the pyVmomi fallback runs
                raise
            if parsed_token != token:
                raise FastPathUnavailable("continuation token not where expected")
            rows.extend(more)
            if pending is None:
                return rows
            data = pending.result()
