# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real PostgreSQL server shared by the checkpoint tests (started once, stopped at the end)."""

import pytest


@pytest.fixture(scope="session")
def postgres():
    from testbed.postgres import Postgres  # pylint: disable=import-outside-toplevel

    server = Postgres(name="postgres-checkpoint").start()
    yield server
    server.stop()
