//! The typed ABI in `veth-common` (`Program`, `Hook`) names exactly what the BPF object holds
//! and what states already pinned are called (`progs/<program>-<hash>`, `links/<hook>-<i>`),
//! so no change to the types can rename a pin an existing state has.

use veth_common::{Hook, MAPS, Program};
use vethfp::datapath::{Datapath, PROGRAMS};

#[test]
fn program_and_hook_names_are_the_pinned_ones() {
    assert_eq!(Program::ALL, PROGRAMS);
    for (p, name) in [
        (Program::TcIngress, "vfp_tc_ingress"),
        (Program::TcEgress, "vfp_tc_egress"),
        (Program::Xdp, "vfp_xdp"),
        (Program::UplinkIngress, "vfp_uplink_ingress"),
        (Program::L2Ingress, "vfp_l2_ingress"),
        (Program::UplinkEgress, "vfp_uplink_egress"),
    ] {
        assert_eq!(p.name(), name);
    }
    for (h, name) in [
        (Hook::TcIngress, "tc-ingress"),
        (Hook::TcEgress, "tc-egress"),
        (Hook::Xdp, "xdp"),
        (Hook::UplinkIngress, "uplink-ingress"),
        (Hook::UplinkEgress, "uplink-egress"),
    ] {
        assert_eq!(h.name(), name);
    }
}

/// Every program and map the ABI names is in the embedded object, of the right kind, and
/// nothing else is.
#[test]
fn the_bpf_object_has_every_program_and_map_by_name() {
    let ebpf = Datapath::unpinned().expect("BPF object loads");
    for p in Program::ALL {
        let prog = ebpf
            .program(p.name())
            .unwrap_or_else(|| panic!("{} in the object", p.name()));
        assert_eq!(
            matches!(prog, aya::programs::Program::Xdp(_)),
            p.is_xdp(),
            "{}: program type",
            p.name()
        );
    }
    let mut progs: Vec<&str> = ebpf.programs().map(|(n, _)| n).collect();
    progs.sort();
    let mut want = Program::NAMES.to_vec();
    want.sort();
    assert_eq!(progs, want, "no program the ABI does not name");
    for m in MAPS {
        assert!(ebpf.map(m).is_some(), "map {m} in the object");
    }
}
