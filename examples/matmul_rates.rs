//! GFLOP/s of the f32 GEMM (the gemm crate) and of the bf16 product (kernels/matmul_bf16.rs)
//! on GPT-2 124M's training shapes at 1,024 tokens, best of 3 each, side by side:
//!
//!     cargo run --release --no-default-features --example matmul_rates
use std::time::Instant;

use ferrotune::kernels::matmul::{gemm_into, View};
use ferrotune::kernels::matmul_bf16::{available, gemm_bf16};

fn main() {
    if !available() {
        println!("this CPU has no AVX512_BF16: nothing to compare");
        return;
    }
    // (M, N, K, rhs transposed): c_attn, mlp c_proj, tied lm_head, a weight gradient, dinp
    for &(m, n, k, tr) in &[(2048usize, 2048usize, 2048usize, false), (1024, 2304, 768, false), (1024, 768, 3072, false), (1024, 50257, 768, true), (768, 2304, 1024, false), (1024, 768, 2304, true)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let rhs = if tr { View::t(&b, k) } else { View::rows(&b, n) };
        let mut c = vec![0f32; m * n];
        let (mut t32, mut t16) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            gemm_into(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0);
            t32 = t32.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm_bf16(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0);
            t16 = t16.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (m * n * k) as f64;
        println!("({m}, {k}) @ ({k}, {n}){}: f32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s", if tr { " (rhs transposed)" } else { "" }, flops / t32 / 1e9, flops / t16 / 1e9);
    }
}
