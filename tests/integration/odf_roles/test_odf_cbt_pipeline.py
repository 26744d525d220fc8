# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/odf_cbt_pipeline.yml end to end, in ONE ansible-playbook run: reinstall ODF from a custom
catalog (OLM simulator), build the ceph-csi-operator image with buildah and push it to a real registry,
deploy it by digest into the CSV, enable CBT with cbt.toolkit.odf_cbt_enable, and verify it with a block
PVC, two snapshots around a write and cbt.toolkit.csi_snapshot_diff against the REAL
csi-snapshot-metadata sidecar and the csi-test-driver.

Test-bed stand-ins: the OLM simulator (tests/testbed/olm_sim.py), the other areas' ceph-csi-operator
and service-CA controllers (tests/testbed/odf_operator.py, imported unchanged), CsiWorld
(csi_world.py: provisioner, snapshot controller, the writer Job) and a watcher below that plays what
the image swap changes: the stock 4.20 image has no CBT code (the seed's finding), the image built
from release-4.20 has it; and the kubelet starting the sidecar container once the operator added it.
"""

from __future__ import annotations

import threading
import traceback
from types import SimpleNamespace

import pytest
import yaml

from csi_world import CsiWorld
from odf_roles_util import PLAYBOOKS, assert_idempotent, assert_ok, build_vars, fact, failure_messages
from testbed.csi import MANIFESTS as CSI_MANIFESTS
from testbed.csi import CsiTestDriver, Sidecar
from testbed.odf_operator import FakeCephCsiOperator, FakeServiceCA, OperatorProfile
from testbed.olm_sim import res_path

NS = "openshift-storage"
DRIVER = "openshift-storage.rbd.csi.ceph.com"
SIDECAR_VERSION = "v0.2.0"       # what the module proxy provides of the v1alpha1-era sidecars
SCC_420 = ["configMap", "emptyDir", "hostPath", "projected"]


class ImageSwapAndKubelet:
    """Plays what the test bed cannot run: (1) the ceph-csi operator process of the image in the CSV -
    the stock image has no CBT code, the custom build has; (2) the kubelet starting the real sidecar
    with the serving certificate mounted from the tls-key Secret once the ctrlplugin has the container."""

    def __init__(self, env, custom_image_prefix, address_file):
        self.env = env
        self.kube = env.kube
        self.custom_image_prefix = custom_image_prefix
        self.address_file = address_file
        self.operator = None
        self.service_ca = None
        self.driver = None
        self.sidecar = None
        self.errors = []
        self.swapped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-swap-kubelet", daemon=True)

    def start(self, csi_driver):
        self.driver = csi_driver
        self.service_ca = FakeServiceCA(self.env.cluster.api_client(), poll=0.3,
                                        log_name="fake-service-ca-%s" % self.env.cluster.id).start()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        for part in (self.operator, self.service_ca):
            if part is not None:
                part.stop()
        if self.sidecar is not None:
            self.sidecar.stop()

    def check(self):
        assert not self.errors, self.errors[:3]
        for part in (self.operator, self.service_ca):
            if part is not None:
                part.check()

    def _run(self):
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # pylint: disable=broad-except
                self.errors.append("%s\n%s" % (exc, traceback.format_exc()))
            self._stop.wait(0.3)

    def _tick(self):
        csv = self.kube.get(res_path("operators.coreos.com/v1alpha1", "clusterserviceversions", NS,
                                     "cephcsi-operator.v4.20.0"))
        if csv is None or csv.get("status", {}).get("phase") != "Succeeded":
            return
        image = csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"]["containers"][0]["image"]
        custom = image.startswith(self.custom_image_prefix)
        if self.operator is None:
            self.operator = FakeCephCsiOperator(self.env.cluster.api_client(), NS,
                                                OperatorProfile.odf("4.20", cbt_code=custom), poll=0.3,
                                                log_name="fake-ceph-csi-operator-%s" % self.env.cluster.id).start()
            self.swapped = custom
        elif custom and not self.swapped:
            # The new operator image runs: it has the CBT code and reconciles every Driver on start.
            self.operator.profile = OperatorProfile.odf("4.20", cbt_code=True)
            for pod in self.kube.list("/api/v1/namespaces/%s/pods" % NS,
                                      label_selector="control-plane=ceph-csi-op-controller-manager"):
                self.kube.delete("/api/v1/namespaces/%s/pods/%s" % (NS, pod["metadata"]["name"]), grace=0)
            self.swapped = True
        if self.sidecar is None:
            self._maybe_start_sidecar()

    def _maybe_start_sidecar(self):
        dep = self.kube.get("/apis/apps/v1/namespaces/%s/deployments/%s-ctrlplugin" % (NS, DRIVER))
        if not dep:
            return
        spec = dep["spec"]["template"]["spec"]
        if "csi-snapshot-metadata" not in [c["name"] for c in spec["containers"]]:
            return
        secret_name = None
        for vol in spec.get("volumes", []):
            if vol["name"] == "tls-key":
                secret_name = (vol.get("secret") or {}).get("secretName") or next(
                    (src["secret"]["name"] for src in (vol.get("projected") or {}).get("sources", []) if "secret" in src),
                    None)
        secret = self.kube.get("/api/v1/namespaces/%s/secrets/%s" % (NS, secret_name)) if secret_name else None
        if not secret or "tls.crt" not in secret.get("data", {}):
            return
        import base64  # pylint: disable=import-outside-toplevel
        workdir = self.address_file.parent
        (workdir / "tls.crt").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
        key = workdir / "tls.key"
        key.write_bytes(base64.b64decode(secret["data"]["tls.key"]))
        key.chmod(0o600)
        sms = self.kube.get("/apis/cbt.storage.k8s.io/v1alpha1/snapshotmetadataservices/%s" % DRIVER)
        host = sms["spec"]["address"].rsplit(":", 1)[0]
        tls = SimpleNamespace(cert_file=workdir / "tls.crt", key_file=key, dns_names=[host],
                              ca_pem=base64.b64decode(sms["spec"]["caCert"]))
        self.sidecar = Sidecar(SIDECAR_VERSION, self.env.cluster, self.driver, tls).start()
        self.address_file.write_text(self.sidecar.local_address)


@pytest.mark.slow
def test_pipeline_reinstall_build_deploy_enable_verify(odf_env, run_playbook, operator_repo, registry,
                                                       buildah_storage, tmp_path):
    env = odf_env
    from kubernetes import utils  # pylint: disable=import-outside-toplevel
    api = env.cluster.api_client()
    for doc in yaml.safe_load_all((CSI_MANIFESTS / "rbac.yaml").read_text()):
        utils.create_from_dict(api, doc)                        # the sidecar's RBAC (other area's manifest)
    env.kube.create(res_path("security.openshift.io/v1", "securitycontextconstraints"), {
        "apiVersion": "security.openshift.io/v1", "kind": "SecurityContextConstraints",
        "metadata": {"name": "ceph-csi-op-scc"}, "volumes": SCC_420, "allowHostDirVolumePlugin": True})
    driver = CsiTestDriver(name=DRIVER).start()
    world = CsiWorld(env.cluster, driver).start()
    address_file = tmp_path / "sidecar" / "address"
    address_file.parent.mkdir()
    image = "%s/cbt/cephcsi-operator-pipeline" % registry.host
    helper = ImageSwapAndKubelet(env, image + "@", address_file).start(driver)
    try:
        extra = build_vars(operator_repo, registry, buildah_storage, tmp_path,
                           cephcsi_operator_build_image=image, cephcsi_operator_build_platform="linux/amd64")
        extra.update({
            "cbt_k8s_auth": env.auth,
            "odf_uninstall_confirm": True, "odf_uninstall_poll_interval": 1,
            "odf_install_catalog_source_image": "quay.io/cbt-test/odf-catalog:4.20",
            "odf_install_device_set_storage_class": "gp3-csi",
            "odf_install_storage_nodes": ["worker-0", "worker-1", "worker-2"], "odf_install_poll_interval": 1,
            "cephcsi_operator_deploy_poll_interval": 1, "cephcsi_operator_deploy_timeout": 60,
            "odf_cbt_enable_options": {"wait_sleep": 0.5, "wait_timeout": 120},
            "odf_cbt_verify_pvc_size": "64Mi", "odf_cbt_verify_poll_interval": 1, "odf_cbt_verify_timeout": 60,
            # The sidecar runs on this host; its address is only known once the "kubelet" started it.
            "odf_cbt_verify_diff_options": {"connect_to": "{{ lookup('ansible.builtin.file', '%s') }}" % address_file,
                                            "sidecar_version": SIDECAR_VERSION},
        })
        run = run_playbook(str(PLAYBOOKS / "odf_cbt_pipeline.yml"), extra_vars=extra)
        assert_ok(run)
        built = fact(run, "cephcsi_operator_build_result")
        assert fact(run, "cephcsi_operator_deploy_result")["image"] == built["reference_by_digest"]
        enable = fact(run, "odf_cbt_enable_result") or next(
            r for r in run.task_results() if r["_task"].endswith("Enable the SnapshotMetadata sidecar for the RBD driver"))
        assert enable["changed"] is True
        sms = env.kube.get("/apis/cbt.storage.k8s.io/v1alpha1/snapshotmetadataservices/%s" % DRIVER)
        assert sms["spec"]["audience"] == DRIVER
        containers = [c["name"] for c in env.kube.get("/apis/apps/v1/namespaces/%s/deployments/%s-ctrlplugin"
                                                      % (NS, DRIVER))["spec"]["template"]["spec"]["containers"]]
        assert "csi-snapshot-metadata" in containers
        result = fact(run, "odf_cbt_verify_result")
        assert result["written"] == {"offset": 8 << 20, "length": 4 << 20}
        assert int(result["covered_bytes"]) == 4 << 20 and int(result["extra_bytes"]) == 0, result
        assert result["base_snapshot_mode"] == "handle"
        assert [w["length"] for w in world.writes] == [4 << 20]
        calls = [c for c in driver.calls() if c["rpc"] == "GetMetadataDelta"]
        assert calls, "the verification did not reach the driver through the sidecar"
        assert env.kube.get("/api/v1/namespaces/cbt-verify") is None    # scratch namespace cleaned up

        # The whole pipeline again: ODF in place, image in the registry and in the CSV, CBT enabled,
        # the verification runs again (a second write) and leaves nothing behind: changed=0.
        again = run_playbook(str(PLAYBOOKS / "odf_cbt_pipeline.yml"), extra_vars=extra)
        assert_idempotent(again)
        assert len(world.writes) == 2

        # A verification that cannot see the write fails, naming the numbers.
        world.drop_writes = True
        failed = run_playbook(str(PLAYBOOKS / "odf_cbt_verify.yml"), extra_vars=extra)
        assert failed.rc != 0
        msg = " ".join(failure_messages(failed))
        assert "0 of the 4194304 written bytes (offset 8388608) are reported as changed" in msg, msg
        assert env.kube.get("/api/v1/namespaces/cbt-verify") is None    # cleaned up after the failure too
        assert not world.errors, world.errors[:2]
        helper.check()
        env.assert_sim_healthy()
    finally:
        helper.stop()
        world.stop()
        driver.stop()
