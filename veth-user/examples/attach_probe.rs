//! Measures per-endpoint hook attach/detach costs: tcx links vs clsact + cls_bpf filters,
//! with vethfp's own programs, in a private network namespace (run as root):
//!
//! ```text
//! cargo run --release -p veth-user --example attach_probe -- [ITERATIONS]
//! ```
//!
//! Prints a markdown table of medians (and p10/p90) in ms; docs/bench/attach.md holds a run.
//! tcx links are made with raw BPF_LINK_CREATE (the syscall aya's `attach_with_options` makes,
//! but callable from two threads at once on one loaded program); cls_bpf goes through
//! `vethfp::sys::tc_filter::TcSession`; veths are deleted with one RTM_DELLINK on a reused socket.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::programs::SchedClassifier;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use vethfp::{
    datapath::{Datapath, Program},
    sys::tc_filter::{Dir, TcSession},
};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// BPF_LINK_CREATE of a tcx link (no ordering: appended), returns the link fd.
fn tcx_link(prog_fd: i32, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    // union bpf_attr, link_create: prog_fd, target_ifindex, attach_type, flags, then the tcx
    // relative_fd / expected_revision (zero: append, any revision).
    let mut attr = [0u32; 16];
    attr[0] = prog_fd as u32;
    attr[1] = ifindex;
    attr[2] = attach_type;
    // SAFETY: bpf(2) with a zero-initialised attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from the kernel, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_LINK_UPDATE: swaps the program of a link in place (vethfp's in-place upgrade).
fn link_update(link: &OwnedFd, prog_fd: i32) -> io::Result<()> {
    // link_update: link_fd, new_prog_fd, flags, old_prog_fd.
    let attr = [link.as_raw_fd() as u32, prog_fd as u32, 0, 0];
    // SAFETY: bpf(2) with an initialised attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A fresh veth pair `a`/`b`, both up; returns the ifindex of `a`.
fn veth(a: &str, b: &str) -> Result<u32> {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ip(&["link", "set", a, "up"])?;
    ip(&["link", "set", b, "up"])?;
    let c = std::ffi::CString::new(a)?;
    // SAFETY: valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("{a} has no ifindex");
    }
    Ok(idx)
}

/// One RTM_DELLINK on a reused socket, waiting for the ACK.
struct LinkDeleter {
    sock: Socket,
    seq: u32,
}

impl LinkDeleter {
    fn new() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(LinkDeleter { sock, seq: 0 })
    }

    fn delete(&mut self, ifindex: u32) -> Result<()> {
        self.seq += 1;
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        loop {
            let mut buf = Vec::with_capacity(8192);
            self.sock.recv(&mut buf, 0)?;
            let len = NetlinkBuffer::new_checked(&buf[..])
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .length() as usize;
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if m.header.sequence_number != self.seq {
                continue;
            }
            if let NetlinkPayload::Error(e) = m.payload {
                if let Some(c) = e.code {
                    bail!(
                        "deleting ifindex {ifindex}: {}",
                        io::Error::from_raw_os_error(-c.get())
                    );
                }
                return Ok(());
            }
        }
    }
}

#[derive(Default)]
struct Samples(Vec<(&'static str, Vec<Duration>)>);

impl Samples {
    fn add(&mut self, what: &'static str, d: Duration) {
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, v)) => v.push(d),
            None => self.0.push((what, vec![d])),
        }
    }

    fn print(&mut self) {
        println!("| measurement | median ms | p10 | p90 | n |");
        println!("|---|---:|---:|---:|---:|");
        for (what, v) in &mut self.0 {
            v.sort();
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            println!(
                "| {what} | {:.2} | {:.2} | {:.2} | {} |",
                q(0.5),
                q(0.1),
                q(0.9),
                v.len()
            );
        }
    }
}

