//! End to end under the real Docker daemon (Debian's docker.io 20.10): `vethfp bridge
//! accelerate docker0` on a daemon that made the bridge, the veths, the iptables rules and the
//! containers itself, then the container churn Docker users cause (restart, stop + start,
//! rm + run), with and without the agent, published ports, an `enable_icc=false` network,
//! DOCKER-USER rules and `bridge release` (issue 16).
//!
//! The rule and NAT tests run under netfilter admission, as a Docker host has it (the node's
//! forwarding is left off for dockerd to turn on, with its FORWARD policy DROP): `accelerate`
//! succeeds and the kernel's verdict still holds, exactly. Exchanges are lock-step UDP
//! request/reply (a one-way flow is never admitted). The churn test runs under both
//! admission modes; one test asserts the refusals of admission `always`.
//!
//! dockerd runs in a node namespace made by the harness, inside a private mount namespace of
//! its own (`nsenter --net` + `unshare --mount`) with a fresh sysfs (for the node's links; the
//! cgroup mounts are bound back in), a tmpfs over /run, its own /etc/docker (the daemon writes
//! its key there), and `--data-root`, `--exec-root`, `-H unix://`, `--pidfile` under a temp
//! dir; `--oom-score-adjust 0` (no CAP_SYS_RESOURCE here). Its iptables rules land in the
//! node's netfilter; the machine's own `iptables-save` is compared before and after. The image
//! is a busybox-static rootfs, `docker import`ed (no registry is reachable). Containers'
//! namespaces are reached through `ip netns attach` names, removed afterwards.
//!
//! `/usr/local/bin/docker` on this kind of machine is an unrelated newer client that comes
//! first in PATH: the client and daemon are always called as /usr/bin/docker and
//! /usr/sbin/dockerd. A test is skipped, saying why, only when dockerd cannot start.
//!
//! Needs: docker.io, busybox-static, util-linux (`cargo xtask setup`).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use vethfp_tests::{
    Agent, Count, EndpointStats, Node, TIMEOUT, cni::TempDir, ping, run_in_netns, udp_frame_len,
    udp_transfer, unique_name,
};

const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "vfp-busybox:e2e";
const N: u64 = 500;
const PAYLOAD: usize = 100;

/// The machine's own rule set, without counters and comments.
fn machine_rules() -> String {
    let mut all = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        if let Ok(o) = Command::new(tool).output() {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if !l.starts_with('#') {
                    all.push_str(l.split(" [").next().unwrap_or(l));
                    all.push('\n');
                }
            }
        }
    }
    all
}

/// Checks on Drop that the machine's own netfilter rules are what they were.
struct MachineUntouched(String);

impl Drop for MachineUntouched {
    fn drop(&mut self) {
        let now = machine_rules();
        if now != self.0 && !std::thread::panicking() {
            panic!(
                "the machine's own iptables changed:\nbefore:\n{}\nafter:\n{now}",
                self.0
            );
        }
    }
}

/// A private dockerd in `node`. Drop removes every container, stops the daemon (its mount
/// namespace goes with it) and then the temp dir.
struct Dockerd {
    child: Child,
    sock: String,
    dir: TempDir,
}

