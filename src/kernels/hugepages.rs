//! Zeroed buffers backed by transparent huge pages, for large buffers allocated afresh on
//! every call: the (B, T, V) logits a forward hands to Python (moved out, so the next forward
//! allocates again). With 4 KiB pages GPT-2's logits at (1, 512) (103 MB) cost ~25,000 page
//! faults per forward; with 2 MiB pages ~50 (THP in its common "madvise" mode backs only
//! memory that asks; the effect on the forward is in benchmarks/RESULTS.md, runs E and F).
//! Only the whole 2 MiB pages inside the buffer are advised; where THP is off or
//! absent (or not Linux) this is `vec![0; len]`.

use super::Real;

/// Buffers from this size get the advice.
const MIN_BYTES: usize = 8 << 20;

/// `vec![F::zero(); len]`, its pages (untouched until written: zeroed allocations come
/// straight from the kernel) advised to be huge.
pub fn zeroed<F: Real>(len: usize) -> Vec<F> {
    let v = vec![F::zero(); len];
    let bytes = len * std::mem::size_of::<F>();
    #[cfg(target_os = "linux")]
    if bytes >= MIN_BYTES {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside `v`'s allocation; the advice changes how its
            // pages are backed, not their contents. A failure (no THP) is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (bytes, MIN_BYTES);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_whatever_the_size() {
        for len in [0, 5, (8 << 20) / 4 + 12_345] {
            let v = super::zeroed::<f32>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
