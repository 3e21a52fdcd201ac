"""Status memory: lastTransitionTime stamping, and the faults that need state across
generations (ignore-ca-rotation and the other sticky_* helpers).

Pure: the caller passes the previous documents, the time and the memory explicitly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping

from ._plan import CTB_KIND, Key, Plan


def _walk_conditions(doc: Any, path: tuple = ()) -> Iterable[tuple[tuple, list]]:
    """Yield (path, conditions list) for every ``conditions`` list, keyed stably."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "conditions" and isinstance(v, list):
                yield path, v
            else:
                yield from _walk_conditions(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            ref = next((v[k] for k in ("parentRef", "ancestorRef") if isinstance(v, dict) and k in v), None)
            key = v.get("name") if isinstance(v, dict) and "name" in v else (
                repr(sorted(ref.items())) if ref is not None else i)
            yield from _walk_conditions(v, path + (key,))


def stamp_transitions(new: dict, old: dict | None, now: str, *, sticky_types: frozenset[str] = frozenset()) -> dict:
    """Give every condition in ``new`` a lastTransitionTime.

    A condition keeps its previous time while its status is unchanged. Conditions in
    ``sticky_types`` that were present before and are now missing are carried over
    (that is how the ``stale-insecure-condition`` fault keeps a removed condition).
    """
    previous = dict(_walk_conditions(old)) if old else {}
    for path, conds in _walk_conditions(new):
        before = {c.get("type"): c for c in previous.get(path, [])}
        for c in conds:
            p = before.get(c["type"])
            c["lastTransitionTime"] = p["lastTransitionTime"] if (
                p and p.get("status") == c["status"] and p.get("lastTransitionTime")) else now
        present = {c["type"] for c in conds}
        for t in sorted(sticky_types):
            if t in before and t not in present:
                conds.append(dict(before[t]))
    return new


def sticky_cas(plan: Plan, memory: dict[tuple[str, str, int, str], tuple[bytes, ...]]) -> Plan:
    """Fault ``ignore-ca-rotation``: reuse the first CA bundles seen per Gateway listener.

    ``memory`` is updated in place with bundles seen for the first time.
    """
    ports = {}
    for key, port in plan.ports.items():
        listeners = []
        for ls in port.listeners:
            if ls.validation is not None:
                mkey = (port.namespace, port.gateway, port.port, ls.name)
                first = memory.setdefault(mkey, ls.validation.ca_pems)
                ls = replace(ls, validation=replace(ls.validation, ca_pems=first))
            listeners.append(ls)
        ports[key] = replace(port, listeners=tuple(listeners))
    return replace(plan, ports=ports)


def sticky_bundles(objects: Mapping[Key, Mapping], memory: dict[str, Mapping]) -> dict[Key, Mapping]:
    """Fault ``ignore-cluster-trust-bundle-rotation``: every ClusterTrustBundle keeps the
    first content seen for its name, also after it is changed or deleted.

    ``memory`` (name -> object) is updated in place with bundles seen for the first time.
    """
    out = dict(objects)
    for (kind, _, name), obj in objects.items():
        if kind == CTB_KIND:
            memory.setdefault(name, obj)
    for name, obj in memory.items():
        out[(CTB_KIND, "", name)] = obj
    return out


def sticky_policies(objects: Mapping[Key, Mapping], memory: dict[Key, Mapping]) -> dict[Key, Mapping]:
    """Fault ``ignore-backend-tls-policy-deletion``: a BackendTLSPolicy once seen stays in force
    after it is deleted (a controller that misses delete events); a new one replaces it.

    ``memory`` is updated in place with the policies seen.
    """
    for key, obj in objects.items():
        if key[0] == "BackendTLSPolicy":
            memory[key] = obj
    return {**memory, **objects}


def sticky_certs(plan: Plan, memory: dict[tuple[str, str, int, str], tuple[bytes, bytes]]) -> Plan:
    """Fault ``ignore-certificate-rotation``: keep the first server certificate per listener.

    ``memory`` is updated in place with certificates seen for the first time.
    """
    ports = {}
    for key, port in plan.ports.items():
        listeners = []
        for ls in port.listeners:
            if ls.cert_pem is not None and ls.key_pem is not None:
                mkey = (port.namespace, port.gateway, port.port, ls.name)
                cert, key_pem = memory.setdefault(mkey, (ls.cert_pem, ls.key_pem))
                ls = replace(ls, cert_pem=cert, key_pem=key_pem)
            listeners.append(ls)
        ports[key] = replace(port, listeners=tuple(listeners))
    return replace(plan, ports=ports)
