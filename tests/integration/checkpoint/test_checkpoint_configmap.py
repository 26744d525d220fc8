# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ConfigMap backend against a real kube-apiserver (testbed.kube): compare-and-set through
resourceVersion, concurrent advancers, history limit, RBAC errors, check mode."""

import threading
import uuid

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint as cp
from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_configmap import ConfigMapStore, data_key
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils import checkpoint_scenarios


@pytest.fixture
def namespace(kube_cluster):
    from kubernetes import client  # pylint: disable=import-outside-toplevel

    name = "cbt-cp-%s" % uuid.uuid4().hex[:8]
    api = client.CoreV1Api(kube_cluster.api_client())
    api.create_namespace({"metadata": {"name": name}})
    yield name, api


def test_module_advance_conflict_info(kube_cluster, namespace, run_module):
    ns, api = namespace
    args = {"backend": "configmap", "configmap_namespace": ns, "configmap_name": "cbt-checkpoints",
            "kubeconfig": str(kube_cluster.kubeconfig), "source_id": "pvc:prod/db", "target": "dr/db"}
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-1"), check=True)
    assert res.get("changed") is True, run
    assert "cbt-checkpoints" not in [c.metadata.name for c in api.list_namespaced_config_map(ns).items]

    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-1", bytes=4096))
    assert res.get("changed") is True and res["checkpoint"]["generation"] == 1, run
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-2", expected_previous="snap-1"))
    assert res.get("changed") is True and res["checkpoint"]["previous_change_id"] == "snap-1", run
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-3", expected_previous="snap-1"))
    assert res.get("failed") and res.get("conflict") and "snap-2" in res["msg"], run

    cm = api.read_namespaced_config_map("cbt-checkpoints", ns)
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "cbt.toolkit"
    assert data_key("pvc:prod/db", "dr/db") in cm.data

    info_args = {k: v for k, v in args.items() if k not in ("source_id", "target")}
    res, run = run_module("cbt_checkpoint_info", dict(info_args, source_id="pvc:prod/db", target="dr/db",
                                                      history=True))
    assert res["checkpoint"]["change_id"] == "snap-2" and len(res["history"]) == 2, run
    res, run = run_module("cbt_checkpoint_info", dict(info_args, configmap_name="does-not-exist"))
    assert res["checkpoints"] == [] and not res.get("failed"), run


def test_concurrent_advances_only_one_wins(kube_cluster, namespace):
    ns, _api = namespace
    params = {"kubeconfig": str(kube_cluster.kubeconfig)}

    def make():
        return ConfigMapStore(params, name="race", namespace=ns)

    store = make()
    store.advance("s", "t", "base")
    # an unrelated key written concurrently must not be lost either
    outcome = []
    barrier = threading.Barrier(7)

    def contender(i):
        s = make()
        barrier.wait()
        try:
            s.advance("s", "t", "next-%d" % i, expected_previous="base")
            outcome.append("won")
        except cp.ConflictError:
            outcome.append("lost")

    def other():
        s = make()
        barrier.wait()
        s.advance("other", "t", "x")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)] + [threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome.count("won") == 1 and outcome.count("lost") == 5, outcome
    assert store.get("s", "t")["generation"] == 2 and store.get("other", "t")["change_id"] == "x"


def test_history_limit_and_delete(kube_cluster, namespace):
    ns, _api = namespace
    store = ConfigMapStore({"kubeconfig": str(kube_cluster.kubeconfig)}, name="hist", namespace=ns, history_limit=3)
    previous = None
    for i in range(6):
        store.advance("s", "t", "c%d" % i, expected_previous=previous)
        previous = "c%d" % i
    history = store.history("s", "t", limit=0)
    assert [h["change_id"] for h in history] == ["c5", "c4", "c3"]
    assert store.delete("s", "t", expected_previous="c5")[0] is True
    assert store.get("s", "t") is None and store.history("s", "t", limit=1)[0]["action"] == "delete"
    # the trimmed history still holds the newest generation, so the next checkpoint continues from it
    assert store.advance("s", "t", "c6", expected_generation=0)[1]["generation"] == 7
    assert [(h["action"], h["generation"]) for h in store.history("s", "t", limit=0)] == [
        ("advance", 7), ("delete", 6), ("advance", 6)]


def test_forbidden_user_gets_an_rbac_hint(kube_cluster, namespace):
    ns, _api = namespace
    kubeconfig = kube_cluster.user_kubeconfig("cbt-nobody")
    store = ConfigMapStore({"kubeconfig": str(kubeconfig)}, name="cp", namespace=ns)
    with pytest.raises(cp.CheckpointError) as err:
        store.get("s", "t")
    assert "403" in str(err.value) and "RBAC" in str(err.value)


def test_batch_advance_is_all_or_none_and_races(kube_cluster, namespace):
    ns, api = namespace
    params = {"kubeconfig": str(kube_cluster.kubeconfig)}
    checkpoint_scenarios.batch_all_or_none(ConfigMapStore(params, name="batch", namespace=ns))
    checkpoint_scenarios.batch_race(lambda: ConfigMapStore(params, name="batch-race", namespace=ns))
    cm = api.read_namespaced_config_map("batch-race", ns)
    assert {data_key("r:a", "replica"), data_key("r:b", "replica")} <= set(cm.data)


def test_generation_continues_after_delete(kube_cluster, namespace):
    ns, _api = namespace
    store = ConfigMapStore({"kubeconfig": str(kube_cluster.kubeconfig)}, name="generations", namespace=ns)
    checkpoint_scenarios.generation_after_delete(store)


def test_module_records(kube_cluster, namespace, run_module):
    ns, _api = namespace
    args = {"backend": "configmap", "configmap_namespace": ns, "configmap_name": "cbt-records",
            "kubeconfig": str(kube_cluster.kubeconfig)}
    records = [{"source_id": "pvc:prod/db-%d" % i, "target": "dr/db-%d" % i, "change_id": "snap-1"} for i in range(3)]
    res, run = run_module("cbt_checkpoint", dict(args, records=records))
    assert res.get("changed") is True and len(res["records"]) == 3, run
    res, run = run_module("cbt_checkpoint", dict(args, records=records))
    assert res.get("changed") is False, run


def test_advance_keeps_what_others_set_on_the_configmap(kube_cluster, namespace):
    """A ConfigMap made beforehand (by a GitOps tool, with an owner and binary data) keeps its owner
    references, annotations, labels and binaryData through advances."""
    ns, api = namespace
    api.create_namespaced_config_map(ns, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "owned", "labels": {"team": "storage"}, "annotations": {"note": "keep"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent",
                                          "uid": str(uuid.uuid4())}]},
        "binaryData": {"blob": "AAEC"}, "data": {"readme": "checkpoints"}})
    store = ConfigMapStore({"kubeconfig": str(kube_cluster.kubeconfig)}, name="owned", namespace=ns)
    store.advance("s", "t", "c1")
    store.advance("s", "t", "c2", expected_previous="c1")
    cm = api.read_namespaced_config_map("owned", ns)
    assert [o.name for o in cm.metadata.owner_references or []] == ["parent"]
    assert cm.metadata.annotations.get("note") == "keep" and cm.metadata.labels.get("team") == "storage"
    assert cm.binary_data == {"blob": "AAEC"} and cm.data["readme"] == "checkpoints"
    assert store.get("s", "t")["change_id"] == "c2"


def test_a_configmap_deleted_between_read_and_write_is_read_again(kube_cluster, namespace, monkeypatch):
    ns, api = namespace
    store = ConfigMapStore({"kubeconfig": str(kube_cluster.kubeconfig)}, name="gone", namespace=ns)
    store.advance("s", "t", "c1")
    real_read = store._read
    calls = []

    def read_then_delete():
        found = real_read()
        if not calls:  # the first read sees the ConfigMap; it is deleted before the write
            api.delete_namespaced_config_map("gone", ns)
        calls.append(1)
        return found

    monkeypatch.setattr(store, "_read", read_then_delete)
    changed, record, _previous = store.advance("s2", "t", "x1")
    assert changed and record["generation"] == 1 and len(calls) == 2
    assert api.read_namespaced_config_map("gone", ns).data.get(data_key("s2", "t"))
