# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the test-bed self tests: a private simulator so VM changes here touch nobody else."""

import pytest


@pytest.fixture(scope="module")
def own_vcsim():
    from testbed.vcsim import Vcsim  # pylint: disable=import-outside-toplevel

    sim = Vcsim(name="testbed-selftest").start()
    yield sim
    sim.stop()
