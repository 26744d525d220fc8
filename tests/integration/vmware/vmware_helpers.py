# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the VMware module tests (a module of its own: pytest keeps only the last
collected conftest under the name ``conftest``, so tests must not import from conftest)."""

import json

VCSIM_CHANGE_ID = "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/%d"


def assert_clean_failure(result, run, kind=None, words=()):
    """A failed module run with a clear message and no Python traceback."""
    assert result.get("failed") is True, run
    text = run.stdout + run.stderr
    assert "Traceback (most recent call last)" not in text, text
    # ansible-core 2.19 adds "exception: (traceback unavailable)" to every failure without one
    assert result.get("exception") in (None, "(traceback unavailable)"), result.get("exception")
    assert result.get("error_kind") != "internal_error", result
    if kind is not None:
        assert result.get("error_kind") == kind, result
    for word in words:
        assert word in result["msg"], result["msg"]


def run_tasks(run_playbook, tasks, env=None):
    """Run several module calls in ONE ansible-playbook (one Ansible start-up).

    ``tasks``: list of ``(module, args)`` or ``(module, args, task_keywords)`` (for example
    ``{"check_mode": True, "diff": True}``). Failures do not stop the play. Returns the list of
    per-task results (in order) and the run.
    """
    play_tasks = []
    for index, item in enumerate(tasks):
        module, args = item[0], item[1]
        extra = item[2] if len(item) > 2 else {}
        name = module if "." in module else "cbt.toolkit.%s" % module
        task = {"name": "task %d %s" % (index, module), name: args, "ignore_errors": True}
        task.update(extra)
        play_tasks.append(task)
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": play_tasks}]
    run = run_playbook(json.dumps(play) + "\n", env=env)
    results = run.task_results()
    assert len(results) == len(tasks), run
    return results, run
