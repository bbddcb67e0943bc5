//! GFLOP/s of the f32 GEMM (the gemm crate) and, on CPUs with AVX512_BF16, of the bf16
//! product (kernels/matmul_bf16.rs), best of 3 each, side by side, on GPT-2 124M's training
//! shapes at 1,024 tokens and SmolLM2-135M's at 180 (chat SFT, batch 4 x ~45 tokens):
//!
//!     cargo run --release --no-default-features --example matmul_rates
use std::time::Instant;

use ferrotune::kernels::matmul::{gemm_into, View};
use ferrotune::kernels::matmul_bf16::{available, gemm_bf16};

/// (M, N, K, rhs transposed)
const SHAPES: [(&str, usize, usize, usize, bool); 11] = [
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
];

fn main() {
    let bf16 = available();
    println!("kernel tier: {}{}", ferrotune::kernels::cpu::isa_name(), if bf16 { "" } else { " (no AVX512_BF16: f32 only)" });
    for &(name, m, n, k, tr) in &SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let rhs = if tr { View::t(&b, k) } else { View::rows(&b, n) };
        let mut c = vec![0f32; m * n];
        let (mut t32, mut t16) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            gemm_into(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0);
            t32 = t32.min(t.elapsed().as_secs_f64());
            if bf16 {
                let t = Instant::now();
                gemm_bf16(&mut c, n, m, n, k, View::rows(&a, k), rhs, false, 1.0);
                t16 = t16.min(t.elapsed().as_secs_f64());
            }
        }
        let flops = 2.0 * (m * n * k) as f64;
        let shape = format!("({m}, {k}) @ ({k}, {n}){}", if tr { " (rhs transposed)" } else { "" });
        let rate16 = if bf16 { format!(", bf16 {:.0} GFLOP/s", flops / t16 / 1e9) } else { String::new() };
        println!("{name:<22} {shape:<42} f32 {:.0} GFLOP/s{rate16}", flops / t32 / 1e9);
    }
}
