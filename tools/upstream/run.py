"""Run the upstream Gateway API conformance suite (Go, v1.7.0) against a cluster.

    python tools/upstream/run.py refgateway [--fault NAME]... [--out DIR]
    python tools/upstream/run.py cluster --kubeconfig K --gateway-class C --supported-features F,...

What it does and how it judges the suite: testkit/upstream.py (``testkit.upstream``,
the library the tools and the tiers' tests share).
"""

import sys

from testkit.upstream import main

if __name__ == "__main__":
    sys.exit(main())
