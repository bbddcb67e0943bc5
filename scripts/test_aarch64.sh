#!/usr/bin/env bash
# The Rust tests for 64-bit ARM on an x86_64 machine: cross-compiled with Debian's
# gcc-aarch64-linux-gnu and run under user-mode emulation (qemu-aarch64, cargo's target
# runner), so the NEON tier and everything else is exercised as an aarch64 wheel would run.
# Installs the tools with apt-get when they are missing and this runs as root; without them
# it prints SKIPPED and the reason, and exits 0. Usage: bash scripts/test_aarch64.sh [cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
triple=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

have() { command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; }
if ! have && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null) ||
        echo "test_aarch64.sh: apt-get could not install qemu-user / gcc-aarch64-linux-gnu"
fi
if ! have; then
    echo "SKIPPED aarch64 Rust tests: qemu-aarch64 or aarch64-linux-gnu-gcc is missing" \
        "(apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
    exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    rustup target add "$triple" || { echo "SKIPPED aarch64 Rust tests: rustup cannot add $triple"; exit 0; }
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
start=$SECONDS
cargo test --release --no-default-features --target "$triple" "$@"
echo "test_aarch64.sh: aarch64 tests passed under qemu in $((SECONDS - start)) s"
