//! Kubernetes node end to end: Debian's containerd 1.6 (CRI plugin, runc) with vethfp as its
//! CNI, driven through the CRI v1 gRPC API the way kubelet drives it (see tests/src/cri.rs for
//! how containerd is kept private to the test: its own network and mount namespace, temp dirs,
//! bpffs, cgroup parent).
//!
//! Per conflist (vethfp tc, vethfp xdp, vethfp chained after ptp): two dual-stack pods, pod to
//! pod over v4 and v6 carried by the fast path (exact `vethfp stats` deltas, forwarding off in
//! the node), HTTP between pods, node to pod, a hostPort through the chained portmap plugin,
//! the agent's /metrics per pod, containerd restarted while the pods keep talking, and
//! Stop/RemovePodSandbox leaving nothing behind. A kube-proxy-style ClusterIP to a backend on
//! the same node is its own test (it needs netfilter admission for replies on the fast path).
//!
//! Skipped (with a message on stderr) only when containerd is not installed.
//! Needs: containerd, runc, busybox-static, containernetworking-plugins (`cargo xtask setup`).

use std::net::{IpAddr, SocketAddr};

use vethfp_tests::{
    Agent,
    cri::{CriNode, NetMode, POD_DNS, Pod, WEB_BODY, containerd_available},
    ping,
};

/// A containerd node, or None (after saying why) when containerd cannot run here.
fn node_or_skip(mode: NetMode, test: &str) -> Option<CriNode> {
    if let Err(why) = containerd_available() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(CriNode::start(mode))
}

const SLEEP: &[&str] = &["/bin/sleep", "2147483647"];
// Debian's busybox-static 1.35 wget segfaults with -T: the ExecSync timeout bounds it.
const HTTPD: &[&str] = &["/bin/httpd", "-f", "-p", "80", "-h", "/www"];
const HOST_PORT: u16 = 30080;

fn url(ip: &str) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]/")
    } else {
        format!("http://{ip}/")
    }
}

/// Two pods (a client, a web server with hostPort 30080 → 80) with their containers.
struct Pods {
    a: Pod,
    b: Pod,
    client: String,
    web: String,
}

fn two_pods(k: &mut CriNode) -> Pods {
    let a = k.run_pod("pod-a", &[]);
    let b = k.run_pod("pod-b", &[(80, HOST_PORT as i32)]);
    let client = k.run_container(&a, "client", SLEEP);
    let web = k.run_container(&b, "web", HTTPD);
    Pods { a, b, client, web }
}

