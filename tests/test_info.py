"""`python -m ferrotune.info` / `ferrotune.show_config()`: what a bug report needs."""

import os
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


def test_config_names_what_runs_the_f32_products():
    assert config()["matmul"] == "the gemm crate"
    # FERROTUNE_CPU=avx2 on a CPU with AVX-512 hands the products to ferrotune's AVX2 kernel (the
    # gemm crate would take its AVX-512 path); where AVX2 is the best tier, the gemm crate keeps them
    code = "from ferrotune.info import config; print(config()['matmul'])"
    env = {**os.environ, "FERROTUNE_CPU": "avx2"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    forced = ferrotune.cpu_isa().startswith("avx512")
    assert run.stdout.strip() == ("ferrotune's AVX2 kernel (the avx2 tier forced on an AVX-512 CPU)" if forced else "the gemm crate")
