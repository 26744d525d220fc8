# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``csi_snapshot_diff`` flow: discovery, base-snapshot mode, token, transport and the stream.

This utility is private to the cbt.toolkit collection.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import time

try:
    from urllib.parse import urlsplit
except ImportError:  # pragma: no cover - Python 2 is not supported by this collection
    from urlparse import urlsplit  # type: ignore

from ansible_collections.cbt.toolkit.plugins.module_utils._csi_codec import (
    BLOCK_METADATA_TYPES,
    METHOD_ALLOCATED,
    METHOD_DELTA,
    encode_allocated_request,
    encode_delta_request,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_k8s import (
    ApiTransportError,
    CsiDiffError,
    Discovery,
    TokenSource,
    api_unreachable_message,
    decode_ca,
    parse_version,
    same_volume_problem,
    snapshot_order_problem,
    split_address,
)
from ansible_collections.cbt.toolkit.plugins.module_utils._csi_stream import (
    ExtentSink,
    SnapshotMetadataError,
    StreamFailure,
    StreamRunner,
    looks_like_v010,
)
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import COVERAGE_ALLOCATED, COVERAGE_CHANGED

HANDLE_SINCE = (0, 2, 0)  # GetMetadataDeltaRequest field 3 is a CSI handle from sidecar v0.2.0 on


def argument_spec():
    return dict(
        namespace=dict(type="str", required=True),
        snapshot=dict(type="str", required=True, aliases=["target_snapshot"]),
        base_snapshot=dict(type="str"),
        base_snapshot_handle=dict(type="str"),
        base_snapshot_mode=dict(type="str", default="auto", choices=["auto", "name", "handle"]),
        sidecar_version=dict(type="str"),
        driver=dict(type="str"),
        service_account=dict(type="str"),
        service_account_namespace=dict(type="str"),
        token_expiration=dict(type="int", default=3600, no_log=False),
        sms_address=dict(type="str"),
        sms_ca_cert=dict(type="str"),
        sms_audience=dict(type="str"),
        sms_config_map_namespace=dict(type="str", default="openshift-storage"),
        transport=dict(type="str", default="auto", choices=["auto", "direct", "port_forward"]),
        connect_to=dict(type="str"),
        starting_offset=dict(type="int", default=0),
        max_results=dict(type="int", default=0),
        timeout=dict(type="int", default=600),
        retries=dict(type="int", default=5),
        retry_delay=dict(type="float", default=1.0),
        output_file=dict(type="path"),
        coalesce=dict(type="bool", default=False),
        extents_limit=dict(type="int", default=1000),
        on_base_unusable=dict(type="str", default="report", choices=["report", "allocated", "fail"]),
    )


def check_params(params):
    """Problems with the option values that the argument spec cannot express."""
    if params.get("base_snapshot") and params.get("base_snapshot_handle"):
        return "base_snapshot and base_snapshot_handle are mutually exclusive: give the base VolumeSnapshot name or its CSI handle"
    if params.get("base_snapshot_mode") == "name" and params.get("base_snapshot_handle"):
        return ("base_snapshot_mode name sends the base VolumeSnapshot *name* (sidecar v0.1.0): set base_snapshot, "
                "not base_snapshot_handle")
    if params.get("token_expiration", 600) < 600:
        return "token_expiration must be at least 600 seconds (the TokenRequest API minimum), got %d" % params["token_expiration"]
    if params.get("starting_offset", 0) < 0:
        return "starting_offset must not be negative, got %d" % params["starting_offset"]
    if not 0 <= params.get("max_results", 0) <= 2 ** 31 - 1:
        return "max_results must be between 0 (the driver decides) and 2147483647, got %d" % params["max_results"]
    if params.get("retries", 0) < 0 or params.get("timeout", 0) < 0 or params.get("retry_delay", 0) < 0:
        return "retries, timeout and retry_delay must not be negative"
    if params.get("extents_limit", 0) < 0:
        return "extents_limit must not be negative"
    if params.get("sidecar_version") and parse_version(params["sidecar_version"]) is None:
        return "sidecar_version %r is not a version like v0.2.0" % params["sidecar_version"]
    for option in ("sms_address", "connect_to"):
        if params.get(option):
            try:
                split_address(params[option])
            except ValueError as exc:
                return "%s: %s" % (option, exc)
    if params.get("connect_to") and params.get("transport") == "port_forward":
        return "connect_to and transport port_forward are mutually exclusive: connect_to already says where to connect"
    return None


def _read_ca_option(value):
    if value is None:
        return None
    if "-----BEGIN" in value:
        return value
    path = os.path.expanduser(value)
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except (IOError, OSError) as exc:
        raise CsiDiffError("sms_ca_cert %s is neither PEM text nor a readable file: %s" % (value, exc))


def resolve_service(discovery, driver, params):
    """Address, audience and CA of the SnapshotMetadataService, with option overrides."""
    address, audience = params.get("sms_address"), params.get("sms_audience")
    ca_text = _read_ca_option(params.get("sms_ca_cert"))
    service = {"source": "options", "kind": None, "api_version": None, "name": driver}
    if not (address and audience and ca_text):
        found = discovery.metadata_service(driver, params.get("sms_config_map_namespace"))
        if found is None:
            raise CsiDiffError(
                "no SnapshotMetadataService named %s (cbt.storage.k8s.io v1beta1 or v1alpha1) and no ConfigMap %s/%s: "
                "enable the snapshot metadata sidecar for driver %s and create its SnapshotMetadataService "
                "(cbt.toolkit.odf_cbt_enable does this on ODF), or pass sms_address, sms_ca_cert and sms_audience"
                % (driver, params.get("sms_config_map_namespace"), driver, driver))
        service.update(found)
        address = address or found.get("address")
        audience = audience or found.get("audience")
        if ca_text is None:
            ca_text = found.get("ca_cert")
    source = service["source"]
    if not address:
        raise CsiDiffError("%s has no address; set sms_address" % source)
    if not audience:
        raise CsiDiffError("%s has no audience; set sms_audience" % source)
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise CsiDiffError("%s: %s" % (source, exc))
    service.update(address=address, audience=audience, host=host, port=port,
                   ca_pem=decode_ca(ca_text, "sms_ca_cert" if params.get("sms_ca_cert") else source))
    return service


def decide_base_mode(params, discovery, service, base_name, base_handle):
    """Return ``(mode, reason, probe)``: ``probe`` means try the handle and switch to the name when
    the sidecar answers like v0.1.0."""
    requested = params["base_snapshot_mode"]
    if requested == "handle":
        return "handle", "base_snapshot_mode handle was requested", False
    if requested == "name":
        return "name", "base_snapshot_mode name was requested (sidecar v0.1.0 semantics)", False
    version, evidence = None, None
    if params.get("sidecar_version"):
        version = parse_version(params["sidecar_version"])
        evidence = "sidecar_version %s" % params["sidecar_version"]
    elif not base_name:
        return "handle", "only base_snapshot_handle was given, so the handle is sent", False
    else:
        version, evidence = discovery.sidecar_version(service["address"])
    if version is not None:
        text = "v%d.%d.%d" % version
        if version >= HANDLE_SINCE:
            return "handle", "sidecar %s (from %s) takes the base snapshot handle" % (text, evidence), False
        return "name", "sidecar %s (from %s) takes the base snapshot name" % (text, evidence), False
    return ("handle", "sidecar version unknown (%s): sent the handle first, ready to switch to the name if the "
            "sidecar answers like v0.1.0" % evidence, True)


def _host_port(url):
    """``(host, port)`` of an API server URL, host in lower case without IPv6 brackets, or ``None``."""
    try:
        parts = urlsplit(url if "//" in url else "https://" + url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = 80 if parts.scheme == "http" else 443
    return parts.hostname.lower(), port


def in_cluster_api_host(api_host, environ=None):
    """Whether ``api_host`` (the API client's configured host) is the in-cluster API server of the pod
    this runs in: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` (IPv6 in brackets)."""
    environ = os.environ if environ is None else environ
    service_host = (environ.get("KUBERNETES_SERVICE_HOST") or "").strip()
    if not service_host or not api_host:
        return False
    try:
        service_port = int(environ.get("KUBERNETES_SERVICE_PORT") or 443)
    except ValueError:
        return False
    return _host_port(str(api_host)) == (service_host.strip("[]").lower(), service_port)


def choose_transport(params, host, api_host=None):
    """``(transport, reason)``. ``api_host`` is the API server the Kubernetes client talks to: only when
    it is the in-cluster one does running in a pod mean the SnapshotMetadata service is in reach."""
    if params.get("connect_to"):
        return "direct", "connect_to %s was given" % params["connect_to"]
    wanted = params["transport"]
    if wanted != "auto":
        return wanted, "transport %s was requested" % wanted
    if in_cluster_api_host(api_host):
        return "direct", "running inside a pod of the cluster whose API server (%s) is used" % api_host
    try:
        socket.getaddrinfo(host, None)
        return "direct", "the service host %s resolves from here" % host
    except (socket.gaierror, UnicodeError):
        return "port_forward", "the service host %s does not resolve from here (outside the cluster)" % host


def _full_sync_result(reason, started, base):
    return {
        "full_sync_required": True,
        "full_sync_reason": reason,
        "extents": [],
        "extent_count": 0,
        "total_bytes": 0,
        "extents_truncated": False,
        "output_file": None,
        "duration_seconds": round(time.monotonic() - started, 3),
        "base_snapshot": base,
    }


def run(params, api_client, check_mode=False, on_token=None, transport_factory=None, proxy_factory=None,
        sleep=time.sleep):
    """Run the query; return the module result (without ``changed``). Raises ``CsiDiffError``."""
    try:
        return _run(params, api_client, check_mode, on_token, transport_factory, proxy_factory, sleep)
    except ApiTransportError as exc:
        # The kubernetes client raises urllib3 errors (MaxRetryError, SSLError) when the API server is
        # not reached or its certificate fails verification.
        raise CsiDiffError(api_unreachable_message(exc, api_client))


def _run(params, api_client, check_mode, on_token, transport_factory, proxy_factory, sleep):
    started = time.monotonic()
    discovery = Discovery(api_client)
    namespace = params["namespace"]
    target = discovery.snapshot(namespace, params["snapshot"], "target")
    if target.problem:
        raise CsiDiffError("%s; wait until the snapshot is ready, or check its events" % target.problem,
                           snapshot=target.as_dict())
    driver = target.driver
    if params.get("driver") and params["driver"] != driver:
        raise CsiDiffError("VolumeSnapshot %s/%s belongs to CSI driver %s (from VolumeSnapshotContent %s), not %s"
                           % (namespace, target.name, driver, target.content_name, params["driver"]))

    base_name = params.get("base_snapshot")
    base_handle = params.get("base_snapshot_handle")
    base_info = None
    full_sync_reason = None
    if base_name:
        if base_name == target.name:
            raise CsiDiffError("base_snapshot and snapshot are both %s: a delta needs an earlier snapshot as base" % base_name)
        base_info = discovery.snapshot(namespace, base_name, "base")
        if base_info.problem:
            full_sync_reason = base_info.problem
        elif base_info.driver != driver:
            raise CsiDiffError("base VolumeSnapshot %s/%s belongs to CSI driver %s but the target %s belongs to %s: "
                               "both must come from the same driver and volume"
                               % (namespace, base_name, base_info.driver, target.name, driver))
        else:
            problem = same_volume_problem(base_info, target) or snapshot_order_problem(base_info, target)
            if problem:
                raise CsiDiffError(problem, snapshot=target.as_dict(), base_snapshot=base_info.as_dict())
            base_handle = base_info.handle
    call = "delta" if (base_name or base_handle) else "allocated"
    base_shown = base_name or base_handle

    service = resolve_service(discovery, driver, params)
    result = {
        "call": call,
        "namespace": namespace,
        "snapshot": target.as_dict(),
        "base_snapshot": base_info.as_dict() if base_info is not None else (
            {"snapshot_handle": base_handle} if base_handle else None),
        "driver": driver,
        "service": {
            "source": service["source"],
            "address": service["address"],
            "audience": service["audience"],
            "server_name": service["host"],
        },
        "full_sync_required": False,
        "full_sync_reason": None,
    }

    if full_sync_reason:
        policy = params["on_base_unusable"]
        if policy == "fail":
            raise CsiDiffError("the base snapshot cannot be used for a delta: %s" % full_sync_reason,
                               full_sync_required=True, full_sync_reason=full_sync_reason)
        if policy == "report":
            result.update(_full_sync_result(full_sync_reason, started, result["base_snapshot"]))
            result["call"] = "none"
            return result
        call = "allocated"
        result["call"] = "allocated"
        result["full_sync_required"] = True
        result["full_sync_reason"] = full_sync_reason

    mode, mode_reason, probe = (None, None, False)
    if call == "delta":
        mode, mode_reason, probe = decide_base_mode(params, discovery, service, base_name, base_handle)
        if mode == "name" and not base_name:
            raise CsiDiffError("the sidecar takes the base snapshot name (%s) but only base_snapshot_handle was given; "
                               "set base_snapshot" % mode_reason)
        if mode == "handle" and not base_handle:
            raise CsiDiffError("base VolumeSnapshot %s/%s has no snapshot handle" % (namespace, base_name))
        result["base_snapshot_mode"] = {"requested": params["base_snapshot_mode"], "used": mode, "reason": mode_reason}

    sa_namespace = params.get("service_account_namespace") or namespace
    sa_name = params.get("service_account")
    if not sa_name:
        found = discovery.service_account_from_credentials()
        if found is None:
            raise CsiDiffError("service_account is required: the Kubernetes credentials do not belong to a "
                               "ServiceAccount, and the SnapshotMetadata service only accepts ServiceAccount tokens; "
                               "set service_account (and service_account_namespace) to one that may 'get' "
                               "volumesnapshots in namespace %s" % namespace)
        sa_namespace, sa_name = found
    tokens = TokenSource(api_client, sa_namespace, sa_name, service["audience"], params["token_expiration"],
                         on_token=on_token)
    tokens.get()  # fail early, before any connection, when the token cannot be minted

    api_host = getattr(getattr(api_client, "configuration", None), "host", None)
    transport_kind, transport_reason = choose_transport(params, service["host"], api_host)
    proxy = None
    target_address = params.get("connect_to") or service["address"]
    if transport_kind == "port_forward" and (params.get("impersonate_user") or params.get("impersonate_groups")):
        # the kubernetes client opens port-forwards as a websocket that sends no Impersonate-* headers:
        # the connection would run with the caller's own identity instead of the one asked for
        raise CsiDiffError("the port-forward to the SnapshotMetadata service (%s) cannot impersonate %s: the "
                           "kubernetes client's port-forward sends no impersonation headers, so it would run with "
                           "your own identity. Run 'kubectl port-forward --as ...' yourself and pass connect_to, or "
                           "run from inside the cluster (transport: direct)"
                           % (transport_reason, params.get("impersonate_user") or
                              "groups %s" % ", ".join(params.get("impersonate_groups") or [])))
    if transport_kind == "port_forward":
        pf_namespace, pod, port = discovery.port_forward_target(service["address"])
        proxy = (proxy_factory or _default_proxy)(api_client, pf_namespace, pod, port)
        if hasattr(proxy, "repick") and proxy.repick is None:
            # a pod replaced during the listing (rollout, node drain): resume through its successor
            proxy.repick = lambda: discovery.port_forward_target(service["address"])
        target_address = proxy.start()
        result["service"]["port_forward"] = {"namespace": pf_namespace, "pod": pod, "port": port,
                                             "local_address": target_address}
    result["service"].update(transport=transport_kind, transport_reason=transport_reason, connected_to=target_address)

    sink = None
    try:
        transport = (transport_factory or _default_transport)(target_address, service["ca_pem"], service["host"],
                                                              params["timeout"])
        context = {
            "call": call, "namespace": namespace, "snapshot": target.name, "base": base_shown, "driver": driver,
            "address": service["address"], "audience": service["audience"], "server_name": service["host"],
            "service_account": "%s/%s" % (sa_namespace, sa_name), "transport": transport_kind, "base_mode": mode,
        }
        output_file = None if check_mode else params.get("output_file")
        metadata = {
            "source": "csi:%s/%s" % (namespace, target.name),
            "base": ("csi:%s/%s" % (namespace, base_name)) if (call == "delta" and base_name) else (
                base_handle if call == "delta" else None),
            "call": call,
            # what a consumer may assume about the blocks that are not listed: "changed" = unchanged since
            # the base (a delta), "allocated" = unallocated (zero) in the snapshot, so a full copy of the
            # listed blocks must zero the rest of the target
            "coverage": COVERAGE_CHANGED if call == "delta" else COVERAGE_ALLOCATED,
            "driver": driver,
        }
        if params["starting_offset"] > 0:
            # the listing covers only [starting_offset, capacity)
            metadata["starting_offset"] = params["starting_offset"]

        def attempt(mode_now):
            local_sink = ExtentSink(output_file, params["extents_limit"], params["coalesce"], metadata)
            ctx = dict(context, base_mode=mode_now,
                       base=(base_name if mode_now == "name" else base_handle) if call == "delta" else None)
            if call == "delta":
                field3 = base_name if mode_now == "name" else base_handle

                def build(token, offset):
                    return encode_delta_request(token, namespace, field3, target.name, offset, params["max_results"])
                method = METHOD_DELTA
            else:
                def build(token, offset):
                    return encode_allocated_request(token, namespace, target.name, offset, params["max_results"])
                method = METHOD_ALLOCATED

            def open_stream(request):
                seen = len(proxy.errors) if proxy is not None else 0
                try:
                    yield from transport.open_stream(method, request)
                except StreamFailure as exc:
                    failed = proxy.errors[seen:] if proxy is not None else []
                    if failed:
                        # gRPC only saw the connection close ("Handshake read failed"); retrying cannot
                        # help while the port-forward itself is refused.
                        raise CsiDiffError(_port_forward_message(ctx, failed, exc), grpc_code=exc.code,
                                           port_forward_errors=failed[-5:])
                    raise

            runner = StreamRunner(open_stream, build, tokens, retries=params["retries"],
                                  retry_delay=params["retry_delay"], sleep=sleep, context=ctx)
            try:
                runner.run(params["starting_offset"], local_sink)
                local_sink.close()
            except BaseException:
                local_sink.abort()
                raise
            return runner, local_sink

        try:
            try:
                runner, sink = attempt(mode)
            except SnapshotMetadataError as exc:
                if probe and exc.code == "UNAVAILABLE" and looks_like_v010(exc.details, namespace, base_handle):
                    mode = "name"
                    result["base_snapshot_mode"] = {
                        "requested": params["base_snapshot_mode"], "used": "name",
                        "reason": "the sidecar looked up a VolumeSnapshot named after the handle, as sidecar v0.1.0 "
                                  "does: switched to the base snapshot name (%s)" % mode_reason}
                    runner, sink = attempt(mode)
                else:
                    raise
        except SnapshotMetadataError as exc:
            if exc.full_sync_reason and call == "delta" and params["on_base_unusable"] != "fail":
                if params["on_base_unusable"] == "report":
                    result.update(_full_sync_result(exc.full_sync_reason, started, result["base_snapshot"]))
                    result["call"] = "none"
                    return result
                # on_base_unusable: allocated
                params = dict(params, base_snapshot=None, base_snapshot_handle=None)
                inner = dict(params)
                again = run(inner, api_client, check_mode, on_token, transport_factory, proxy_factory, sleep)
                again["full_sync_required"] = True
                again["full_sync_reason"] = exc.full_sync_reason
                again["base_snapshot"] = result["base_snapshot"]
                return again
            raise CsiDiffError(exc.msg, grpc_code=exc.code, full_sync_required=bool(exc.full_sync_reason),
                               full_sync_reason=exc.full_sync_reason)
        finally:
            transport.close()
    finally:
        if proxy is not None:
            proxy.close()

    if proxy is not None and getattr(proxy, "repicked", None):
        result["service"]["port_forward"].update(pod=proxy.pod, port=proxy.port, pods_repicked=list(proxy.repicked))
    validator = runner.validator
    result.update({
        "block_metadata_type": BLOCK_METADATA_TYPES.get(validator.block_type, "UNKNOWN"),
        "volume_capacity_bytes": validator.capacity,
        "extent_count": sink.count,
        "total_bytes": sink.bytes,
        "extents": [{"offset": off, "length": length} for off, length in sink.kept],
        "extents_truncated": sink.count > len(sink.kept),
        "output_file": sink.path if sink.writer is not None else None,
        "coalesced": bool(params["coalesce"]),
        "starting_offset": params["starting_offset"],
        "stream": dict(runner.summary(), tokens_minted=tokens.minted),
        "duration_seconds": round(time.monotonic() - started, 3),
    })
    if call == "delta" and result.get("base_snapshot_mode"):
        result["base_snapshot_mode"]["used"] = mode
    return result


def _port_forward_message(ctx, errors, failure):
    what = ("GetMetadataDelta for VolumeSnapshot %s/%s against base %s" % (ctx["namespace"], ctx["snapshot"], ctx["base"])
            if ctx.get("call") == "delta" else
            "GetMetadataAllocated for VolumeSnapshot %s/%s" % (ctx["namespace"], ctx["snapshot"]))
    unique = []
    for error in errors:
        if error not in unique:
            unique.append(error)
    return ("%s could not reach the SnapshotMetadata service at %s: %s (gRPC saw %s: %s); fix the port-forward, "
            "or connect from inside the cluster (transport: direct) or through a port-forward of your own (connect_to)"
            % (what, ctx.get("address"), "; ".join(unique[-3:]), failure.code, failure.details))


def _default_transport(target, ca_pem, server_name, timeout):
    from ansible_collections.cbt.toolkit.plugins.module_utils._csi_transport import GrpcTransport  # pylint: disable=import-outside-toplevel
    return GrpcTransport(target, ca_pem, server_name, timeout=timeout)


def _default_proxy(api_client, namespace, pod, port):
    from ansible_collections.cbt.toolkit.plugins.module_utils._csi_transport import PortForwardProxy  # pylint: disable=import-outside-toplevel
    return PortForwardProxy(api_client, namespace, pod, port)
