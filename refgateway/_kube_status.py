"""Controller mode's status sink: writes only what differs, through the status subresource
(``_kube``'s design note).

This module must not import the harness (``mtls_conformance``).
"""

from __future__ import annotations

import copy
import logging

from . import translator
from ._kube_api import GW_GROUP, STATUS_KINDS, ApiError, Resource, request
from ._kube_informer import Cache
from ._server import _now
from .faults import DROPS_FOREIGN_POLICY_STATUS

log = logging.getLogger("refgateway")


# --------------------------------------------------------------------------- status


def _ours_only(entries: list, controller: str) -> list:
    return [e for e in entries or [] if isinstance(e, dict) and e.get("controllerName") == controller]


class StatusWriter:
    """Writes the differences between wanted and current status; blocking, so run in a thread."""

    def __init__(self, api, cache: Cache, controller: str, sticky: frozenset[str],
                 faults: frozenset[str] = frozenset()):
        self.api, self.cache, self.controller, self.sticky = api, cache, controller, sticky
        self.faults = faults
        self.writes = 0  # for tests and logs: how many status writes reached the API server

    def sync(self, statuses: dict) -> bool:
        """Return False when some write failed (the caller retries later)."""
        ok = True
        objects = self.cache.snapshot()
        keys = set(statuses) | {k for k, o in objects.items() if k[0] in ("HTTPRoute", "BackendTLSPolicy")}
        now = _now()
        for key in sorted(keys):
            if key not in objects or key[0] not in STATUS_KINDS:
                continue
            try:
                self._sync_one(key, objects[key], statuses.get(key), now)
            except ApiError as exc:
                if exc.status == 404:
                    continue  # deleted meanwhile; the watch will tell the loop
                ok = False
                log.warning("status of %s %s: %s", key[0], "/".join(filter(None, key[1:])), exc)
            except Exception as exc:
                ok = False
                log.warning("status of %s %s: %s: %s", key[0], "/".join(filter(None, key[1:])),
                            exc.__class__.__name__, exc)
        return ok

    def _sync_one(self, key, obj: dict, doc: dict | None, now: str) -> None:
        plural, shared = STATUS_KINDS[key[0]]
        res = Resource(key[0], f"{GW_GROUP}/v1", plural, bool(key[1]))
        if shared is None:
            if doc is None:
                return  # not ours
            current = obj.get("status") or {}
            old = {k: current[k] for k in doc["status"] if k in current}
            new = translator.stamp_transitions({"status": copy.deepcopy(doc["status"])}, {"status": old}, now,
                                               sticky_types=self.sticky)["status"]
            if new == old:
                return
            answer = request(self.api, "PATCH", res.path(key[1], key[2], "status"), body={"status": new},
                             content_type="application/merge-patch+json")
            self._written(key, res, answer)
            return
        wanted = copy.deepcopy((doc or {}).get("status", {}).get(shared, []))
        for _ in range(5):
            current = (obj.get("status") or {}).get(shared) or []
            old = _ours_only(current, self.controller)
            if not wanted and not old:
                return
            new = translator.stamp_transitions({"status": {shared: copy.deepcopy(wanted)}},
                                               {"status": {shared: old}}, now)["status"][shared]
            if new == old:
                return
            others = [e for e in current if not (isinstance(e, dict) and e.get("controllerName") == self.controller)]
            if DROPS_FOREIGN_POLICY_STATUS in self.faults and key[0] == "BackendTLSPolicy":
                others = []
            body = copy.deepcopy(obj)
            body.setdefault("status", {})[shared] = others + new
            try:
                answer = request(self.api, "PUT", res.path(key[1], key[2], "status"), body=body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                obj = request(self.api, "GET", res.path(key[1], key[2]))  # someone else wrote; merge again
                continue
            self._written(key, res, answer)
            return
        raise RuntimeError("gave up after 5 conflicting writes")

    def _written(self, key, res: Resource, answer: dict) -> None:
        self.writes += 1
        answer.setdefault("apiVersion", res.api_version)
        answer.setdefault("kind", res.kind)
        # Only the status changed: record it without waking the loop (and not at all if
        # the object was deleted while the write was on its way).
        self.cache.refresh(key, answer)
        log.info("status of %s %s written (generation %s)", key[0], "/".join(filter(None, key[1:])),
                 (answer.get("metadata") or {}).get("generation"))
