# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""odf_cbt_enable / odf_cbt_info: an unreachable API server is explained; the tls-key volume type when
the SCC is unknown on OpenShift; the OpenShift service CA path refuses a foreign or malformed Secret."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import socket

import pytest
from kubernetes import client as k8s_client

from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_diagnosis as dg
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_enable as en
from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_tls as tls
from ansible_collections.cbt.toolkit.plugins.module_utils._odf_kube import KubeApi, KubeError
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils.test__odf_diagnosis import (
    BASE8, csv, deployment, facts_for, params)


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_api_server_names_the_server_and_the_cause():
    host = "https://127.0.0.1:%d" % closed_port()
    configuration = k8s_client.Configuration()
    configuration.host = host
    configuration.retries = 0
    api = KubeApi(k8s_client.ApiClient(configuration), request_timeout=5)
    with pytest.raises(KubeError) as err:
        api.server_version()
    msg = str(err.value)
    assert err.value.status == 0
    assert msg.startswith("server version (GET /version) failed: the Kubernetes API server %s could not be reached"
                          % host), msg
    assert "Connection refused" in msg or "NewConnectionError" in msg
    assert "check the kubeconfig context" in msg


def test_status_zero_without_a_transport_error_keeps_its_reason():
    err = KubeError(0, "Handshake status 500 Internal Server Error", None, "GET /x")
    assert str(err) == "GET /x failed: Handshake status 500 Internal Server Error"


# ---------------------------------------------------------------- tls-key volume type and the SCC


def test_unknown_scc_on_openshift_means_projected():
    st = dg.Settings(params())
    facts = facts_for()             # OpenShift, SCC not found
    assert facts.scc is None and facts.openshift
    assert dg.resolve_volume_type(st, facts) == "projected"
    facts.forbidden.append("SecurityContextConstraints ceph-csi-op-scc: forbidden")
    kind, reason = dg.volume_type_choice(st, facts)
    assert kind == "projected"
    assert "SecurityContextConstraints ceph-csi-op-scc is unknown (reading it was denied)" in reason
    assert "ODF 4.20 and 4.21 admits no secret volumes" in reason
    diag = dg.diagnose(st, facts)
    assert diag["scc"]["tls_volume_type"] == "projected" and diag["scc"]["tls_volume_type_reason"] == reason


def test_volume_type_elsewhere():
    st = dg.Settings(params())
    assert dg.volume_type_choice(st, facts_for(scc_volumes=["projected", "secret"]))[0] == "secret"
    assert dg.volume_type_choice(st, facts_for(scc_volumes=["projected"]))[0] == "projected"
    plain = facts_for()
    plain.openshift = False
    kind, reason = dg.volume_type_choice(st, plain)
    assert kind == "secret" and "not OpenShift" in reason
    assert dg.volume_type_choice(dg.Settings(params(tls_volume_type="secret")), facts_for())[0] == "secret"


# ---------------------------------------------------------------- service CA: the TLS Secret


class NoWrites(object):
    """Any API call fails the test: the checks must come before the first change."""

    def __getattr__(self, name):
        raise AssertionError("the engine called api.%s before refusing" % name)


def secret(name, crt, annotations=None, labels=None):
    return {"metadata": {"name": name, "namespace": "openshift-storage", "annotations": annotations or {},
                         "labels": labels or {}},
            "data": {"tls.crt": base64.b64encode(crt.encode()).decode(), "tls.key": "eA=="}}


def service_ca_present(tls_secret):
    st = dg.Settings(params(tls_provider="service_ca"))
    facts = facts_for(csv("cephcsi-operator.v4.20.0-rhodf", "4.20.0-rhodf"), crd_versions=["v1alpha1", "v1beta1"],
                      deploy=deployment(BASE8), scc_volumes=["projected"])
    facts.openshift_ca = {"data": {dg.OPENSHIFT_CA_KEY: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"}}
    facts.tls_secret = tls_secret
    engine = en.Engine(NoWrites(), st, check_mode=False, warn=lambda m: None)
    with pytest.raises(en.EnableError) as err:
        engine.present(facts, dg.diagnose(st, facts))
    return st, str(err.value)


def test_service_ca_refuses_a_malformed_certificate():
    st, msg = service_ca_present(secret("csi-snapshot-metadata-tls", "not a certificate",
                                        annotations={dg.SERVICE_CA_ORIGIN_ANNOTATION: "csi-snapshot-metadata"}))
    assert msg.startswith("Secret openshift-storage/%s (tls_provider=service_ca) has a tls.crt that is not a readable "
                          "PEM certificate: " % st.tls_secret_name), msg
    assert "delete the Secret so that the OpenShift service CA issues it again for Service %s" % st.service_name in msg


def test_service_ca_refuses_a_foreign_secret_of_the_same_name():
    crt, _key = tls.generate_ca("someone else's", 30)
    st, msg = service_ca_present(secret("csi-snapshot-metadata-tls", crt))
    assert msg.startswith("Secret openshift-storage/csi-snapshot-metadata-tls exists and was created neither by "
                          "cbt.toolkit nor by the OpenShift service CA for Service %s" % st.service_name), msg
    assert "choose another tls_secret_name or delete it" in msg


def test_service_ca_accepts_its_own_secret():
    ca_crt, ca_key = tls.generate_ca("openshift-service-serving-signer", 30)
    crt, _key = tls.issue_server_cert(ca_crt, ca_key, ["csi-snapshot-metadata.openshift-storage.svc"], 30)
    st = dg.Settings(params(tls_provider="service_ca"))
    facts = facts_for(scc_volumes=["projected"])
    facts.tls_secret = secret(st.tls_secret_name, crt, annotations={dg.SERVICE_CA_ORIGIN_ANNOTATION: st.service_name})
    engine = en.Engine(NoWrites(), st, check_mode=False, warn=lambda m: None)
    engine.check_self_managed_secrets(facts, "service_ca")
    info = engine.service_ca_cert_info(facts)
    assert info["dns_names"] == ["csi-snapshot-metadata.openshift-storage.svc"]
