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


def test_records_advance_together(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    records = [{"source_id": "vmware:4211-aa:disk-2000", "target": "/t/0", "change_id": "52 1/1",
                "expected_generation": 0, "bytes": 5, "metadata": {"round": 1}},
               {"source_id": "vmware:4211-aa:disk-2001", "target": "/t/1", "change_id": "52 2/1",
                "expected_generation": 0}]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": records, "_ansible_check_mode": True})
    assert res["changed"] and [r["checkpoint"]["generation"] for r in res["records"]] == [1, 1]
    assert not os.path.exists(db)
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": records, "_ansible_diff": True})
    assert res["changed"] and [r["changed"] for r in res["records"]] == [True, True]
    assert res["records"][0]["checkpoint"]["metadata"] == {"round": 1} and res["records"][0]["previous"] is None
    assert res["diff"]["before"]["records[1]: vmware:4211-aa:disk-2001 -> /t/1"] == {}
    assert res["diff"]["after"]["records[1]: vmware:4211-aa:disk-2001 -> /t/1"]["change_id"] == "52 2/1"
    assert "checkpoint" not in res
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": records})
    assert res["changed"] is False and [r["changed"] for r in res["records"]] == [False, False]

    stale = [dict(records[0], change_id="52 1/2", expected_generation=1),
             dict(records[1], change_id="52 2/2", expected_generation=0)]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": stale}, FailJson)
    assert res["conflict"] and "1 of 2 checkpoint records conflict, so none was advanced" in res["msg"]
    assert [(c["source_id"], c["current"]["change_id"]) for c in res["conflicts"]] == [
        ("vmware:4211-aa:disk-2001", "52 2/1")]
    res = run(cbt_checkpoint_info, {"sqlite_path": db})
    assert [c["change_id"] for c in res["checkpoints"]] == ["52 1/1", "52 2/1"]


def test_records_argument_errors(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    one = {"source_id": "s", "target": "t", "change_id": "c"}
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [one], "source_id": "s", "target": "t"}, FailJson)
    assert "mutually exclusive" in res["msg"] and "records" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [one], "state": "absent"}, FailJson)
    assert "one at a time" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [one, dict(one, change_id="d")]}, FailJson)
    assert "given twice" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [one, dict(one, target="u", expected_generation=-2)]},
              FailJson)
    assert "records[1].expected_generation must be 0" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [dict(one, change_id="")]}, FailJson)
    assert "records[0].change_id" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [{"source_id": "s", "change_id": "c"}]}, FailJson)
    assert "target" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": []}, FailJson)
    assert "records is empty" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "source_id": "s", "change_id": "c"}, FailJson)
    assert "target" in res["msg"]
    assert not os.path.exists(db)  # nothing was opened or created for bad input


def test_postgresql_dsn_secrets_stay_out_of_messages(monkeypatch):
    """The parser's and the server's messages may quote the password; neither reaches the result. (The
    integration tests run the same with the real psycopg and PostgreSQL.)"""
    class FakeError(Exception):
        pass

    def parse(dsn):
        if "%zz" in dsn or "horse" in dsn:
            raise FakeError("invalid token in %s" % dsn)
        return dict(item.split("=", 1) for item in dsn.split())

    def refuse(dsn, **kwargs):
        raise FakeError("connection failed for password=%s and %s" % (parse(dsn)["password"], kwargs.get("password")))

    monkeypatch.setattr(pg, "psycopg", type("FakePsycopg", (), {"Error": FakeError, "connect": staticmethod(refuse)}))
    monkeypatch.setattr(pg, "_parse_dsn", parse)
    base = {"source_id": "s", "target": "t", "change_id": "c", "backend": "postgresql"}
    for dsn in ("postgresql://cbt:S3cr3t%zz@127.0.0.1/cbt", "host=127.0.0.1 password=S3cr3t horse"):
        res = run(cbt_checkpoint, dict(base, postgresql_dsn=dsn), FailJson)
        assert "cannot be parsed" in res["msg"] and "S3cr3t" not in str(res)
    res = run(cbt_checkpoint, dict(base, postgresql_dsn="host=127.0.0.1 password=S3cr3t",
                                   postgresql_password="0ther-pw"), FailJson)
    assert "cannot connect" in res["msg"] and "S3cr3t" not in str(res) and "0ther-pw" not in str(res)


def test_records_diff_keeps_records_with_alike_names_apart(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    records = [{"source_id": "pvc:ns/a -> b", "target": "c", "change_id": "snap-1"},
               {"source_id": "pvc:ns/a", "target": "b -> c", "change_id": "snap-2"}]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": records, "_ansible_diff": True})
    assert sorted(v["change_id"] for v in res["diff"]["after"].values()) == ["snap-1", "snap-2"]
    records[1].update(change_id="snap-3", expected_previous="snap-2")
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": records, "_ansible_diff": True})
    assert res["changed"] and res["diff"]["before"] != res["diff"]["after"]


def test_bad_keys_and_bytes_are_refused_before_the_store_is_opened(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    base = {"sqlite_path": db, "source_id": "s", "target": "t", "change_id": "c"}
    for args, needle in (({"source_id": ""}, "source_id is empty"), ({"target": "  "}, "target is empty"),
                         ({"source_id": "a\0b"}, "NUL"), ({"bytes": 2 ** 63}, "bytes must be between 0"),
                         ({"bytes": -5}, "got -5")):
        res = run(cbt_checkpoint, dict(base, **args), FailJson)
        assert needle in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [
        {"source_id": "s", "target": "t", "change_id": "c", "bytes": 2 ** 64}]}, FailJson)
    assert "records[0].bytes must be between 0" in res["msg"]
    res = run(cbt_checkpoint, {"sqlite_path": db, "records": [{"source_id": "s", "target": "", "change_id": "c"}]},
              FailJson)
    assert "records[0].target is empty" in res["msg"]
    assert not os.path.exists(db)
