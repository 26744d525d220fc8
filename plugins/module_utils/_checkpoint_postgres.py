# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL backend of the checkpoint store (psycopg 3, or psycopg2 as a fallback).

The advance runs in one transaction: ``SELECT ... FOR UPDATE`` on the row, the decision, an
``UPDATE ... WHERE generation = <read generation>`` (or an ``INSERT`` that a concurrent first
insert turns into a unique violation, which is retried and then reported as a conflict), and the
history row. With no row stored there is nothing to lock: the generation of the ``INSERT`` follows
the highest one in the key's history, which is read again after the ``INSERT`` (a checkpoint created
and deleted meanwhile makes the store decide again).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback
import zlib

from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint import (
    CheckpointError,
    MissingLibrary,
    SqlStore,
    advance_unstored,
    table_hint,
)

try:
    import psycopg  # psycopg 3
    PSYCOPG = "psycopg"
    PSYCOPG_IMPORT_ERROR = None
except ImportError:
    psycopg = None
    try:
        import psycopg2 as psycopg  # pylint: disable=import-error
        PSYCOPG = "psycopg2"
        PSYCOPG_IMPORT_ERROR = None
    except ImportError:
        psycopg = None
        PSYCOPG = None
        PSYCOPG_IMPORT_ERROR = traceback.format_exc()


class PostgresStore(SqlStore):
    backend = "postgresql"
    placeholder = "%s"

    def __init__(self, dsn, password=None, table="cbt_checkpoints", connect_timeout=10, create=True):
        SqlStore.__init__(self, table)
        if not dsn:
            raise CheckpointError("backend postgresql needs postgresql_dsn (for example "
                                  "'host=db.example.com dbname=cbt user=cbt' or 'postgresql://cbt@db/cbt')")
        if psycopg is None:
            raise MissingLibrary("psycopg (3) or psycopg2", PSYCOPG_IMPORT_ERROR)
        try:
            parsed = _parse_dsn(dsn)
        except Exception:  # pylint: disable=broad-except
            # the parser's message quotes the part it could not read, which may be the password
            raise CheckpointError(
                "postgresql_dsn cannot be parsed (its text is not shown, as it may hold a password): write it as "
                "key=value pairs, quoting values that contain spaces (password='a b'), or as a URI "
                "postgresql://user@host/dbname with special characters percent-encoded (%25 for %); the password "
                "can go in postgresql_password instead")
        secrets = [value for value in (password, parsed.get("password")) if value]
        kwargs = {"connect_timeout": int(connect_timeout)}
        if password:
            kwargs["password"] = password
        try:
            self.conn = psycopg.connect(dsn, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            raise CheckpointError("cannot connect to the PostgreSQL checkpoint store: %s" % _clean(exc, secrets))
        info = getattr(self.conn, "info", None)
        self.where = "%s@%s:%s/%s" % (getattr(info, "user", "?"), getattr(info, "host", "?"),
                                      getattr(info, "port", "?"), getattr(info, "dbname", "?")) if info else "?"
        # CREATE ... IF NOT EXISTS still needs CREATE rights on the schema: a role with only DML grants on
        # tables a DBA created must never run it, so the tables are looked up first
        self.exists = self._guard(self._tables_exist, "reading")
        if create and not self.exists:
            self._ensure_schema()
            self.exists = True

    def _tables_exist(self):
        cur = self.conn.cursor()
        try:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                        (self.table, self.history_table))
            found = bool(cur.fetchone()[0])
        finally:
            cur.close()
        self.conn.rollback()
        return found

    def describe(self):
        return "postgresql:%s table %s" % (self.where, self.table)

    def _ensure_schema(self):
        lock_id = zlib.crc32(("cbt.toolkit:" + self.table).encode("utf-8")) & 0x7FFFFFFF
        index = self.history_table.split(".")[-1] + "_key"
        cur = self.conn.cursor()
        try:
            # concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; serialise it
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS %s (source_id TEXT NOT NULL, target TEXT NOT NULL, change_id TEXT NOT "
                "NULL, previous_change_id TEXT, generation BIGINT NOT NULL, bytes BIGINT, updated_at TIMESTAMPTZ "
                "NOT NULL, metadata JSONB NOT NULL DEFAULT '{}'::jsonb, PRIMARY KEY (source_id, target))"
                % self.table)
            cur.execute(
                "CREATE TABLE IF NOT EXISTS %s (id BIGSERIAL PRIMARY KEY, source_id TEXT NOT NULL, target TEXT NOT "
                "NULL, action TEXT NOT NULL, change_id TEXT NOT NULL, previous_change_id TEXT, generation BIGINT NOT "
                "NULL, bytes BIGINT, recorded_at TIMESTAMPTZ NOT NULL, metadata JSONB NOT NULL DEFAULT '{}'::jsonb)"
                % self.history_table)
            cur.execute("CREATE INDEX IF NOT EXISTS %s ON %s (source_id, target, id)" % (index, self.history_table))
            self.conn.commit()
        except Exception as exc:  # pylint: disable=broad-except
            self.conn.rollback()
            text = _clean(exc)
            hint = table_hint(self.table, text) or "; create them as the table owner or grant CREATE on the schema"
            raise CheckpointError("cannot create the checkpoint tables %s and %s: %s%s"
                                  % (self.table, self.history_table, text, hint))
        finally:
            cur.close()

    def _begin_write(self, cur, check_mode=False):
        pass  # psycopg opens a transaction with the first statement

    def _for_update(self, check_mode=False):
        # check mode only reads: no row lock, and a role without UPDATE rights can still preview
        return "" if check_mode else " FOR UPDATE"

    def _is_unique_violation(self, exc):
        return (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) == "23505"

    def _guard(self, func, what):
        try:
            return func()
        except CheckpointError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            if psycopg is not None and isinstance(exc, psycopg.Error):
                text = _clean(exc)
                raise CheckpointError("%s the PostgreSQL checkpoint store (%s) failed: %s%s" % (
                    what, self.describe(), text, table_hint(self.table, text)))
            raise

    # Without the tables (check mode / info before the first advance) the store reads as empty.
    def get(self, source_id, target):
        if not self.exists:
            return None
        return self._guard(lambda: SqlStore.get(self, source_id, target), "reading")

    def list(self, source_id=None, target=None):
        if not self.exists:
            return []
        return self._guard(lambda: SqlStore.list(self, source_id, target), "reading")

    def history(self, source_id, target, limit=20):
        if not self.exists:
            return []
        return self._guard(lambda: SqlStore.history(self, source_id, target, limit), "reading")

    def advance_many(self, items, force=False, check_mode=False):
        if not self.exists:
            return advance_unstored(items, force)
        return self._guard(lambda: SqlStore.advance_many(self, items, force, check_mode), "advancing in")

    def delete(self, source_id, target, expected_previous=None, expected_generation=None, check_mode=False):
        if not self.exists:
            return False, None
        return self._guard(lambda: SqlStore.delete(
            self, source_id, target, expected_previous, expected_generation, check_mode), "deleting from")


def _parse_dsn(dsn):
    """The keywords of a connection string (key=value pairs or a URI); raises on a syntax error."""
    if PSYCOPG == "psycopg":
        from psycopg.conninfo import conninfo_to_dict
        return conninfo_to_dict(dsn)
    from psycopg2.extensions import parse_dsn  # pylint: disable=import-error
    return parse_dsn(dsn)


def _clean(exc, secrets=()):
    """The error on one line, with any of ``secrets`` masked."""
    text = " ".join(str(exc).split())
    for secret in secrets:
        text = text.replace(secret, "********")
    return text
