//! f32 matrix products on AVX2 + FMA: packed operands and a 6 x 16 microkernel, blocked as
//! in BLIS. They serve the avx2 tier forced on a CPU with AVX-512 (FERROTUNE_CPU=avx2), where
//! the gemm crate would take its AVX-512 path (its per-ISA kernels are private), so that the
//! tier can be developed, tested and measured on any machine. On a CPU whose best tier is AVX2
//! the gemm crate's own AVX2 kernel does the products: it is as fast or faster on every shape
//! measured (benchmarks/RESULTS.md, "AVX2 tier"; `cargo run --release --example matmul_rates`
//! shows both side by side).
//!
//! A 6 x 16 tile of dst lives in 12 ymm registers while K goes by; each step of K loads
//! two vectors of the rhs panel, broadcasts six lhs values and issues 12 FMAs (two FMA
//! ports: 6 cycles per step, the loads fit beside them). The operands are packed so that
//! the microkernel reads both sequentially:
//!   rhs (K, N) -> panels of NR columns: bpack[panel][kk][col]   (one 64-byte line per kk)
//!   lhs (M, K) -> panels of MR rows:    apack[panel][kk][row]
//! Blocking: for each block of NC columns and KC of depth, the (KC, NC) block of rhs is
//! packed once (in parallel; 4 MiB, in L3), then parallel tasks each take a block of at most
//! MC rows x a share of the columns: the task packs its (MC, KC) block of lhs (kept in L2 and
//! reused by the thread's next task when it is the same block) and sweeps NR-column panels
//! (one (KC, NR) panel, 16 KiB, stays in L1 while the rows stream past it).
//!
//! Each element of dst is summed by one task, in the order of K: results do not depend on
//! the number of threads.
//!
//! Shapes: dst (M, N) = lhs (M, K) @ rhs (K, N); operands are strided `View`s, so transposed
//! operands cost no copy beyond the packing every product does anyway.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::cpu::{self, isa, Isa};
use super::matmul::View;
use super::SyncPtr;

/// Rows of a microkernel tile.
const MR: usize = 6;
/// Columns of a microkernel tile (two vectors of 8 lanes).
const NR: usize = 16;
/// Depth of a block of K: a (KC, NR) panel of packed rhs is 16 KiB, half of L1.
const KC: usize = 256;
/// Rows of lhs a task packs, at most: an (MC, KC) block is 144 KiB, inside L2.
const MC: usize = 24 * MR;
/// Columns of rhs packed at once: a (KC, NC) block is 4 MiB, inside L3.
const NC: usize = 256 * NR;
/// The fewest columns a task takes (so that packing its lhs block stays a small cost).
const MIN_TASK_COLS: usize = 16 * NR;

/// Whether this CPU can run these products (AVX2 + FMA).
pub fn available() -> bool {
    cpu::available().contains(&Isa::Avx2)
}

/// Whether the products run here rather than in the gemm crate: the avx2 tier is forced on a
/// CPU whose best tier is AVX-512.
pub fn forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| isa() == Isa::Avx2 && cpu::available()[0] != Isa::Avx2)
}

/// One 64-byte line: packed rhs rows start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// A thread's packing buffers, kept so that the next product reuses the memory (no
/// allocation, no page faults) and the next task of the same lhs block skips packing.
struct Packed {
    /// The rhs block the thread packs for a product it starts.
    rhs: Vec<Line>,
    /// The lhs block of the thread's last task...
    lhs: Vec<f32>,
    /// ...and which it is: (product number, row block, depth block).
    lhs_key: (u64, usize, usize),
}

thread_local! {
    static PACKED: RefCell<Packed> = const { RefCell::new(Packed { rhs: Vec::new(), lhs: Vec::new(), lhs_key: (0, 0, 0) }) };
}

/// Numbers every (product, depth block) so that a thread's packed lhs block is known stale.
static PRODUCTS: AtomicU64 = AtomicU64::new(1);

