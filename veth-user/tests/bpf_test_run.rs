//! Layer 1: the datapath programs run with BPF_PROG_TEST_RUN on crafted frames, with private
//! (unpinned) maps. No namespace, no interface, nothing attached anywhere.
//!
//! In BPF_PROG_TEST_RUN the skb arrives on the loopback device (ifindex 1, MAC 00:..:00), so the
//! sending endpoint is ifindex 1 and frames addressed to MAC 00:..:00 are PACKET_HOST.
//!
//! The programs redirect only to devices that exist (deliver.rs), so each rig runs on a thread
//! with a private network namespace (unshare) holding veth devices with the destinations'
//! ifindexes (1000..=1002); the device of ifindex 1001 has the small MTU its target says.

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use veth_common::*;
use vethfp::datapath::Datapath;

// The rig looks programs up by their ELF names (the typed ABI's).
const PROG_TC_INGRESS: &str = Program::TcIngress.name();
const PROG_TC_EGRESS: &str = Program::TcEgress.name();
const PROG_UPLINK_INGRESS: &str = Program::UplinkIngress.name();
const PROG_L2_INGRESS: &str = Program::L2Ingress.name();
const PROG_XDP: &str = Program::Xdp.name();

const SRC_IF: u32 = 1; // loopback in BPF_PROG_TEST_RUN
const DST_IF: u32 = 1000;
const DST_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const DST_HOST_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const TCX_NEXT: u32 = u32::MAX; // -1
/// The `skb->ingress_ifindex` of a packet the kernel forwarded between endpoints (any
/// device but 0, which marks a packet the node itself sent).
const FORWARDED_IIF: u32 = 7;

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN up to and including `ingress_ifindex` (offset
/// 36; the kernel zero-fills the rest and accepts only a few fields, this one among them).
fn skb_ctx(ingress_ifindex: u32) -> [u8; 40] {
    let mut ctx = [0u8; 40];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}
/// Counter slot of the uplink (which, in test_run, is also ifindex 1).
const UPLINK_SLOT: u32 = 9;

/// Counter slots of the test endpoints.
fn slot_of(ifindex: u32) -> u32 {
    match ifindex {
        SRC_IF => 0,
        DST_IF => 1,
        1001 => 2,
        1002 => 3,
        _ => panic!("no slot for ifindex {ifindex}"),
    }
}

struct Rig {
    ebpf: Ebpf,
}

/// Moves the calling thread into a new network namespace holding a veth device with each of
/// the destination ifindexes (peers at ifindex + 1000), so the programs find them.
fn private_netns_with_destinations() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("private netns");
    for (ifindex, mtu) in [(DST_IF, 1500), (1001, 100), (1002, 1500)] {
        let ok = std::process::Command::new("ip")
            .args([
                "link",
                "add",
                &format!("d{ifindex}"),
                "index",
                &ifindex.to_string(),
            ])
            .args(["mtu", &mtu.to_string(), "type", "veth", "peer", "name"])
            .args([
                &format!("p{ifindex}"),
                "index",
                &(ifindex + 1000).to_string(),
            ])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "creating the veth with ifindex {ifindex}");
    }
}

/// The record the control plane keeps for a destination endpoint.
fn dst_record(t: Target) -> EndpointRecord {
    EndpointRecord {
        target: t,
        ..Default::default()
    }
}

impl Rig {
    fn new() -> Rig {
        private_netns_with_destinations();
        let mut ebpf = Datapath::unpinned().expect("BPF object loads");
        for name in [
            PROG_TC_INGRESS,
            PROG_TC_EGRESS,
            PROG_UPLINK_INGRESS,
            PROG_L2_INGRESS,
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let mut rig = Rig { ebpf };
        let target = Target {
            ifindex: DST_IF,
            mtu: 1500,
            network: 0,
            mode: MODE_TC,
            slot: slot_of(DST_IF),
            container_mac: DST_MAC,
            host_mac: DST_HOST_MAC,
        };
        {
            let mut ep4: HashMap<_, [u8; 4], Target> =
                HashMap::try_from(rig.ebpf.map_mut(MAP_EP4).unwrap()).unwrap();
            ep4.insert([10, 0, 0, 2], target, 0).unwrap();
            // An endpoint whose host end is the sender itself (hairpin).
            ep4.insert(
                [10, 0, 0, 1],
                Target {
                    ifindex: SRC_IF,
                    slot: slot_of(SRC_IF),
                    ..target
                },
                0,
            )
            .unwrap();
            // The sender's own address.
            ep4.insert(
                [10, 0, 0, 9],
                Target {
                    ifindex: SRC_IF,
                    slot: slot_of(SRC_IF),
                    container_mac: SRC_MAC,
                    ..target
                },
                0,
            )
            .unwrap();
            // An endpoint of another network.
            ep4.insert(
                [10, 0, 0, 7],
                Target {
                    ifindex: 1002,
                    slot: slot_of(1002),
                    network: 7,
                    ..target
                },
                0,
            )
            .unwrap();
            // A small-MTU endpoint.
            ep4.insert(
                [10, 0, 0, 3],
                Target {
                    ifindex: 1001,
                    slot: slot_of(1001),
                    mtu: 100,
                    ..target
                },
                0,
            )
            .unwrap();
        }
        {
            let mut ep6: HashMap<_, [u8; 16], Target> =
                HashMap::try_from(rig.ebpf.map_mut(MAP_EP6).unwrap()).unwrap();
            ep6.insert(v6(2), target, 0).unwrap();
            ep6.insert(
                v6(9),
                Target {
                    ifindex: SRC_IF,
                    slot: slot_of(SRC_IF),
                    ..target
                },
                0,
            )
            .unwrap();
        }
        {
            // The destinations' own records (what deliver.rs checks each target against).
            let mut eps: HashMap<_, u32, EndpointRecord> =
                HashMap::try_from(rig.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
            for (ifindex, mtu) in [(DST_IF, 1500), (1001, 100), (1002, 1500)] {
                let t = Target {
                    ifindex,
                    mtu,
                    slot: slot_of(ifindex),
                    network: if ifindex == 1002 { 7 } else { 0 },
                    ..target
                };
                eps.insert(ifindex, dst_record(t), 0).unwrap();
            }
        }
        rig.set_source_flags(0);
        // These cases test the unconditional fast path; admission has its own below.
        rig.set_flags(0);
        {
            let mut up: HashMap<_, u32, Uplink> =
                HashMap::try_from(rig.ebpf.map_mut(MAP_UPLINKS).unwrap()).unwrap();
            let uplink = Uplink {
                ifindex: SRC_IF,
                flags: 0,
                slot: UPLINK_SLOT,
                name: [0; NAME_LEN],
            };
            up.insert(SRC_IF, uplink, 0).unwrap();
        }
        rig
    }

    /// (Re)registers the sending endpoint (ifindex 1) with record flags `flags`.
    fn set_source_flags(&mut self, flags: u32) {
        let mut eps: HashMap<_, u32, EndpointRecord> =
            HashMap::try_from(self.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
        let mut rec = EndpointRecord {
            target: Target {
                ifindex: SRC_IF,
                mtu: 1500,
                slot: slot_of(SRC_IF),
                container_mac: SRC_MAC,
                ..Default::default()
            },
            flags,
            naddrs: 2,
            ..Default::default()
        };
        // Its own addresses (for the anti-spoofing check): 10.0.0.9 and fd00::9.
        rec.addrs[0].family = AF_V4;
        rec.addrs[0].addr[..4].copy_from_slice(&[10, 0, 0, 9]);
        rec.addrs[1].family = AF_V6;
        rec.addrs[1].addr = v6(9);
        eps.insert(SRC_IF, rec, 0).unwrap();
    }

    /// Runs tc program `prog` on `frame` as a packet the kernel forwarded (received on a
    /// device: `ingress_ifindex` set, as for every packet between endpoints).
    fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_received_on(prog, frame, FORWARDED_IIF)
    }

    /// Runs tc program `prog` on `frame` with `skb->ingress_ifindex = iif` (0: a packet the
    /// node itself sent).
    fn run_received_on(&self, prog: &str, frame: &[u8], iif: u32) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&skb_ctx(iif)),
                ..Default::default()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn counters(&self, ifindex: u32) -> Counters {
        self.slot_counters(slot_of(ifindex))
    }

    fn slot_counters(&self, slot: u32) -> Counters {
        let c: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map(MAP_COUNTERS).unwrap()).unwrap();
        let mut sum = Counters::default();
        for v in c.get(&slot, 0).unwrap().iter() {
            sum.add(v);
        }
        sum
    }

