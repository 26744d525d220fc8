# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cbt_checkpoint / cbt_checkpoint_info against SQLite and a real PostgreSQL server: compare-and-set
conflicts, concurrent advancers (only one wins), history, check mode, no_log of credentials."""

import contextlib
import subprocess
import sys
import threading
import uuid

import pytest

from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint as cp
from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_postgres import PostgresStore
from ansible_collections.cbt.toolkit.tests.unit.plugins.module_utils import checkpoint_scenarios
from testbed.ansible_run import collections_root


def backend_args(kind, tmp_path, postgres=None, table=None):
    if kind == "sqlite":
        return {"backend": "sqlite", "sqlite_path": str(tmp_path / "checkpoints.sqlite")}
    args = {"backend": "postgresql", "postgresql_dsn": postgres.dsn_no_password,
            "postgresql_password": postgres.password}
    if table:
        args["table"] = table
    return args


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request, tmp_path):
    if request.param == "sqlite":
        return backend_args("sqlite", tmp_path)
    pg = request.getfixturevalue("postgres")
    return backend_args("postgresql", tmp_path, pg, table="cp_%s" % uuid.uuid4().hex[:8])


def test_module_cas_conflict_history_and_check_mode(store_args, run_module):
    key = {"source_id": "vmware:4211-%s:disk-2000" % uuid.uuid4().hex[:6], "target": "/dev/vg0/replica"}
    args = dict(store_args, **key)

    res, run = run_module("cbt_checkpoint_info", args)
    assert res.get("checkpoint") is None and res["checkpoints"] == [], run

    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/1", expected_generation=0, bytes=1024,
                                                 metadata={"snapshot": "s1"}), check=True, diff=True)
    assert res.get("changed") is True and res["checkpoint"]["generation"] == 1, run
    res, _run = run_module("cbt_checkpoint_info", args)
    assert res["checkpoint"] is None  # check mode wrote nothing

    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/1", expected_generation=0, bytes=1024,
                                                 metadata={"snapshot": "s1"}))
    assert res.get("changed") is True and res["checkpoint"]["metadata"] == {"snapshot": "s1"}, run
    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/1", expected_generation=0))
    assert res.get("changed") is False and not res.get("failed"), run  # re-run after success

    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/2", expected_previous="52 de ad/1"))
    assert res.get("changed") is True and res["checkpoint"]["generation"] == 2, run

    # a second pipeline that also started from /1 loses, and is told what is stored
    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/3", expected_previous="52 de ad/1"))
    assert res.get("failed") and res.get("conflict") is True, run
    assert "52 de ad/2" in res["msg"] and res["current"]["generation"] == 2
    res, run = run_module("cbt_checkpoint", dict(args, change_id="52 de ad/3", expected_previous="52 de ad/1"),
                          check=True)
    assert res.get("failed") and res.get("conflict"), run  # the check runs in check mode too

    res, run = run_module("cbt_checkpoint_info", dict(args, history=True))
    assert res["checkpoint"]["change_id"] == "52 de ad/2", run
    assert [(h["action"], h["change_id"], h["previous_change_id"]) for h in res["history"]] == [
        ("advance", "52 de ad/2", "52 de ad/1"), ("advance", "52 de ad/1", None)]
    if store_args["backend"] == "postgresql":
        text = run.stdout + run.stderr
        assert store_args["postgresql_password"] not in text


def _contend(make_store, key, n):
    def attempt(store, i):
        store.advance(key[0], key[1], "next-%d" % i, expected_previous="base")

    return ["lost" if o == "lost" else "won" for o in checkpoint_scenarios.contend(make_store, n, attempt)]


def test_postgres_concurrent_advances_only_one_wins(postgres):
    table = "cp_race_%s" % uuid.uuid4().hex[:8]

    def make():
        return PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table)

    # schema creation itself races here too (8 connections create the tables at once)
    stores = []
    errors = []
    barrier = threading.Barrier(6)

    def create():
        try:
            barrier.wait()
            stores.append(make())
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    threads = [threading.Thread(target=create) for _n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in stores:
        s.close()
    first = make()
    first.advance("pvc:prod/db", "backup", "base")
    first.close()
    outcome = _contend(make, ("pvc:prod/db", "backup"), 8)
    assert outcome.count("won") == 1 and outcome.count("lost") == 7, outcome
    check = make()
    assert check.get("pvc:prod/db", "backup")["generation"] == 2
    assert len(check.history("pvc:prod/db", "backup", limit=0)) == 2
    check.close()


def test_postgres_first_inserts_race(postgres):
    table = "cp_first_%s" % uuid.uuid4().hex[:8]

    def make():
        return PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table)

    make().close()

    def first(store, i):
        store.advance("s", "t", "c-%d" % i, expected_generation=0)

    outcome = ["lost" if o == "lost" else "won" for o in checkpoint_scenarios.contend(make, 6, first)]
    assert outcome.count("won") == 1, outcome


def test_sqlite_concurrent_processes_only_one_wins(tmp_path):
    """Separate processes (not threads) advancing the same SQLite checkpoint."""
    db = str(tmp_path / "cp.sqlite")
    s = cp.SqliteStore(db)
    s.advance("s", "t", "base")
    s.close()
    code = ("import sys; sys.path[:0] = [%r]\n"
            "from ansible_collections.cbt.toolkit.plugins.module_utils import _checkpoint as cp\n"
            "s = cp.SqliteStore(%r)\n"
            "try:\n"
            "    s.advance('s', 't', sys.argv[1], expected_previous='base'); print('won')\n"
            "except cp.ConflictError:\n"
            "    print('lost')\n") % (str(collections_root()), db)
    procs = [subprocess.Popen([sys.executable, "-c", code, "n%d" % i], stdout=subprocess.PIPE,
                              text=True) for i in range(6)]
    outcome = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outcome
    assert outcome.count("won") == 1 and outcome.count("lost") == 5, outcome


def test_postgres_wrong_password_is_explained(postgres, run_module):
    res, run = run_module("cbt_checkpoint_info", {"backend": "postgresql", "postgresql_dsn": postgres.dsn_no_password,
                                                  "postgresql_password": "wrong-password"})
    assert res.get("failed") and "cannot connect" in res["msg"], run
    assert "wrong-password" not in run.stdout


@pytest.fixture
def pg_store(postgres):
    """A PostgreSQL store on a table of its own."""
    store = PostgresStore(postgres.dsn_no_password, password=postgres.password, table="cp_%s" % uuid.uuid4().hex[:8])
    yield store
    store.close()


def test_postgres_batch_advance_is_all_or_none(pg_store):
    checkpoint_scenarios.batch_all_or_none(pg_store)


def test_postgres_generation_continues_after_delete(pg_store):
    checkpoint_scenarios.generation_after_delete(pg_store)


def test_postgres_generation_is_not_reused_by_a_checkpoint_created_and_deleted_meanwhile(postgres):
    """No row is locked while a first checkpoint is inserted: another connection creates and deletes
    a checkpoint of the key between the history read and the insert, and the insert decides again."""
    table = "cp_gap_%s" % uuid.uuid4().hex[:8]

    def make():
        return PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table)

    class Interleaved(PostgresStore):
        reads = 0

        def _last_generation(self, cur, source_id, target):
            found = PostgresStore._last_generation(self, cur, source_id, target)
            self.reads += 1
            if self.reads == 1:
                other = make()
                try:
                    assert other.advance(source_id, target, "other", expected_generation=0)[1]["generation"] == 2
                    assert other.delete(source_id, target, expected_previous="other")[0] is True
                finally:
                    other.close()
            return found

    first = make()
    first.advance("s", "t", "A")
    first.delete("s", "t", expected_previous="A")
    first.close()
    store = Interleaved(postgres.dsn_no_password, password=postgres.password, table=table)
    try:
        changed, record, previous = store.advance("s", "t", "C", expected_generation=0)
        assert changed and previous is None and record["generation"] == 3, record
        assert store.get("s", "t")["generation"] == 3
        assert [(h["action"], h["generation"]) for h in store.history("s", "t", limit=0)] == [
            ("advance", 3), ("delete", 2), ("advance", 2), ("delete", 1), ("advance", 1)]
    finally:
        store.close()


def test_module_generation_continues_after_absent(store_args, run_module):
    args = dict(store_args, source_id="pvc:prod/db-%s" % uuid.uuid4().hex[:6], target="dr/db")
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-1", expected_generation=0))
    assert res.get("changed") is True and res["checkpoint"]["generation"] == 1, run
    res, run = run_module("cbt_checkpoint", dict(args, state="absent", expected_generation=1))
    assert res.get("changed") is True and res["checkpoint"] is None, run
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-3", expected_generation=0))
    assert res.get("changed") is True and res["checkpoint"]["generation"] == 2, run
    # a pipeline that read generation 1 before the delete
    res, run = run_module("cbt_checkpoint", dict(args, change_id="snap-2", expected_generation=1))
    assert res.get("failed") and res.get("conflict") and res["current"]["change_id"] == "snap-3", run


def test_postgres_batch_advances_race_without_deadlock(postgres):
    """Rows are locked in key order, so batches listing the same records in opposite orders queue
    instead of deadlocking, and exactly one of them wins."""
    table = "cp_brace_%s" % uuid.uuid4().hex[:8]
    PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table).close()
    checkpoint_scenarios.batch_race(
        lambda: PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table))


def test_module_records_advance_together(store_args, run_module):
    vm = uuid.uuid4().hex[:6]
    records = [{"source_id": "vmware:%s:disk-%d" % (vm, key), "target": "/dev/vg0/disk-%d" % key,
                "change_id": "52 %d/1" % key, "expected_generation": 0, "bytes": key} for key in (2000, 2001)]
    res, run = run_module("cbt_checkpoint", dict(store_args, records=records), diff=True)
    assert res.get("changed") is True and [r["checkpoint"]["generation"] for r in res["records"]] == [1, 1], run
    res, run = run_module("cbt_checkpoint", dict(store_args, records=records))
    assert res.get("changed") is False and not res.get("failed"), run
    advanced = [dict(r, change_id="52 %d/2" % r["bytes"], expected_generation=1) for r in records]
    advanced[1]["expected_generation"] = 0  # a stale start point for the second disk
    res, run = run_module("cbt_checkpoint", dict(store_args, records=advanced))
    assert res.get("failed") and res.get("conflict") and len(res["conflicts"]) == 1, run
    res, run = run_module("cbt_checkpoint_info", dict(store_args, source_id=records[0]["source_id"],
                                                      target=records[0]["target"]))
    assert res["checkpoint"]["change_id"] == "52 2000/1", run  # the first disk did not move either


@contextlib.contextmanager
def _role_on_own_table(postgres, prefix, privileges, prepare=None):
    """A checkpoint table created by its owner (``prepare(store)`` runs as the owner) and a new login role
    with only ``privileges`` on it and its history. Yields ``(admin connection, role, dsn, password,
    table)``; the role and its grants are dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    table = "cp_%s_%s" % (prefix, suffix)
    role = "cbt_%s_%s" % (prefix, suffix)
    role_password = "%s-secret-%s" % (prefix, suffix)
    owner = PostgresStore(postgres.dsn_no_password, password=postgres.password, table=table)
    if prepare is not None:
        prepare(owner)
    owner.close()
    import psycopg  # pylint: disable=import-outside-toplevel

    admin = psycopg.connect("host=127.0.0.1 port=%d dbname=%s user=postgres" % (postgres.port, postgres.database),
                            password=postgres.password, autocommit=True)
    try:
        admin.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, role_password))
        for name in (table, table + "_history"):
            admin.execute("GRANT %s ON %s TO %s" % (privileges, name, role))
        dsn = "host=127.0.0.1 port=%d dbname=%s user=%s" % (postgres.port, postgres.database, role)
        yield admin, role, dsn, role_password, table
    finally:
        admin.execute("DROP OWNED BY %s" % role)
        admin.execute("DROP ROLE %s" % role)
        admin.close()


