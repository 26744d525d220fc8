# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the checkpoint decision logic and the SQLite backend."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sqlite3
import threading

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint as cp
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils import checkpoint_scenarios


def rec(change_id, generation):
    return {"change_id": change_id, "generation": generation, "updated_at": "t"}


def test_decide_first_checkpoint_needs_no_expectation():
    assert cp.decide_advance(None, "s", "t", "c1") == "advance"
    assert cp.decide_advance(None, "s", "t", "c1", expected_generation=0) == "advance"


def test_decide_same_change_id_is_unchanged_even_with_stale_expectation():
    assert cp.decide_advance(rec("c2", 2), "s", "t", "c2", expected_previous="c1") == "unchanged"


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "pass expected_previous"),
    ({"expected_previous": "c0"}, "expected previous change id 'c0'"),
    ({"expected_generation": 1}, "expected generation 1"),
    ({"expected_generation": 0}, "expected generation 0"),
])
def test_decide_conflicts_name_what_is_stored(kwargs, needle):
    with pytest.raises(cp.ConflictError) as err:
        cp.decide_advance(rec("c1", 2), "vm:1", "/dev/x", "c9", **kwargs)
    assert needle in str(err.value) and "'c1' at generation 2" in str(err.value)
    assert err.value.current["change_id"] == "c1"


def test_decide_force_and_matching_expectations():
    assert cp.decide_advance(rec("c1", 2), "s", "t", "c2", force=True) == "advance"
    assert cp.decide_advance(rec("c1", 2), "s", "t", "c2", expected_previous="c1", expected_generation=2) == "advance"
    with pytest.raises(cp.ConflictError):
        cp.decide_advance(None, "s", "t", "c2", expected_previous="c1")


def test_decide_batch_continues_from_the_last_generation_when_nothing_is_stored():
    items = [cp.advance_item("s", "t1", "c", expected_generation=0),
             cp.advance_item("s", "t2", "c", expected_previous="b"), cp.advance_item("s", "t3", "c")]
    decisions = cp.decide_batch([None, rec("b", 4), None], items, last_generations=[5, 9, 0])
    assert [(action, record["generation"]) for action, record, _c in decisions] == [
        ("advance", 6), ("advance", 5), ("advance", 1)]
    assert [record["generation"] for _a, record, _c in cp.decide_batch([None], items[:1])] == [1]
    with pytest.raises(cp.ConflictError):  # 0 still means that nothing is stored, whatever the history holds
        cp.decide_batch([rec("b", 4)], items[:1], last_generations=[0])


def test_table_names_are_validated():
    for bad in ("x; drop table y", "1abc", "a.b.c", ""):
        with pytest.raises(cp.CheckpointError):
            cp.check_table_name(bad)
    assert cp.check_table_name("backup.cbt_points") == "backup.cbt_points"


@pytest.fixture
def store(tmp_path):
    s = cp.SqliteStore(str(tmp_path / "sub" / "cp.sqlite"))
    yield s
    s.close()


def test_sqlite_advance_history_and_delete(store):
    changed, record, previous = store.advance("vm:1:2000", "/t", "52 a1/1", bytes_=100, metadata={"snap": "s1"})
    assert changed and previous is None and record["generation"] == 1 and record["previous_change_id"] is None
    changed, record, previous = store.advance("vm:1:2000", "/t", "52 a1/2", expected_previous="52 a1/1", bytes_=7)
    assert changed and record["generation"] == 2 and previous["change_id"] == "52 a1/1"
    assert store.get("vm:1:2000", "/t")["change_id"] == "52 a1/2"
    assert store.get("vm:1:2000", "/other") is None
    # idempotent re-run
    assert store.advance("vm:1:2000", "/t", "52 a1/2", expected_previous="52 a1/1")[0] is False
    with pytest.raises(cp.ConflictError):
        store.advance("vm:1:2000", "/t", "52 a1/3", expected_previous="52 a1/1")
    history = store.history("vm:1:2000", "/t")
    assert [h["change_id"] for h in history] == ["52 a1/2", "52 a1/1"]
    assert history[1]["metadata"] == {"snap": "s1"} and history[0]["bytes"] == 7
    with pytest.raises(cp.ConflictError):
        store.delete("vm:1:2000", "/t", expected_generation=1)
    changed, previous = store.delete("vm:1:2000", "/t", expected_generation=2)
    assert changed and previous["generation"] == 2 and store.get("vm:1:2000", "/t") is None
    assert store.history("vm:1:2000", "/t", limit=1)[0]["action"] == "delete"
    assert store.delete("vm:1:2000", "/t") == (False, None)
    # after a delete the next checkpoint continues from the highest generation of the key's history
    assert store.advance("vm:1:2000", "/t", "52 a1/9", expected_generation=0)[1]["generation"] == 3