/// dst (M, N), rows `dst_rs` apart, `=` (or `+=` when `accumulate`) scale * lhs (M, K) @
/// rhs (K, N). `parallel`: split the work across rayon's threads (false for callers that
/// already run one product per thread). Panics unless `available()`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: View<f32>,
    rhs: View<f32>,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    assert!(available(), "gemm_f32 needs AVX2 and FMA");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n, "gemm_f32: dst too small");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (pa, ra, ca) = lhs.raw();
    let (pb, rb, cb) = rhs.raw();
    let a = Operand { base: pa, si: ra, sk: ca };
    let b = Operand { base: pb, si: cb, sk: rb };
    let dptr = SyncPtr(dst.as_mut_ptr());
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    // row blocks of equal height (a multiple of MR, at most MC)
    let mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR);
    let mblocks = m.div_ceil(mc);
    let mut bpack = PACKED.with(|p| std::mem::take(&mut p.borrow_mut().rhs));
    for c0 in (0..n).step_by(NC) {
        let nc = NC.min(n - c0);
        let panels = nc.div_ceil(NR);
        // column shares per row block: enough tasks to keep every thread busy
        let shares = (8 * threads).div_ceil(mblocks).clamp(1, nc.div_ceil(MIN_TASK_COLS));
        let per_share = panels.div_ceil(shares);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let id = PRODUCTS.fetch_add(1, Ordering::Relaxed);
            bpack.resize(panels * kc, Line([0.0; NR]));
            // SAFETY: the views cover (M, K) and (K, N) (the callers' contract)
            let pack_panel = |(p, out): (usize, &mut [Line])| unsafe { pack_rhs(out, b, c0 + p * NR, NR.min(n - c0 - p * NR), k0, kc) };
            if parallel {
                bpack.par_chunks_mut(kc).enumerate().for_each(pack_panel);
            } else {
                bpack.chunks_mut(kc).enumerate().for_each(pack_panel);
            }
            let add = accumulate || k0 > 0;
            let bp = &bpack[..];
            let task = |t: usize| {
                let (mb, s) = (t / shares, t % shares);
                let (r0, rows) = (mb * mc, mc.min(m - mb * mc));
                let (p0, p1) = (s * per_share, ((s + 1) * per_share).min(panels));
                if p0 >= p1 {
                    return;
                }
                PACKED.with(|cell| {
                    let packed = &mut *cell.borrow_mut();
                    let (apack, key) = (&mut packed.lhs, &mut packed.lhs_key);
                    if *key != (id, mb, k0) {
                        // SAFETY: as above
                        unsafe { pack_lhs(apack, a, r0, rows, k0, kc) };
                        *key = (id, mb, k0);
                    }
                    for p in p0..p1 {
                        let (col, cols) = (c0 + p * NR, NR.min(n - c0 - p * NR));
                        let panel = &bp[p * kc..(p + 1) * kc];
                        for i in (0..rows).step_by(MR) {
                            let tile_rows = MR.min(rows - i);
                            let at = (r0 + i) * dst_rs + col;
                            // SAFETY: the CPU has AVX2 and FMA (asserted); apack holds kc steps of this panel's MR rows and `panel` kc
                            // lines; the (tile_rows, cols) block of dst at (r0 + i, col) is in dst
                            // and only this task writes it (tasks own disjoint blocks).
                            #[cfg(target_arch = "x86_64")]
                            unsafe {
                                let d = dptr.slice_mut(at, (tile_rows - 1) * dst_rs + cols);
                                kernel::tile(kc, apack[i * kc..].as_ptr(), panel.as_ptr() as *const f32, d, dst_rs, tile_rows, cols, add, scale);
                            }
                            #[cfg(not(target_arch = "x86_64"))]
                            {
                                let _ = (at, tile_rows, cols, &dptr, panel, add, scale);
                                unreachable!("available() is false off x86-64");
                            }
                        }
                    }
                });
            };
            if parallel {
                (0..mblocks * shares).into_par_iter().for_each(task);
            } else {
                (0..mblocks * shares).for_each(task);
            }
        }
    }
    PACKED.with(|p| p.borrow_mut().rhs = bpack);
}

/// A (len, K) operand: element (i, kk) at base + i * si + kk * sk.
#[derive(Clone, Copy)]
struct Operand {
    base: *const f32,
    si: isize,
    sk: isize,
}

// SAFETY: read-only access to data the caller keeps alive for the whole product.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    #[inline(always)]
    unsafe fn at(self, i: usize, kk: usize) -> f32 {
        *self.base.offset(i as isize * self.si + kk as isize * self.sk)
    }
}