    /// Sets the config flags, with admission `always` (the unconditional fast path).
    fn set_flags(&mut self, flags: u32) {
        self.set_raw_flags(flags | CFG_ADMIT_ALWAYS);
    }

    fn set_raw_flags(&mut self, flags: u32) {
        let mut a: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.ebpf.map_mut(MAP_CONFIG).unwrap()).unwrap();
        a.set(CONFIG_FLAGS, flags, 0).unwrap();
    }
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = last;
    a
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 {
            u16::from_be_bytes([ch[0], ch[1]])
        } else {
            u16::from_be_bytes([ch[0], 0])
        };
        s += w as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn eth(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Ethernet + IPv4 (+ options) + UDP with `payload` bytes, valid header checksum.
fn v4_frame(dst: [u8; 4], ttl: u8, options: &[u8], payload: usize) -> Vec<u8> {
    let mut f = eth([0; 6], 0x0800);
    let ihl = 5 + options.len() / 4;
    let tot = (ihl * 4 + 8 + payload) as u16;
    let mut ip = vec![(4 << 4) | ihl as u8, 0];
    ip.extend_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, 17, 0, 0]);
    ip.extend_from_slice(&[10, 0, 0, 9]);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(options);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xab, payload));
    f
}

fn v6_frame(src: [u8; 16], dst: [u8; 16], hop: u8, next: u8, payload: usize) -> Vec<u8> {
    let mut f = eth([0; 6], 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xcd, payload));
    f
}

#[test]
fn v4_known_destination_is_rewritten_and_redirected() {
    let rig = Rig::new();
    for ttl in [64u8, 2, 255] {
        let frame = v4_frame([10, 0, 0, 2], ttl, &[], 100);
        let before_src = rig.counters(SRC_IF);
        let before_dst = rig.counters(DST_IF);
        let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
        assert_eq!(ret, TC_ACT_REDIRECT, "ttl {ttl}");
        assert_eq!(out.len(), frame.len());
        assert_eq!(&out[0..6], &DST_MAC, "destination MAC := container's");
        assert_eq!(
            &out[6..12],
            &DST_HOST_MAC,
            "source MAC := destination host end's"
        );
        assert_eq!(out[14 + 8], ttl - 1, "TTL decremented");
        assert_eq!(
            csum(&out[14..34]),
            0,
            "IPv4 header checksum valid after rewrite"
        );
        // Nothing but MACs, TTL and checksum changed.
        assert_eq!(&out[12..22], &frame[12..22]);
        assert_eq!(&out[23..24], &frame[23..24]);
        assert_eq!(&out[26..], &frame[26..]);
        let (src, dst) = (rig.counters(SRC_IF), rig.counters(DST_IF));
        let len = frame.len() as u64;
        assert_eq!(
            src.c[DIR_FROM_CONTAINER][V_FAST].packets,
            before_src.c[DIR_FROM_CONTAINER][V_FAST].packets + 1
        );
        assert_eq!(
            src.c[DIR_FROM_CONTAINER][V_FAST].bytes,
            before_src.c[DIR_FROM_CONTAINER][V_FAST].bytes + len
        );
        assert_eq!(
            dst.c[DIR_TO_CONTAINER][V_FAST].packets,
            before_dst.c[DIR_TO_CONTAINER][V_FAST].packets + 1
        );
        assert_eq!(
            dst.c[DIR_TO_CONTAINER][V_FAST].bytes,
            before_dst.c[DIR_TO_CONTAINER][V_FAST].bytes + len
        );
        assert_eq!(
            src.c[DIR_FROM_CONTAINER][V_STACK],
            before_src.c[DIR_FROM_CONTAINER][V_STACK]
        );
    }
}

