#!/usr/bin/env bash
# Coverage-guided fuzzing of ferrotune's readers (libFuzzer through libfuzzer-sys, built
# with the stable toolchain: the sanitizer-coverage instrumentation comes from stable
# `-C passes=sancov-module -C llvm-args=...` flags, so neither nightly nor cargo-fuzz is
# needed). Rust targets (fuzz/fuzz_targets/): safetensors, gguf, tokenizer, config; the
# Python chat-template renderer (ferrotune.chat.render) by fuzz/chat_template.py with
# atheris (libFuzzer for Python; in the `test` extra).
#
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 60 s, every target)
#   scripts/test.sh runs `bash scripts/fuzz.sh 60`; for a longer campaign, e.g.
#   `bash scripts/fuzz.sh 3600` (an hour per target) or `bash scripts/fuzz.sh 600 gguf`.
#   Corpora grow in fuzz/corpus/<target>/ (git-ignored; seeded from tests/fixtures on every
#   run, kept between runs, delete it to start over).
#
# Fails (non-zero exit) on any crash, timeout (-timeout=10 s per input) or out-of-memory
# (-rss_limit_mb=2048); the input is left in
# fuzz/artifacts/<target>/. Reproduce one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/crash-...
#   .venv/bin/python fuzz/chat_template.py fuzz/artifacts/chat_template/crash-...
# then turn it into a unit test beside the code that crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
# A fixed seed keeps the test command's runs alike from one machine to the next (how far a
# run gets still depends on the machine's speed); FUZZ_SEED=0 lets libFuzzer pick one.
FUZZ_SEED="${FUZZ_SEED:-1}"
shift || true
ALL_TARGETS=(safetensors gguf tokenizer config chat_template)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

HOST="$(rustc -vV | sed -n 's/^host: //p')"
# What cargo-fuzz passes (minus -Zsanitizer=address, which needs nightly): inline 8-bit
# edge counters + PC table (libFuzzer's coverage), comparison tracing (lets libFuzzer learn
# magic numbers and JSON keys), debug assertions and overflow checks (so arithmetic bugs
# panic instead of wrapping).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers"
# --target keeps these flags off build scripts and proc-macros (as cargo-fuzz does).
BIN="fuzz/target/$HOST/release"
t0=$(date +%s)
(cd fuzz && cargo build --release --locked --target "$HOST" --bins)
echo "fuzz: instrumented build took $(( $(date +%s) - t0 )) s"

python3 scripts/fuzz_seeds.py fuzz/corpus

export RUST_BACKTRACE=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PY="${FUZZ_PYTHON:-python3}"
[ -z "${FUZZ_PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
if [[ " ${TARGETS[*]} " == *" chat_template "* ]] && ! "$PY" -c "import atheris, ferrotune.chat" 2>/dev/null; then
  echo "fuzz: chat_template needs atheris and ferrotune in $PY (pip install -e '.[test]')" >&2
  exit 1
fi
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  log="fuzz/logs/$t.log"
  mkdir -p fuzz/logs "fuzz/artifacts/$t" "fuzz/corpus/$t"
  if [ "$t" = chat_template ]; then
    cmd=("$PY" fuzz/chat_template.py)
  else
    cmd=("$BIN/$t" -max_len=262144)
  fi
  set +e
  "${cmd[@]}" "fuzz/corpus/$t" -seed="$FUZZ_SEED" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
  line="${runs:-?} runs, ${speed:-?} exec/s, corpus ${corp:-?} (files/bytes), cov ${cov:-?}, ft ${ft:-?}"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    line="$line  FAILED (rc $rc): see $log and fuzz/artifacts/$t/"
    grep -E 'ERROR: libFuzzer|panicked|SUMMARY|Test unit written|Falsifying|Error' "$log" | head -8 >&2 || true
  fi
  summary+=("fuzz[$t] ${SECONDS_PER_TARGET}s: $line")
  echo "${summary[-1]}"
done
echo "fuzz: total $(( $(date +%s) - t0 )) s"
printf '%s\n' "${summary[@]}" >fuzz/logs/summary.txt
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
