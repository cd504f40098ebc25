//! The few bpf(2) commands the bench needs, without a BPF library: run-time statistics while
//! a file descriptor is held (BPF_ENABLE_STATS, instead of the machine-wide sysctl
//! kernel.bpf_stats_enabled), a pinned program's run_time_ns/run_cnt, BPF_PROG_TEST_RUN, and an
//! empty program to subtract the test harness's own cost. Layouts from <linux/bpf.h>.

use anyhow::{Result, bail};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
/// sizeof(union bpf_attr) on current kernels; the kernel accepts a smaller one (zero tail).
const ATTR: usize = 144;
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_XDP: u32 = 6;
/// sizeof(struct __sk_buff), and where its ifindex is.
const SKB_CTX: usize = 192;
const SKB_IFINDEX: usize = 40;
/// sizeof(struct xdp_md), and its data_end and ingress_ifindex.
const XDP_CTX: usize = 24;
const XDP_DATA_END: usize = 4;
const XDP_INGRESS_IFINDEX: usize = 12;
/// struct bpf_prog_info: run_time_ns, run_cnt.
const INFO_RUN_TIME: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_LEN: usize = 256;

fn put32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get32(a: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(a[off..off + 4].try_into().expect("4 bytes"))
}

fn get64(a: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(a[off..off + 8].try_into().expect("8 bytes"))
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; ATTR], what: &str) -> Result<libc::c_long> {
    // SAFETY: bpf(2) with a zero-initialized attr of the size passed; every pointer in it
    // points at a buffer that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR as u32) };
    if r < 0 {
        bail!("bpf({what}): {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// BPF run-time statistics (run_time_ns, run_cnt) are collected while this is held: the
/// kernel turns them off when the last such fd closes. Nothing is written to /proc/sys.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn enable_stats() -> Result<StatsOn> {
    let mut a = [0u8; ATTR];
    put32(&mut a, 0, BPF_STATS_RUN_TIME);
    let fd = sys_bpf(BPF_ENABLE_STATS, &mut a, "BPF_ENABLE_STATS")?;
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(StatsOn(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// A pinned program, opened.
pub struct Prog(OwnedFd);

impl Prog {
    pub fn pinned(path: &Path) -> Result<Prog> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut a = [0u8; ATTR];
        put64(&mut a, 0, c.as_ptr() as u64);
        let fd = sys_bpf(
            BPF_OBJ_GET,
            &mut a,
            &format!("BPF_OBJ_GET {}", path.display()),
        )?;
        // SAFETY: a new fd the kernel just returned.
        Ok(Prog(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// A program that only returns `ret` (the harness's cost without any program work).
    pub fn empty(prog_type: u32, ret: i32) -> Result<Prog> {
        // r0 = ret; exit
        let mut insns = [0u8; 16];
        insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        insns[4..8].copy_from_slice(&ret.to_ne_bytes());
        insns[8] = 0x95; // BPF_JMP | BPF_EXIT
        let license = c"GPL";
        let mut a = [0u8; ATTR];
        put32(&mut a, 0, prog_type);
        put32(&mut a, 4, 2);
        put64(&mut a, 8, insns.as_ptr() as u64);
        put64(&mut a, 16, license.as_ptr() as u64);
        a[48..57].copy_from_slice(b"bench_nop");
        let fd = sys_bpf(BPF_PROG_LOAD, &mut a, "BPF_PROG_LOAD (empty program)")?;
        // SAFETY: a new fd the kernel just returned.
        Ok(Prog(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    fn fd(&self) -> u32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd() as u32
    }

    /// (run_time_ns, run_cnt) so far (counted only while statistics are on).
    pub fn stats(&self) -> Result<(u64, u64)> {
        let mut info = [0u8; INFO_LEN];
        let mut a = [0u8; ATTR];
        put32(&mut a, 0, self.fd());
        put32(&mut a, 4, INFO_LEN as u32);
        put64(&mut a, 8, info.as_mut_ptr() as u64);
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a, "BPF_OBJ_GET_INFO_BY_FD")?;
        Ok((get64(&info, INFO_RUN_TIME), get64(&info, INFO_RUN_CNT)))
    }

    /// One BPF_PROG_TEST_RUN of `frame` as received on `ifindex` (looked up in the calling
    /// thread's network namespace), `repeat` times: (return value, ns per run as the kernel
    /// timed it). A tc program gets an __sk_buff, an XDP program an xdp_md.
    pub fn test_run(
        &self,
        xdp: bool,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(i32, u32)> {
        let mut ctx = [0u8; SKB_CTX];
        let ctx_len = if xdp {
            put32(&mut ctx, XDP_DATA_END, frame.len() as u32);
            put32(&mut ctx, XDP_INGRESS_IFINDEX, ifindex);
            XDP_CTX
        } else {
            put32(&mut ctx, SKB_IFINDEX, ifindex);
            SKB_CTX
        };
        let mut a = [0u8; ATTR];
        put32(&mut a, 0, self.fd());
        put32(&mut a, 8, frame.len() as u32);
        put64(&mut a, 16, frame.as_ptr() as u64);
        put32(&mut a, 32, repeat);
        put32(&mut a, 40, ctx_len as u32);
        put64(&mut a, 48, ctx.as_ptr() as u64);
        sys_bpf(BPF_PROG_TEST_RUN, &mut a, "BPF_PROG_TEST_RUN")?;
        Ok((get32(&a, 4) as i32, get32(&a, 36)))
    }
}

/// IPv4 header checksum of `h` (20 bytes, checksum field zero).
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a MAC address"))
}

/// A 64-byte IPv4 frame: UDP (`tcp` false) or a TCP segment with only ACK set (not a
/// SYN/FIN/RST: what an established flow carries), TTL 64, valid IPv4 header checksum.
pub fn frame4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    tcp: bool,
) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes()); // 64 - 14
    ip[8] = 64;
    ip[9] = if tcp { 6 } else { 17 };
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut f[34..];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if tcp {
        l4[12] = 5 << 4; // data offset 20
        l4[13] = 0x10; // ACK
        l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
    } else {
        l4[4..6].copy_from_slice(&30u16.to_be_bytes()); // 64 - 34
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_a_valid_ip_checksum() {
        let f = frame4([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], 1, 2, false);
        assert_eq!(f.len(), 64);
        assert_eq!(ip_checksum(&f[14..34]), 0);
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
    }
}
