//! Shared by the BPF_PROG_TEST_RUN test files (`mod common;`): a private network namespace
//! with devices of chosen ifindexes, the unpinned datapath with private maps, program runs on
//! crafted frames, counters, and frame builders. Each test file uses part of it.
#![allow(dead_code)]

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use veth_common::{CONFIG_FLAGS, Counters, Dir, MAP_CONFIG, MAP_COUNTERS, PacketBytes, Verdict};
use vethfp::datapath::Datapath;

pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TCX_NEXT: u32 = u32::MAX; // -1
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// In BPF_PROG_TEST_RUN a tc program's skb arrives on the loopback device (ifindex 1, MAC
/// 00:..:00): the sending endpoint of every tc case.
pub const LO: u32 = 1;
/// The `skb->ingress_ifindex` of a packet the kernel forwarded between endpoints (any device
/// but 0, which marks a packet the node itself sent).
pub const FORWARDED_IIF: u32 = 7;

/// Moves the calling thread into a new network namespace (so run each rig on a thread of its
/// own) holding one veth pair per `(ifindex, peer ifindex, mtu)`, named `d<ifindex>` and
/// `p<ifindex>`, so the programs' device checks find them. The namespace, and everything in
/// it, goes away with the thread.
pub fn private_netns_with_veths(devs: &[(u32, u32, u32)]) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("private netns");
    for &(ifindex, peer, mtu) in devs {
        let ok = std::process::Command::new("ip")
            .args(["link", "add", &format!("d{ifindex}")])
            .args(["index", &ifindex.to_string(), "mtu", &mtu.to_string()])
            .args(["type", "veth", "peer", "name", &format!("p{ifindex}")])
            .args(["index", &peer.to_string()])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "creating the veth with ifindex {ifindex}");
    }
}

/// Runs `f` on a thread of its own (for [`private_netns_with_veths`]), passing on its panic.
pub fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::spawn(f).join() {
        std::panic::resume_unwind(e);
    }
}

/// The datapath object with private maps and the named programs loaded (verified).
pub struct Rig {
    pub ebpf: Ebpf,
}

impl Rig {
    pub fn load(tc: &[&str], xdp: &[&str]) -> Rig {
        let mut ebpf = Datapath::unpinned().expect("BPF object loads");
        for name in tc {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        for name in xdp {
            let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        Rig { ebpf }
    }

    /// A hash map of the object, typed.
    pub fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).unwrap()).unwrap()
    }

    /// Sets the config flags word as is (no admission default added).
    pub fn set_flags(&mut self, flags: u32) {
        let mut a: Array<_, u32> = Array::try_from(self.ebpf.map_mut(MAP_CONFIG).unwrap()).unwrap();
        a.set(CONFIG_FLAGS, flags, 0).unwrap();
    }

    /// Runs tc program `prog` on `frame` as a packet the kernel forwarded (received on a
    /// device, `skb->ingress_ifindex` set): (return value, frame as the program left it).
    pub fn run_tc(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_tc_received_on(prog, frame, FORWARDED_IIF)
    }

    /// Runs tc program `prog` on `frame` with `skb->ingress_ifindex = iif` (0: a packet the
    /// node itself sent).
    pub fn run_tc_received_on(&self, prog: &str, frame: &[u8], iif: u32) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to and including ingress_ifindex (offset 36); the kernel
        // zero-fills the rest and accepts only a few fields, this one among them.
        let mut ctx = [0u8; 40];
        ctx[36..40].copy_from_slice(&iif.to_ne_bytes());
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs XDP program `prog` on `frame` as received on `ingress_ifindex`.
    pub fn run_xdp(&self, prog: &str, frame: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
        let p: &Xdp = self.ebpf.program(prog).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
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
    }

    /// The counters of `slot`, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Counters {
        let c: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map(MAP_COUNTERS).unwrap()).unwrap();
        let mut sum = Counters::default();
        for v in c.get(&slot, 0).unwrap().iter() {
            sum.add(v);
        }
        sum
    }

    pub fn count(&self, slot: u32, dir: Dir, verdict: Verdict) -> PacketBytes {
        self.counters(slot).get(dir, verdict)
    }
}

/// `n` packets of `bytes` each.
pub fn pb(n: u64, bytes: usize) -> PacketBytes {
    PacketBytes {
        packets: n,
        bytes: n * bytes as u64,
    }
}

/// The Internet checksum of `data`.
pub fn csum(data: &[u8]) -> u16 {
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

/// Ethernet + IPv4 + UDP (ports 12345 → 12345) with `payload` bytes, valid header checksum.
pub fn udp4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    payload: usize,
) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let tot = (20 + 8 + payload) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xab, payload));
    f
}

/// The same frame with the UDP ports swapped, addresses and MACs swapped: the reply.
pub fn reply_of(f: &[u8]) -> Vec<u8> {
    let mut r = f.to_vec();
    r[0..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&f[0..6]);
    r[26..30].copy_from_slice(&f[30..34]);
    r[30..34].copy_from_slice(&f[26..30]);
    r
}
