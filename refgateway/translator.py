"""Translate Gateway API objects into a data-plane plan and status documents.

Design note
-----------
This module has no I/O at all: no files, no sockets, no clock. ``translate()`` takes
every object the gateway can see (already parsed manifests) and returns

* a ``Plan``: for every listener port of every Gateway this controller owns, what the
  data plane must serve there (certificates, client validation, routes, endpoints);
* the ``status`` documents for every object this controller is responsible for,
  *without* ``lastTransitionTime``. ``stamp_transitions()`` adds those from the
  previous documents and a timestamp the caller passes in, so that a time only
  changes when a condition's status changes (as the Kubernetes API conventions ask).

Being pure keeps the semantics unit-testable and deterministic: the same objects
always give the same plan, whatever order the files were read in. Faults that
concern translation are applied here too (see ``refgateway.faults``); faults that
need memory across generations (``ignore-ca-rotation``, ``stale-insecure-condition``)
are applied by small pure helpers that take the previous state explicitly.

Objects are keyed ``(kind, namespace, name)`` with namespace ``""`` for cluster-scoped
kinds. PEM material travels as bytes and is parsed here only to validate it; the TLS
layer caches parsed forms by content.

The sections live in their own modules: ``_plan`` (the plan, constants, shared helpers,
CA bundle loading), ``_listeners`` (listeners and frontend validation), ``_backend_tls``
(BackendTLSPolicy and the backend client certificate), ``_routes`` (HTTPRoutes) and
``_status_memory`` (transition times and the faults that remember). This module is the
entry point, ``translate()``, and the names callers import.
"""

from __future__ import annotations

from typing import Any, Mapping

from ._backend_tls import _backend_policies, _policy_status
from ._listeners import _gateway, _ListenerState, _throwaway_certificate
from ._plan import (ALLOW_INSECURE_FALLBACK, ALLOW_VALID_ONLY, CTB_GROUP, CTB_KIND, DEFAULT_CONTROLLER,
                    GW_GROUP, OPTION_DOMAIN, PIN_HASH_KEYS, PIN_SAN_KEYS, SUPPORTED_FEATURES, Backend,
                    BackendTLS, Key, Listener, Plan, Port, Rule, Validation, _cond, _gen, _Index, _meta,
                    host_matches, host_rank)
from ._routes import _BackendTLSContext, _route
from ._status_memory import sticky_bundles, sticky_cas, sticky_certs, sticky_policies, stamp_transitions
from .faults import (INVALID_CA_TAKES_DOWN_GATEWAY, INVALID_CA_THROWAWAY_CERTIFICATE, NO_INSECURE_CONDITION,
                     OMIT_BACKEND_CLIENT_CERT, REPORT_CLIENT_CERTIFICATE_REF_RESOLVED, STALE_OBSERVED_GENERATION,
                     VALIDATE_HTTP_LISTENERS)

__all__ = [
    "DEFAULT_CONTROLLER",
    "SUPPORTED_FEATURES",
    "Validation",
    "BackendTLS",
    "Listener",
    "Rule",
    "Backend",
    "Port",
    "Plan",
    "translate",
    "stamp_transitions",
    "host_matches",
    "host_rank",
    "sticky_bundles",
    "sticky_cas",
    "sticky_certs",
    "sticky_policies",
    "ALLOW_VALID_ONLY",
    "ALLOW_INSECURE_FALLBACK",
    "GW_GROUP",
    "OPTION_DOMAIN",
    "PIN_SAN_KEYS",
    "PIN_HASH_KEYS",
    "CTB_GROUP",
    "CTB_KIND",
    "Key",
]


def _doc(api: str, kind: str, obj: Mapping, status: dict, cluster: bool = False) -> dict:
    meta = _meta(obj)
    md = {"name": meta.get("name"), "generation": _gen(obj)}
    if not cluster:
        md = {"name": meta.get("name"), "namespace": meta.get("namespace"), "generation": _gen(obj)}
    return {"apiVersion": api, "kind": kind, "metadata": md, "status": status}


