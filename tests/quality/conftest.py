# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The staged copy of the collection (``ansible_collections/cbt/toolkit``) that ansible-test needs."""

import pytest

from testbed.core import output_dir
from testbed.stage import stage_collection


@pytest.fixture(scope="module")
def staged():
    return stage_collection(output_dir() / "stage")
