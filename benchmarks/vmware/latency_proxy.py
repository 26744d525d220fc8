# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A TCP proxy that adds a fixed round-trip time, for benchmarks against a loopback simulator.

Every chunk is forwarded half the round-trip time after it arrived, in each direction, without
limiting throughput (chunks in flight overlap). TLS passes through untouched, so the client still
verifies the simulator's certificate.
"""

import collections
import socket
import threading
import time


class LatencyProxy(object):
    def __init__(self, upstream_host, upstream_port, rtt_ms, listen_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.delay = rtt_ms / 2000.0
        self.server = socket.create_server((listen_host, 0))
        self.host, self.port = self.server.getsockname()[:2]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="latency-accept").start()

    def _accept(self):
        while not self._closed:
            try:
                client, _addr = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = [2]  # both directions must end before the sockets close
            lock = threading.Lock()

            def finished(socks=(client, upstream)):
                with lock:
                    pending[0] -= 1
                    if pending[0]:
                        return
                for sock in socks:
                    sock.close()

            self._pipe(client, upstream, finished)
            self._pipe(upstream, client, finished)

    def _pipe(self, src, dst, finished):
        queue = collections.deque()
        ready = threading.Condition()

        def reader():
            try:
                while True:
                    data = src.recv(1 << 16)
                    with ready:
                        queue.append((time.monotonic() + self.delay, data))
                        ready.notify()
                    if not data:
                        return
            except OSError:
                with ready:
                    queue.append((time.monotonic(), b""))
                    ready.notify()

        def writer():
            try:
                forward()
            finally:
                finished()

        def forward():
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True, name="latency-read").start()
        threading.Thread(target=writer, daemon=True, name="latency-write").start()

    def close(self):
        self._closed = True
        self.server.close()
