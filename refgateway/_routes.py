"""Routes: attaching HTTPRoutes to listeners (namespaces, hostnames, parentRefs), their
backends (with the TLS their BackendTLSPolicies ask for), and their status.

Pure, like the rest of the translator (see ``translator``). The data plane's choice of
listener and rule per request is ``routing``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from ._backend_tls import _Policy
from ._listeners import _ListenerState
from ._plan import GW_GROUP, Backend, BackendTLS, Rule, _cond, _gen, _Index, _meta, host_matches
from .faults import BACKEND_PLAINTEXT_FALLBACK


def _ns_labels(idx: _Index, ns: str) -> Mapping:
    obj = idx.get("Namespace", "", ns)
    labels = dict((_meta(obj).get("labels") or {}) if obj else {})
    labels.setdefault("kubernetes.io/metadata.name", ns)
    return labels


def _selector_matches(sel: Mapping, labels: Mapping) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, vals = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _namespace_allowed(idx: _Index, ls: _ListenerState, gw_ns: str, route_ns: str) -> bool:
    ns_spec = (ls.spec.get("allowedRoutes") or {}).get("namespaces") or {}
    frm = ns_spec.get("from") or "Same"
    if frm == "All":
        return True
    if frm == "Same":
        return route_ns == gw_ns
    if frm == "Selector":
        return _selector_matches(ns_spec.get("selector") or {}, _ns_labels(idx, route_ns))
    return False


def _intersect_hostnames(listener_host: str | None, route_hosts: list[str]) -> list[str] | None:
    """Effective hostnames of a route on a listener; [] = any host, None = no overlap."""
    if not route_hosts:
        return [listener_host] if listener_host else []
    if listener_host is None:
        return list(route_hosts)
    out = []
    for h in route_hosts:
        if host_matches(listener_host, h) or h == listener_host:
            out.append(h)
        elif h.startswith("*.") and host_matches(h, listener_host):
            out.append(listener_host)
    return out or None


@dataclass(frozen=True)
class _BackendTLSContext:
    """What decides TLS to a route's backends on one Gateway."""

    governing: Mapping[tuple[str, str, str | None], _Policy]
    client_cert: tuple[bytes, bytes] | None
    faults: frozenset[str]

    def tls_for(self, ns: str, svc: str, port_name: str) -> tuple[bool, BackendTLS | None]:
        """(usable, TLS settings) for a Service port; not usable: the policy cannot be honoured."""
        policy = self.governing.get((ns, svc, port_name)) or self.governing.get((ns, svc, None))
        if policy is None:
            return True, None
        if policy.tls is None:
            return BACKEND_PLAINTEXT_FALLBACK in self.faults, None
        return True, replace(policy.tls, client_cert=self.client_cert)


def _resolve_backends(idx: _Index, route: Mapping, rule: Mapping,
                      tls: _BackendTLSContext | None = None) -> tuple[tuple[Backend, ...], list[tuple[str, str]]]:
    """The backends of a rule (with the TLS their policies ask for when ``tls`` is given)."""
    rns = _meta(route).get("namespace") or ""
    backends, problems = [], []
    for ref in rule.get("backendRefs") or []:
        weight = int(ref.get("weight", 1) if ref.get("weight") is not None else 1)
        group, kind = ref.get("group") or "", ref.get("kind") or "Service"
        name, ns, port = ref.get("name") or "", ref.get("namespace") or rns, ref.get("port")
        endpoints, backend_tls = None, None
        if group != "" or kind != "Service":
            problems.append(("InvalidKind", f"backendRef {group}/{kind} {name} is not a core Service"))
        elif ns != rns and not idx.granted(GW_GROUP, "HTTPRoute", rns, "", "Service", ns, name):
            problems.append(("RefNotPermitted", f"backendRef Service {ns}/{name} is not permitted by a ReferenceGrant"))
        else:
            svc = idx.get("Service", ns, name)
            svc_spec = (svc or {}).get("spec") or {}
            sport = next((p for p in svc_spec.get("ports") or [] if p.get("port") == port), None)
            external = svc_spec.get("type") == "ExternalName" and svc_spec.get("externalName")
            if external and sport is None and port:
                sport = {"name": "", "port": port}  # ExternalName Services need not list their ports
            if svc is None:
                problems.append(("BackendNotFound", f"backendRef Service {ns}/{name} does not exist"))
            elif sport is None:
                problems.append(("BackendNotFound", f"backendRef Service {ns}/{name} has no port {port}"))
            elif external:
                endpoints = ((str(svc_spec["externalName"]), int(port)),)
            else:
                eps = []
                for sl in idx.slices.get((ns, name), []):
                    ep_port = next((p.get("port") for p in sl.get("ports") or []
                                    if (p.get("name") or "") == (sport.get("name") or "")), None)
                    if ep_port is None:
                        continue
                    for ep in sl.get("endpoints") or []:
                        if (ep.get("conditions") or {}).get("ready") is False:
                            continue
                        eps.extend((a, int(ep_port)) for a in ep.get("addresses") or [])
                endpoints = tuple(eps)
            if endpoints is not None and tls is not None:
                usable, backend_tls = tls.tls_for(ns, name, sport.get("name") or "")
                if not usable:
                    endpoints = None  # a policy that cannot be honoured: 500, never plaintext
        if weight > 0:
            backends.append(Backend(weight, endpoints, backend_tls))
    return tuple(backends), problems


