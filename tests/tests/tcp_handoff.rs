//! TCP on a stock node (issue 21): conntrack loaded, `nf_conntrack_tcp_be_liberal` at its
//! default 0, kube-proxy's `-m conntrack --ctstate INVALID -j DROP` in FORWARD (with a
//! counter), and `vethfp agent` running. The agent hands each admitted TCP flow's conntrack
//! entry over (liberal windows for that entry only), then the fast path takes it. Every test
//! asserts through the counting rule that no packet was dropped as INVALID, and that no
//! connection hangs.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use vethfp_tests::{
    Agent, Container, Node, in_netns, ipt, join, run_in_netns, tcp_flow, unique_name,
};

const LONG: Duration = Duration::from_secs(20);

/// `conntrack ARGS` in namespace `ns`: stdout (the tool prints its summary on stderr).
fn conntrack(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .expect("run conntrack (xtask setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stock node with two containers (v4 + v6), INVALID-drop rules that count, and the agent.
struct Stock {
    node: Node,
    c: Vec<Container>,
    agent: Option<Agent>,
}

impl Stock {
    fn new(x: u8, mode: &str) -> Stock {
        let node = Node::netfilter(x);
        for v6 in [false, true] {
            ipt(
                node.name(),
                v6,
                "-A FORWARD -m conntrack --ctstate INVALID -m comment --comment invalid -j DROP",
            );
        }
        assert_eq!(
            node.ns
                .read_sysctl("net.netfilter.nf_conntrack_tcp_be_liberal")
                .trim(),
            "0",
            "a stock node"
        );
        let c = (2..4)
            .map(|i| {
                node.add_container_with(
                    &unique_name("vh"),
                    &[&format!("10.{x}.0.{i}/24"), &format!("fd00:{x}::{i}/64")],
                    &["--mode", mode],
                )
            })
            .collect();
        let agent = Some(Agent::start(&node, &[]));
        let st = node.status_json();
        assert_eq!(st["tcp"], "handoff", "{st}");
        Stock { node, c, agent }
    }

    fn ns(&self) -> &str {
        self.node.name()
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    /// Packets dropped as INVALID in FORWARD, v4 + v6.
    fn invalid(&self) -> u64 {
        [false, true]
            .iter()
            .map(|v6| {
                let out = ipt(self.ns(), *v6, "-L FORWARD -v -x -n");
                let line = out
                    .lines()
                    .find(|l| l.contains("invalid"))
                    .expect("the INVALID rule");
                line.split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.agent().scrape().get(name, labels).unwrap_or(0.0)
    }

    fn handoffs(&self) -> f64 {
        self.metric("vethfp_tcp_handoffs_total", &[])
    }

    /// TCP entries of the flow table (`flows --json`).
    fn tcp_flows(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.node.ok(&["flows", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|f| f["proto"] == "tcp")
            .cloned()
            .collect()
    }

    /// Polls until `f` holds (deadline LONG).
    fn wait(&self, what: &str, f: impl Fn(&Stock) -> bool) {
        self.wait_for(what, LONG, f)
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&Stock) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; flows {:?}; agent log:\n{}",
                self.tcp_flows(),
                self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_handed_off(&self) {
        self.wait("a TCP flow handed off", |s| {
            s.tcp_flows()
                .iter()
                .any(|f| f["handoff"] == "handed_off" && f["state"] == "admitted")
        });
    }

    fn wait_no_tcp_flows(&self) {
        self.wait("no TCP entry left in the flow table", |s| {
            s.tcp_flows().is_empty()
        });
    }

    /// No conntrack entry of the node's TCP connections to `port` is ESTABLISHED.
    fn assert_none_established(&self, port: u16) {
        for fam in ["ipv4", "ipv6"] {
            let out = conntrack(
                self.ns(),
                &["-L", "-f", fam, "-p", "tcp", "--dport", &port.to_string()],
            );
            assert!(
                !out.contains("ESTABLISHED"),
                "an entry stayed ESTABLISHED after the close:\n{out}"
            );
        }
    }
}

impl Drop for Stock {
    fn drop(&mut self) {
        self.agent.take();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    Fin,
    Rst,
}

/// One connection from `client` to `to` with `rounds` 64-byte request/answer rounds, closed
/// by `close`; `bind` fixes the client's source port. Returns when both ends are done.
fn rr(
    client: &str,
    server: &str,
    to: SocketAddr,
    rounds: usize,
    close: Close,
    bind: Option<SocketAddr>,
) -> Result<(), String> {
    rr_via(client, server, to, to, rounds, close, bind)
}

/// [`rr`] with the server listening on `listen` and the client connecting to `to` (a Service
/// address the node translates to `listen`).
fn rr_via(
    client: &str,
    server: &str,
    listen: SocketAddr,
    to: SocketAddr,
    rounds: usize,
    close: Close,
    bind: Option<SocketAddr>,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = in_netns(server, move || -> Result<(), String> {
        let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s
                    .write_all(&buf)
                    .map_err(|e| format!("server write: {e}"))?,
                // EOF (FIN) or a reset: the client is done.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(format!("server read: {e}")),
            }
        }
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("server close: {e}"))?;
        Ok(())
    });
    rx.recv_timeout(LONG).map_err(|_| "server did not start")?;
    let client_res = run_in_netns(client, move || -> Result<(), String> {
        let s = match bind {
            None => TcpStream::connect_timeout(&to, LONG).map_err(|e| format!("connect: {e}"))?,
            Some(b) => connect_from(b, to)?,
        };
        let mut s = s;
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..rounds {
            let req = [(i % 251) as u8; 64];
            s.write_all(&req)
                .map_err(|e| format!("round {i}: write: {e}"))?;
            s.read_exact(&mut buf)
                .map_err(|e| format!("round {i}: read: {e}"))?;
            if buf != req {
                return Err(format!("round {i}: answer corrupted"));
            }
        }
        match close {
            Close::Fin => {
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("client close: {e}"))?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)
                    .map_err(|e| format!("waiting for the server's FIN: {e}"))?;
            }
            Close::Rst => {
                nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                )
                .map_err(|e| format!("SO_LINGER: {e}"))?;
            }
        }
        Ok(())
    });
    let server_res = join(srv);
    client_res.and(server_res)
}

/// A TCP connection from a fixed local address (port reuse).
fn connect_from(local: SocketAddr, to: SocketAddr) -> Result<TcpStream, String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
        sockopt,
    };
    let fam = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(local),
    )
    .map_err(|e| format!("bind {local}: {e}"))?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(to),
    )
    .map_err(|e| format!("connect {to} from {local}: {e}"))?;
    Ok(TcpStream::from(fd))
}

