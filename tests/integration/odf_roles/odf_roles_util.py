# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by the ODF role tests (reading ansible-playbook JSON results)."""

from __future__ import annotations

from pathlib import Path

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"


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


def build_vars(operator_repo, registry, buildah_storage, tmp_path, **extra):
    out = {
        "cephcsi_operator_build_repo": operator_repo["url"],
        "cephcsi_operator_build_version": "release-4.20",
        "cephcsi_operator_build_work_dir": str(tmp_path / "work"),
        "cephcsi_operator_build_image": "%s/cbt/cephcsi-operator" % registry.host,
        "cephcsi_operator_build_platform": "linux/arm64",
        "cephcsi_operator_build_go": "/usr/local/go/bin/go",
        "cephcsi_operator_build_go_env": operator_repo["go_env"],
        # The role defaults to "-a -trimpath" like the upstream Dockerfile; "-a" would rebuild the
        # standard library for arm64 on every test run.
        "cephcsi_operator_build_go_flags": ["-trimpath"],
        "cephcsi_operator_build_base_image": "scratch",
        "cephcsi_operator_build_registry_username": registry.username,
        "cephcsi_operator_build_registry_password": registry.password,
        "cephcsi_operator_build_cert_dir": str(registry.cert_dir),
    }
    out.update(buildah_storage)
    out.update(extra)
    return out
