# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain Kubernetes (no OpenShift APIs, no service CA, no OLM) with an upstream ceph-csi-operator
whose sidecar gate is the tls-key volume alone: self-managed TLS, renewal, absent."""

import base64
import datetime
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from odf_bed import ok
from testbed.odf_operator import OperatorProfile

ENABLE = "odf_cbt_enable"
INFO = "odf_cbt_info"
SIDECAR = "csi-snapshot-metadata"
NS = "rook-ceph"
NAMES = ["csi-snapshot-metadata", "csi-snapshot-metadata.rook-ceph", "csi-snapshot-metadata.rook-ceph.svc",
         "csi-snapshot-metadata.rook-ceph.svc.cluster.local"]


def _secret(bed, name):
    return bed.get("/api/v1/namespaces/%s/secrets/%s" % (NS, name))


def _cert(secret, key="tls.crt"):
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def _sans(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_self_managed_tls_enable_renew_absent(k8s_bed, run_module):
    driver, op = k8s_bed.setup_odf(NS, "0.0.0", profile=OperatorProfile.upstream_main(), olm=False, imageset=False)
    args = k8s_bed.run_args(driver=driver, namespace=NS)

    info, run = run_module(INFO, k8s_bed.info_args(driver=driver, namespace=NS))
    ok(info, run)
    diag = info["diagnosis"]
    assert diag["kubernetes"]["openshift"] is False and diag["operator"]["version"] is None
    assert diag["cbt_supported"] is None and diag["tls"]["provider"] == "self_managed"
    assert diag["scc"]["found"] is False

    res, run = run_module(ENABLE, args, diff=True)
    ok(res, run)
    assert res["changed"] is True and res["diagnosis"]["cbt_enabled"] is True, res["diagnosis"]["problems"]
    assert res["tls"]["provider"] == "self_managed" and res["tls"]["renewed"] is False
    assert res["tls"]["dns_names"] == NAMES
    # private key material never shows in the output, only fingerprints in the diff
    tls_secret = _secret(k8s_bed, "csi-snapshot-metadata-tls")
    ca_secret = _secret(k8s_bed, "csi-snapshot-metadata-ca")
    assert tls_secret["type"] == "kubernetes.io/tls" and ca_secret["type"] == "kubernetes.io/tls"
    for secret in (tls_secret, ca_secret):
        assert secret["data"]["tls.key"] not in run.stdout
        assert base64.b64decode(secret["data"]["tls.key"]).decode().splitlines()[1] not in run.stdout
    assert "<redacted sha256:" in json.dumps(res["diff"])

    # certificate: right SANs, signed by the CA that the SMS publishes
    cert, ca = _cert(tls_secret), _cert(ca_secret)
    assert sorted(_sans(cert)) == sorted(NAMES)
    cert.verify_directly_issued_by(ca)
    sms = k8s_bed.sms(driver)
    assert base64.b64decode(sms["spec"]["caCert"]) == base64.b64decode(ca_secret["data"]["tls.crt"])
    assert sms["spec"]["address"] == "csi-snapshot-metadata.%s.svc:6443" % NS
    # the upstream operator gates on the volume and passes --audience; no SCC -> secret volume
    dep = k8s_bed.deployment(NS, driver)
    side = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == SIDECAR][0]
    assert "--audience=%s" % driver in side["args"]
    vol = k8s_bed.driver(NS, driver)["spec"]["controllerPlugin"]["volumes"][0]["volume"]
    assert vol == {"name": "tls-key", "secret": {"secretName": "csi-snapshot-metadata-tls"}}
    svc = k8s_bed.get("/api/v1/namespaces/%s/services/csi-snapshot-metadata" % NS)
    assert not (svc["metadata"].get("annotations") or {})

    # idempotent
    res, run = run_module(ENABLE, args)
    assert res["changed"] is False, res["actions"]
    assert _secret(k8s_bed, "csi-snapshot-metadata-tls")["metadata"]["resourceVersion"] == \
        tls_secret["metadata"]["resourceVersion"]

    # renewal before the threshold keeps the CA (and so the published caCert)
    sms_rv = k8s_bed.sms(driver)["metadata"]["resourceVersion"]
    renew = dict(args, cert_validity_days=500, cert_renew_before_days=400)
    res, run = run_module(ENABLE, renew)
    ok(res, run)
    assert res["changed"] is True and res["tls"]["renewed"] is True
    assert "less than 400 days left" in res["tls"]["renew_reasons"][0]
    assert res["actions"] == ["update Secret %s/csi-snapshot-metadata-tls" % NS]
    new = _secret(k8s_bed, "csi-snapshot-metadata-tls")
    assert _cert(new).serial_number != cert.serial_number
    _cert(new).verify_directly_issued_by(ca)
    assert _secret(k8s_bed, "csi-snapshot-metadata-ca")["metadata"]["resourceVersion"] == \
        ca_secret["metadata"]["resourceVersion"]
    assert k8s_bed.sms(driver)["metadata"]["resourceVersion"] == sms_rv
    res, run = run_module(ENABLE, renew)
    assert res["changed"] is False, res["actions"]

    # a certificate without the Service names (e.g. replaced by hand) is reissued
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(base64.b64decode(ca_secret["data"]["tls.key"]), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    bad = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=300))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("wrong.example")]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    k8s_bed.rest.merge("/api/v1/namespaces/%s/secrets/csi-snapshot-metadata-tls" % NS, {"data": {
        "tls.crt": base64.b64encode(bad.public_bytes(serialization.Encoding.PEM)).decode(),
        "tls.key": base64.b64encode(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())).decode()}})
    res, run = run_module(ENABLE, args)
    assert res["changed"] is True and any("lacks the DNS names" in r for r in res["tls"]["renew_reasons"])
    assert sorted(_sans(_cert(_secret(k8s_bed, "csi-snapshot-metadata-tls")))) == sorted(NAMES)

    # absent: the volume goes (the upstream gate), so does the sidecar and everything of ours
    res, run = run_module(ENABLE, dict(args, state="absent"), diff=True)
    ok(res, run)
    assert SIDECAR not in k8s_bed.containers(NS, driver)
    assert k8s_bed.ours(NS) == [] and k8s_bed.crd() is None
    assert _secret(k8s_bed, "csi-snapshot-metadata-tls") is None
    res, run = run_module(ENABLE, dict(args, state="absent"))
    assert res["changed"] is False, res["actions"]
    k8s_bed.check_loops()


def test_absent_keeps_the_crd_while_a_foreign_sms_named_after_the_driver_remains(k8s_bed, own_odf, run_module):
    ns = "rook-foreign"
    driver, op = own_odf(k8s_bed, ns, "0.0.0", profile=OperatorProfile.upstream_main(), olm=False, imageset=False)
    args = k8s_bed.run_args(driver=driver, namespace=ns)
    res, run = run_module(ENABLE, args)
    ok(res, run)
    assert k8s_bed.sms(driver) is not None and "crd" in k8s_bed.ours(ns)

    # someone takes the SnapshotMetadataService over: without our label it is not ours any more
    sms_path = "/apis/cbt.storage.k8s.io/v1beta1/snapshotmetadataservices/%s" % driver
    k8s_bed.rest.merge(sms_path, {"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone-else"}}})
    foreign = k8s_bed.sms(driver)

    for check in (True, False):
        res, run = run_module(ENABLE, dict(args, state="absent"), check=check)
        ok(res, run)
        assert not [a for a in res["actions"] if "CustomResourceDefinition" in a or "SnapshotMetadataService" in a]
        why = ("SnapshotMetadataService %s was not created by cbt.toolkit and is left in place, and deleting the "
               "CRD would delete it too" % driver)
        kept = [w for w in res.get("warnings") or []
                if w.startswith("CustomResourceDefinition snapshotmetadataservices.cbt.storage.k8s.io kept")]
        assert len(kept) == 1 and why in kept[0], res.get("warnings")
        # the CRD and with it the foreign SnapshotMetadataService survive
        assert k8s_bed.crd() is not None
        assert k8s_bed.sms(driver)["metadata"]["uid"] == foreign["metadata"]["uid"]

    # once it is gone, absent removes the CRD
    k8s_bed.rest.delete(sms_path)
    res, run = run_module(ENABLE, dict(args, state="absent"))
    ok(res, run)
    assert res["actions"] == ["delete CustomResourceDefinition snapshotmetadataservices.cbt.storage.k8s.io"]
    k8s_bed.wait_for("CRD deleted", lambda: k8s_bed.crd() is None)
    k8s_bed.check_loops()
