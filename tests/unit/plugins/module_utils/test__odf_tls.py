# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _odf_tls as tls

NAMES = tls.service_dns_names("csi-snapshot-metadata", "openshift-storage")


@pytest.fixture(scope="module")
def ca():
    return tls.generate_ca("test CA", 3650)


def test_service_dns_names_cover_every_form():
    assert NAMES == ["csi-snapshot-metadata", "csi-snapshot-metadata.openshift-storage",
                     "csi-snapshot-metadata.openshift-storage.svc",
                     "csi-snapshot-metadata.openshift-storage.svc.cluster.local"]
    assert tls.service_dns_names("s", "n", "")[-1] == "s.n.svc"


def test_generated_ca_is_a_ca_and_keepable(ca):
    crt, key = ca
    info = tls.cert_info(crt)
    assert info["is_ca"] is True
    assert 3648 <= info["days_remaining"] <= 3650
    assert tls.ca_problems(crt, key, 30) == []


def test_server_cert_has_all_sans_and_is_signed_by_the_ca(ca):
    crt, key = tls.issue_server_cert(ca[0], ca[1], NAMES, 365)
    info = tls.cert_info(crt)
    assert info["dns_names"] == NAMES
    assert info["is_ca"] is False
    assert info["issuer"] == tls.cert_info(ca[0])["subject"]
    assert tls.server_cert_problems(crt, key, ca[0], NAMES, 30) == []


def test_renewal_before_threshold(ca):
    crt, key = tls.issue_server_cert(ca[0], ca[1], NAMES, 365)
    later = tls.utcnow() + datetime.timedelta(days=340)
    problems = tls.server_cert_problems(crt, key, ca[0], NAMES, 30, now=later)
    assert len(problems) == 1 and "expires on" in problems[0]
    assert tls.server_cert_problems(crt, key, ca[0], NAMES, 30, now=tls.utcnow() + datetime.timedelta(days=300)) == []


def test_missing_san_wrong_ca_and_key_mismatch_are_detected(ca):
    crt, key = tls.issue_server_cert(ca[0], ca[1], NAMES[:2], 365)
    assert any("lacks the DNS names" in p and NAMES[2] in p for p in tls.server_cert_problems(crt, key, ca[0], NAMES, 30))
    other_ca = tls.generate_ca("other", 3650)
    crt2, key2 = tls.issue_server_cert(other_ca[0], other_ca[1], NAMES, 365)
    assert "tls.crt is not signed by the current CA" in tls.server_cert_problems(crt2, key2, ca[0], NAMES, 30)
    assert "tls.key does not match tls.crt" in tls.server_cert_problems(crt, key2, ca[0], NAMES[:2], 30)


def test_server_cert_never_outlives_its_ca():
    short_ca = tls.generate_ca("short", 10)
    crt = tls.issue_server_cert(short_ca[0], short_ca[1], NAMES, 365)[0]
    assert tls.cert_info(crt)["not_after"] == tls.cert_info(short_ca[0])["not_after"]
    assert tls.ca_problems(short_ca[0], short_ca[1], 30) != []


def test_unreadable_material_is_a_problem_not_an_exception(ca):
    assert tls.server_cert_problems(None, None, ca[0], NAMES, 30) == ["the TLS secret has no tls.crt/tls.key"]
    assert "unreadable" in tls.server_cert_problems("garbage", "garbage", ca[0], NAMES, 30)[0]
    assert "unreadable" in tls.ca_problems("garbage", ca[1], 30)[0]
    with pytest.raises(tls.TlsError):
        tls.cert_info("not a certificate")


def test_split_pem_and_fingerprint(ca):
    other = tls.generate_ca("other", 10)[0]
    assert tls.split_pem_certs(ca[0] + other) == [ca[0].strip() + "\n", other.strip() + "\n"]
    assert tls.fingerprint("x").startswith("sha256:") and tls.fingerprint("x") != tls.fingerprint("y")
