# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere API client: connection, typed errors, re-login, PropertyCollector retrieval and
task waiting.

This utility is private to the cbt.toolkit collection; its interface may change at any time.

Design points:

* Connection failures are split into "unreachable", "TLS verification failed" and "login
  failed" so the user is told which of network, certificate or credentials to fix.
* Every API call goes through :meth:`VmwareClient.invoke`, which logs in again once when the
  session has expired (``NotAuthenticated``) and turns ``NoPermission`` into
  :class:`VmwarePermissionDenied` naming the missing privilege.
* Tasks are waited for with a dedicated PropertyCollector and ``WaitForUpdatesEx``: the
  server tells us when the task changes state, nothing sleeps on the clock.
* Properties are read with ``RetrievePropertiesEx`` on explicit property paths only (never a
  whole ``runtime`` or ``summary``: some servers return values that pyVmomi cannot parse).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import ssl
import time
import traceback

try:
    from pyVim.connect import SmartConnect
    from pyVmomi import vim, vmodl
    HAS_PYVMOMI = True
    PYVMOMI_IMP_ERR = None
except ImportError:
    HAS_PYVMOMI = False
    PYVMOMI_IMP_ERR = traceback.format_exc()
    vim = vmodl = SmartConnect = None


DEFAULT_CONNECT_TIMEOUT = 15
DEFAULT_HTTP_TIMEOUT = 300
TASK_WAIT_SLICE = 60


class VmwareError(Exception):
    """Base of every error this client raises. ``kind`` classifies it for the result."""

    kind = "error"

    def __init__(self, msg, fault=None, **details):
        super(VmwareError, self).__init__(msg)
        self.msg = msg
        self.fault = fault
        self.details = details

    @property
    def fault_name(self):
        return fault_name(self.fault) if self.fault is not None else None


class VmwareUnreachable(VmwareError):
    kind = "unreachable"


class VmwareTlsError(VmwareError):
    kind = "tls_verification_failed"


class VmwareLoginFailed(VmwareError):
    kind = "login_failed"


class VmwarePermissionDenied(VmwareError):
    kind = "permission_denied"

    def __init__(self, msg, fault=None, privileges=None, **details):
        super(VmwarePermissionDenied, self).__init__(msg, fault=fault, **details)
        self.privileges = privileges or []


class VmwareNotFound(VmwareError):
    kind = "not_found"


class VmwareAmbiguous(VmwareError):
    kind = "ambiguous"

    def __init__(self, msg, matches=None, **details):
        super(VmwareAmbiguous, self).__init__(msg, **details)
        self.matches = matches or []


class VmwareTaskFailed(VmwareError):
    kind = "task_failed"


class VmwareTaskTimeout(VmwareError):
    kind = "task_timeout"


class VmwareApiError(VmwareError):
    kind = "api_error"


def fault_name(fault):
    """``vim.fault.FileFault`` -> ``FileFault``; works for pyVmomi faults and plain exceptions."""
    if fault is None:
        return None
    wsdl = getattr(type(fault), "_wsdlName", None)
    if wsdl:
        return wsdl
    return type(fault).__name__.split(".")[-1]


def fault_text(fault):
    """The most useful human text of a vSphere fault (or any exception)."""
    if fault is None:
        return "unknown error"
    parts = []
    msg = getattr(fault, "msg", None) or getattr(fault, "localizedMessage", None)
    if msg:
        parts.append(str(msg).strip())
    for fm in getattr(fault, "faultMessage", None) or []:
        text = getattr(fm, "message", None)
        if text and text not in parts:
            parts.append(str(text).strip())
    if not parts:
        text = str(fault).strip()
        if text and not text.startswith("("):
            parts.append(text)
    name = fault_name(fault)
    text = "; ".join(p for p in parts if p)
    if not text:
        return name or "unknown error"
    if name and name not in text:
        return "%s: %s" % (name, text)
    return text


def is_fault(exc, *names):
    """True if ``exc`` is a vSphere fault whose class (or a base class) has one of ``names``."""
    if exc is None:
        return False
    for klass in type(exc).__mro__:
        if getattr(klass, "_wsdlName", None) in names or klass.__name__.split(".")[-1] in names:
            return True
    return False


