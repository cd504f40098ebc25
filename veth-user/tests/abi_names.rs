//! The typed ABI in `veth-common` (`Program`, `Hook`) names exactly what the BPF object holds
//! and what the control plane's constants say, so a switch from one to the other cannot
//! change a pinned name.

use veth_common::{Hook, MAPS, Program};
use vethfp::datapath::{
    Datapath, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_UPLINK, HOOK_UPLINK_EGRESS, HOOK_XDP,
    PROG_L2_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS,
    PROG_XDP, PROGRAMS,
};

#[test]
fn program_and_hook_names_are_the_control_planes() {
    assert_eq!(Program::NAMES, PROGRAMS);
    for (p, name) in [
        (Program::TcIngress, PROG_TC_INGRESS),
        (Program::TcEgress, PROG_TC_EGRESS),
        (Program::Xdp, PROG_XDP),
        (Program::UplinkIngress, PROG_UPLINK_INGRESS),
        (Program::L2Ingress, PROG_L2_INGRESS),
        (Program::UplinkEgress, PROG_UPLINK_EGRESS),
    ] {
        assert_eq!(p.name(), name);
    }
    for (h, name) in [
        (Hook::TcIngress, HOOK_TC_INGRESS),
        (Hook::TcEgress, HOOK_TC_EGRESS),
        (Hook::Xdp, HOOK_XDP),
        (Hook::UplinkIngress, HOOK_UPLINK),
        (Hook::UplinkEgress, HOOK_UPLINK_EGRESS),
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
