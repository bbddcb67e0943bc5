#!/usr/bin/env bash
# Builds what users install without a Rust toolchain, into dist/:
#   ferrotune-<v>.tar.gz                                  the sdist
#   ferrotune-<v>-cp39-abi3-manylinux_2_17_x86_64...whl   CPython >= 3.9, glibc >= 2.17
#   ferrotune-<v>-cp39-abi3-manylinux_2_17_aarch64...whl  the same for 64-bit ARM
# The wheels are built from the unpacked sdist (so the sdist is known to build), linked with
# zig (PyPI's ziglang) against glibc 2.17's symbols, stripped, then checked with auditwheel.
# The CPU tier is picked at run time, so one x86_64 wheel serves AVX-512, AVX2 and older CPUs.
#
# Usage: bash scripts/build_wheels.sh [x86_64] [aarch64]   (both when none is named)
# Needs: cargo + rustup (the aarch64 target is added here), python3; the build tools go into
# .venv-build. Incremental: the cargo target dir is target/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(x86_64 aarch64)
for arch in "${arches[@]}"; do
    case "$arch" in
        x86_64 | aarch64) ;;
        *) echo "build_wheels.sh: unknown architecture '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
    esac
done

[ -x .venv-build/bin/python ] || python3 -m venv .venv-build
.venv-build/bin/python -m pip install -q --upgrade pip
# the versions these wheels were checked with (a newer zig can change what links)
.venv-build/bin/python -m pip install -q 'maturin>=1.9.4,<2' 'ziglang==0.17.1' 'auditwheel>=6,<7'
maturin=.venv-build/bin/maturin

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# the sdist has no .git: the wheels carry the commit they were built from
FERROTUNE_BUILD_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
export FERROTUNE_BUILD_COMMIT
export CARGO_TARGET_DIR=$PWD/target/wheels

mkdir -p dist
rm -f dist/ferrotune-"$version".tar.gz
for arch in "${arches[@]}"; do rm -f dist/ferrotune-"$version"-*_"$arch".whl; done
start=$SECONDS
$maturin sdist --out dist
sdist=dist/ferrotune-$version.tar.gz
src=target/wheels/sdist/ferrotune-$version
# The sdist's entries all carry one fixed mtime and cargo rebuilds by mtime: copy into $src
# only the files whose bytes changed (they get a new mtime), delete the ones that are gone.
python3 - "$sdist" "$src" <<'EOF'
import pathlib, shutil, sys, tarfile, tempfile
sdist, dst = sys.argv[1], pathlib.Path(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp, tarfile.open(sdist) as tar:
    tar.extractall(tmp, filter="data")
    new = pathlib.Path(tmp) / dst.name
    fresh = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    for rel in fresh:
        d = dst / rel
        if not d.is_file() or d.read_bytes() != (new / rel).read_bytes():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(new / rel, d)
    for p in [p for p in dst.rglob("*") if p.is_file()] if dst.exists() else []:
        if p.relative_to(dst) not in fresh:
            p.unlink()
EOF
echo "sdist: $sdist ($(du -h "$sdist" | cut -f1))"

for arch in "${arches[@]}"; do
    triple=$arch-unknown-linux-gnu
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        if ! rustup target add "$triple"; then
            echo "SKIPPED the $arch wheel: rustup cannot add the $triple target here" >&2
            continue
        fi
    fi
    t0=$SECONDS
    # PATH: maturin finds the zig that ziglang installed in .venv-build
    (cd "$src" && PATH=$OLDPWD/.venv-build/bin:$PATH $OLDPWD/$maturin build --release --strip \
        --zig --compatibility manylinux2014 --target "$triple" --out "$OLDPWD/dist")
    wheel=$(ls dist/ferrotune-"$version"-cp39-abi3-manylinux*_"$arch".whl)
    echo "wheel: $wheel ($(du -h "$wheel" | cut -f1), built in $((SECONDS - t0)) s)"
    # auditwheel reads the ELF files: the tag must be manylinux_2_17 (manylinux2014)
    .venv-build/bin/auditwheel show "$wheel" | tee target/wheels/auditwheel-"$arch".txt
    grep -q "manylinux_2_17_$arch" target/wheels/auditwheel-"$arch".txt ||
        { echo "build_wheels.sh: $wheel is not manylinux_2_17 compliant" >&2; exit 1; }
done
echo "build_wheels.sh: done in $((SECONDS - start)) s"
ls -l dist/
