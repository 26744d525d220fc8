# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fast RetrievePropertiesEx reader: request XML, answer parsing (vcsim's odd namespace
prefixes included), device filtering, and falling back on anything unexpected."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import xml.etree.ElementTree as ET

import pytest
from pyVmomi import vim

from ansible_collections.cbt.toolkit.plugins.module_utils import _vmware_fastretrieve as fr
from ansible_collections.cbt.toolkit.plugins.module_utils._vmware_disks import describe_disks

X = 'xmlns:_XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" _XMLSchema-instance:type'
CID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/3"

ANSWER = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25">
<returnval><token>tok-1</token><objects><obj type="VirtualMachine">vm-62</obj>
<propSet><name>name</name><val {x}="xsd:string">web &amp; db</val></propSet>
<propSet><name>parent</name><val type="Folder" {x}="ManagedObjectReference">group-4</val></propSet>
<propSet><name>config.template</name><val {x}="xsd:boolean">false</val></propSet>
<propSet><name>config.changeTrackingEnabled</name><val {x}="xsd:boolean">true</val></propSet>
<propSet><name>runtime.powerState</name><val {x}="VirtualMachinePowerState">poweredOn</val></propSet>
<propSet><name>rootSnapshot</name><val {x}="ArrayOfManagedObjectReference">
  <ManagedObjectReference type="VirtualMachineSnapshot">snapshot-7</ManagedObjectReference></val></propSet>
<propSet><name>config.hardware.device</name><val {x}="ArrayOfVirtualDevice">
  <VirtualDevice {x}="VirtualIDEController"><key>200</key>
    <deviceInfo><label>IDE 0</label><summary>IDE 0</summary></deviceInfo><busNumber>0</busNumber></VirtualDevice>
  <VirtualDevice {x}="ParaVirtualSCSIController"><key>1000</key>
    <deviceInfo><label>SCSI controller 0</label><summary>x</summary></deviceInfo><busNumber>0</busNumber>
    <device>2000</device><device>2001</device><sharedBus>noSharing</sharedBus><scsiCtlrUnitNumber>7</scsiCtlrUnitNumber>
  </VirtualDevice>
  <VirtualDevice {x}="VirtualE1000"><key>4000</key><deviceInfo><label>Network adapter 1</label><summary>VM Network</summary></deviceInfo></VirtualDevice>
  <VirtualDevice {x}="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label><summary>x</summary></deviceInfo>
    <backing {x}="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] vm/vm.vmdk</fileName><diskMode>persistent</diskMode>
      <thinProvisioned>true</thinProvisioned><changeId>{cid}</changeId><futureField>ignored</futureField></backing>
    <controllerKey>1000</controllerKey><unitNumber>0</unitNumber>
    <capacityInKB>1048576</capacityInKB><capacityInBytes>1073741824</capacityInBytes></VirtualDevice>
  <VirtualDevice {x}="VirtualDisk"><key>2001</key><deviceInfo><label>Hard disk 2</label><summary>x</summary></deviceInfo>
    <backing {x}="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] vm/vm_1.vmdk</fileName><diskMode>independent_persistent</diskMode></backing>
    <controllerKey>1000</controllerKey><unitNumber>1</unitNumber><capacityInBytes>4096</capacityInBytes></VirtualDevice>
