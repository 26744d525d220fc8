# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real Kubernetes API server for the integration tests: etcd + kube-apiserver on loopback.

    cluster = KubeCluster(name="crd-v1beta1").start()   # seconds once the binaries are built
    cluster.host, cluster.kubeconfig, cluster.ca_file
    api = cluster.api_client()                           # kubernetes.client.ApiClient (admin)
    path = cluster.user_kubeconfig("alice")              # client-cert user without privileges
    cluster.env()                                        # K8S_AUTH_KUBECONFIG, KUBECONFIG
    cluster.stop()

The binaries come from tests/peers/kube (``tests/peers/build.sh kube``). Each cluster has its own
etcd (plain HTTP on 127.0.0.1, free ports, data under the test output folder), its own PKI made
here with ``cryptography`` (CA, serving certificate for 127.0.0.1/localhost, an admin client
certificate in ``system:masters``, a service-account signing key) and its own kube-apiserver
(HTTPS on 127.0.0.1, a free port, ``--authorization-mode=RBAC``, service-account token issuing
so TokenRequest/TokenReview work). Several clusters can run at once.

What is NOT there, by design: no kubelet, no kube-controller-manager, no scheduler. So nothing
runs pods, the garbage collector does not cascade-delete owned objects, a deleted namespace stays
``Terminating`` (use unique namespace names per test), namespaces get no ``default``
ServiceAccount and no ``kube-root-ca.crt`` ConfigMap, and the aggregated ClusterRoles ``admin``,
``edit`` and ``view`` have no rules (the aggregation controller fills them): bind your own roles. The admission plugins that only make sense with
controllers are disabled (``ServiceAccount``, which would wait for the ``default`` account, and
``StorageObjectInUseProtection``, whose finalizers only controllers remove); all the others that
kube-apiserver enables by default stay on.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import itertools
import json
import os
import re
import shutil
import ssl
import time
import urllib.request
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.core import PeerError, Process, bin_dir, free_port, output_dir, require_binary

_SEQ = itertools.count()

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: Admission plugins switched off because they need controllers this test bed does not run.
DISABLED_ADMISSION_PLUGINS = ("ServiceAccount", "StorageObjectInUseProtection")
ADMIN_USER = "cbt-testbed-admin"


# --------------------------------------------------------------------------------------------
# PKI helpers (also used by testbed.vcsim)
# --------------------------------------------------------------------------------------------

