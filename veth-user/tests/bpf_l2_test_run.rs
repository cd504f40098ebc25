//! Layer 1 for the bridge port program (`vfp_l2_ingress`, `bridge accelerate`): run with
//! BPF_PROG_TEST_RUN on crafted frames, with private (unpinned) maps, on a thread in a private
//! network namespace holding the destination ports' devices (the program only redirects to a
//! device that exists). The sending port is the loopback device (ifindex 1), as in every tc
//! test_run.
//!
//! Bridge semantics: a unicast frame for a container MAC on another port of the same bridge is
//! redirected exactly as sent (no MAC rewrite, no TTL change, any EtherType); everything else
//! goes to the bridge (`TCX_NEXT`), counted `stack`. Each frame is counted once on the sender
//! (and a fast one once more on the receiver).

mod common;

use common::*;
use veth_common::{
    AF_V4, CFG_ADMIT_ALWAYS, CFG_FASTPATH_OFF, Dir, EP_ADOPTED, EP_BRIDGE_PORT, EP_SPOOF_AUDIT,
    EP_SPOOF_ENFORCE, EndpointRecord, FLOW_ADMITTED, FLOW_PENDING, FlowKey, FlowState,
    MAP_ENDPOINTS, MAP_FLOWS, MAP_L2, Mode, PacketBytes, Program, Target, Verdict,
};

/// The bridge (its ifindex is the ports' network id) and another one.
const BR: u32 = 77;
const OTHER_BR: u32 = 78;
const BR_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 77];

const SRC_SLOT: u32 = 0;
const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const SRC_IP: [u8; 4] = [10, 1, 0, 1];

/// A destination port: (ifindex, its veth peer's ifindex, device MTU, counter slot, container
/// MAC, bridge, container address).
struct Port {
    ifindex: u32,
    peer: u32,
    mtu: u32,
    slot: u32,
    mac: [u8; 6],
    bridge: u32,
    ip: [u8; 4],
}

const A: Port = Port {
    ifindex: 1000,
    peer: 2000,
    mtu: 1500,
    slot: 1,
    mac: [0x02, 0xc0, 0, 0, 0, 0x0a],
    bridge: BR,
    ip: [10, 1, 0, 10],
};
const B: Port = Port {
    ifindex: 1001,
    peer: 2001,
    mtu: 1500,
    slot: 2,
    mac: [0x02, 0xc0, 0, 0, 0, 0x0b],
    bridge: BR,
    ip: [10, 1, 0, 11],
};
/// A port of another bridge.
const C: Port = Port {
    ifindex: 1002,
    peer: 2002,
    mtu: 1500,
    slot: 3,
    mac: [0x02, 0xc0, 0, 0, 0, 0x0c],
    bridge: OTHER_BR,
    ip: [10, 2, 0, 12],
};
/// A port with a small MTU.
const D: Port = Port {
    ifindex: 1003,
    peer: 2003,
    mtu: 100,
    slot: 4,
    mac: [0x02, 0xc0, 0, 0, 0, 0x0d],
    bridge: BR,
    ip: [10, 1, 0, 13],
};
const PORTS: [&Port; 4] = [&A, &B, &C, &D];

const BROADCAST: [u8; 6] = [0xff; 6];
const MCAST4: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];
const MCAST6: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

const L2: &str = Program::L2Ingress.name();
const EGRESS: &str = Program::TcEgress.name();

impl Port {
    fn target(&self) -> Target {
        Target {
            ifindex: self.ifindex,
            mtu: self.mtu,
            network: self.bridge,
            mode: Mode::Tc.as_u32(),
            slot: self.slot,
            container_mac: self.mac,
            host_mac: [0x02, 0x40, 0, 0, 0, self.slot as u8],
        }
    }
}

/// A bridge port's record, as `bridge accelerate` writes it (plus `spoof` flags for the
/// anti-spoofing cases), with its container's address.
fn port_record(t: Target, ip: [u8; 4], spoof: u32) -> EndpointRecord {
    let mut r = EndpointRecord {
        target: t,
        flags: EP_ADOPTED | EP_BRIDGE_PORT | spoof,
        naddrs: 1,
        ..Default::default()
    };
    r.addrs[0].family = AF_V4;
    r.addrs[0].prefix = 24;
    r.addrs[0].addr[..4].copy_from_slice(&ip);
    r
}

