# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scenarios every checkpoint backend must pass; run against SQLite here and against a real
PostgreSQL server and kube-apiserver by the integration tests."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint as cp


def item(source_id, change_id, **kwargs):
    return cp.advance_item(source_id, "replica", change_id, kwargs.get("bytes"), kwargs.get("metadata"),
                           kwargs.get("expected_previous"), kwargs.get("expected_generation"))


def batch_all_or_none(store):
    """A batch advances every record or none; a re-run changes nothing; check mode writes nothing."""
    first = [item("vm:disk-2000", "a/1", expected_generation=0, bytes=10, metadata={"round": 1}),
             item("vm:disk-2001", "b/1", expected_generation=0, bytes=20)]
    assert [(changed, rec["generation"], prev) for changed, rec, prev in store.advance_many(first)] == [
        (True, 1, None), (True, 1, None)]
    assert [changed for changed, _r, _p in store.advance_many(first)] == [False, False]

    # disk-2001 was advanced by another pipeline meanwhile: neither disk moves, both conflicts are named
    store.advance("vm:disk-2001", "replica", "b/other", expected_previous="b/1")
    second = [item("vm:disk-2000", "a/2", expected_previous="a/1"),
              item("vm:disk-2001", "b/2", expected_previous="b/1"),
              item("vm:disk-2002", "c/1", expected_generation=3)]
    with pytest.raises(cp.ConflictError) as err:
        store.advance_many(second)
    assert "2 of 3 checkpoint records conflict, so none was advanced" in str(err.value)
    assert "b/other" in str(err.value) and "expected generation 3" in str(err.value)
    assert [(c["source_id"], (c["current"] or {}).get("change_id")) for c in err.value.conflicts] == [
        ("vm:disk-2001", "b/other"), ("vm:disk-2002", None)]
    assert store.get("vm:disk-2000", "replica")["change_id"] == "a/1"
    assert store.get("vm:disk-2002", "replica") is None
    assert len(store.history("vm:disk-2000", "replica", limit=0)) == 1

    third = [item("vm:disk-2000", "a/2", expected_previous="a/1"),
             item("vm:disk-2001", "b/2", expected_previous="b/other")]
    outcome = store.advance_many(third, check_mode=True)
    assert [(changed, rec["change_id"]) for changed, rec, _p in outcome] == [(True, "a/2"), (True, "b/2")]
    assert store.get("vm:disk-2000", "replica")["change_id"] == "a/1"

    # one record already there (a re-run after a partly applied older pipeline), one to advance
    store.advance("vm:disk-2000", "replica", "a/2", expected_previous="a/1")
    outcome = store.advance_many(third)
    assert [(changed, rec["change_id"], prev["change_id"]) for changed, rec, prev in outcome] == [
        (False, "a/2", "a/2"), (True, "b/2", "b/other")]
    assert store.get("vm:disk-2001", "replica")["generation"] == 3

    with pytest.raises(cp.CheckpointError) as err:
        store.advance_many([item("x", "1"), item("x", "2")])
    assert "given twice" in str(err.value)


def generation_after_delete(store):
    """Generations of a key keep increasing across deletes: pipeline P1 read generation 1, the
    checkpoint was deleted and pipeline P2 created a new one; P1's stale ``expected_generation: 1``
    must not match it. ``expected_generation: 0`` still means that nothing is stored."""
    source, target = "vm:disk-3000", "replica"
    assert store.advance(source, target, "A", expected_generation=0)[1]["generation"] == 1
    assert store.delete(source, target, expected_generation=1)[0] is True
    changed, record, _prev = store.advance(source, target, "C", expected_generation=0, check_mode=True)
    assert changed and record["generation"] == 2 and store.get(source, target) is None
    changed, record, previous = store.advance(source, target, "C", expected_generation=0)  # P2
    assert changed and previous is None and record["generation"] == 2 and record["previous_change_id"] is None

    with pytest.raises(cp.ConflictError) as err:  # P1, still at generation 1
        store.advance(source, target, "B", expected_generation=1)
    assert "expected generation 1" in str(err.value) and err.value.current["change_id"] == "C"
    with pytest.raises(cp.ConflictError):
        store.advance(source, target, "B", expected_generation=0)
    with pytest.raises(cp.ConflictError):
        store.delete(source, target, expected_generation=1)
    assert (store.get(source, target)["change_id"], store.get(source, target)["generation"]) == ("C", 2)

    # a batch continues the same way; a key that never had a checkpoint starts at 1
    assert store.delete(source, target, expected_generation=2)[0] is True
    outcome = store.advance_many([item(source, "D", expected_generation=0),
                                  item("vm:disk-3001", "E", expected_generation=0)])
    assert [(changed, rec["generation"]) for changed, rec, _p in outcome] == [(True, 3), (True, 1)]
    with pytest.raises(cp.ConflictError):
        store.advance_many([item(source, "F", expected_generation=2), item("vm:disk-3001", "F", expected_generation=1)])
    assert store.get("vm:disk-3001", "replica")["change_id"] == "E"

    # without expectations only a first checkpoint may be created, and after a delete it continues too
    assert store.delete(source, target, expected_previous="D")[0] is True
    assert store.advance(source, target, "G")[1]["generation"] == 4
    assert [(h["action"], h["change_id"], h["generation"]) for h in store.history(source, target, limit=0)] == [
        ("advance", "G", 4), ("delete", "D", 3), ("advance", "D", 3), ("delete", "C", 2), ("advance", "C", 2),
        ("delete", "A", 1), ("advance", "A", 1)]


def contend(make_store, contenders, attempt):
    """``attempt(store, i)`` in ``contenders`` threads released together, each with its own store.
    Returns each thread's ``i`` when it went through, ``"lost"`` on a ConflictError; none may hang."""
    outcome = []
    barrier = threading.Barrier(contenders)

    def contender(i):
        s = make_store()
        try:
            barrier.wait()
            attempt(s, i)
            outcome.append(i)
        except cp.ConflictError:
            outcome.append("lost")
        finally:
            s.close()

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [t for t in threads if t.is_alive()], "an advance hung (deadlock?)"
    return outcome


def batch_race(make_store, contenders=6):
    """Contenders advance the same two checkpoints from the same point, half of them listing the
    records in the other order: exactly one batch wins, whole, and nobody deadlocks."""
    store = make_store()
    store.advance_many([item("r:a", "base-a"), item("r:b", "base-b")])
    store.close()

    def attempt(s, i):
        records = [item("r:a", "a-%d" % i, expected_previous="base-a"),
                   item("r:b", "b-%d" % i, expected_previous="base-b")]
        s.advance_many(records if i % 2 else records[::-1])

    outcome = contend(make_store, contenders, attempt)
    winners = [o for o in outcome if o != "lost"]
    assert len(winners) == 1 and len(outcome) == contenders, outcome
    check = make_store()
    try:
        assert check.get("r:a", "replica")["change_id"] == "a-%d" % winners[0]
        assert check.get("r:b", "replica")["change_id"] == "b-%d" % winners[0]
    finally:
        check.close()