def new_key(kind: str = "ec"):
    """A fresh private key: ECDSA P-256 (fast) or RSA 2048."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organizations=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def new_ca(common_name: str, days: int = 30):
    """A self-signed CA: returns ``(key, certificate)``."""
    key = new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(ca_key, ca_cert, common_name: str, organizations=(), dns_names=(), ip_addresses=(),
               server: bool = False, client: bool = False, days: int = 30):
    """A leaf certificate signed by ``ca``: returns ``(key, certificate)``."""
    key = new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> Path:
    """Write a secret file readable by the owner only."""
    path = Path(path)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------

def _kubeconfig(server: str, ca_pem: bytes, cert: bytes, key: bytes, user: str, cluster: str) -> dict:
    def b64(data):
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "%s@%s" % (user, cluster), "context": {"cluster": cluster, "user": user}}],
        "current-context": "%s@%s" % (user, cluster),
        "preferences": {},
    }


def _address_in_use(log: Path) -> bool:
    try:
        text = log.read_text(errors="replace")[-20000:]
    except OSError:
        return False
    return "address already in use" in text


class KubeCluster:
    """etcd + kube-apiserver on loopback; see the module docstring."""

    peer = "kube-apiserver"

    def __init__(self, name: str = "default", workdir=None, extra_apiserver_args=(), start_timeout: float = 180.0):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            raise ValueError("cluster name %r: use letters, digits, '.', '_' and '-'" % name)
        self.name = name
        self.id = "%s-%d-%d" % (name, os.getpid(), next(_SEQ))
        self.workdir = Path(workdir) if workdir else output_dir() / "kube" / self.id
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.start_timeout = start_timeout
        self.etcd_bin = bin_dir() / "etcd"
        self.apiserver_bin = bin_dir() / "kube-apiserver"
        self.host: str | None = None
        self.port: int | None = None
        self.etcd_url: str | None = None
        self.kubeconfig: Path | None = None
        self.ca_file: Path | None = None
        self.admin_cert_file: Path | None = None
        self.admin_key_file: Path | None = None
        self.version: dict | None = None
        self.startup_seconds: float | None = None
        self.etcd: Process | None = None
        self.apiserver: Process | None = None
        self._ca = None

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> "KubeCluster":
        require_binary("etcd", self.etcd_bin)
        require_binary(self.peer, self.apiserver_bin)
        began = time.monotonic()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "pki").mkdir(parents=True)
        self._make_pki()
        for attempt in range(3):
            try:
                self._start_etcd()
                self._start_apiserver()
                break
            except PeerError:
                retry = attempt < 2 and any(p is not None and not p.alive() and _address_in_use(p.log)
                                            for p in (self.etcd, self.apiserver))
                self.stop()
                if not retry:
                    raise
        self._write_admin_kubeconfig()
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for proc in (self.apiserver, self.etcd):
            if proc is not None:
                proc.stop()
        # etcd preallocates its WAL (64 MiB); drop the data of a stopped cluster.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- start-up steps ----------------------------------------------------------------------

    def _make_pki(self) -> None:
        pki = self.workdir / "pki"
        ca_key, ca_cert = new_ca("cbt-testbed-kube-ca-%s" % self.name)
        self._ca = (ca_key, ca_cert)
        self.ca_file = pki / "ca.crt"
        self.ca_file.write_bytes(cert_pem(ca_cert))
        srv_key, srv_cert = issue_cert(
            ca_key, ca_cert, "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                       "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", "10.0.0.1"), server=True)
        (pki / "apiserver.crt").write_bytes(cert_pem(srv_cert) + cert_pem(ca_cert))
        write_private(pki / "apiserver.key", key_pem(srv_key))
        adm_key, adm_cert = issue_cert(ca_key, ca_cert, ADMIN_USER, organizations=("system:masters",),
                                       client=True)
        self.admin_cert_file = pki / "admin.crt"
        self.admin_cert_file.write_bytes(cert_pem(adm_cert))
        self.admin_key_file = write_private(pki / "admin.key", key_pem(adm_key))
        sa_key = new_key("rsa")
        write_private(pki / "sa.key", key_pem(sa_key))
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        while peer_port == client_port:
            peer_port = free_port()
        self.etcd_url = "http://127.0.0.1:%d" % client_port
        peer_url = "http://127.0.0.1:%d" % peer_port
        data = self.workdir / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        member = "etcd-%s" % self.name
        argv = [
            self.etcd_bin,
            "--name=%s" % member,
            "--data-dir=%s" % data,
            "--listen-client-urls=%s" % self.etcd_url,
            "--advertise-client-urls=%s" % self.etcd_url,
            "--listen-peer-urls=%s" % peer_url,
            "--initial-advertise-peer-urls=%s" % peer_url,
            "--initial-cluster=%s=%s" % (member, peer_url),
            "--initial-cluster-state=new",
            "--log-level=warn",
            "--log-outputs=stderr",
            # A throw-away test store: no fsync keeps many parallel clusters cheap on one disk.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=%d" % (256 << 20),
        ]
        self.etcd = Process("etcd", argv, log_name="kube-%s-etcd.log" % self.id).start()

        def healthy():
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                return json.loads(resp.read()).get("health") == "true"

        self.etcd.wait_ready(healthy, timeout=60, what="healthy on %s" % self.etcd_url)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
        return ctx

    def _get(self, path: str, timeout: float = 5):
        with urllib.request.urlopen(self.host + path, context=self._ssl_context(), timeout=timeout) as resp:
            return resp.status, resp.read()

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self.port = free_port()
        self.host = "https://127.0.0.1:%d" % self.port
        argv = [
            self.apiserver_bin,
            "--etcd-servers=%s" % self.etcd_url,
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The endpoint reconciler refuses loopback advertise addresses; nothing routes to
            # the kubernetes Service here anyway.
            "--endpoint-reconciler-type=none",
            "--secure-port=%d" % self.port,
            "--tls-cert-file=%s" % (pki / "apiserver.crt"),
            "--tls-private-key-file=%s" % (pki / "apiserver.key"),
            "--client-ca-file=%s" % self.ca_file,
            "--authorization-mode=RBAC",
            "--service-account-issuer=%s" % SERVICE_ACCOUNT_ISSUER,
            "--service-account-key-file=%s" % (pki / "sa.pub"),
            "--service-account-signing-key-file=%s" % (pki / "sa.key"),
            "--api-audiences=%s" % SERVICE_ACCOUNT_ISSUER,
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=%s" % ",".join(DISABLED_ADMISSION_PLUGINS),
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ] + self.extra_apiserver_args
        self.apiserver = Process(self.peer, argv, log_name="kube-%s-apiserver.log" % self.id).start()

        def ready():
            status, body = self._get("/readyz")
            return status == 200 and body.strip() == b"ok"

        self.apiserver.wait_ready(ready, timeout=self.start_timeout, what="ready (GET %s/readyz)" % self.host)
        self.version = json.loads(self._get("/version")[1])

    def _write_admin_kubeconfig(self) -> None:
        self.kubeconfig = self._write_kubeconfig(
            self.workdir / "admin.kubeconfig", ADMIN_USER,
            self.admin_cert_file.read_bytes(), self.admin_key_file.read_bytes())

    def _write_kubeconfig(self, path: Path, user: str, cert: bytes, key: bytes) -> Path:
        doc = _kubeconfig(self.host, self.ca_file.read_bytes(), cert, key, user, "cbt-testbed-%s" % self.name)
        return write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())

    # ---- clients -----------------------------------------------------------------------------

    def _require_started(self) -> None:
        if self.host is None or self.apiserver is None or not self.apiserver.alive():
            raise PeerError(self.peer, "cluster %s is not running (call start() first)" % self.name,
                            self.apiserver.argv if self.apiserver else None,
                            self.apiserver.log if self.apiserver else None)

    def user_kubeconfig(self, username: str, groups=()) -> Path:
        """A kubeconfig for a client-certificate user ``username`` in ``groups``.

        The user has no privileges beyond what RBAC grants to ``system:authenticated``; bind roles
        to it to grant more. Returns the kubeconfig path.
        """
        self._require_started()
        if not username or "/" in username:
            raise ValueError("user name %r is not usable" % username)
        ca_key, ca_cert = self._ca
        key, cert = issue_cert(ca_key, ca_cert, username, organizations=tuple(groups), client=True)
        users = self.workdir / "users"
        users.mkdir(exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", username)
        return self._write_kubeconfig(users / ("%s.kubeconfig" % safe), username, cert_pem(cert), key_pem(key))

    def api_client(self, kubeconfig=None):
        """A ``kubernetes.client.ApiClient`` for the admin (or for the given kubeconfig)."""
        self._require_started()
        from kubernetes import config  # pylint: disable=import-outside-toplevel

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def env(self) -> dict:
        """Environment for kubernetes.core-style modules and kubectl-like tools (admin)."""
        self._require_started()
        return {
            "K8S_AUTH_KUBECONFIG": str(self.kubeconfig),
            "KUBECONFIG": str(self.kubeconfig),
        }

    def describe(self) -> dict:
        return {
            "name": self.name,
            "host": self.host,
            "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file),
            "etcd": self.etcd_url,
            "version": (self.version or {}).get("gitVersion"),
            "startup_seconds": round(self.startup_seconds or 0, 2),
            "logs": [str(p.log) for p in (self.etcd, self.apiserver) if p is not None],
        }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m testbed.kube
    import signal
    import sys

    _cluster = KubeCluster(name=sys.argv[1] if len(sys.argv) > 1 else "manual").start()
    print(json.dumps(_cluster.describe(), indent=2))
    for _key, _value in sorted(_cluster.env().items()):
        print("export %s=%s" % (_key, _value))
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        _cluster.stop()
