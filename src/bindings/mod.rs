//! The only place that uses pyo3/numpy: one file per Python class, `errors.rs` for the
//! exception classes, `convert.rs` for numpy <-> Rust buffers.

pub mod convert;
pub mod errors;
pub mod generate;
pub mod gguf;
pub mod io;
pub mod model;
pub mod optimizer;
pub mod tokenizer;

use pyo3::prelude::*;

use errors::{FerrotuneError, PyFtResult};

/// Runs long Rust work with the GIL released; a Rust panic becomes a FerrotuneError
/// instead of taking the interpreter down.
pub(crate) fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> PyFtResult<T> + Send) -> PyResult<T> {
    let out = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(r) => r.map_err(PyErr::from),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(FerrotuneError::new_err(format!("internal error in ferrotune's Rust core: {msg}")))
        }
    }
}

/// The instruction set ferrotune's own kernels dispatch to on this CPU: "avx512+bf16",
/// "avx512", "avx2", "neon" (aarch64) or "generic" (FERROTUNE_CPU=avx2 or =generic forces a
/// lower tier).
#[pyfunction]
fn cpu_isa() -> &'static str {
    crate::kernels::cpu::isa_name()
}

/// How this extension was built and what it runs with, for bug reports: version, git
/// commit, cargo profile and target, compiler, the numerics crates' versions, the CPU tier,
/// what runs the f32 products and the worker threads (`ferrotune.show_config()` prints it).
#[pyfunction]
fn build_info() -> std::collections::BTreeMap<&'static str, String> {
    [
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("commit", env!("FERROTUNE_COMMIT").to_string()),
        ("profile", env!("FERROTUNE_PROFILE").to_string()),
        ("target", env!("FERROTUNE_TARGET").to_string()),
        ("rustc", env!("FERROTUNE_RUSTC").to_string()),
        ("crates", env!("FERROTUNE_CRATES").to_string()),
        ("cpu_isa", crate::kernels::cpu::isa_name().to_string()),
        ("matmul", crate::kernels::matmul::engine().to_string()),
        ("threads", rayon::current_num_threads().to_string()),
    ]
    .into_iter()
    .collect()
}

/// Lets (or stops) large f32 products run with bf16 operands and f32 sums; returns false,
/// changing nothing, on a CPU without AVX512_BF16.
#[pyfunction]
fn set_bf16_products(on: bool) -> bool {
    crate::kernels::matmul::set_bf16_products(on)
}

/// Whether large f32 products run with bf16 operands now.
#[pyfunction]
fn bf16_products() -> bool {
    crate::kernels::matmul::bf16_products()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<optimizer::PyAdamW>()?;
    m.add_class::<tokenizer::PyTokenizer>()?;
    m.add_class::<generate::PyGeneration>()?;
    m.add_function(wrap_pyfunction!(generate::process_logits, m)?)?;
    m.add_function(wrap_pyfunction!(io::load_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(io::save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(gguf::read_gguf_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(gguf::read_gguf_tensor_infos, m)?)?;
    m.add_function(wrap_pyfunction!(gguf::load_gguf_tokenizer, m)?)?;
    m.add_function(wrap_pyfunction!(gguf::load_gguf, m)?)?;
    m.add_function(wrap_pyfunction!(gguf::save_gguf, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_isa, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(set_bf16_products, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_products, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