def _privileges_of(fault):
    privileges = []
    if getattr(fault, "privilegeId", None):
        privileges.append(fault.privilegeId)
    for entry in getattr(fault, "missingPrivileges", None) or []:
        # NoPermission.EntityPrivileges (vSphere 7.0.3+) names them in privilegeIds
        for priv in getattr(entry, "privilegeIds", None) or getattr(entry, "privileges", None) or []:
            if priv not in privileges:
                privileges.append(priv)
    return privileges


def unfinished_task(exc):
    """The task whose wait ended with ``exc`` before the task reached a final state (timeout,
    interruption, broken connection), or None. Such a task may still succeed later."""
    return getattr(exc, "unfinished_task", None)


def _mark_unfinished(exc, task):
    try:
        exc.unfinished_task = task
    except Exception:  # pylint: disable=broad-except
        pass


def permission_error(fault, what, expected_privilege=None):
    """Build :class:`VmwarePermissionDenied` from a ``NoPermission`` fault."""
    privileges = _privileges_of(fault)
    if not privileges and expected_privilege:
        privileges = [expected_privilege]
    obj = getattr(fault, "object", None)
    on = ""
    if obj is not None:
        on = " on %s" % getattr(obj, "_moId", obj)
    if privileges:
        msg = ("permission denied while %s: the vCenter user lacks the privilege %s%s; grant it "
               "(for example through a role on the VM or its folder) and run again"
               % (what, ", ".join("'%s'" % p for p in privileges), on))
    else:
        msg = "permission denied while %s%s: %s" % (what, on, fault_text(fault))
    return VmwarePermissionDenied(msg, fault=fault, privileges=privileges)