</val></propSet>
<missingSet><path>config.uuid</path><fault><fault {x}="NoPermission"><privilegeId>System.Read</privilegeId></fault></fault></missingSet>
</objects>
<objects><obj type="Folder">group-4</obj><propSet><name>name</name><val {x}="xsd:string">vm</val></propSet>
<propSet><name>parent</name><val type="Datacenter" {x}="ManagedObjectReference">datacenter-2</val></propSet></objects>
</returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>""".replace("{x}", X).replace("{cid}", CID)


class Stub(object):
    pass


def test_answer_is_parsed_into_the_same_values_pyvmomi_gives():
    stub = Stub()
    rows, token = fr.parse_response(ANSWER.encode(), fr.Converter(stub, fr.keep_disks_and_controllers))
    assert token == "tok-1" and len(rows) == 2
    obj, props, missing = rows[0]
    assert isinstance(obj, vim.VirtualMachine) and obj._moId == "vm-62" and obj._stub is stub
    assert props["name"] == "web & db" and props["config.template"] is False
    assert props["config.changeTrackingEnabled"] is True and props["runtime.powerState"] == "poweredOn"
    assert isinstance(props["parent"], vim.Folder) and props["parent"]._moId == "group-4"
    assert [s._moId for s in props["rootSnapshot"]] == ["snapshot-7"]
    assert isinstance(props["rootSnapshot"][0], vim.vm.Snapshot)
    assert missing == ["config.uuid"]
    devices = props["config.hardware.device"]
    # the IDE controller (no disk on it) and the NIC are skipped
    assert [type(d).__name__ for d in devices] == ["vim.vm.device.ParaVirtualSCSIController",
                                                   "vim.vm.device.VirtualDisk", "vim.vm.device.VirtualDisk"]
    assert devices[0].busNumber == 0 and devices[0].key == 1000
    disks = describe_disks(devices)
    assert disks[0]["change_id"] == CID and disks[0]["capacity_bytes"] == 1 << 30
    assert disks[0]["device_node"] == "scsi0:0" and disks[0]["label"] == "Hard disk 1" and disks[0]["eligible"]
    assert disks[1]["eligible"] is False and "independent" in disks[1]["reason"]
    assert isinstance(rows[1][0], vim.Folder) and isinstance(rows[1][1]["parent"], vim.Datacenter)


def test_request_is_well_formed_and_escaped():
    body = fr.retrieve_request("propertyCollector", ["session[1]<x>"], [("VirtualMachine", ["name", "a&b"])], 100)
    root = ET.fromstring(body)
    text = ET.tostring(root).decode()
    assert "session[1]&lt;x&gt;" in text and "a&amp;b" in text and "<maxObjects>100</maxObjects>" in body
    cont = ET.fromstring(fr.continue_request("propertyCollector", "t&1"))
    assert cont is not None


@pytest.mark.parametrize("answer,words", [
    ('<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault>'
     '<faultcode>ServerFaultCode</faultcode></soapenv:Fault></soapenv:Body></soapenv:Envelope>', "fault"),
    ("not xml", "unparsable"),
    (ANSWER.replace('"xsd:string">vm<', '"NoSuchType">vm<'), "unknown type"),
])
def test_anything_unexpected_means_fall_back(answer, words):
    with pytest.raises(fr.FastPathUnavailable) as err:
        fr.parse_response(answer.encode(), fr.Converter(Stub(), fr.keep_disks_and_controllers))
    assert words in str(err.value)


class Conn(object):
    def __init__(self, status, data, headers=None):
        self.status, self.data, self.headers = status, data, headers or {}
        self.sent = []

    def request(self, method, path, body, headers):
        self.sent.append((method, path, body, headers))

    def getresponse(self):
        return self

    def read(self):
        return self.data

    def getheader(self, name, default=None):
        return self.headers.get(name, default)

    def close(self):
        pass


class PoolStub(object):
    cookie = 'vmware_soap_session="abc"'
    versionId = '"urn:vim25/8.0.3.0"'
    path = "/sdk"

    def __init__(self, conn):
        self.conn = conn
        self.returned = 0

    def GetConnection(self):
        return self.conn

    def ReturnConnection(self, conn):
        self.returned += 1

    def DropConnections(self):
        pass


def test_post_sends_the_session_cookie_and_soap_action():
    conn = Conn(200, b"<x/>")
    stub = PoolStub(conn)
    assert fr._post(stub, "<body/>") == b"<x/>"
    method, path, _body, headers = conn.sent[0]
    assert (method, path) == ("POST", "/sdk") and headers["Cookie"] == stub.cookie
    assert headers["SOAPAction"] == stub.versionId and stub.returned == 1


@pytest.mark.parametrize("status,headers", [(500, {}), (200, {"Content-Encoding": "gzip"})])
def test_post_refuses_errors_and_encodings(status, headers):
    with pytest.raises(fr.FastPathUnavailable):
        fr._post(PoolStub(Conn(status, b"", headers)), "<body/>")


def test_token_is_read_before_parsing_and_only_at_the_start():
    assert fr._peek_token(ANSWER.encode()) == "tok-1"
    assert fr._peek_token(ANSWER.replace("<token>tok-1</token>", "").encode()) is None
    # a <token> deep inside the objects is not a continuation token
    late = ANSWER.replace("<token>tok-1</token>", "") + " " * 5000 + "<returnval><token>x</token>"
    assert fr._peek_token(late.encode()) is None


def test_post_tells_an_expired_session_apart_from_other_faults():
    expired = (b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
               b'<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The session is not '
               b'authenticated.</faultstring><detail><NotAuthenticatedFault xmlns="urn:vim25" '
               b'xsi:type="NotAuthenticated"></NotAuthenticatedFault></detail></soapenv:Fault></soapenv:Body>'
               b'</soapenv:Envelope>')
    with pytest.raises(fr.SessionExpired):
        fr._post(PoolStub(Conn(500, expired)), "<body/>")
    other = expired.replace(b"NotAuthenticatedFault", b"ManagedObjectNotFoundFault")
    with pytest.raises(fr.FastPathUnavailable) as exc:
        fr._post(PoolStub(Conn(500, other)), "<body/>")
    assert not isinstance(exc.value, fr.SessionExpired)
