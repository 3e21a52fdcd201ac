# The fixtures in fixtures/ are plugins of this checkout: the harness (conformance/) is
# installed and loaded through its pytest11 entry point, the fixtures come with the repo.
pytest_plugins = ["fixtures.pki", "fixtures.echo", "fixtures.backends", "fixtures.nginx"]
