# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real container registry for the tests: Debian's ``docker-registry`` (distribution 2.x) on loopback.

    reg = Registry(name="build").start()
    reg.host            # "127.0.0.1:<port>" - use as the registry part of image references
    reg.cert_dir        # folder with ca.crt, for --cert-dir of buildah / podman / skopeo
    reg.username, reg.password
    reg.stop()

Each registry gets its own CA and serving certificate (127.0.0.1 / localhost), a bcrypt htpasswd
file, a generated config.yml, storage under the test output folder, a free port and a log file.
TLS is always on (credentials never travel in clear text) and every request must authenticate.
"""

from __future__ import annotations

import base64
import crypt  # pylint: disable=deprecated-module  # bcrypt hashes for htpasswd (glibc libxcrypt)
import secrets
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from testbed.core import PeerError, Process, free_port, output_dir
from testbed.kube import cert_pem, issue_cert, key_pem, new_ca, write_private

REGISTRY_BIN = "/usr/bin/docker-registry"


def _bcrypt(password: str) -> str:
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise PeerError("docker-registry", "this libc cannot make bcrypt hashes for htpasswd (got %r)" % hashed)
    return hashed


class Registry:
    """docker-registry with TLS and htpasswd auth on 127.0.0.1; see the module docstring."""

    peer = "docker-registry"

    def __init__(self, name: str = "registry", username: str = "cbt-builder", password: str | None = None):
        self.name = name
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.workdir = output_dir() / "registry" / name
        self.cert_dir = self.workdir / "certs.d"
        self.port: int | None = None
        self.proc: Process | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1:%d" % self.port

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    def start(self) -> "Registry":
        if not Path(REGISTRY_BIN).exists():
            raise PeerError(self.peer, "%s is missing: apt-get install docker-registry" % REGISTRY_BIN)
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "storage").mkdir(parents=True)
        self.cert_dir.mkdir()
        ca_key, ca_cert = new_ca("cbt-testbed-registry-%s" % self.name)
        key, cert = issue_cert(ca_key, ca_cert, "localhost", dns_names=("localhost",),
                               ip_addresses=("127.0.0.1",), server=True)
        self.ca_file.write_bytes(cert_pem(ca_cert))
        (self.workdir / "tls.crt").write_bytes(cert_pem(cert))
        write_private(self.workdir / "tls.key", key_pem(key))
        write_private(self.workdir / "htpasswd", ("%s:%s\n" % (self.username, _bcrypt(self.password))).encode())
        for attempt in range(3):
            self.port = free_port()
            config = {
                "version": 0.1,
                "log": {"level": "info", "fields": {"service": "registry", "instance": self.name}},
                "storage": {"filesystem": {"rootdirectory": str(self.workdir / "storage")},
                            "delete": {"enabled": True}},
                "http": {"addr": "127.0.0.1:%d" % self.port,
                         "secret": secrets.token_hex(16),
                         "tls": {"certificate": str(self.workdir / "tls.crt"),
                                 "key": str(self.workdir / "tls.key")},
                         "debug": {"addr": ""}},
                "auth": {"htpasswd": {"realm": "cbt-testbed", "path": str(self.workdir / "htpasswd")}},
            }
            config_path = self.workdir / "config.yml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.proc = Process("docker-registry-%s" % self.name, [REGISTRY_BIN, "serve", config_path],
                                log_name="docker-registry-%s.log" % self.name)
            self.proc.start()
            try:
                self.proc.wait_ready(self._ready, timeout=30, what="answering /v2/ with 401 over TLS")
                return self
            except PeerError:
                in_use = "address already in use" in self.proc.log.read_text(errors="replace")
                self.proc.stop()
                if attempt == 2 or not in_use:
                    raise
        return self

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen("https://%s/v2/" % self.host, context=self._context(), timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        return False

    def api(self, path: str, method: str = "GET", accept: str | None = None):
        """An authenticated request to the registry API; returns ``(status, headers, body)``."""
        req = urllib.request.Request("https://%s%s" % (self.host, path), method=method)
        token = base64.b64encode(("%s:%s" % (self.username, self.password)).encode()).decode()
        req.add_header("Authorization", "Basic %s" % token)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
