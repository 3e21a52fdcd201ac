"""The project's tools (not installed): scripts run as ``python tools/...``. A package only so
that tests import them by one name each (``tools.mutants``); what the tools share lives in testkit."""