fn timed<T>(s: &mut Samples, what: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    s.add(what, t.elapsed());
    r
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("ITERATIONS must be a number")?
        .unwrap_or(60);
    // A private network namespace for this thread, its children (threads, `ip`) and nothing
    // else: it goes away with the process.
    // SAFETY: plain unshare(2) before any other thread exists.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            io::Error::last_os_error()
        );
    }
    let mut ebpf = Datapath::unpinned()?;
    for name in [
        Program::TcIngress.name(),
        Program::TcEgress.name(),
        Program::L2Ingress.name(),
    ] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let fd_of = |name: &str| -> Result<OwnedFd> {
        let p: &SchedClassifier = ebpf.program(name).context("program")?.try_into()?;
        Ok(p.fd()?.as_fd().try_clone_to_owned()?)
    };
    let (ing, eg, l2) = (
        fd_of(Program::TcIngress.name())?,
        fd_of(Program::TcEgress.name())?,
        fd_of(Program::L2Ingress.name())?,
    );
    let (ingr, egr) = (ing.as_raw_fd(), eg.as_raw_fd());
    let mut tc = TcSession::new()?;
    let mut del = LinkDeleter::new()?;
    let mut s = Samples::default();

    for i in 0..n {
        // a) + c): tcx sequential attach, then sequential detach (close of the last fd).
        let idx = veth(&format!("sa{i}"), &format!("sb{i}"))?;
        let li = timed(&mut s, "a) tcx link create ingress", || {
            tcx_link(ingr, idx, BPF_TCX_INGRESS)
        })?;
        let le = timed(&mut s, "a) tcx link create egress", || {
            tcx_link(egr, idx, BPF_TCX_EGRESS)
        })?;
        timed(&mut s, "e) tcx link update ingress in place", || {
            link_update(&li, l2.as_raw_fd())
        })?;
        let t = Instant::now();
        timed(&mut s, "c) tcx link detach ingress (close)", || drop(li));
        timed(&mut s, "c) tcx link detach egress (close)", || drop(le));
        s.add("c) tcx detach both, sequential", t.elapsed());
        timed(&mut s, "c) veth delete, no hooks", || del.delete(idx))?;

        // b): both links at once from two threads; then both closes at once.
        let idx = veth(&format!("ca{i}"), &format!("cb{i}"))?;
        let go = Arc::new(Barrier::new(3));
        let spawn = |fd: i32, at: u32| {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                tcx_link(fd, idx, at)
            })
        };
        let (ti, te) = (spawn(ingr, BPF_TCX_INGRESS), spawn(egr, BPF_TCX_EGRESS));
        go.wait();
        let t = Instant::now();
        let li = ti.join().expect("thread")?;
        let le = te.join().expect("thread")?;
        s.add("b) tcx create both, two threads (wall)", t.elapsed());
        let go = Arc::new(Barrier::new(3));
        let closer = |fd: OwnedFd| {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                drop(fd)
            })
        };
        let (ti, te) = (closer(li), closer(le));
        go.wait();
        let t = Instant::now();
        ti.join().expect("thread");
        te.join().expect("thread");
        s.add("b) tcx detach both, two threads (wall)", t.elapsed());
        del.delete(idx)?;

        // c): veth delete with both tcx links still attached (held, as a pin would).
        let idx = veth(&format!("da{i}"), &format!("db{i}"))?;
        let li = tcx_link(ingr, idx, BPF_TCX_INGRESS)?;
        let le = tcx_link(egr, idx, BPF_TCX_EGRESS)?;
        timed(&mut s, "c) veth delete, 2 tcx links attached", || {
            del.delete(idx)
        })?;
        timed(&mut s, "c) close both links after the veth went", || {
            drop(li);
            drop(le)
        });

        // d) e) f): clsact + cls_bpf.
        let idx = veth(&format!("fa{i}"), &format!("fb{i}"))?;
        let t = Instant::now();
        timed(&mut s, "d) clsact qdisc create", || tc.ensure_clsact(idx))?;
        timed(&mut s, "d) cls_bpf add ingress", || {
            tc.add_or_replace_bpf(
                idx,
                Dir::Ingress,
                1,
                1,
                ing.as_fd(),
                Program::TcIngress.name(),
            )
        })?;
        timed(&mut s, "d) cls_bpf add egress", || {
            tc.add_or_replace_bpf(idx, Dir::Egress, 1, 1, eg.as_fd(), Program::TcEgress.name())
        })?;
        s.add("d) clsact + both filters, sequential", t.elapsed());
        timed(&mut s, "d) clsact again (exists: idempotent)", || {
            tc.ensure_clsact(idx)
        })?;
        timed(&mut s, "e) cls_bpf replace ingress in place", || {
            tc.add_or_replace_bpf(
                idx,
                Dir::Ingress,
                1,
                1,
                l2.as_fd(),
                Program::L2Ingress.name(),
            )
        })?;
        timed(&mut s, "e) cls_bpf list ingress (dump)", || {
            tc.list(idx, Dir::Ingress)
        })?;
        timed(&mut s, "e) cls_bpf delete ingress", || {
            tc.delete(idx, Dir::Ingress, 1, 1)
        })?;
        timed(&mut s, "e) cls_bpf delete egress", || {
            tc.delete(idx, Dir::Egress, 1, 1)
        })?;
        timed(&mut s, "f) veth delete, clsact, no filters", || {
            del.delete(idx)
        })?;
        let idx = veth(&format!("ga{i}"), &format!("gb{i}"))?;
        tc.ensure_clsact(idx)?;
        tc.add_or_replace_bpf(
            idx,
            Dir::Ingress,
            1,
            1,
            ing.as_fd(),
            Program::TcIngress.name(),
        )?;
        tc.add_or_replace_bpf(idx, Dir::Egress, 1, 1, eg.as_fd(), Program::TcEgress.name())?;
        timed(&mut s, "f) veth delete, clsact + 2 cls_bpf filters", || {
            del.delete(idx)
        })?;
    }
    println!("{n} iterations, kernel {}", kernel_release());
    s.print();
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
