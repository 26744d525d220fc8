# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gRPC transport of ``csi_snapshot_diff``: a TLS channel verified against the SnapshotMetadataService
CA (no insecure mode), raw ``unary_stream`` calls with the hand-written codec, and a local TCP
proxy over the Kubernetes pod port-forward API for clients outside the cluster.

This utility is private to the cbt.toolkit collection. Callers check ``HAS_GRPC`` first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import json
import os
import re
import select
import selectors
import socket
import threading
import time
import traceback

from ansible_collections.cbt.toolkit.plugins.module_utils._csi_stream import StreamFailure

try:
    # grpc's C core logs reconnects and GOAWAYs on stderr at INFO level; keep only errors unless asked.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc
    HAS_GRPC = True
    GRPC_IMP_ERR = None
except ImportError:
    grpc = None
    HAS_GRPC = False
    GRPC_IMP_ERR = traceback.format_exc()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GrpcTransport:
    """One TLS channel to the sidecar. ``target`` is where to connect (the service address, or
    ``127.0.0.1:<port>`` of a port-forward); ``server_name`` is the name the certificate must carry
    (the host of the service address), used for SNI and verification in both cases."""

    def __init__(self, target, ca_pem, server_name, timeout=None, options=None):
        self.target = target
        self.server_name = server_name
        self.timeout = timeout or None
        self._failed = False
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        opts = [
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.default_authority", server_name),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 20000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
        opts.extend(options or [])
        self._credentials = credentials
        self._options = opts
        self.channel = self._new_channel()
        self._calls = {}

    def _new_channel(self):
        return grpc.secure_channel(self.target, self._credentials, options=self._options)

    def method(self, name):
        call = self._calls.get(name)
        if call is None:
            # No serializers: requests go out as the bytes given, responses come back as bytes.
            call = self._calls[name] = self.channel.unary_stream(name)
        return call

    def open_stream(self, method, request):
        """Yield the raw response messages of one server-streaming call; gRPC errors become
        ``StreamFailure``; closing the generator cancels the call."""
        if self._failed:
            # A fresh channel after a failure: the old one may sit in reconnect backoff, during which
            # fail-fast calls fail at once with the old error. A new one connects now, or fails fast
            # with the real reason (TLS, refused, ...).
            self.channel.close()
            self.channel = self._new_channel()
            self._calls = {}
            self._failed = False
        call = self.method(method)(request, timeout=self.timeout)
        finished = False
        try:
            try:
                yield from call
            except grpc.RpcError as exc:
                self._failed = True
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else str(exc)
                raise StreamFailure(code.name if code is not None else "UNKNOWN", details or "")
            finished = True
        finally:
            if not finished:
                call.cancel()

    def close(self):
        self.channel.close()


class PortForwardProxy:
    """Listen on ``127.0.0.1:<free port>`` and carry every accepted connection to ``pod:port``
    through the Kubernetes API (one port-forward stream per connection)."""

    def __init__(self, api_client, namespace, pod, port, connector=None, repick=None, max_repicks=3,
                 repick_delay=1.0, sleep=time.sleep):
        self.api_client = api_client
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self._connector = connector or self._kubernetes_connector
        # ``repick()`` returns ``(namespace, pod, port)`` of a ready pod behind the Service now: used when
        # the pod is gone (404), for example replaced by a rollout during a long listing.
        self.repick = repick
        self.max_repicks = max_repicks
        self.repick_delay = repick_delay
        self._sleep = sleep
        self._lock = threading.Lock()
        self.repicked = []    # pods picked again after a 404, in order
        self._core = None
        self._listener = None
        self._thread = None
        self._closed = threading.Event()
        self.errors = []
        self.connections = 0

    def _kubernetes_connector(self):
        from kubernetes.stream import portforward  # pylint: disable=import-outside-toplevel
        forward = portforward(self._core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                              ports=str(self.port))
        return forward.socket(self.port), forward

    def start(self):
        if self._connector == self._kubernetes_connector:
            from kubernetes import client as k8s_client  # pylint: disable=import-outside-toplevel
            self._core = k8s_client.CoreV1Api(self.api_client)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="cbt-port-forward", daemon=True)
        self._thread.start()
        return "127.0.0.1:%d" % listener.getsockname()[1]

    def _accept_loop(self):
        while not self._closed.is_set():
            try:
                conn, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), name="cbt-port-forward-conn", daemon=True).start()

    def _connect(self):
        """Open one port-forward; on a 404 (the pod is gone) pick the pod again, a bounded number of times."""
        tries = 0
        while True:
            target = (self.namespace, self.pod, self.port)
            try:
                return self._connector()
            except Exception as exc:  # pylint: disable=broad-except
                if self.repick is None or tries >= self.max_repicks or not is_not_found(exc):
                    raise
                tries += 1
                with self._lock:
                    if (self.namespace, self.pod, self.port) != target:
                        continue  # another connection picked a new pod already
                    try:
                        found = self.repick()
                    except Exception as pick_exc:  # pylint: disable=broad-except
                        raise RepickError(exc, pick_exc)
                    if tuple(found) == target:
                        # the EndpointSlice still lists the old pod: give it a moment to catch up
                        self._sleep(self.repick_delay)
                        continue
                    self.namespace, self.pod, self.port = found
                    self.repicked.append("%s/%s" % (found[0], found[1]))

    def _serve(self, conn):
        forward = None
        try:
            try:
                remote, forward = self._connect()
            except RepickError as exc:
                self.errors.append("%s; picking another pod behind the Service failed: %s" % (
                    connector_error_message(exc.original, self.namespace, self.pod, self.port),
                    getattr(exc.pick_error, "msg", None) or exc.pick_error))
                return
            except Exception as exc:  # pylint: disable=broad-except
                self.errors.append(connector_error_message(exc, self.namespace, self.pod, self.port,
                                                           repicked=self.repick is not None))
                return
            pump(conn, remote, self._closed)
            error = forward.error(self.port) if forward is not None and hasattr(forward, "error") else None
            if error:
                self.errors.append("port-forward to pod %s/%s port %d: %s" % (self.namespace, self.pod, self.port, error))
        finally:
            for sock in (conn,):
                try:
                    sock.close()
                except OSError:
                    pass
            if forward is not None and hasattr(forward, "close"):
                try:
                    forward.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def close(self):
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)