fn src_target() -> Target {
    Target {
        ifindex: LO,
        mtu: 1500,
        network: BR,
        mode: Mode::Tc.as_u32(),
        slot: SRC_SLOT,
        container_mac: SRC_MAC,
        host_mac: [0x02, 0x40, 0, 0, 0, 0xee],
    }
}

/// A rig on the current thread (call inside [`on_own_thread`]): the ports' devices, records
/// and MAC table entries; admission `always` unless a case sets the flags.
fn rig() -> Rig {
    private_netns_with_veths(&PORTS.map(|p| (p.ifindex, p.peer, p.mtu)));
    let mut rig = Rig::load(&[L2, EGRESS], &[]);
    {
        let mut eps = rig.hash::<u32, EndpointRecord>(MAP_ENDPOINTS);
        for p in PORTS {
            eps.insert(p.ifindex, port_record(p.target(), p.ip, 0), 0)
                .unwrap();
        }
    }
    set_source_spoof(&mut rig, 0);
    {
        let mut l2 = rig.hash::<[u8; 6], Target>(MAP_L2);
        for p in PORTS {
            l2.insert(p.mac, p.target(), 0).unwrap();
        }
        // The sender's own MAC (a hairpin).
        l2.insert(SRC_MAC, src_target(), 0).unwrap();
        // Entries no control plane writes, pointing at a live port: if the program looked
        // group addresses up, these frames would be redirected.
        for m in [BROADCAST, MCAST4] {
            l2.insert(m, A.target(), 0).unwrap();
        }
    }
    rig.set_flags(CFG_ADMIT_ALWAYS);
    rig
}

fn set_source_spoof(rig: &mut Rig, spoof: u32) {
    rig.hash::<u32, EndpointRecord>(MAP_ENDPOINTS)
        .insert(LO, port_record(src_target(), SRC_IP, spoof), 0)
        .unwrap();
}

/// A UDP frame from the sending container to `dst_mac` / `dst` (`payload` bytes).
fn frame_to(dst_mac: [u8; 6], dst: [u8; 4], payload: usize) -> Vec<u8> {
    udp4(dst_mac, SRC_MAC, SRC_IP, dst, 64, payload)
}

const ZERO: PacketBytes = PacketBytes {
    packets: 0,
    bytes: 0,
};

fn from(rig: &Rig, v: Verdict) -> PacketBytes {
    rig.count(SRC_SLOT, Dir::FromContainer, v)
}

fn fast_to(rig: &Rig, p: &Port) -> PacketBytes {
    rig.count(p.slot, Dir::ToContainer, Verdict::Fast)
}

/// Nothing was counted for any destination port.
fn assert_no_port_counted(rig: &Rig) {
    for p in PORTS {
        assert_eq!(
            rig.counters(p.slot),
            Default::default(),
            "port {}",
            p.ifindex
        );
    }
}

#[test]
fn unicast_to_another_port_is_redirected_exactly_as_sent() {
    on_own_thread(|| {
        let rig = rig();
        let to_a = frame_to(A.mac, A.ip, 100);
        let mut to_b = frame_to(B.mac, B.ip, 300);
        to_b[22] = 1; // TTL 1: a bridge does not route, so it does not look
        let c = {
            to_b[24..26].copy_from_slice(&[0, 0]);
            csum(&to_b[14..34])
        };
        to_b[24..26].copy_from_slice(&c.to_be_bytes());
        // Not IP at all (an experimental EtherType): bridged like anything else.
        let mut raw = A.mac.to_vec();
        raw.extend_from_slice(&SRC_MAC);
        raw.extend_from_slice(&0x88b5u16.to_be_bytes());
        raw.extend_from_slice(&[0x5a; 46]);

        for (what, f) in [("to A", &to_a), ("to B, TTL 1", &to_b), ("raw to A", &raw)] {
            let (ret, out) = rig.run_tc(L2, f);
            assert_eq!(ret, TC_ACT_REDIRECT, "{what}");
            assert_eq!(&out, f, "{what}: not one byte changed");
        }
        // Counted fast on the sender (each frame once) and on the port it was sent to, so
        // the redirect went to A for the frames to A and to B for the frame to B.
        assert_eq!(
            from(&rig, Verdict::Fast),
            PacketBytes {
                packets: 3,
                bytes: (to_a.len() + to_b.len() + raw.len()) as u64
            }
        );
        assert_eq!(from(&rig, Verdict::Stack), ZERO);
        assert_eq!(
            fast_to(&rig, &A),
            PacketBytes {
                packets: 2,
                bytes: (to_a.len() + raw.len()) as u64
            }
        );
        assert_eq!(fast_to(&rig, &B), pb(1, to_b.len()));
        assert_eq!(rig.counters(C.slot), Default::default());
        assert_eq!(rig.counters(D.slot), Default::default());
        // The receiver's counters hold nothing but that.
        let mut a = rig.counters(A.slot);
        a.c[Dir::ToContainer.index()][Verdict::Fast.index()] = ZERO;
        assert_eq!(a, Default::default());
    });
}

