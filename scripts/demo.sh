#!/usr/bin/env bash
# Installs ferrotune into ./.venv and runs the main job on embedded defaults: fine-tune a
# small GPT-2 on the packaged Chinese->English sample, print the loss before/after and
# sample translations. No model hub, no downloads besides the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip
python -m pip install -e '.[notebook]'
python -m ferrotune.demo "$@"