#[test]
fn v4_checksum_carry_cases_stay_valid() {
    let rig = Rig::new();
    // Vary the id so the checksum walks through values near the carry boundary.
    for id in 0..2048u16 {
        let mut frame = v4_frame([10, 0, 0, 2], 64, &[], 0);
        frame[18..20].copy_from_slice(&id.wrapping_mul(31).to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let c = csum(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
        let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
        assert_eq!(ret, TC_ACT_REDIRECT);
        assert_eq!(csum(&out[14..34]), 0, "id {id}");
    }
}

#[test]
fn v6_known_destination_is_rewritten_and_redirected() {
    let rig = Rig::new();
    let frame = v6_frame(v6(9), v6(2), 64, 17, 200);
    let before = rig.counters(DST_IF);
    let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &DST_MAC);
    assert_eq!(&out[6..12], &DST_HOST_MAC);
    assert_eq!(out[14 + 7], 63, "hop limit decremented");
    assert_eq!(&out[12..21], &frame[12..21]);
    assert_eq!(&out[22..], &frame[22..]);
    let after = rig.counters(DST_IF);
    assert_eq!(
        after.c[DIR_TO_CONTAINER][V_FAST].packets,
        before.c[DIR_TO_CONTAINER][V_FAST].packets + 1
    );
    assert_eq!(
        after.c[DIR_TO_CONTAINER][V_FAST].bytes,
        before.c[DIR_TO_CONTAINER][V_FAST].bytes + frame.len() as u64
    );
}

/// Every one of these must reach the kernel stack unchanged and be counted as such.
#[test]
fn everything_else_passes_to_the_stack_unchanged() {
    let rig = Rig::new();
    let mut arp = eth([0xff; 6], 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    let mut multicast = v4_frame([224, 0, 0, 1], 64, &[], 10);
    multicast[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
    let mut other_host = v4_frame([10, 0, 0, 2], 64, &[], 10);
    other_host[0..6].copy_from_slice(&[0x02, 0x99, 0, 0, 0, 9]);
    let mut vlan = v4_frame([10, 0, 0, 2], 64, &[], 10);
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    let mut bad_csum = v4_frame([10, 0, 0, 2], 64, &[], 10);
    bad_csum[24] ^= 0x40;
    let mut long_tot = v4_frame([10, 0, 0, 2], 64, &[], 10);
    long_tot[16..18].copy_from_slice(&200u16.to_be_bytes());
    long_tot[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&long_tot[14..34]);
    long_tot[24..26].copy_from_slice(&c.to_be_bytes());
    let mut long_v6 = v6_frame(v6(9), v6(2), 64, 17, 10);
    long_v6[18..20].copy_from_slice(&500u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 header checksum wrong", bad_csum),
        ("IPv4 total length beyond the frame", long_tot),
        ("IPv6 payload length beyond the frame", long_v6),
        (
            "IPv4 source 0.0.0.0",
            with_src_v4(v4_frame([10, 0, 0, 2], 64, &[], 10), [0; 4]),
        ),
        (
            "IPv4 loopback source",
            with_src_v4(v4_frame([10, 0, 0, 2], 64, &[], 10), [127, 0, 0, 1]),
        ),
        ("IPv6 source ::", v6_frame([0; 16], v6(2), 64, 17, 10)),
        ("ARP broadcast", arp),
        ("IPv4 multicast", multicast),
        ("unicast to another MAC (PACKET_OTHERHOST)", other_host),
        ("VLAN tagged", vlan),
        (
            "unknown v4 destination",
            v4_frame([10, 0, 0, 77], 64, &[], 10),
        ),
        ("TTL 1", v4_frame([10, 0, 0, 2], 1, &[], 10)),
        ("TTL 0", v4_frame([10, 0, 0, 2], 0, &[], 10)),
        (
            "IPv4 options",
            v4_frame([10, 0, 0, 2], 64, &[0x94, 0x04, 0, 0], 10),
        ),
        (
            "hairpin to the sender itself",
            v4_frame([10, 0, 0, 1], 64, &[], 10),
        ),
        (
            "over the destination MTU",
            v4_frame([10, 0, 0, 3], 64, &[], 200),
        ),
        (
            "unknown v6 destination",
            v6_frame(v6(9), v6(77), 64, 17, 10),
        ),
        ("hop limit 1", v6_frame(v6(9), v6(2), 1, 17, 10)),
        ("v6 hop-by-hop options", v6_frame(v6(9), v6(2), 64, 0, 10)),
        (
            "v6 link-local source",
            v6_frame(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                v6(2),
                64,
                17,
                10,
            ),
        ),
    ];
    for (what, frame) in cases {
        let before = rig.counters(SRC_IF);
        let before_dst = rig.counters(DST_IF);
        let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
        assert_eq!(ret, TCX_NEXT, "{what}: must go to the stack");
        assert_eq!(out, frame, "{what}: must be unchanged");
        let after = rig.counters(SRC_IF);
        let s = |c: &Counters| c.c[DIR_FROM_CONTAINER][V_STACK];
        assert_eq!(
            s(&after).packets,
            s(&before).packets + 1,
            "{what}: counted once as stack"
        );
        assert_eq!(
            s(&after).bytes,
            s(&before).bytes + frame.len() as u64,
            "{what}"
        );
        assert_eq!(
            after.c[DIR_FROM_CONTAINER][V_FAST], before.c[DIR_FROM_CONTAINER][V_FAST],
            "{what}: not counted as fast"
        );
        assert_eq!(
            rig.counters(DST_IF),
            before_dst,
            "{what}: destination untouched"
        );
    }
}

#[test]
fn fast_path_switch_off_passes_everything() {
    let mut rig = Rig::new();
    rig.set_flags(CFG_FASTPATH_OFF);
    let frame = v4_frame([10, 0, 0, 2], 64, &[], 10);
    let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
    assert_eq!(ret, TCX_NEXT);
    assert_eq!(out, frame);
    rig.set_flags(0);
    assert_eq!(rig.run(PROG_TC_INGRESS, &frame).0, TC_ACT_REDIRECT);
}

#[test]
fn egress_counts_slow_path_delivery() {
    let rig = Rig::new();
    let frame = v4_frame([10, 0, 0, 2], 64, &[], 50);
    let before = rig.counters(SRC_IF);
    let (ret, out) = rig.run(PROG_TC_EGRESS, &frame);
    assert_eq!(ret, TCX_NEXT);
    assert_eq!(out, frame);
    let after = rig.counters(SRC_IF);
    assert_eq!(
        after.c[DIR_TO_CONTAINER][V_STACK].packets,
        before.c[DIR_TO_CONTAINER][V_STACK].packets + 1
    );
    assert_eq!(
        after.c[DIR_TO_CONTAINER][V_STACK].bytes,
        before.c[DIR_TO_CONTAINER][V_STACK].bytes + frame.len() as u64
    );
}

/// Frames cut inside the IP header. The kernel's test_run refuses some sizes outright (EINVAL);
/// every size it accepts must pass unchanged.
#[test]
fn truncated_frames_pass_unchanged() {
    let rig = Rig::new();
    let full4 = v4_frame([10, 0, 0, 2], 64, &[], 10);
    let full6 = v6_frame(v6(9), v6(2), 64, 17, 10);
    let mut accepted = 0;
    for frame in (14..34)
        .map(|n| full4[..n].to_vec())
        .chain((14..54).map(|n| full6[..n].to_vec()))
    {
        let p: &SchedClassifier = rig
            .ebpf
            .program(PROG_TC_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; 512];
        match p.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        }) {
            Ok(r) => {
                accepted += 1;
                assert_eq!(r.return_value, TCX_NEXT, "{} bytes", frame.len());
                assert_eq!(
                    &out[..r.data_size_out as usize],
                    &frame[..],
                    "{} bytes",
                    frame.len()
                );
            }
            Err(e) => assert!(format!("{e:?}").contains("InvalidInput"), "{e:?}"),
        }
    }
    eprintln!("kernel accepted {accepted} truncated frames");
}

fn with_src_v4(mut f: Vec<u8>, src: [u8; 4]) -> Vec<u8> {
    f[26..30].copy_from_slice(&src);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn arp(sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 2]);
    f
}

#[test]
fn spoofed_sources_are_dropped_and_counted_by_reason() {
    let mut rig = Rig::new();
    rig.set_source_flags(EP_SPOOF_ENFORCE);
    let mut wrong_mac = v4_frame([10, 0, 0, 2], 64, &[], 10);
    wrong_mac[6..12].copy_from_slice(&[0x02, 0xbb, 0, 0, 0, 9]);
    let mut arp_wrong_sha = arp(SRC_MAC, [10, 0, 0, 9]);
    arp_wrong_sha[22..28].copy_from_slice(&[0x02, 0xbb, 0, 0, 0, 9]);
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("foreign source MAC", wrong_mac, V_DROP_SPOOF_MAC),
        (
            "foreign IPv4 source",
            with_src_v4(v4_frame([10, 0, 0, 2], 64, &[], 10), [10, 0, 0, 2]),
            V_DROP_SPOOF_IP,
        ),
        (
            "unknown IPv4 source",
            with_src_v4(v4_frame([10, 0, 0, 2], 64, &[], 10), [192, 0, 2, 1]),
            V_DROP_SPOOF_IP,
        ),
        (
            "foreign IPv6 source",
            v6_frame(v6(2), v6(2), 64, 17, 10),
            V_DROP_SPOOF_IP,
        ),
        (
            "ARP for a foreign address",
            arp(SRC_MAC, [10, 0, 0, 2]),
            V_DROP_SPOOF_IP,
        ),
        (
            "ARP with a foreign sender MAC",
            arp_wrong_sha,
            V_DROP_SPOOF_MAC,
        ),
    ];
    for (what, frame, reason) in cases {
        let before = rig.counters(SRC_IF);
        let (ret, _) = rig.run(PROG_TC_INGRESS, &frame);
        assert_eq!(ret, TC_ACT_SHOT, "{what}: dropped");
        let after = rig.counters(SRC_IF);
        for (v, name) in VERDICT_NAMES.iter().enumerate() {
            let want = before.c[DIR_FROM_CONTAINER][v].packets + u64::from(v == reason);
            assert_eq!(
                after.c[DIR_FROM_CONTAINER][v].packets, want,
                "{what}: verdict {name}"
            );
        }
    }
    // The endpoint's own traffic, DAD, DHCP-style and link-local sources still work.
    let allowed: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "own IPv4 source",
            v4_frame([10, 0, 0, 2], 64, &[], 10),
            TC_ACT_REDIRECT,
        ),
        (
            "own IPv6 source",
            v6_frame(v6(9), v6(2), 64, 17, 10),
            TC_ACT_REDIRECT,
        ),
        (
            "ARP of its own address",
            arp(SRC_MAC, [10, 0, 0, 9]),
            TCX_NEXT,
        ),
        ("ARP probe (0.0.0.0)", arp(SRC_MAC, [0; 4]), TCX_NEXT),
        (
            "IPv6 DAD from ::",
            v6_frame([0; 16], v6(2), 255, 58, 10),
            TCX_NEXT,
        ),
        (
            "link-local source",
            v6_frame(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                v6(2),
                255,
                58,
                10,
            ),
            TCX_NEXT,
        ),
        (
            "IPv4 0.0.0.0 source",
            with_src_v4(v4_frame([10, 0, 0, 77], 64, &[], 10), [0; 4]),
            TCX_NEXT,
        ),
    ];
    for (what, frame, want) in allowed {
        assert_eq!(rig.run(PROG_TC_INGRESS, &frame).0, want, "{what}");
    }
}

