"""refgateway: the bundled reference Gateway API implementation.

A real (small) gateway that runs as a local process, reads manifests from a
directory and serves HTTP/HTTPS on loopback ports, following the file contract in
docs/local-target.md. It exists so the conformance harness has a correct target out of
the box and, with ``--fault`` flags, deliberately broken ones.

The package must never import the harness (``mtls_conformance``) or its fixtures.
Run it with ``python -m refgateway --config-dir D --state-dir S``.
"""

from .faults import FAULTS
from .translator import DEFAULT_CONTROLLER, translate

__all__ = ["DEFAULT_CONTROLLER", "FAULTS", "translate"]
__version__ = "0.1.0"
