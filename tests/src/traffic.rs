//! Real traffic from inside namespaces, with no external tools: UDP counted to the datagram,
//! a TCP echo that checks every byte, and ICMP/ICMPv6 echo over raw sockets (`ping`).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sys::{
    socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage},
    time::TimeVal,
};

use crate::ns::{in_netns, join, run_in_netns};

/// How long a receiver waits for traffic that should arrive.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Frame length (what vethfp counts as bytes: Ethernet header included) of one UDP datagram
/// with `payload` bytes: 14 + 20 (IPv4) or 40 (IPv6) + 8 + payload.
pub fn udp_frame_len(ip: IpAddr, payload: usize) -> u64 {
    let l3 = if ip.is_ipv4() { 20 } else { 40 };
    (14 + l3 + 8 + payload) as u64
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn tag() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32 | 1
}

/// A UDP receiver running in a namespace: bound before [`udp_recv`] returns, so a sender
/// started afterwards cannot race it. Counts valid datagrams (right length, right tag,
/// sequence number in range, no duplicates) until `n` arrived or the timeout passed.
pub struct UdpReceiver {
    addr: SocketAddr,
    tag: u32,
    count: Arc<AtomicU64>,
    handle: JoinHandle<u64>,
}

impl UdpReceiver {
    /// The address the receiver is bound to (the port is chosen by the kernel if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Datagrams counted so far.
    pub fn so_far(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
    /// Wait for the receiver to finish; returns how many distinct datagrams arrived.
    pub fn wait(self) -> u64 {
        join(self.handle)
    }
}

/// Start a UDP receiver in `ns` bound to `bind`, expecting `n` datagrams of `payload_len`
/// bytes (as sent by [`udp_send`] to this receiver), giving up `timeout` after the start.
pub fn udp_recv(
    ns: &str,
    bind: SocketAddr,
    n: u64,
    payload_len: usize,
    timeout: Duration,
) -> UdpReceiver {
    let (tx, rx) = mpsc::channel();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let tag = tag();
    let handle = in_netns(ns, move || {
        let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind udp {bind}: {e}"));
        // Room for every datagram even if the reader thread is slow: loss here would not be
        // the datapath's fault. SO_RCVBUFFORCE works as root beyond rmem_max.
        let big: libc::c_int = 16 << 20;
        // SAFETY: valid fd, pointer to an int of the stated size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        tx.send(sock.local_addr().unwrap()).unwrap();
        let deadline = Instant::now() + timeout;
        let mut seen = vec![false; n as usize];
        let mut got = 0u64;
        let mut buf = vec![0u8; 65536];
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left)).unwrap();
            let len = match sock.recv(&mut buf) {
                Ok(len) => len,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break;
                }
                Err(e) => panic!("udp recv: {e}"),
            };
            if len != payload_len || len < 8 {
                continue;
            }
            if u32::from_be_bytes(buf[0..4].try_into().unwrap()) != tag {
                continue;
            }
            let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
            if seq >= seen.len() {
                continue;
            }
            assert!(!seen[seq], "duplicate UDP datagram seq {seq}");
            seen[seq] = true;
            got += 1;
            c.store(got, Ordering::Release);
        }
        got
    });
    let addr = rx.recv_timeout(TIMEOUT).expect("udp receiver did not bind");
    UdpReceiver {
        addr,
        tag,
        count,
        handle,
    }
}