def test_postgres_role_with_only_table_grants_can_advance_and_delete(postgres):
    """A least-privilege role: the tables were created by their owner, the role has SELECT/INSERT/UPDATE/
    DELETE on them (and USAGE on the history sequence) but no CREATE on the schema. Opening the store must
    not run DDL, so advancing and deleting work."""
    with _role_on_own_table(postgres, "dml", "SELECT, INSERT, UPDATE, DELETE") as (admin, role, dsn, password, table):
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute("GRANT USAGE ON SEQUENCE %s_history_id_seq TO %s" % (table, role))
        can_create = admin.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)).fetchone()[0]
        assert can_create is False
        store = PostgresStore(dsn, password=password, table=table)
        try:
            changed, record, _previous = store.advance("vm:1:disk-2000", "/dev/vg0/r", "52 aa/1",
                                                       expected_generation=0)
            assert changed and record["generation"] == 1
            changed, record, _previous = store.advance("vm:1:disk-2000", "/dev/vg0/r", "52 aa/2",
                                                       expected_previous="52 aa/1")
            assert changed and record["generation"] == 2
            assert store.delete("vm:1:disk-2000", "/dev/vg0/r", expected_previous="52 aa/2")[0] is True
            assert store.get("vm:1:disk-2000", "/dev/vg0/r") is None
        finally:
            store.close()


