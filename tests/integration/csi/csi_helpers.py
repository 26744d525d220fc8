# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the csi_snapshot_diff integration tests: the two test beds (sidecar v1.1.0 with the
v1beta1 CRD, sidecar v0.2.0 with the v1alpha1 CRD), a block-level model of each volume as the
oracle for expected extents, and an in-process runner for the module's flow."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

# importing ansible_run makes ansible_collections.cbt.toolkit importable
from testbed import ansible_run  # noqa: F401 pylint: disable=unused-import
from testbed.csi import CsiTestDriver, ServingCert, Sidecar, SnapshotBed
from testbed.kube import KubeCluster

from ansible_collections.cbt.toolkit.plugins.module_utils import _csi_diff

BLOCK = 4096
NAMESPACE = "apps"
SA = "backup-client"
SA_NO_RBAC = "no-rbac-client"
AUDIENCE = "cbt-test-backup-client"
SERVICE_HOST = "csi-snapshot-metadata.csi-driver.svc"
_IDS = itertools.count(1)


def uid(prefix: str) -> str:
    return "%s-%d" % (prefix, next(_IDS))


class VolumeModel:
    """A volume in the test driver plus an in-memory copy: the oracle for allocated/delta extents."""

    def __init__(self, chain: "Chain", size: int = 8 << 20, pvc: str | None = None):
        self.chain = chain
        self.size = size
        self.id = uid("vol")
        self.pvc = pvc or "pvc-%s" % self.id
        self.data = bytearray(size)
        self.snapshots: dict[str, bytes] = {}
        chain.driver.create_volume(self.id, size)

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset:offset + len(data)] = data
        self.chain.driver.write(self.id, offset, data)

    def fill(self, offset: int, length: int, byte: int) -> None:
        self.data[offset:offset + length] = bytes([byte]) * length
        self.chain.driver.fill(self.id, offset, length, byte)

    def scribble(self, rng: random.Random, writes: int = 12, max_blocks: int = 6) -> None:
        """Random writes, some unaligned, some of zeros (which free blocks), some rewriting equal bytes."""
        for _write in range(writes):
            off = rng.randrange(0, self.size - max_blocks * BLOCK)
            if rng.random() < 0.5:
                off -= off % BLOCK
            length = rng.randint(1, max_blocks * BLOCK)
            kind = rng.random()
            if kind < 0.15:
                self.fill(off, length, 0)
            elif kind < 0.25:
                self.write(off, bytes(self.data[off:off + length]))  # same bytes: no change
            else:
                self.write(off, bytes(rng.getrandbits(8) or 1 for _byte in range(length)))

    def snapshot(self, name: str | None = None, ready: bool = True, publish: bool = True) -> str:
        """Take a snapshot in the driver and publish VolumeSnapshot + VolumeSnapshotContent."""
        name = name or uid("snap")
        handle = "h-%s" % name
        self.chain.driver.snapshot(handle, self.id, ready=True)
        self.snapshots[name] = bytes(self.data)
        if publish:
            self.chain.bed.publish_snapshot(NAMESPACE, name, self.chain.driver.name, handle, pvc=self.pvc,
                                            ready=ready)
        return name

    def _blocks(self, base: bytes | None, target: bytes):
        for off in range(0, len(target), BLOCK):
            block = target[off:off + BLOCK]
            if base is None:
                if any(block):
                    yield off
            elif block != base[off:off + BLOCK]:
                yield off

    def expected(self, target: str, base: str | None = None, variable: bool = False):
        blocks = list(self._blocks(self.snapshots[base] if base else None, self.snapshots[target]))
        if not variable:
            return [(b, BLOCK) for b in blocks]
        runs = []
        for b in blocks:
            if runs and runs[-1][0] + runs[-1][1] == b:
                runs[-1] = (runs[-1][0], runs[-1][1] + BLOCK)
            else:
                runs.append((b, BLOCK))
        return runs


@dataclass
class Chain:
    """One CSI driver with its real sidecar, registered in a test bed."""
    bed: SnapshotBed
    driver: CsiTestDriver
    sidecar: Sidecar
    variable: bool

    def volume(self, size: int = 8 << 20, pvc: str | None = None) -> VolumeModel:
        return VolumeModel(self, size, pvc)


@dataclass
class Bed:
    cluster: KubeCluster
    bed: SnapshotBed
    tls: ServingCert
    sidecar_version: str
    chains: dict = field(default_factory=dict)
    address_host: str = SERVICE_HOST

    def add_chain(self, key: str, block_type: str, direct_host: str | None = None, max_results: int = 256) -> Chain:
        """A driver and its sidecar. The SnapshotMetadataService address is ``<direct_host>:<sidecar port>``
        when ``direct_host`` is given (reachable as is), else the in-cluster Service name, which tests
        reach with ``connect_to``."""
        driver = CsiTestDriver(name="%s.csi-test.cbt.toolkit.io" % key, block_type=block_type,
                               max_results=max_results).start()
        sidecar = Sidecar(self.sidecar_version, self.cluster, driver, self.tls).start()
        self.bed.create_class("%s-class" % key, driver.name)
        address = "%s:%d" % (direct_host, sidecar.port) if direct_host else "%s:6443" % self.address_host
        self.bed.create_sms(driver.name, address, AUDIENCE, self.tls.ca_pem)
        chain = Chain(self.bed, driver, sidecar, block_type == "VARIABLE_LENGTH")
        self.chains[key] = chain
        return chain

    def stop(self) -> None:
        for chain in self.chains.values():
            chain.sidecar.stop()
            chain.driver.stop()
        self.cluster.stop()


def start_bed(name: str, sms_versions, sidecar_version: str) -> Bed:
    cluster = KubeCluster(name=name).start()
    try:
        snap_bed = SnapshotBed(cluster, sms_versions).install()
        snap_bed.namespace(NAMESPACE)
        snap_bed.service_account(NAMESPACE, SA)
        snap_bed.service_account(NAMESPACE, SA_NO_RBAC, may_get_snapshots=False)
        tls = ServingCert([SERVICE_HOST, "localhost"])
        return Bed(cluster, snap_bed, tls, sidecar_version)
    except BaseException:
        cluster.stop()
        raise


def params(**overrides) -> dict:
    """Module parameters with the argument-spec defaults, for in-process runs of the module flow."""
    out = {k: v.get("default") for k, v in _csi_diff.argument_spec().items()}
    out.update(namespace=NAMESPACE, service_account=SA, retry_delay=0.05)
    out.update(overrides)
    return out


def run_flow(cluster, check_mode=False, tokens=None, **overrides) -> dict:
    """The module's flow in-process (same code the module runs, without Ansible's start-up cost)."""
    hidden = tokens if tokens is not None else []
    problem = _csi_diff.check_params(params(**overrides))
    if problem:
        raise ValueError(problem)
    return _csi_diff.run(params(**overrides), cluster.api_client(), check_mode=check_mode, on_token=hidden.append)


def module_args(cluster, **overrides) -> dict:
    args = {"kubeconfig": str(cluster.kubeconfig), "namespace": NAMESPACE, "service_account": SA,
            "retry_delay": 0.05}
    args.update(overrides)
    return args


def as_pairs(extents) -> list:
    return [(e["offset"], e["length"]) for e in extents]
