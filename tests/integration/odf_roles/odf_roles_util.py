# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by the ODF role tests (reading ansible-playbook JSON results)."""

from __future__ import annotations


def recap(run, host="localhost"):
    """PLAY RECAP counters of an AnsibleRun for ``host``."""
    return run.stats.get(host, {})


def changed_tasks(run, host="localhost"):
    """Names of the tasks that reported a change (loop items count once per task)."""
    return [r["_task"] for r in run.task_results(host) if r.get("changed")]


def failure_messages(run, host="localhost"):
    """The messages of the failed tasks."""
    out = []
    for res in run.task_results(host):
        if res.get("failed"):
            out.append(str(res.get("msg", "")))
        for item in res.get("results", []) or []:
            if isinstance(item, dict) and item.get("failed"):
                out.append(str(item.get("msg", "")))
    return out


def fact(run, name, host="localhost"):
    """The last value set for fact ``name`` by set_fact in the run."""
    value = None
    for res in run.task_results(host):
        facts = res.get("ansible_facts") or {}
        if name in facts:
            value = facts[name]
    return value


def assert_ok(run):
    assert run.rc == 0, "ansible-playbook failed: %s\n%r" % (failure_messages(run), run)


def assert_idempotent(run):
    """A second run: success and changed=0 (names the tasks that changed otherwise)."""
    assert_ok(run)
    assert recap(run).get("changed", 0) == 0, "not idempotent, changed tasks: %s" % changed_tasks(run)


def task_durations(run):
    """(seconds, task name) per task, slowest first - for diagnosing slow runs."""
    import datetime  # pylint: disable=import-outside-toplevel
    out = []
    for play in (run.data or {}).get("plays", []):
        for task in play.get("tasks", []):
            dur = task.get("task", {}).get("duration", {})
            if dur.get("start") and dur.get("end"):
                fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
                secs = (datetime.datetime.strptime(dur["end"], fmt) - datetime.datetime.strptime(dur["start"], fmt)).total_seconds()
                out.append((round(secs, 2), task["task"]["name"]))
    return sorted(out, reverse=True)


INSTALL_PLAYBOOK = """
- name: Install ODF
  hosts: localhost
  gather_facts: false
  roles:
    - role: cbt.toolkit.odf_install
"""

UNINSTALL_PLAYBOOK = """
- name: Uninstall ODF
  hosts: localhost
  gather_facts: false
  roles:
    - role: cbt.toolkit.odf_uninstall
"""

STORAGE_NODES = ["worker-0", "worker-1", "worker-2"]


def install_vars(env, **extra):
    """Variables for cbt.toolkit.odf_install against the test cluster (4.20 catalog by default)."""
    out = {
        "odf_install_k8s_auth": env.auth,
        "odf_install_catalog_source_image": "quay.io/cbt-test/odf-catalog:4.20",
        "odf_install_device_set_storage_class": "gp3-csi",
        "odf_install_storage_nodes": list(STORAGE_NODES),
        "odf_install_poll_interval": 1,
    }
    out.update(extra)
    return out


def uninstall_vars(env, **extra):
    out = {"odf_uninstall_k8s_auth": env.auth, "odf_uninstall_poll_interval": 1}
    out.update(extra)
    return out


def install_odf(env, run_playbook, **extra):
    """Install ODF with the role (the real path) and check it got Ready."""
    run = run_playbook(INSTALL_PLAYBOOK, extra_vars=install_vars(env, **extra))
    assert_ok(run)
    return run