def test_postgres_read_only_role_can_preview_and_keyword_table_is_explained(postgres):
    """Check mode only reads: a role with nothing but SELECT previews an advance and a delete (no row lock,
    which needs UPDATE rights). A table named like an SQL keyword fails with what to do."""
    def first_checkpoint(owner):
        owner.advance("vm:1:disk-2000", "/dev/vg0/r", "52 aa/1")

    with _role_on_own_table(postgres, "ro", "SELECT", first_checkpoint) as (_admin, _role, dsn, password, table):
        store = PostgresStore(dsn, password=password, table=table, create=False)
        try:
            changed, record, previous = store.advance("vm:1:disk-2000", "/dev/vg0/r", "52 aa/2",
                                                      expected_previous="52 aa/1", check_mode=True)
            assert changed and record["generation"] == 2 and previous["change_id"] == "52 aa/1"
            assert store.delete("vm:1:disk-2000", "/dev/vg0/r", check_mode=True)[0] is True
            with pytest.raises(cp.CheckpointError) as err:  # a real advance still needs the write rights
                store.advance("vm:1:disk-2000", "/dev/vg0/r", "52 aa/2", expected_previous="52 aa/1")
            assert "permission denied" in str(err.value)
        finally:
            store.close()
    with pytest.raises(cp.CheckpointError) as err:
        PostgresStore(postgres.dsn_no_password, password=postgres.password, table="order")
    assert "SQL keyword" in str(err.value), err.value


def test_postgres_unparsable_dsn_does_not_show_its_password(postgres, run_module):
    for dsn in ("postgresql://cbt:S3cr3t%%zz@127.0.0.1:%d/%s" % (postgres.port, postgres.database),
                "host=127.0.0.1 port=%d password=S3cr3t horse" % postgres.port):
        res, run = run_module("cbt_checkpoint_info", {"backend": "postgresql", "postgresql_dsn": dsn})
        assert res.get("failed") and "cannot be parsed" in res["msg"], run
        assert "S3cr3t" not in run.stdout and "S3cr3t" not in run.stderr
