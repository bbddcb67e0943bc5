"""`python -m ferrotune.info` / `ferrotune.show_config()`: what a bug report needs."""

import re
import subprocess
import sys

import ferrotune
from ferrotune.info import config


def test_config_names_build_tier_and_packages():
    facts = config()
    assert facts["ferrotune"] == ferrotune.__version__
    assert facts["cpu tier"].split()[0] == ferrotune.cpu_isa()
    assert int(facts["threads"].split()[0]) >= 1
    # profile and target triple of the build, the numerics crates from Cargo.lock
    assert re.fullmatch(r"(release|debug) \w+-\w+-\w+-\w+", facts["build"]), facts["build"]
    assert re.search(r"gemm \d+\.\d+\.\d+", facts["crates"]) and "tokenizers" in facts["crates"]
    assert facts["rustc"].startswith("rustc ")
    assert facts["numpy"][0].isdigit()


def test_module_prints_one_line_per_fact():
    run = subprocess.run([sys.executable, "-W", "error", "-m", "ferrotune.info"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    keys = [line.split("  ")[0].strip() for line in run.stdout.splitlines()]
    assert keys == list(config()), run.stdout


def test_show_config_prints(capsys):
    ferrotune.show_config()
    out = capsys.readouterr().out
    assert "ferrotune  " in out and ferrotune.cpu_isa() in out
