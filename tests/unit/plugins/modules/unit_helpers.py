# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs a module's ``main()`` inside the test: ``exit_json`` and ``fail_json`` raise ``ExitJson`` and
``FailJson`` (both ``SystemExit``, as the real ones exit), carrying the module's result.

The conftest.py of this folder applies ``patch_exits`` to every test here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args


class ModuleExit(SystemExit):
    """The module ended; ``args[0]`` is its result."""


class ExitJson(ModuleExit):
    """``exit_json`` was called."""


class FailJson(ModuleExit):
    """``fail_json`` was called; the result has ``failed=True``."""


def _take_warnings(result):
    result["warnings"] = list(ansible_warnings.get_warning_messages())
    ansible_warnings._global_warnings.clear()
    return result


def patch_exits(monkeypatch):
    """Make ``exit_json`` / ``fail_json`` raise; the result gets the warnings issued since the last
    result (or since this call) as ``warnings``."""
    ansible_warnings._global_warnings.clear()

    def exit_json(self, **kw):
        raise ExitJson(_take_warnings(kw))

    def fail_json(self, **kw):
        kw["failed"] = True
        raise FailJson(_take_warnings(kw))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run_module(module, args, check=False, diff=False, expect=ModuleExit):
    """Run ``module.main()`` with ``args`` (in check / diff mode when asked) and return its result;
    the test fails unless it ends with ``expect``."""
    args = dict(args)
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    with patch_module_args(args):
        with pytest.raises(expect) as err:
            module.main()
    return err.value.args[0]
