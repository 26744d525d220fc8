# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real PostgreSQL server for the checkpoint-store tests.

``initdb`` into the test output folder, run as the unprivileged ``postgres`` user (PostgreSQL
refuses to run as root), listening on a free loopback port and on a private unix-socket folder.
A password-protected role and database are created, so tests exercise password handling.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from testbed.core import PeerError, Process, free_port, log_dir, output_dir, port_open

PG_BIN_CANDIDATES = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin",
                     "/usr/pgsql-15/bin", "/usr/pgsql-16/bin"]


def pg_bin_dir() -> Path:
    env = os.environ.get("CBT_PG_BIN")
    for cand in ([env] if env else []) + PG_BIN_CANDIDATES:
        if cand and (Path(cand) / "initdb").exists():
            return Path(cand)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PeerError("postgres", "initdb not found (looked in %s and PATH); install PostgreSQL "
                    "(Debian: apt-get install postgresql) or set CBT_PG_BIN" % ", ".join(PG_BIN_CANDIDATES))


class Postgres:
    """``Postgres().start()`` -> ``.dsn`` (with password), ``.dsn_no_password``, ``.password``, ``.stop()``."""

    def __init__(self, name: str = "postgres", user: str = "postgres", database: str = "cbt", role: str = "cbt",
                 password: str = "cbt-test-secret-%d" % os.getpid()):
        self.name = name
        self.os_user = user if os.geteuid() == 0 else None
        self.database = database
        self.role = role
        self.password = password
        self.port = None
        self.base = output_dir() / ("%s-%d" % (name, os.getpid()))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = log_dir() / ("%s.log" % name)
        self.process: Process | None = None
        self.bin = None

    # -- helpers ---------------------------------------------------------------------------------
    def _run(self, argv, what, input_text=None):
        argv = [str(a) for a in argv]
        full = (["runuser", "-u", self.os_user, "--"] if self.os_user else []) + argv
        with open(self.log, "ab") as logf:
            logf.write(("\n==== %s: %s\n" % (what, " ".join(full))).encode())
            logf.flush()
            proc = subprocess.run(full, stdout=logf, stderr=subprocess.STDOUT, check=False,
                                  input=input_text.encode() if input_text else None, timeout=120)
        if proc.returncode != 0:
            raise PeerError(self.name, "%s failed with exit code %d" % (what, proc.returncode), full, self.log)

    def _prepare_dirs(self):
        if self.base.exists():
            shutil.rmtree(self.base)
        self.sockets.mkdir(parents=True)
        self.data.mkdir(parents=True)
        if self.os_user:
            try:
                entry = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PeerError(self.name, "the unprivileged user %r does not exist; PostgreSQL refuses to run as "
                                "root (Debian's postgresql package creates it)" % self.os_user)
            for path in (self.base, self.data, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.data, 0o700)
            # every parent must be traversable by that user
            probe = subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-w", str(self.data)],
                                   capture_output=True, check=False)
            if probe.returncode != 0:
                raise PeerError(self.name, "user %s cannot reach %s (a parent folder is not traversable); set "
                                "CBT_OUTPUT_DIR to a folder under /tmp" % (self.os_user, self.data))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Postgres":
        self.bin = pg_bin_dir()
        self._prepare_dirs()
        pwfile = self.base / "superuser.pw"
        pwfile.write_text("%s\n" % self.password)
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run([self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "--pwfile", pwfile, "-E", "UTF8", "--no-sync"], "initdb")
        self.port = free_port()
        self.process = Process(self.name, [self.bin / "postgres", "-D", self.data, "-p", self.port,
                                           "-c", "listen_addresses=127.0.0.1",
                                           "-c", "unix_socket_directories=%s" % self.sockets,
                                           "-c", "fsync=off", "-c", "max_connections=50"],
                               user=self.os_user, log_name="%s.log" % self.name)
        self.process.start()
        self.process.wait_ready(lambda: port_open(self.port) and self._ping(), timeout=60,
                                what="accepting connections on 127.0.0.1:%d" % self.port)
        sql = ("CREATE ROLE %s LOGIN PASSWORD '%s';\nCREATE DATABASE %s OWNER %s;\n"
               % (self.role, self.password, self.database, self.role))
        self._run([self.bin / "psql", "-v", "ON_ERROR_STOP=1", "-h", self.sockets, "-p", self.port, "-U", "postgres",
                   "-d", "postgres", "-q"], "create role and database", input_text=sql)
        return self

    def _ping(self) -> bool:
        argv = [str(self.bin / "pg_isready"), "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres"]
        full = (["runuser", "-u", self.os_user, "--"] if self.os_user else []) + argv
        return subprocess.run(full, capture_output=True, check=False).returncode == 0

    @property
    def dsn_no_password(self) -> str:
        return "host=127.0.0.1 port=%d dbname=%s user=%s" % (self.port, self.database, self.role)

    @property
    def dsn(self) -> str:
        return "%s password=%s" % (self.dsn_no_password, self.password)

    def env(self) -> dict:
        return {"CBT_PG_DSN": self.dsn_no_password, "CBT_PG_PASSWORD": self.password, "PGHOST": "127.0.0.1",
                "PGPORT": str(self.port), "PGDATABASE": self.database, "PGUSER": self.role}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
            time.sleep(0.1)
