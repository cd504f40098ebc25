//! clock_gettime(2) for comparing with the datapath's `bpf_ktime_get_ns` /
//! `bpf_ktime_get_coarse_ns` stamps (the same clocks).

/// CLOCK_MONOTONIC in nanoseconds (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clocks_go_forward() {
        let (a, b) = (super::monotonic_ns(), super::monotonic_coarse_ns());
        assert!(a > 0 && b > 0);
        assert!(super::monotonic_ns() >= a);
        assert!(super::monotonic_coarse_ns() >= b);
    }
}