fn pods_end_to_end(mode: NetMode, test: &str) {
    let Some(mut k) = node_or_skip(mode, test) else {
        return;
    };
    let p = two_pods(&mut k);
    if mode == NetMode::ChainedPtp {
        // ptp turns forwarding on at every ADD: off again, so only the fast path can carry
        // pod to pod below.
        k.node.ns.sysctl("net.ipv4.ip_forward", "0");
        k.node.ns.sysctl("net.ipv6.conf.all.forwarding", "0");
    }
    eprintln!("{test}: pod-a {:?}, pod-b {:?}", p.a, p.b);
    let (ha, hb) = (k.host_if_of(&p.a.v4), k.host_if_of(&p.b.v4));
    assert_ne!(ha, hb);
    assert_eq!(
        k.host_if_of(&p.a.v6),
        ha,
        "both of pod-a's addresses on one endpoint"
    );
    assert_eq!(
        k.host_if_of(&p.b.v6),
        hb,
        "both of pod-b's addresses on one endpoint"
    );
    let pod_hosts = [ha.clone(), hb.clone()];
    assert_eq!(
        k.exec_ok(&p.web, &["hostname"]).trim(),
        "pod-b",
        "pod hostname"
    );
    let resolv = k.exec_ok(&p.client, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {POD_DNS}")) && resolv.contains("svc.cluster.local"),
        "pod DNS config: {resolv}"
    );

    // Pod to pod, v4 and v6. The first echo may wait for IPv6 DAD in the pods.
    for ip in [&p.b.v4, &p.b.v6] {
        k.exec_until_ok(&p.client, &["ping", "-c", "1", "-W", "2", ip]);
    }
    assert_eq!(k.node.ns.read_sysctl("net.ipv4.ip_forward"), "0");
    let n = 5u64;
    for ip in [p.b.v4.clone(), p.b.v6.clone()] {
        k.node.wait_all_quiet();
        let before = k.node.all_stats();
        let out = k.exec_ok(
            &p.client,
            &["ping", "-c", &n.to_string(), "-i", "0.2", "-W", "2", &ip],
        );
        assert!(
            out.contains(&format!("{n} packets transmitted, {n} packets received")),
            "{out}"
        );
        k.node.wait_all_quiet();
        let after = k.node.all_stats();
        let da = after[&ha].since(&before[&ha]);
        let db = after[&hb].since(&before[&hb]);
        eprintln!("{test} ping {ip}: pod-a {da:?}\npod-b {db:?}");
        // Forwarding is off in the node: only the fast path can carry pod to pod.
        assert_eq!(da.from("fast").packets, n, "pod-a's echoes, fast: {da:?}");
        assert_eq!(db.to("fast").packets, n, "delivered to pod-b fast: {db:?}");
        assert_eq!(db.from("fast").packets, n, "pod-b's replies, fast: {db:?}");
        assert_eq!(da.to("fast").packets, n, "replies delivered fast: {da:?}");
    }
    // HTTP pod to pod (TCP over the fast path).
    for ip in [&p.b.v4, &p.b.v6] {
        let before = k.node.stats(&hb);
        let body = k.exec_ok(&p.client, &["wget", "-q", "-O", "-", &url(ip)]);
        assert_eq!(body, WEB_BODY, "GET {ip} from pod-a");
        let d = k.node.stats(&hb).since(&before);
        assert!(d.to("fast").packets >= 3, "HTTP to pod-b fast: {d:?}");
    }
    // Node to pod: the node's own stack, through the host end.
    for ip in [&p.a.v4, &p.a.v6, &p.b.v4, &p.b.v6] {
        assert!(ping(k.node.name(), ip.parse().unwrap()), "node → {ip}");
    }
    // hostPort (portmap after vethfp): the node's address, port 30080 → pod-b:80.
    for node_ip in [k.node.v4(), k.node.v6()] {
        let body = k
            .http_get_from_node(SocketAddr::new(node_ip, HOST_PORT))
            .unwrap_or_else(|e| panic!("hostPort {node_ip}:{HOST_PORT}: {e}"));
        assert_eq!(body, WEB_BODY, "hostPort via {node_ip}");
    }

    // The agent sees each pod.
    {
        let agent = Agent::start(&k.node, &[]);
        let m = agent.scrape();
        for h in &pod_hosts {
            let fast: f64 = m
                .all("vethfp_endpoint_packets_total")
                .iter()
                .filter(|(l, _)| {
                    l.get("host_if") == Some(h)
                        && l.get("direction").map(String::as_str) == Some("from_container")
                        && l.get("verdict").map(String::as_str) == Some("fast")
                })
                .map(|(_, v)| v)
                .sum();
            assert!(
                fast >= (2 * n) as f64,
                "/metrics: {h} from_container fast packets {fast}"
            );
        }
    }

    // containerd restarted while the pods talk: a ping runs in pod-a across the restart.
    k.exec_ok(
        &p.client,
        &[
            "sh",
            "-c",
            &format!("ping -c 50 -i 0.2 {} >/tmp/bg.log 2>&1 &", p.b.v4),
        ],
    );
    k.stop_containerd();
    assert!(!k.containerd_running());
    let before = k.node.stats(&ha);
    let s = k
        .node
        .wait_stats(&ha, |s| s.since(&before).from("fast").packets >= 3);
    eprintln!("{test}: while containerd is down: {:?}", s.since(&before));
    k.start_containerd();
    let pods = k.list_pods();
    for id in [&p.a.id, &p.b.id] {
        assert!(
            pods.iter().any(|(i, st)| i == id && *st == 0),
            "{id} ready after the restart: {pods:?}"
        );
    }
    k.exec_until_ok(
        &p.client,
        &[
            "grep",
            "-q",
            "50 packets transmitted, 50 packets received",
            "/tmp/bg.log",
        ],
    );
    let body = k.exec_ok(&p.client, &["wget", "-q", "-O", "-", &url(&p.b.v4)]);
    assert_eq!(body, WEB_BODY, "after the restart");

    // Teardown as kubelet does it: nothing may be left.
    // What teardown must remove is there now (so the checks below can fail).
    let link_pins = |files: &std::collections::BTreeSet<String>| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.starts_with("vethfp/links/"))
            .cloned()
            .collect()
    };
    // Each pod's host end carries vethfp's two cls_bpf filters running this node's programs
    // (endpoint hooks have no link pins; the filters go with the veth on teardown).
    for h in &pod_hosts {
        assert!(
            k.node.has_filters(h),
            "{h}: vethfp's filters: {:?}",
            k.node.our_filters(h)
        );
    }
    let pins_with_pods = k.node.bpffs.files();
    assert_eq!(k.leases().len(), 4, "host-local leases: {:?}", k.leases());
    let cache = k.cni_cache_files();
    for id in [&p.a.id, &p.b.id] {
        assert!(
            cache.iter().any(|f| f.contains(id.as_str())),
            "libcni cache has {id}: {cache:?}"
        );
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        assert!(
            k.in_node(tool, &["-t", "nat"]).contains(&k.network),
            "{tool}: portmap rules of {} in the node",
            k.network
        );
    }
    k.remove_pod(&p.a.id);
    k.remove_pod(&p.b.id);
    assert!(k.list_pods().is_empty(), "{:?}", k.list_pods());
    assert!(k.node.list_json().is_empty(), "{:?}", k.node.list_json());
    let links: Vec<String> = k
        .node
        .ns
        .link_names()
        .into_iter()
        .filter(|l| l != "lo")
        .collect();
    assert!(links.is_empty(), "links left in the node: {links:?}");
    for ip in [&p.a.v4, &p.a.v6, &p.b.v4, &p.b.v6] {
        let r = k.node_routes_to(ip);
        assert!(r.is_empty(), "routes to {ip} left: {r:?}");
    }
    assert!(
        k.leases().is_empty(),
        "host-local leases left: {:?}",
        k.leases()
    );
    let cache = k.cni_cache_files();
    assert!(cache.is_empty(), "libcni cache left: {cache:?}");
    let left = link_pins(&k.node.bpffs.files());
    assert!(
        left.is_empty(),
        "link pins left: {left:?} (with pods: {pins_with_pods:?})"
    );
    for tool in ["iptables-save", "ip6tables-save"] {
        let nat = k.in_node(tool, &["-t", "nat"]);
        assert!(
            !nat.contains(&k.network) && !nat.contains(&HOST_PORT.to_string()),
            "{tool}: portmap rules left:\n{nat}"
        );
        // Nothing of this node ever reached the machine's own tables.
        let root = std::process::Command::new(tool)
            .args(["-t", "nat"])
            .output()
            .expect("run iptables-save");
        assert!(
            !String::from_utf8_lossy(&root.stdout).contains(&k.network),
            "{tool}: this node's rules in the machine's namespace"
        );
    }
    let root_links = vethfp_tests::ip(&["-o", "link", "show"]);
    for h in &pod_hosts {
        assert!(
            !root_links.contains(h.as_str()),
            "{h} appeared in the machine's namespace"
        );
    }
}