/// One long request/answer connection per (family, close): ≥ 90% of its packets fast, closed
/// cleanly through the kernel, nothing INVALID, no entry left in the flow table, no conntrack
/// entry left ESTABLISHED.
fn long_connections(x: u8, mode: &str) {
    let s = Stock::new(x, mode);
    let (a, b) = (&s.c[0], &s.c[1]);
    let mut port = 7100;
    for (v6, close) in [
        (false, Close::Fin),
        (false, Close::Rst),
        (true, Close::Fin),
        (true, Close::Rst),
    ] {
        port += 1;
        let to = SocketAddr::new(if v6 { b.v6() } else { b.v4() }, port);
        let before = s.node.stats(&a.host_if);
        let handoffs = s.handoffs();
        // 6000 rounds, twice the 3000: the share that crosses the kernel before the
        // hand-off is a fixed number of packets (the hand-off delay, p99 5-10 ms here), so
        // at 3000 one slow hand-off on a busy machine failed the 90 % bound (86.8 % seen).
        rr(a.name(), b.name(), to, 6000, close, None)
            .unwrap_or_else(|e| panic!("v6={v6} {close:?}: {e}"));
        let d = s.node.stats(&a.host_if).since(&before);
        let (fast, stack) = (d.from("fast").packets, d.from("stack").packets);
        assert!(
            fast * 10 >= (fast + stack) * 9,
            "v6={v6} {close:?}: at least 90% fast: fast {fast}, stack {stack}"
        );
        assert!(s.handoffs() > handoffs, "handed off by the agent");
        s.wait_no_tcp_flows();
        s.assert_none_established(port);
        assert_eq!(s.invalid(), 0, "v6={v6} {close:?}: no INVALID drop");
    }
    let m = s.agent().scrape();
    assert!(
        m.get("vethfp_tcp_handoff_delay_seconds_count", &[])
            .unwrap_or(0.0)
            >= 4.0,
        "the hand-off delay is measured"
    );
}

