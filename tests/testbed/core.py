# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Process plumbing shared by every test-bed peer.

A peer is a real program (kube-apiserver, vcsim, nbdkit, PostgreSQL, ...) started on loopback
with a free port, a log file under the test output folder and a readiness check. When a peer
cannot be built or started, ``PeerError`` names the peer, the command and the log file: the
test bed never skips silently.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every process started through ``Process.start`` in this interpreter, so the test-bed CLI can
# record them and stop them from another process.
STARTED = []


def cache_dir() -> Path:
    """Where built peers and downloaded packages are cached across runs and clones."""
    path = Path(os.environ.get("CBT_CACHE_DIR", Path.home() / ".cache" / "cbt-toolkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir() -> Path:
    """Test output folder of this checkout (logs, state, generated config)."""
    path = Path(os.environ.get("CBT_OUTPUT_DIR", REPO_ROOT / "tests" / "output" / "testbed"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    path = output_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bin_dir() -> Path:
    """Where the Go peers are: this checkout's links (tests/output/bin, made by tests/peers/build.sh
    to the binaries built from THIS checkout's peer sources), else the shared cache's."""
    own = REPO_ROOT / "tests" / "output" / "bin"
    if own.is_dir():
        return own
    path = cache_dir() / "bin"
    path.mkdir(parents=True, exist_ok=True)
    return path


class PeerError(RuntimeError):
    """A peer could not be built or started. The message names peer, command and log."""

    def __init__(self, peer: str, what: str, command=None, log: Path | None = None):
        parts = ["test bed peer %s: %s" % (peer, what)]
        if command:
            if not isinstance(command, str):
                command = " ".join(shlex.quote(str(c)) for c in command)
            parts.append("command: %s" % command)
        if log is not None:
            parts.append("log: %s" % log)
            try:
                tail = Path(log).read_text(errors="replace").splitlines()[-25:]
                if tail:
                    parts.append("last lines of the log:\n    " + "\n    ".join(tail))
            except OSError:
                pass
        super().__init__("\n  ".join(parts))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_binary(peer: str, path) -> Path:
    """Return the path of a peer binary or fail naming the build command."""
    path = Path(path)
    if not (path.exists() and os.access(path, os.X_OK)):
        raise PeerError(peer, "binary %s is missing or not executable; build it with "
                        "'tests/peers/build.sh' (the test command does this)" % path)
    return path


class Process:
    """A started peer process with its log file."""

    def __init__(self, name: str, argv, env=None, cwd=None, log_name: str | None = None,
                 preexec_fn=None, user: str | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log_dir() / (log_name or ("%s.log" % name))
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.user = user
        self.proc: subprocess.Popen | None = None
        self._preexec_fn = preexec_fn

    @property
    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)

    def start(self) -> "Process":
        logf = open(self.log, "ab")
        logf.write(("\n==== %s start: %s\n" % (time.strftime("%H:%M:%S"), self.command)).encode())
        logf.flush()
        argv = self.argv
        if self.user:
            argv = ["runuser", "-u", self.user, "--"] + argv
        try:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True, preexec_fn=self._preexec_fn)
        except OSError as exc:
            raise PeerError(self.name, "could not start: %s" % exc, self.argv, self.log) from exc
        finally:
            logf.close()
        STARTED.append(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, check, timeout: float = 60.0, what: str = "ready") -> None:
        """Poll ``check()`` until it returns true; fail loudly on exit or timeout."""
        deadline = time.monotonic() + timeout
        last_exc = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise PeerError(self.name, "exited with code %s before it was %s"
                                % (self.proc.returncode if self.proc else None, what),
                                self.argv, self.log)
            try:
                if check():
                    return
            except Exception as exc:  # pylint: disable=broad-except
                last_exc = exc
            time.sleep(0.1)
        self.stop()
        raise PeerError(self.name, "not %s after %.0f s%s" % (
            what, timeout, (" (last check error: %s)" % last_exc) if last_exc else ""),
            self.argv, self.log)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=timeout)


def write_json(path: Path, data) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