#[test]
fn cri_tc_pods_over_the_fast_path() {
    pods_end_to_end(NetMode::Tc, "cri_tc_pods_over_the_fast_path");
}

#[test]
fn cri_xdp_pods_over_the_fast_path() {
    pods_end_to_end(NetMode::Xdp, "cri_xdp_pods_over_the_fast_path");
}

#[test]
fn cri_chained_after_ptp_pods_over_the_fast_path() {
    pods_end_to_end(
        NetMode::ChainedPtp,
        "cri_chained_after_ptp_pods_over_the_fast_path",
    );
}

/// kube-proxy (iptables mode) style ClusterIP: DNAT in the node's PREROUTING to a backend pod
/// on the same node. The request leaves pod-a for the node's stack (the service address is no
/// endpoint), the reply from pod-b must be un-NATed by conntrack: it must not take the fast
/// path straight to pod-a. The same for pod-b's hostPort reached from pod-a (portmap's DNAT).
#[test]
fn cri_clusterip_to_a_backend_on_the_same_node() {
    clusterip_same_node(NetMode::Tc, "cri_clusterip_to_a_backend_on_the_same_node");
}

/// The same ClusterIP setup with ptp alone (no vethfp): the kernel routes and conntrack
/// un-NATs the reply. Proves the test's service setup is right, whatever vethfp does.
#[test]
fn cri_clusterip_control_without_vethfp() {
    clusterip_same_node(NetMode::PtpOnly, "cri_clusterip_control_without_vethfp");
}