#[test]
fn spoof_audit_counts_once_and_passes_to_the_stack() {
    let mut rig = Rig::new();
    rig.set_source_flags(EP_SPOOF_AUDIT);
    let frame = with_src_v4(v4_frame([10, 0, 0, 2], 64, &[], 10), [10, 0, 0, 2]);
    let before = rig.counters(SRC_IF);
    let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
    assert_eq!(ret, TCX_NEXT, "audit never drops");
    assert_eq!(out, frame, "and never fast-paths");
    let after = rig.counters(SRC_IF);
    let d =
        |v: usize| after.c[DIR_FROM_CONTAINER][v].packets - before.c[DIR_FROM_CONTAINER][v].packets;
    assert_eq!(
        (d(V_DROP_SPOOF_IP), d(V_STACK), d(V_FAST)),
        (1, 0, 0),
        "counted once, under its reason"
    );
}

#[test]
fn frames_from_an_unregistered_interface_are_left_alone() {
    let mut rig = Rig::new();
    {
        let mut eps: HashMap<_, u32, EndpointRecord> =
            HashMap::try_from(rig.ebpf.map_mut(MAP_ENDPOINTS).unwrap()).unwrap();
        eps.remove(&SRC_IF).unwrap();
    }
    let frame = v4_frame([10, 0, 0, 2], 64, &[], 10);
    let before = rig.counters(SRC_IF);
    let (ret, out) = rig.run(PROG_TC_INGRESS, &frame);
    assert_eq!((ret, out), (TCX_NEXT, frame));
    assert_eq!(rig.counters(SRC_IF), before);
}

#[test]
fn uplink_ingress_delivers_to_local_endpoints() {
    let rig = Rig::new();
    let frame = v4_frame([10, 0, 0, 2], 64, &[], 100);
    let (up0, dst0) = (rig.slot_counters(UPLINK_SLOT), rig.counters(DST_IF));
    let (ret, out) = rig.run(PROG_UPLINK_INGRESS, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &DST_MAC);
    assert_eq!(&out[6..12], &DST_HOST_MAC);
    assert_eq!(out[22], 63);
    assert_eq!(csum(&out[14..34]), 0);
    let (up1, dst1) = (rig.slot_counters(UPLINK_SLOT), rig.counters(DST_IF));
    let len = frame.len() as u64;
    assert_eq!(
        up1.c[DIR_TO_CONTAINER][V_FAST_UPLINK].packets,
        up0.c[DIR_TO_CONTAINER][V_FAST_UPLINK].packets + 1
    );
    assert_eq!(
        dst1.c[DIR_TO_CONTAINER][V_FAST_UPLINK].bytes,
        dst0.c[DIR_TO_CONTAINER][V_FAST_UPLINK].bytes + len
    );
    // Not for a local endpoint: the node's stack, counted.
    let other = v4_frame([10, 9, 9, 9], 64, &[], 10);
    let (ret, out) = rig.run(PROG_UPLINK_INGRESS, &other);
    assert_eq!((ret, out), (TCX_NEXT, other));
    assert_eq!(
        rig.slot_counters(UPLINK_SLOT).c[DIR_TO_CONTAINER][V_STACK].packets,
        up1.c[DIR_TO_CONTAINER][V_STACK].packets + 1
    );
}

