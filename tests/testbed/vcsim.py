# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plain vCenter simulator (govmomi's simulator, tests/peers/vcsim) on loopback with TLS.

    sim = Vcsim().start()          # a fresh default vCenter model: DC0, DC0_C0, DC0_H0_VM0, ...
    sim.host, sim.port, sim.url, sim.username, sim.password
    sim.ca_file                    # CA bundle that signs the server certificate (validate_certs=true)
    sim.cert_file                  # the server certificate itself (PEM)
    sim.thumbprint_sha1            # "AA:BB:..." as vSphere clients show it
    sim.env()                      # VMWARE_HOST/PORT/USER/PASSWORD, VMWARE_VALIDATE_CERTS=false
    sim.env(validate_certs=True)   # ... VMWARE_VALIDATE_CERTS=true and VMWARE_CA_CERT=<ca_file>
    sim.stop()

The simulator listens on 127.0.0.1 with a port it picks itself (``-l 127.0.0.1:0``, no race),
accepts only the generated user name and password, serves a certificate made here with
``cryptography`` for 127.0.0.1 and localhost, and reports readiness with a JSON handshake file
(``-E``: url, pid, govmomi version, certificate SHA-256). Its inventory lives in memory and in a
temporary folder under the test output folder; stop() removes both. Several simulators can run
at once.

TLS verification from Python: pyVmomi's ``SmartConnect(..., sslContext=ssl.create_default_context(
cafile=sim.ca_file))`` verifies the chain and the host name; ``serverPemCert=`` (pin the server
certificate) and ``thumbprint=`` (SHA-1 pin) also work. Without the CA, verification fails with
``ssl.SSLCertVerificationError`` (tests/integration/testbed proves both).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import shutil
import ssl
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from testbed.core import PeerError, Process, bin_dir, output_dir, require_binary
from testbed.kube import cert_pem, issue_cert, key_pem, new_ca, write_private

_SEQ = itertools.count()

DEFAULT_USERNAME = "administrator@vsphere.local"


