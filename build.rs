//! Build facts for bug reports (`ferrotune.show_config()`, `python -m ferrotune.info`):
//! the git commit, the cargo profile and target, the compiler, and the versions of the
//! Rust crates that do the numerics, read from Cargo.lock. Outside a git checkout (an sdist)
//! the commit is $FERROTUNE_BUILD_COMMIT, or "unknown".

use std::path::Path;
use std::process::Command;

/// Crates whose versions a bug report needs.
const CRATES: [&str; 5] = ["gemm", "tokenizers", "safetensors", "rayon", "pyo3"];

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).current_dir(&dir).output().ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    // scripts/build_wheels.sh builds from the unpacked sdist, which has no .git: it passes the commit
    println!("cargo:rerun-if-env-changed=FERROTUNE_BUILD_COMMIT");
    let commit = std::env::var("FERROTUNE_BUILD_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // a new commit (HEAD moves, or the branch it names does) rebuilds these facts
    for name in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={}", Path::new(&dir).join(p).display());
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={}", Path::new(&dir).join(p).display());
        }
    }
    println!("cargo:rerun-if-changed=Cargo.lock");

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());

    let lock = std::fs::read_to_string(Path::new(&dir).join("Cargo.lock")).unwrap_or_default();
    let crates: Vec<String> = CRATES
        .iter()
        .filter_map(|name| locked_version(&lock, name).map(|v| format!("{name} {v}")))
        .collect();

    println!("cargo:rustc-env=FERROTUNE_COMMIT={commit}");
    println!("cargo:rustc-env=FERROTUNE_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    println!("cargo:rustc-env=FERROTUNE_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=FERROTUNE_RUSTC={rustc}");
    println!("cargo:rustc-env=FERROTUNE_CRATES={}", crates.join(", "));
}

/// The version of `name` in Cargo.lock's `[[package]]` entries (the first one listed).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}