/// The XDP program on crafted frames. Devmap entries and the XDP ingress device must be real
/// interfaces, so this runs on a thread with a private network namespace (unshare) holding
/// one veth pair: `src` plays the sender's host end, `dst` the destination's.
#[test]
fn xdp_redirects_known_destinations_and_passes_the_rest() {
    use aya::{maps::DevMapHash, programs::Xdp};
    use vethfp::{
        Mac,
        sys::netlink::{self, Netns, VethRequest},
    };
    const XDP_PASS: u32 = 2;
    const XDP_REDIRECT: u32 = 4;
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("private netns");
        let here = Netns::open("/proc/thread-self/ns/net").unwrap();
        let src_mac = Mac([0x02, 0x40, 0, 0, 0, 1]);
        let dst_host = Mac(DST_HOST_MAC);
        netlink::create_veth(&VethRequest {
            host_name: "xsrc",
            host_mac: src_mac,
            peer_name: "xdst",
            peer_mac: dst_host,
            peer_netns: &here,
            mtu: None,
        })
        .unwrap();
        let src = netlink::link_by_name("xsrc").unwrap().unwrap().ifindex;
        let dst = netlink::link_by_name("xdst").unwrap().unwrap().ifindex;

        let mut ebpf = Datapath::unpinned().unwrap();
        let p: &mut Xdp = ebpf.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        p.load().expect("verifier accepts the XDP program");
        aya::maps::Array::<_, u32>::try_from(ebpf.map_mut(MAP_CONFIG).unwrap())
            .unwrap()
            .set(CONFIG_FLAGS, CFG_ADMIT_ALWAYS, 0)
            .unwrap();
        // The destination is an `xdp` endpoint (its container end has GRO on, so XDP may
        // redirect into it); 10.0.0.3 is the same device as a `tc` endpoint, which XDP must
        // leave to tcx (no GRO there: an XDP frame redirected into it would be dropped).
        let target = Target {
            ifindex: dst,
            mtu: 1500,
            slot: 1,
            container_mac: DST_MAC,
            host_mac: DST_HOST_MAC,
            mode: MODE_XDP,
            ..Default::default()
        };
        let tc_target = Target {
            mode: MODE_TC,
            ..target
        };
        let mut ep4 =
            HashMap::<_, [u8; 4], Target>::try_from(ebpf.map_mut(MAP_EP4).unwrap()).unwrap();
        ep4.insert([10, 0, 0, 2], target, 0).unwrap();
        ep4.insert([10, 0, 0, 3], tc_target, 0).unwrap();
        let rec = EndpointRecord {
            target: Target {
                ifindex: src,
                mtu: 1500,
                slot: 0,
                container_mac: SRC_MAC,
                host_mac: src_mac.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut eps =
            HashMap::<_, u32, EndpointRecord>::try_from(ebpf.map_mut(MAP_ENDPOINTS).unwrap())
                .unwrap();
        eps.insert(src, rec, 0).unwrap();
        eps.insert(dst, dst_record(target), 0).unwrap();
        DevMapHash::try_from(ebpf.map_mut(MAP_DEVMAP).unwrap())
            .unwrap()
            .insert(dst, dst, None, 0)
            .unwrap();

        let run = |frame: &[u8]| {
            let p: &Xdp = ebpf.program(PROG_XDP).unwrap().try_into().unwrap();
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex.
            let mut md = [0u8; 24];
            md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            md[12..16].copy_from_slice(&src.to_ne_bytes());
            let mut out = vec![0u8; frame.len() + 256];
            let r = p
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&md),
                    ..Default::default()
                })
                .expect("xdp test_run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        let counters = |slot: u32| {
            let c: PerCpuArray<_, Counters> =
                PerCpuArray::try_from(ebpf.map(MAP_COUNTERS).unwrap()).unwrap();
            let mut sum = Counters::default();
            for v in c.get(&slot, 0).unwrap().iter() {
                sum.add(v);
            }
            sum
        };

        // To the gateway (the sender's host end MAC), for a known destination: redirected,
        // rewritten like the TC path, counted on both ends.
        let mut frame = v4_frame([10, 0, 0, 2], 64, &[], 100);
        frame[0..6].copy_from_slice(&src_mac.0);
        let (ret, out) = run(&frame);
        assert_eq!(ret, XDP_REDIRECT);
        assert_eq!(&out[0..6], &DST_MAC);
        assert_eq!(&out[6..12], &DST_HOST_MAC);
        assert_eq!(out[22], 63, "TTL decremented");
        assert_eq!(csum(&out[14..34]), 0, "IPv4 header checksum valid");
        let len = frame.len() as u64;
        assert_eq!(
            counters(0).c[DIR_FROM_CONTAINER][V_FAST],
            PacketBytes {
                packets: 1,
                bytes: len
            }
        );
        assert_eq!(
            counters(1).c[DIR_TO_CONTAINER][V_FAST],
            PacketBytes {
                packets: 1,
                bytes: len
            }
        );

        // Everything else passes to the tcx program behind it, unchanged and not counted here.
        let mut other_mac = frame.clone();
        other_mac[0..6].copy_from_slice(&[0x02, 0x99, 0, 0, 0, 9]);
        let mut unknown = v4_frame([10, 0, 0, 77], 64, &[], 10);
        unknown[0..6].copy_from_slice(&src_mac.0);
        let mut ttl1 = v4_frame([10, 0, 0, 2], 1, &[], 10);
        ttl1[0..6].copy_from_slice(&src_mac.0);
        let mut to_tc = v4_frame([10, 0, 0, 3], 64, &[], 10);
        to_tc[0..6].copy_from_slice(&src_mac.0);
        for (what, f) in [
            ("not to the gateway MAC", other_mac),
            ("unknown destination", unknown),
            ("TTL 1", ttl1),
            ("to a tc endpoint", to_tc),
        ] {
            let (ret, out) = run(&f);
            assert_eq!((ret, &out), (XDP_PASS, &f), "{what}");
        }
        assert_eq!(
            counters(0).c[DIR_FROM_CONTAINER][V_FAST].packets,
            1,
            "passes not counted by XDP"
        );
        assert_eq!(counters(0).c[DIR_FROM_CONTAINER][V_STACK].packets, 0);
    })
    .join()
    .unwrap();
}

/// Gone and replaced destinations (a restarted container: its old entry names a gone ifindex,
/// or an ifindex now registered as another endpoint) as the entries the rigs add below.
const GONE_IF: u32 = 1003; // no such device in the rig's namespace
const GONE_SLOT: u32 = 4;
const STALE_SLOT: u32 = 5;
const MAC_GONE: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x03];
const MAC_STALE: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x04];

impl Rig {
    /// A leftover record for the gone port (its device is gone), like a container stopped
    /// while nothing cleaned up; and the bridge's MAC table entries for all three cases.
    fn add_gone_and_stale(&mut self) -> (Target, Target, Target) {
        let live = Target {
            ifindex: DST_IF,
            mtu: 1500,
            slot: slot_of(DST_IF),
            container_mac: DST_MAC,
            host_mac: DST_HOST_MAC,
            ..Default::default()
        };
        let gone = Target {
            ifindex: GONE_IF,
            slot: GONE_SLOT,
            container_mac: MAC_GONE,
            ..live
        };
        // The entry still names ifindex 1000, which is now another endpoint (other slot/MAC).
        let stale = Target {
            slot: STALE_SLOT,
            container_mac: MAC_STALE,
            ..live
        };
        HashMap::<_, u32, EndpointRecord>::try_from(self.ebpf.map_mut(MAP_ENDPOINTS).unwrap())
            .unwrap()
            .insert(GONE_IF, dst_record(gone), 0)
            .unwrap();
        let mut l2: HashMap<_, [u8; 6], Target> =
            HashMap::try_from(self.ebpf.map_mut(MAP_L2).unwrap()).unwrap();
        for t in [live, gone, stale] {
            l2.insert(t.container_mac, t, 0).unwrap();
        }
        let mut ep4: HashMap<_, [u8; 4], Target> =
            HashMap::try_from(self.ebpf.map_mut(MAP_EP4).unwrap()).unwrap();
        ep4.insert([10, 0, 0, 4], gone, 0).unwrap();
        ep4.insert([10, 0, 0, 5], stale, 0).unwrap();
        (live, gone, stale)
    }

    fn fast_to(&self, slot: u32) -> u64 {
        self.slot_counters(slot).c[DIR_TO_CONTAINER][V_FAST].packets
    }
}

fn l2_frame(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = v4_frame([10, 0, 0, 99], 64, &[], 50);
    f[0..6].copy_from_slice(&dst_mac);
    f
}

/// Bridge port program: a frame for a live port is redirected and counted fast on both ends;
/// a frame for a port whose device is gone, or whose ifindex is now another endpoint, goes
/// to the bridge unchanged, counted `stack`, and never `fast`.
#[test]
fn l2_redirects_only_to_a_live_registered_port() {
    let mut rig = Rig::new();
    rig.add_gone_and_stale();
    let len = l2_frame(DST_MAC).len() as u64;

    let (ret, out) = rig.run(PROG_L2_INGRESS, &l2_frame(DST_MAC));
    assert_eq!(
        (ret, out),
        (TC_ACT_REDIRECT, l2_frame(DST_MAC)),
        "live port"
    );
    assert_eq!(
        rig.counters(SRC_IF).c[DIR_FROM_CONTAINER][V_FAST],
        PacketBytes {
            packets: 1,
            bytes: len
        }
    );
    assert_eq!(rig.fast_to(slot_of(DST_IF)), 1);

    for (what, mac, slot) in [
        ("device gone", MAC_GONE, GONE_SLOT),
        ("ifindex now another endpoint", MAC_STALE, STALE_SLOT),
    ] {
        let f = l2_frame(mac);
        let before = rig.counters(SRC_IF);
        let (ret, out) = rig.run(PROG_L2_INGRESS, &f);
        assert_eq!(
            (ret, &out),
            (TCX_NEXT, &f),
            "{what}: to the bridge, unchanged"
        );
        let after = rig.counters(SRC_IF);
        assert_eq!(
            after.c[DIR_FROM_CONTAINER][V_FAST], before.c[DIR_FROM_CONTAINER][V_FAST],
            "{what}: not counted fast"
        );
        assert_eq!(
            after.c[DIR_FROM_CONTAINER][V_STACK].packets,
            before.c[DIR_FROM_CONTAINER][V_STACK].packets + 1,
            "{what}: counted stack"
        );
        assert_eq!(
            rig.fast_to(slot),
            0,
            "{what}: nothing counted at the target"
        );
    }
    assert_eq!(
        rig.fast_to(slot_of(DST_IF)),
        1,
        "the live port got only its frame"
    );
}