def test_sqlite_check_mode_writes_nothing(store, tmp_path):
    changed, record, _prev = store.advance("s", "t", "c1", check_mode=True)
    assert changed and record["change_id"] == "c1" and store.get("s", "t") is None
    store.advance("s", "t", "c1")
    assert store.delete("s", "t", check_mode=True)[0] is True and store.get("s", "t") is not None
    missing = cp.SqliteStore(str(tmp_path / "nope.sqlite"), create=False)
    assert missing.get("s", "t") is None and missing.list() == []
    assert missing.advance("s", "t", "c", check_mode=True)[0] is True
    assert not os.path.exists(tmp_path / "nope.sqlite")


def test_sqlite_list_filters(store):
    store.advance("a", "t1", "x")
    store.advance("a", "t2", "y")
    store.advance("b", "t1", "z")
    assert [(r["source_id"], r["target"]) for r in store.list()] == [("a", "t1"), ("a", "t2"), ("b", "t1")]
    assert [r["change_id"] for r in store.list(source_id="a")] == ["x", "y"]
    assert [r["change_id"] for r in store.list(target="t1")] == ["x", "z"]


def test_sqlite_concurrent_advances_only_one_wins(tmp_path):
    path = str(tmp_path / "cp.sqlite")
    first = cp.SqliteStore(path)
    first.advance("s", "t", "base")
    first.close()
    outcome = []
    barrier = threading.Barrier(8)

    def contender(n):
        s = cp.SqliteStore(path)
        barrier.wait()
        try:
            s.advance("s", "t", "next-%d" % n, expected_previous="base")
            outcome.append(("won", n))
        except cp.ConflictError:
            outcome.append(("lost", n))
        finally:
            s.close()

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for o in outcome if o[0] == "won") == 1, outcome
    s = cp.SqliteStore(path)
    assert s.get("s", "t")["generation"] == 2 and len(s.history("s", "t", limit=0)) == 2
    s.close()


