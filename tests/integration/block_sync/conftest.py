# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the block_sync integration tests (helpers live in blocksync_helpers.py)."""

import os

import pytest

from blocksync_helpers import Endpoints  # pylint: disable=import-error


@pytest.fixture
def endpoints():
    eps = Endpoints()
    yield eps
    eps.close()


@pytest.fixture
def workdir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path
