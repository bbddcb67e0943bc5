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


def test_package_metadata_is_single_sourced():
    """The installed distribution's version is Cargo.toml's (pyproject's is dynamic), and the
    licence covers the packaged CC-CEDICT sample too."""
    from importlib import metadata

    import ferrotune

    assert metadata.version("ferrotune") == ferrotune.__version__
    assert metadata.metadata("ferrotune")["License-Expression"] == "Apache-2.0 AND CC-BY-SA-4.0"
