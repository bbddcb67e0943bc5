//! Allocations whose size comes from outside (a config file, a GGUF header, an argument):
//! checked against the machine's memory and made fallible, so that a bad size becomes an
//! error that states the size asked for, never an abort of the interpreter.

/// Bytes of physical memory, when the platform tells.
pub fn physical_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf only reads system constants.
        let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && page > 0 {
            return Some(pages as u64 * page as u64);
        }
    }
    None
}

/// A byte count for messages: "3.6 TiB", "512.0 MiB", "12 bytes".
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut x = bytes as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// Ok when `bytes` can be held in this machine's memory; otherwise a phrase for the caller's
/// error: "needs 3.6 TiB, more than this machine's 23.4 GiB of memory".
pub fn check_bytes(bytes: u128) -> std::result::Result<(), String> {
    let limit = physical_memory().map_or(isize::MAX as u128, |m| (m as u128).min(isize::MAX as u128));
    if bytes > limit {
        return Err(format!("needs {}, more than this machine's {} of memory", human_bytes(bytes), human_bytes(limit)));
    }
    Ok(())
}

/// `vec![value; n]`, checked against the memory first and allocated fallibly.
pub fn try_filled<T: Clone>(n: usize, value: T) -> std::result::Result<Vec<T>, String> {
    let bytes = n as u128 * std::mem::size_of::<T>() as u128;
    check_bytes(bytes)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| format!("needs {}, which could not be allocated", human_bytes(bytes)))?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_memory_are_errors_not_aborts() {
        assert!(physical_memory().is_some_and(|m| m > 0) || !cfg!(target_os = "linux"));
        let err = try_filled(usize::MAX / 4, 0f32).unwrap_err();
        assert!(err.contains("more than this machine's"), "{err}");
        assert_eq!(try_filled(3, 7u8).unwrap(), vec![7, 7, 7]);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }
}
