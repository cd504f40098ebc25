//! getrandom(2).

/// Fills `b` from getrandom(2); false if the kernel gave fewer bytes (never for small buffers
/// once the pool is initialised).
pub fn fill(b: &mut [u8]) -> bool {
    // SAFETY: valid buffer of the length passed.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    n == b.len() as isize
}

/// 64 random bits from getrandom(2) (time as a fallback).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if !fill(&mut b) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_values_differ() {
        assert_ne!(super::random_u64(), super::random_u64());
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        assert!(super::fill(&mut a) && super::fill(&mut b));
        assert_ne!(a, b);
    }
}
