//! GFLOP/s of the f32 GEMMs side by side, best of 5 each, on GPT-2 124M's training shapes at
//! 1,024 tokens and SmolLM2-135M's at 180 (chat SFT, batch 4 x ~45 tokens): the gemm crate
//! (called directly), on CPUs with AVX2 + FMA our AVX2 kernel (kernels/matmul_avx2.rs, what
//! FERROTUNE_CPU=avx2 runs on a CPU with AVX-512) and, on CPUs with AVX512_BF16, the bf16
//! product (kernels/matmul_bf16.rs). First it measures the machine's FMA peak: every thread
//! runs independent chains of 8-lane FMAs (AVX2) that never touch memory.
//!
//!     cargo run --release --no-default-features --example matmul_rates
use std::time::Instant;

use rayon::prelude::*;

use ferrotune::kernels::matmul::View;
use ferrotune::kernels::{matmul_avx2, matmul_bf16};

/// (M, N, K, rhs transposed); the attention products run one head per thread (serial)
const SHAPES: [(&str, usize, usize, usize, bool); 16] = [
    ("square", 2048, 2048, 2048, false),
    ("gpt2 c_attn", 1024, 2304, 768, false),
    ("gpt2 mlp c_proj", 1024, 768, 3072, false),
    ("gpt2 lm_head", 1024, 50257, 768, true),
    ("gpt2 weight grad", 768, 2304, 1024, false),
    ("gpt2 dinp", 1024, 768, 2304, true),
    ("smollm2 qkv", 180, 960, 576, true),
    ("smollm2 gate_up", 180, 3072, 576, true),
    ("smollm2 down", 180, 576, 1536, true),
    ("smollm2 lm_head", 180, 49152, 576, true),
    ("smollm2 gate_up grad", 3072, 576, 180, false),
    ("gpt2 lora A (r=8)", 1024, 8, 768, true),
    ("gpt2 lora B (r=8)", 1024, 2304, 8, true),
    ("gpt2 lora dA (r=8)", 8, 768, 1024, false),
    ("attn scores (serial)", 256, 256, 64, true),
    ("attn values (serial)", 256, 64, 256, false),
];

/// GFLOP/s of 8-lane FMAs on every rayon thread at once (best of 5), or None off x86-64 or
/// without AVX2 + FMA.
fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        const STEPS: usize = 20_000_000;
        /// 12 independent chains: more than FMA latency x ports, so both ports stay busy.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains() -> f32 {
            let mut acc = [_mm256_set1_ps(1.0); 12];
            let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..STEPS {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a)));
            out.iter().sum()
        }
        let threads = rayon::current_num_threads();
        let flops = (threads * STEPS * 12 * 8 * 2) as f64;
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                // SAFETY: AVX2 and FMA are present (checked above)
                let s: f32 = (0..threads).into_par_iter().map(|_| unsafe { chains() }).sum();
                std::hint::black_box(s);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        return Some(flops / best / 1e9);
    }
    #[allow(unreachable_code)]
    None
}

fn best_of<F: FnMut()>(mut f: F) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let (avx2, bf16) = (matmul_avx2::available(), matmul_bf16::available());
    let threads = rayon::current_num_threads();
    println!("kernel tier: {}, {threads} threads", ferrotune::kernels::cpu::isa_name());
    if let Some(peak) = fma_peak() {
        println!("AVX2 FMA peak (8-lane FMAs on {threads} threads): {peak:.0} GFLOP/s");
    }
    for &(name, m, n, k, tr) in &SHAPES {
        let parallel = !name.ends_with("(serial)");
        let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let rhs = if tr { View::t(&b, k) } else { View::rows(&b, n) };
        // rhs element (kk, col) at kk * rb + col * cb
        let (rb, cb) = if tr { (1, k as isize) } else { (n as isize, 1) };
        let mut c = vec![0f32; m * n];
        // SAFETY: a is (M, K) row-major, b holds the (K, N) operand the strides address, c is (M, N)
        let crate_rate = best_of(|| unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), cb, rb, 1.0, 1.0, false, false, false, par)
        });
        let flops = 2.0 * (m * n * k) as f64;
        let mut line = format!("gemm crate {:>4.0}", flops / crate_rate / 1e9);
        if avx2 {
            let t = best_of(|| matmul_avx2::gemm_f32(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0, parallel));
            line += &format!(", avx2 kernel {:>4.0}", flops / t / 1e9);
        }
        if bf16 {
            let t = best_of(|| matmul_bf16::gemm_bf16(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0));
            line += &format!(", bf16 {:>4.0}", flops / t / 1e9);
        }
        let shape = format!("({m}, {k}) @ ({k}, {n}){}", if tr { " (rhs transposed)" } else { "" });
        println!("{name:<22} {shape:<42} {line} GFLOP/s");
    }
}
