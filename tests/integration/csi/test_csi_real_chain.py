# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""csi_snapshot_diff against the real chain: kube-apiserver (TokenRequest, TokenReview,
SubjectAccessReview, snapshot objects) -> real external-snapshot-metadata sidecar (v1.1.0 and
v0.2.0) -> our CSI test driver over its unix socket. Expected extents come from an in-memory model
of every byte written, not from the driver.

Both real sidecars take the base snapshot *handle* (v0.2.0+); v0.1.0, which takes the *name*, is
refused by the Go module proxy, so name mode is tested against our fake server (test_csi_fake.py).
"""

import random

import pytest

from csi_helpers import as_pairs, module_args, run_flow  # pylint: disable=import-error
from ansible_collections.cbt.toolkit.plugins.module_utils.extents import read_extent_file


def two_snapshots(chain, seed, size=8 << 20):
    rng = random.Random(seed)
    vol = chain.volume(size)
    vol.scribble(rng, writes=15)
    first = vol.snapshot()
    vol.scribble(rng, writes=10)
    second = vol.snapshot()
    return vol, first, second


@pytest.mark.parametrize("key", ["fixed", "variable"])
def test_allocated_and_delta_v110_through_ansible(beta_bed, run_module, tmp_path, key):
    chain = beta_bed.chains[key]
    vol, first, second = two_snapshots(chain, seed=11 if key == "fixed" else 12)
    connect = {"connect_to": chain.sidecar.local_address}

    out = str(tmp_path / "alloc.extents")
    result, run = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot=first, output_file=out,
                                                              extents_limit=100000, **connect))
    assert result.get("failed") is not True, run
    assert result["changed"] is False and result["call"] == "allocated"
    expected = vol.expected(first, variable=chain.variable)
    assert as_pairs(result["extents"]) == expected
    assert result["block_metadata_type"] == ("VARIABLE_LENGTH" if chain.variable else "FIXED_LENGTH")
    assert result["volume_capacity_bytes"] == vol.size
    assert result["total_bytes"] == sum(length for _o, length in expected)
    meta, extents = read_extent_file(out)
    assert extents == expected and meta["capacity"] == vol.size and meta["source"] == "csi:apps/%s" % first
    assert result["service"]["source"].endswith("(cbt.storage.k8s.io/v1beta1)")

    out = str(tmp_path / "delta.extents")
    result, run = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot=second, base_snapshot=first,
                                                              output_file=out, extents_limit=100000, **connect))
    assert result.get("failed") is not True, run
    expected = vol.expected(second, base=first, variable=chain.variable)
    assert expected, "the scribbles changed nothing; pick another seed"
    assert as_pairs(result["extents"]) == expected
    assert read_extent_file(out)[1] == expected
    # auto mode read the sidecar image of the Deployment behind the service address
    mode = result["base_snapshot_mode"]
    assert mode["used"] == "handle" and "v1.1.0" in mode["reason"] and "Deployment csi-driver/" in mode["reason"]
    calls = [c for c in chain.driver.calls() if c["rpc"] == "GetMetadataDelta"]
    assert calls[-1]["base_snapshot_id"] == "h-%s" % first and calls[-1]["target_snapshot_id"] == "h-%s" % second
    if chain.variable:
        assert result["stream"]["messages"] > 1  # the driver sends 5 tuples per message


def test_allocated_and_delta_v020_v1alpha1_direct(alpha_bed, run_module, tmp_path):
    chain = alpha_bed.chains["fixed"]
    vol, first, second = two_snapshots(chain, seed=21)
    result, run = run_module("csi_snapshot_diff", module_args(alpha_bed.cluster, snapshot=second, base_snapshot=first,
                                                              extents_limit=100000))
    assert result.get("failed") is not True, run
    assert as_pairs(result["extents"]) == vol.expected(second, base=first)
    assert result["service"]["source"].endswith("(cbt.storage.k8s.io/v1alpha1)")
    assert result["service"]["transport"] == "direct" and "resolves" in result["service"]["transport_reason"]
    # no Service behind "localhost": the version is unknown, the handle goes first and is accepted
    assert result["base_snapshot_mode"]["used"] == "handle"
    assert "sidecar version unknown" in result["base_snapshot_mode"]["reason"]

    result = run_flow(alpha_bed.cluster, snapshot=first, sidecar_version="v0.2.0", extents_limit=100000)
    assert as_pairs(result["extents"]) == vol.expected(first)


def test_max_results_starting_offset_and_coalesce(beta_bed):
    chain = beta_bed.chains["fixed"]
    vol = chain.volume(4 << 20)
    vol.fill(0, 64 * 1024, 1)
    vol.fill(1 << 20, 8192, 2)
    vol.fill(3 << 20, 4096, 3)
    snap = vol.snapshot()
    chain.driver.clear_calls()
    result = run_flow(beta_bed.cluster, snapshot=snap, connect_to=chain.sidecar.local_address, max_results=3,
                      starting_offset=32 * 1024, coalesce=True)
    assert as_pairs(result["extents"]) == [(32 * 1024, 32 * 1024), (1 << 20, 8192), (3 << 20, 4096)]
    assert result["stream"]["tuples"] == 8 + 2 + 1 and result["stream"]["messages"] == 4
    call = chain.driver.calls()[-1]
    assert call["max_results"] == 3 and call["starting_offset"] == 32 * 1024


def test_resume_through_the_real_sidecar(beta_bed):
    """The driver breaks the stream (UNAVAILABLE, then INTERNAL); the sidecar passes the status through
    and the module resumes from the end of the last tuple until the listing is complete."""
    chain = beta_bed.chains["fixed"]
    vol = chain.volume(4 << 20)
    for i in range(0, 4 << 20, 3 * 4096):
        vol.fill(i, 4096, 7)
    snap = vol.snapshot()
    chain.driver.clear_calls()
    chain.driver.fault("UNAVAILABLE", after_messages=2, message="volume busy", rpc="GetMetadataAllocated")
    chain.driver.fault("INTERNAL", after_messages=5, message="transient", rpc="GetMetadataAllocated")
    result = run_flow(beta_bed.cluster, snapshot=snap, connect_to=chain.sidecar.local_address, max_results=16,
                      extents_limit=100000)
    expected = vol.expected(snap)
    assert as_pairs(result["extents"]) == expected
    assert result["stream"]["resumes"] == 2
    assert [e["code"] for e in result["stream"]["stream_errors"]] == ["UNAVAILABLE", "INTERNAL"]
    calls = chain.driver.calls()
    assert [c["starting_offset"] for c in calls] == [0, expected[31][0] + 4096, expected[31 + 80][0] + 4096]
    assert [bool(c.get("error")) for c in calls] == [True, True, False]


def test_check_mode_does_not_write_the_file(beta_bed, run_module, tmp_path):
    chain = beta_bed.chains["fixed"]
    vol = chain.volume(1 << 20)
    vol.fill(8192, 4096, 5)
    snap = vol.snapshot()
    out = tmp_path / "never.extents"
    result, run = run_module("csi_snapshot_diff", module_args(beta_bed.cluster, snapshot=snap, output_file=str(out),
                                                              connect_to=chain.sidecar.local_address), check=True)
    assert result.get("failed") is not True, run
    assert result["changed"] is False and result["output_file"] is None
    assert as_pairs(result["extents"]) == [(8192, 4096)]
    assert not out.exists()


def test_least_privilege_operator_user(beta_bed, run_module):
    """A kubeconfig user with only the documented permissions (snapshots, SMS, serviceaccounts/token)."""
    chain = beta_bed.chains["fixed"]
    vol = chain.volume(1 << 20)
    vol.fill(0, 4096, 1)
    snap = vol.snapshot()
    kubeconfig = beta_bed.bed.operator_kubeconfig("backup-operator", "apps")
    args = module_args(beta_bed.cluster, snapshot=snap, connect_to=chain.sidecar.local_address,
                       sidecar_version="v1.1.0")
    args["kubeconfig"] = str(kubeconfig)
    result, run = run_module("csi_snapshot_diff", args)
    assert result.get("failed") is not True, run
    assert as_pairs(result["extents"]) == [(0, 4096)]
