# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test bed is real: kube-apiserver + etcd, vcsim over verified TLS, nbdkit + libnbd.

Each test drives a real peer through the same client libraries the collection uses and checks
behaviour a fake would not have (schema validation, signed tokens and their audiences, RBAC
decisions, TLS chain verification, bytes written through NBD landing in the file).
"""

import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from testbed.core import REPO_ROOT, PeerError
from testbed.kube import KubeCluster


def _unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def _pinned(module_path, go_mod):
    """The version of ``module_path`` required in a peer's go.mod."""
    text = (REPO_ROOT / "tests" / "peers" / go_mod / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?%s\s+(v\S+)" % re.escape(module_path), text, re.M)
    assert match, "%s not pinned in tests/peers/%s/go.mod" % (module_path, go_mod)
    return match.group(1)


def _namespace(api, prefix="tb"):
    name = _unique(prefix)
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _wait(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


@pytest.fixture
def admin(kube_cluster):
    api = kube_cluster.api_client()
    yield api
    api.close()


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------

def test_apiserver_and_etcd_report_the_pinned_versions(kube_cluster):
    assert kube_cluster.version["gitVersion"] == _pinned("k8s.io/kubernetes", "kube")
    with urllib.request.urlopen(kube_cluster.etcd_url + "/version", timeout=5) as resp:
        etcd = json.loads(resp.read())
    assert "v" + etcd["etcdserver"] == _pinned("go.etcd.io/etcd/server/v3", "kube")


def test_kubeconfig_and_env_point_at_the_cluster(kube_cluster):
    env = kube_cluster.env()
    assert env["K8S_AUTH_KUBECONFIG"] == str(kube_cluster.kubeconfig)
    api = kube_cluster.api_client(env["K8S_AUTH_KUBECONFIG"])
    try:
        assert api.configuration.host == kube_cluster.host
        assert kube_cluster.host.startswith("https://127.0.0.1:")
        names = {ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
        assert {"default", "kube-system"} <= names
    finally:
        api.close()
    # The serving certificate verifies against the CA file for 127.0.0.1 and localhost.
    for host in ("127.0.0.1", "localhost"):
        ctx = ssl.create_default_context(cafile=str(kube_cluster.ca_file))
        url = "https://%s:%d/livez" % (host, kube_cluster.port)
        with pytest.raises(urllib.error.HTTPError) as err:   # anonymous: authenticated TLS, RBAC says no
            urllib.request.urlopen(url.replace("/livez", "/api/v1/namespaces"), context=ctx, timeout=5)
        assert err.value.code == 403
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            assert resp.status == 200


def test_crd_and_custom_resource_round_trip(admin):
    group = "%s.testbed.cbt.example.com" % uuid.uuid4().hex[:8]
    plural = "widgets"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "%s.%s" % (plural, group)},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["sizeBytes"],
                        "properties": {"sizeBytes": {"type": "integer", "minimum": 0},
                                       "label": {"type": "string"}},
                    }},
                }},
            }],
        },
    }
    ext = client.ApiextensionsV1Api(admin)
    ext.create_custom_resource_definition(crd)

    def established():
        got = ext.read_custom_resource_definition("%s.%s" % (plural, group))
        return any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or []))

    _wait(established, what="CRD Established")
    ns = _namespace(admin)
    custom = client.CustomObjectsApi(admin)
    body = {"apiVersion": "%s/v1alpha1" % group, "kind": "Widget", "metadata": {"name": "w1"},
            "spec": {"sizeBytes": 4096, "label": "first"}}
    # The API server may need a moment to serve a just-established version.
    _wait(lambda: _try_create(custom, group, ns, plural, body), what="custom resource created")
    got = custom.get_namespaced_custom_object(group, "v1alpha1", ns, plural, "w1")
    assert got["spec"] == {"sizeBytes": 4096, "label": "first"}
    assert got["metadata"]["uid"] and got["metadata"]["resourceVersion"]
    # Structural-schema validation happens in the real server.
    bad = dict(body, metadata={"name": "w2"}, spec={"sizeBytes": -1})
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(group, "v1alpha1", ns, plural, bad)
    assert err.value.status == 422
    assert "sizeBytes" in err.value.body


def _try_create(custom, group, ns, plural, body):
    try:
        custom.create_namespaced_custom_object(group, "v1alpha1", ns, plural, body)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def test_token_request_and_token_review_with_audiences(admin):
    ns = _namespace(admin)
    core = client.CoreV1Api(admin)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    audience = "cbt-testbed-audience"
    token = core.create_namespaced_service_account_token(
        "reader", ns, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600))).status.token
    assert token.count(".") == 2  # a signed JWT

    auth = client.AuthenticationV1Api(admin)
    review = auth.create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=[audience])))
    assert review.status.authenticated is True
    assert review.status.user.username == "system:serviceaccount:%s:reader" % ns
    assert "system:serviceaccounts:%s" % ns in review.status.user.groups
    assert review.status.audiences == [audience]

    wrong = auth.create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=["someone-else"])))
    assert not wrong.status.authenticated

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    tampered = auth.create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=forged, audiences=[audience])))
    assert not tampered.status.authenticated


