# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the vm_migration role tests (helpers are in vmm_helpers.py)."""

import pytest

from testbed.cbtsim import CbtSim


@pytest.fixture(scope="session")
def cbtsim():
    """One simulator for the session; every test creates its own VMs (unique names)."""
    sim = CbtSim(name="vm-migration", vms=0).start()
    yield sim
    sim.stop()
