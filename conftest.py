# Nothing here: the plugin (conformance/plugin.py, installed as mtls_conformance) registers
# the fixtures. This file marks the rootdir of a clone for the project's own tests.
