"""Command line: ``python -m refgateway --config-dir D --state-dir S``.

``main(argv)`` returns an exit status instead of exiting so tests can call it.
Unusable arguments produce one line on stderr naming the argument and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import tempfile
from pathlib import Path

from .faults import FAULTS, UnknownFault, check_faults
from .translator import DEFAULT_CONTROLLER

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"refgateway: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m refgateway",
                description="Reference Gateway API implementation serving on 127.0.0.1 (see docs/refgateway.md).",
                epilog="As a Kubernetes controller: python -m refgateway controller --help")
    p.add_argument("--config-dir", type=Path, help="directory of manifests to watch (docs/local-target.md)")
    p.add_argument("--state-dir", type=Path, help="directory for ready, status/, ports/ and errors.yaml")
    p.add_argument("--controller-name", default=DEFAULT_CONTROLLER,
                   help=f"GatewayClass controllerName to own (default {DEFAULT_CONTROLLER})")
    p.add_argument("--system-ca-bundle", type=Path, metavar="FILE", default=None,
                   help="PEM file of the roots that BackendTLSPolicy wellKnownCACertificates: System trusts "
                        "(default: this machine's default verify paths); read when a backend context is built")
    p.add_argument("--listen-on-listener-ports", action="store_true",
                   help="serve each listener on 127.0.0.1 at its own port (e.g. 8443), as a guide's curl "
                        "commands expect, instead of a free port written to state_dir/ports")
    p.add_argument("--fault", action="append", default=[], metavar="NAME",
                   help="enable a deliberate deviation; repeatable; see --list-faults")
    p.add_argument("--max-client-chain-depth", type=int, default=None, metavar="N",
                   help="intermediate CAs allowed between a client certificate and a trusted root "
                        "(OpenSSL verify depth; default 4, as NGINX Gateway Fabric)")
    p.add_argument("--list-faults", action="store_true", help="print the fault names and exit")
    add_timeout_arguments(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def add_timeout_arguments(p: argparse.ArgumentParser) -> None:
    """Client connection timeouts and --apply-delay, the same in local and controller mode."""
    p.add_argument("--apply-delay", type=_seconds, default=None, metavar="SECONDS",
                   help="serve each changed configuration SECONDS after reading it, and write its status only "
                        "then: a slow but correct gateway, for testing a harness's consistency window")
    p.add_argument("--handshake-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="close a client connection whose TLS handshake is not done after SECONDS (default 10)")
    p.add_argument("--idle-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="close a client connection that has not sent a complete request SECONDS after the "
                        "handshake or its last response (default 60)")


def timeouts(args: argparse.Namespace):
    from ._edge import Timeouts

    return Timeouts(handshake=args.handshake_timeout, idle=args.idle_timeout)


def _check_dirs(config_dir: Path, state_dir: Path) -> str | None:
    if not config_dir.is_dir():
        return f"--config-dir {config_dir}: not an existing directory"
    if not os.access(config_dir, os.R_OK | os.X_OK):
        return f"--config-dir {config_dir}: not readable"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".probe"):
            pass
    except OSError as exc:
        return f"--state-dir {state_dir}: not a writable directory ({exc.strerror or exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["controller"]:  # controller mode: objects and status live in a Kubernetes API server
        return controller_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_faults:
        width = max(map(len, FAULTS))
        for name, text in FAULTS.items():
            print(f"{name:<{width}}  {text}")
        return 0
    try:
        faults = check_faults(args.fault)
    except UnknownFault as exc:
        print(f"refgateway: error: {exc}", file=sys.stderr)
        return 2
    if args.config_dir is None or args.state_dir is None:
        print("refgateway: error: --config-dir and --state-dir are required", file=sys.stderr)
        return 2
    config_dir, state_dir = args.config_dir.resolve(), args.state_dir.resolve()
    problem = _check_dirs(config_dir, state_dir)
    if problem:
        print(f"refgateway: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s refgateway[%(process)d] %(levelname)s %(message)s")
    from ._server import LocalGateway  # imports pyOpenSSL; keep --help and --list-faults fast

    bundle = args.system_ca_bundle.resolve() if args.system_ca_bundle else None
    if bundle is not None and not bundle.parent.is_dir():
        print(f"refgateway: error: --system-ca-bundle {args.system_ca_bundle}: its directory does not exist",
              file=sys.stderr)
        return 2
    depth = {} if args.max_client_chain_depth is None else {"max_chain_depth": args.max_client_chain_depth}
    if depth and args.max_client_chain_depth < 0:
        print("refgateway: error: --max-client-chain-depth must be 0 or more", file=sys.stderr)
        return 2
    gw = LocalGateway(config_dir, state_dir, controller=args.controller_name, faults=faults, system_ca_bundle=bundle,
                      listener_ports=args.listen_on_listener_ports, **depth)
    gw.timeouts = timeouts(args)
    gw.apply_delay = args.apply_delay or 0.0
    asyncio.run(gw.run())
    return 0


# --------------------------------------------------------------------------- controller mode


def _controller_parser() -> argparse.ArgumentParser:
    from ._kube_addresses import DEFAULT_POOL

    p = _Parser(prog="python -m refgateway controller",
                description="Run refgateway as a Kubernetes controller (see docs/refgateway.md).")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster config)")
    p.add_argument("--context", help="kubeconfig context (default: the current context)")
    p.add_argument("--controller-name", default=DEFAULT_CONTROLLER,
                   help=f"GatewayClass controllerName to own (default {DEFAULT_CONTROLLER})")
    p.add_argument("--system-ca-bundle", type=Path, metavar="FILE", default=None,
                   help="PEM file of the roots that BackendTLSPolicy wellKnownCACertificates: System trusts "
                        "(default: this machine's default verify paths); read when a backend context is built")
    p.add_argument("--fault", action="append", default=[], metavar="NAME",
                   help="enable a deliberate deviation; repeatable; see python -m refgateway --list-faults")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen-address-pool", metavar="CIDR",
                       help=f"give each Gateway its own loopback address from CIDR (default {DEFAULT_POOL}, "
                            "minus 127.0.0.0/24)")
    where.add_argument("--listen-address", metavar="IP",
                       help="bind every Gateway's listeners on IP (in cluster: 0.0.0.0)")
    p.add_argument("--service-namespace", metavar="NS",
                   help="with --listen-address (in cluster: 0.0.0.0): give each Gateway a ClusterIP Service of "
                        "its own in namespace NS (the pod's own), labelled gateway.networking.k8s.io/gateway-name, "
                        "whose ports go to internal ports this process binds; its ClusterIP is the reported "
                        "address. Needs --service-selector")
    p.add_argument("--service-selector", metavar="KEY=VALUE[,...]",
                   help="with --service-namespace: the labels of this controller's pod, the Services' selector")
    p.add_argument("--report-address", metavar="IP",
                   help="with --listen-address: the address to report in Gateway status.addresses "
                        "(e.g. the pod IP); default: the Gateway's spec.addresses, else IP unless unspecified")
    add_timeout_arguments(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def controller_main(argv: list[str]) -> int:
    """``python -m refgateway controller ...``: objects and status live in a Kubernetes API server."""
    from ._kube_addresses import DEFAULT_POOL, AddressPool, parse_selector
    from ._kube_api import KubeError, connect

    args = _controller_parser().parse_args(argv)
    try:
        faults = check_faults(args.fault)
        pool = None
        if args.listen_address:
            try:
                ipaddress.ip_address(args.listen_address)
            except ValueError:
                raise KubeError(f"--listen-address {args.listen_address}: not an IP address") from None
        else:
            try:
                pool = AddressPool(args.listen_address_pool or DEFAULT_POOL)
            except ValueError as exc:
                raise KubeError(f"--listen-address-pool {args.listen_address_pool}: {exc}") from None
        selector = None
        if args.service_namespace or args.service_selector:
            if not args.listen_address:
                raise KubeError("--service-namespace needs --listen-address (in cluster: 0.0.0.0)")
            if not (args.service_namespace and args.service_selector):
                raise KubeError("--service-namespace and --service-selector go together (the Services' namespace "
                                "and the labels of this controller's pod)")
            if args.report_address:
                raise KubeError("--report-address does not go with --service-namespace (each Gateway reports "
                                "its Service's ClusterIP)")
            selector = parse_selector(args.service_selector)
        if args.report_address:
            if not args.listen_address:
                raise KubeError("--report-address needs --listen-address (a pool reports each Gateway's own address)")
            try:
                ipaddress.ip_address(args.report_address)
            except ValueError:
                raise KubeError(f"--report-address {args.report_address}: not an IP address") from None
        bundle = args.system_ca_bundle.absolute() if args.system_ca_bundle else None
        if bundle is not None and not bundle.parent.is_dir():
            raise KubeError(f"--system-ca-bundle {args.system_ca_bundle}: its directory does not exist")
        api = connect(args.kubeconfig, args.context)
    except (UnknownFault, KubeError) as exc:
        print(f"refgateway: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s refgateway[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # our own messages say what failed
    from ._kube import KubeGateway  # imports pyOpenSSL; keep --help fast

    gw = KubeGateway(api, controller=args.controller_name, faults=faults, pool=pool,
                     listen_address=args.listen_address, report_address=args.report_address,
                     system_ca_bundle=bundle, service_namespace=args.service_namespace, service_selector=selector)
    gw.timeouts = timeouts(args)
    gw.apply_delay = args.apply_delay or 0.0
    try:
        asyncio.run(gw.run())
    finally:
        api.close()
    return 0
