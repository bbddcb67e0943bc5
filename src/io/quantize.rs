//! Quantisation of f32 values into ggml block types: each `q_X` is the inverse of gguf.rs's
//! `dq_X` (same block layout, documented there), round-trip tested below.
//!
//! F16, BF16, Q8_0 and Q4_0 follow the `gguf` Python package's reference quantisation
//! (gguf-py `quants.py`, itself bit-exact with ggml's `quantize_row_*_ref`) operation by
//! operation, so the bytes are identical to it (tests/test_gguf_export.py checks). Q5_0, Q4_K
//! and Q6_K, which gguf-py cannot quantise, follow ggml-quants.c's `quantize_row_q5_0_ref`,
//! `quantize_row_q4_K_ref` and `quantize_row_q6_K_ref` (what `llama-quantize` runs without an
//! importance matrix) in the same order of f32 operations, without fused multiply-adds.
//!
//! Error bounds (x: a value, x̂: its dequantisation, per block of 32 or 256 values):
//! - F16 / BF16: round to nearest even (relative 2^-11 / 2^-8, F16 overflow is an error);
//! - Q8_0: |x - x̂| <= 0.57 * amax / 127 (half a step, plus the f16 rounding of the scale);
//! - Q4_0: |x - x̂| <= 1.01 * amax / 8 (a full step at the clipped end of the range);
//! - Q5_0: |x - x̂| <= 1.01 * amax / 16;
//! - Q4_K, Q6_K: fitted scales (least squares over a grid); no closed bound, see the tests.

use half::{bf16, f16};
use rayon::prelude::*;

use super::gguf::GgmlType;

/// The types `quantize` writes.
pub const QUANTIZABLE: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Quantises `data` (a whole number of blocks of `ty`) into `out` (exactly its bytes).
/// Errors name a value F16 cannot hold; non-finite input is the caller's to refuse.
pub fn quantize_into(ty: GgmlType, data: &[f32], out: &mut [u8]) -> std::result::Result<(), String> {
    let (bs, ts) = ty.block_layout().filter(|_| QUANTIZABLE.contains(&ty)).ok_or_else(|| {
        let names: Vec<String> = QUANTIZABLE.iter().map(|t| t.name()).collect();
        format!("ggml type {} cannot be written (supported: {})", ty.name(), names.join(", "))
    })?;
    if !data.len().is_multiple_of(bs) || out.len() != data.len() / bs * ts {
        return Err(format!("{} values do not fill {} bytes of type {}", data.len(), out.len(), ty.name()));
    }
    if ty == GgmlType::F16 {
        if let Some(x) = data.iter().find(|x| x.abs() > f16::MAX.to_f32()) {
            return Err(format!("value {x} is out of F16's range (±65504): write BF16 or F32"));
        }
    }
    let f: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => q_f32,
        GgmlType::F16 => q_f16,
        GgmlType::BF16 => q_bf16,
        GgmlType::Q8_0 => q_q8_0,
        GgmlType::Q4_0 => q_q4_0,
        GgmlType::Q5_0 => q_q5_0,
        GgmlType::Q4_K => q_q4_k,
        GgmlType::Q6_K => q_q6_k,
        _ => unreachable!(),
    };
    let blocks_per_chunk = (65536 / bs).max(1);
    out.par_chunks_mut(blocks_per_chunk * ts)
        .zip(data.par_chunks(blocks_per_chunk * bs))
        .for_each(|(o, x)| f(x, o));
    Ok(())
}

/// `quantize_into` into a new buffer.
pub fn quantize(ty: GgmlType, data: &[f32]) -> std::result::Result<Vec<u8>, String> {
    let (bs, ts) = ty.block_layout().ok_or_else(|| format!("ggml type {} has no block layout", ty.name()))?;
    let mut out = vec![0u8; data.len() / bs * ts];
    quantize_into(ty, data, &mut out)?;
    Ok(out)
}