/// Send `n` UDP datagrams of `payload_len` (≥ 8) bytes from `ns` (from `src` if given) to
/// `rx`. Keeps at most `window` datagrams in flight (waits for the receiver's count), so no
/// socket buffer or backlog overflow can lose packets; a lost packet makes the wait run to
/// the receiver's timeout and the count come up short. Returns how many were sent.
pub fn udp_send_to(
    ns: &str,
    src: Option<IpAddr>,
    rx: &UdpReceiver,
    n: u64,
    payload_len: usize,
    window: u64,
) -> u64 {
    assert!(
        payload_len >= 8,
        "payload must hold tag and sequence number"
    );
    let dst = rx.addr;
    let tag = rx.tag;
    let count = rx.count.clone();
    run_in_netns(ns, move || {
        let sock = UdpSocket::bind(SocketAddr::new(src.unwrap_or(unspecified(dst.ip())), 0))
            .unwrap_or_else(|e| panic!("bind udp sender {src:?}: {e}"));
        let mut buf = vec![0x5au8; payload_len];
        buf[0..4].copy_from_slice(&tag.to_be_bytes());
        let deadline = Instant::now() + TIMEOUT;
        for seq in 0..n {
            while seq >= window
                && count.load(Ordering::Acquire) + window <= seq
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            let sent = sock
                .send_to(&buf, dst)
                .unwrap_or_else(|e| panic!("udp send {seq} to {dst}: {e}"));
            assert_eq!(sent, payload_len);
        }
        n
    })
}

/// Like [`udp_send_to`], but in the background and paced: datagram `i` leaves no earlier
/// than `i * gap` after the start (and at most `window` are in flight), so the stream lasts
/// about `n * gap` — long enough to do things to the control plane while it runs. The
/// thread returns how many were sent.
pub fn udp_send_paced(
    ns: &str,
    src: Option<IpAddr>,
    rx: &UdpReceiver,
    n: u64,
    payload_len: usize,
    window: u64,
    gap: Duration,
) -> JoinHandle<u64> {
    assert!(
        payload_len >= 8,
        "payload must hold tag and sequence number"
    );
    let dst = rx.addr;
    let tag = rx.tag;
    let count = rx.count.clone();
    in_netns(ns, move || {
        let sock = UdpSocket::bind(SocketAddr::new(src.unwrap_or(unspecified(dst.ip())), 0))
            .unwrap_or_else(|e| panic!("bind udp sender {src:?}: {e}"));
        let mut buf = vec![0x5au8; payload_len];
        buf[0..4].copy_from_slice(&tag.to_be_bytes());
        let start = Instant::now();
        for seq in 0..n {
            let due = start + gap * seq as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // The window only waits for a receiver that fell behind. Lost datagrams stall
            // it: after 30 s without progress the sender stops (the receiver comes up short).
            let mut seen = count.load(Ordering::Acquire);
            let mut progress = Instant::now();
            while seq >= window && seen + window <= seq {
                if progress.elapsed() > Duration::from_secs(30) {
                    return seq;
                }
                std::thread::sleep(Duration::from_micros(100));
                let c = count.load(Ordering::Acquire);
                if c != seen {
                    seen = c;
                    progress = Instant::now();
                }
            }
            buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            let sent = sock
                .send_to(&buf, dst)
                .unwrap_or_else(|e| panic!("udp send {seq} to {dst}: {e}"));
            assert_eq!(sent, payload_len);
        }
        n
    })
}

/// Send `n` datagrams of `payload_len` bytes from `ns` (optionally from `src`) to `dst`
/// without pacing (the receiver, if any, must be a plain socket that ignores content).
pub fn udp_send(ns: &str, src: Option<IpAddr>, dst: SocketAddr, n: u64, payload_len: usize) {
    run_in_netns(ns, move || {
        let sock = UdpSocket::bind(SocketAddr::new(src.unwrap_or(unspecified(dst.ip())), 0))
            .unwrap_or_else(|e| panic!("bind udp sender {src:?}: {e}"));
        let buf = vec![0u8; payload_len];
        for i in 0..n {
            sock.send_to(&buf, dst)
                .unwrap_or_else(|e| panic!("udp send {i} to {dst}: {e}"));
        }
    })
}

