//! Bench topologies. Each one lives in namespaces of its own and offers the same thing to the
//! workloads: a client namespace, a server namespace and the server's address.

use crate::util::{Bg, Netns, output, raw_output, setns_cmd};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const CLIENT_IP: &str = "10.210.0.2";
pub const SERVER_IP: &str = "10.210.0.3";
pub const SOCKPERF_UDP_PORT: u16 = 11111;
pub const SOCKPERF_TCP_PORT: u16 = 11112;
/// sockperf servers pinned to [`PIN_CPU`], for the same-CPU ping-pong: the path's CPU cost per
/// round trip without the cross-CPU wake-ups that make free-running latency noisy.
pub const SOCKPERF_UDP_PIN_PORT: u16 = 11113;
pub const SOCKPERF_TCP_PIN_PORT: u16 = 11114;
/// The CPU that pinned clients and servers share.
pub const PIN_CPU: &str = "1";
pub const IPERF_PORT: u16 = 5201;
/// The connection-rate workload's server (a thread of the bench itself).
pub const CRR_PORT: u16 = 11200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Bridge,
    /// The `bridge` topology, then `vethfp bridge accelerate br0` (issue 9).
    BridgeVethfp,
    BridgeDockerLike,
    Routed,
    VethfpTc,
    VethfpXdp,
    VethfpUplink,
    /// Kernel routing through ~1000 docker/kube-proxy-style FORWARD rules and conntrack.
    RoutedRules,
    /// vethfp under netfilter admission on the same node ruleset: the kernel (rules,
    /// conntrack) sees each flow's first packets, established flows go fast.
    VethfpNetfilter,
    /// The stock node (issue 21): the same ruleset, nf_conntrack_tcp_be_liberal at its
    /// default 0, `vethfp agent` running: TCP is handed off per flow.
    VethfpStock,
    /// The stock node without the agent (CLI only): TCP stays on the kernel path, UDP is
    /// accelerated. Its TCP rows against `routed+rules` are the do-no-harm figures (issue 24):
    /// what a flow vethfp does not accelerate pays for vethfp being there.
    VethfpStockCli,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Direct,
        Kind::Bridge,
        Kind::BridgeVethfp,
        Kind::BridgeDockerLike,
        Kind::Routed,
        Kind::VethfpTc,
        Kind::VethfpXdp,
        Kind::VethfpUplink,
        Kind::RoutedRules,
        Kind::VethfpNetfilter,
        Kind::VethfpStock,
        Kind::VethfpStockCli,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bridge => "bridge",
            Kind::BridgeVethfp => "bridge+vethfp",
            Kind::BridgeDockerLike => "bridge-docker-like",
            Kind::Routed => "routed",
            Kind::VethfpTc => "vethfp-tc",
            Kind::VethfpXdp => "vethfp-xdp",
            Kind::VethfpUplink => "vethfp-uplink",
            Kind::RoutedRules => "routed+rules",
            Kind::VethfpNetfilter => "vethfp-netfilter",
            Kind::VethfpStock => "vethfp-stock",
            Kind::VethfpStockCli => "vethfp-stock-cli",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Direct => "dir",
            Kind::Bridge => "br",
            Kind::BridgeVethfp => "brv",
            Kind::BridgeDockerLike => "dock",
            Kind::Routed => "rt",
            Kind::VethfpTc => "vtc",
            Kind::VethfpXdp => "vxd",
            Kind::VethfpUplink => "vup",
            Kind::RoutedRules => "rtr",
            Kind::VethfpNetfilter => "vnf",
            Kind::VethfpStock => "vst",
            Kind::VethfpStockCli => "vsc",
        }
    }

    pub fn needs_vethfp(self) -> bool {
        matches!(
            self,
            Kind::VethfpTc
                | Kind::VethfpXdp
                | Kind::BridgeVethfp
                | Kind::VethfpNetfilter
                | Kind::VethfpStock
                | Kind::VethfpStockCli
        )
    }
}

/// Where a vethfp binary lives and where it pins.
#[derive(Clone)]
pub struct Vethfp {
    pub bin: PathBuf,
    pub bpffs: PathBuf,
}

