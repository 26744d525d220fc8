# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes ConfigMap backend of the checkpoint store.

One ConfigMap holds the checkpoints of many sources. Each ``(source_id, target)`` is one data key
(``cp-<hash>``) holding JSON ``{"source_id", "target", "current", "history"}``. Writes replace the
ConfigMap with the ``resourceVersion`` that was read, so the API server rejects a write based on a
stale read (HTTP 409); the store then reads again and re-checks the compare-and-set. ConfigMaps are
limited to 1 MiB, so only the newest ``history_limit`` events are kept per key. A delete leaves the
entry with ``current`` null and its history; the next checkpoint of the key continues from the highest
generation in that history (the newest event, which trimming keeps).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json

from ansible_collections.cbt.toolkit.plugins.module_utils import k8s as k8s_utils
from ansible_collections.cbt.toolkit.plugins.module_utils._checkpoint import (
    CheckpointError,
    ConflictError,
    MissingLibrary,
    Store,
    batch_result,
    check_batch,
    check_delete,
    decide_batch,
    now_iso,
)

DEFAULT_HISTORY_LIMIT = 100
MAX_ATTEMPTS = 10
LABELS = {"app.kubernetes.io/managed-by": "cbt.toolkit", "cbt.toolkit/kind": "checkpoint-store"}


def data_key(source_id, target):
    digest = hashlib.sha256(("%s\0%s" % (source_id, target)).encode("utf-8")).hexdigest()[:32]
    return "cp-" + digest


