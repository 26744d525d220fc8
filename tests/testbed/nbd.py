# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NBD exports for the block-copy tests: nbdkit and qemu-nbd on unix sockets or TCP loopback.

    export = NbdExport.nbdkit(image, transport="unix").start()
    export.uri   # nbd+unix:///?socket=...  or  nbd://127.0.0.1:PORT/
    export.stop()

Each export has a log file; a server that does not start raises ``PeerError`` naming the command
and the log.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

from testbed.core import PeerError, Process, free_port, output_dir, port_open

_COUNTER = itertools.count()


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise PeerError(binary, "%s is not installed (Debian: apt-get install %s)" % (
            binary, {"nbdkit": "nbdkit", "qemu-nbd": "qemu-utils", "nbdinfo": "libnbd-bin"}.get(binary, binary)))
    return path


class NbdExport:
    def __init__(self, server: str, argv_builder, transport: str = "unix", name: str | None = None):
        if transport not in ("unix", "tcp"):
            raise ValueError("transport must be unix or tcp")
        self.server = server
        self.transport = transport
        self.index = next(_COUNTER)
        self.name = name or "%s-%d" % (server, self.index)
        self.socket = output_dir() / "nbd" / ("%s.sock" % self.name)
        self.port = None
        self._argv_builder = argv_builder
        self.process: Process | None = None

    @classmethod
    def nbdkit(cls, image=None, transport="unix", readonly=False, plugin="file", plugin_args=None,
               filters=None, filter_args=None, name=None, verbose=True) -> "NbdExport":
        """nbdkit serving ``image`` with the file plugin (or another ``plugin`` with ``plugin_args``).

        ``verbose`` logs every request (for tests); benchmarks turn it off, as it costs CPU time."""
        def build(export):
            argv = [_require("nbdkit"), "--foreground"] + (["--verbose"] if verbose else [])
            if readonly:
                argv.append("--readonly")
            for flt in filters or []:
                argv.append("--filter=%s" % flt)
            if export.transport == "unix":
                argv += ["--unix", str(export.socket)]
            else:
                argv += ["--ipaddr", "127.0.0.1", "--port", str(export.port)]
            argv.append(plugin)
            if plugin == "file":
                argv.append("file=%s" % image)
            argv += list(plugin_args or [])
            argv += list(filter_args or [])
            return argv
        return cls("nbdkit", build, transport, name)

    @classmethod
    def qemu_nbd(cls, image, transport="unix", readonly=False, shared=4, name=None) -> "NbdExport":
        """qemu-nbd serving a raw ``image`` (``shared`` clients at once; multi-conn when > 1)."""
        def build(export):
            argv = [_require("qemu-nbd"), "--format=raw", "--persistent", "--shared=%d" % shared,
                    "--cache=writeback", "--discard=unmap", "--detect-zeroes=off"]
            if readonly:
                argv.append("--read-only")
            if export.transport == "unix":
                argv += ["--socket", str(export.socket)]
            else:
                argv += ["--bind", "127.0.0.1", "--port", str(export.port)]
            argv.append(str(image))
            return argv
        return cls("qemu-nbd", build, transport, name)

    @property
    def uri(self) -> str:
        if self.transport == "unix":
            return "nbd+unix:///?socket=%s" % self.socket
        return "nbd://127.0.0.1:%d/" % self.port

    def _ready(self) -> bool:
        if self.transport == "unix" and not self.socket.exists():
            return False
        if self.transport == "tcp" and not port_open(self.port):
            return False
        proc = subprocess.run([_require("nbdinfo"), "--size", self.uri], capture_output=True, check=False,
                              timeout=10)
        return proc.returncode == 0

    def start(self) -> "NbdExport":
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        if self.transport == "tcp":
            self.port = free_port()
        argv = self._argv_builder(self)
        self.process = Process(self.name, argv, log_name="%s.log" % self.name).start()
        self.process.wait_ready(self._ready, timeout=30, what="serving %s" % self.uri)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self.socket.exists():
            try:
                self.socket.unlink()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class LoopDevice:
    """A loop device over an image file (``losetup -f --show``); fails loudly when the kernel refuses."""

    def __init__(self, image, read_only=False):
        self.image = Path(image)
        self.read_only = read_only
        self.device = None

    def attach(self) -> "LoopDevice":
        argv = ["losetup", "--find", "--show"] + (["--read-only"] if self.read_only else []) + [str(self.image)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not proc.stdout.strip().startswith("/dev/"):
            what = "losetup failed (exit %d): %s; loop devices need root and a kernel/container that allows " \
                "them (/dev/loop-control)" % (proc.returncode, proc.stderr.strip())
            raise PeerError("loop device", what, argv)
        self.device = proc.stdout.strip()
        return self

    def detach(self) -> None:
        if self.device:
            subprocess.run(["losetup", "--detach", self.device], capture_output=True, check=False)
            self.device = None

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()
        return False
