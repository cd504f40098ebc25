//! Layer 1 for the XDP program's devmap redirect: BPF_PROG_TEST_RUN with private maps, on a
//! thread in a private network namespace holding the veth devices (devmap entries and the XDP
//! ingress device must be real interfaces).
//!
//! `vfp_xdp` does not look the devmap up before redirecting: `bpf_redirect_map` itself fails
//! over to `XDP_PASS`, and it is called before the frame is rewritten. So a missing entry
//! leaves the frame exactly as the container sent it, counted nowhere (tcx ingress, next on
//! the same host end, decides and counts it), and a present one gets the rewritten frame
//! counted once on each end.

mod common;

use aya::maps::DevMapHash;
use common::*;
use veth_common::{
    CFG_ADMIT_ALWAYS, Dir, EndpointRecord, MAP_DEVMAP, MAP_ENDPOINTS, MAP_EP4, Program, Target,
    Verdict,
};

/// The sender's host end (XDP ingress) and the destination's host end.
const SRC_IF: u32 = 1100;
const DST_IF: u32 = 1101;
const SRC_SLOT: u32 = 0;
const DST_SLOT: u32 = 1;
/// The sender's host end MAC (its container's gateway), as `ip link` gives it below.
const GW_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x02];
const DST_HOST_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x02];
const XDP: &str = Program::Xdp.name();

fn set_mac(dev: &str, mac: [u8; 6]) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let ok = std::process::Command::new("ip")
        .args(["link", "set", dev, "address", &mac])
        .status()
        .expect("ip runs")
        .success();
    assert!(ok, "setting the MAC of {dev}");
}

fn rig() -> Rig {
    private_netns_with_veths(&[(SRC_IF, SRC_IF + 1000, 1500), (DST_IF, DST_IF + 1000, 1500)]);
    set_mac(&format!("d{SRC_IF}"), GW_MAC);
    let mut rig = Rig::load(&[], &[XDP]);
    rig.set_flags(CFG_ADMIT_ALWAYS);
    let dst = Target {
        ifindex: DST_IF,
        mtu: 1500,
        slot: DST_SLOT,
        container_mac: DST_MAC,
        host_mac: DST_HOST_MAC,
        mode: veth_common::MODE_XDP,
        ..Default::default()
    };
    let src = Target {
        ifindex: SRC_IF,
        slot: SRC_SLOT,
        container_mac: SRC_MAC,
        host_mac: GW_MAC,
        ..dst
    };
    rig.hash::<[u8; 4], Target>(MAP_EP4)
        .insert([10, 0, 0, 2], dst, 0)
        .unwrap();
    let mut eps = rig.hash::<u32, EndpointRecord>(MAP_ENDPOINTS);
    for t in [src, dst] {
        let r = EndpointRecord {
            target: t,
            ..Default::default()
        };
        eps.insert(t.ifindex, r, 0).unwrap();
    }
    rig
}

fn devmap(rig: &mut Rig) -> DevMapHash<&mut aya::maps::MapData> {
    DevMapHash::try_from(rig.ebpf.map_mut(MAP_DEVMAP).unwrap()).unwrap()
}

#[test]
fn a_missing_devmap_entry_passes_the_frame_untouched_and_uncounted() {
    on_own_thread(|| {
        let mut rig = rig();
        let frame = udp4(GW_MAC, SRC_MAC, [10, 0, 0, 1], [10, 0, 0, 2], 64, 100);
        let len = frame.len();

        // No entry for the destination (another endpoint's is there): to tcx, as sent.
        devmap(&mut rig).insert(SRC_IF, SRC_IF, None, 0).unwrap();
        let (ret, out) = rig.run_xdp(XDP, &frame, SRC_IF);
        assert_eq!(ret, XDP_PASS);
        assert_eq!(
            out, frame,
            "not rewritten: no MAC change, same TTL and checksum"
        );
        assert_eq!(
            rig.counters(SRC_SLOT),
            Default::default(),
            "not counted by XDP"
        );
        assert_eq!(rig.counters(DST_SLOT), Default::default());

        // With the entry: redirected, rewritten, counted once on each end.
        devmap(&mut rig).insert(DST_IF, DST_IF, None, 0).unwrap();
        let (ret, out) = rig.run_xdp(XDP, &frame, SRC_IF);
        assert_eq!(ret, XDP_REDIRECT);
        assert_eq!(&out[0..6], &DST_MAC);
        assert_eq!(&out[6..12], &DST_HOST_MAC);
        assert_eq!(out[22], 63, "TTL decremented");
        assert_eq!(csum(&out[14..34]), 0, "IPv4 header checksum valid");
        assert_eq!(
            &out[12..22],
            &frame[12..22],
            "EtherType, IP header up to the TTL"
        );
        assert_eq!(&out[26..], &frame[26..], "addresses, UDP, payload");
        assert_eq!(
            rig.count(SRC_SLOT, Dir::FromContainer, Verdict::Fast),
            pb(1, len)
        );
        assert_eq!(
            rig.count(DST_SLOT, Dir::ToContainer, Verdict::Fast),
            pb(1, len)
        );

        // The entry removed again (the device went, or the control plane is mid-way):
        // untouched once more, and the counts stay those of the one redirected frame.
        devmap(&mut rig).remove(DST_IF).unwrap();
        let (ret, out) = rig.run_xdp(XDP, &frame, SRC_IF);
        assert_eq!((ret, out), (XDP_PASS, frame.clone()));
        let mut src = rig.counters(SRC_SLOT);
        assert_eq!(src.get(Dir::FromContainer, Verdict::Fast), pb(1, len));
        src.c[Dir::FromContainer.index()][Verdict::Fast.index()] = Default::default();
        assert_eq!(
            src,
            Default::default(),
            "no drop_error, no stack: nothing else"
        );
        assert_eq!(
            rig.count(DST_SLOT, Dir::ToContainer, Verdict::Fast),
            pb(1, len)
        );
    });
}