fn put_f16(out: &mut [u8], at: usize, x: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn q_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn q_f16(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// Round to nearest even on the upper 16 bits (NaN kept quiet), as ggml_compute_fp32_to_bf16.
fn q_bf16(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        let b = if v.is_nan() { bf16::from_bits(((v.to_bits() >> 16) | 64) as u16) } else { bf16::from_f32(*v) };
        o.copy_from_slice(&b.to_le_bytes());
    }
}

/// Q8_0: d = amax / 127, q = round(x / d) half away from zero.
fn q_q8_0(x: &[f32], out: &mut [u8]) {
    for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(o, 0, d);
        for (q, v) in o[2..].iter_mut().zip(blk) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// The first value of largest magnitude (its sign kept), as the reference's argmax.
fn signed_max(blk: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in blk {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Q4_0: d = max / -8, q = min(15, trunc(x / d + 8.5)); value j in the low nibble of byte j,
/// value j + 16 in its high nibble.
fn q_q4_0(x: &[f32], out: &mut [u8]) {
    for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let d = signed_max(blk) / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(o, 0, d);
        let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
        for j in 0..16 {
            o[2 + j] = q(blk[j]) | (q(blk[j + 16]) << 4);
        }
    }
}

/// Q5_0: f16 d | u32 qh | u8 qs[16]; d = max / -16, q = min(31, trunc(x / d + 16.5)); the
/// low nibbles as Q4_0, the fifth bit of value j in bit j of qh.
fn q_q5_0(x: &[f32], out: &mut [u8]) {
    for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
        let d = signed_max(blk) / -16.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        put_f16(o, 0, d);
        let q = |v: f32| ((v * id + 16.5).trunc() as u8).min(31);
        let mut qh = 0u32;
        for j in 0..16 {
            let (a, b) = (q(blk[j]), q(blk[j + 16]));
            o[6 + j] = (a & 15) | ((b & 15) << 4);
            qh |= ((a as u32 >> 4) << j) | ((b as u32 >> 4) << (j + 16));
        }
        o[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// ggml's nearest_int: round half to even through the float mantissa (|x| < 2^22).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's make_qkx2_quants: the (scale, -min) and levels 0..=nmax of an affine fit of `x`
/// under `w`, searched over `nstep + 1` candidate scales around nmax / (max - min).
#[allow(clippy::too_many_arguments)]
fn fit_affine(x: &[f32], w: &[f32], nmax: i32, l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = li as u8;
            let lf = li as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                l[..n].copy_from_slice(&aux[..n]);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K: eight sub-blocks of 32 with their own 6-bit scale and min (each fitted by
/// `fit_affine`, then quantised against the block's f16 d and dmin); levels 0..=15 packed
/// two sub-blocks per 32 bytes (low nibbles: the even sub-block).
fn q_q4_k(x: &[f32], out: &mut [u8]) {
    for (blk, o) in x.chunks_exact(256).zip(out.chunks_exact_mut(144)) {
        let mut levels = [0u8; 256];
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &blk[32 * j..32 * j + 32];
            let sum_x2 = xs.iter().fold(0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let w: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
            let (s, m) = fit_affine(xs, &w, 15, &mut levels[32 * j..32 * j + 32], -1.0, 0.1, 20);
            scales[j] = s;
            mins[j] = m;
            max_scale = max_scale.max(s);
            max_min = max_min.max(m);
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let packed = &mut o[4..16];
        packed.fill(0);
        let mut sc = [0u8; 8];
        let mut mn = [0u8; 8];
        for j in 0..8 {
            sc[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            mn[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = sc[j];
                packed[j + 4] = mn[j];
            } else {
                packed[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                packed[j - 4] |= (sc[j] >> 4) << 6;
                packed[j] |= (mn[j] >> 4) << 6;
            }
        }
        put_f16(o, 0, max_scale / 63.0);
        put_f16(o, 2, max_min / 63.0);
        let (d_all, dmin_all) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
        for j in 0..8 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * mn[j] as f32;
            for i in 0..32 {
                levels[32 * j + i] = nearest_int((blk[32 * j + i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        let qs = &mut o[16..144];
        for (c, q) in qs.chunks_exact_mut(32).enumerate() {
            for l in 0..32 {
                q[l] = levels[64 * c + l] | (levels[64 * c + l + 32] << 4);
            }
        }
    }
}

/// ggml's make_qx_quants with rmse_type 1 and no weights: the signed scale of 16 values on
/// levels -nmax..nmax-1 (weights x^2), searched over 19 candidate scales.
fn fit_symmetric(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let li = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * li;
            suml2 += w * li * li;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K: sixteen sub-blocks of 16 with a signed 8-bit scale each (fitted by
/// `fit_symmetric`, then quantised against the block's f16 d); levels 0..=63 split into
/// 4 low bits (ql) and 2 high bits (qh) as `dq_q6_k` reads them.
fn q_q6_k(x: &[f32], out: &mut [u8]) {
    for (blk, o) in x.chunks_exact(256).zip(out.chunks_exact_mut(210)) {
        let mut levels = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        for ib in 0..16 {
            let s = fit_symmetric(&blk[16 * ib..16 * ib + 16], 32, &mut levels[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs {
                max_abs = s.abs();
                max_scale = s;
            }
        }
        o.fill(0);
        if max_abs < 1e-15 {
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(o, 208, 1.0 / iscale);
        let d_all = f16_round(1.0 / iscale);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
            o[192 + ib] = sc[ib] as u8;
        }
        for j in 0..16 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                levels[16 * j + i] = (nearest_int(blk[16 * j + i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (ql, rest) = o.split_at_mut(128);
        let qh = &mut rest[..64];
        for h in 0..2 {
            for l in 0..32 {
                let lv = |g: usize| levels[128 * h + 32 * g + l] as u8;
                ql[64 * h + l] = (lv(0) & 0xF) | ((lv(2) & 0xF) << 4);
                ql[64 * h + 32 + l] = (lv(1) & 0xF) | ((lv(3) & 0xF) << 4);
                qh[32 * h + l] = (lv(0) >> 4) | ((lv(1) >> 4) << 2) | ((lv(2) >> 4) << 4) | ((lv(3) >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gguf::dequantize_into;
    use super::*;

    /// Deterministic values with a spread of magnitudes, a few zero blocks and outliers.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                if (i / 256) % 7 == 3 {
                    0.0
                } else if i % 97 == 5 {
                    u * 8.0
                } else {
                    u * 0.1
                }
            })
            .collect()
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let b = quantize(ty, x).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize_into(ty, &b, &mut y).unwrap();
        y
    }

    fn block_amax(x: &[f32], bs: usize) -> Vec<f32> {
        x.chunks(bs).map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs()))).collect()
    }

    #[test]
    fn float_types_round_trip() {
        let x = values(1024, 1);
        assert_eq!(round_trip(GgmlType::F32, &x), x);
        let y = round_trip(GgmlType::F16, &x);
        assert!(x.iter().zip(&y).all(|(a, b)| f16::from_f32(*a).to_f32() == *b));
        let y = round_trip(GgmlType::BF16, &x);
        assert!(x.iter().zip(&y).all(|(a, b)| bf16::from_f32(*a).to_f32() == *b));
        // ties go to even: 1 + 2^-8 is halfway between two bf16 values
        let y = round_trip(GgmlType::BF16, &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
        assert_eq!(y, vec![1.0, 1.0 + 4.0 / 256.0]);
        let e = quantize(GgmlType::F16, &[1e6]).unwrap_err();
        assert!(e.contains("out of F16's range"), "{e}");
    }

    #[test]
    fn block_types_are_within_their_bounds() {
        let x = values(4096, 2);
        for (ty, bs, bound) in [
            (GgmlType::Q8_0, 32, 0.57 / 127.0),
            (GgmlType::Q4_0, 32, 1.01 / 8.0),
            (GgmlType::Q5_0, 32, 1.01 / 16.0),
        ] {
            let y = round_trip(ty, &x);
            let amax = block_amax(&x, bs);
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                assert!((a - b).abs() <= bound * amax[i / bs], "{} value {i}: {a} -> {b}", ty.name());
            }
            // the dequantised values are fixed points: quantising them again gives the same bytes
            let again = quantize(ty, &y).unwrap();
            assert_eq!(again, quantize(ty, &x).unwrap(), "{}", ty.name());
        }
    }

    #[test]
    fn k_quants_round_trip() {
        // per 256-block: RMS error against the block's largest magnitude, and zero blocks
        // stay zero (measured worst cases: Q6_K 0.0037, Q4_K 0.0081)
        let x = values(8192, 3);
        for (ty, bound) in [(GgmlType::Q6_K, 0.005), (GgmlType::Q4_K, 0.012)] {
            let y = round_trip(ty, &x);
            let mut worst = 0f32;
            for (b, (xs, ys)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let rms = (xs.iter().zip(ys).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / 256.0).sqrt();
                if amax == 0.0 {
                    assert!(ys.iter().all(|v| *v == 0.0), "{} block {b}", ty.name());
                } else {
                    worst = worst.max(rms / amax);
                }
            }
            assert!(worst <= bound, "{}: {worst}", ty.name());
        }
    }

    #[test]
    fn q4_0_and_q8_0_reference_blocks() {
        // Q8_0 of 0..31: d = 31/127, q = round(i * 127/31)
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let b = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(31.0 / 127.0));
        assert_eq!(b[2 + 31] as i8, 127);
        assert_eq!(b[2 + 1] as i8, 4); // 1 * 127/31 = 4.097
        // Q4_0: the largest magnitude is -31 at index 31: d = 31/8, levels trunc(x/d + 8.5)
        let x: Vec<f32> = (0..32).map(|i| -(i as f32)).collect();
        let b = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(31.0 / 8.0));
        assert_eq!(b[2 + 15] >> 4, 0); // value 31 -> -8 * d
        assert_eq!(b[2] & 15, 8); // value 0 -> 0
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
    }

    #[test]
    fn wrong_sizes_and_types_are_errors() {
        let e = quantize_into(GgmlType::Q8_0, &[0.0; 31], &mut [0u8; 34]).unwrap_err();
        assert!(e.contains("31 values"), "{e}");
        let e = quantize_into(GgmlType::Q4_1, &[0.0; 32], &mut [0u8; 20]).unwrap_err();
        assert!(e.contains("Q4_1 cannot be written"), "{e}");
    }
}
