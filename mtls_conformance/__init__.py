"""mtls_conformance: the conformance harness for mutual TLS on Gateway API implementations.

The public API, for a vendor's own tests (each module lists its names in ``__all__``):
``manifests`` (builders of the upstream schema), ``target`` (the Target a test drives),
``client`` (a deployed Gateway's client), ``expect`` (judges and waits), ``probe``
(one TLS request and its outcome), ``profiles``, ``features``, ``processes``,
``hookspecs`` (hooks other plugins implement), ``echo`` (the echo backend) and the
fixtures of ``fixtures`` (``pki``, ``echo``, ``backends``, ``nginx``, ``guide``, ``chains``), which the
plugin registers.

Internal, free to change: modules whose names start with ``_``, and ``plugin`` (the
pytest11 entry point), ``outputs``, ``report``, ``flags``, ``matrix``, ``local`` and
``kubernetes`` (the targets, reached through the ``mtls_target`` fixture), ``__main__``.
"""

#: The modules a vendor's tests may import (tests/unit/test_dependencies.py holds the
#: scenarios to them, as the examples vendors copy).
PUBLIC_MODULES = ("manifests", "target", "client", "expect", "probe", "profiles", "features", "processes",
                  "hookspecs", "echo", "fixtures.pki", "fixtures.echo", "fixtures.backends", "fixtures.nginx",
                  "fixtures.guide", "fixtures.chains")