class ConfigMapStore(Store):
    backend = "configmap"

    def __init__(self, params, name=None, namespace=None, history_limit=None, api=None):
        if not name or not namespace:
            raise CheckpointError("backend configmap needs configmap_name and configmap_namespace")
        self.name = name
        self.namespace = namespace
        self.history_limit = DEFAULT_HISTORY_LIMIT if history_limit is None else int(history_limit)
        if self.history_limit < 1:
            # trimming to nothing would also lose the highest generation a new checkpoint continues from
            raise CheckpointError("history_limit must be at least 1 (events kept per checkpoint in the ConfigMap), "
                                  "got %d" % self.history_limit)
        if api is None:
            if not k8s_utils.HAS_KUBERNETES:
                raise MissingLibrary("kubernetes", k8s_utils.KUBERNETES_IMP_ERR)
            try:
                client = k8s_utils.get_api_client(params)
            except k8s_utils.K8sConnectionError as exc:
                raise CheckpointError(str(exc))
            api = k8s_utils.k8s_client.CoreV1Api(client)
        self.api = api

    def describe(self):
        return "configmap:%s/%s" % (self.namespace, self.name)

    def _what(self, verb):
        return "%s ConfigMap %s/%s" % (verb, self.namespace, self.name)

    def _read(self):
        """Return ``(configmap or None, data dict)``."""
        try:
            cm = self.api.read_namespaced_config_map(self.name, self.namespace)
        except k8s_utils.ApiException as exc:
            if getattr(exc, "status", None) == 404:
                return None, {}
            raise CheckpointError(k8s_utils.api_error_message(exc, self._what("reading")))
        return cm, dict(cm.data or {})

    @staticmethod
    def _entry(data, source_id, target):
        raw = data.get(data_key(source_id, target))
        if raw is None:
            return {"source_id": source_id, "target": target, "current": None, "history": []}
        try:
            entry = json.loads(raw)
        except ValueError:
            raise CheckpointError("checkpoint %s in the ConfigMap is not valid JSON; fix or remove that key"
                                  % data_key(source_id, target))
        if (entry.get("source_id"), entry.get("target")) != (source_id, target):
            raise CheckpointError("checkpoint %s in the ConfigMap belongs to source %r, target %r, not to source %r, "
                                  "target %r; the key was edited by hand: fix or remove it"
                                  % (data_key(source_id, target), entry.get("source_id"), entry.get("target"),
                                     source_id, target))
        entry.setdefault("history", [])
        entry.setdefault("current", None)
        return entry

    def _write(self, cm, data):
        """Create or replace the ConfigMap; return False on a concurrent change (409, or 404 when it was
        deleted since it was read)."""
        try:
            if cm is None:
                self.api.create_namespaced_config_map(self.namespace, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(LABELS)},
                    "data": data})
            else:
                # the object as read, with the new data: a replace keeps what others set on it (owner
                # references, finalizers, binaryData, annotations), and its resourceVersion makes it a
                # compare-and-set
                cm.metadata.labels = dict(cm.metadata.labels or {}, **LABELS)
                cm.metadata.managed_fields = None
                cm.data = data
                self.api.replace_namespaced_config_map(self.name, self.namespace, cm)
        except k8s_utils.ApiException as exc:
            # 409: changed (or created) since it was read; 404 on a replace: deleted since it was read. Either
            # way the caller reads again and decides again.
            if getattr(exc, "status", None) == 409 or (cm is not None and getattr(exc, "status", None) == 404):
                return False
            raise CheckpointError(k8s_utils.api_error_message(
                exc, self._what("creating" if cm is None else "updating")))
        return True

    def get(self, source_id, target):
        _cm, data = self._read()
        return self._entry(data, source_id, target)["current"]

    def list(self, source_id=None, target=None):
        _cm, data = self._read()
        out = []
        for key in sorted(data):
            if not key.startswith("cp-"):
                continue
            try:
                entry = json.loads(data[key])
            except ValueError:
                continue
            current = entry.get("current")
            if current is None:
                continue
            if source_id is not None and current.get("source_id") != source_id:
                continue
            if target is not None and current.get("target") != target:
                continue
            out.append(current)
        out.sort(key=lambda r: (r.get("source_id"), r.get("target")))
        return out

    def history(self, source_id, target, limit=20):
        _cm, data = self._read()
        events = list(reversed(self._entry(data, source_id, target)["history"]))
        return events[:limit] if limit else events

    @staticmethod
    def _last_generation(entry):
        """The highest generation in the entry's history (0 if the key never had a checkpoint)."""
        return max([event.get("generation") or 0 for event in entry["history"]] + [0])

    def _event(self, action, record, previous_change_id):
        return {"action": action, "change_id": record["change_id"], "previous_change_id": previous_change_id,
                "generation": record["generation"], "bytes": record.get("bytes"),
                "recorded_at": record["updated_at"], "metadata": record.get("metadata") or {}}

    def _trim(self, history):
        if self.history_limit and len(history) > self.history_limit:
            return history[-self.history_limit:]
        return history

    def advance_many(self, items, force=False, check_mode=False):
        """All records live in the one ConfigMap, so one replace (with the resourceVersion read)
        advances all of them or none."""
        check_batch(items)
        for _attempt in range(MAX_ATTEMPTS):
            cm, data = self._read()
            entries = [self._entry(data, item["source_id"], item["target"]) for item in items]
            decisions = decide_batch([entry["current"] for entry in entries], items, force,
                                     [self._last_generation(entry) for entry in entries])
            if check_mode or all(action == "unchanged" for action, _r, _c in decisions):
                return batch_result(decisions)
            for entry, (action, record, _current) in zip(entries, decisions):
                if action == "unchanged":
                    continue
                history = list(entry["history"])
                event = self._event("advance", record, record["previous_change_id"])
                event["id"] = (history[-1].get("id", 0) if history else 0) + 1
                history.append(event)
                data[data_key(record["source_id"], record["target"])] = json.dumps(
                    {"source_id": record["source_id"], "target": record["target"], "current": record,
                     "history": self._trim(history)}, sort_keys=True)
            if self._write(cm, data):
                return batch_result(decisions)
        raise CheckpointError("%s kept changing (%d attempts); re-run" % (self._what("updating"), MAX_ATTEMPTS))

    def delete(self, source_id, target, expected_previous=None, expected_generation=None, check_mode=False):
        for _attempt in range(MAX_ATTEMPTS):
            cm, data = self._read()
            entry = self._entry(data, source_id, target)
            current = entry["current"]
            if not check_delete(current, source_id, target, expected_previous, expected_generation):
                return False, None
            if check_mode:
                return True, current
            history = list(entry["history"])
            gone = dict(current)
            gone["updated_at"] = now_iso()
            gone["metadata"] = {}
            event = self._event("delete", gone, current["change_id"])
            event["id"] = (history[-1].get("id", 0) if history else 0) + 1
            history.append(event)
            entry = {"source_id": source_id, "target": target, "current": None, "history": self._trim(history)}
            data[data_key(source_id, target)] = json.dumps(entry, sort_keys=True)
            if self._write(cm, data):
                return True, current
        raise ConflictError("%s kept changing (%d attempts); re-run" % (self._what("updating"), MAX_ATTEMPTS),
                            None)
