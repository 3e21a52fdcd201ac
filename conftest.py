# Nothing here: the plugin (mtls_conformance/plugin.py) registers
# the fixtures. This file marks the rootdir of a clone for the project's own tests.
