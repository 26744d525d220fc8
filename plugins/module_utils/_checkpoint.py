# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The change-point checkpoint store behind ``cbt_checkpoint`` and ``cbt_checkpoint_info``.

A checkpoint is the last verified change point (VMware changeId, CSI snapshot id or handle) that a
target holds for one source, keyed by ``(source_id, target)``. Advancing it is a compare-and-set
on the previous value, so two pipelines cannot both advance from the same point; every change is
appended to a history for audit. Generations of a key keep increasing across deletes: a checkpoint
created after a delete continues from the highest generation in the key's history, so an
``expected_generation`` read before the delete cannot match the new checkpoint.

Backends: SQLite (standard library, the default), PostgreSQL (psycopg 3 or psycopg2) and a
Kubernetes ConfigMap. This file holds the shared decision logic, the SQL backend core and SQLite.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os
import re
import sqlite3

TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}(\.[A-Za-z_][A-Za-z0-9_]{0,50})?$")


class CheckpointError(Exception):
    """A store problem the user can act on."""


class MissingLibrary(CheckpointError):
    """A backend's Python library is not installed."""

    def __init__(self, library, import_error):
        CheckpointError.__init__(self, "missing Python library %s" % library)
        self.library = library
        self.import_error = import_error


class ConflictError(CheckpointError):
    """The compare-and-set failed: the stored checkpoint is not the expected one.

    ``conflicts`` lists every failed record of a batch (``source_id``, ``target``, ``current``, ``msg``).
    """

    def __init__(self, message, current, conflicts=None):
        CheckpointError.__init__(self, message)
        self.current = current
        self.conflicts = conflicts or []


def now_iso():
    return datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_sqlite_path():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "cbt.toolkit", "checkpoints.sqlite")


def check_table_name(table):
    if not TABLE_RE.match(table or ""):
        raise CheckpointError("table %r is not a valid SQL identifier (letters, digits, underscores, optionally "
                              "schema.table)" % (table,))
    return table


def table_hint(table, error_text):
    """What to do when the database rejects a statement on ``table`` as a syntax error: the name is an SQL
    keyword (``order``, ``user``...), which the pattern of ``check_table_name`` lets through."""
    if "syntax error" not in error_text.lower():
        return ""
    return "; table %r cannot be used as a table name here (it is an SQL keyword): choose another name in the " \
           "table option, such as cbt_checkpoints" % table


def _describe(record):
    if record is None:
        return "no checkpoint"
    return "change id %r at generation %d (recorded %s)" % (record["change_id"], record["generation"],
                                                            record.get("updated_at"))


def decide_advance(current, source_id, target, change_id, expected_previous=None, expected_generation=None,
                   force=False):
    """Return ``"unchanged"`` or ``"advance"``; raise ``ConflictError`` when the CAS fails.

    * the stored change id already equals ``change_id``: unchanged (a re-run after success);
    * ``force``: advance whatever is stored;
    * ``expected_generation`` (0 = nothing stored yet) and/or ``expected_previous`` must match;
    * neither given: only a first checkpoint may be created.
    """
    key = "source %r, target %r" % (source_id, target)
    if current is not None and current["change_id"] == change_id:
        return "unchanged"
    if force:
        return "advance"
    if expected_generation is not None:
        have = current["generation"] if current is not None else 0
        if have != expected_generation:
            raise ConflictError("checkpoint conflict for %s: expected generation %d but the store has %s; another "
                                "pipeline advanced it. Read it with cbt.toolkit.cbt_checkpoint_info and sync from "
                                "the stored change point" % (key, expected_generation, _describe(current)), current)
    if expected_previous is not None:
        if current is None or current["change_id"] != expected_previous:
            raise ConflictError("checkpoint conflict for %s: expected previous change id %r but the store has %s; "
                                "another pipeline advanced it or the sync started from a stale change point. Read "
                                "it with cbt.toolkit.cbt_checkpoint_info and sync from the stored change point"
                                % (key, expected_previous, _describe(current)), current)
    if expected_generation is None and expected_previous is None and current is not None:
        raise ConflictError("a checkpoint already exists for %s (%s); pass expected_previous (the change id your "
                            "sync started from) or expected_generation to advance it" % (key, _describe(current)),
                            current)
    return "advance"


