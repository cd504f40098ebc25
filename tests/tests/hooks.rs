//! Endpoint hooks are cls_bpf filters at vethfp's fixed (prio, handle) on the host end's
//! clsact qdisc, and a filter there is vethfp's only if it runs a program pinned in this
//! state. A filter at that place running anyone else's program (here: the same object loaded
//! by someone else, so the same code and tag but another program id) is never replaced or
//! deleted: adopting the port is refused, naming it; releasing leaves it.

use vethfp::{
    datapath::{
        Datapath, Program,
        filters::{FILTER_HANDLE, FILTER_PRIO},
    },
    sys::tc_filter::{BpfFilter, Dir, TcSession},
};
use vethfp_tests::{Netns, Node, check_fails, run_in_netns};

/// Puts a filter at vethfp's place on `dir` of `dev` in `ns`, running a fresh, unpinned load
/// of vethfp's own ingress program (someone else's program). Returns its program id.
fn foreign_filter(ns: &Netns, dev: &str, dir: Dir) -> u32 {
    let dev = dev.to_string();
    run_in_netns(ns.name(), move || {
        use std::os::fd::AsFd;
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).unwrap();
        let mut ebpf = Datapath::unpinned().expect("load object");
        let p: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(Program::TcIngress.name())
            .unwrap()
            .try_into()
            .unwrap();
        p.load().expect("load program");
        let mut tc = TcSession::new().unwrap();
        tc.ensure_clsact(ifindex).unwrap();
        let fd = p.fd().unwrap().as_fd();
        tc.add_or_replace_bpf(ifindex, dir, FILTER_PRIO, FILTER_HANDLE, fd, "someone_else")
            .unwrap();
        let f = slot(&mut tc, ifindex, dir).expect("foreign filter in place");
        f.prog_id
    })
}

fn slot(tc: &mut TcSession, ifindex: u32, dir: Dir) -> Option<BpfFilter> {
    tc.list(ifindex, dir)
        .unwrap()
        .into_iter()
        .find(|f| f.prio == FILTER_PRIO && f.handle == FILTER_HANDLE)
}

/// (prog id, name) of the filter at vethfp's place on `dir` of `dev` in `ns`.
fn at_our_place(ns: &Netns, dev: &str, dir: Dir) -> Option<(u32, String)> {
    let dev = dev.to_string();
    run_in_netns(ns.name(), move || {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).unwrap();
        let mut tc = TcSession::new().unwrap();
        slot(&mut tc, ifindex, dir).map(|f| (f.prog_id, f.name))
    })
}

/// A bridge `vhbr0` with one port `vhp1` whose peer is `eth0` in a fresh container netns.
fn bridge_with_port(node: &Node) -> Netns {
    let c = Netns::new("vfc");
    node.ns.ip(&["link", "add", "vhbr0", "type", "bridge"]);
    node.ns.ip(&["link", "set", "vhbr0", "up"]);
    node.ns.add_veth("vhp1", "eth0", &c);
    node.ns
        .ip(&["link", "set", "vhp1", "master", "vhbr0", "up"]);
    c.ip(&["link", "set", "eth0", "up"]);
    c
}

#[test]
fn a_foreign_filter_at_our_place_refuses_the_port_and_is_never_touched() {
    let node = Node::new();
    let _c = bridge_with_port(&node);
    // Someone else's filter at our place on egress (ingress is free).
    let theirs = foreign_filter(&node.ns, "vhp1", Dir::Egress);

    let args = ["bridge", "accelerate", "vhbr0", "--force"];
    let msg = check_fails(&node.vethfp(&args), &args);
    assert!(
        msg.contains("vhp1")
            && msg.contains("not a program of this state")
            && msg.contains(&format!("program id {theirs}")),
        "{msg}"
    );
    // Nothing of ours stayed (the ingress filter this call added went again), theirs is
    // untouched, nothing is registered.
    assert_eq!(at_our_place(&node.ns, "vhp1", Dir::Ingress), None);
    assert_eq!(
        at_our_place(&node.ns, "vhp1", Dir::Egress),
        Some((theirs, "someone_else".into()))
    );
    assert!(node.list_json().is_empty());

    // Their filter removed: the port is accelerated, both filters ours.
    node.ns.tc(&[
        "filter", "del", "dev", "vhp1", "egress", "protocol", "all", "prio", "65520", "handle",
        "0x766670", "bpf",
    ]);
    node.ok(&args);
    assert_eq!(
        node.our_filters("vhp1"),
        (Some("vfp_l2_ingress".into()), Some("vfp_tc_egress".into()))
    );

    // Someone swaps our ingress filter for theirs; releasing deletes only our egress one.
    let theirs = foreign_filter(&node.ns, "vhp1", Dir::Ingress);
    node.ok(&["bridge", "release", "vhbr0"]);
    assert_eq!(
        at_our_place(&node.ns, "vhp1", Dir::Ingress),
        Some((theirs, "someone_else".into())),
        "a foreign filter is never deleted"
    );
    assert_eq!(at_our_place(&node.ns, "vhp1", Dir::Egress), None);
    assert!(node.list_json().is_empty());
}