/// Routed programs (container tc ingress, uplink ingress): a gone or replaced destination is
/// neither rewritten nor redirected; the kernel routes the frame as it is.
#[test]
fn routed_paths_leave_gone_destinations_to_the_kernel() {
    let mut rig = Rig::new();
    rig.add_gone_and_stale();
    for dst in [[10, 0, 0, 4], [10, 0, 0, 5]] {
        let f = v4_frame(dst, 64, &[], 20);
        let before = rig.counters(SRC_IF);
        let (ret, out) = rig.run(PROG_TC_INGRESS, &f);
        assert_eq!((ret, &out), (TCX_NEXT, &f), "tc ingress to {dst:?}");
        let after = rig.counters(SRC_IF);
        assert_eq!(
            after.c[DIR_FROM_CONTAINER][V_FAST],
            before.c[DIR_FROM_CONTAINER][V_FAST]
        );
        assert_eq!(
            after.c[DIR_FROM_CONTAINER][V_STACK].packets,
            before.c[DIR_FROM_CONTAINER][V_STACK].packets + 1
        );
        let up = rig.slot_counters(UPLINK_SLOT);
        let (ret, out) = rig.run(PROG_UPLINK_INGRESS, &f);
        assert_eq!((ret, &out), (TCX_NEXT, &f), "uplink ingress to {dst:?}");
        assert_eq!(
            rig.slot_counters(UPLINK_SLOT).c[DIR_TO_CONTAINER][V_STACK].packets,
            up.c[DIR_TO_CONTAINER][V_STACK].packets + 1
        );
    }
    assert_eq!(rig.fast_to(GONE_SLOT), 0);
    assert_eq!(rig.fast_to(STALE_SLOT), 0);
    // The live destination still takes the fast path.
    let (ret, _) = rig.run(PROG_TC_INGRESS, &v4_frame([10, 0, 0, 2], 64, &[], 20));
    assert_eq!(ret, TC_ACT_REDIRECT);
}

// ---- Netfilter admission (no CFG_ADMIT_ALWAYS) ----
//
// In BPF_PROG_TEST_RUN every skb is on ifindex 1, so the egress program always runs "on"
// ifindex 1: where a test needs the kernel to have sent a direction out of the expected
// interface, it first points that direction's expected egress at ifindex 1 (what a real
// confirmation needs: same tuple, expected interface).

/// Ethernet + IPv4 + TCP with `flags`, from `src:sport` to `dst:dport`.
fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = eth([0; 6], 0x0800);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&40u16.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const SYN: u8 = 0x02;

impl Rig {
    fn netfilter(tcp: bool) -> Rig {
        let mut rig = Rig::new();
        rig.set_raw_flags(if tcp { CFG_ADMIT_TCP } else { 0 });
        rig
    }

    fn flows(&self) -> Vec<(FlowKey, FlowState)> {
        let m: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map(MAP_FLOWS).unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    /// The only flow entry.
    fn flow(&self) -> (FlowKey, FlowState) {
        let f = self.flows();
        assert_eq!(f.len(), 1, "exactly one flow entry: {f:?}");
        f[0]
    }

    fn put_flow(&mut self, k: FlowKey, v: FlowState) {
        let mut m: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map_mut(MAP_FLOWS).unwrap()).unwrap();
        m.insert(k, v, 0).unwrap();
    }

    fn flow_stat(&self, i: usize) -> u64 {
        let c: PerCpuArray<_, FlowStats> =
            PerCpuArray::try_from(self.ebpf.map(MAP_FLOW_STATS).unwrap()).unwrap();
        c.get(&0, 0).unwrap().iter().map(|s| s.c[i]).sum()
    }

    /// Ingress of `fwd` notes it pending; both directions are then confirmed through the
    /// egress program (the reply direction noted as if its ingress had been seen).
    fn admit(&mut self, fwd: &[u8], reply: &[u8]) {
        let (ret, out) = self.run(PROG_TC_INGRESS, fwd);
        assert_eq!(
            (ret, &out[..]),
            (TCX_NEXT, fwd),
            "first packet: kernel, unchanged"
        );
        let (k, mut v) = self.flow();
        let d = (0..2).find(|d| v.flags & FLOW_PENDING[*d] != 0).unwrap();
        assert_eq!(v.flags, FLOW_PENDING[d]);
        assert_eq!(
            v.egress_ifindex[d], DST_IF,
            "expected to leave on B's host end"
        );
        v.egress_ifindex = [SRC_IF; 2];
        v.flags |= FLOW_PENDING[1 - d];
        self.put_flow(k, v);
        self.run(PROG_TC_EGRESS, fwd);
        assert_eq!(self.flow().1.flags & FLOW_ADMITTED, FLOW_CONFIRMED[d]);
        // Still not admitted: the reply has not been seen leaving.
        assert_eq!(self.run(PROG_TC_INGRESS, fwd).0, TCX_NEXT);
        self.run(PROG_TC_EGRESS, reply);
        assert_eq!(self.flow().1.flags & FLOW_ADMITTED, FLOW_ADMITTED);
    }
}

/// A packet the node itself sent (`skb->ingress_ifindex` 0) confirms no flow at tc egress:
/// a flow with the node is never admitted, so the egress program skips the parse and lookup;
/// the same packet forwarded by the kernel (received on a device) confirms its direction.
#[test]
fn admission_egress_confirms_only_what_the_kernel_forwarded() {
    let mut rig = Rig::netfilter(false);
    let fwd = v4_frame([10, 0, 0, 2], 64, &[], 40);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    let (k, mut v) = rig.flow();
    let d = (0..2).find(|d| v.flags & FLOW_PENDING[*d] != 0).unwrap();
    v.egress_ifindex = [SRC_IF; 2];
    rig.put_flow(k, v);
    let stack_before = rig.counters(SRC_IF).c[DIR_TO_CONTAINER][V_STACK].packets;
    rig.run_received_on(PROG_TC_EGRESS, &fwd, 0);
    assert_eq!(
        rig.flow().1.flags & FLOW_ADMITTED,
        0,
        "a node-originated packet confirms nothing"
    );
    assert_eq!(
        rig.counters(SRC_IF).c[DIR_TO_CONTAINER][V_STACK].packets,
        stack_before + 1,
        "but it is counted"
    );
    rig.run(PROG_TC_EGRESS, &fwd);
    assert_eq!(rig.flow().1.flags & FLOW_ADMITTED, FLOW_CONFIRMED[d]);
}