def translate(objects: Mapping[Key, Mapping], *, controller: str = DEFAULT_CONTROLLER,
              faults: frozenset[str] = frozenset(),
              cluster_trust_bundles: bool = True) -> tuple[Plan, dict[Key, dict]]:
    """Objects -> (data-plane plan, status documents keyed like the objects).

    ``cluster_trust_bundles``: whether the object source serves ClusterTrustBundles (an
    API server may not); without them the feature is not advertised and references to
    them are an invalid kind, as GEP-5075 asks.
    """
    idx = _Index(objects, faults=faults, cluster_trust_bundles=cluster_trust_bundles)
    features = [f for f in SUPPORTED_FEATURES if cluster_trust_bundles or f != "ClusterTrustBundle"]
    statuses: dict[Key, dict] = {}
    classes = set()
    for (kind, _, name), gc in sorted(objects.items()):
        if kind != "GatewayClass" or (gc.get("spec") or {}).get("controllerName") != controller:
            continue
        classes.add(name)
        gen = _gen(gc)
        statuses[(kind, "", name)] = _doc("gateway.networking.k8s.io/v1", kind, gc, {
            "conditions": [
                _cond("Accepted", True, "Accepted", "handled by the reference gateway", gen),
                _cond("SupportedVersion", True, "SupportedVersion", "standard channel v1.5+ objects", gen),
            ],
            "supportedFeatures": [{"name": f} for f in sorted(features)],
        }, cluster=True)

    owned: dict[tuple[str, str], list[_ListenerState]] = {}
    extras: dict[tuple[str, str], dict] = {}
    for (kind, ns, name), gw in sorted(objects.items()):
        if kind == "Gateway" and (gw.get("spec") or {}).get("gatewayClassName") in classes:
            owned[(ns, name)], extras[(ns, name)] = _gateway(idx, gw, faults)

    policies, governing = _backend_policies(idx, faults)
    backend_tls = {}
    for key, extra in extras.items():
        client_cert = None if OMIT_BACKEND_CLIENT_CERT in faults else extra["client_cert"]
        backend_tls[key] = _BackendTLSContext(governing, client_cert, faults)
    services_used: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for (kind, ns, name), route in sorted(objects.items()):
        if kind != "HTTPRoute":
            continue
        parents = _route(idx, route, owned, controller, backend_tls, services_used)
        if parents:
            statuses[(kind, ns, name)] = _doc("gateway.networking.k8s.io/v1", kind, route, {"parents": parents})
    for p in policies:
        ancestors = sorted(gw for gw, used in services_used.items()
                           if any((p.namespace, svc) in used for svc in p.services))
        if ancestors:
            statuses[("BackendTLSPolicy", p.namespace, p.name)] = _doc(
                "gateway.networking.k8s.io/v1", "BackendTLSPolicy", objects[("BackendTLSPolicy", p.namespace, p.name)],
                _policy_status(p, ancestors, controller))

    ports: dict[tuple[str, str, int], Port] = {}
    for (ns, name), listeners in owned.items():
        gw = objects[("Gateway", ns, name)]
        gen = _gen(gw)
        lstatus = []
        for ls in listeners:
            programmed = ls.usable and ls.programmed_problem is None
            conds = [
                _cond("Accepted", *ls.accepted[:2], ls.accepted[2], gen),
                _cond("Programmed", programmed, "Programmed" if programmed else "Invalid",
                      "listener is programmed" if programmed else
                      (ls.programmed_problem if ls.usable else f"listener is not accepted: {ls.accepted[2]}"), gen),
                _cond("ResolvedRefs", *ls.resolved[:2], ls.resolved[2], gen),
                _cond("Conflicted", *ls.conflicted[:2], ls.conflicted[2], gen),
            ]
            lstatus.append({"name": ls.name, "supportedKinds": ls.kinds,
                            "attachedRoutes": ls.attached, "conditions": conds})
        usable = [ls for ls in listeners if ls.usable]
        all_ok = len(usable) == len(listeners)
        any_programmed = any(ls.usable and ls.programmed_problem is None for ls in listeners)
        gconds = [
            _cond("Accepted", bool(usable) or not listeners, "Accepted" if all_ok else "ListenersNotValid",
                  "gateway is accepted" if all_ok else "some listeners are not valid", gen),
            _cond("Programmed", any_programmed or not listeners, "Programmed" if any_programmed or not listeners else "Invalid",
                  "gateway is programmed on 127.0.0.1" if any_programmed or not listeners else "no listener can be programmed", gen),
        ]
        cert_problem = extras[(ns, name)]["client_cert_problem"]
        if cert_problem and REPORT_CLIENT_CERTIFICATE_REF_RESOLVED not in faults:
            gconds.append(_cond("ResolvedRefs", False, *cert_problem, gen))
        elif any(not ls.resolved[0] for ls in listeners):
            gconds.append(_cond("ResolvedRefs", False, "ListenersNotResolved",
                                "some listeners have unresolved references", gen))
        else:
            gconds.append(_cond("ResolvedRefs", True, "ResolvedRefs", "all references are resolved", gen))
        if extras[(ns, name)]["insecure"] and NO_INSECURE_CONDITION not in faults:
            gconds.append(_cond("InsecureFrontendValidationMode", True, "ConfigurationChanged",
                                "client certificate validation allows insecure fallback", gen))
        statuses[("Gateway", ns, name)] = _doc("gateway.networking.k8s.io/v1", "Gateway", gw, {
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "conditions": gconds,
            "listeners": lstatus,
        })
        # One unreadable CA bundle makes the data plane refuse the Gateway's whole TLS configuration.
        tls_down = INVALID_CA_TAKES_DOWN_GATEWAY in faults and any(ls.takes_down_gateway for ls in listeners)
        by_port: dict[int, list[_ListenerState]] = {}
        for ls in listeners:
            if ls.protocol in ("HTTP", "HTTPS") and 0 < ls.port < 65536:
                by_port.setdefault(ls.port, []).append(ls)
        for port, group in sorted(by_port.items()):
            protocol = group[0].protocol
            plan_listeners = []
            for ls in group:
                servable = ls.usable and not ls.fail_closed and (protocol == "HTTP" or ls.cert is not None)
                if protocol == "HTTPS" and tls_down:
                    servable = False
                validation = ls.validation if servable else None
                cert = ls.cert
                if ls.fail_closed and INVALID_CA_THROWAWAY_CERTIFICATE in faults:
                    servable, validation, cert = True, None, _throwaway_certificate()
                if protocol == "HTTP" and VALIDATE_HTTP_LISTENERS in faults \
                        and ((gw.get("spec") or {}).get("tls") or {}).get("frontend"):
                    validation = Validation(ALLOW_VALID_ONLY, ())
                plan_listeners.append(Listener(
                    name=ls.name, hostname=ls.hostname, protocol=ls.protocol, servable=servable,
                    cert_pem=cert[0] if cert else None, key_pem=cert[1] if cert else None,
                    validation=validation,
                    rules=tuple(ls.rules) if servable else (),
                ))
            ports[(ns, name, port)] = Port(ns, name, port, protocol, tuple(plan_listeners))

    if STALE_OBSERVED_GENERATION in faults:
        statuses = {k: _stale_generation(v) for k, v in statuses.items()}
    return Plan(ports=ports, gateways=tuple(sorted(owned))), statuses


def _stale_generation(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: (1 if k == "observedGeneration" else _stale_generation(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_stale_generation(v) for v in doc]
    return doc