def test_subject_access_review_denied_then_allowed_by_rolebinding(admin):
    ns = _namespace(admin)
    user = _unique("sar-user")
    authz = client.AuthorizationV1Api(admin)

    def review():
        return authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=client.V1ResourceAttributes(
                namespace=ns, verb="list", resource="configmaps")))).status

    first = review()
    assert first.allowed is False
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(ns, client.V1Role(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])]))
    rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
        subjects=[client.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")]))
    allowed = _wait(lambda: review().allowed, what="RBAC to allow %s" % user)
    assert allowed is True
    # The binding grants exactly what the role says: still no delete.
    delete = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, resource_attributes=client.V1ResourceAttributes(
            namespace=ns, verb="delete", resource="configmaps")))).status
    assert delete.allowed is False


def test_unprivileged_client_cert_user_gets_403_until_bound(kube_cluster, admin):
    ns = _namespace(admin)
    user = _unique("cert-user")
    path = kube_cluster.user_kubeconfig(user, groups=("cbt-testers",))
    api = kube_cluster.api_client(path)
    try:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map(ns)
        assert err.value.status == 403
        # Authenticated (403, not 401) as the certificate's user: the server names it.
        message = json.loads(err.value.body)["message"]
        assert 'User "%s" cannot list resource "configmaps"' % user in message
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()).status.user_info
        assert review.username == user
        assert "cbt-testers" in review.groups
        # Grant the group read access: the same client now succeeds. (Not the built-in "view":
        # aggregated ClusterRoles stay empty without kube-controller-manager.)
        rbac = client.RbacAuthorizationV1Api(admin)
        role = _unique("cm-list")
        rbac.create_cluster_role(client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=role),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])]))
        rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="testers-list"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(kind="Group", name="cbt-testers", api_group="rbac.authorization.k8s.io")]))
        listed = _wait(lambda: _list_or_none(core, ns), what="the group binding to take effect")
        assert listed.items is not None
    finally:
        api.close()


def _list_or_none(core, ns):
    try:
        return core.list_namespaced_config_map(ns)
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise


def test_two_clusters_run_side_by_side_and_are_isolated(kube_cluster, admin):
    marker = _unique("only-in-session")
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=marker)))
    with KubeCluster(name="second") as other:
        assert other.host != kube_cluster.host
        assert other.kubeconfig != kube_cluster.kubeconfig
        api = other.api_client()
        try:
            names = {ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
        finally:
            api.close()
        assert "default" in names and marker not in names
        # Each cluster has its own CA: the session CA does not verify the other's serving cert.
        with pytest.raises(Exception) as err:
            urllib.request.urlopen(other.host + "/version", context=ssl.create_default_context(
                cafile=str(kube_cluster.ca_file)), timeout=5)
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert other.apiserver.proc.poll() is not None and other.etcd.proc.poll() is not None


def test_a_cluster_that_cannot_start_fails_naming_command_and_log():
    broken = KubeCluster(name="broken", extra_apiserver_args=["--no-such-flag=1"])
    with pytest.raises(PeerError) as err:
        broken.start()
    text = str(err.value)
    assert text.startswith("test bed peer kube-apiserver:")
    assert "--no-such-flag=1" in text and "log: %s" % broken.apiserver.log in text
    assert "unknown flag" in text          # the tail of the apiserver's own log
    assert broken.etcd.proc.poll() is not None, "etcd must not outlive a failed start"


def test_a_missing_binary_names_the_build_command(tmp_path):
    cluster = KubeCluster(name="nobinary")
    cluster.apiserver_bin = tmp_path / "kube-apiserver"
    with pytest.raises(PeerError) as err:
        cluster.start()
    assert "tests/peers/build.sh" in str(err.value) and str(cluster.apiserver_bin) in str(err.value)


# ---------------------------------------------------------------------------------------------
# vcsim
# ---------------------------------------------------------------------------------------------

def _find_vm(si, name):
    from pyVmomi import vim  # pylint: disable=import-outside-toplevel

    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if vm.name == name:
                return vm
    finally:
        view.Destroy()
    raise AssertionError("VM %s not in the simulator inventory" % name)


def test_vcsim_login_over_verified_tls(own_vcsim):
    from pyVim.connect import Disconnect, SmartConnect  # pylint: disable=import-outside-toplevel

    si = own_vcsim.connect(validate_certs=True)
    try:
        about = si.content.about
        assert "govmomi simulator" in about.fullName
        assert si.content.sessionManager.currentSession.userName == own_vcsim.username
    finally:
        Disconnect(si)
    # The short name logs in too (default SSO domain vsphere.local), as on a real vCenter.
    short = own_vcsim.username.split("@")[0]
    si = SmartConnect(host=own_vcsim.host, port=own_vcsim.port, user=short, pwd=own_vcsim.password,
                      sslContext=ssl.create_default_context(cafile=str(own_vcsim.ca_file)))
    Disconnect(si)
    assert own_vcsim.handshake["govmomi_version"] == _pinned("github.com/vmware/govmomi", "vcsim")
    env = own_vcsim.env()
    assert env["VMWARE_HOST"] == "127.0.0.1" and env["VMWARE_PORT"] == str(own_vcsim.port)
    assert env["VMWARE_VALIDATE_CERTS"] == "false"
    assert own_vcsim.env(validate_certs=True)["VMWARE_CA_CERT"] == str(own_vcsim.ca_file)


def test_vcsim_tls_verification_and_pinning(own_vcsim):
    from pyVim.connect import Connect, Disconnect, SmartConnect  # pylint: disable=import-outside-toplevel
    from pyVmomi import vim  # pylint: disable=import-outside-toplevel

    args = dict(host=own_vcsim.host, port=own_vcsim.port, user=own_vcsim.username, pwd=own_vcsim.password)
    # The system trust store does not know the test CA: verification must fail.
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(sslContext=ssl.create_default_context(), **args)
    # pyVmomi consults a pin (serverPemCert / thumbprint) only when the chain check fails, and
    # only in Connect() (SmartConnect's version probe ignores pins): the right pin passes ...
    si = Connect(sslContext=ssl.create_default_context(), serverPemCert=own_vcsim.cert_file.read_text(), **args)
    Disconnect(si)
    si = Connect(sslContext=ssl.create_default_context(), thumbprint=own_vcsim.thumbprint_sha1, **args)
    Disconnect(si)
    # ... and a wrong one is refused.
    with pytest.raises(vim.fault.HostConnectFault) as err:
        Connect(sslContext=ssl.create_default_context(), thumbprint=":".join(["00"] * 20), **args)
    assert "thumbprint mismatch" in err.value.msg
    # Trap (pyVmomi 9.1): without an sslContext, SmartConnect to 127.0.0.1/localhost does not
    # verify at all, whatever the pin says. Code that means to verify must pass a context.
    si = SmartConnect(thumbprint=":".join(["00"] * 20), **args)
    Disconnect(si)


def test_vcsim_rejects_a_wrong_password(own_vcsim):
    from pyVim.connect import SmartConnect  # pylint: disable=import-outside-toplevel
    from pyVmomi import vim  # pylint: disable=import-outside-toplevel

    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=own_vcsim.host, port=own_vcsim.port, user=own_vcsim.username,
                     pwd=own_vcsim.password + "x",
                     sslContext=ssl.create_default_context(cafile=str(own_vcsim.ca_file)))