def check_delete(current, source_id, target, expected_previous=None, expected_generation=None):
    if current is None:
        return False
    if expected_generation is not None and current["generation"] != expected_generation:
        raise ConflictError("checkpoint conflict for source %r, target %r: expected generation %d but the store "
                            "has %s" % (source_id, target, expected_generation, _describe(current)), current)
    if expected_previous is not None and current["change_id"] != expected_previous:
        raise ConflictError("checkpoint conflict for source %r, target %r: expected change id %r but the store "
                            "has %s" % (source_id, target, expected_previous, _describe(current)), current)
    return True


def new_record(current, source_id, target, change_id, bytes_, metadata, last_generation=0):
    """The record that follows ``current``; with nothing stored it follows ``last_generation``, the
    highest generation in the key's history (0 if the key never had a checkpoint)."""
    return {
        "source_id": source_id,
        "target": target,
        "change_id": change_id,
        "previous_change_id": current["change_id"] if current is not None else None,
        "generation": (current["generation"] if current is not None else last_generation) + 1,
        "bytes": bytes_,
        "updated_at": now_iso(),
        "metadata": dict(metadata or {}),
    }


def advance_item(source_id, target, change_id, bytes_=None, metadata=None, expected_previous=None,
                 expected_generation=None):
    """One record of a batch advance."""
    return {"source_id": source_id, "target": target, "change_id": change_id, "bytes": bytes_,
            "metadata": metadata, "expected_previous": expected_previous,
            "expected_generation": expected_generation}


def check_batch(items):
    """Refuse an empty batch and a key given twice (which of the two would win is undefined)."""
    if not items:
        raise CheckpointError("no checkpoint records to advance")
    seen = set()
    for item in items:
        key = (item["source_id"], item["target"])
        if key in seen:
            raise CheckpointError("source %r, target %r is given twice in one advance; give each source and "
                                  "target once" % key)
        seen.add(key)


def decide_batch(currents, items, force=False, last_generations=None):
    """Decide every record of a batch against what is stored (``currents``, in the same order).

    Returns ``[(action, record or None, current)]``; raises one ``ConflictError`` naming every
    record whose compare-and-set fails, so a batch advances all of its records or none.
    ``last_generations`` (in the same order, 0 when not given) holds the highest generation in each
    key's history; a record of a key with nothing stored continues from it.
    """
    decisions = []
    conflicts = []
    last_generations = last_generations or [0] * len(items)
    for item, current, last_generation in zip(items, currents, last_generations):
        try:
            action = decide_advance(current, item["source_id"], item["target"], item["change_id"],
                                    item["expected_previous"], item["expected_generation"], force)
        except ConflictError as exc:
            conflicts.append({"source_id": item["source_id"], "target": item["target"], "current": exc.current,
                              "msg": str(exc)})
            continue
        record = None if action == "unchanged" else new_record(
            current, item["source_id"], item["target"], item["change_id"], item["bytes"], item["metadata"],
            last_generation)
        decisions.append((action, record, current))
    if conflicts:
        if len(items) == 1:
            raise ConflictError(conflicts[0]["msg"], conflicts[0]["current"], conflicts)
        raise ConflictError("%d of %d checkpoint records conflict, so none was advanced: %s" % (
            len(conflicts), len(items), " | ".join(c["msg"] for c in conflicts)), None, conflicts)
    return decisions


def advance_unstored(items, force=False):
    """``advance_many``'s answer while the store has no tables yet (check mode): every record is new."""
    check_batch(items)
    return batch_result(decide_batch([None] * len(items), items, force))


