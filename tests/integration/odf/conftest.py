# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the odf_cbt_enable / odf_cbt_info integration tests.

Each test module gets its own real kube-apiserver (the SnapshotMetadataService CRD differs
between scenarios, and another area installs it in the shared session cluster), the test CRDs
from ``manifests/`` and test-bed controllers from ``testbed.odf_operator`` playing
ceph-csi-operator (and, on the OpenShift-like clusters, the service CA).
"""

import pytest

from odf_bed import start_bed


@pytest.fixture(scope="module")
def ocp_bed():
    """OpenShift-like cluster: SCC and config.openshift.io APIs, a service CA, no SMS CRD."""
    bed = start_bed("odf-ocp", openshift=True)
    yield bed
    bed.stop()
    bed.cluster.stop()


@pytest.fixture(scope="module")
def trap_bed():
    """OpenShift-like cluster whose SnapshotMetadataService CRD serves only v1beta1 (not ours)."""
    bed = start_bed("odf-trap", openshift=True, extra=["sms-crd-v1beta1-only"])
    yield bed
    bed.stop()
    bed.cluster.stop()


@pytest.fixture(scope="module")
def k8s_bed():
    """Plain Kubernetes: no OpenShift APIs, no OLM, no service CA."""
    bed = start_bed("odf-k8s", openshift=False, olm=False)
    yield bed
    bed.stop()
    bed.cluster.stop()


@pytest.fixture
def own_odf():
    """``own_odf(bed, namespace, version, **kw)`` -> (driver, operator); the operator stops after the test."""
    started = []

    def make(bed, namespace, version, **kw):
        driver, op = bed.setup_odf(namespace, version, **kw)
        started.append((bed, op))
        return driver, op
    yield make
    for bed, op in started:
        bed.retire(op)