#[test]
fn admission_pending_then_confirmed_both_ways_then_fast() {
    let mut rig = Rig::netfilter(false);
    let fwd = v4_frame([10, 0, 0, 2], 64, &[], 40);
    let reply = with_src_v4(v4_frame([10, 0, 0, 9], 64, &[], 40), [10, 0, 0, 2]);
    let before = rig.counters(SRC_IF);
    let admitted = rig.flow_stat(FS_ADMITTED);
    rig.admit(&fwd, &reply);
    assert_eq!(
        rig.flow_stat(FS_ADMITTED),
        admitted + 1,
        "admission counted once"
    );
    assert_eq!(rig.flow_stat(FS_CREATED), 1);
    let mid = rig.counters(SRC_IF);
    // The two kernel-path packets of the admission: counted stack, once each.
    assert_eq!(
        mid.c[DIR_FROM_CONTAINER][V_STACK].packets,
        before.c[DIR_FROM_CONTAINER][V_STACK].packets + 2
    );
    assert_eq!(
        mid.c[DIR_FROM_CONTAINER][V_FAST],
        before.c[DIR_FROM_CONTAINER][V_FAST]
    );
    // Admitted: rewritten and redirected, counted fast, counted in the flow.
    for i in 1..=3u64 {
        let (ret, out) = rig.run(PROG_TC_INGRESS, &fwd);
        assert_eq!(ret, TC_ACT_REDIRECT);
        assert_eq!(&out[0..6], &DST_MAC);
        assert_eq!(&out[6..12], &DST_HOST_MAC);
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        assert_eq!(csum(&out[14..34]), 0);
        assert_eq!(&out[26..], &fwd[26..]);
        assert_eq!(rig.flow().1.packets, i);
    }
    let after = rig.counters(SRC_IF);
    assert_eq!(
        after.c[DIR_FROM_CONTAINER][V_FAST].packets,
        mid.c[DIR_FROM_CONTAINER][V_FAST].packets + 3
    );
    assert_eq!(
        after.c[DIR_FROM_CONTAINER][V_STACK],
        mid.c[DIR_FROM_CONTAINER][V_STACK]
    );
}

#[test]
fn admission_needs_the_expected_interface_and_the_same_tuple() {
    let mut rig = Rig::netfilter(false);
    let fwd = v4_frame([10, 0, 0, 2], 64, &[], 40);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    let (k, v) = rig.flow();
    // Leaving on another interface than the one the fast path would use: not confirmed.
    rig.run(PROG_TC_EGRESS, &fwd);
    assert_eq!(
        rig.flow().1,
        v,
        "egress on ifindex 1, expected {DST_IF}: no change"
    );
    let mut v1 = v;
    v1.egress_ifindex = [SRC_IF; 2];
    rig.put_flow(k, v1);
    // SNAT'd (another source) and DNAT'd (another destination / port) versions of the packet
    // leave with another tuple: never confirmed.
    let snat = with_src_v4(fwd.clone(), [10, 0, 0, 5]);
    let dnat = v4_frame([10, 0, 0, 3], 64, &[], 40);
    let mut port = fwd.clone();
    port[36..38].copy_from_slice(&8080u16.to_be_bytes());
    for f in [&snat, &dnat, &port] {
        rig.run(PROG_TC_EGRESS, f);
    }
    assert_eq!(
        rig.flows(),
        vec![(k, v1)],
        "no translated tuple confirmed anything"
    );
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    assert_eq!(rig.flow_stat(FS_ADMITTED), 0);
}

#[test]
fn admission_untracked_traffic_always_takes_the_kernel_path() {
    let rig = Rig::netfilter(false);
    // TCP without CFG_ADMIT_TCP (conntrack not liberal), fragments, IPv6 extension headers.
    let tcp = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 1000, 80, ACK);
    let mut frag = v4_frame([10, 0, 0, 2], 64, &[], 40);
    frag[14 + 6] = 0x20; // MF
    let c = {
        frag[24] = 0;
        frag[25] = 0;
        csum(&frag[14..34])
    };
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    let ext = v6_frame(v6(9), v6(2), 64, 60, 40); // destination options header
    for f in [&tcp, &frag, &ext] {
        let (ret, out) = rig.run(PROG_TC_INGRESS, f);
        assert_eq!((ret, &out[..]), (TCX_NEXT, &f[..]));
    }
    assert!(rig.flows().is_empty(), "nothing tracked: {:?}", rig.flows());
}

#[test]
fn admission_tcp_close_goes_to_the_kernel_and_tears_down() {
    for close in [FIN | ACK, RST] {
        let mut rig = Rig::netfilter(true);
        let fwd = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, ACK);
        let reply = tcp_frame([10, 0, 0, 2], [10, 0, 0, 9], 80, 40000, ACK);
        rig.admit(&fwd, &reply);
        assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TC_ACT_REDIRECT);
        // A SYN on the admitted tuple is the kernel's (a new connection): not fast.
        let syn = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, SYN);
        assert_eq!(rig.run(PROG_TC_INGRESS, &syn).0, TCX_NEXT);
        rig.admit_again(&fwd, &reply);
        let fin = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, close);
        let (ret, out) = rig.run(PROG_TC_INGRESS, &fin);
        assert_eq!(
            (ret, &out[..]),
            (TCX_NEXT, &fin[..]),
            "close: kernel, unchanged"
        );
        assert_eq!(rig.flow_stat(FS_TORN_DOWN), 1);
        if close == RST {
            assert!(rig.flows().is_empty(), "a reset removes the entry");
        } else {
            // Closing: the peer's ACK (and data of the half-open side) take the kernel path,
            // without writing the entry.
            // (fwd is direction 1: 10.0.0.2 is the lower end.)
            assert_eq!(
                rig.flow().1.flags & (FLOW_FIN[0] | FLOW_FIN[1]),
                FLOW_FIN[1]
            );
            let before = rig.flow();
            let data = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, ACK | 0x08);
            assert_eq!(rig.run(PROG_TC_INGRESS, &data).0, TCX_NEXT);
            assert_eq!(rig.flow(), before, "no write while half-closed");
            // The peer's FIN (seen by its own host end's ingress in a real node; the rig has
            // one sending end, so it is written as that ingress would write it).
            let (k, mut v) = rig.flow();
            v.flags |= FLOW_FIN[0];
            rig.put_flow(k, v);
            // The last ACK removes it.
            assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
            assert!(rig.flows().is_empty(), "the last ACK removes the entry");
            assert_eq!(rig.flow_stat(FS_TORN_DOWN), 2);
        }
        // Retransmitted closes go through the kernel too, and open nothing.
        assert_eq!(rig.run(PROG_TC_INGRESS, &fin).0, TCX_NEXT);
        assert!(rig.flows().is_empty());
    }
}

/// SYN, FIN and RST never confirm a direction: a flow is confirmed by the packets after the
/// handshake (when conntrack has it ESTABLISHED and ASSURED).
#[test]
fn admission_tcp_control_packets_never_confirm() {
    let mut rig = Rig::netfilter(true);
    let syn = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, SYN);
    assert_eq!(rig.run(PROG_TC_INGRESS, &syn).0, TCX_NEXT);
    let (k, mut v) = rig.flow();
    v.egress_ifindex = [SRC_IF; 2];
    v.flags |= FLOW_PENDING[0] | FLOW_PENDING[1];
    rig.put_flow(k, v);
    let synack = tcp_frame([10, 0, 0, 2], [10, 0, 0, 9], 80, 40000, SYN | ACK);
    rig.run(PROG_TC_EGRESS, &syn);
    rig.run(PROG_TC_EGRESS, &synack);
    assert_eq!(
        rig.flow().1.flags & FLOW_ADMITTED,
        0,
        "handshake confirms nothing"
    );
    rig.run(
        PROG_TC_EGRESS,
        &tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, ACK),
    );
    rig.run(
        PROG_TC_EGRESS,
        &tcp_frame([10, 0, 0, 2], [10, 0, 0, 9], 80, 40000, ACK),
    );
    assert_eq!(rig.flow().1.flags & FLOW_ADMITTED, FLOW_ADMITTED);
}

