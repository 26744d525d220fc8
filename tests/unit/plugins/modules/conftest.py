# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module test here runs modules in-process (see unit_helpers.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.cbt.toolkit.tests.unit.plugins.modules.unit_helpers import patch_exits


@pytest.fixture(autouse=True)
def module_exits(monkeypatch):
    """``exit_json`` / ``fail_json`` raise ``ExitJson`` / ``FailJson`` instead of exiting."""
    patch_exits(monkeypatch)