/// Packs columns [col, col + cols) x depth [k0, k0 + kc) of rhs into kc lines of NR
/// values, zero past `cols`.
///
/// # Safety
/// Every addressed element of `b` must be readable.
unsafe fn pack_rhs(out: &mut [Line], b: Operand, col: usize, cols: usize, k0: usize, kc: usize) {
    if b.si == 1 && cols == NR {
        // each kk is a contiguous run of the NR columns
        for (j, line) in out.iter_mut().enumerate() {
            let src = b.base.offset(col as isize + (k0 + j) as isize * b.sk);
            line.0.copy_from_slice(std::slice::from_raw_parts(src, NR));
        }
    } else if b.sk == 1 && cols == NR && cfg!(target_arch = "x86_64") {
        // each column is a contiguous run along K: 8 x 8 blocks transposed in registers
        #[cfg(target_arch = "x86_64")]
        kernel::pack_transposed(out.as_mut_ptr() as *mut f32, b.base.offset(col as isize * b.si + k0 as isize), b.si, kc);
    } else if b.sk == 1 {
        // each column is a contiguous run along K
        for line in out.iter_mut() {
            line.0 = [0.0; NR];
        }
        for c in 0..cols {
            let run = std::slice::from_raw_parts(b.base.offset((col + c) as isize * b.si + k0 as isize), kc);
            for (line, &v) in out.iter_mut().zip(run) {
                line.0[c] = v;
            }
        }
    } else {
        for (j, line) in out.iter_mut().enumerate() {
            for c in 0..NR {
                line.0[c] = if c < cols { b.at(col + c, k0 + j) } else { 0.0 };
            }
        }
    }
}

