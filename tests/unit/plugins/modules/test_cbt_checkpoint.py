# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of cbt_checkpoint and cbt_checkpoint_info with the SQLite backend."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint_postgres as pg
from ansible_collections.cbt.toolkit.plugins.modules import cbt_checkpoint, cbt_checkpoint_info
from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import ExitJson, FailJson, run_module


def run(module, args, expect=ExitJson):
    return run_module(module, args, expect=expect)


def test_advance_rerun_conflict_info_history(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    base = {"sqlite_path": db, "source_id": "vmware:4211-aa:disk-2000", "target": "/dev/vg/x"}
    res = run(cbt_checkpoint, dict(base, change_id="52 1/1", bytes=10, metadata={"snap": "a"}, _ansible_diff=True))
    assert res["changed"] and res["checkpoint"]["generation"] == 1 and res["previous"] is None
    assert res["diff"]["after"]["change_id"] == "52 1/1" and res["diff"]["before"] == {}
    res = run(cbt_checkpoint, dict(base, change_id="52 1/1"))
    assert res["changed"] is False
    res = run(cbt_checkpoint, dict(base, change_id="52 1/2"), FailJson)
    assert "pass expected_previous" in res["msg"] and res["conflict"] and res["current"]["change_id"] == "52 1/1"
    res = run(cbt_checkpoint, dict(base, change_id="52 1/2", expected_previous="52 1/1", _ansible_check_mode=True))
    assert res["changed"] and res["checkpoint"]["generation"] == 2
    res = run(cbt_checkpoint_info, dict(base, history=True))
    assert res["checkpoint"]["change_id"] == "52 1/1" and len(res["history"]) == 1
    res = run(cbt_checkpoint, dict(base, change_id="52 1/2", expected_previous="52 1/1"))
    assert res["changed"] and res["previous"]["change_id"] == "52 1/1"
    res = run(cbt_checkpoint_info, {"sqlite_path": db})
    assert [c["change_id"] for c in res["checkpoints"]] == ["52 1/2"] and "checkpoint" not in res
    res = run(cbt_checkpoint, dict(base, state="absent", expected_generation=2))
    assert res["changed"] and res["checkpoint"] is None
    res = run(cbt_checkpoint_info, dict(base, history=True, history_count=0))
    assert res["checkpoint"] is None and [h["action"] for h in res["history"]] == ["delete", "advance", "advance"]


def test_info_and_check_mode_never_create_the_store(tmp_path):
    db = str(tmp_path / "none.sqlite")
    res = run(cbt_checkpoint_info, {"sqlite_path": db, "source_id": "s", "target": "t"})
    assert res["checkpoint"] is None and not os.path.exists(db)
    res = run(cbt_checkpoint, {"sqlite_path": db, "source_id": "s", "target": "t", "change_id": "c",
                               "_ansible_check_mode": True})
    assert res["changed"] and not os.path.exists(db)


def test_argument_errors(tmp_path):
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t"}, FailJson)
    assert "change_id" in res["msg"]
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "backend": "postgresql"}, FailJson)
    assert "postgresql_dsn" in res["msg"]
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "expected_generation": -1,
                               "sqlite_path": str(tmp_path / "x")}, FailJson)
    assert "expected_generation" in res["msg"]
    res = run(cbt_checkpoint_info, {"history": True, "sqlite_path": str(tmp_path / "x")}, FailJson)
    assert "needs source_id and target" in res["msg"]


def test_missing_psycopg_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(pg, "psycopg", None)
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "backend": "postgresql",
                               "postgresql_dsn": "host=127.0.0.1 password=hunter2"}, FailJson)
    assert "psycopg" in res["msg"] and "hunter2" not in str(res)