impl Vethfp {
    /// A `vethfp --bpffs DIR ARGS` command that runs inside `node` (setns, not `ip netns exec`,
    /// which would remount /sys and hide /sys/fs/bpf).
    pub fn cmd(&self, node: &Netns, args: &[&str]) -> Result<Command> {
        let mut c = node.setns_cmd(&self.bin)?;
        c.arg("--bpffs").arg(&self.bpffs).args(args);
        Ok(c)
    }

    pub fn run(&self, node: &Netns, args: &[&str]) -> Result<String> {
        output(&mut self.cmd(node, args)?)
    }
}

/// Host ends that vethfp created in one node and bridges it accelerated; on drop, `pair del`
/// for each pair and `bridge release` for each bridge still listed (best effort: removing the
/// node namespace deletes the links anyway).
pub struct VethfpPairs {
    vethfp: Vethfp,
    node_path: PathBuf,
    host_ifs: Vec<String>,
    bridges: Vec<String>,
}

impl VethfpPairs {
    pub fn new(vethfp: &Vethfp, node: &Netns) -> Self {
        VethfpPairs {
            vethfp: vethfp.clone(),
            node_path: node.path(),
            host_ifs: Vec::new(),
            bridges: Vec::new(),
        }
    }

    /// `vethfp admission MODE` in the node. The existing vethfp topologies measure the
    /// unconditional fast path (forwarding off in the node), so they run under `always`.
    pub fn admission(&mut self, mode: &str) -> Result<()> {
        let mut c = setns_cmd(&self.node_path, &self.vethfp.bin)?;
        c.arg("--bpffs").arg(&self.vethfp.bpffs);
        c.args(["admission", mode]);
        output(&mut c).with_context(|| format!("vethfp admission {mode} failed"))?;
        Ok(())
    }

    /// `vethfp uplink attach IFACE` in the node (removed with the node namespace).
    pub fn uplink_attach(&mut self, iface: &str) -> Result<()> {
        let mut c = setns_cmd(&self.node_path, &self.vethfp.bin)?;
        c.arg("--bpffs").arg(&self.vethfp.bpffs);
        c.args(["uplink", "attach", iface, "--egress", "fast"]);
        output(&mut c).with_context(|| format!("vethfp uplink attach {iface} failed"))?;
        Ok(())
    }

    /// `vethfp bridge accelerate BRIDGE` in the node.
    pub fn accelerate(&mut self, bridge: &str) -> Result<()> {
        let mut c = setns_cmd(&self.node_path, &self.vethfp.bin)?;
        c.arg("--bpffs").arg(&self.vethfp.bpffs);
        c.args(["bridge", "accelerate", bridge]);
        output(&mut c).with_context(|| format!("vethfp bridge accelerate {bridge} failed"))?;
        self.bridges.push(bridge.to_owned());
        Ok(())
    }

    pub fn vethfp(&self) -> &Vethfp {
        &self.vethfp
    }

    /// `vethfp pair add HOST_IF --netns NS --addr A ...` in the node.
    pub fn add(&mut self, host_if: &str, netns: &str, addrs: &[&str]) -> Result<()> {
        self.add_with(host_if, netns, addrs, &[])
    }

    /// `pair add` with extra options (e.g. `--mode xdp`).
    pub fn add_with(
        &mut self,
        host_if: &str,
        netns: &str,
        addrs: &[&str],
        extra: &[&str],
    ) -> Result<()> {
        let mut c = setns_cmd(&self.node_path, &self.vethfp.bin)?;
        c.arg("--bpffs").arg(&self.vethfp.bpffs);
        c.args(["pair", "add", host_if, "--netns", netns]);
        c.args(extra);
        for a in addrs {
            c.args(["--addr", a]);
        }
        output(&mut c).with_context(|| format!("vethfp pair add {host_if} failed"))?;
        self.host_ifs.push(host_if.to_owned());
        Ok(())
    }

    /// `vethfp pair del HOST_IF` for every pair added, in order; fails on the first error.
    pub fn del_all(&mut self) -> Result<()> {
        while let Some(h) = self.host_ifs.first().cloned() {
            let mut c = setns_cmd(&self.node_path, &self.vethfp.bin)?;
            c.arg("--bpffs")
                .arg(&self.vethfp.bpffs)
                .args(["pair", "del", &h]);
            self.host_ifs.remove(0);
            output(&mut c).with_context(|| format!("vethfp pair del {h} failed"))?;
            println!("demo: vethfp pair del {h}: ok");
        }
        Ok(())
    }
}

