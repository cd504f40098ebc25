//! Malformed and odd frames, fuzz style: thousands of generated frames injected from inside a
//! container (AF_PACKET), with a deterministic PRNG whose seed is printed.
//!
//! The node has forwarding off, so anything that reaches the other container came by the
//! fast path. The oracle for what may arrive there ([`deliverable`]) is what a router may
//! forward: an untagged Ethernet frame from the container's own MAC to its gateway's MAC,
//! carrying
//! - IPv4: version 4, IHL 5 (no options), valid header checksum, total length >= 20 and
//!   within the frame, TTL > 1, source = the sender's own address, destination = the
//!   receiver's address, total length <= the receiver's MTU (fragments are fine);
//! - IPv6: version 6, 40 + payload length within the frame, hop limit > 1, first next
//!   header not hop-by-hop (0), source = the sender's own global address, destination = the
//!   receiver's address, 40 + payload length <= the receiver's MTU.
//!
//! Every frame that arrives is matched to the frame sent (by its L3 bytes with TTL/hop limit
//! and IPv4 checksum masked, which the fast path rewrites); a frame that arrives but is not
//! deliverable is a violation; a deliverable frame must arrive. Counters: every frame that
//! reaches the host end's tcx ingress is counted exactly once under one verdict of
//! from_container; the kernel itself frees VLAN-typed frames too short to untag before tcx.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use vethfp_tests::{
    Container, EndpointStats, Netns, Node, VERDICTS, ping,
    raw::{self, Capture, ETH_IPV4, ETH_IPV6, ETH_QINQ, ETH_VLAN, contains},
};

const SEED: u64 = 0x7665_7468_6670_2d38; // "vethfp-8"
const FRAMES: usize = 5000;
const BATCH: usize = 250;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Ctx {
    gw: [u8; 6],
    own: [u8; 6],
    src4: Ipv4Addr,
    dst4: Ipv4Addr,
    src6: Ipv6Addr,
    dst6: Ipv6Addr,
    node4: Ipv4Addr,
    dst_mtu: usize,
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(x) => x,
        _ => panic!(),
    }
}
fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(x) => x,
        _ => panic!(),
    }
}

fn payload(rng: &mut Rng, seq: usize, n: usize) -> Vec<u8> {
    let mut p = b"VFPZ".to_vec();
    p.extend_from_slice(&(seq as u32).to_be_bytes());
    let n = n.max(8);
    p.extend(rng.bytes(n - 8));
    p
}

fn valid4(c: &Ctx, rng: &mut Rng, seq: usize, n: usize) -> Vec<u8> {
    let mut f = raw::eth(c.gw, c.own, ETH_IPV4);
    let d = payload(rng, seq, n);
    let u = raw::udp(c.src4.into(), c.dst4.into(), 40000, 9, &d);
    f.extend(raw::ipv4(c.src4, c.dst4, 17, 64, &u));
    f
}

fn valid6(c: &Ctx, rng: &mut Rng, seq: usize, n: usize) -> Vec<u8> {
    let mut f = raw::eth(c.gw, c.own, ETH_IPV6);
    let d = payload(rng, seq, n);
    let u = raw::udp(c.src6.into(), c.dst6.into(), 40000, 9, &d);
    f.extend(raw::ipv6(c.src6, c.dst6, 17, 64, &u));
    f
}

