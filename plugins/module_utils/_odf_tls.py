# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private: TLS material for the snapshot metadata service when no service CA signs it.

A private CA (kept in its own Secret) signs the server certificate of the sidecar. Renewing the
server certificate keeps the CA, so the ``caCert`` published in the SnapshotMetadataService does
not change and clients keep working; the sidecar reloads the files when the Secret changes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import re
import traceback

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMP_ERR = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMP_ERR = traceback.format_exc()

_PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


class TlsError(Exception):
    pass


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def service_dns_names(service, namespace, cluster_domain="cluster.local"):
    """The names a client may use for a Service: ``svc``, ``svc.ns``, ``svc.ns.svc``, FQDN."""
    names = [service, "%s.%s" % (service, namespace), "%s.%s.svc" % (service, namespace)]
    if cluster_domain:
        names.append("%s.%s.svc.%s" % (service, namespace, cluster_domain.strip(".")))
    return names


def split_pem_certs(pem):
    """The individual certificate blocks of a PEM bundle (text)."""
    if isinstance(pem, bytes):
        pem = pem.decode("ascii", "replace")
    return [m.group(0).strip() + "\n" for m in _PEM_CERT_RE.finditer(pem or "")]


def _to_bytes(pem):
    return pem if isinstance(pem, bytes) else (pem or "").encode("ascii")


def load_cert(pem):
    try:
        return x509.load_pem_x509_certificate(_to_bytes(pem))
    except (ValueError, TypeError) as exc:
        raise TlsError("not a PEM certificate: %s" % exc)


def load_key(pem):
    try:
        return serialization.load_pem_private_key(_to_bytes(pem), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError("not an unencrypted PEM private key: %s" % exc)


def _not_after(cert):
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def _not_before(cert):
    value = getattr(cert, "not_valid_before_utc", None)
    if value is None:
        value = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    return value


def _dns_sans(cert):
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def _is_ca(cert):
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def fingerprint(pem):
    """SHA-256 of a PEM text, for reports that must not carry the material itself."""
    return "sha256:" + hashlib.sha256(_to_bytes(pem)).hexdigest()[:16]


def cert_info(pem, now=None):
    """A summary of the first certificate of ``pem`` for results and diagnosis."""
    cert = load_cert(pem)
    now = now or utcnow()
    not_after = _not_after(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": _not_before(cert).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_remaining": int((not_after - now).total_seconds() // 86400),
        "dns_names": _dns_sans(cert),
        "is_ca": _is_ca(cert),
    }


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def generate_ca(common_name, days, now=None):
    """A new CA certificate and key (PEM text each)."""
    now = now or utcnow()
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cbt.toolkit")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=int(days)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return _cert_pem(cert), _key_pem(key)


def issue_server_cert(ca_cert_pem, ca_key_pem, dns_names, days, now=None):
    """A server certificate for ``dns_names`` signed by the CA, and its key (PEM text each)."""
    if not dns_names:
        raise TlsError("a server certificate needs at least one DNS name")
    now = now or utcnow()
    ca_cert = load_cert(ca_cert_pem)
    ca_key = load_key(ca_key_pem)
    key = _new_key()
    ca_not_after = _not_after(ca_cert)
    not_after = min(now + datetime.timedelta(days=int(days)), ca_not_after)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0][:64])]))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=True, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    try:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    except (AttributeError, TypeError, ValueError):
        pass
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def _signed_by(cert, ca_cert):
    if cert.issuer != ca_cert.subject:
        return False
    verify = getattr(cert, "verify_directly_issued_by", None)
    try:
        if verify is not None:
            verify(ca_cert)
            return True
        pub = ca_cert.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       cert.signature_hash_algorithm)
        else:
            return False
        return True
    except Exception:  # pylint: disable=broad-except  # InvalidSignature, ValueError, TypeError
        return False


def _same_public_key(cert, key):
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def ca_problems(ca_cert_pem, ca_key_pem, renew_before_days, now=None):
    """Why the stored CA cannot be kept (empty list: keep it)."""
    now = now or utcnow()
    if not ca_cert_pem or not ca_key_pem:
        return ["the CA secret has no tls.crt/tls.key"]
    try:
        cert = load_cert(ca_cert_pem)
        key = load_key(ca_key_pem)
    except TlsError as exc:
        return ["the CA secret is unreadable: %s" % exc]
    problems = []
    if not _is_ca(cert):
        problems.append("the CA certificate is not a CA (basicConstraints)")
    if not _same_public_key(cert, key):
        problems.append("the CA key does not match the CA certificate")
    left = _not_after(cert) - now
    if left < datetime.timedelta(days=int(renew_before_days)):
        problems.append("the CA certificate expires on %s (less than %s days left)"
                        % (_not_after(cert).strftime("%Y-%m-%d"), renew_before_days))
    return problems


def server_cert_problems(cert_pem, key_pem, ca_cert_pem, dns_names, renew_before_days, now=None):
    """Why the stored server certificate must be reissued (empty list: keep it)."""
    now = now or utcnow()
    if not cert_pem or not key_pem:
        return ["the TLS secret has no tls.crt/tls.key"]
    try:
        cert = load_cert(cert_pem)
        key = load_key(key_pem)
        ca_cert = load_cert(ca_cert_pem)
    except TlsError as exc:
        return ["the TLS secret is unreadable: %s" % exc]
    problems = []
    if not _same_public_key(cert, key):
        problems.append("tls.key does not match tls.crt")
    if not _signed_by(cert, ca_cert):
        problems.append("tls.crt is not signed by the current CA")
    missing = [n for n in dns_names if n not in _dns_sans(cert)]
    if missing:
        problems.append("tls.crt lacks the DNS names %s" % ", ".join(missing))
    if _not_before(cert) > now + datetime.timedelta(minutes=10):
        problems.append("tls.crt is not valid yet")
    left = _not_after(cert) - now
    if left < datetime.timedelta(days=int(renew_before_days)):
        problems.append("tls.crt expires on %s (less than %s days left)"
                        % (_not_after(cert).strftime("%Y-%m-%dT%H:%M:%SZ"), renew_before_days))
    return problems