/// Packs rows [r0, r0 + rows) x depth [k0, k0 + kc) of lhs into panels of MR rows:
/// out[panel * kc * MR + j * MR + i] = lhs(r0 + panel * MR + i, k0 + j), zero past `rows`.
///
/// # Safety
/// Every addressed element of `a` must be readable.
unsafe fn pack_lhs(out: &mut Vec<f32>, a: Operand, r0: usize, rows: usize, k0: usize, kc: usize) {
    let panels = rows.div_ceil(MR);
    out.resize(panels * kc * MR, 0.0);
    for (p, panel) in out.chunks_exact_mut(kc * MR).enumerate() {
        let (i0, live) = (r0 + p * MR, MR.min(rows - p * MR));
        if a.si == 1 && live == MR {
            // each kk is a contiguous run of the MR rows
            for (j, step) in panel.chunks_exact_mut(MR).enumerate() {
                let src = a.base.offset(i0 as isize + (k0 + j) as isize * a.sk);
                step.copy_from_slice(std::slice::from_raw_parts(src, MR));
            }
        } else if a.sk == 1 {
            // each row is a contiguous run along K
            if live < MR {
                panel.fill(0.0);
            }
            for i in 0..live {
                let run = std::slice::from_raw_parts(a.base.offset((i0 + i) as isize * a.si + k0 as isize), kc);
                for (step, &v) in panel.chunks_exact_mut(MR).zip(run) {
                    step[i] = v;
                }
            }
        } else {
            for (j, step) in panel.chunks_exact_mut(MR).enumerate() {
                for (i, v) in step.iter_mut().enumerate() {
                    *v = if i < live { a.at(i0 + i, k0 + j) } else { 0.0 };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Packs NR columns x kc of depth of a rhs whose columns are contiguous along K (column c,
    /// depth j at src + c * col_stride + j) into kc lines of NR: out[j * NR + c].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_transposed(out: *mut f32, src: *const f32, col_stride: isize, kc: usize) {
        let full = kc / 8 * 8;
        for half in 0..NR / 8 {
            let src = src.offset((8 * half) as isize * col_stride);
            let out = out.add(8 * half);
            for j in (0..full).step_by(8) {
                // r[c] = depths j..j + 8 of column c
                let r: [__m256; 8] = std::array::from_fn(|c| _mm256_loadu_ps(src.offset(c as isize * col_stride + j as isize)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                // o[d] = depth j + d of the 8 columns
                let o = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (d, &v) in o.iter().enumerate() {
                    _mm256_store_ps(out.add((j + d) * NR), v);
                }
            }
            for j in full..kc {
                for c in 0..8 {
                    *out.add(j * NR + c) = *src.offset(c as isize * col_stride + j as isize);
                }
            }
        }
    }

    /// dst (rows, cols), rows `rs` apart, `=` or `+=` (add) scale * a @ b over kc steps:
    /// a (kc, MR) and b (kc, NR) packed.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(kc: usize, a: *const f32, b: *const f32, dst: &mut [f32], rs: usize, rows: usize, cols: usize, add: bool, scale: f32) {
        let z = _mm256_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
        let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(dst.as_ptr().add(r * rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(dst.as_ptr().add(r * rs + cols - 1) as *const i8);
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            let x = _mm256_broadcast_ss(&*a);
            c00 = _mm256_fmadd_ps(x, b0, c00);
            c01 = _mm256_fmadd_ps(x, b1, c01);
            let x = _mm256_broadcast_ss(&*a.add(1));
            c10 = _mm256_fmadd_ps(x, b0, c10);
            c11 = _mm256_fmadd_ps(x, b1, c11);
            let x = _mm256_broadcast_ss(&*a.add(2));
            c20 = _mm256_fmadd_ps(x, b0, c20);
            c21 = _mm256_fmadd_ps(x, b1, c21);
            let x = _mm256_broadcast_ss(&*a.add(3));
            c30 = _mm256_fmadd_ps(x, b0, c30);
            c31 = _mm256_fmadd_ps(x, b1, c31);
            let x = _mm256_broadcast_ss(&*a.add(4));
            c40 = _mm256_fmadd_ps(x, b0, c40);
            c41 = _mm256_fmadd_ps(x, b1, c41);
            let x = _mm256_broadcast_ss(&*a.add(5));
            c50 = _mm256_fmadd_ps(x, b0, c50);
            c51 = _mm256_fmadd_ps(x, b1, c51);
            a = a.add(MR);
            b = b.add(NR);
        }
        let acc = [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]];
        let sc = _mm256_set1_ps(scale);
        if cols == NR {
            for (r, v) in acc.iter().enumerate().take(rows) {
                let p = dst.as_mut_ptr().add(r * rs);
                for (h, &v) in v.iter().enumerate() {
                    let mut v = _mm256_mul_ps(v, sc);
                    if add {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(p.add(8 * h)));
                    }
                    _mm256_storeu_ps(p.add(8 * h), v);
                }
            }
        } else {
            let mut tile = [0f32; MR * NR];
            for (r, v) in acc.iter().enumerate() {
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR), _mm256_mul_ps(v[0], sc));
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8), _mm256_mul_ps(v[1], sc));
            }
            for r in 0..rows {
                let row = &mut dst[r * rs..r * rs + cols];
                for (d, &v) in row.iter_mut().zip(&tile[r * NR..]) {
                    *d = if add { *d + v } else { v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 sums, for row-major and transposed operands (every packing path), shapes
    /// that are not multiples of any block size, several blocks of K and of N, a dst wider
    /// than N, overwrite and accumulate, serial and parallel.
    #[test]
    fn matches_f64_reference() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        let mut rng = crate::rng::SplitMix64::new(7);
        for &(m, n, k) in &[(1, 1, 1), (7, 70, 3), (13, 300, 600), (150, 17, 515), (2, 4200, 40), (300, 33, 1)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect(); // (M, K)
            let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 - 0.5).collect(); // (K, N)
            let at: Vec<f32> = (0..k * m).map(|i| a[i % m * k + i / m]).collect(); // (K, M)
            let bt: Vec<f32> = (0..n * k).map(|i| b[i % k * n + i / k]).collect(); // (N, K)
            let lhs = [View::rows(&a, k), View::t(&at, m)];
            let rhs = [View::rows(&b, n), View::t(&bt, k)];
            for (li, ri, accumulate, parallel) in [(0, 0, false, true), (0, 1, true, false), (1, 0, true, true), (1, 1, false, false)] {
                let rs = n + 3;
                let mut dst = vec![1.0f32; m * rs];
                gemm_f32(&mut dst, rs, m, n, k, lhs[li], rhs[ri], accumulate, 0.5, parallel);
                for i in 0..m {
                    for j in 0..n {
                        let want = f64::from(u8::from(accumulate)) + 0.5 * (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum::<f64>();
                        let got = dst[i * rs + j] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "({m},{n},{k}) layouts {li}{ri} [{i},{j}]: {got} vs {want}");
                    }
                    assert!(dst[i * rs + n..i * rs + rs].iter().all(|&x| x == 1.0), "wrote past column N");
                }
            }
        }
    }
}