/// A state made by a build before cls_bpf: the endpoint's programs on pinned tcx links
/// (`links/tcx-ingress-N`, `links/tcx-egress-N`), no filters. The agent of this build adds
/// its filters, then prunes the old link pins (which detaches the tcx programs); traffic is
/// fast throughout and after.
#[test]
fn tcx_links_of_an_older_build_become_filters() {
    use aya::programs::{
        LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions,
    };
    let node = Node::new();
    let c1 = node.add_container("vh1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vh2", &["10.1.0.3/24"]);
    let i1 = node.stats("vh1").host_ifindex as u32;
    let dir = node.bpffs_dir();
    // Back to the old layout: tcx links pinned under links/, then our filters deleted.
    let d = dir.clone();
    run_in_netns(node.name(), move || {
        for (prog, kind, hook) in [
            ("vfp_tc_ingress", TcAttachType::Ingress, "tcx-ingress"),
            ("vfp_tc_egress", TcAttachType::Egress, "tcx-egress"),
        ] {
            let pin = std::fs::read_dir(d.join("progs"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prog))
                .unwrap();
            let mut p = SchedClassifier::from_pin(&pin).unwrap();
            let id = p
                .attach_with_options("vh1", kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .unwrap();
            let link: FdLink = p.take_link(id).unwrap().try_into().unwrap();
            link.pin(d.join("links").join(format!("{hook}-{i1}")))
                .unwrap();
        }
    });
    node.ns.tc(&["qdisc", "del", "dev", "vh1", "clsact"]);
    assert_eq!(node.our_filters("vh1"), (None, None));
    let tcx = |ns: &Netns| {
        run_in_netns(ns.name(), || {
            [TcAttachType::Ingress, TcAttachType::Egress]
                .map(|t| SchedClassifier::query_tcx("vh1", t).unwrap().1.len())
        })
    };
    assert_eq!(tcx(&node.ns), [1, 1]);
    node.wait_quiet("vh1");
    let s0 = node.stats("vh1");
    assert!(
        vethfp_tests::ping(c1.name(), c2.v4()),
        "fast on the old tcx links"
    );
    assert!(node.stats("vh1").since(&s0).from("fast").packets > 0);

    let agent = vethfp_tests::Agent::start(&node, &["--reconcile-interval", "3600"]);
    assert_eq!(
        node.our_filters("vh1"),
        (Some("vfp_tc_ingress".into()), Some("vfp_tc_egress".into()))
    );
    let pins: Vec<String> = node
        .bpffs
        .files()
        .into_iter()
        .filter(|f| f.contains("/links/"))
        .collect();
    assert!(pins.is_empty(), "old link pins left: {pins:?}");
    // The pruned pins release the links (asynchronously): wait until tcx is empty.
    let start = std::time::Instant::now();
    while tcx(&node.ns) != [0, 0] {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "tcx links stay"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    node.wait_quiet("vh1");
    let s1 = node.stats("vh1");
    assert!(
        vethfp_tests::ping(c1.name(), c2.v4()),
        "fast on the filters"
    );
    let d = node.stats("vh1").since(&s1);
    assert!(d.from("fast").packets > 0, "{d:?}");
    let (st, log) = agent.terminate();
    assert!(st.success(), "{log}");
}
