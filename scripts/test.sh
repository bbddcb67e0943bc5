#!/usr/bin/env bash
# Installs ferrotune with its test extras into ./.venv (release build of the Rust core),
# then runs the Rust unit tests (no Python needed) and the whole pytest suite, notebooks
# included. Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip
python -m pip install -e '.[test]'
cargo test --release --no-default-features
python -m pytest "$@"
