//! XDP mode end to end (issue 3): endpoints whose host end runs the native XDP program, which
//! forwards with a devmap redirect. The node has forwarding disabled, so only vethfp can carry
//! container-to-container traffic; BPF run-time statistics (per program run counts) prove which
//! hook carried it, so XDP silently passing everything to the tcx program would fail here.
//! Each test builds its own node, so they run in parallel.

use std::time::{Duration, Instant};

use vethfp_tests::{
    Agent, Container, Count, EndpointStats, Node, TIMEOUT, bpf_stats, tcp_echo, tcp_flow,
    udp_frame_len, udp_recv, udp_send_to, udp_transfer,
};

const N: u64 = 1000;
const PAYLOAD: usize = 100;
const XDP: &str = "vfp_xdp";
const TC_IN: &str = "vfp_tc_ingress";

fn zero() -> Count {
    Count::default()
}

fn assert_no_drops(d: &EndpointStats) {
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

/// A node (forwarding off) with one container per `(host_if, mode)`, addresses
/// 10.1.0.(2+i) and fd00:1::(2+i); waits until their counters are quiet.
fn node_with(modes: &[(&str, &str)]) -> (Node, Vec<Container>) {
    let node = Node::new();
    assert_eq!(node.ns.read_sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(node.ns.read_sysctl("net.ipv6.conf.all.forwarding"), "0");
    let cs: Vec<Container> = modes
        .iter()
        .enumerate()
        .map(|(i, (host_if, mode))| {
            let a4 = format!("10.1.0.{}/24", 2 + i);
            let a6 = format!("fd00:1::{:x}/64", 2 + i);
            node.add_container_with(host_if, &[&a4, &a6], &["--mode", mode])
        })
        .collect();
    for c in &cs {
        node.wait_quiet(&c.host_if);
    }
    (node, cs)
}

/// The mode `pair list --json` reports for `host_if`, and whether `ip link` shows a native
/// (driver-mode) XDP program on the host end.
fn mode_of(node: &Node, host_if: &str) -> (String, bool) {
    let e = node
        .list_entry(host_if)
        .unwrap_or_else(|| panic!("{host_if} not in pair list"));
    let link = node.ns.link(host_if).expect("host end exists");
    // ip -j link: "xdp": {"mode": 1 (driver), "prog": {...}}; generic mode would be 2.
    let native = link["xdp"]["mode"] == 1;
    (e["mode"].as_str().expect("mode").to_string(), native)
}

/// N datagrams `from` → `to` (v4 or v6): all arrive; exactly N frames of the right length on
/// the sender's from_container.fast and the receiver's to_container.fast, nothing else moves
/// anywhere. Returns the run-count deltas of (vfp_xdp, vfp_tc_ingress) over the transfer.
fn udp_exact(node: &Node, cs: &[Container], from: usize, to: usize, v6: bool) -> (u64, u64) {
    let (src, dst) = (&cs[from], &cs[to]);
    let dst_ip = if v6 { dst.v6() } else { dst.v4() };
    let before = node.all_stats();
    let (x0, t0) = (node.prog_run_count(XDP), node.prog_run_count(TC_IN));
    let got = udp_transfer(src.name(), None, dst.name(), dst_ip, N, PAYLOAD);
    let (x1, t1) = (node.prog_run_count(XDP), node.prog_run_count(TC_IN));
    assert_eq!(got, N, "datagrams received by {dst_ip}");
    let after = node.all_stats();
    let want = Count::new(N, N * udp_frame_len(dst_ip, PAYLOAD));
    for c in cs {
        let d = after[&c.host_if].since(&before[&c.host_if]);
        assert_no_drops(&d);
        let is = |x: &Container, w| if c.host_if == x.host_if { w } else { zero() };
        assert_eq!(d.from("fast"), is(src, want), "{}: from.fast", c.host_if);
        assert_eq!(d.to("fast"), is(dst, want), "{}: to.fast", c.host_if);
        for v in ["stack", "fast_uplink"] {
            assert_eq!(d.from(v), zero(), "{}: from.{v}", c.host_if);
            assert_eq!(d.to(v), zero(), "{}: to.{v}", c.host_if);
        }
    }
    (x1 - x0, t1 - t0)
}

#[test]
fn xdp_udp_v4_v6_exact_and_carried_by_xdp() {
    let (node, c) = node_with(&[("vx1", "xdp"), ("vx2", "xdp"), ("vx3", "xdp")]);
    for c in &c {
        assert_eq!(mode_of(&node, &c.host_if), ("xdp".into(), true));
    }
    let _stats = bpf_stats();
    for v6 in [false, true] {
        let (xdp, tc) = udp_exact(&node, &c, 0, 1, v6);
        // XDP decided every datagram; none reached the tcx ingress program (which would
        // count them just the same if XDP had passed them on).
        assert!(
            xdp >= N,
            "v6={v6}: vfp_xdp ran {xdp} times for {N} datagrams"
        );
        assert_eq!(tc, 0, "v6={v6}: vfp_tc_ingress ran: XDP passed frames on");
        let (xdp, tc) = udp_exact(&node, &c, 2, 0, v6);
        assert!(
            xdp >= N,
            "v6={v6}: vfp_xdp ran {xdp} times for {N} datagrams"
        );
        assert_eq!(tc, 0, "v6={v6}: vfp_tc_ingress ran: XDP passed frames on");
    }
}

#[test]
fn xdp_tcp_v4_v6_both_ways() {
    let (node, c) = node_with(&[("vx1", "xdp"), ("vx2", "xdp"), ("vx3", "xdp")]);
    let _stats = bpf_stats();
    let before = node.all_stats();
    let (x0, t0) = (node.prog_run_count(XDP), node.prog_run_count(TC_IN));
    let bytes = 2 << 20;
    for (a, b) in [(&c[0], &c[1]), (&c[1], &c[0])] {
        for ip in [b.v4(), b.v6()] {
            tcp_echo(a.name(), b.name(), ip, bytes)
                .unwrap_or_else(|e| panic!("tcp {} -> {ip}: {e}", a.name()));
        }
    }
    let (x1, t1) = (node.prog_run_count(XDP), node.prog_run_count(TC_IN));
    let after = node.all_stats();
    let d1 = after["vx1"].since(&before["vx1"]);
    let d2 = after["vx2"].since(&before["vx2"]);
    let d3 = after["vx3"].since(&before["vx3"]);
    for d in [&d1, &d2, &d3] {
        assert_no_drops(d);
        assert_eq!(d.from("stack"), zero(), "{}: from.stack", d.host_if);
        assert_eq!(d.to("stack"), zero(), "{}: to.stack", d.host_if);
    }
    // 4 transfers x 2 MiB, echoed: at least 8 MiB each way, all of it fast.
    let min = 4 * bytes as u64;
    assert!(d1.from("fast").bytes >= min, "{d1:?}");
    assert!(d2.from("fast").bytes >= min, "{d2:?}");
    assert_eq!(d1.from("fast"), d2.to("fast"));
    assert_eq!(d2.from("fast"), d1.to("fast"));
    assert_eq!(d3.to("fast"), zero());
    // Every segment was a frame the XDP program redirected: one run per frame counted.
    let frames = d1.from("fast").packets + d2.from("fast").packets;
    assert!(
        x1 - x0 >= frames,
        "vfp_xdp ran {} times for {frames} frames",
        x1 - x0
    );
    assert_eq!(t1 - t0, 0, "vfp_tc_ingress ran: XDP passed TCP segments on");
}

#[test]
fn mixed_tc_and_xdp_both_directions() {
    let (node, c) = node_with(&[("vt1", "tc"), ("vx2", "xdp")]);
    assert_eq!(mode_of(&node, "vt1"), ("tc".into(), false));
    assert_eq!(mode_of(&node, "vx2"), ("xdp".into(), true));
    let _stats = bpf_stats();
    for v6 in [false, true] {
        // TC → XDP: tcx ingress on vt1 redirect_peers into vx2's container; XDP never runs.
        let (xdp, tc) = udp_exact(&node, &c, 0, 1, v6);
        assert_eq!(xdp, 0, "v6={v6} tc->xdp: vfp_xdp ran");
        assert!(tc >= N, "v6={v6} tc->xdp: vfp_tc_ingress ran {tc} times");
        // XDP → TC: vt1's container end has no NAPI (GRO off), so XDP passes every frame on,
        // uncounted, and tcx ingress on vx2 redirect_peers it (and counts it, exactly once).
        let (xdp, tc) = udp_exact(&node, &c, 1, 0, v6);
        assert!(xdp >= N, "v6={v6} xdp->tc: vfp_xdp ran {xdp} times");
        assert!(tc >= N, "v6={v6} xdp->tc: vfp_tc_ingress ran {tc} times");
    }
    let before = node.all_stats();
    for (a, b) in [(&c[0], &c[1]), (&c[1], &c[0])] {
        for ip in [b.v4(), b.v6()] {
            tcp_echo(a.name(), b.name(), ip, 1 << 20)
                .unwrap_or_else(|e| panic!("tcp {} -> {ip}: {e}", a.name()));
        }
    }
    let after = node.all_stats();
    let dt = after["vt1"].since(&before["vt1"]);
    let dx = after["vx2"].since(&before["vx2"]);
    for d in [&dt, &dx] {
        assert_no_drops(d);
        assert_eq!(d.from("stack"), zero(), "{}: from.stack", d.host_if);
        assert_eq!(d.to("stack"), zero(), "{}: to.stack", d.host_if);
    }
    assert!(dt.from("fast").bytes >= 4 << 20 && dx.from("fast").bytes >= 4 << 20);
    assert_eq!(dt.from("fast"), dx.to("fast"));
    assert_eq!(dx.from("fast"), dt.to("fast"));
}

/// The classic XDP-on-veth failure: a devmap redirect into a veth whose receiving end has no
/// NAPI is dropped by the kernel *after* the program returned XDP_REDIRECT, so the program's
/// counters say "delivered" while nothing arrives. vethfp gives an `xdp` endpoint's container
/// end NAPI by turning GRO on, and only redirects into `xdp` endpoints; a `tc` endpoint's
/// container end keeps GRO off (GRO costs every kernel-path packet into it) and XDP senders
/// reach it through tcx. This test shows both: GRO off on the `xdp` receiver makes datagrams
/// vanish (and the receiver-side count catches it); the `tc` receiver, GRO off, gets them all.
#[test]
fn devmap_redirect_into_end_without_napi_is_caught() {
    let (node, c) = node_with(&[("vx1", "xdp"), ("vt2", "tc"), ("vx3", "xdp")]);
    let n = 50; // below the sender's window: nothing waits for the receiver
    let short = Duration::from_secs(2);
    let (tc, xdp) = (&c[1], &c[2]);
    assert!(
        !tc.ns.gro(&tc.ifname),
        "vt2: a tc endpoint's container end must keep GRO off"
    );
    let before = node.stats(&tc.host_if);
    let rx = udp_recv(tc.name(), (tc.v4(), 0).into(), n, PAYLOAD, TIMEOUT);
    udp_send_to(c[0].name(), None, &rx, n, PAYLOAD, 64);
    assert_eq!(rx.wait(), n, "vt2: an XDP sender must reach a tc endpoint");
    let d = node.stats(&tc.host_if).since(&before);
    assert_eq!(d.to("fast").packets, n, "vt2: {d:?}");

    assert!(
        xdp.ns.gro(&xdp.ifname),
        "vx3: vethfp must turn GRO on on an xdp endpoint's container end"
    );
    let rx = udp_recv(xdp.name(), (xdp.v4(), 0).into(), n, PAYLOAD, TIMEOUT);
    udp_send_to(c[0].name(), None, &rx, n, PAYLOAD, 64);
    assert_eq!(rx.wait(), n, "vx3: default (GRO on) must deliver all");

    xdp.ns.set_gro(&xdp.ifname, false);
    let before = node.stats(&xdp.host_if);
    let rx = udp_recv(xdp.name(), (xdp.v4(), 0).into(), n, PAYLOAD, short);
    udp_send_to(c[0].name(), None, &rx, n, PAYLOAD, 64);
    let got = rx.wait();
    let d = node.stats(&xdp.host_if).since(&before);
    assert!(
        got < n,
        "vx3: GRO off and no XDP on the container end, yet all {n} devmap-redirected \
         datagrams arrived: the no-NAPI drop this test relies on did not happen"
    );
    // What makes this failure silent: the redirect was counted as delivered.
    assert_eq!(d.to("fast").packets, n, "vx3: {d:?}");
    eprintln!(
        "vx3: GRO off: {got}/{n} arrived, to_container.fast counted {}",
        d.to("fast").packets
    );

    xdp.ns.set_gro(&xdp.ifname, true);
    let rx = udp_recv(xdp.name(), (xdp.v4(), 0).into(), n, PAYLOAD, TIMEOUT);
    udp_send_to(c[0].name(), None, &rx, n, PAYLOAD, 64);
    assert_eq!(rx.wait(), n, "vx3: GRO back on must deliver all");
}

/// GRO follows the mode: on for `xdp`, off for `tc`, switched with `pair mode`; and the agent
/// puts it back when someone flips it behind vethfp's back (a state made by an older vethfp
/// has it on for every container end).
#[test]
fn gro_follows_the_mode() {
    let (node, c) = node_with(&[("vg1", "tc"), ("vg2", "xdp")]);
    let gro = |i: usize| c[i].ns.gro(&c[i].ifname);
    assert_eq!((gro(0), gro(1)), (false, true));
    node.ok(&["pair", "mode", "vg1", "xdp"]);
    node.ok(&["pair", "mode", "vg2", "tc"]);
    assert_eq!((gro(0), gro(1)), (true, false));
    // Both directions still delivered and counted exactly after the switch.
    udp_exact(&node, &c, 0, 1, false);
    udp_exact(&node, &c, 1, 0, true);

    c[1].ns.set_gro(&c[1].ifname, true);
    c[0].ns.set_gro(&c[0].ifname, false);
    let _agent = Agent::start(&node, &["--reconcile-interval", "0.2"]);
    let deadline = Instant::now() + TIMEOUT;
    let restored = || gro(0) && !gro(1);
    while !restored() {
        assert!(
            Instant::now() < deadline,
            "the agent did not restore GRO: vg1 {} (want on), vg2 {} (want off)",
            gro(0),
            gro(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pair_list_and_link_show_the_mode() {
    let (node, _c) = node_with(&[("vt1", "tc"), ("vx2", "xdp")]);
    let default = node.add_container("vd3", &["10.1.0.9/24"]);
    assert_eq!(mode_of(&node, &default.host_if), ("tc".into(), false));
    assert_eq!(mode_of(&node, "vt1"), ("tc".into(), false));
    assert_eq!(mode_of(&node, "vx2"), ("xdp".into(), true));
    node.ok(&["pair", "mode", "vt1", "xdp"]);
    node.ok(&["pair", "mode", "vx2", "tc"]);
    assert_eq!(mode_of(&node, "vt1"), ("xdp".into(), true));
    assert_eq!(mode_of(&node, "vx2"), ("tc".into(), false));
    // Switching to the mode it already has changes nothing.
    node.ok(&["pair", "mode", "vt1", "xdp"]);
    assert_eq!(mode_of(&node, "vt1"), ("xdp".into(), true));
    let text = node.ok(&["pair", "list"]);
    let line = |h: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(h))
            .unwrap_or_else(|| panic!("{h} not in pair list:\n{text}"))
            .to_string()
    };
    assert!(line("vt1").split_whitespace().any(|w| w == "xdp"), "{text}");
    assert!(line("vx2").split_whitespace().any(|w| w == "tc"), "{text}");
}

/// tc → xdp → tc on both ends under a running TCP stream (v4 and v6 at once): the connections
/// survive, every byte comes back intact, and the run counts show that XDP carried the stream
/// while in xdp mode and stopped the moment it was switched back.
#[test]
fn mode_switch_under_running_tcp_stream() {
    let (node, c) = node_with(&[("vs1", "tc"), ("vs2", "tc")]);
    let _stats = bpf_stats();
    let before = node.all_stats();
    let flows = [
        tcp_flow(c[0].name(), c[1].name(), c[1].v4()),
        tcp_flow(c[0].name(), c[1].name(), c[1].v6()),
    ];
    let step = 4u64 << 20;
    let progress = |what: &str| {
        for (i, f) in flows.iter().enumerate() {
            let target = f.echoed() + step;
            assert!(
                f.wait_echoed(target, TIMEOUT),
                "flow {i}: stalled {what} at {} bytes",
                f.echoed()
            );
        }
    };
    progress("in tc mode");
    let x0 = node.prog_run_count(XDP);
    assert_eq!(x0, node.prog_run_count(XDP), "nothing in xdp mode yet");

    for h in ["vs1", "vs2"] {
        node.ok(&["pair", "mode", h, "xdp"]);
        assert_eq!(mode_of(&node, h), ("xdp".into(), true));
    }
    progress("after the switch to xdp");
    let t1 = node.prog_run_count(TC_IN);
    progress("in xdp mode");
    let x1 = node.prog_run_count(XDP);
    assert!(
        x1 - x0 > 1000,
        "vfp_xdp ran only {} times in xdp mode",
        x1 - x0
    );
    assert_eq!(
        node.prog_run_count(TC_IN),
        t1,
        "vfp_tc_ingress ran in xdp mode: XDP passed the stream on"
    );

    for h in ["vs1", "vs2"] {
        node.ok(&["pair", "mode", h, "tc"]);
        assert_eq!(mode_of(&node, h), ("tc".into(), false));
    }
    progress("after the switch back to tc");
    let x2 = node.prog_run_count(XDP);
    let t2 = node.prog_run_count(TC_IN);
    progress("back in tc mode");
    assert_eq!(
        node.prog_run_count(XDP),
        x2,
        "vfp_xdp still runs after detach"
    );
    assert!(
        node.prog_run_count(TC_IN) > t2,
        "tcx ingress carries the stream again"
    );

    for (i, f) in flows.into_iter().enumerate() {
        let total = f.finish().unwrap_or_else(|e| panic!("flow {i}: {e}"));
        assert!(total >= 5 * step, "flow {i}: only {total} bytes");
        eprintln!("flow {i}: {total} bytes verified across tc -> xdp -> tc");
    }
    let after = node.all_stats();
    for h in ["vs1", "vs2"] {
        let d = after[h].since(&before[h]);
        assert_no_drops(&d);
        // Nothing fell back to the stack during either switch (it could not have been
        // forwarded: the node has forwarding off).
        assert_eq!(d.from("stack"), zero(), "{h}: from.stack");
        assert_eq!(d.to("stack"), zero(), "{h}: to.stack");
    }
}
