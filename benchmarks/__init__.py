"""Measurements (not installed): scripts run as ``python benchmarks/...``. A package only so that
tests import them by one name each (``benchmarks.flakes``); what they share lives in testkit."""