#[test]
fn unknown_own_and_foreign_destinations_go_to_the_bridge() {
    on_own_thread(|| {
        let mut rig = rig();
        let cases = [
            ("unknown MAC", frame_to([0x02, 0x99, 0, 0, 0, 9], A.ip, 50)),
            (
                "the bridge's own MAC",
                frame_to(BR_MAC, [10, 1, 0, 254], 50),
            ),
            (
                "the sender's own MAC (hairpin)",
                frame_to(SRC_MAC, SRC_IP, 50),
            ),
            ("a port of another bridge", frame_to(C.mac, C.ip, 50)),
            ("over the port's MTU", frame_to(D.mac, D.ip, 200)),
        ];
        let mut stack = 0;
        for (what, f) in &cases {
            let (ret, out) = rig.run_tc(L2, f);
            assert_eq!(
                (ret, &out),
                (TCX_NEXT, f),
                "{what}: to the bridge, unchanged"
            );
            stack += f.len();
            assert_eq!(
                from(&rig, Verdict::Stack).bytes,
                stack as u64,
                "{what}: counted stack, once"
            );
        }
        // Within D's MTU the same port is fast: the MTU was the reason.
        let small = frame_to(D.mac, D.ip, 20);
        assert_eq!(rig.run_tc(L2, &small).0, TC_ACT_REDIRECT);
        assert_eq!(fast_to(&rig, &D), pb(1, small.len()));
        assert_eq!(from(&rig, Verdict::Fast), pb(1, small.len()));

        // The fast path switched off: even a live port's frame goes to the bridge, counted.
        rig.set_flags(CFG_ADMIT_ALWAYS | CFG_FASTPATH_OFF);
        let f = frame_to(A.mac, A.ip, 50);
        assert_eq!(rig.run_tc(L2, &f), (TCX_NEXT, f.clone()));
        assert_eq!(from(&rig, Verdict::Stack).packets, cases.len() as u64 + 1);
        assert_eq!(fast_to(&rig, &A), ZERO);
        assert_eq!(rig.counters(C.slot), Default::default());
    });
}

#[test]
fn broadcast_and_multicast_go_to_the_bridge() {
    on_own_thread(|| {
        let rig = rig();
        for (i, mac) in [BROADCAST, MCAST4, MCAST6].into_iter().enumerate() {
            let f = frame_to(mac, [10, 1, 0, 255], 40);
            let (ret, out) = rig.run_tc(L2, &f);
            assert_eq!(
                (ret, &out),
                (TCX_NEXT, &f),
                "{mac:02x?}: to the bridge, unchanged"
            );
            assert_eq!(from(&rig, Verdict::Stack), pb(i as u64 + 1, f.len()));
        }
        assert_eq!(from(&rig, Verdict::Fast), ZERO);
        assert_no_port_counted(&rig);
    });
}

