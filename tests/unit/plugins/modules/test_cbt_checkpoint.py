# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of cbt_checkpoint and cbt_checkpoint_info with the SQLite backend."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint_postgres as pg
from ansible_collections.cbt.toolkit.plugins.modules import cbt_checkpoint, cbt_checkpoint_info


class Exit(Exception):
    pass


class Fail(Exception):
    pass


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    def exit_json(self, **kw):
        raise Exit(kw)

    def fail_json(self, **kw):
        raise Fail(kw)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run(module, args, expect=Exit):
    with patch_module_args(args):
        with pytest.raises(expect) as err:
            module.main()
    return err.value.args[0]


def test_advance_rerun_conflict_info_history(tmp_path):
    db = str(tmp_path / "cp.sqlite")
    base = {"sqlite_path": db, "source_id": "vmware:4211-aa:disk-2000", "target": "/dev/vg/x"}
    res = run(cbt_checkpoint, dict(base, change_id="52 1/1", bytes=10, metadata={"snap": "a"}, _ansible_diff=True))
    assert res["changed"] and res["checkpoint"]["generation"] == 1 and res["previous"] is None
    assert res["diff"]["after"]["change_id"] == "52 1/1" and res["diff"]["before"] == {}
    res = run(cbt_checkpoint, dict(base, change_id="52 1/1"))
    assert res["changed"] is False
    res = run(cbt_checkpoint, dict(base, change_id="52 1/2"), Fail)
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
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t"}, Fail)
    assert "change_id" in res["msg"]
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "backend": "postgresql"}, Fail)
    assert "postgresql_dsn" in res["msg"]
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "expected_generation": -1,
                               "sqlite_path": str(tmp_path / "x")}, Fail)
    assert "expected_generation" in res["msg"]
    res = run(cbt_checkpoint_info, {"history": True, "sqlite_path": str(tmp_path / "x")}, Fail)
    assert "needs source_id and target" in res["msg"]


def test_missing_psycopg_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(pg, "psycopg", None)
    res = run(cbt_checkpoint, {"source_id": "s", "target": "t", "change_id": "c", "backend": "postgresql",
                               "postgresql_dsn": "host=127.0.0.1 password=hunter2"}, Fail)
    assert "psycopg" in res["msg"] and "hunter2" not in str(res)
