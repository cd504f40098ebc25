//! Measurement (ignored; prints, asserts only verdicts, never a time): the per-packet cost of
//! anti-spoofing on the tc fast path, `vfp_tc_ingress` with the sender's record at `enforce`
//! next to `off`, admission `always`. Since frames are parsed once (`dp/parse.rs`) the check
//! reads the headers the router uses anyway. Best of 50 runs of 200 repeats; the frame starts
//! at TTL 255 because each fast repeat decrements the TTL of the same skb again. Run with
//! `cargo test -p veth-user --test bpf_parse_cost -- --ignored --nocapture`.

mod common;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::*;
use veth_common::{
    AF_V4, CFG_ADMIT_ALWAYS, EP_SPOOF_ENFORCE, EndpointRecord, MAP_ENDPOINTS, MAP_EP4, Program,
    Target,
};

const DST_IF: u32 = 1200;
const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const TC: &str = Program::TcIngress.name();

fn set_source(rig: &mut Rig, spoof: u32) {
    let mut r = EndpointRecord {
        target: Target {
            ifindex: LO,
            mtu: 1500,
            slot: 0,
            container_mac: SRC_MAC,
            ..Default::default()
        },
        flags: spoof,
        naddrs: 1,
        ..Default::default()
    };
    r.addrs[0].family = AF_V4;
    r.addrs[0].addr[..4].copy_from_slice(&[10, 0, 0, 9]);
    rig.hash::<u32, EndpointRecord>(MAP_ENDPOINTS)
        .insert(LO, r, 0)
        .unwrap();
}

fn best(rig: &Rig, frame: &[u8]) -> u128 {
    let p: &SchedClassifier = rig.ebpf.program(TC).unwrap().try_into().unwrap();
    let mut best = u128::MAX;
    for _ in 0..50 {
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
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
}

#[test]
#[ignore = "measurement: prints timings, run on demand"]
fn spoof_check_cost_per_run() {
    on_own_thread(|| {
        private_netns_with_veths(&[(DST_IF, DST_IF + 1000, 1500)]);
        let mut rig = Rig::load(&[TC], &[]);
        rig.set_flags(CFG_ADMIT_ALWAYS);
        let t = Target {
            ifindex: DST_IF,
            mtu: 1500,
            slot: 1,
            container_mac: [0x02, 0xc0, 0, 0, 0, 2],
            // The rewrite makes this the source MAC of every later repeat: the sender's own,
            // so each repeat passes the check again.
            host_mac: SRC_MAC,
            ..Default::default()
        };
        rig.hash::<[u8; 4], Target>(MAP_EP4)
            .insert([10, 0, 0, 2], t, 0)
            .unwrap();
        rig.hash::<u32, EndpointRecord>(MAP_ENDPOINTS)
            .insert(
                DST_IF,
                EndpointRecord {
                    target: t,
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        // To the gateway (loopback's MAC in test_run), from the container's own addresses.
        let frame = udp4([0; 6], SRC_MAC, [10, 0, 0, 9], [10, 0, 0, 2], 255, 40);
        set_source(&mut rig, 0);
        let off = best(&rig, &frame);
        set_source(&mut rig, EP_SPOOF_ENFORCE);
        let enforce = best(&rig, &frame);
        println!("vfp_tc_ingress ns per run: spoof enforce {enforce}, off {off}");
    });
}