#[test]
fn spoofed_sources_are_dropped_under_enforcement_and_counted_once_under_audit() {
    on_own_thread(|| {
        let mut rig = rig();
        let own = frame_to(A.mac, A.ip, 60);
        let mut bad_mac = own.clone();
        bad_mac[6..12].copy_from_slice(&[0x02, 0xee, 0, 0, 0, 0xee]);
        let bad_ip = udp4(A.mac, SRC_MAC, [10, 1, 0, 99], A.ip, 64, 60);
        let len = own.len();

        set_source_spoof(&mut rig, EP_SPOOF_ENFORCE);
        for (f, reason) in [
            (&bad_mac, Verdict::DropSpoofMac),
            (&bad_ip, Verdict::DropSpoofIp),
        ] {
            let (ret, _) = rig.run_tc(L2, f);
            assert_eq!(ret, TC_ACT_SHOT, "{reason}: dropped");
            assert_eq!(from(&rig, reason), pb(1, len), "{reason}: counted under it");
        }
        assert_eq!(from(&rig, Verdict::Fast), ZERO);
        assert_eq!(from(&rig, Verdict::Stack), ZERO);
        assert_no_port_counted(&rig);
        // The container's own frames still take the fast path.
        assert_eq!(rig.run_tc(L2, &own), (TC_ACT_REDIRECT, own.clone()));
        assert_eq!(fast_to(&rig, &A), pb(1, len));

        // Audit: counted under the reason (only), and left to the bridge, unchanged.
        set_source_spoof(&mut rig, EP_SPOOF_AUDIT);
        let (ret, out) = rig.run_tc(L2, &bad_mac);
        assert_eq!((ret, &out), (TCX_NEXT, &bad_mac));
        assert_eq!(from(&rig, Verdict::DropSpoofMac), pb(2, len));
        assert_eq!(from(&rig, Verdict::Stack), ZERO);
        assert_eq!(fast_to(&rig, &A), pb(1, len));

        // Off (what `bridge accelerate` records): the bridge forwards by destination only.
        set_source_spoof(&mut rig, 0);
        assert_eq!(rig.run_tc(L2, &bad_mac).0, TC_ACT_REDIRECT);
        assert_eq!(from(&rig, Verdict::DropSpoofMac), pb(2, len));
        assert_eq!(fast_to(&rig, &A), pb(2, len));
    });
}

fn flows(rig: &mut Rig) -> Vec<(FlowKey, FlowState)> {
    rig.hash::<FlowKey, FlowState>(MAP_FLOWS)
        .iter()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn admission_netfilter_sends_a_new_flow_through_the_bridge_until_admitted() {
    on_own_thread(|| {
        let mut rig = rig();
        rig.set_flags(0); // admission netfilter (UDP, ICMP echo)
        let fwd = frame_to(A.mac, A.ip, 40);
        let reply = reply_of(&fwd);
        let len = fwd.len();

        // Pending: to the bridge, unchanged, counted stack; the flow is noted under the
        // bridge's id, expected to leave on A's port.
        for i in 1..=2 {
            let (ret, out) = rig.run_tc(L2, &fwd);
            assert_eq!((ret, &out), (TCX_NEXT, &fwd), "packet {i}: the bridge's");
        }
        assert_eq!(from(&rig, Verdict::Stack), pb(2, len));
        assert_eq!(fast_to(&rig, &A), ZERO);
        let f = flows(&mut rig);
        assert_eq!(f.len(), 1, "one entry: {f:?}");
        let (k, mut v) = f[0];
        assert_eq!(k.network, BR);
        let d = (0..2).find(|d| v.flags & FLOW_PENDING[*d] != 0).unwrap();
        assert_eq!(v.flags, FLOW_PENDING[d]);
        assert_eq!(v.egress_ifindex[d], A.ifindex);

        // The bridge delivered both directions unchanged (seen by the ports' tcx egress; in
        // test_run every skb is on ifindex 1, so both are expected there).
        v.egress_ifindex = [LO; 2];
        v.flags |= FLOW_PENDING[1 - d];
        rig.hash::<FlowKey, FlowState>(MAP_FLOWS)
            .insert(k, v, 0)
            .unwrap();
        rig.run_tc(EGRESS, &fwd);
        rig.run_tc(EGRESS, &reply);
        assert_eq!(flows(&mut rig)[0].1.flags & FLOW_ADMITTED, FLOW_ADMITTED);

        // Admitted: the fast path, exactly as sent, counted on both ends and in the flow.
        let (ret, out) = rig.run_tc(L2, &fwd);
        assert_eq!((ret, &out), (TC_ACT_REDIRECT, &fwd));
        assert_eq!(from(&rig, Verdict::Fast), pb(1, len));
        assert_eq!(fast_to(&rig, &A), pb(1, len));
        assert_eq!(flows(&mut rig)[0].1.packets, 1);

        // A flow to B was never admitted: the bridge's.
        let to_b = frame_to(B.mac, B.ip, 40);
        assert_eq!(rig.run_tc(L2, &to_b).0, TCX_NEXT);
        assert_eq!(fast_to(&rig, &B), ZERO);

        // Admission always: straight to the fast path, nothing tracked.
        rig.set_flags(CFG_ADMIT_ALWAYS);
        let to_d = frame_to(D.mac, D.ip, 20);
        assert_eq!(rig.run_tc(L2, &to_d).0, TC_ACT_REDIRECT);
        assert_eq!(fast_to(&rig, &D), pb(1, to_d.len()));
        assert_eq!(flows(&mut rig).len(), 2, "only the two flows noted before");
    });
}
