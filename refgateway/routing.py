"""Request-time decisions over a translated ``Port``: pure functions, no I/O.

Listener selection (by SNI or, on HTTP ports, by Host), misdirected-request
detection (421) and HTTPRoute rule precedence live here so that the data plane only
moves bytes and these rules can be unit-tested directly.
"""

from __future__ import annotations

import random
from typing import Sequence

from ._plan import Backend, Listener, Port, Rule, host_matches, host_rank

__all__ = ["host_matches_listener", "select_listener", "misdirected", "select_rule", "pick_endpoint", "split_host"]


def split_host(value: str | None) -> str:
    """Host header -> lowercase hostname without port (IPv6 brackets kept)."""
    if not value:
        return ""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_matches_listener(ls: Listener, host: str) -> bool:
    return host_matches(ls.hostname, host)


def select_listener(listeners: Sequence[Listener], name: str) -> Listener | None:
    """Most specific listener for a name: exact, then longest wildcard, then no hostname."""
    matching = [ls for ls in listeners if host_matches(ls.hostname, name)]
    return min(matching, key=lambda ls: host_rank(ls.hostname), default=None)


def misdirected(port: Port, sni_listener: Listener, host: str) -> bool:
    """True when another listener on the port matches Host at least as specifically.

    That listener may have different TLS (certificate or client validation) from the
    one the handshake used, so serving the request would bypass it: answer 421.
    """
    best = select_listener(port.listeners, host)
    if best is None or best.name == sni_listener.name:
        return False
    if not host_matches(sni_listener.hostname, host):
        return True
    return host_rank(best.hostname) <= host_rank(sni_listener.hostname)


def _path_ok(rule: Rule, path: str) -> bool:
    path = path.split("?", 1)[0] or "/"
    if rule.path_type == "Exact":
        return path == rule.path
    prefix = rule.path.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def _rule_key(rule: Rule, host: str) -> tuple:
    hrank = min((host_rank(h) for h in rule.hostnames if host_matches(h, host)), default=(2, 0))
    prank = (0, -len(rule.path)) if rule.path_type == "Exact" else (1, -len(rule.path.rstrip("/")))
    return (hrank, prank, rule.method is None, -len(rule.headers), rule.order)


def select_rule(rules: Sequence[Rule], *, host: str, path: str, method: str,
                headers: dict[str, str]) -> Rule | None:
    best = None
    for rule in rules:
        if rule.hostnames and not any(host_matches(h, host) for h in rule.hostnames):
            continue
        if not _path_ok(rule, path):
            continue
        if rule.method and rule.method != method:
            continue
        if any(headers.get(k) != v for k, v in rule.headers):
            continue
        if best is None or _rule_key(rule, host) < _rule_key(best, host):
            best = rule
    return best


def pick_endpoint(backends: Sequence[Backend], rng: random.Random) -> tuple[int, tuple[str, int] | None, Backend | None]:
    """Weighted choice: (status if no endpoint can be used, endpoint, the backend chosen)."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return 500, None, None
    n = rng.uniform(0, total)
    for b in backends:
        n -= b.weight
        if n <= 0:
            break
    if b.endpoints is None:
        return 500, None, b
    if not b.endpoints:
        return 503, None, b
    return 0, rng.choice(b.endpoints), b