class Vcsim:
    """A running vcsim; see the module docstring."""

    peer = "vcsim"
    binary_name = "vcsim"

    def __init__(self, name: str = "default", username: str = DEFAULT_USERNAME, password: str | None = None,
                 workdir=None, extra_args=(), start_timeout: float = 60.0):
        self.name = name
        self.id = "%s-%d-%d" % (name, os.getpid(), next(_SEQ))
        self.workdir = Path(workdir) if workdir else output_dir() / "vcsim" / self.id
        self.username = username
        self.password = password or ("Cbt-" + secrets.token_urlsafe(12))
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.binary = bin_dir() / self.binary_name
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.url: str | None = None
        self.ca_file: Path | None = None
        self.cert_file: Path | None = None
        self.key_file: Path | None = None
        self.handshake: dict | None = None
        self.startup_seconds: float | None = None
        self.process: Process | None = None

    # ---- life cycle --------------------------------------------------------------------------

    def _make_tls(self) -> None:
        tls = self.workdir / "tls"
        tls.mkdir(parents=True)
        ca_key, ca_cert = new_ca("cbt-testbed-vcsim-ca-%s" % self.name)
        key, cert = issue_cert(ca_key, ca_cert, "localhost", dns_names=("localhost",),
                               ip_addresses=("127.0.0.1",), server=True)
        self.ca_file = tls / "ca.pem"
        self.ca_file.write_bytes(cert_pem(ca_cert))
        self.cert_file = tls / "server.pem"
        self.cert_file.write_bytes(cert_pem(cert))
        (tls / "server-chain.pem").write_bytes(cert_pem(cert) + cert_pem(ca_cert))
        self.key_file = write_private(tls / "server.key", key_pem(key))

    def _sso_name(self) -> str:
        """The name to register with the simulator's SSO service.

        With the SSO endpoint registered (as upstream vcsim does), a login is checked against
        the SSO directory: a user name ``name@domain`` is looked up as ``name`` in ``domain``
        (``name`` alone: in vsphere.local), and the -username given at start is registered as is
        in vsphere.local. So ``administrator@vsphere.local`` must be registered as
        ``administrator``; then both spellings log in, as on a real vCenter.
        """
        local, _unused, domain = self.username.partition("@")
        if domain and domain.lower() != "vsphere.local":
            raise ValueError("vcsim user %r: the simulator's SSO directory has only the vsphere.local domain"
                             % self.username)
        return local

    def start(self) -> "Vcsim":
        require_binary(self.peer, self.binary)
        began = time.monotonic()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self._make_tls()
        password_file = write_private(self.workdir / "password", self.password.encode())
        handshake = self.workdir / "handshake.json"
        tmp = self.workdir / "tmp"
        tmp.mkdir()
        argv = [
            self.binary,
            "-l", "127.0.0.1:0",
            "-username", self._sso_name(),
            "-password-file", password_file,
            "-tlscert", self.workdir / "tls" / "server-chain.pem",
            "-tlskey", self.key_file,
            "-E", handshake,
        ] + self.extra_args
        # The simulator keeps its datastore folders in TMPDIR: keep them in our output folder.
        self.process = Process(self.peer, argv, env={"TMPDIR": str(tmp)},
                               log_name="vcsim-%s.log" % self.id).start()

        def ready():
            if not handshake.exists():
                return False
            doc = json.loads(handshake.read_text())
            self.handshake = doc
            self.port = int(doc["port"])
            self.url = "https://%s:%d/sdk" % (self.host, self.port)
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            with urllib.request.urlopen("https://%s:%d/about" % (self.host, self.port), context=ctx,
                                        timeout=5) as resp:
                return resp.status == 200

        self.process.wait_ready(ready, timeout=self.start_timeout, what="serving (handshake %s)" % handshake)
        served = self.handshake.get("cert_sha256")
        expected = hashlib.sha256(self._server_cert().public_bytes(serialization.Encoding.DER)).hexdigest()
        if served != expected:
            self.stop()
            raise PeerError(self.peer, "serves certificate sha256 %s, expected the generated %s (%s)"
                            % (served, expected, self.cert_file), argv, self.process.log)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.workdir / "tmp", ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- facts for clients -------------------------------------------------------------------

    def _server_cert(self):
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    @property
    def thumbprint_sha1(self) -> str:
        """SHA-1 thumbprint of the server certificate, colon separated (vSphere style)."""
        digest = self._server_cert().fingerprint(hashes.SHA1())  # nosec - a pin format, not a signature
        return ":".join("%02X" % b for b in digest)

    def _require_started(self) -> None:
        if self.port is None or self.process is None or not self.process.alive():
            raise PeerError(self.peer, "simulator %s is not running (call start() first)" % self.name,
                            self.process.argv if self.process else None,
                            self.process.log if self.process else None)

    def env(self, validate_certs: bool = False) -> dict:
        """Connection variables as vmware.vmware-style modules read them."""
        self._require_started()
        env = {
            "VMWARE_HOST": self.host,
            "VMWARE_PORT": str(self.port),
            "VMWARE_USER": self.username,
            "VMWARE_PASSWORD": self.password,
            "VMWARE_VALIDATE_CERTS": "true" if validate_certs else "false",
        }
        if validate_certs:
            env["VMWARE_CA_CERT"] = str(self.ca_file)
        return env

    def connect(self, validate_certs: bool = True):
        """A pyVmomi ServiceInstance logged in as the simulator's user (caller disconnects)."""
        self._require_started()
        from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel

        if validate_certs:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return SmartConnect(host=self.host, port=self.port, user=self.username, pwd=self.password,
                            sslContext=ctx)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "username": self.username,
            "ca_file": str(self.ca_file),
            "cert_file": str(self.cert_file),
            "thumbprint_sha1": self.thumbprint_sha1 if self.cert_file else None,
            "govmomi": (self.handshake or {}).get("govmomi_version"),
            "about": (self.handshake or {}).get("about"),
            "startup_seconds": round(self.startup_seconds or 0, 2),
            "log": str(self.process.log) if self.process else None,
        }


if __name__ == "__main__":  # pragma: no cover - manual use: python -m testbed.vcsim
    import signal

    _sim = Vcsim(name="manual").start()
    print(json.dumps(_sim.describe(), indent=2))
    for _key, _value in sorted(_sim.env().items()):
        print("export %s=%s" % (_key, _value))
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        _sim.stop()