def batch_result(decisions):
    """``[(changed, record, previous)]`` from ``decide_batch``'s decisions."""
    return [(action != "unchanged", record if record is not None else current, current)
            for action, record, current in decisions]


class Store(object):
    """Backend interface."""

    backend = None

    def get(self, source_id, target):
        raise NotImplementedError

    def list(self, source_id=None, target=None):
        raise NotImplementedError

    def history(self, source_id, target, limit=20):
        raise NotImplementedError

    def advance(self, source_id, target, change_id, bytes_=None, metadata=None, expected_previous=None,
                expected_generation=None, force=False, check_mode=False):
        """Return ``(changed, record, previous)``."""
        return self.advance_many([advance_item(source_id, target, change_id, bytes_, metadata, expected_previous,
                                               expected_generation)], force=force, check_mode=check_mode)[0]

    def advance_many(self, items, force=False, check_mode=False):
        """Advance several checkpoints at once, all or none (items from ``advance_item``).

        Return ``[(changed, record, previous)]`` in the order of ``items``.
        """
        raise NotImplementedError

    def delete(self, source_id, target, expected_previous=None, expected_generation=None, check_mode=False):
        """Return ``(changed, previous)``."""
        raise NotImplementedError

    def close(self):
        pass

    def describe(self):
        return self.backend