def _status_message(body):
    """The ``message`` of a Kubernetes Status in ``body`` (JSON text or the repr of bytes), or None."""
    body = body.strip()
    try:
        if body[:2] in ("b'", 'b"'):
            body = ast.literal_eval(body).decode("utf-8", "replace")
        message = json.loads(body).get("message")
    except (ValueError, SyntaxError, AttributeError, UnicodeError):
        return None
    return message if isinstance(message, str) and message else None


class RepickError(Exception):
    """The pod was gone (404) and picking another one failed."""

    def __init__(self, original, pick_error):
        super(RepickError, self).__init__(str(original))
        self.original = original
        self.pick_error = pick_error


def _connector_error_text(exc):
    text = getattr(exc, "reason", None) if getattr(exc, "status", None) is not None else None
    return str(text or exc)


def is_not_found(exc):
    """Whether a port-forward connection failed because the pod does not exist (HTTP 404)."""
    if getattr(exc, "status", None) == 404:
        return True
    return bool(re.search(r"\b404\b", _connector_error_text(exc).split("-+-+-", maxsplit=1)[0]))


def connector_error_message(exc, namespace, pod, port, repicked=False):
    """One line for a failed port-forward connection, naming the permission a 403 lacks.
    ``repicked``: the pod was already picked again after a 404."""
    text = _connector_error_text(exc)
    # kubernetes.stream reports a refused websocket as "Handshake status 403 Forbidden -+-+- {headers}
    # -+-+- b'{Status JSON}'": keep the status line and the Status message, not the headers.
    parts = text.split("-+-+-")
    if len(parts) > 1:
        detail = _status_message(parts[-1])
        text = "%s: %s" % (parts[0].strip(), detail) if detail else parts[0]
    text = " ".join(text.split())
    if len(text) > 500:
        text = text[:500] + "..."
    msg = "port-forward to pod %s/%s port %d failed: %s" % (namespace, pod, port, text)
    if re.search(r"\b403\b", text) or "forbidden" in text.lower():
        # The kubernetes client opens the port-forward as a websocket: a GET, authorized as 'get' on
        # pods/portforward (and as 'create' too where websocket upgrades need it); kubectl's POST needs 'create'.
        denied = re.search(r'cannot (\w+) resource "pods/portforward"', text)
        if denied:
            msg += ("; the Kubernetes user needs '%s' on pods/portforward in namespace %s (grant 'get' and 'create')"
                    % (denied.group(1), namespace))
        else:
            msg += "; the Kubernetes user needs 'get' and 'create' on pods/portforward in namespace %s" % namespace
    elif re.search(r"\b401\b", text) or "unauthorized" in text.lower():
        msg += "; the Kubernetes credentials were rejected: check the token or client certificate of the kubeconfig"
    elif re.search(r"\b404\b", text):
        if repicked:
            msg += ("; the pod no longer exists and picking the pod behind the Service again did not help: check "
                    "that the CSI controller pods are running and ready, then run again")
        else:
            msg += "; the pod no longer exists: run again to pick a current pod behind the Service"
    return msg


def pump(local, remote, closed, chunk=65536):
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    try:
        local.setblocking(False)
        remote.setblocking(False)
        sel.register(local, selectors.EVENT_READ, remote)
        sel.register(remote, selectors.EVENT_READ, local)
        while not closed.is_set():
            for key, _mask in sel.select(timeout=0.5):
                src = key.fileobj
                dst = key.data
                try:
                    data = src.recv(chunk)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                _send_all(dst, data)
    finally:
        sel.close()


def _send_all(sock, data):
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            select.select([], [sock], [], 0.5)
            continue
        view = view[sent:]
