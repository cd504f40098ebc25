//! The ethtool settings vethfp needs on the container end of a pair: GRO and TX checksums.
//!
//! A veth only accepts XDP-redirected frames (devmap → `ndo_xdp_xmit`) when the *receiving*
//! end has NAPI enabled, which happens when it has an XDP program or GRO turned on. vethfp turns
//! GRO on for the container end of an `xdp` endpoint, the only kind an XDP sender redirects
//! into, without running an XDP program on the container's receive path. A `tc` endpoint's
//! container end keeps GRO off: with it on, every packet the kernel path sends into the
//! container goes through NAPI instead of the backlog, ~2.5 µs more per TCP round trip
//! measured on a stock node, which a flow vethfp does not accelerate must not pay.

use std::{io, os::fd::AsRawFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x0000_002b;
const ETHTOOL_SGRO: u32 = 0x0000_002c;
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
const ETHTOOL_GTXCSUM: u32 = 0x0000_0016;
const ETHTOOL_STXCSUM: u32 = 0x0000_0017;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ioctl_value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live EthtoolValue.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns GRO on or off on `ifname` in the calling thread's network namespace.
pub fn set_gro(ifname: &str, on: bool) -> io::Result<()> {
    ioctl_value(ifname, ETHTOOL_SGRO, on as u32).map(|_| ())
}

/// Turns TX checksum offload on or off on `ifname` in the calling thread's namespace.
///
/// An XDP-mode endpoint needs it off on its container end: the container's stack otherwise
/// leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL), veth's skb → XDP conversion drops
/// that note, and after a devmap redirect the receiver sees a wrong checksum and discards the
/// packet (UdpInCsumErrors). ICMP is always checksummed in software, so ping alone would not
/// show it.
pub fn set_tx_csum(ifname: &str, on: bool) -> io::Result<()> {
    ioctl_value(ifname, ETHTOOL_STXCSUM, on as u32).map(|_| ())
}

/// Whether TX checksum offload is on for `ifname` in the calling thread's namespace.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub fn tx_csum(ifname: &str) -> io::Result<bool> {
    ioctl_value(ifname, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Whether GRO is on for `ifname` in the calling thread's network namespace.
pub fn gro(ifname: &str) -> io::Result<bool> {
    ioctl_value(ifname, ETHTOOL_GGRO, 0).map(|v| v != 0)
}
