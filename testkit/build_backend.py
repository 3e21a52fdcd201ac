"""The build backend: setuptools, plus one thing for an editable install (``pip install -e``).

An editable install also puts the clone's root on ``sys.path`` with a ``.pth`` file (what
setuptools itself writes for a src/ layout), so that ``testkit`` (the test tiers' clusters
and the helpers tests/, tools/ and benchmarks/ share), ``tests``, ``tools`` and
``benchmarks`` import by the same names in ``python tools/...`` scripts, from any
directory, as in pytest (which puts the root there too: tests/__init__.py). A wheel never
contains them, and an sdist holds only this file of testkit/ (tests/packaging/test_wheel.py
checks both): they are the project's own tooling, not something a vendor installs.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook is setuptools')

#: The clone's root.
ROOT = Path(__file__).resolve().parents[1]
PTH = "mtls_conformance_clone.pth"


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_file(Path(wheel_directory) / name, PTH, f"{ROOT}\n".encode())
    return name


def _add_file(wheel: Path, name: str, data: bytes) -> None:
    """Rewrite the wheel with one more file, listed in its RECORD as the wheel spec asks."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rewritten = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                content = f"{name},sha256={digest},{len(data)}\n".encode() + content
            dst.writestr(item, content)
        dst.writestr(name, data)
    rewritten.replace(wheel)