/// Send exactly `n` datagrams of `payload_len` bytes from `from_ns` (from `src` if given)
/// to `dst_ip` in `to_ns`, and return how many distinct ones arrived (`n` when all did).
pub fn udp_transfer(
    from_ns: &str,
    src: Option<IpAddr>,
    to_ns: &str,
    dst_ip: IpAddr,
    n: u64,
    payload_len: usize,
) -> u64 {
    let rx = udp_recv(to_ns, SocketAddr::new(dst_ip, 0), n, payload_len, TIMEOUT);
    udp_send_to(from_ns, src, &rx, n, payload_len, 64);
    rx.wait()
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// A TCP echo server on `server_ip` in `server_ns` (port from the kernel, sent on the
/// channel once listening); the thread returns the number of bytes echoed.
fn echo_server(
    server_ns: &str,
    server_ip: IpAddr,
) -> (
    std::thread::JoinHandle<Result<usize, String>>,
    mpsc::Receiver<SocketAddr>,
) {
    let (tx, rx) = mpsc::channel();
    let server = in_netns(server_ns, move || -> Result<usize, String> {
        let l = TcpListener::bind(SocketAddr::new(server_ip, 0))
            .map_err(|e| format!("server bind {server_ip}: {e}"))?;
        tx.send(l.local_addr().unwrap()).unwrap();
        socket::setsockopt(&l, socket::sockopt::ReceiveTimeout, &TimeVal::new(10, 0))
            .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        let (mut s, _) = l.accept().map_err(|e| format!("server accept: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            let k = s.read(&mut buf).map_err(|e| format!("server read: {e}"))?;
            if k == 0 {
                break;
            }
            s.write_all(&buf[..k])
                .map_err(|e| format!("server write: {e}"))?;
            total += k;
        }
        s.shutdown(Shutdown::Write).ok();
        Ok(total)
    });
    (server, rx)
}

/// TCP: a server in `server_ns` on `server_ip` echoes everything; a client in `client_ns`
/// sends `bytes` bytes and reads them back, checking each one. Data flows both ways.
pub fn tcp_echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: IpAddr,
    bytes: usize,
) -> Result<(), String> {
    let (server, rx) = echo_server(server_ns, server_ip);
    let addr = rx
        .recv_timeout(TIMEOUT)
        .map_err(|_| "server did not start".to_string())?;
    let client = run_in_netns(client_ns, move || -> Result<(), String> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || -> Result<(), String> {
            let data: Vec<u8> = (0..bytes).map(pattern).collect();
            w.write_all(&data)
                .map_err(|e| format!("client write: {e}"))?;
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("client shutdown: {e}"))
        });
        let mut r = s;
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let k = r.read(&mut buf).map_err(|e| format!("client read: {e}"))?;
            if k == 0 {
                break;
            }
            for (j, b) in buf[..k].iter().enumerate() {
                if *b != pattern(got + j) {
                    return Err(format!("byte {} corrupted", got + j));
                }
            }
            got += k;
        }
        join(writer)?;
        if got != bytes {
            return Err(format!("echoed {got} of {bytes} bytes"));
        }
        Ok(())
    });
    let served = join(server);
    client?;
    let served = served?;
    if served != bytes {
        return Err(format!("server saw {served} of {bytes} bytes"));
    }
    Ok(())
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP (v4) or ICMPv6 echo from `ns` to `dst`: true if the reply came within 2 s.
/// Raw sockets, so no `ping` binary is needed. Tries up to 3 echo requests.
pub fn ping(ns: &str, dst: IpAddr) -> bool {
    ping_from(ns, None, dst)
}

