"""The hand-written stubs of the Rust module (python/ferrotune/_core.pyi) stay true."""

import subprocess
import sys

import pytest


def test_core_stubs_match_the_extension_module():
    pytest.importorskip("mypy", reason="mypy (a test extra) is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ferrotune._core"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
