# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the csi_snapshot_diff integration tests.

Two real kube-apiservers of our own (another area installs a different SnapshotMetadataService CRD
in the shared session cluster): ``beta_bed`` pairs the real sidecar v1.1.0 with the v1beta1-only
CRD it reads, ``alpha_bed`` the real sidecar v0.2.0 with the v1alpha1-only CRD. Each runs our CSI
test driver(s) and tests publish VolumeSnapshot/VolumeSnapshotContent objects as the snapshot
controller would. ``fake_sms`` starts our Python SnapshotMetadata server for what the real peers
cannot do on demand.
"""

import pytest

from csi_helpers import SA, start_bed, uid  # pylint: disable=import-error
from fake_sms import FakeSnapshotMetadata  # pylint: disable=import-error
from testbed.csi import ServingCert


@pytest.fixture(scope="session")
def beta_bed():
    bed = start_bed("csi-v1beta1", ("v1beta1",), "v1.1.0")
    try:
        bed.add_chain("fixed", "FIXED_LENGTH")
        bed.add_chain("variable", "VARIABLE_LENGTH", max_results=5)
        # What a cluster would show behind the SMS address: the Service and the controller Deployment
        # with the sidecar image (objects only; nothing runs them here).
        bed.bed.namespace("csi-driver")
        bed.bed.sidecar_workload("csi-driver", "csi-snapshot-metadata", 6443,
                                 "registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.1.0", app="csi-test-driver")
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="session")
def alpha_bed():
    bed = start_bed("csi-v1alpha1", ("v1alpha1",), "v0.2.0")
    try:
        # The address names localhost so the module (and the Go lister) connect without an override.
        bed.add_chain("fixed", "FIXED_LENGTH", direct_host="localhost")
        yield bed
    finally:
        bed.stop()


class FakeService:
    """A fake SnapshotMetadata server registered as the SMS of its own driver in a bed, with its own
    namespace (holding ServiceAccount backup-client allowed to get VolumeSnapshots)."""

    def __init__(self, bed, base_field="handle", sms=True, tls=None):
        self.bed = bed
        self.namespace = bed.bed.namespace(uid("fake"))
        bed.bed.service_account(self.namespace, SA)
        self.driver = "%s.fake.cbt.toolkit.io" % uid("drv")
        self.service = uid("fake-sms")
        self.host = "%s.csi-driver.svc" % self.service
        self.tls = tls or ServingCert([self.host, "localhost"])
        self.server = FakeSnapshotMetadata(self.tls.cert_pem, self.tls.key_pem, namespace=self.namespace,
                                           base_field=base_field).start()
        self.address = "%s:%d" % (self.host, self.server.port)
        if sms:
            bed.bed.create_sms(self.driver, self.address, "fake-audience", self.tls.ca_pem)

    def snapshot(self, name, volume, pvc="pvc-fake", handle=None, ready=True):
        handle = handle or "fh-%s" % name
        self.server.add_snapshot(name, handle, volume)
        self.bed.bed.publish_snapshot(self.namespace, name, self.driver, handle, pvc=pvc, ready=ready)
        return handle

    def workload(self, image):
        """Service, Deployment and EndpointSlice behind the address (objects only)."""
        self.bed.bed.sidecar_workload("csi-driver", self.service, self.server.port, image, app=self.service)

    def stop(self):
        self.server.stop()


@pytest.fixture
def fake_service(beta_bed):
    made = []

    def make(**kwargs):
        svc = FakeService(beta_bed, **kwargs)
        made.append(svc)
        return svc
    yield make
    for svc in made:
        svc.stop()


@pytest.fixture(scope="module")
def module_fake_service(beta_bed):
    """One FakeService shared by the tests of a module (many trials against the same server)."""
    svc = FakeService(beta_bed)
    yield svc
    svc.stop()