impl Drop for VethfpPairs {
    fn drop(&mut self) {
        for h in &self.host_ifs {
            if let Ok(mut c) = setns_cmd(&self.node_path, &self.vethfp.bin) {
                c.arg("--bpffs")
                    .arg(&self.vethfp.bpffs)
                    .args(["pair", "del", h]);
                let _ = raw_output(&mut c);
            }
        }
        for b in &self.bridges {
            if let Ok(mut c) = setns_cmd(&self.node_path, &self.vethfp.bin) {
                c.arg("--bpffs")
                    .arg(&self.vethfp.bpffs)
                    .args(["bridge", "release", b]);
                let _ = raw_output(&mut c);
            }
        }
    }
}

/// A built topology. Field order is drop order: servers, vethfp pairs, then namespaces.
pub struct Topo {
    pub kind: Kind,
    servers: Vec<Bg>,
    /// `vethfp agent` (vethfp-stock), dropped (killed) before the pairs are removed.
    agent: Option<Bg>,
    vethfp: Option<VethfpPairs>,
    pub client: Netns,
    pub server: Netns,
    pub node: Option<Netns>,
}

impl Topo {
    pub fn server_ip(&self) -> &'static str {
        SERVER_IP
    }

    /// Pinned-link directory of this topology's vethfp, if any.
    pub fn vethfp_bpffs(&self) -> Option<&Path> {
        self.vethfp.as_ref().map(|v| v.vethfp().bpffs.as_path())
    }

    pub fn build(kind: Kind, tag: &str, vethfp: Option<&Vethfp>) -> Result<Topo> {
        let base = format!("{tag}-{}", kind.short());
        let client = Netns::new(format!("{base}-a"))?;
        let server = Netns::new(format!("{base}-b"))?;
        let node = match kind {
            Kind::Direct => None,
            _ => Some(Netns::new(format!("{base}-n"))?),
        };
        let mut topo = Topo {
            kind,
            servers: Vec::new(),
            agent: None,
            vethfp: None,
            client,
            server,
            node,
        };
        match kind {
            Kind::Direct => topo.wire_direct()?,
            Kind::Bridge => topo.wire_bridge(false)?,
            Kind::BridgeVethfp => {
                let v = vethfp.context("bridge+vethfp needs a vethfp binary")?;
                topo.wire_bridge(false)?;
                let mut pairs = VethfpPairs::new(v, topo.node());
                pairs.admission("always")?;
                pairs.accelerate("br0")?;
                topo.vethfp = Some(pairs);
            }
            Kind::BridgeDockerLike => topo.wire_bridge(true)?,
            Kind::Routed => topo.wire_routed()?,
            Kind::RoutedRules => {
                topo.wire_routed()?;
                node_ruleset(topo.node(), ACCEPT_REST)?;
            }
            Kind::VethfpNetfilter => {
                let v = vethfp.context("vethfp topologies need a vethfp binary")?;
                topo.wire_vethfp_netfilter(v, true)?
            }
            Kind::VethfpStock => {
                let v = vethfp.context("vethfp topologies need a vethfp binary")?;
                topo.wire_vethfp_netfilter(v, false)?;
                topo.start_agent(v)?;
            }
            Kind::VethfpStockCli => {
                let v = vethfp.context("vethfp topologies need a vethfp binary")?;
                topo.wire_vethfp_netfilter(v, false)?;
            }
            Kind::VethfpUplink => {
                let v = vethfp.context("vethfp topologies need a vethfp binary")?;
                topo.wire_vethfp_uplink(v)?
            }
            Kind::VethfpTc | Kind::VethfpXdp => {
                let v = vethfp.context("vethfp topologies need a vethfp binary")?;
                topo.wire_vethfp(v, kind == Kind::VethfpXdp)?
            }
        }
        topo.wait_reachable()?;
        topo.start_servers()?;
        Ok(topo)
    }

    fn node(&self) -> &Netns {
        self.node.as_ref().expect("topology has a node namespace")
    }

    fn containers(&self) -> [(&Netns, &'static str, &'static str); 2] {
        [
            (&self.client, "ha", CLIENT_IP),
            (&self.server, "hb", SERVER_IP),
        ]
    }

    fn wire_direct(&self) -> Result<()> {
        self.client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.server.name,
        ])?;
        for (ns, _, addr) in self.containers() {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Host end `host` in the node, `eth0` in the container.
    fn veth_to(&self, host: &str, c: &Netns) -> Result<()> {
        self.node().ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &c.name,
        ])?;
        Ok(())
    }

    fn wire_bridge(&self, docker_like: bool) -> Result<()> {
        let node = self.node();
        node.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        node.ip(&["link", "set", "br0", "up"])?;
        for (c, host, addr) in self.containers() {
            self.veth_to(host, c)?;
            node.ip(&["link", "set", host, "master", "br0", "up"])?;
            c.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            c.ip(&["link", "set", "eth0", "up"])?;
        }
        if docker_like {
            docker_like_filtering(node)?;
        } else if Path::new("/proc/sys/net/bridge").exists() {
            // br_netfilter, once loaded (by bridge-docker-like, by Docker), turns these on in
            // every new namespace: the plain bridge would then pay for netfilter hooks on
            // some runs and not on others. Plain means off.
            for t in ["iptables", "ip6tables", "arptables"] {
                node.sysctl(&format!("net.bridge.bridge-nf-call-{t}"), "0")?;
            }
        }
        Ok(())
    }

    fn wire_routed(&self) -> Result<()> {
        let node = self.node();
        node.ip(&["addr", "add", "10.210.255.1/32", "dev", "lo"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        for (c, host, addr) in self.containers() {
            self.veth_to(host, c)?;
            node.ip(&["link", "set", host, "up"])?;
            c.ip(&["link", "set", "eth0", "up"])?;
            let host_mac = node.mac(host)?;
            let c_mac = c.mac("eth0")?;
            // Container: /32 address, on-link gateway with a permanent neighbour, default route.
            c.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
            c.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            c.ip(&[
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            c.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ])?;
            // Node: /32 route and permanent neighbour per container, like vethfp's slow path.
            node.ip(&["route", "add", &format!("{addr}/32"), "dev", host])?;
            node.ip(&[
                "neigh",
                "add",
                addr,
                "lladdr",
                &c_mac,
                "dev",
                host,
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    fn wire_vethfp(&mut self, v: &Vethfp, xdp: bool) -> Result<()> {
        let node = self.node();
        node.ip(&["addr", "add", "10.210.255.1/32", "dev", "lo"])?;
        // Forwarding stays off in the node: only the fast path can carry the traffic.
        node.sysctl("net.ipv4.ip_forward", "0")?;
        let mut pairs = VethfpPairs::new(v, node);
        pairs.admission("always")?;
        for (c, host, addr) in self.containers() {
            let mode: &[&str] = if xdp { &["--mode", "xdp"] } else { &[] };
            pairs.add_with(
                &format!("vf{host}"),
                &c.name,
                &[&format!("{addr}/24")],
                mode,
            )?;
        }
        self.vethfp = Some(pairs);
        Ok(())
    }

    /// vethfp (TC) under netfilter admission: forwarding on, the ~1000-rule ruleset, and
    /// (`liberal`) nf_conntrack_tcp_be_liberal = 1 as kube-proxy --conntrack-tcp-be-liberal
    /// sets it, or the kernel default 0 (the stock node, with the agent's hand-off).
    fn wire_vethfp_netfilter(&mut self, v: &Vethfp, liberal: bool) -> Result<()> {
        let node = self.node();
        node.ip(&["addr", "add", "10.210.255.1/32", "dev", "lo"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node_ruleset(node, ACCEPT_REST)?;
        if liberal {
            node.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1")?;
        }
        let mut pairs = VethfpPairs::new(v, node);
        pairs.admission("netfilter")?;
        for (c, host, addr) in self.containers() {
            pairs.add(&format!("vf{host}"), &c.name, &[&format!("{addr}/24")])?;
        }
        self.vethfp = Some(pairs);
        Ok(())
    }

    /// `vethfp agent` in the node, until `status` says TCP is handed off per flow.
    fn start_agent(&mut self, v: &Vethfp) -> Result<()> {
        let node = self.node();
        let agent = Bg::spawn(&mut v.cmd(
            node,
            &[
                "agent",
                "--metrics-addr",
                &format!("127.0.0.1:{AGENT_PORT}"),
            ],
        )?)?;
        self.agent = Some(agent);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let st = v.run(self.node(), &["status", "--json"])?;
            let v: serde_json::Value =
                serde_json::from_str(&st).context("`vethfp status --json` is not JSON")?;
            if v["tcp"] == "handoff" {
                return Ok(());
            }
            if let Some(a) = &mut self.agent {
                a.ensure_running()?;
            }
            if std::time::Instant::now() > deadline {
                bail!("the agent in {} did not start: {st}", self.node().name);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The agent's TCP hand-off delay (p50, p99 in µs, bucket upper bounds) over the run,
    /// from its /metrics histogram; None without an agent or hand-offs.
    pub fn handoff_delay(&self) -> Result<Option<(f64, f64)>> {
        if self.agent.is_none() {
            return Ok(None);
        }
        let text = output(
            self.node()
                .cmd("curl")
                .args(["-s", &format!("http://127.0.0.1:{AGENT_PORT}/metrics")]),
        )?;
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("vethfp_tcp_handoff_delay_seconds_bucket{le=\"")
            else {
                continue;
            };
            let Some((le, n)) = rest.split_once("\"} ") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, n.trim().parse()?));
        }
        let Some(&(_, total)) = buckets.last() else {
            return Ok(None);
        };
        if total == 0.0 {
            return Ok(None);
        }
        let q = |p: f64| {
            buckets
                .iter()
                .find(|(_, n)| *n >= p * total)
                .map(|(le, _)| le * 1e6)
                .unwrap_or(f64::NAN)
        };
        Ok(Some((q(0.5), q(0.99))))
    }

    /// Node ↔ container over the uplink: the client is a remote host on the node's uplink
    /// (`up0`, 10.211.0.1/24), the server a vethfp container. Client → server takes the
    /// uplink ingress program, server → client the `--egress fast` FIB path.
    fn wire_vethfp_uplink(&mut self, v: &Vethfp) -> Result<()> {
        let node = self.node();
        // FIB lookups from BPF honour the node's forwarding switch.
        node.sysctl("net.ipv4.ip_forward", "1")?;
        self.client.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &node.name,
        ])?;
        node.ip(&["addr", "add", "10.211.0.1/24", "dev", "up0"])?;
        node.ip(&["link", "set", "up0", "up"])?;
        node.ip(&["route", "add", &format!("{CLIENT_IP}/32"), "dev", "up0"])?;
        let c = &self.client;
        c.ip(&["addr", "add", &format!("{CLIENT_IP}/32"), "dev", "eth0"])?;
        c.ip(&["link", "set", "eth0", "up"])?;
        c.ip(&["route", "add", "10.211.0.1", "dev", "eth0", "scope", "link"])?;
        c.ip(&[
            "route",
            "add",
            &format!("{SERVER_IP}/32"),
            "via",
            "10.211.0.1",
        ])?;
        let mut pairs = VethfpPairs::new(v, node);
        pairs.admission("always")?;
        pairs.add("vfhb", &self.server.name, &[&format!("{SERVER_IP}/24")])?;
        pairs.uplink_attach("up0")?;
        self.vethfp = Some(pairs);
        Ok(())
    }

    fn wait_reachable(&self) -> Result<()> {
        for _ in 0..20 {
            crate::util::check_interrupted()?;
            let ok = raw_output(
                self.client
                    .cmd("ping")
                    .args(["-c1", "-W1", "-q", SERVER_IP]),
            )?
            .status
            .success();
            if ok {
                return Ok(());
            }
        }
        bail!(
            "{}: {SERVER_IP} not reachable from the client namespace {} after 20 pings; \
             inspect with `ip -n {} addr; ip -n {} route`",
            self.kind.name(),
            self.client.name,
            self.client.name,
            self.client.name
        )
    }

    fn start_servers(&mut self) -> Result<()> {
        let s = &self.server;
        let udp = SOCKPERF_UDP_PORT.to_string();
        let tcp = SOCKPERF_TCP_PORT.to_string();
        let ip3 = IPERF_PORT.to_string();
        let mut servers = vec![
            Bg::spawn(
                s.cmd("sockperf")
                    .args(["server", "-i", SERVER_IP, "-p", &udp]),
            )?,
            Bg::spawn(
                s.cmd("sockperf")
                    .args(["server", "--tcp", "-i", SERVER_IP, "-p", &tcp]),
            )?,
            Bg::spawn(s.cmd("iperf3").args(["-s", "-B", SERVER_IP, "-p", &ip3]))?,
            Bg::spawn(s.cmd("taskset").args([
                "-c",
                PIN_CPU,
                "sockperf",
                "server",
                "-i",
                SERVER_IP,
                "-p",
                &SOCKPERF_UDP_PIN_PORT.to_string(),
            ]))?,
            Bg::spawn(s.cmd("taskset").args([
                "-c",
                PIN_CPU,
                "sockperf",
                "server",
                "--tcp",
                "-i",
                SERVER_IP,
                "-p",
                &SOCKPERF_TCP_PIN_PORT.to_string(),
            ]))?,
        ];
        wait_listening(s, "-ltn", IPERF_PORT)?;
        wait_listening(s, "-ltn", SOCKPERF_TCP_PORT)?;
        wait_listening(s, "-lun", SOCKPERF_UDP_PORT)?;
        wait_listening(s, "-ltn", SOCKPERF_TCP_PIN_PORT)?;
        wait_listening(s, "-lun", SOCKPERF_UDP_PIN_PORT)?;
        for srv in &mut servers {
            srv.ensure_running()?;
        }
        self.servers = servers;
        Ok(())
    }
}

/// Wait until something listens on `port` in `ns` (`ss FLAGS sport = :port`).
pub fn wait_listening(ns: &Netns, flags: &str, port: u16) -> Result<()> {
    for _ in 0..100 {
        crate::util::check_interrupted()?;
        let out = output(
            ns.cmd("ss")
                .args(["-H", flags, "sport", "=", &format!(":{port}")]),
        )?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!(
        "nothing listens on port {port} in {} after 5 s; did the server start?",
        ns.name
    )
}

/// What Docker/Kubernetes hosts carry on their bridge: br_netfilter with
/// bridge-nf-call-iptables=1 (set inside the node namespace only), conntrack, and ~1000
/// non-matching rules in FORWARD (kube-proxy scale) before Docker's usual accepts.
fn docker_like_filtering(node: &Netns) -> Result<()> {
    if !Path::new("/proc/sys/net/bridge").exists() {
        // Module load is machine-wide; the sysctl below is per namespace.
        output(Command::new("modprobe").arg("br_netfilter"))
            .context("`modprobe br_netfilter` failed: the kernel needs CONFIG_BRIDGE_NETFILTER")?;
    }
    node.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
    node_ruleset(node, "-A FORWARD -i br0 -o br0 -j ACCEPT\n")
}

/// ~1000 docker/kube-proxy-style FORWARD rules that match nothing of the bench's traffic
/// (walked by every packet the kernel forwards), conntrack (ESTABLISHED accept), then `last`.
/// Where the stock-node agent serves /metrics (in the node's namespace).
const AGENT_PORT: u16 = 9750;

/// The end of the node ruleset: kube-proxy's INVALID drop, then accept the rest.
const ACCEPT_REST: &str =
    "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n-A FORWARD -j ACCEPT\n";

fn node_ruleset(node: &Netns, last: &str) -> Result<()> {
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..1000u32 {
        rules.push_str(&format!(
            "-A FORWARD -s 10.96.{}.{}/32 -d 10.97.{}.{}/32 -p tcp -m tcp --dport {} -j DROP\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1,
            30000 + i
        ));
    }
    rules.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    rules.push_str(last);
    rules.push_str("COMMIT\n");
    let mut child = node
        .cmd("iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start iptables-restore: try `cargo xtask setup`")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {} failed: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let n = output(node.cmd("iptables").args(["-S", "FORWARD"]))?
        .lines()
        .count();
    if n < 1000 {
        bail!("expected ~1000 FORWARD rules in {}, found {n}", node.name);
    }
    Ok(())
}
