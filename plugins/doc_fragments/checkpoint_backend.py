# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  backend:
    description:
      - Where checkpoints are kept.
      - V(sqlite) - a local SQLite file (standard library only). Fine for a single migration host; in AWX/AAP
        job runs the execution environment is thrown away after the job, so use V(postgresql) or V(configmap)
        there.
      - V(postgresql) - a PostgreSQL database (needs C(psycopg) 3 or C(psycopg2)). Tables are created on first
        use.
      - V(configmap) - a Kubernetes ConfigMap (needs the C(kubernetes) Python client), for pipelines that run
        next to the cluster they protect.
    type: str
    choices: [sqlite, postgresql, configmap]
    default: sqlite
  sqlite_path:
    description:
      - The SQLite file. Defaults to C($XDG_STATE_HOME/cbt.toolkit/checkpoints.sqlite)
        (C(~/.local/state/cbt.toolkit/checkpoints.sqlite)) on the managed host.
    type: path
  postgresql_dsn:
    description:
      - libpq connection string or URI, for example C(host=db.example.com dbname=cbt user=cbt sslmode=verify-full)
        or C(postgresql://cbt@db.example.com/cbt). Required for O(backend=postgresql).
      - Treated as a secret (it may contain a password) and never logged.
      - The usual libpq environment variables (E(PGPASSWORD), E(PGSSLROOTCERT), ...) apply on the managed host.
    type: str
  postgresql_password:
    description:
      - Password for PostgreSQL, if it is not in O(postgresql_dsn), E(PGPASSWORD) or C(~/.pgpass).
    type: str
  table:
    description:
      - Table of the current checkpoints (SQL backends); the history goes to C(<table>_history).
      - PostgreSQL accepts C(schema.table).
    type: str
    default: cbt_checkpoints
  connect_timeout:
    description:
      - Seconds to wait for the PostgreSQL connection.
    type: int
    default: 10
  configmap_name:
    description:
      - Name of the ConfigMap holding the checkpoints. Required for O(backend=configmap).
    type: str
  configmap_namespace:
    description:
      - Namespace of that ConfigMap. Required for O(backend=configmap).
    type: str
  history_limit:
    description:
      - Events kept per checkpoint in the ConfigMap backend (ConfigMaps are limited to 1 MiB), at least 1. The SQL
        backends keep the whole history.
    type: int
    default: 100
"""