/// Under CFG_TCP_HANDOFF a TCP flow confirmed both ways is reported once on VFP_HANDOFF after
/// HANDOFF_AFTER_PACKETS more kernel-path packets (not at once: a connection that closes after
/// its answer is never reported) and stays on the kernel path (with no map write per packet
/// once reported) until FLOW_LIBERAL is set; a SYN on the tuple starts it over without
/// FLOW_LIBERAL.
#[test]
fn tcp_handoff_waits_for_the_liberal_mark() {
    let mut rig = Rig::new();
    rig.set_raw_flags(CFG_TCP_HANDOFF);
    let fwd = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, ACK);
    let reply = tcp_frame([10, 0, 0, 2], [10, 0, 0, 9], 80, 40000, ACK);
    rig.admit(&fwd, &reply);
    assert_eq!(rig.flow_stat(FS_REPORTED), 0, "not at the confirmation");
    for i in 1..HANDOFF_AFTER_PACKETS {
        assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
        assert_eq!(rig.flow_stat(FS_REPORTED), 0, "not after {i} packets");
    }
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    assert_eq!(rig.flow_stat(FS_REPORTED), 1, "reported to the agent");
    let mut ring: RingBuf<_> = RingBuf::try_from(rig.ebpf.map_mut(MAP_HANDOFF).unwrap()).unwrap();
    let item = ring.next().expect("one report in the ring");
    assert_eq!(item.len(), size_of::<HandoffEvent>());
    // SAFETY: a whole HandoffEvent (length checked).
    let ev: HandoffEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    drop(item);
    assert!(ring.next().is_none());
    drop(ring);
    assert_eq!(ev.key, rig.flow().0);
    let waiting = rig.flow();
    for _ in 0..3 {
        assert_eq!(
            rig.run(PROG_TC_INGRESS, &fwd).0,
            TCX_NEXT,
            "not handed off yet"
        );
    }
    assert_eq!(rig.flow(), waiting, "no write while waiting");
    // The agent marks it: fast from now on.
    let (k, mut v) = rig.flow();
    v.flags |= FLOW_LIBERAL;
    rig.put_flow(k, v);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TC_ACT_REDIRECT);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TC_ACT_REDIRECT);
    // A new SYN on the tuple: admitted afresh, without the mark.
    let syn = tcp_frame([10, 0, 0, 9], [10, 0, 0, 2], 40000, 80, SYN);
    assert_eq!(rig.run(PROG_TC_INGRESS, &syn).0, TCX_NEXT);
    assert_eq!(rig.flow().1.flags & (FLOW_LIBERAL | FLOW_ADMITTED), 0);
    assert_eq!(rig.flow_stat(FS_REPORTED), 1);
}

impl Rig {
    /// Marks the only flow admitted again (after a test made it fall back).
    fn admit_again(&mut self, fwd: &[u8], reply: &[u8]) {
        let (k, mut v) = self.flow();
        v.flags = FLOW_PENDING[0] | FLOW_PENDING[1];
        v.egress_ifindex = [SRC_IF; 2];
        self.put_flow(k, v);
        self.run(PROG_TC_EGRESS, fwd);
        self.run(PROG_TC_EGRESS, reply);
        assert_eq!(self.flow().1.flags & FLOW_ADMITTED, FLOW_ADMITTED);
        assert_eq!(self.run(PROG_TC_INGRESS, fwd).0, TC_ACT_REDIRECT);
    }
}

#[test]
fn admission_expires_and_must_be_confirmed_again() {
    let mut rig = Rig::netfilter(false);
    let fwd = v4_frame([10, 0, 0, 2], 64, &[], 40);
    let reply = with_src_v4(v4_frame([10, 0, 0, 9], 64, &[], 40), [10, 0, 0, 2]);
    rig.admit(&fwd, &reply);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TC_ACT_REDIRECT);
    // Admitted longer ago than the re-verify interval (and idle): back to the kernel.
    let (k, mut v) = rig.flow();
    v.admitted_at = 0;
    v.last_seen = 0;
    rig.put_flow(k, v);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    assert_eq!(rig.flow_stat(FS_EXPIRED), 1);
    let st = rig.flow().1;
    assert_eq!(
        st.flags & FLOW_ADMITTED,
        0,
        "both directions must be confirmed again"
    );
    assert_ne!(st.flags & (FLOW_PENDING[0] | FLOW_PENDING[1]), 0);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    // Evicted (gone from the table): the next packet starts over, through the kernel.
    let mut m: HashMap<_, FlowKey, FlowState> =
        HashMap::try_from(rig.ebpf.map_mut(MAP_FLOWS).unwrap()).unwrap();
    m.remove(&k).unwrap();
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TCX_NEXT);
    assert_eq!(rig.flow().1.flags & FLOW_ADMITTED, 0);
}

#[test]
fn admission_always_ignores_the_flow_table() {
    let mut rig = Rig::netfilter(false);
    rig.set_raw_flags(CFG_ADMIT_ALWAYS);
    let fwd = v4_frame([10, 0, 0, 2], 64, &[], 40);
    assert_eq!(rig.run(PROG_TC_INGRESS, &fwd).0, TC_ACT_REDIRECT);
    assert!(rig.flows().is_empty());
}

/// The per-packet cost of admission (docs/ARCHITECTURE.md "Cost"): `vfp_tc_ingress` on an
/// admitted UDP flow under `netfilter`, next to the same frame under `always`. Prints ns per
/// run (best of 50 runs of 200 repeats); asserts only the verdicts, never a time. The kernel
/// runs the program `repeat` times on one skb, so each fast run decrements the TTL again: the
/// frame starts at TTL 255 to stay routable for all 200. Run with
/// `cargo test -p veth-user --test bpf_test_run -- --ignored --nocapture admission_cost`.
#[test]
#[ignore = "measurement: prints timings, run on demand"]
fn admission_cost_per_run() {
    let mut rig = Rig::netfilter(false);
    let reply = with_src_v4(v4_frame([10, 0, 0, 9], 64, &[], 40), [10, 0, 0, 2]);
    let fwd = v4_frame([10, 0, 0, 2], 255, &[], 40);
    rig.admit(&fwd, &reply);
    let best = |rig: &Rig| {
        let p: &SchedClassifier = rig
            .ebpf
            .program(PROG_TC_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut best = u128::MAX;
        for _ in 0..50 {
            let r = p
                .test_run(TestRunOptions {
                    data_in: Some(&fwd),
                    repeat: 200,
                    ..Default::default()
                })
                .expect("test_run");
            assert_eq!(
                r.return_value, TC_ACT_REDIRECT,
                "still fast at the last repeat"
            );
            best = best.min(r.duration.as_nanos());
        }
        best
    };
    let netfilter = best(&rig);
    rig.set_raw_flags(CFG_ADMIT_ALWAYS);
    let always = best(&rig);
    println!("vfp_tc_ingress ns per run: netfilter {netfilter}, always {always}");
}