def test_sqlite_unreadable_file_is_explained(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(cp.CheckpointError) as err:
        cp.SqliteStore(str(path))
    assert str(path) in str(err.value)
    assert isinstance(err.value.__context__, sqlite3.Error)
    # read-only and check-mode opens do not create the schema, and still explain the bad file
    reader = cp.SqliteStore(str(path), create=False)
    for call in (lambda: reader.get("s", "t"), reader.list,
                 lambda: reader.advance("s", "t", "c", check_mode=True)):
        with pytest.raises(cp.CheckpointError) as err:
            call()
        assert str(path) in str(err.value) and "reading" in str(err.value)


def test_open_store_dispatch_and_errors(tmp_path):
    s = cp.open_store({"backend": "sqlite", "sqlite_path": str(tmp_path / "x.sqlite"), "table": "cps"})
    assert s.describe().startswith("sqlite:") and s.table == "cps"
    s.close()
    with pytest.raises(cp.CheckpointError):
        cp.open_store({"backend": "sqlite", "sqlite_path": str(tmp_path / "y.sqlite"), "table": "a.b"})
    with pytest.raises(cp.CheckpointError) as err:
        cp.open_store({"backend": "postgresql", "postgresql_dsn": None})
    assert "postgresql_dsn" in str(err.value)
    with pytest.raises(cp.CheckpointError) as err:
        cp.open_store({"backend": "configmap"})
    assert "configmap_name" in str(err.value)


def test_sqlite_batch_advance_is_all_or_none(store):
    checkpoint_scenarios.batch_all_or_none(store)


def test_sqlite_generation_continues_after_delete(store):
    checkpoint_scenarios.generation_after_delete(store)


def test_sqlite_batch_advances_race(tmp_path):
    path = str(tmp_path / "race.sqlite")
    checkpoint_scenarios.batch_race(lambda: cp.SqliteStore(path))


def test_sqlite_batch_check_mode_without_a_store(tmp_path):
    missing = cp.SqliteStore(str(tmp_path / "nope.sqlite"), create=False)
    outcome = missing.advance_many([checkpoint_scenarios.item("a", "1"), checkpoint_scenarios.item("b", "1")],
                                   check_mode=True)
    assert [(changed, rec["generation"]) for changed, rec, _p in outcome] == [(True, 1), (True, 1)]
    with pytest.raises(cp.ConflictError):
        missing.advance_many([checkpoint_scenarios.item("a", "1", expected_previous="0")], check_mode=True)
    assert not os.path.exists(tmp_path / "nope.sqlite")


def test_sqlite_table_names_are_case_insensitive(tmp_path):
    path = str(tmp_path / "cp.sqlite")
    store = cp.SqliteStore(path, table="ckpt")
    store.advance("s", "t", "c1")
    store.close()
    for create in (True, False):  # a run, and check mode / info
        other = cp.SqliteStore(path, table="CKPT", create=create)
        try:
            assert other.get("s", "t")["change_id"] == "c1"
            assert other.advance("s", "t", "c2", expected_previous="c1", check_mode=True)[0]
            assert other.delete("s", "t", check_mode=True) == (True, other.get("s", "t"))
        finally:
            other.close()


def test_sqlite_check_mode_does_not_wait_for_a_writer(tmp_path):
    path = str(tmp_path / "cp.sqlite")
    store = cp.SqliteStore(path, timeout=0.5)
    store.advance("s", "t", "c1")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another pipeline holds the write lock
    try:
        changed, record, previous = store.advance("s", "t", "c2", expected_previous="c1", check_mode=True)
        assert changed and record["generation"] == 2 and previous["change_id"] == "c1"
        assert store.delete("s", "t", check_mode=True)[0]
        with pytest.raises(cp.CheckpointError) as err:
            store.advance("s", "t", "c2", expected_previous="c1")
        assert "write lock" in str(err.value) and "run again" in str(err.value)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()


def test_sqlite_keyword_table_name_is_explained_and_leaves_no_file(tmp_path):
    path = str(tmp_path / "cp.sqlite")
    with pytest.raises(cp.CheckpointError) as err:
        cp.SqliteStore(path, table="order")
    assert "SQL keyword" in str(err.value) and "table option" in str(err.value)
    assert not os.path.exists(path)


def test_configmap_history_limit_and_foreign_entries_are_refused():
    import json
    from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint_configmap as cm
    for limit in (0, -5):
        with pytest.raises(cp.CheckpointError) as err:
            cm.ConfigMapStore({}, name="cp", namespace="ns", history_limit=limit, api=object())
        assert "history_limit must be at least 1" in str(err.value) and str(limit) in str(err.value)
    data = {cm.data_key("a", "b"): json.dumps({"source_id": "x", "target": "b", "current": None, "history": []})}
    with pytest.raises(cp.CheckpointError) as err:
        cm.ConfigMapStore._entry(data, "a", "b")
    assert "belongs to source 'x'" in str(err.value)
    assert cm.ConfigMapStore._entry(data, "x", "y")["current"] is None