#[test]
fn long_connections_are_handed_off_and_close_cleanly_tc() {
    long_connections(121, "tc");
}

#[test]
fn long_connections_are_handed_off_and_close_cleanly_xdp() {
    long_connections(122, "xdp");
}

/// 500 short connections (connect, one round, close), each likely to close before its
/// hand-off: all complete, nothing INVALID, no entry left behind.
#[test]
fn short_connections_leave_nothing_behind() {
    let s = Stock::new(123, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    for i in 0..500u16 {
        let to = SocketAddr::new(b.v4(), 8000 + (i % 50));
        rr(a.name(), b.name(), to, 1, Close::Fin, None)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
    let st = s.node.status_json();
    assert_eq!(st["flow_table"]["pending"], 0, "{st}");
}

/// 50 MiB each way, then a half-close (the client's FIN while the echo drains).
#[test]
fn bulk_both_ways_then_half_close() {
    let s = Stock::new(124, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let before = s.node.stats(&b.host_if);
    let flow = tcp_flow(a.name(), b.name(), b.v4());
    assert!(flow.wait_echoed(50 << 20, Duration::from_secs(60)));
    flow.finish().expect("clean close after the half-close");
    let d = s.node.stats(&b.host_if).since(&before);
    assert!(d.to("fast").bytes >= 40 << 20, "most of it fast: {d:?}");
    assert!(d.from("fast").bytes >= 40 << 20, "the echo too: {d:?}");
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
}

/// `conntrack -F` and `conntrack -D` of the entry under a live, handed-off connection: the
/// agent demotes the flow at once, the kernel picks the connection up again, it is handed off
/// again, and it completes.
#[test]
fn conntrack_flush_and_delete_under_a_live_connection() {
    let s = Stock::new(125, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let flow = tcp_flow(a.name(), b.name(), b.v4());
    assert!(flow.wait_echoed(1 << 20, LONG));
    s.wait_handed_off();
    conntrack(s.ns(), &["-F"]);
    let want = flow.echoed() + (8 << 20);
    assert!(flow.wait_echoed(want, LONG), "goes on after the flush");
    s.wait("a demotion for the destroyed entry", |s| {
        s.metric(
            "vethfp_tcp_demotions_total",
            &[("reason", "conntrack_destroyed")],
        ) >= 1.0
    });
    s.wait_handed_off();
    let h = s.handoffs();
    assert!(h >= 2.0, "handed off again: {h}");
    conntrack(s.ns(), &["-D", "-p", "tcp", "-d", &b.v4().to_string()]);
    let want = flow.echoed() + (8 << 20);
    assert!(flow.wait_echoed(want, LONG), "goes on after the delete");
    s.wait_handed_off();
    flow.finish().expect("completes");
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
}

/// The node-wide sysctl flipped 0→1→0 under a handed-off connection (as a kube-proxy
/// restarted with another config does): nothing breaks, the close is clean.
#[test]
fn be_liberal_flips_break_nothing() {
    let s = Stock::new(126, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let flow = tcp_flow(a.name(), b.name(), b.v6());
    assert!(flow.wait_echoed(1 << 20, LONG));
    s.wait_handed_off();
    for v in ["1", "0", "1", "0"] {
        s.node
            .ns
            .sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", v);
        // A write operation re-reads node settings: the agent's hand-off stays in charge.
        s.node.ok(&["admission", "netfilter"]);
        assert_eq!(s.node.status_json()["tcp"], "handoff");
        let want = flow.echoed() + (4 << 20);
        assert!(flow.wait_echoed(want, LONG), "be_liberal={v}: goes on");
    }
    flow.finish().expect("clean close");
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
}

/// The agent SIGKILLed with a flow handed off: the flow stays fast and correct; a new agent
/// hands off new connections again.
#[test]
fn agent_killed_and_restarted_with_flows_handed_off() {
    let mut s = Stock::new(127, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let flow = tcp_flow(a.name(), b.name(), b.v4());
    assert!(flow.wait_echoed(1 << 20, LONG));
    s.wait_handed_off();
    s.agent.take().unwrap().kill();
    assert_eq!(s.node.status_json()["tcp"], "handoff_no_agent");
    let before = s.node.stats(&b.host_if);
    let want = flow.echoed() + (8 << 20);
    assert!(flow.wait_echoed(want, LONG), "goes on without the agent");
    let d = s.node.stats(&b.host_if).since(&before);
    assert!(d.to("fast").bytes >= 6 << 20, "still fast: {d:?}");
    s.agent = Some(Agent::start(&s.node, &[]));
    s.wait_handed_off();
    let to = SocketAddr::new(b.v4(), 7300);
    rr(a.name(), b.name(), to, 500, Close::Fin, None).expect("a new connection");
    assert!(s.handoffs() >= 1.0, "the new agent hands off");
    flow.finish().expect("clean close");
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
}

/// The same 4-tuple twice (the first closed by RST, so no TIME_WAIT): the new SYN starts the
/// flow over and it is handed off again.
#[test]
fn port_reuse_with_a_new_syn_is_admitted_afresh() {
    let s = Stock::new(128, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let to = SocketAddr::new(b.v4(), 7400);
    let from = SocketAddr::new(a.v4(), 45678);
    let h0 = s.handoffs();
    for i in 0..2 {
        rr(a.name(), b.name(), to, 500, Close::Rst, Some(from))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    assert!(s.handoffs() >= h0 + 2.0, "each connection handed off");
    s.wait_no_tcp_flows();
    assert_eq!(s.invalid(), 0);
}

/// Without the agent on a stock node TCP stays on the kernel path, and `status` says why.
#[test]
fn without_the_agent_tcp_stays_on_the_kernel_path() {
    let mut s = Stock::new(129, "tc");
    s.agent.take().unwrap().terminate();
    s.node.ok(&["admission", "netfilter"]); // a write re-reads: no agent, strict conntrack
    let st = s.node.status_json();
    assert_eq!(st["tcp"], "off", "{st}");
    let text = s.node.ok(&["status"]);
    assert!(text.contains("vethfp agent"), "{text}");
    let (a, b) = (&s.c[0], &s.c[1]);
    let before = s.node.stats(&b.host_if);
    rr(
        a.name(),
        b.name(),
        SocketAddr::new(b.v4(), 7500),
        200,
        Close::Fin,
        None,
    )
    .expect("works on the kernel path");
    let d = s.node.stats(&b.host_if).since(&before);
    assert_eq!(d.to("fast").packets, 0, "{d:?}");
    assert!(s.tcp_flows().is_empty(), "TCP is not even tracked");
    assert_eq!(s.invalid(), 0);
}

/// A Service flow the node DNATs (kube-proxy's ClusterIP rule in PREROUTING) is never handed
/// off: the kernel rewrites it, so its two directions never match as one unchanged flow. It
/// works on the kernel path, nothing of it is fast, nothing INVALID, nothing left behind.
#[test]
fn dnat_service_flow_is_never_handed_off() {
    let s = Stock::new(130, "tc");
    let (a, b) = (&s.c[0], &s.c[1]);
    let listen = SocketAddr::new(b.v4(), 7600);
    let vip = SocketAddr::new("10.130.200.1".parse().unwrap(), 80);
    ipt(
        s.ns(),
        false,
        &format!(
            "-t nat -A PREROUTING -d {} -p tcp --dport {} -j DNAT --to-destination {listen}",
            vip.ip(),
            vip.port()
        ),
    );
    let (ba, bb) = (s.node.stats(&a.host_if), s.node.stats(&b.host_if));
    let h0 = s.handoffs();
    rr_via(a.name(), b.name(), listen, vip, 3000, Close::Fin, None)
        .expect("the Service works on the kernel path");
    let (da, db) = (
        s.node.stats(&a.host_if).since(&ba),
        s.node.stats(&b.host_if).since(&bb),
    );
    assert!(da.from("stack").packets >= 3000, "{da:?}");
    assert_eq!(da.from("fast").packets + da.to("fast").packets, 0, "{da:?}");
    assert_eq!(db.from("fast").packets + db.to("fast").packets, 0, "{db:?}");
    assert_eq!(s.handoffs(), h0, "never handed off");
    // Each direction of the translated flow is an entry of its own and neither sees both
    // FINs: the agent sweeps the closing halves (half the idle time after their last packet,
    // checked every 5 s).
    s.wait_for("the Service flow's halves swept", 2 * LONG, |s| {
        s.tcp_flows().is_empty()
    });
    s.assert_none_established(7600);
    assert_eq!(s.invalid(), 0);
}