class SqlStore(Store):
    """Shared SQL logic. Subclasses set the connection, placeholder and DDL."""

    placeholder = "?"

    def __init__(self, table):
        self.table = check_table_name(table)
        self.history_table = self.table + "_history"
        self.conn = None

    # subclass hooks
    def _begin_write(self, cur, check_mode=False):
        """Start the transaction of an advance or delete; in check mode nothing is written, so a
        backend takes no write lock."""
        raise NotImplementedError

    def _select_current_sql(self):
        return "SELECT source_id, target, change_id, previous_change_id, generation, bytes, updated_at, metadata " \
               "FROM %s WHERE source_id = %s AND target = %s" % (self.table, self.placeholder, self.placeholder)

    def _is_unique_violation(self, exc):
        return False

    def _encode_time(self, value):
        return value

    def _decode_time(self, value):
        if value is None:
            return None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return str(value)

    def _encode_meta(self, value):
        return json.dumps(value or {}, sort_keys=True)

    def _decode_meta(self, value):
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        try:
            return json.loads(value)
        except ValueError:
            return {"_raw": value}

    def _row(self, row):
        if row is None:
            return None
        return {
            "source_id": row[0], "target": row[1], "change_id": row[2], "previous_change_id": row[3],
            "generation": int(row[4]), "bytes": None if row[5] is None else int(row[5]),
            "updated_at": self._decode_time(row[6]), "metadata": self._decode_meta(row[7]),
        }

    def _q(self, sql):
        return sql.replace("?", self.placeholder)

    def get(self, source_id, target):
        cur = self.conn.cursor()
        try:
            cur.execute(self._select_current_sql(), (source_id, target))
            row = self._row(cur.fetchone())
        finally:
            cur.close()
        self.conn.rollback()
        return row

    def list(self, source_id=None, target=None):
        sql = "SELECT source_id, target, change_id, previous_change_id, generation, bytes, updated_at, metadata " \
              "FROM %s" % self.table
        where = []
        args = []
        if source_id is not None:
            where.append("source_id = ?")
            args.append(source_id)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY source_id, target"
        cur = self.conn.cursor()
        try:
            cur.execute(self._q(sql), tuple(args))
            rows = [self._row(r) for r in cur.fetchall()]
        finally:
            cur.close()
        self.conn.rollback()
        return rows

    def history(self, source_id, target, limit=20):
        sql = "SELECT id, action, change_id, previous_change_id, generation, bytes, recorded_at, metadata FROM %s " \
              "WHERE source_id = ? AND target = ? ORDER BY id DESC" % self.history_table
        args = [source_id, target]
        if limit:
            sql += " LIMIT ?"
            args.append(int(limit))
        cur = self.conn.cursor()
        try:
            cur.execute(self._q(sql), tuple(args))
            rows = cur.fetchall()
        finally:
            cur.close()
        self.conn.rollback()
        return [{"id": int(r[0]), "action": r[1], "change_id": r[2], "previous_change_id": r[3],
                 "generation": int(r[4]), "bytes": None if r[5] is None else int(r[5]),
                 "recorded_at": self._decode_time(r[6]), "metadata": self._decode_meta(r[7])} for r in rows]

    def _insert_history(self, cur, action, record, previous_change_id):
        cur.execute(self._q(
            "INSERT INTO %s (source_id, target, action, change_id, previous_change_id, generation, bytes, "
            "recorded_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" % self.history_table),
            (record["source_id"], record["target"], action, record["change_id"], previous_change_id,
             record["generation"], record["bytes"], self._encode_time(record["updated_at"]),
             self._encode_meta(record["metadata"])))

    def _last_generation(self, cur, source_id, target):
        """The highest generation in the key's history (0 if it never had a checkpoint)."""
        cur.execute(self._q("SELECT COALESCE(MAX(generation), 0) FROM %s WHERE source_id = ? AND target = ?"
                            % self.history_table), (source_id, target))
        return int(cur.fetchone()[0])

    def advance_many(self, items, force=False, check_mode=False):
        """One transaction: every row is read for update (in key order, so two batches cannot deadlock),
        with the key's last generation when no row is stored, every record decided, then written with its
        history event."""
        check_batch(items)
        order = sorted(range(len(items)), key=lambda i: (items[i]["source_id"], items[i]["target"]))
        for attempt in range(3):
            cur = self.conn.cursor()
            try:
                self._begin_write(cur, check_mode)
                currents = [None] * len(items)
                last_generations = [0] * len(items)
                for i in order:
                    key = (items[i]["source_id"], items[i]["target"])
                    cur.execute(self._select_current_sql() + self._for_update(check_mode), key)
                    currents[i] = self._row(cur.fetchone())
                    if currents[i] is None:
                        last_generations[i] = self._last_generation(cur, *key)
                decisions = decide_batch(currents, items, force, last_generations)
                if check_mode or all(action == "unchanged" for action, _r, _c in decisions):
                    self.conn.rollback()
                    return batch_result(decisions)
                if not all(self._write_record(cur, record, current) for action, record, current in decisions
                           if action != "unchanged"):
                    self.conn.rollback()
                    continue  # changed under us; decide again with the new values
                self.conn.commit()
                return batch_result(decisions)
            except ConflictError:
                self.conn.rollback()
                raise
            except Exception as exc:
                self.conn.rollback()
                if self._is_unique_violation(exc) and attempt < 2:
                    continue  # a concurrent first insert won; decide again
                raise
            finally:
                cur.close()
        raise CheckpointError("checkpoints of %s kept changing while they were advanced; re-run" % ", ".join(
            "source %r, target %r" % (item["source_id"], item["target"]) for item in items))

    def _write_record(self, cur, record, current):
        """Insert or update one checkpoint and add its history event; False if it changed under us."""
        if current is None:
            cur.execute(self._q(
                "INSERT INTO %s (source_id, target, change_id, previous_change_id, generation, bytes, "
                "updated_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % self.table),
                (record["source_id"], record["target"], record["change_id"], None, record["generation"],
                 record["bytes"], self._encode_time(record["updated_at"]), self._encode_meta(record["metadata"])))
            # there was no row to lock, so (on PostgreSQL) a checkpoint of this key may have been created
            # and deleted since its last generation was read; from here on the inserted row holds the key
            if self._last_generation(cur, record["source_id"], record["target"]) >= record["generation"]:
                return False
        else:
            cur.execute(self._q(
                "UPDATE %s SET change_id = ?, previous_change_id = ?, generation = ?, bytes = ?, "
                "updated_at = ?, metadata = ? WHERE source_id = ? AND target = ? AND generation = ?"
                % self.table),
                (record["change_id"], record["previous_change_id"], record["generation"], record["bytes"],
                 self._encode_time(record["updated_at"]), self._encode_meta(record["metadata"]),
                 record["source_id"], record["target"], current["generation"]))
            if cur.rowcount != 1:
                return False
        self._insert_history(cur, "advance", record, record["previous_change_id"])
        return True

    def delete(self, source_id, target, expected_previous=None, expected_generation=None, check_mode=False):
        cur = self.conn.cursor()
        try:
            self._begin_write(cur, check_mode)
            cur.execute(self._select_current_sql() + self._for_update(check_mode), (source_id, target))
            current = self._row(cur.fetchone())
            if not check_delete(current, source_id, target, expected_previous, expected_generation):
                self.conn.rollback()
                return False, None
            if check_mode:
                self.conn.rollback()
                return True, current
            cur.execute(self._q("DELETE FROM %s WHERE source_id = ? AND target = ? AND generation = ?"
                                % self.table), (source_id, target, current["generation"]))
            if cur.rowcount != 1:
                self.conn.rollback()
                raise ConflictError("checkpoint for source %r, target %r changed while it was deleted; re-run"
                                    % (source_id, target), None)
            event = dict(current)
            event["updated_at"] = now_iso()
            event["metadata"] = {}
            self._insert_history(cur, "delete", event, current["change_id"])
            self.conn.commit()
            return True, current
        except Exception:
            self.conn.rollback()
            raise
        finally:
            cur.close()

    def _for_update(self, check_mode=False):
        return ""

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class _SqliteConn(object):
    """Gives an autocommit-mode sqlite3 connection the commit()/rollback() the SQL core expects."""

    def __init__(self, conn):
        self._conn = conn

    def cursor(self):
        return self._conn.cursor()

    def commit(self):
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self):
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self):
        self._conn.close()