impl Dockerd {
    /// Starts dockerd with `extra` flags and waits until it answers; None (after saying why)
    /// when it cannot start on this machine.
    fn start(node: &Node, extra: &[&str]) -> Option<Dockerd> {
        for (bin, pkg) in [(DOCKERD, "docker.io"), (DOCKER, "docker.io")] {
            if !Path::new(bin).is_file() {
                eprintln!("SKIP: {bin} is missing: `cargo xtask setup` or apt-get install {pkg}");
                return None;
            }
        }
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: apt-get install busybox-static"
        );
        let dir = TempDir::new("dk");
        let t = dir.path();
        for d in ["etc", "data", "exec", "cg"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let sock = t.join("docker.sock").display().to_string();
        let script = format!(
            "set -e
mount --rbind /sys/fs/cgroup {t}/cg
mount -t sysfs sysfs /sys
mount --rbind {t}/cg /sys/fs/cgroup
mount --bind {t}/etc /etc/docker
mount -t tmpfs tmpfs /run
exec {DOCKERD} --data-root {t}/data --exec-root {t}/exec -H unix://{sock} \
 --pidfile {t}/docker.pid --oom-score-adjust 0 --storage-driver vfs --shutdown-timeout 2 \
 {extra}",
            t = t.display(),
            extra = extra.join(" ")
        );
        let log = std::fs::File::create(t.join("dockerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.ns.name()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("run nsenter");
        let mut d = Dockerd { child, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.cmd(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                break;
            }
            let exited = d.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                eprintln!(
                    "SKIP: dockerd did not start ({}):\n{}",
                    exited.map_or("timed out".into(), |s| s.to_string()),
                    d.log()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        d.import_busybox();
        Some(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.sock))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "docker {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn import_busybox(&self) {
        let root = self.dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "ping", "nc", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar rootfs");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// `docker run -d` of a sleeping busybox (or `cmd`) with `opts`; the container.
    fn run(&self, name: &str, opts: &[&str], cmd: &[&str]) -> Ctr {
        let mut a = vec!["run", "-d", "--name", name];
        a.extend_from_slice(opts);
        a.push(IMAGE);
        if cmd.is_empty() {
            a.extend_from_slice(&["/bin/sleep", "1000000"]);
        } else {
            a.extend_from_slice(cmd);
        }
        self.ok(&a);
        self.ctr(name)
    }

    /// The running container `name`, its namespace attached under a unique name.
    fn ctr(&self, name: &str) -> Ctr {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        let st = &v[0];
        let pid = st["State"]["Pid"].as_u64().expect("running container");
        let nets = st["NetworkSettings"]["Networks"].as_object().unwrap();
        let (_, net) = nets.iter().next().expect("one network");
        let ip: IpAddr = net["IPAddress"].as_str().unwrap().parse().unwrap();
        let gw: IpAddr = net["Gateway"].as_str().unwrap().parse().unwrap();
        let mac = net["MacAddress"].as_str().unwrap().to_string();
        let ns = unique_name("dkc");
        let out = Command::new("ip")
            .args(["netns", "attach", &ns, &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns attach: {out:?}");
        let c = Ctr {
            name: name.into(),
            ns,
            ip,
            gw,
            mac,
        };
        // Neighbour entries confirmed once stay valid for the test: no unicast re-probe (which
        // the fast path would count) lands in a measurement.
        let n = c.ns.clone();
        run_in_netns(&n, || {
            std::fs::write(
                "/proc/sys/net/ipv4/neigh/eth0/base_reachable_time_ms",
                "3600000",
            )
            .unwrap()
        });
        c
    }

    /// The host end (in the node) of container `c`: the node link whose peer is its eth0.
    fn port(&self, node: &Node, c: &Ctr) -> String {
        // eth0's link_index is its host end's ifindex in the node.
        let idx = run_in_netns(&c.ns, || {
            let out = Command::new("ip")
                .args(["-j", "link", "show", "eth0"])
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v[0]["link_index"].as_u64().expect("eth0 link_index")
        });
        let links = node.ns.ip_json(&["link", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifindex"].as_u64() == Some(idx))
            .and_then(|l| l["ifname"].as_str())
            .unwrap_or_else(|| panic!("no host end with ifindex {idx} for {}", c.name))
            .to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.cmd(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&ids.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(ids);
            let out = self.cmd(&a);
            if !out.status.success() {
                eprintln!(
                    "cleanup: docker rm: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let pid = self.child.id() as i32;
        // SAFETY: signals to the daemon we started (its pid and its own process group).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("cleanup: dockerd did not stop; killing its process group");
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A container: its name, attached namespace, address, gateway and MAC.
struct Ctr {
    name: String,
    ns: String,
    ip: IpAddr,
    gw: IpAddr,
    mac: String,
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Sends `bytes` through a TCP connection to `addr` from `ns` and reads them back.
fn echo(ns: &str, addr: SocketAddr, bytes: usize) -> Result<(), String> {
    run_in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if back == data {
            Ok(())
        } else {
            Err(format!("{addr}: {} of {bytes} bytes echoed", back.len()))
        }
    })
}

/// `rounds` request/answer rounds of `chunk` bytes each over one connection, then a close:
/// unlike [`echo`] the answers flow before the client's FIN (after a FIN, the rest of a
/// connection takes the kernel path).
fn echo_rounds(ns: &str, addr: SocketAddr, rounds: usize, chunk: usize) -> Result<(), String> {
    run_in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut back = vec![0u8; chunk];
        for r in 0..rounds {
            let data: Vec<u8> = (0..chunk).map(|i| ((i + r) % 251) as u8).collect();
            s.write_all(&data)
                .map_err(|e| format!("round {r}: write: {e}"))?;
            s.read_exact(&mut back)
                .map_err(|e| format!("round {r}: read from {addr}: {e}"))?;
            if back != data {
                return Err(format!("{addr}: round {r}: answer differs"));
            }
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .map_err(|e| format!("close {addr}: {e}"))?;
        Ok(())
    })
}

/// `echo`, retried until the server listens (it starts in the background).
fn echo_eventually(ns: &str, addr: SocketAddr, bytes: usize) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match echo(ns, addr, bytes) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn zero() -> Count {
    Count::default()
}

fn no_drops(d: &EndpointStats) {
    for v in [
        "drop_spoof_ip",
        "drop_spoof_mac",
        "drop_policy",
        "drop_error",
    ] {
        assert_eq!(d.from(v), zero(), "{}: from_container.{v}", d.host_if);
        assert_eq!(d.to(v), zero(), "{}: to_container.{v}", d.host_if);
    }
}

fn status(node: &Node, bridge: &str) -> Value {
    let out = node.ok(&["bridge", "status", bridge, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bridge status: bad JSON ({e}): {out}"))
}

/// Every port of `bridge` accelerated and no stale endpoint (per `bridge status`).
fn all_accelerated(node: &Node, bridge: &str) -> bool {
    let st = status(node, bridge);
    st["stale"].as_array().unwrap().is_empty()
        && st["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["accelerated"] == true)
}

/// The path a measured exchange between two containers must take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Admission `always`, both ports accelerated: every packet fast.
    Fast,
    /// Netfilter admission, both ports accelerated: the first request and its reply take the
    /// bridge (and its netfilter; counted `stack`), the kernel forwards them unchanged, the flow
    /// is admitted and every later packet goes fast.
    Admitted,
    /// A port not accelerated (or replaced): everything through the bridge, nothing fast.
    Bridge,
}

/// A UDP echo server bound in container `c` (port 0: from the kernel): sends every datagram
/// back until dropped.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start(c: &Ctr, port: u16) -> UdpEcho {
        let at = SocketAddr::new(c.ip, port);
        let sock = run_in_netns(&c.ns, move || UdpSocket::bind(at))
            .unwrap_or_else(|e| panic!("bind {at} in {}: {e}", c.name));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let quit = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !quit.load(Ordering::Relaxed) {
                if let Ok((k, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..k], from);
                }
            }
        });
        UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket of container `c` (port from the kernel): one flow per peer.
fn udp_client(c: &Ctr) -> UdpSocket {
    let s = run_in_netns(&c.ns, || UdpSocket::bind("0.0.0.0:0")).expect("bind udp client");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}

/// `n` lock-step requests of PAYLOAD bytes from `s` to `dst`, each waiting for its echo: how
/// many were answered (stops at the first one lost).
fn exchange(s: &UdpSocket, dst: SocketAddr, n: u64) -> u64 {
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let req: Vec<u8> = (0..PAYLOAD).map(|k| (i as usize + k) as u8).collect();
        s.send_to(&req, dst).unwrap();
        loop {
            match s.recv_from(&mut buf) {
                Ok((k, from)) if from == dst && buf[..k] == req[..] => break,
                Ok(_) => continue,
                Err(_) => return i,
            }
        }
    }
    n
}

/// Permanent neighbour entries both ways between `a` and `b` (same MAC for the same IP under
/// Docker), so no ARP probe lands in a measurement and a stopped container's old MAC stays
/// the destination of its peers' packets.
fn neighbours(a: &Ctr, b: &Ctr) {
    for (x, y) in [(a, b), (b, a)] {
        let out = Command::new("ip")
            .args(["-n", &x.ns, "neigh", "replace", &y.ip.to_string()])
            .args(["lladdr", &y.mac, "dev", "eth0", "nud", "permanent"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip neigh in {}: {out:?}", x.name);
    }
}

/// `flows --json`, parsed.
fn flows(node: &Node) -> Vec<Value> {
    let out = node.ok(&["flows", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("flows --json: bad JSON ({e}): {out}"))
}

/// The flow table's entry for the flow between `x` and `y`, if any.
fn flow(node: &Node, x: SocketAddr, y: SocketAddr) -> Option<Value> {
    let (x, y) = (x.to_string(), y.to_string());
    flows(node).into_iter().find(|f| {
        f["a"] == x.as_str() && f["b"] == y.as_str() || f["a"] == y.as_str() && f["b"] == x.as_str()
    })
}

/// No flow between the addresses `x` and `y` (to or from `port`, if given) is admitted.
fn none_admitted(node: &Node, x: IpAddr, y: IpAddr, port: Option<u16>) {
    for f in flows(node) {
        let ends: Vec<SocketAddr> = ["a", "b"]
            .iter()
            .filter_map(|k| f[*k].as_str().and_then(|s| s.parse().ok()))
            .collect();
        let ips: Vec<IpAddr> = ends.iter().map(|e| e.ip()).collect();
        if ips.contains(&x)
            && ips.contains(&y)
            && port.is_none_or(|p| ends.iter().any(|e| e.port() == p))
        {
            assert_ne!(f["state"], "admitted", "{f}");
        }
    }
}

/// N lock-step UDP requests `a` → `b` through a new flow, all answered, with the senders' and
/// receivers' counters exactly as `via` says.
fn udp_counted(d: &Dockerd, node: &Node, a: &Ctr, b: &Ctr, via: Via) {
    let srv = UdpEcho::start(b, 0);
    let cl = udp_client(a);
    udp_counted_on(d, node, a, b, &cl, &srv, via);
}

/// [`udp_counted`] on the flow `cl` → `srv` (which may have been used before).
fn udp_counted_on(
    d: &Dockerd,
    node: &Node,
    a: &Ctr,
    b: &Ctr,
    cl: &UdpSocket,
    srv: &UdpEcho,
    via: Via,
) {
    let (pa, pb) = (d.port(node, a), d.port(node, b));
    neighbours(a, b);
    let before = node.all_stats();
    let tx0 = tx_packets(node, &pb);
    let got = exchange(cl, srv.addr, N);
    assert_eq!(got, N, "requests {} -> {} answered", a.name, b.name);
    let tx = tx_packets(node, &pb) - tx0;
    let after = node.all_stats();
    let len = udp_frame_len(b.ip, PAYLOAD);
    let delta = |p: &str| {
        after.get(p).map(|s| {
            s.since(
                before
                    .get(p)
                    .unwrap_or_else(|| panic!("{p}: no stats before")),
            )
        })
    };
    let client = SocketAddr::new(a.ip, cl.local_addr().unwrap().port());
    if via == Via::Bridge {
        assert!(
            tx >= N,
            "{pb} transmitted only {tx}: the bridge did not deliver the requests"
        );
        for (p, dp) in [(&pa, delta(&pa)), (&pb, delta(&pb))] {
            // Not one packet counted fast that the bridge then had to deliver.
            if let Some(dp) = dp {
                no_drops(&dp);
                assert_eq!(dp.from("fast"), zero(), "{p}: from_container.fast");
                assert_eq!(dp.to("fast"), zero(), "{p}: to_container.fast");
                assert_eq!(dp.from("stack").packets, N, "{p}: from_container.stack");
            }
        }
        return;
    }
    // Admitted: request 0 and reply 0 crossed the bridge; the rest went fast.
    let first = u64::from(via == Via::Admitted);
    let want = Count::new(N - first, (N - first) * len);
    let (da, db) = (delta(&pa).expect(&pa), delta(&pb).expect(&pb));
    no_drops(&da);
    no_drops(&db);
    assert_eq!(
        da.from("fast"),
        want,
        "{pa}: from_container.fast (requests)"
    );
    assert_eq!(db.to("fast"), want, "{pb}: to_container.fast (requests)");
    assert_eq!(db.from("fast"), want, "{pb}: from_container.fast (replies)");
    assert_eq!(da.to("fast"), want, "{pa}: to_container.fast (replies)");
    assert_eq!(
        da.from("stack").packets,
        first,
        "{pa}: from_container.stack"
    );
    assert_eq!(
        db.from("stack").packets,
        first,
        "{pb}: from_container.stack"
    );
    // The bridge did not forward them: the receiver's host end transmitted at most the first
    // request (and the daemon's own multicast, a packet or two).
    assert!(
        tx < N,
        "{pb} transmitted {tx} packets during the fast-path transfer"
    );
    if via == Via::Admitted {
        let f = flow(node, client, srv.addr)
            .unwrap_or_else(|| panic!("{client} <-> {} listed: {:?}", srv.addr, flows(node)));
        assert_eq!(f["state"], "admitted", "{f}");
        assert_eq!(f["packets"], 2 * (N - 1), "{f}");
    }
}

/// TX packets of node link `dev`.
fn tx_packets(node: &Node, dev: &str) -> u64 {
    let v = node.ns.ip_json(&["-s", "link", "show", "dev", dev]);
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node under netfilter admission as a Docker host has it: forwarding left off for dockerd
/// to turn on itself (which also sets the FORWARD policy to DROP, with its own ACCEPTs).
fn docker_host(x: u8) -> Node {
    let node = Node::netfilter(x);
    node.ns.sysctl("net.ipv4.ip_forward", "0");
    node
}

/// Runs `iptables ARGS` in the node.
fn iptables(node: &Node, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = run_in_netns(node.ns.name(), move || {
        Command::new("iptables").args(&args).output().unwrap()
    });
    assert!(out.status.success(), "iptables: {out:?}");
}

/// A DOCKER-USER DROP for UDP to `port`, inserted (`-I`) or deleted (`-D`).
fn user_drop(node: &Node, op: &str, port: u16) {
    let port = port.to_string();
    iptables(
        node,
        &[
            op,
            "DOCKER-USER",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ],
    );
}

/// The default bridge under admission `always`: [`churn_proxy_and_release`].
#[test]
fn docker_default_bridge_churn_proxy_and_release() {
    let _machine = MachineUntouched(machine_rules());
    let node = Node::new();
    churn_proxy_and_release(&node, Via::Fast);
}

/// The default bridge under netfilter admission: [`churn_proxy_and_release`], each flow
/// through the bridge for its first request and reply, then fast.
#[test]
fn docker_default_bridge_churn_under_netfilter_admission() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(82);
    assert_eq!(node.ok(&["admission"]).trim(), "netfilter");
    churn_proxy_and_release(&node, Via::Admitted);
}

/// The default bridge: accelerate with exact counters (`fast`: every packet fast, or first
/// packets `stack` then fast); restart, stop + start and rm + run churn without the agent
/// (never counted fast, always delivered; a flow accelerated before its container stopped is
/// never counted fast while the container is gone; `accelerate` prunes and picks up), then
/// with the agent (followed without `accelerate`); published ports through docker-proxy from
/// a container and from the node; `bridge release`.
fn churn_proxy_and_release(node: &Node, fast: Via) {
    let Some(d) = Dockerd::start(node, &[]) else {
        return;
    };
    if fast == Via::Admitted {
        // What a Docker host has: dockerd turned forwarding on, with the FORWARD policy DROP.
        assert_eq!(node.ns.read_sysctl("net.ipv4.ip_forward"), "1");
        let rules = run_in_netns(node.ns.name(), || {
            Command::new("iptables")
                .args(["-S", "FORWARD"])
                .output()
                .unwrap()
        });
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(rules.starts_with("-P FORWARD DROP"), "{rules}");
    }
    let c1 = d.run("c1", &[], &[]);
    let c2 = d.run("c2", &[], &[]);
    let c3 = d.run("c3", &[], &[]);
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("3 port(s) accelerated"), "{out}");
    assert!(
        all_accelerated(node, "docker0"),
        "{}",
        status(node, "docker0")
    );
    let list = node.list_json();
    for c in [&c1, &c2, &c3] {
        assert!(
            list.iter().any(|e| e["container_mac"] == c.mac.as_str()),
            "{} ({}) not in {list:?}",
            c.name,
            c.mac
        );
    }
    udp_counted(&d, node, &c1, &c2, fast);
    udp_counted(&d, node, &c3, &c1, fast);

    // Churn without the agent: never a packet counted fast that was not delivered.
    d.ok(&["restart", "-t", "0", "c2"]);
    let c2 = d.ctr("c2");
    udp_counted(&d, node, &c1, &c2, Via::Bridge);
    // A flow on the fast path until c3 stops: while c3 is gone, its packets (to c3's old MAC)
    // take the bridge, counted `stack`, never `fast`.
    let srv3 = UdpEcho::start(&c3, 0);
    let cl1 = udp_client(&c1);
    udp_counted_on(&d, node, &c1, &c3, &cl1, &srv3, fast);
    let p1 = d.port(node, &c1);
    d.ok(&["stop", "-t", "0", "c3"]);
    let before = node.stats(&p1);
    for _ in 0..10 {
        cl1.send_to(&[7u8; PAYLOAD], srv3.addr).unwrap();
    }
    wait_until("c1's 10 datagrams to the stopped c3 are counted", || {
        let s = node.stats(&p1).since(&before);
        s.from("fast").packets + s.from("stack").packets >= 10
    });
    let s = node.stats(&p1).since(&before);
    assert_eq!(s.from("fast"), zero(), "to the stopped c3: {s:?}");
    assert_eq!(s.from("stack").packets, 10, "to the stopped c3: {s:?}");
    let port3 = srv3.addr.port();
    drop(srv3);
    d.ok(&["start", "c3"]);
    let c3 = d.ctr("c3");
    // The same flow (same tuple, same MAC, new veth): delivered through the bridge, not one
    // packet counted fast, though it was on the fast path (admitted) before.
    let srv3 = UdpEcho::start(&c3, port3);
    udp_counted_on(&d, node, &c1, &c3, &cl1, &srv3, Via::Bridge);
    drop(srv3);
    udp_counted(&d, node, &c3, &c2, Via::Bridge);
    udp_counted(&d, node, &c1, &c3, Via::Bridge);
    d.ok(&["rm", "-f", "c2"]);
    drop(c2);
    let c4 = d.run("c4", &[], &[]);
    udp_counted(&d, node, &c1, &c4, Via::Bridge);
    let st = status(node, "docker0");
    assert_eq!(st["accelerated"], true, "{st}");
    assert!(!st["stale"].as_array().unwrap().is_empty(), "{st}");
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    assert!(out.contains("gone port(s) removed"), "{out}");
    assert!(
        all_accelerated(node, "docker0"),
        "{}",
        status(node, "docker0")
    );
    assert_eq!(node.list_json().len(), 3, "no stale endpoint left");
    udp_counted(&d, node, &c1, &c4, fast);
    udp_counted(&d, node, &c4, &c3, fast);
    // The flow admitted to c3's old port: its entry went with that port, so on c3's new one it
    // is admitted afresh (first request and reply through the bridge), then fast.
    let srv3 = UdpEcho::start(&c3, port3);
    udp_counted_on(&d, node, &c1, &c3, &cl1, &srv3, fast);
    drop(srv3);

    // With the agent: followed on the link events, no `accelerate`.
    let agent = Agent::start(node, &["--reconcile-interval", "3600"]);
    d.ok(&["restart", "-t", "0", "c4"]);
    let c4 = d.ctr("c4");
    d.ok(&["rm", "-f", "c3"]);
    drop(c3);
    let c5 = d.run("c5", &[], &[]);
    wait_until("the agent accelerates the new ports", || {
        all_accelerated(node, "docker0")
    });
    assert_eq!(node.list_json().len(), 3, "{}", agent.log());
    udp_counted(&d, node, &c1, &c4, fast);
    udp_counted(&d, node, &c5, &c1, fast);

    // Published port through docker-proxy (userland proxy on, the default), from a container
    // and from the node.
    let srv = d.run(
        "srv",
        &["-p", "18080:7"],
        &["nc", "-ll", "-p", "7", "-e", "/bin/cat"],
    );
    wait_until("the agent accelerates the server", || {
        all_accelerated(node, "docker0")
    });
    let published = SocketAddr::new(srv.gw, 18080);
    echo_eventually(&c1.ns, published, 100_000).expect("container -> published port");
    echo_eventually(node.ns.name(), published, 100_000).expect("node -> published port");
    echo_eventually(&c5.ns, SocketAddr::new(srv.ip, 7), 100_000).expect("container -> server");
    drop(agent);

    let out = node.ok(&["bridge", "release", "docker0"]);
    assert!(out.contains("4 port(s) released"), "{out}");
    assert_eq!(node.list_json(), Vec::<Value>::new());
    assert_eq!(status(node, "docker0")["accelerated"], false);
    udp_counted(&d, node, &c1, &c4, Via::Bridge);
    drop((c1, c4, c5, srv));
    drop(d);
}

/// An `enable_icc=false` network under netfilter admission: `accelerate` needs no refusal
/// (Docker's DROP between its ports decides every flow's first packets, and a dropped flow is
/// never admitted): the containers still cannot reach each other, nothing is counted fast,
/// and the gateway stays reachable.
#[test]
fn docker_icc_false_network_stays_isolated() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(83);
    let Some(d) = Dockerd::start(&node, &[]) else {
        return;
    };
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "-o",
        "com.docker.network.bridge.name=vfpnoicc",
        "--subnet",
        "172.30.0.0/24",
        "noicc",
    ]);
    let a = d.run("ia", &["--network", "noicc"], &[]);
    let b = d.run("ib", &["--network", "noicc"], &[]);
    neighbours(&a, &b);
    assert!(!ping(&a.ns, b.ip), "icc=false holds on the plain bridge");
    let out = node.ok(&["bridge", "accelerate", "vfpnoicc"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    let (pa, pb) = (d.port(&node, &a), d.port(&node, &b));
    let before = node.all_stats();
    assert!(!ping(&a.ns, b.ip), "accelerated: icc=false must still hold");
    let srv = UdpEcho::start(&b, 0);
    let cl = udp_client(&a);
    for _ in 0..3 {
        assert_eq!(
            exchange(&cl, srv.addr, 1),
            0,
            "accelerated: icc=false must still hold for UDP"
        );
    }
    assert_eq!(
        udp_transfer(&a.ns, None, &b.ns, b.ip, 10, PAYLOAD),
        0,
        "accelerated: icc=false must still hold for one-way UDP"
    );
    let after = node.all_stats();
    for p in [&pa, &pb] {
        let s = after[p].since(&before[p]);
        assert_eq!(s.from("fast"), zero(), "{p}: {s:?}");
        assert_eq!(s.to("fast"), zero(), "{p}: {s:?}");
    }
    none_admitted(&node, a.ip, b.ip, None);
    // The gateway (and through it the outside) stays reachable.
    assert!(ping(&a.ns, a.gw));
    drop((srv, a, b));
}

/// DOCKER-USER under netfilter admission (item 4 and 6): a DROP added before accelerating is
/// no reason to refuse and holds; one added after accelerating holds for new flows at once,
/// and re-running `accelerate` neither refuses nor bypasses it; other traffic is admitted and
/// goes fast.
#[test]
fn docker_user_rules_before_and_after_accelerating() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(84);
    let Some(d) = Dockerd::start(&node, &[]) else {
        return;
    };
    let c1 = d.run("c1", &[], &[]);
    let c2 = d.run("c2", &[], &[]);
    neighbours(&c1, &c2);
    // Before.
    user_drop(&node, "-I", 9999);
    assert!(
        udp_blocked(&c1, &c2, 9999),
        "the rule holds on the plain bridge"
    );
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    assert!(
        udp_blocked(&c1, &c2, 9999),
        "accelerated: the rule must still hold"
    );
    udp_counted(&d, &node, &c1, &c2, Via::Admitted);
    // After.
    user_drop(&node, "-I", 9997);
    assert!(
        udp_blocked(&c1, &c2, 9997),
        "added after accelerating: the rule must hold"
    );
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert_eq!(out.trim(), "docker0: 0 port(s) accelerated", "no refusal");
    assert!(udp_blocked(&c1, &c2, 9997), "after re-running accelerate");
    assert!(udp_blocked(&c1, &c2, 9999), "after re-running accelerate");
    none_admitted(&node, c1.ip, c2.ip, Some(9997));
    none_admitted(&node, c1.ip, c2.ip, Some(9999));
    // The other traffic keeps flowing, admitted then fast.
    udp_counted(&d, &node, &c1, &c2, Via::Admitted);
    udp_counted(&d, &node, &c2, &c1, Via::Admitted);
    drop((c1, c2));
}

/// Admission `always` (nothing admits flows, so the bridge's netfilter would be skipped):
/// `accelerate` refuses naming the DOCKER-USER rule and accelerates nothing; a rule added after
/// accelerating makes a re-run refuse, saying that the fast path set up earlier stays.
#[test]
fn docker_user_rules_refused_under_admission_always() {
    let _machine = MachineUntouched(machine_rules());
    let node = Node::new();
    assert_eq!(node.ok(&["admission"]).trim(), "always");
    let Some(d) = Dockerd::start(&node, &[]) else {
        return;
    };
    let c1 = d.run("c1", &[], &[]);
    let c2 = d.run("c2", &[], &[]);
    user_drop(&node, "-I", 9999);
    let msg = node.fails(&["bridge", "accelerate", "docker0"]);
    assert!(
        msg.contains("not accelerating:")
            && msg.contains("`-A DOCKER-USER -p udp -m udp --dport 9999 -j DROP`"),
        "{msg}"
    );
    assert_eq!(node.list_json(), Vec::<Value>::new());
    user_drop(&node, "-D", 9999);
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    // After.
    user_drop(&node, "-I", 9999);
    let msg = node.fails(&["bridge", "accelerate", "docker0"]);
    assert!(
        msg.contains("not accelerating the new ports of docker0")
            && msg.contains("--dport 9999 -j DROP")
            && msg.contains("The fast path set up earlier stays in place")
            && msg.contains("`vethfp bridge release docker0`"),
        "a refusal must say the earlier fast path stays: {msg}"
    );
    assert_eq!(node.list_json().len(), 2, "the earlier fast path stays");
    // ... and is what carries the traffic (the rule is skipped: what the refusal says).
    udp_counted(&d, &node, &c1, &c2, Via::Fast);
    drop((c1, c2));
}

/// True if nothing of 10 datagrams from `a` to `b`'s UDP `port` arrives within a second.
fn udp_blocked(a: &Ctr, b: &Ctr, port: u16) -> bool {
    let rx = SocketAddr::new(b.ip, port);
    let sock = run_in_netns(&b.ns, move || UdpSocket::bind(rx).unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    run_in_netns(&a.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..10 {
            s.send_to(b"x", rx).unwrap();
        }
    });
    let mut buf = [0u8; 16];
    sock.recv(&mut buf).is_err()
}

/// Netfilter admission, items 4 and 6: DOCKER-USER DROPs for another port, another subnet and
/// `--ctstate INVALID` do not stop docker0's acceleration; a DROP added after accelerating holds at once for new
/// flows, and for a flow admitted before it after `vethfp flows flush` (without the flush,
/// within the re-verify interval of 20 s, not waited for here).
#[test]
fn docker_user_drop_holds_after_accelerating() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(85);
    let Some(d) = Dockerd::start(&node, &[]) else {
        return;
    };
    let c1 = d.run("c1", &[], &[]);
    let c2 = d.run("c2", &[], &[]);
    // Before: a port block on another port and a DROP for another subnet are no reason to
    // refuse.
    user_drop(&node, "-I", 9998);
    iptables(
        &node,
        &["-I", "DOCKER-USER", "-s", "10.99.0.0/16", "-j", "DROP"],
    );
    iptables(
        &node,
        &[
            "-I",
            "DOCKER-USER",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ],
    );
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    // A flow to c2:9999, admitted and fast.
    let srv = UdpEcho::start(&c2, 9999);
    let old = udp_client(&c1);
    udp_counted_on(&d, &node, &c1, &c2, &old, &srv, Via::Admitted);
    let old_end = SocketAddr::new(c1.ip, old.local_addr().unwrap().port());
    // After: DROP c2:9999. New flows are decided by the rule at once.
    user_drop(&node, "-I", 9999);
    let fresh = udp_client(&c1);
    assert_eq!(
        exchange(&fresh, srv.addr, 1),
        0,
        "a new flow to :9999 passed the DROP"
    );
    let fresh_end = SocketAddr::new(c1.ip, fresh.local_addr().unwrap().port());
    if let Some(f) = flow(&node, fresh_end, srv.addr) {
        assert_eq!(f["state"], "pending", "{f}");
    }
    // The admitted flow: after `flows flush` the kernel decides it again, and drops it.
    let out = node.ok(&["flows", "flush"]);
    assert!(out.starts_with("flushed "), "{out}");
    let p1 = d.port(&node, &c1);
    let before = node.stats(&p1);
    assert_eq!(
        exchange(&old, srv.addr, 1),
        0,
        "the flushed flow passed the DROP"
    );
    assert_eq!(
        exchange(&old, srv.addr, 1),
        0,
        "the flushed flow passed the DROP"
    );
    let s = node.stats(&p1).since(&before);
    assert_eq!(s.from("fast"), zero(), "{s:?}");
    assert_eq!(s.from("stack").packets, 2, "{s:?}");
    let f = flow(&node, old_end, srv.addr).expect("the flushed flow is pending again");
    assert_eq!(f["state"], "pending", "{f}");
    drop(srv);
    // Everything else keeps going fast after its first packets.
    udp_counted(&d, &node, &c1, &c2, Via::Admitted);
    drop((c1, c2));
}

/// With `--userland-proxy=false` a container reaches a published port through hairpin DNAT on
/// the gateway address. Under netfilter admission `accelerate` needs no refusal: the DNAT'd
/// flow is never admitted (its replies must get the reverse NAT), so it is never counted fast
/// and keeps working, while the same server reached directly is admitted (TCP too, with a
/// liberal conntrack) and goes fast.
#[test]
fn docker_hairpin_dnat_without_userland_proxy() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(86);
    // TCP is admitted only with a liberal conntrack: then "never admitted" can fail.
    node.ns
        .sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1");
    node.ok(&["admission", "netfilter"]);
    assert_eq!(node.status_json()["tcp_admitted"], true);
    let Some(d) = Dockerd::start(&node, &["--userland-proxy=false"]) else {
        return;
    };
    let c1 = d.run("c1", &[], &[]);
    let srv = d.run(
        "srv",
        &["-p", "18080:7"],
        &["nc", "-ll", "-p", "7", "-e", "/bin/cat"],
    );
    neighbours(&c1, &srv);
    let published = SocketAddr::new(srv.gw, 18080);
    echo_eventually(&c1.ns, published, 10_000).expect("plain bridge: hairpin DNAT works");
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    let (p1, ps) = (d.port(&node, &c1), d.port(&node, &srv));
    let fast_sum = |node: &Node| {
        let (a, b) = (node.stats(&p1), node.stats(&ps));
        (a.from("fast"), a.to("fast"), b.from("fast"), b.to("fast"))
    };
    let before = fast_sum(&node);
    echo(&c1.ns, published, 100_000).expect("hairpin DNAT after accelerate");
    echo(node.ns.name(), published, 100_000).expect("node -> published port");
    assert_eq!(fast_sum(&node), before, "a DNAT'd flow took the fast path");
    none_admitted(&node, c1.ip, srv.ip, None);
    none_admitted(&node, c1.ip, srv.gw, None);
    // The same server reached directly: admitted once the kernel forwarded its data both
    // ways, then the data goes fast (1 MB in 100 request/answer rounds: most of it fast).
    let before = node.stats(&ps);
    echo_rounds(&c1.ns, SocketAddr::new(srv.ip, 7), 100, 10_000).expect("container -> server");
    let s = node.stats(&ps).since(&before);
    assert!(
        s.to("fast").bytes > 500_000,
        "direct TCP flow not accelerated: {s:?}"
    );
    assert!(
        s.from("fast").bytes > 500_000,
        "direct TCP flow not accelerated: {s:?}"
    );
    assert!(
        s.to("stack").packets >= 1 && s.from("stack").packets >= 1,
        "{s:?}"
    );
    udp_counted(&d, &node, &c1, &srv, Via::Admitted);
    drop((c1, srv));
}

/// Issue 21 under a real dockerd on a stock node (nf_conntrack_tcp_be_liberal = 0, kube-proxy's
/// INVALID drop in FORWARD): with the agent running, a long-lived TCP connection between two
/// containers on an accelerated docker0 rides the fast path after its hand-off, its close goes
/// through the bridge and conntrack, and nothing is dropped as INVALID.
#[test]
fn docker_long_lived_tcp_is_handed_off_on_a_stock_node() {
    let _machine = MachineUntouched(machine_rules());
    let node = docker_host(87);
    assert_eq!(
        node.ns
            .read_sysctl("net.netfilter.nf_conntrack_tcp_be_liberal")
            .trim(),
        "0"
    );
    let Some(d) = Dockerd::start(&node, &[]) else {
        return;
    };
    iptables(
        &node,
        &[
            "-I",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-m",
            "comment",
            "--comment",
            "invalid",
            "-j",
            "DROP",
        ],
    );
    let c1 = d.run("c1", &[], &[]);
    let srv = d.run("srv", &[], &["nc", "-ll", "-p", "7", "-e", "/bin/cat"]);
    neighbours(&c1, &srv);
    let to = SocketAddr::new(srv.ip, 7);
    echo_eventually(&c1.ns, to, 1000).expect("plain bridge: echo works");
    let out = node.ok(&["bridge", "accelerate", "docker0"]);
    assert!(out.contains("2 port(s) accelerated"), "{out}");
    let agent = Agent::start(&node, &[]);
    assert_eq!(node.status_json()["tcp"], "handoff");
    let ps = d.port(&node, &srv);
    let before = node.stats(&ps);
    echo_rounds(&c1.ns, to, 3000, 64).expect("long-lived connection");
    let s = node.stats(&ps).since(&before);
    let (fast, stack) = (s.to("fast").packets, s.to("stack").packets);
    assert!(
        fast * 10 >= (fast + stack) * 9,
        "at least 90% fast: fast {fast}, stack {stack}; agent log:\n{}",
        agent.log()
    );
    let m = agent.scrape();
    assert!(
        m.get("vethfp_tcp_handoffs_total", &[]).unwrap_or(0.0) >= 1.0,
        "handed off"
    );
    let out = run_in_netns(node.ns.name(), || {
        Command::new("iptables")
            .args(["-L", "FORWARD", "-v", "-x", "-n"])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let invalid: u64 = text
        .lines()
        .find(|l| l.contains("invalid"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the INVALID rule");
    assert_eq!(invalid, 0, "no INVALID drop:\n{text}");
    drop(agent);
    drop((c1, srv));
}