fn fix_csum4(f: &mut [u8], ihl: usize) {
    if f.len() >= 14 + ihl && ihl >= 20 {
        f[24] = 0;
        f[25] = 0;
        let c = raw::csum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// One generated frame of a random class.
fn generate(c: &Ctx, rng: &mut Rng, seq: usize) -> (&'static str, Vec<u8>) {
    let small = |rng: &mut Rng| rng.range(8, 200);
    match rng.below(15) {
        0 => {
            let n = small(rng);
            ("valid ipv4 udp", valid4(c, rng, seq, n))
        }
        1 => {
            let n = small(rng);
            ("valid ipv6 udp", valid6(c, rng, seq, n))
        }
        2 => {
            // Truncated anywhere, including inside the Ethernet header (those are refused).
            let n = small(rng);
            let f = if rng.chance(50) {
                valid4(c, rng, seq, n)
            } else {
                valid6(c, rng, seq, n)
            };
            let cut = rng.range(0, f.len());
            ("truncated", f[..cut].to_vec())
        }
        3 => {
            // IPv4 options (valid NOPs + end) or a bad IHL / version.
            let n = small(rng);
            let mut f = valid4(c, rng, seq, n);
            if rng.chance(50) {
                let words = rng.range(1, 11);
                let opts = vec![1u8; words * 4];
                f.splice(34..34, opts);
                f[14] = 0x40 | (5 + words as u8);
                let tot = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&tot.to_be_bytes());
                fix_csum4(&mut f, (5 + words) * 4);
                ("ipv4 options", f)
            } else {
                f[14] = (rng.below(16) as u8) << 4 | rng.below(16) as u8;
                if f[14] == 0x45 {
                    f[14] = 0x44;
                }
                if rng.chance(50) {
                    fix_csum4(&mut f, 20);
                }
                ("ipv4 bad ihl/version", f)
            }
        }
        4 => {
            // Fragments: MF and/or an offset; IPv6 with a fragment header.
            let n = small(rng);
            if rng.chance(50) {
                let mut f = valid4(c, rng, seq, n);
                let off = rng.below(0x2000) as u16;
                let mf = if rng.chance(50) { 0x2000 } else { 0 };
                let v = (off | mf).max(1);
                f[20..22].copy_from_slice(&v.to_be_bytes());
                fix_csum4(&mut f, 20);
                ("ipv4 fragment", f)
            } else {
                let mut f = valid6(c, rng, seq, n);
                let mut fh = vec![17u8, 0];
                fh.extend(((rng.below(0x2000) as u16) << 3 | 1).to_be_bytes());
                fh.extend(rng.bytes(4));
                f.splice(54..54, fh);
                f[20] = 44;
                let pl = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&pl.to_be_bytes());
                ("ipv6 fragment header", f)
            }
        }
        5 => {
            // Total / payload length that disagrees with the frame.
            let n = small(rng);
            if rng.chance(50) {
                let mut f = valid4(c, rng, seq, n);
                let tot = match rng.below(3) {
                    0 => rng.range(0, 20),
                    1 => f.len() - 14 + rng.range(1, 2000),
                    _ => rng.range(20, f.len() - 14),
                } as u16;
                f[16..18].copy_from_slice(&tot.to_be_bytes());
                fix_csum4(&mut f, 20);
                ("ipv4 bad total length", f)
            } else {
                let mut f = valid6(c, rng, seq, n);
                let pl = if rng.chance(50) {
                    f.len() - 54 + rng.range(1, 2000)
                } else {
                    rng.range(0, f.len() - 54)
                } as u16;
                f[18..20].copy_from_slice(&pl.to_be_bytes());
                ("ipv6 bad payload length", f)
            }
        }
        6 => {
            // VLAN tags (802.1Q, 802.1ad, double) around an otherwise valid frame.
            let n = small(rng);
            let mut f = if rng.chance(50) {
                valid4(c, rng, seq, n)
            } else {
                valid6(c, rng, seq, n)
            };
            let inner = [f[12], f[13]];
            let mut tags = Vec::new();
            let outer = if rng.chance(50) { ETH_VLAN } else { ETH_QINQ };
            tags.extend(outer.to_be_bytes());
            let vid = if rng.chance(25) {
                0
            } else {
                rng.below(4095) as u16 + 1
            };
            tags.extend(vid.to_be_bytes());
            if rng.chance(30) {
                tags.extend(ETH_VLAN.to_be_bytes());
                tags.extend((rng.below(4096) as u16).to_be_bytes());
            }
            tags.extend(inner);
            f.splice(12..14, tags);
            ("vlan tagged", f)
        }
        7 => {
            // IPv6 extension header chains (hop-by-hop, routing, destination options,
            // fragment), possibly with lengths running past the end.
            let n = small(rng);
            let mut f = valid6(c, rng, seq, n);
            let count = rng.range(1, 6);
            let mut chain = Vec::new();
            let mut first = 17u8;
            for _ in 0..count {
                let kind = [0u8, 43, 60, 44][rng.below(4) as usize];
                let mut h = vec![first, 0];
                if kind == 44 {
                    h.extend(rng.bytes(6));
                } else {
                    let len = if rng.chance(10) {
                        rng.below(256) as u8
                    } else {
                        rng.below(3) as u8
                    };
                    h[1] = len;
                    let body = if rng.chance(10) {
                        6
                    } else {
                        6 + 8 * len as usize
                    };
                    if kind == 43 {
                        h.extend(rng.bytes(body));
                    } else {
                        h.extend(vec![1u8; body]); // PadN-ish filler
                    }
                }
                h.extend(std::mem::take(&mut chain));
                chain = h;
                first = kind;
            }
            f.splice(54..54, chain);
            f[20] = first;
            let pl = (f.len() - 54) as u16;
            f[18..20].copy_from_slice(&pl.to_be_bytes());
            ("ipv6 extension headers", f)
        }
        8 => {
            // Jumbo: larger than the receiver's MTU (1500) up to and beyond the sender's (9000).
            let n = rng.range(1500, 9100);
            let f = if rng.chance(50) {
                valid4(c, rng, seq, n)
            } else {
                valid6(c, rng, seq, n)
            };
            ("jumbo", f)
        }
        9 => {
            // Tiny: below and just above an Ethernet header.
            let n = rng.range(0, 40);
            let mut f = raw::eth(
                c.gw,
                c.own,
                [ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, 0x0806][rng.below(5) as usize],
            );
            f.extend(rng.bytes(40));
            f.truncate(n);
            ("tiny", f)
        }
        10 => {
            // Random bytes; mostly with the right MACs so they get past anti-spoofing.
            let n = rng.range(14, 1600);
            let mut f = rng.bytes(n);
            if rng.chance(70) {
                f[0..6].copy_from_slice(&c.gw);
                f[6..12].copy_from_slice(&c.own);
                if rng.chance(50) {
                    let et = [ETH_IPV4, ETH_IPV6][rng.below(2) as usize];
                    f[12..14].copy_from_slice(&et.to_be_bytes());
                }
            }
            ("random bytes", f)
        }
        11 => {
            // TTL / hop limit about to expire.
            let n = small(rng);
            let ttl = rng.below(2) as u8;
            if rng.chance(50) {
                let mut f = valid4(c, rng, seq, n);
                f[22] = ttl;
                fix_csum4(&mut f, 20);
                ("ttl <= 1", f)
            } else {
                let mut f = valid6(c, rng, seq, n);
                f[21] = ttl;
                ("ttl <= 1", f)
            }
        }
        12 => {
            let n = small(rng);
            let mut f = valid4(c, rng, seq, n);
            f[24] ^= 0x5a;
            ("ipv4 bad checksum", f)
        }
        13 => {
            // Not for the gateway: multicast/broadcast or another host's MAC.
            let n = small(rng);
            let mut f = if rng.chance(50) {
                valid4(c, rng, seq, n)
            } else {
                valid6(c, rng, seq, n)
            };
            let dst = match rng.below(3) {
                0 => [0xff; 6],
                1 => [0x33, 0x33, 0, 0, 0, 1],
                _ => [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            };
            f[0..6].copy_from_slice(&dst);
            ("not to the gateway MAC", f)
        }
        _ => {
            // Odd addresses: source 0.0.0.0 / ::, destination the node or the sender itself.
            let n = small(rng);
            let mut f = valid4(c, rng, seq, n);
            match rng.below(3) {
                0 => f[26..30].copy_from_slice(&[0; 4]),
                1 => f[30..34].copy_from_slice(&c.node4.octets()),
                _ => f[30..34].copy_from_slice(&c.src4.octets()),
            }
            fix_csum4(&mut f, 20);
            ("odd addresses", f)
        }
    }
}

/// The oracle: may this frame be delivered to the receiver by the fast path? (module doc)
fn deliverable(c: &Ctx, f: &[u8]) -> bool {
    if f.len() < 14 || f[0..6] != c.gw || f[6..12] != c.own {
        return false;
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    let l3 = &f[14..];
    if et == ETH_IPV4 {
        if l3.len() < 20 || l3[0] != 0x45 || l3[8] <= 1 || raw::csum(&l3[..20]) != 0 {
            return false;
        }
        let tot = u16::from_be_bytes([l3[2], l3[3]]) as usize;
        tot >= 20
            && tot <= l3.len()
            && tot <= c.dst_mtu
            && l3[12..16] == c.src4.octets()
            && l3[16..20] == c.dst4.octets()
    } else if et == ETH_IPV6 {
        if l3.len() < 40 || l3[0] >> 4 != 6 || l3[7] <= 1 || l3[6] == 0 {
            return false;
        }
        let tot = 40 + u16::from_be_bytes([l3[4], l3[5]]) as usize;
        tot <= l3.len()
            && tot <= c.dst_mtu
            && l3[8..24] == c.src6.octets()
            && l3[24..40] == c.dst6.octets()
    } else {
        false
    }
}

/// L3 bytes with what a router rewrites masked: the key to match a received frame to the
/// frame sent. VLAN tags are skipped (the receiver sees them out of band, if at all).
fn l3_key(f: &[u8]) -> Option<Vec<u8>> {
    let mut off = 12;
    while f.len() >= off + 2 {
        let et = u16::from_be_bytes([f[off], f[off + 1]]);
        if et == ETH_VLAN || et == ETH_QINQ {
            off += 4;
            continue;
        }
        let mut k = f.get(off + 2..)?.to_vec();
        k.insert(0, f[off + 1]);
        k.insert(0, f[off]);
        if et == ETH_IPV4 && k.len() >= 2 + 20 {
            k[2 + 8] = 0;
            k[2 + 10] = 0;
            k[2 + 11] = 0;
        } else if et == ETH_IPV6 && k.len() >= 2 + 40 {
            k[2 + 7] = 0;
        }
        return Some(k);
    }
    None
}

fn link_stat(ns: &Netns, dev: &str, dir: &str) -> u64 {
    let v = ns.ip_json(&["-s", "link", "show", "dev", dev]);
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {dir} packets for {dev}: {v}"))
}

fn sum_from(d: &EndpointStats) -> (u64, u64) {
    VERDICTS.iter().fold((0, 0), |(p, b), v| {
        (p + d.from(v).packets, b + d.from(v).bytes)
    })
}

/// nft in a container: drop everything its own kernel would send (IP, IPv6, ARP), so the
/// only frames leaving it are the injected ones. AF_PACKET sends bypass these hooks.
fn silence(c: &Container, on: bool) {
    let cmds: &[&str] = if on {
        &[
            "add table inet vfpmute",
            "add chain inet vfpmute out { type filter hook output priority 0; policy drop; }",
            "add table arp vfpmute",
            "add chain arp vfpmute out { type filter hook output priority 0; policy drop; }",
        ]
    } else {
        &["delete table inet vfpmute", "delete table arp vfpmute"]
    };
    for cmd in cmds {
        let out = Command::new("ip")
            .args(["netns", "exec", c.name(), "nft", cmd])
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn fuzzed_frames_from_a_container() {
    println!("malformed: seed {SEED:#018x}, {FRAMES} frames");
    let node = Node::new();
    let c1 = node.add_container_with("vz1", &["10.1.0.2/24", "fd00:1::2/64"], &["--mtu", "9000"]);
    let c2 = node.add_container("vz2", &["10.1.0.3/24", "fd00:1::3/64"]);
    let e1 = node.list_entry("vz1").unwrap();
    let ctx = Ctx {
        gw: raw::mac(e1["host_mac"].as_str().unwrap()),
        own: raw::mac(e1["container_mac"].as_str().unwrap()),
        src4: v4(c1.v4()),
        dst4: v4(c2.v4()),
        src6: v6(c1.v6()),
        dst6: v6(c2.v6()),
        node4: v4(node.v4()),
        dst_mtu: 1500,
    };
    silence(&c1, true);
    node.wait_quiet("vz1");
    node.wait_quiet("vz2");

    let mut rng = Rng(SEED);
    let frames: Vec<(&str, Vec<u8>)> = (0..FRAMES)
        .map(|i| generate(&ctx, &mut rng, i + 1))
        .collect();

    let cap = Capture::start(c2.name(), "eth0");
    let before = node.all_stats();
    let rx0 = link_stat(&node.ns, "vz1", "rx");
    let tx0 = link_stat(&c1.ns, "eth0", "tx");

    // Inject in batches; after each, wait until vethfp has counted the batch, so no queue
    // between the two ends of the veth can overflow.
    let mut results = Vec::new();
    let mut expect_counted = 0u64;
    let mut expect_bytes = 0u64;
    let mut kernel_freed = 0u64;
    let b1 = before["vz1"].clone();
    for chunk in frames.chunks(BATCH) {
        let r = raw::inject(
            c1.name(),
            "eth0",
            chunk.iter().map(|f| f.1.clone()).collect(),
        );
        for (res, (_, f)) in r.iter().zip(chunk) {
            if res.is_err() {
                continue;
            }
            let et = u16::from_be_bytes([f[12], f[13]]);
            let vlan = et == ETH_VLAN || et == ETH_QINQ;
            if vlan && f.len() < 20 {
                kernel_freed += 1; // skb_vlan_untag cannot pull the tag: freed before tcx
            } else {
                expect_counted += 1;
                expect_bytes += f.len() as u64 - if vlan { 4 } else { 0 };
            }
        }
        results.extend(r);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sum_from(&node.stats("vz1").since(&b1)).0 < expect_counted
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Flush: one more valid frame, which must arrive after everything else went through.
    let marker_seq = FRAMES + 1;
    let marker = valid4(&ctx, &mut rng, marker_seq, 32);
    let mut marker_tag = b"VFPZ".to_vec();
    marker_tag.extend((marker_seq as u32).to_be_bytes());
    assert_eq!(
        raw::inject(c1.name(), "eth0", vec![marker.clone()]),
        [Ok(())]
    );
    assert!(
        cap.wait_for(Duration::from_secs(10), |f| contains(f, &marker_tag)),
        "a valid frame after the fuzz did not arrive"
    );
    let got = cap.stop();
    let after = node.all_stats();
    let d1 = after["vz1"].since(&before["vz1"]);
    let d2 = after["vz2"].since(&before["vz2"]);
    let rx = link_stat(&node.ns, "vz1", "rx") - rx0;
    let tx = link_stat(&c1.ns, "eth0", "tx") - tx0;

    // Per class: generated, refused by the kernel's AF_PACKET, deliverable, arrived.
    let mut by_key: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (i, (_, f)) in frames.iter().enumerate() {
        if results[i].is_ok()
            && let Some(k) = l3_key(f)
        {
            by_key.entry(k).or_default().push(i);
        }
    }
    #[derive(Default, Debug)]
    struct Row {
        generated: u64,
        refused: u64,
        deliverable: u64,
        arrived: u64,
        violations: u64,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    let mut arrived = vec![false; frames.len()];
    let mut unmatched = 0;
    let mut violations = Vec::new();
    for g in &got {
        if contains(g, &marker_tag) {
            continue;
        }
        let cands = l3_key(g)
            .and_then(|k| by_key.get(&k))
            .cloned()
            .unwrap_or_default();
        if cands.is_empty() {
            unmatched += 1;
            continue;
        }
        if let Some(&i) = cands.iter().find(|&&i| deliverable(&ctx, &frames[i].1)) {
            arrived[i] = true;
        } else {
            let i = cands[0];
            arrived[i] = true;
            violations.push(i);
        }
    }
    for (i, (class, f)) in frames.iter().enumerate() {
        let r = rows.entry(class).or_default();
        r.generated += 1;
        if results[i].is_err() {
            r.refused += 1;
            continue;
        }
        if deliverable(&ctx, f) {
            r.deliverable += 1;
        }
        if arrived[i] {
            r.arrived += 1;
        }
    }
    for &i in &violations {
        rows.get_mut(frames[i].0).unwrap().violations += 1;
    }
    let sent_ok = results.iter().filter(|r| r.is_ok()).count() as u64 + 1; // + marker
    println!(
        "{:<28} {:>9} {:>8} {:>11} {:>8} {:>10}",
        "class", "generated", "refused", "deliverable", "arrived", "violations"
    );
    for (k, r) in &rows {
        println!(
            "{k:<28} {:>9} {:>8} {:>11} {:>8} {:>10}",
            r.generated, r.refused, r.deliverable, r.arrived, r.violations
        );
    }
    let (sum_p, sum_b) = sum_from(&d1);
    println!(
        "sent {sent_ok} (incl. 1 marker); eth0 tx {tx}; host end rx {rx}; freed by the kernel before tcx {kernel_freed}"
    );
    println!(
        "from_container verdicts on the sender: {} packets, {} bytes",
        sum_p, sum_b
    );
    for v in VERDICTS {
        println!(
            "  {v:<15} {:>6} packets {:>9} bytes",
            d1.from(v).packets,
            d1.from(v).bytes
        );
    }
    println!(
        "receiver: to_container.fast {:?}, to_container.stack {:?}; captured {} frames, {} not ours",
        d2.to("fast"),
        d2.to("stack"),
        got.len(),
        unmatched
    );
    for &i in violations.iter().take(10) {
        println!(
            "violation: frame {} ({}) {} bytes: {:02x?}",
            i + 1,
            frames[i].0,
            frames[i].1.len(),
            &frames[i].1[..frames[i].1.len().min(80)]
        );
    }

    // Health: the sender's own kernel stayed silent, the veth carried everything, the
    // datapath still forwards and vethfp still answers.
    silence(&c1, false);
    assert!(ping(c1.name(), c2.v4()), "ping v4 after the fuzz");
    assert!(ping(c1.name(), c2.v6()), "ping v6 after the fuzz");
    assert_eq!(node.list_json().len(), 2);

    assert_eq!(
        tx, sent_ok,
        "c1 eth0 transmitted other frames than the injected ones"
    );
    assert_eq!(
        rx, sent_ok,
        "the host end did not receive every injected frame"
    );
    let want_p = expect_counted + 1;
    let want_b = expect_bytes + marker.len() as u64;
    assert_eq!(
        (sum_p, sum_b),
        (want_p, want_b),
        "from_container verdicts must add up to the frames that reached tcx"
    );
    let missing: Vec<usize> = (0..frames.len())
        .filter(|&i| results[i].is_ok() && deliverable(&ctx, &frames[i].1) && !arrived[i])
        .collect();
    assert!(
        violations.is_empty(),
        "{} frames delivered that a router would not forward: {:?}",
        violations.len(),
        rows.iter()
            .filter(|(_, r)| r.violations > 0)
            .map(|(k, r)| (k, r.violations))
            .collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "{} deliverable frames did not arrive, e.g. {:?}",
        missing.len(),
        missing.first().map(|&i| frames[i].0)
    );
    let delivered = arrived.iter().filter(|a| **a).count() as u64 + 1;
    assert_eq!(
        d1.from("fast").packets,
        delivered,
        "fast verdicts vs frames that arrived"
    );
    assert_eq!(d2.to("fast").packets, delivered);
}