class SqliteStore(SqlStore):
    """A local SQLite file. ``BEGIN IMMEDIATE`` takes the write lock before the read, so the
    read-decide-write of an advance is atomic across processes."""

    backend = "sqlite"

    def __init__(self, path, table="cbt_checkpoints", create=True, timeout=30.0):
        SqlStore.__init__(self, table)
        if "." in table:
            raise CheckpointError("table %r: SQLite tables take no schema prefix" % table)
        self.path = path
        self.timeout = timeout
        existed = os.path.exists(path)
        if not existed:
            if not create:
                return  # check mode / info: a missing store reads as empty and is not created
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                try:
                    os.makedirs(directory, 0o700)
                except OSError as exc:
                    raise CheckpointError("cannot create the folder %s for the SQLite checkpoint store: %s"
                                          % (directory, exc))
        raw = None
        try:
            raw = sqlite3.connect(path, timeout=timeout, isolation_level=None)
            raw.execute("PRAGMA busy_timeout = %d" % int(timeout * 1000))
            self.conn = _SqliteConn(raw)
            if create:
                self._ensure_schema(raw)
        except sqlite3.Error as exc:
            if raw is not None:
                raw.close()
            self.conn = None
            if not existed:
                try:
                    os.unlink(path)  # the empty file this call made: it would read as a store later
                except OSError:
                    pass
            raise CheckpointError("cannot open the SQLite checkpoint store %s: %s%s"
                                  % (path, exc, table_hint(table, str(exc))))

    def describe(self):
        return "sqlite:%s" % self.path

    def _ensure_schema(self, raw):
        raw.execute("BEGIN IMMEDIATE")
        try:
            raw.execute(
                "CREATE TABLE IF NOT EXISTS %s (source_id TEXT NOT NULL, target TEXT NOT NULL, change_id TEXT NOT "
                "NULL, previous_change_id TEXT, generation INTEGER NOT NULL, bytes INTEGER, updated_at TEXT NOT "
                "NULL, metadata TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (source_id, target))" % self.table)
            raw.execute(
                "CREATE TABLE IF NOT EXISTS %s (id INTEGER PRIMARY KEY AUTOINCREMENT, source_id TEXT NOT NULL, "
                "target TEXT NOT NULL, action TEXT NOT NULL, change_id TEXT NOT NULL, previous_change_id TEXT, "
                "generation INTEGER NOT NULL, bytes INTEGER, recorded_at TEXT NOT NULL, metadata TEXT NOT NULL "
                "DEFAULT '{}')" % self.history_table)
            raw.execute("CREATE INDEX IF NOT EXISTS %s_key ON %s (source_id, target, id)"
                        % (self.history_table, self.history_table))
            raw.execute("COMMIT")
        except Exception:
            raw.execute("ROLLBACK")
            raise

    def _begin_write(self, cur, check_mode=False):
        # a deferred transaction only reads: check mode does not wait for another writer's lock
        cur.execute("BEGIN" if check_mode else "BEGIN IMMEDIATE")

    def _is_unique_violation(self, exc):
        return isinstance(exc, sqlite3.IntegrityError)

    def _guard(self, func, what):
        try:
            return func()
        except sqlite3.Error as exc:
            hint = ""
            if "locked" in str(exc) or "busy" in str(exc):
                hint = "; another process held the store's write lock for more than %d s (another pipeline " \
                       "advancing a checkpoint, or a stuck process): run again when it is done" % self.timeout
            raise CheckpointError("%s in the SQLite checkpoint store %s failed: %s%s" % (what, self.path, exc, hint))

    def _ready(self):
        """Whether the store file exists and holds the tables (a file that is no SQLite database fails)."""
        return self.conn is not None and self._guard(self._has_tables, "reading")

    def _has_tables(self):
        cur = self.conn.cursor()
        try:
            # SQLite table names are case-insensitive: CKPT names the table created as ckpt
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                        (self.table,))
            return cur.fetchone() is not None
        finally:
            cur.close()

    def get(self, source_id, target):
        if not self._ready():
            return None
        return self._guard(lambda: SqlStore.get(self, source_id, target), "reading")

    def list(self, source_id=None, target=None):
        if not self._ready():
            return []
        return self._guard(lambda: SqlStore.list(self, source_id, target), "reading")

    def history(self, source_id, target, limit=20):
        if not self._ready():
            return []
        return self._guard(lambda: SqlStore.history(self, source_id, target, limit), "reading")

    def advance_many(self, items, force=False, check_mode=False):
        if not self._ready():
            if not check_mode:
                raise CheckpointError("the SQLite checkpoint store %s is not initialised" % self.path)
            return advance_unstored(items, force)
        return self._guard(lambda: SqlStore.advance_many(self, items, force, check_mode), "advancing")

    def delete(self, source_id, target, expected_previous=None, expected_generation=None, check_mode=False):
        if not self._ready():
            return False, None
        return self._guard(lambda: SqlStore.delete(
            self, source_id, target, expected_previous, expected_generation, check_mode), "deleting")


def open_store(params, check_mode=False):
    """Open the backend named in the module parameters."""
    backend = params.get("backend") or "sqlite"
    if backend == "sqlite":
        path = params.get("sqlite_path") or default_sqlite_path()
        return SqliteStore(path, table=params.get("table") or "cbt_checkpoints", create=not check_mode)
    if backend == "postgresql":
        from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_postgres import PostgresStore
        return PostgresStore(params.get("postgresql_dsn"), password=params.get("postgresql_password"),
                             table=params.get("table") or "cbt_checkpoints",
                             connect_timeout=params.get("connect_timeout") or 10, create=not check_mode)
    if backend == "configmap":
        from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint_configmap import ConfigMapStore
        return ConfigMapStore(params, name=params.get("configmap_name"),
                              namespace=params.get("configmap_namespace"),
                              history_limit=params.get("history_limit"))
    raise CheckpointError("unknown backend %r" % backend)