class VmwareClient(object):
    """One logged-in vSphere API session."""

    def __init__(self, hostname, username, password, port=443, validate_certs=True, ca_cert=None,
                 proxy_host=None, proxy_port=None, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                 http_timeout=DEFAULT_HTTP_TIMEOUT, relogin_attempts=2):
        self.hostname = hostname
        self.username = username
        self.password = password
        self.port = int(port or 443)
        self.validate_certs = validate_certs
        self.ca_cert = ca_cert
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.connect_timeout = connect_timeout
        self.http_timeout = http_timeout
        self.relogin_attempts = relogin_attempts
        self.relogins = 0
        self.si = None
        self.content = None

    @classmethod
    def from_params(cls, params):
        return cls(hostname=params.get("hostname"), username=params.get("username"),
                   password=params.get("password"), port=params.get("port") or 443,
                   validate_certs=params.get("validate_certs", True), ca_cert=params.get("ca_cert"),
                   proxy_host=params.get("proxy_host"), proxy_port=params.get("proxy_port"))

    @property
    def endpoint(self):
        return "%s:%s" % (self.hostname, self.port)

    @property
    def stub(self):
        return self.si._stub

    # -- connection -----------------------------------------------------------------------

    def _ssl_context(self):
        if not self.validate_certs:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else ssl.create_default_context()
        except (IOError, OSError, ssl.SSLError) as exc:
            raise VmwareTlsError("cannot load the CA bundle ca_cert=%s: %s; give a readable PEM file"
                                 % (self.ca_cert, exc))

    def _preflight(self):
        """A plain TCP connect first: a clear 'unreachable' instead of a library traceback,
        and a bounded wait instead of the OS default."""
        target = (self.proxy_host, int(self.proxy_port or 80)) if self.proxy_host else (self.hostname, self.port)
        via = " through proxy %s:%s" % target if self.proxy_host else ""
        try:
            sock = socket.create_connection(target, timeout=self.connect_timeout)
            sock.close()
        except socket.gaierror as exc:
            raise VmwareUnreachable(
                "vCenter %s is unreachable%s: the name %s does not resolve (%s); check hostname "
                "(or VMWARE_HOST) and DNS" % (self.endpoint, via, target[0], exc))
        except socket.timeout:
            raise VmwareUnreachable(
                "vCenter %s is unreachable%s: no answer within %d s; check hostname, port, firewall "
                "and proxy settings" % (self.endpoint, via, self.connect_timeout))
        except (OSError, IOError) as exc:
            raise VmwareUnreachable(
                "vCenter %s is unreachable%s: %s; check hostname, port (or VMWARE_PORT), firewall "
                "and proxy settings" % (self.endpoint, via, exc))

    def connect(self):
        if not HAS_PYVMOMI:
            raise VmwareError("the pyVmomi Python library is required")
        if not self.hostname:
            raise VmwareUnreachable("no vCenter given: set the hostname option or the VMWARE_HOST "
                                    "environment variable")
        if not self.username:
            raise VmwareLoginFailed("no vCenter user given: set the username option or the VMWARE_USER "
                                    "environment variable")
        if self.password is None:
            raise VmwareLoginFailed("no password given for vCenter user '%s': set the password option or "
                                    "the VMWARE_PASSWORD environment variable" % self.username)
        self._preflight()
        context = self._ssl_context()
        kwargs = dict(host=self.hostname, port=self.port, user=self.username, pwd=self.password,
                      sslContext=context, httpConnectionTimeout=self.http_timeout)
        if self.proxy_host:
            kwargs.update(httpProxyHost=self.proxy_host, httpProxyPort=int(self.proxy_port or 80))
        try:
            self.si = SmartConnect(**kwargs)
        except ssl.SSLCertVerificationError as exc:
            raise VmwareTlsError(
                "TLS verification of vCenter %s failed: %s. Trust the vCenter CA (ca_cert, "
                "VMWARE_CA_CERT or the system trust store) or, for a lab only, set validate_certs: false"
                % (self.endpoint, getattr(exc, "verify_message", None) or exc))
        except ssl.SSLError as exc:
            raise VmwareTlsError("TLS handshake with vCenter %s failed: %s; is this the HTTPS port of "
                                 "a vCenter or ESXi host?" % (self.endpoint, exc))
        except Exception as exc:  # pylint: disable=broad-except
            self._raise_connect_error(exc)
        self.content = self.si.RetrieveContent()
        return self

    def _raise_connect_error(self, exc):
        if is_fault(exc, "InvalidLogin"):
            raise VmwareLoginFailed(
                "login to vCenter %s as '%s' failed: %s; check username and password (or "
                "VMWARE_USER / VMWARE_PASSWORD)" % (self.endpoint, self.username, fault_text(exc)),
                fault=exc)
        if is_fault(exc, "NoPermission"):
            raise VmwareLoginFailed("login to vCenter %s as '%s' was refused: %s"
                                    % (self.endpoint, self.username, fault_text(exc)), fault=exc)
        if isinstance(exc, (socket.timeout, ConnectionError)):
            raise VmwareUnreachable("vCenter %s stopped answering while connecting: %s"
                                    % (self.endpoint, exc))
        cause = getattr(exc, "__cause__", None) or getattr(exc, "__context__", None)
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise VmwareTlsError("TLS verification of vCenter %s failed: %s" % (self.endpoint, cause))
        text = str(exc)
        if "is down or is not a VIM server" in text:
            raise VmwareUnreachable(
                "%s answers but is not a vSphere API endpoint (no /sdk/vimServiceVersions.xml); "
                "check hostname and port" % self.endpoint)
        if isinstance(exc, (OSError, IOError)):
            raise VmwareUnreachable("vCenter %s is unreachable: %s" % (self.endpoint, exc))
        raise VmwareApiError("connecting to vCenter %s failed: %s" % (self.endpoint, fault_text(exc)),
                             fault=exc)

    def relogin(self):
        """Log in again on the same connection (managed object references stay valid)."""
        self.relogins += 1
        manager = self.content.sessionManager
        try:
            manager.Logout()
        except Exception:  # pylint: disable=broad-except
            pass  # the session is usually already gone
        try:
            manager.Login(self.username, self.password, None)
        except Exception as exc:  # pylint: disable=broad-except
            if is_fault(exc, "InvalidLogin"):
                raise VmwareLoginFailed("the vCenter session expired and logging in again as '%s' "
                                        "failed: %s" % (self.username, fault_text(exc)), fault=exc)
            raise VmwareApiError("the vCenter session expired and logging in again failed: %s"
                                 % fault_text(exc), fault=exc)

    def close(self):
        if self.si is None:
            return
        try:
            self.content.sessionManager.Logout()
        except Exception:  # pylint: disable=broad-except
            pass
        self.si = None

    # -- calls ----------------------------------------------------------------------------

    def invoke(self, what, func, *args, **kwargs):
        """Call ``func``; log in again on ``NotAuthenticated`` and retry; map faults.

        ``what`` completes "permission denied while ..." / "... failed" messages.
        ``expected_privilege`` (keyword) names the privilege when the server omits it.
        """
        expected_privilege = kwargs.pop("expected_privilege", None)
        attempts = 0
        while True:
            try:
                return func(*args, **kwargs)
            except VmwareError:
                raise
            except Exception as exc:  # pylint: disable=broad-except
                if is_fault(exc, "NotAuthenticated"):
                    attempts += 1
                    if attempts > self.relogin_attempts:
                        raise VmwareLoginFailed(
                            "the vCenter session kept expiring while %s (%d logins in a row); check "
                            "the vCenter session timeout and the account" % (what, attempts), fault=exc)
                    self.relogin()
                    continue
                if is_fault(exc, "NoPermission"):
                    raise permission_error(exc, what, expected_privilege)
                if is_fault(exc, "MethodFault", "RuntimeFault") or hasattr(type(exc), "_wsdlName"):
                    raise VmwareApiError("%s failed: %s" % (what, fault_text(exc)), fault=exc)
                if isinstance(exc, (socket.timeout, ConnectionError, ssl.SSLError)):
                    raise VmwareUnreachable("the connection to vCenter %s broke while %s: %s"
                                            % (self.endpoint, what, exc), fault=exc)
                raise

    def mo(self, vim_type, moid):
        """A managed object reference of ``vim_type`` (e.g. ``vim.VirtualMachine``) bound to this session."""
        return vim_type(moid, self.stub)

    # -- PropertyCollector ----------------------------------------------------------------

    def retrieve(self, object_specs, property_specs, what="reading inventory properties", page_size=None):
        """One ``RetrievePropertiesEx`` (plus continuation pages). Returns a list of
        ``(managed_object, {path: value}, [missing paths])``."""
        def run():
            collector = self.content.propertyCollector
            spec = vmodl.query.PropertyCollector.FilterSpec(objectSet=object_specs, propSet=property_specs)
            options = vmodl.query.PropertyCollector.RetrieveOptions()
            if page_size:
                options.maxObjects = page_size
            result = collector.RetrievePropertiesEx([spec], options)
            rows = []
            while result is not None:
                for content in result.objects or []:
                    props = {}
                    for prop in content.propSet or []:
                        props[prop.name] = prop.val
                    missing = [m.path for m in (content.missingSet or [])]
                    rows.append((content.obj, props, missing))
                if not result.token:
                    break
                result = collector.ContinueRetrievePropertiesEx(result.token)
            return rows
        return self.invoke(what, run)

    def properties(self, obj, paths, what=None):
        """Selected properties of one managed object as a dict (unset properties absent)."""
        what = what or "reading %s" % getattr(obj, "_moId", obj)
        rows = self.retrieve([object_spec(obj)], [property_spec(type(obj), paths)], what=what)
        if not rows:
            raise VmwareNotFound("%s: the object %s no longer exists" % (what, getattr(obj, "_moId", obj)))
        return rows[0][1]

    def container_view(self, container, types, recursive=True):
        return self.invoke("creating a container view",
                           self.content.viewManager.CreateContainerView, container, types, recursive)

    def with_views(self, containers, body):
        """``body(views)`` over container views of ``containers`` (``(container, [types])`` pairs),
        destroyed again afterwards. Views belong to the session: when it expired and was renewed in
        the meantime (the views are gone with it), the views are created again and ``body`` runs once
        more."""
        for attempt in range(2):
            logins = self.relogins
            views = []
            try:
                for container, types in containers:
                    views.append(self.container_view(container, types, True))
                return body(views)
            except VmwareApiError as exc:
                if attempt == 0 and self.relogins != logins and is_fault(exc.fault, "ManagedObjectNotFound"):
                    continue
                raise
            finally:
                for view in views:
                    self.destroy_view(view)
        raise AssertionError("unreachable")  # pragma: no cover

    def destroy_view(self, view):
        try:
            view.DestroyView()
        except Exception:  # pylint: disable=broad-except
            pass

    # -- tasks ----------------------------------------------------------------------------

    def wait_task(self, task, what, timeout=3600, expected_privilege=None):
        """Wait until ``task`` succeeds (return its ``TaskInfo``) or fails (raise).

        Uses its own PropertyCollector and ``WaitForUpdatesEx``; re-creates it after a
        re-login. Falls back to polling ``info.state`` with a short back-off only if the
        server has no ``CreatePropertyCollector``.

        Whatever ends the wait before the task reached a final state (timeout, lost connection,
        KeyboardInterrupt, ...) carries the task: see :func:`unfinished_task`.
        """
        deadline = time.monotonic() + timeout
        attempts = 0
        try:
            while True:
                try:
                    info = self._wait_task_updates(task, what, deadline, timeout)
                    break
                except VmwareError:
                    raise
                except Exception as exc:  # pylint: disable=broad-except
                    if is_fault(exc, "NotAuthenticated") and attempts < self.relogin_attempts:
                        attempts += 1
                        self.relogin()
                        continue
                    if is_fault(exc, "MethodNotFound", "NotSupported", "NotImplemented"):
                        info = self._poll_task(task, what, deadline, timeout)
                        break
                    if is_fault(exc, "NoPermission") and not is_fault(exc, "NotAuthenticated"):
                        raise permission_error(exc, "waiting for the task of %s" % what)
                    if isinstance(exc, (socket.timeout, ConnectionError, ssl.SSLError)):
                        raise VmwareUnreachable("the connection to vCenter %s broke while waiting for the task of %s: %s"
                                                % (self.endpoint, what, exc), fault=exc)
                    if not hasattr(type(exc), "_wsdlName"):
                        raise
                    raise VmwareApiError("waiting for the task of %s failed: %s" % (what, fault_text(exc)), fault=exc)
        except BaseException as exc:
            _mark_unfinished(exc, task)
            raise
        state = str(info.state)
        if state == "success":
            return info
        error = getattr(info, "error", None)
        if error is not None and is_fault(error, "NoPermission") and not is_fault(error, "NotAuthenticated"):
            raise permission_error(error, what, expected_privilege)
        raise VmwareTaskFailed("%s failed: %s" % (what, fault_text(error)), fault=error,
                               task=getattr(task, "_moId", None))

    def _timeout_error(self, task, what, timeout, info):
        state = getattr(info, "state", "unknown") if info is not None else "unknown"
        progress = getattr(info, "progress", None) if info is not None else None
        return VmwareTaskTimeout(
            "%s did not finish within %d s (task %s is still %s%s); raise task_timeout or check the "
            "task in vCenter" % (what, timeout, getattr(task, "_moId", task), state,
                                 ", %s%%" % progress if progress is not None else ""),
            task=getattr(task, "_moId", None))

    def _wait_task_updates(self, task, what, deadline, timeout):
        collector = self.content.propertyCollector.CreatePropertyCollector()
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[object_spec(task)], propSet=[property_spec(vim.Task, ["info"])])
            collector.CreateFilter(spec, False)
            version = ""
            info = None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(task, what, timeout, info)
                options = vmodl.query.PropertyCollector.WaitOptions(
                    maxWaitSeconds=int(max(1, min(remaining, TASK_WAIT_SLICE))))
                update = collector.WaitForUpdatesEx(version, options)
                if update is None:
                    continue
                version = update.version
                for filter_update in update.filterSet or []:
                    for obj_update in filter_update.objectSet or []:
                        for change in obj_update.changeSet or []:
                            if change.name == "info" and change.val is not None:
                                info = change.val
                if info is not None and str(info.state) in ("success", "error"):
                    return info
        finally:
            try:
                collector.DestroyPropertyCollector()
            except Exception:  # pylint: disable=broad-except
                pass

    def _poll_task(self, task, what, deadline, timeout):
        delay = 0.02
        info = None
        while True:
            info = self.invoke("reading the task of %s" % what, lambda: task.info)
            if str(info.state) in ("success", "error"):
                return info
            if time.monotonic() >= deadline:
                raise self._timeout_error(task, what, timeout, info)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def run_task(self, what, func, *args, **kwargs):
        """Start a task with :meth:`invoke` and wait for it. Keyword ``timeout`` and
        ``expected_privilege`` are consumed here."""
        timeout = kwargs.pop("timeout", 3600)
        expected_privilege = kwargs.get("expected_privilege")
        task = self.invoke(what, func, *args, **kwargs)
        return self.wait_task(task, what, timeout=timeout, expected_privilege=expected_privilege)


# -- spec builders ------------------------------------------------------------------------

def object_spec(obj, skip=False, select_set=None):
    spec = vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=skip)
    if select_set:
        spec.selectSet = select_set
    return spec


def property_spec(vim_type, paths):
    return vmodl.query.PropertyCollector.PropertySpec(type=vim_type, pathSet=list(paths), all=False)


def traversal_spec(name, vim_type, path, skip=False, select_set=None):
    spec = vmodl.query.PropertyCollector.TraversalSpec(name=name, type=vim_type, path=path, skip=skip)
    if select_set:
        spec.selectSet = select_set
    return spec


def view_traversal():
    """Traverse a ContainerView to the objects it shows."""
    return traversal_spec("cbtViewTraversal", vim.view.ContainerView, "view", skip=False)
