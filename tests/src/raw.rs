//! Raw Ethernet frames from inside a namespace: inject with an AF_PACKET socket, capture what
//! arrives on an interface, and build the frames (Ethernet, VLAN, IPv4, IPv6, UDP, ARP).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::ns::{in_netns, join, run_in_netns};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name} in this namespace");
    i
}

fn packet_socket(ifname: &str, proto: u16) -> i32 {
    // SAFETY: plain socket/bind calls with a correctly sized sockaddr_ll.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.to_be() as i32,
        );
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex(ifname) as i32;
        let r = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert!(
            r == 0,
            "bind AF_PACKET to {ifname}: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Send each frame as is out of `ifname` in namespace `ns` (AF_PACKET, from a thread that
/// entered `ns`). Returns, per frame, Ok or the errno of a refused send (the kernel refuses
/// frames shorter than an Ethernet header or longer than the MTU allows).
pub fn inject(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) -> Vec<Result<(), i32>> {
    let ifname = ifname.to_string();
    run_in_netns(ns, move || {
        let fd = packet_socket(&ifname, 0);
        let out = frames
            .iter()
            .map(|f| {
                // SAFETY: valid fd and buffer.
                let n = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
                if n == f.len() as isize {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
                }
            })
            .collect();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        out
    })
}

/// Everything that arrives on one interface (all packet types except our own outgoing ones),
/// captured from a thread inside the namespace until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    handle: JoinHandle<u32>,
}

impl Capture {
    /// Start capturing on `ifname` in `ns`; the socket is bound when this returns.
    pub fn start(ns: &str, ifname: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (s, fr, ifname) = (stop.clone(), frames.clone(), ifname.to_string());
        let handle = in_netns(ns, move || {
            let fd = packet_socket(&ifname, ETH_P_ALL);
            let big: libc::c_int = 64 << 20;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            // SAFETY: valid fd; option values of the stated sizes.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    size_of::<libc::timeval>() as u32,
                );
            }
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 70000];
            loop {
                // SAFETY: valid fd, buffer and address of the stated sizes.
                let (n, pkt_type) = unsafe {
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    let mut alen = size_of::<libc::sockaddr_ll>() as u32;
                    let n = libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut alen,
                    );
                    (n, sll.sll_pkttype)
                };
                if n < 0 {
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    continue;
                }
                if pkt_type != PACKET_OUTGOING {
                    fr.lock().unwrap().push(buf[..n as usize].to_vec());
                }
            }
            // Frames the socket had to drop (full buffer): the capture would be incomplete.
            let mut st = libc::tpacket_stats {
                tp_packets: 0,
                tp_drops: 0,
            };
            let mut len = size_of::<libc::tpacket_stats>() as u32;
            // SAFETY: valid fd and out buffer.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    (&mut st as *mut libc::tpacket_stats).cast(),
                    &mut len,
                );
                libc::close(fd);
            }
            st.tp_drops
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("capture did not start");
        Capture {
            stop,
            frames,
            handle,
        }
    }

    /// Frames captured so far.
    pub fn so_far(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }

    /// Poll until some captured frame satisfies `pred`; false on timeout.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.frames.lock().unwrap().iter().any(|f| pred(f)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop and return every captured frame; panics if the socket dropped any.
    pub fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Release);
        let drops = join(self.handle);
        assert_eq!(drops, 0, "capture socket dropped {drops} frames");
        Arc::try_unwrap(self.frames)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|a| a.lock().unwrap().clone())
    }
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Parse "02:00:..." into bytes.
pub fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC {s}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s}"))
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_VLAN: u16 = 0x8100;
pub const ETH_QINQ: u16 = 0x88a8;

/// Ethernet header.
pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// Internet checksum of `data`.
pub fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte IPv4 header (valid checksum) followed by `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header followed by `payload` (`next` = its protocol).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = hop;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A UDP header (checksum computed over the pseudo-header) and `data`.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::with_capacity(len as usize);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&len.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("udp: mixed families"),
    }
    pseudo.extend_from_slice(&u);
    let mut c = csum(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A complete Ethernet/IP/UDP frame.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let u = udp(src, dst, 40000, dport, data);
    let (et, l3) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (ETH_IPV4, ipv4(s, d, 17, 64, &u)),
        (IpAddr::V6(s), IpAddr::V6(d)) => (ETH_IPV6, ipv6(s, d, 17, 64, &u)),
        _ => panic!("udp_frame: mixed families"),
    };
    let mut f = eth(dst_mac, src_mac, et);
    f.extend_from_slice(&l3);
    f
}

/// An Ethernet/IPv4 ARP frame (op 1 request, 2 reply) with `trailer` after the ARP body.
#[allow(clippy::too_many_arguments)]
pub fn arp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
    trailer: &[u8],
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f.extend_from_slice(trailer);
    f
}
