"""Controller mode's object source: list+watch per kind into one cache (``_kube``'s design note).

This module must not import the harness (``mtls_conformance``).
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from typing import Callable

from ._kube_api import OPTIONAL_KINDS, ApiError, Resource, request

log = logging.getLogger("refgateway")

BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0
WATCH_SECONDS = (240, 300)  # server-side watch timeout, jittered so reflectors do not reconnect in step
NOT_SERVED_RETRY = 30.0


# --------------------------------------------------------------------------- cache


def _semantic(obj: dict) -> dict:
    """What translation can depend on: everything but status and bookkeeping metadata."""
    view = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(view.get("metadata") or {})
    for k in ("resourceVersion", "managedFields"):
        meta.pop(k, None)
    view["metadata"] = meta
    return view


class Cache:
    """Every object seen, keyed (kind, ns, name); thread-safe; wakes the loop on changes."""

    def __init__(self, wake: Callable[[], None]):
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._wake = wake

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._objects)

    def get(self, key) -> dict | None:
        with self._lock:
            return self._objects.get(key)

    def put(self, key, obj: dict, *, wake: bool = True) -> None:
        with self._lock:
            old = self._objects.get(key)
            if old is not None and _rv(old) and _rv(obj) and _rv_newer(_rv(old), _rv(obj)):
                return  # a status write's answer arrived after a newer watch event
            self._objects[key] = obj
            changed = old is None or _semantic(old) != _semantic(obj)
        if changed and wake:
            self._wake()

    def refresh(self, key, obj: dict) -> None:
        """Record the answer of one of our own writes (a status write, a Service patch),
        without waking the loop, but only while the object is still here: the answer may
        arrive after the watch's DELETED event, and putting it back then would leave an
        object the API server no longer has in the cache until the next full list (a
        Gateway kept serving, its Service never deleted)."""
        with self._lock:
            old = self._objects.get(key)
            if old is None or (_rv(old) and _rv(obj) and _rv_newer(_rv(old), _rv(obj))):
                return
            self._objects[key] = obj

    def delete(self, key) -> None:
        with self._lock:
            changed = self._objects.pop(key, None) is not None
        if changed:
            self._wake()

    def replace_kind(self, kind: str, objects: dict) -> None:
        """A fresh list of one kind: drop what is gone, keep what is unchanged."""
        with self._lock:
            old = {k: v for k, v in self._objects.items() if k[0] == kind}
            for k in old:
                if k not in objects:
                    del self._objects[k]
            self._objects.update(objects)
            changed = old.keys() != objects.keys() or any(
                _semantic(old[k]) != _semantic(v) for k, v in objects.items())
        if changed:
            self._wake()


def _rv(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def _rv_newer(a: str, b: str) -> bool:
    # resourceVersions are opaque, but etcd-backed servers use increasing integers;
    # compare only when both are numbers.
    return a.isdigit() and b.isdigit() and int(a) > int(b)


def _key(res: Resource, obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return res.kind, (meta.get("namespace") or "") if res.namespaced else "", meta.get("name") or ""


class _Gone(Exception):
    pass


class Reflector(threading.Thread):
    """list+watch of one kind into the cache, relisting on 410 Gone, with bounded backoff."""

    def __init__(self, api, choices: tuple[Resource, ...], cache: Cache, stop: threading.Event):
        super().__init__(name=f"watch-{choices[0].kind}", daemon=True)
        self.api, self.choices, self.cache, self.stop_event = api, choices, cache, stop
        self.res: Resource | None = None
        self.synced = threading.Event()
        self._resp = None

    def run(self) -> None:
        backoff, rv, warned = BACKOFF_MIN, None, False
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    rv = self._list()
                    warned = False
                rv = self._watch(rv)
                backoff = BACKOFF_MIN
            except _Gone:
                log.info("watch %s: resourceVersion expired; listing again", self.choices[0].kind)
                rv = None
            except ApiError as exc:
                if exc.status == 404 or (exc.status == 403 and self.choices[0].kind in OPTIONAL_KINDS):
                    # CRD not installed (yet): serve without this kind and look again later.
                    if not warned:
                        log.warning("%s is not %s (%s); retrying every %.0f s", self.choices[0].kind,
                                    "served by the API server" if exc.status == 404 else "readable (403)",
                                    ", ".join(r.api_version for r in self.choices), NOT_SERVED_RETRY)
                        warned = True
                    self.res = None
                    self.cache.replace_kind(self.choices[0].kind, {})
                    self.synced.set()
                    rv = None
                    self.stop_event.wait(NOT_SERVED_RETRY)
                    continue
                log.warning("watch %s: %s; retrying in %.1f s", self.choices[0].kind, exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                rv = None if exc.status in (401, 403) else rv
            except Exception as exc:  # connection refused/reset, timeouts, bad JSON
                if self.stop_event.is_set():
                    break
                log.warning("watch %s: %s: %s; retrying in %.1f s", self.choices[0].kind,
                            exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "", backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _list(self) -> str:
        last: ApiError | None = None
        for res in self.choices:
            try:
                items, rv, cont = {}, "", None
                while True:
                    body = request(self.api, "GET", res.path(), query={"limit": 500, "continue": cont})
                    for obj in body.get("items") or []:
                        obj.setdefault("apiVersion", res.api_version)
                        obj.setdefault("kind", res.kind)
                        items[_key(res, obj)] = obj
                    rv = (body.get("metadata") or {}).get("resourceVersion") or rv
                    cont = (body.get("metadata") or {}).get("continue")
                    if not cont:
                        break
            except ApiError as exc:
                if exc.status == 404:
                    last = exc
                    continue
                if exc.status == 410:
                    raise _Gone() from exc
                raise
            self.res = res
            self.cache.replace_kind(res.kind, items)
            if not self.synced.is_set():
                self.synced.set()
                self.cache._wake()  # the loop waits for every first list, changed or not
            return rv
        assert last is not None
        raise last

    def _watch(self, rv: str) -> str:
        res = self.res
        assert res is not None
        seconds = random.randint(*WATCH_SECONDS)
        try:
            resp = request(self.api, "GET", res.path(), stream=True, timeout=(10, seconds + 30), query={
                "watch": True, "resourceVersion": rv, "allowWatchBookmarks": True, "timeoutSeconds": seconds})
        except ApiError as exc:
            if exc.status == 410:  # expired before the stream even started
                raise _Gone() from exc
            raise
        self._resp = resp
        try:
            buf = b""
            for chunk in resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        rv = self._event(res, json.loads(line), rv)
                if self.stop_event.is_set():
                    break
        finally:
            self._resp = None
            resp.release_conn()
        return rv

    def _event(self, res: Resource, event: dict, rv: str) -> str:
        etype, obj = event.get("type"), event.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise ApiError(obj.get("code") or 500, obj)
        new_rv = _rv(obj) or rv
        if etype == "BOOKMARK":
            return new_rv
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        if etype == "DELETED":
            self.cache.delete(_key(res, obj))
        else:
            self.cache.put(_key(res, obj), obj)
        return new_rv

    def close(self) -> None:
        resp = self._resp
        if resp is not None:  # unblock a read in progress (as kubernetes.watch.Watch.stop does)
            try:
                sock = getattr(getattr(resp, "connection", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