def test_vcsim_reconfigure_change_tracking(own_vcsim):
    from pyVim.connect import Disconnect  # pylint: disable=import-outside-toplevel
    from pyVim.task import WaitForTask  # pylint: disable=import-outside-toplevel
    from pyVmomi import vim  # pylint: disable=import-outside-toplevel

    si = own_vcsim.connect()
    try:
        vm = _find_vm(si, "DC0_H0_VM0")
        assert vm.capability.changeTrackingSupported is True
        assert not vm.config.changeTrackingEnabled
        task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True))
        assert WaitForTask(task) == vim.TaskInfo.State.success
        assert task.info.entity == vm
        assert vm.config.changeTrackingEnabled is True
        # A second session sees the change: it is server state, not a client cache.
        other = own_vcsim.connect()
        try:
            assert _find_vm(other, "DC0_H0_VM0").config.changeTrackingEnabled is True
            assert not _find_vm(other, "DC0_H0_VM1").config.changeTrackingEnabled
        finally:
            Disconnect(other)
    finally:
        Disconnect(si)


# ---------------------------------------------------------------------------------------------
# nbdkit + libnbd
# ---------------------------------------------------------------------------------------------

def test_nbdkit_file_export_read_and_write_through_libnbd(tmp_path):
    import nbd  # pylint: disable=import-outside-toplevel  # python3-libnbd (Debian)
    from testbed.nbd import NbdExport  # pylint: disable=import-outside-toplevel

    image = Path(tmp_path) / "disk.img"
    payload = os.urandom(1 << 20) + bytes(1 << 20)   # 1 MiB random, then 1 MiB zeroes
    image.write_bytes(payload)
    with NbdExport.nbdkit(image, transport="unix", name=_unique("nbd-selftest")) as export:
        handle = nbd.NBD()
        handle.connect_uri(export.uri)
        try:
            assert handle.get_size() == len(payload)
            assert handle.pread(len(payload), 0) == payload
            # A write through NBD lands in the file behind the export.
            block = os.urandom(4096)
            handle.pwrite(block, 8192)
            handle.flush()
            assert handle.pread(4096, 8192) == block
        finally:
            handle.shutdown()
    data = image.read_bytes()
    assert data[8192:8192 + 4096] == block
    assert data[:8192] == payload[:8192] and data[12288:] == payload[12288:]