fn clusterip_same_node(mode: NetMode, test: &str) {
    let Some(mut k) = node_or_skip(mode, test) else {
        return;
    };
    let p = two_pods(&mut k);
    // Kubernetes nodes forward (kube-proxy and hostPort need it).
    k.node.ns.sysctl("net.ipv4.ip_forward", "1");
    k.node.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    // The harness node starts under `admission always` (its forwarding-off proofs); a real
    // node runs the default, `netfilter`, which is what keeps Services working.
    k.node.ok(&["admission", "netfilter"]);
    let services: [(&str, &str, &str); 2] = [
        ("iptables", "10.96.0.10", &p.b.v4),
        ("ip6tables", "fd00:96::10", &p.b.v6),
    ];
    for (tool, vip, backend) in services {
        let to = if backend.contains(':') {
            format!("[{backend}]:80")
        } else {
            format!("{backend}:80")
        };
        for chain in ["PREROUTING", "OUTPUT"] {
            k.in_node(
                tool,
                &[
                    "-t",
                    "nat",
                    "-A",
                    chain,
                    "-d",
                    vip,
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ],
            );
        }
    }
    // Service CIDRs routed somewhere in the node, as kube-proxy's nodes have (a default
    // route, or kube-ipvs0): locally sent requests need a route before OUTPUT's DNAT.
    // (A veth pair inside the node: this kernel has no dummy driver.)
    k.node.ns.ip(&[
        "link", "add", "ksvc0", "type", "veth", "peer", "name", "ksvc1",
    ]);
    k.node.ns.ip(&["link", "set", "ksvc1", "up"]);
    k.node.ns.ip(&["link", "set", "ksvc0", "up"]);
    k.node
        .ns
        .ip(&["route", "add", "10.96.0.0/12", "dev", "ksvc0"]);
    k.node
        .ns
        .ip(&["-6", "route", "add", "fd00:96::/64", "dev", "ksvc0"]);
    for ip in [&p.b.v4, &p.b.v6] {
        k.exec_until_ok(&p.client, &["ping", "-c", "1", "-W", "2", ip]);
    }
    // The node itself reaches the service (OUTPUT DNAT): the setup is right.
    let vip4: IpAddr = "10.96.0.10".parse().unwrap();
    assert_eq!(
        k.http_get_from_node(SocketAddr::new(vip4, 80)).as_deref(),
        Ok(WEB_BODY),
        "node → ClusterIP"
    );
    // With vethfp: which path pod-b's replies took, for the failure message.
    let hb = (mode != NetMode::PtpOnly).then(|| k.host_if_of(&p.b.v4));
    // The ClusterIPs, and pod-b's hostPort on the node's address (the same DNAT-then-reply
    // path, made by portmap).
    let mut urls: Vec<String> = services.iter().map(|(_, vip, _)| url(vip)).collect();
    urls.push(format!("http://{}:{HOST_PORT}/", k.node.v4()));
    for u in &urls {
        let before = hb.as_ref().map(|h| k.node.stats(h));
        let r = k.exec(&p.client, &["wget", "-q", "-O", "-", u], 20);
        let replies = hb
            .as_ref()
            .zip(before)
            .map(|(h, b)| {
                let d = k.node.stats(h).since(&b);
                format!(
                    "pod-b sent {} packets on the fast path, {} to the stack",
                    d.from("fast").packets,
                    d.from("stack").packets
                )
            })
            .unwrap_or_default();
        assert_eq!(
            (r.exit_code, r.stdout.as_str()),
            (0, WEB_BODY),
            "pod-a → {u} → pod-b on the same node: {} ({replies})",
            r.stderr
        );
    }
}