def _route_rules(idx: _Index, route: Mapping, hostnames: list[str], tls: _BackendTLSContext) -> list[Rule]:
    meta = _meta(route)
    order_base = (str(meta.get("creationTimestamp") or ""), f"{meta.get('namespace')}/{meta.get('name')}")
    rules = []
    for ri, rule in enumerate((route.get("spec") or {}).get("rules") or [{}]):
        backends, _ = _resolve_backends(idx, route, rule, tls)
        for mi, m in enumerate(rule.get("matches") or [{}]):
            path = m.get("path") or {}
            ptype = path.get("type") or "PathPrefix"
            if ptype not in ("PathPrefix", "Exact"):
                continue  # RegularExpression is not supported: never matches
            headers = tuple(
                ((h.get("name") or "").lower(), h.get("value") or "")
                for h in m.get("headers") or [] if (h.get("type") or "Exact") == "Exact"
            )
            rules.append(Rule(
                hostnames=tuple(hostnames), path_type=ptype, path=path.get("value") or "/",
                method=m.get("method"), headers=headers, backends=backends,
                order=order_base + (ri, mi),
            ))
    return rules


def _route(idx: _Index, route: Mapping, owned: Mapping[tuple[str, str], list[_ListenerState]],
           controller: str, backend_tls: Mapping[tuple[str, str], _BackendTLSContext],
           services_used: dict[tuple[str, str], set[tuple[str, str]]]) -> list[dict]:
    """Attach one HTTPRoute; return its status.parents entries for our Gateways.

    ``services_used`` collects, per Gateway, the Services its attached routes send to
    (the Gateways that are ancestors of a BackendTLSPolicy).
    """
    meta = _meta(route)
    rns, gen = meta.get("namespace") or "", _gen(route)
    spec = route.get("spec") or {}
    route_hosts = spec.get("hostnames") or []
    problems = []
    for rule in spec.get("rules") or []:
        problems += _resolve_backends(idx, route, rule)[1]
    parents = []
    for pref in spec.get("parentRefs") or []:
        group, kind = pref.get("group", GW_GROUP), pref.get("kind", "Gateway")
        gw_key = (pref.get("namespace") or rns, pref.get("name") or "")
        if group != GW_GROUP or kind != "Gateway" or gw_key not in owned:
            continue
        candidates = [
            ls for ls in owned[gw_key]
            if (pref.get("sectionName") in (None, ls.name)) and (pref.get("port") in (None, ls.port))
        ]
        attached = []
        reason, msg = "NoMatchingParent", "no listener matches the parentRef's sectionName/port"
        if candidates:
            reason, msg = "NotAllowedByListeners", "no listener allows routes from this namespace or kind"
        for ls in candidates:
            if not ls.kinds or not _namespace_allowed(idx, ls, gw_key[0], rns):
                continue
            eff = _intersect_hostnames(ls.hostname, route_hosts)
            if eff is None:
                if reason == "NotAllowedByListeners":
                    reason, msg = "NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames"
                continue
            attached.append((ls, eff))
        for ls, eff in attached:
            ls.attached += 1
            ls.rules.extend(_route_rules(idx, route, eff, backend_tls[gw_key]))
        if attached:
            services_used.setdefault(gw_key, set()).update(
                (ref.get("namespace") or rns, ref.get("name") or "")
                for rule in spec.get("rules") or [] for ref in rule.get("backendRefs") or []
                if (ref.get("group") or "") == "" and (ref.get("kind") or "Service") == "Service")
        conds = [_cond("Accepted", True, "Accepted", "route is accepted", gen)] if attached else [
            _cond("Accepted", False, reason, msg, gen)]
        if problems:
            conds.append(_cond("ResolvedRefs", False, problems[0][0], "; ".join(m for _, m in problems), gen))
        else:
            conds.append(_cond("ResolvedRefs", True, "ResolvedRefs", "all references are resolved", gen))
        ref_out = {"group": group, "kind": kind}
        ref_out.update({k: v for k, v in pref.items() if k not in ("group", "kind")})
        parents.append({"parentRef": ref_out, "controllerName": controller, "conditions": conds})
    return parents