/// [`ping`] with the source address bound to `src`.
pub fn ping_from(ns: &str, src: Option<IpAddr>, dst: IpAddr) -> bool {
    run_in_netns(ns, move || {
        let v4 = dst.is_ipv4();
        let (fam, proto) = if v4 {
            (AddressFamily::Inet, SockProtocol::Icmp)
        } else {
            (AddressFamily::Inet6, SockProtocol::IcmpV6)
        };
        let fd = socket::socket(fam, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)
            .expect("raw ICMP socket (root needed)");
        if let Some(src) = src {
            let sa = SockaddrStorage::from(SocketAddr::new(src, 0));
            socket::bind(fd.as_raw_fd(), &sa).unwrap_or_else(|e| panic!("bind {src}: {e}"));
        }
        let to = SockaddrStorage::from(SocketAddr::new(dst, 0));
        let id = (tag() & 0xffff) as u16;
        for seq in 1u16..=3 {
            let mut pkt = vec![0u8; 8 + 48];
            pkt[0] = if v4 { 8 } else { 128 };
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&seq.to_be_bytes());
            for (i, b) in pkt[8..].iter_mut().enumerate() {
                *b = i as u8;
            }
            if v4 {
                let c = inet_checksum(&pkt);
                pkt[2..4].copy_from_slice(&c.to_be_bytes());
            } // ICMPv6: the kernel fills in the checksum on raw ICMPv6 sockets.
            if socket::sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty()).is_err() {
                continue; // e.g. no route: counts as no reply
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut buf = [0u8; 2048];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let tv = TimeVal::new(
                    left.as_secs() as _,
                    (left.subsec_micros() as i64).max(1000) as _,
                );
                socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).unwrap();
                let Ok((len, from)) = socket::recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf)
                else {
                    continue;
                };
                let from_ip: Option<IpAddr> = from.and_then(|f| {
                    f.as_sockaddr_in()
                        .map(|a| IpAddr::V4(a.ip()))
                        .or_else(|| f.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
                });
                if from_ip != Some(dst) {
                    continue;
                }
                let icmp = if v4 {
                    let ihl = ((buf[0] & 0x0f) as usize) * 4;
                    if len < ihl + 8 {
                        continue;
                    }
                    &buf[ihl..len]
                } else {
                    &buf[..len]
                };
                let reply = if v4 { 0 } else { 129 };
                if icmp.len() >= 8
                    && icmp[0] == reply
                    && icmp[4..6] == id.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// A TCP stream that runs until told to stop: a client in one namespace writes a known byte
/// pattern continuously, a server in another echoes it, and the client checks every echoed
/// byte. For changing things under a live connection.
pub struct TcpFlow {
    echoed: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    client: JoinHandle<Result<(u64, u64), String>>,
    server: JoinHandle<Result<usize, String>>,
}

impl TcpFlow {
    /// Bytes echoed back and verified so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Acquire)
    }

    /// Poll until at least `bytes` were echoed and verified; false after `timeout`.
    pub fn wait_echoed(&self, bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.echoed() < bytes {
            if Instant::now() > deadline || self.client.is_finished() {
                return self.echoed() >= bytes;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stop writing, let the echo drain, and check that every byte written came back intact
    /// and the server saw all of them. Returns the number of bytes that made the round trip.
    pub fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Release);
        let client = join(self.client);
        let served = join(self.server);
        let (written, got) = client?;
        let served = served? as u64;
        if got != written || served != written {
            return Err(format!(
                "wrote {written} bytes, server saw {served}, {got} came back"
            ));
        }
        Ok(got)
    }
}

/// Start a [`TcpFlow`] from `client_ns` to a server in `server_ns` on `server_ip`.
pub fn tcp_flow(client_ns: &str, server_ns: &str, server_ip: IpAddr) -> TcpFlow {
    let (server, rx) = echo_server(server_ns, server_ip);
    let addr = rx
        .recv_timeout(TIMEOUT)
        .expect("tcp flow: server did not start");
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (e, st) = (echoed.clone(), stop.clone());
    let client = in_netns(client_ns, move || -> Result<(u64, u64), String> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || -> Result<u64, String> {
            let chunk = 16 << 10;
            let mut sent = 0usize;
            while !st.load(Ordering::Acquire) {
                let data: Vec<u8> = (sent..sent + chunk).map(pattern).collect();
                w.write_all(&data)
                    .map_err(|e| format!("client write at {sent}: {e}"))?;
                sent += chunk;
            }
            w.shutdown(Shutdown::Write)
                .map_err(|e| format!("client shutdown: {e}"))?;
            Ok(sent as u64)
        });
        let mut r = s;
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let k = r
                .read(&mut buf)
                .map_err(|e| format!("client read at {got}: {e}"))?;
            if k == 0 {
                break;
            }
            for (j, b) in buf[..k].iter().enumerate() {
                if *b != pattern(got + j) {
                    return Err(format!("byte {} corrupted", got + j));
                }
            }
            got += k;
            e.store(got as u64, Ordering::Release);
        }
        let written = join(writer)?;
        Ok((written, got as u64))
    });
    TcpFlow {
        echoed,
        stop,
        client,
        server,
    }
}
