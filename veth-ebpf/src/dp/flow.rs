//! Netfilter admission: the kernel admits, vethfp accelerates.
//!
//! Under admission `netfilter` (no `CFG_ADMIT_ALWAYS`), a fast-path candidate takes the fast
//! path only once its flow is admitted: the kernel forwarded each direction *unchanged* (same
//! tuple, out of the expected interface). Ingress hooks note a direction as pending
//! ([`admit`]); the egress hooks that see what the kernel forwarded confirm it ([`confirm`]).
//! A flow the kernel translates (DNAT, SNAT) leaves with another tuple and a flow it drops
//! never leaves: neither is ever admitted. Admitted flows fall back to pending after
//! `CONFIG_REVERIFY` seconds, or `CONFIG_IDLE` seconds without a packet, so conntrack keeps
//! seeing them and rule changes take effect.
//!
//! TCP (see docs/ARCHITECTURE.md, "TCP hand-off"): SYN, FIN and RST always take the kernel
//! path and never confirm a direction, so a flow is confirmed by the packets after the
//! handshake, when conntrack has the entry ESTABLISHED and ASSURED. Under `CFG_TCP_HANDOFF`
//! a confirmed flow is reported on `VFP_HANDOFF` once `HANDOFF_AFTER_PACKETS` more packets
//! crossed the kernel (a connection that closes after one answer is not); the agent makes
//! that conntrack entry liberal about windows and sets `FLOW_LIBERAL`, without which no TCP
//! packet takes the fast path. A FIN marks its direction closing (every later packet of the
//! flow takes the kernel path, with no map write); the first packet after both FINs (the last
//! ACK) and any RST remove the entry, so a closed connection leaves nothing behind. A SYN on
//! an entry that was admitted or closing starts the flow over.

// Keys and values are passed to the map helpers by reference on purpose: by value they would be
// copied onto the 512-byte BPF stack once more per call site.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use veth_common::{
    AF_V4, AF_V6, CFG_ADMIT_ALWAYS, CFG_ADMIT_TCP, CFG_TCP_HANDOFF, CONFIG_IDLE, CONFIG_REVERIFY,
    DEFAULT_IDLE_S, DEFAULT_REVERIFY_S, FLOW_ADMITTED, FLOW_CONFIRMED, FLOW_FIN, FLOW_LIBERAL,
    FLOW_PENDING, FLOW_REPORTED, FS_ADMITTED, FS_CREATED, FS_EXPIRED, FS_INSERT_FAILED,
    FS_REPORT_LOST, FS_REPORTED, FS_TORN_DOWN, FlowKey, FlowState, HANDOFF_AFTER_PACKETS,
    HandoffEvent,
};

use crate::dp::{
    maps::{VFP_CONFIG, VFP_FLOW_STATS, VFP_FLOWS, VFP_HANDOFF},
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3, Packet},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
const NS: u64 = 1_000_000_000;

/// One packet's flow: the canonical key, its direction in it, and its TCP control bits.
pub struct Flow {
    pub key: FlowKey,
    /// 0: from `key.addr_lo`, 1: from `key.addr_hi`.
    pub dir: usize,
    /// TCP SYN, FIN or RST: never the fast path, never confirms.
    pub ctl: bool,
    /// TCP flag bits (0 for other protocols).
    pub bits: u8,
    /// TCP that needs the agent's hand-off ([`FLOW_LIBERAL`]) before it may take the fast path.
    pub handoff: bool,
}

/// The flow of the parsed packet, if admission tracks it: TCP (with `CFG_ADMIT_TCP` or
/// `CFG_TCP_HANDOFF`), UDP,
/// ICMP/ICMPv6 echo; not fragments, IPv6 extension headers, ICMP errors or anything else (those
/// always take the kernel path under admission `netfilter`).
#[inline(always)]
pub fn parse(p: &Packet, network: u32, cfg: u32) -> Option<Flow> {
    // Not `..Default::default()`: the BPF target lowers zeroing a 44-byte struct to a call of
    // a byte-at-a-time memset loop (~40 ns per packet measured); `parse_into` writes every
    // byte of the key itself, with word stores.
    let mut f = core::mem::MaybeUninit::<Flow>::uninit();
    if parse_into(f.as_mut_ptr(), p, network, cfg) {
        // SAFETY: parse_into initialized every field when it returns true.
        Some(unsafe { f.assume_init() })
    } else {
        None
    }
}

/// Admission (see the module doc): may this fast-path candidate, whose kernel path would
/// leave on `egress_ifindex`, take the fast path? Always under `CFG_ADMIT_ALWAYS`; under
/// `netfilter` only a tracked, admitted flow (untracked protocols always take the kernel path).
#[inline(always)]
pub fn admit_packet(p: &Packet, network: u32, egress_ifindex: u32, cfg: u32) -> bool {
    if cfg & CFG_ADMIT_ALWAYS != 0 {
        return true;
    }
    match parse(p, network, cfg) {
        Some(f) => admit(&f, egress_ifindex),
        None => false,
    }
}

/// A BPF subprogram of its own (not inlined): keeps the callers' stack frames small. It reads
/// the packet's headers through `p` (a pointer into the caller's stack, which the verifier
/// follows, bounds included).
#[inline(never)]
fn parse_into(f: *mut Flow, p: &Packet, network: u32, cfg: u32) -> bool {
    // SAFETY: `f` is valid for writes; parse_inner initializes it completely or fails.
    unsafe { parse_inner(f, p, network, cfg).is_some() }
}

/// An IP address as four words, each as loaded from the packet (network byte order).
type Words = [u32; 4];

/// A 4-byte load from `p`, which may be unaligned (the BPF target makes byte loads of it).
#[inline(always)]
unsafe fn word(p: *const u8) -> u32 {
    // SAFETY: the caller bounds-checked 4 bytes at `p`.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

#[inline(always)]
unsafe fn v6_words(p: *const [u8; 16]) -> Words {
    let p = p as *const u8;
    // SAFETY: the caller bounds-checked 16 bytes at `p`.
    unsafe { [word(p), word(p.add(4)), word(p.add(8)), word(p.add(12))] }
}

/// (a, pa) < (b, pb) or equal: by address (big-endian words), then port (network order).
#[inline(always)]
fn lower(a: &Words, pa: u16, b: &Words, pb: u16) -> bool {
    for i in 0..4 {
        if a[i] != b[i] {
            return u32::from_be(a[i]) < u32::from_be(b[i]);
        }
    }
    u16::from_be(pa) <= u16::from_be(pb)
}

/// Writes an address into a key field with word stores (volatile: not merged into a memset
/// call, which the BPF target lowers to a byte-at-a-time loop).
#[inline(always)]
unsafe fn put_addr(dst: *mut [u8; 16], w: &Words) {
    let d = dst as *mut u32;
    for (i, v) in w.iter().enumerate() {
        // SAFETY: the address fields of FlowKey are 4-aligned (offsets 8 and 24).
        unsafe { core::ptr::write_volatile(d.add(i), *v) };
    }
}

/// Builds the flow without building the key twice: the ends are compared as loaded from the
/// packet and written in canonical order once (a byte-wise swap of a written key, and
/// zeroing it first, cost ~40 ns per packet as the BPF target compiles them).
#[inline(always)]
unsafe fn parse_inner(f: *mut Flow, p: &Packet, network: u32, cfg: u32) -> Option<()> {
    let (family, proto, src, dst);
    // SAFETY: every packet pointer was bounds-checked by `parse`.
    unsafe {
        match p.l3() {
            L3::V4(ip) => {
                // Options or fragments (MF set or an offset): the kernel's. (With options
                // `parse` found no L4 either.)
                if (*ip).vihl != 0x45 || u16::from_be_bytes((*ip).frags) & 0x3fff != 0 {
                    return None;
                }
                family = AF_V4;
                proto = (*ip).proto;
                src = [word((&raw const (*ip).src_addr).cast()), 0, 0, 0];
                dst = [word((&raw const (*ip).dst_addr).cast()), 0, 0, 0];
            }
            L3::V6(ip) => {
                family = AF_V6;
                proto = (*ip).next_hdr; // extension headers: no L4 below
                src = v6_words(&raw const (*ip).src_addr);
                dst = v6_words(&raw const (*ip).dst_addr);
            }
            L3::Arp(_) | L3::Other => return None,
        }
    }
    let (sport, dport, ctl, bits, handoff);
    // SAFETY: the L4 pointers were bounds-checked by `parse` for their sizes.
    unsafe {
        match proto {
            IPPROTO_TCP => {
                if cfg & (CFG_ADMIT_TCP | CFG_TCP_HANDOFF) == 0 {
                    return None;
                }
                let t = p.tcp?.as_ptr();
                bits = (*t)[13];
                ctl = bits & (TCP_SYN | TCP_FIN | TCP_RST) != 0;
                handoff = cfg & CFG_ADMIT_TCP == 0;
                sport = u16::from_ne_bytes([(*t)[0], (*t)[1]]);
                dport = u16::from_ne_bytes([(*t)[2], (*t)[3]]);
            }
            IPPROTO_UDP => {
                let h = p.l4?.as_ptr();
                (ctl, bits, handoff) = (false, 0, false);
                sport = u16::from_ne_bytes([(*h)[0], (*h)[1]]);
                dport = u16::from_ne_bytes([(*h)[2], (*h)[3]]);
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                let h = p.l4?.as_ptr();
                let ty = (*h)[0];
                let echo = if proto == IPPROTO_ICMP {
                    (ty == 8 || ty == 0) && family == AF_V4
                } else {
                    (ty == 128 || ty == 129) && family == AF_V6
                };
                if !echo {
                    return None; // errors, ND, router messages: the kernel's
                }
                (ctl, bits, handoff) = (false, 0, false);
                sport = u16::from_ne_bytes([(*h)[4], (*h)[5]]);
                dport = sport;
            }
            _ => return None,
        }
    }
    let fwd = lower(&src, sport, &dst, dport);
    let (lo, hi, plo, phi) = if fwd {
        (&src, &dst, sport, dport)
    } else {
        (&dst, &src, dport, sport)
    };
    // SAFETY: `f` is valid for writes; every byte of the key is written (it is a map key).
    unsafe {
        let k = &raw mut (*f).key;
        (*k).family = family;
        (*k).proto = proto;
        (*k)._pad = [0; 2];
        (*k).network = network;
        put_addr(&raw mut (*k).addr_lo, lo);
        put_addr(&raw mut (*k).addr_hi, hi);
        (*k).port_lo = plo.to_ne_bytes();
        (*k).port_hi = phi.to_ne_bytes();
        (*f).dir = if fwd { 0 } else { 1 };
        (*f).ctl = ctl;
        (*f).bits = bits;
        (*f).handoff = handoff;
    }
    Some(())
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn stat(i: usize) {
    if let Some(s) = VFP_FLOW_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value; programs on one CPU do not nest.
        unsafe { (*s).c[i] += 1 };
    }
}

#[inline(always)]
fn seconds(slot: u32, default: u32) -> u64 {
    let v = match VFP_CONFIG.get(slot) {
        Some(v) => *v,
        None => 0,
    };
    (if v == 0 { default } else { v }) as u64 * NS
}

/// The flags word of a flow. The BPF target's `core` has no atomic read-modify-write
/// (aya-ebpf/bpf-linker give no `fetch_or`), so updates are plain volatile stores: two CPUs
/// racing on one flow can at worst lose a bit (admission one packet later) or count an
/// admission twice; docs/ARCHITECTURE.md says so.
struct Flags(*mut u64);

impl Flags {
    #[inline(always)]
    fn load(&self) -> u64 {
        // SAFETY: points into a map value, valid for the program's run.
        unsafe { core::ptr::read_volatile(self.0) }
    }
    #[inline(always)]
    fn or(&self, bits: u64) -> u64 {
        let old = self.load();
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(self.0, old | bits) };
        old
    }
    #[inline(always)]
    fn clear(&self, bits: u64) {
        let old = self.load();
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(self.0, old & !bits) };
    }
}

#[inline(always)]
fn flags_of(st: *mut FlowState) -> Flags {
    // SAFETY: `st` points into a map value.
    Flags(unsafe { &raw mut (*st).flags })
}

/// Is the admitted flow in `st` still valid at `now`?
#[inline(always)]
fn fresh(st: *mut FlowState, now: u64) -> bool {
    // SAFETY: map value pointer.
    let (at, seen) = unsafe { ((*st).admitted_at, (*st).last_seen) };
    now.wrapping_sub(at) < seconds(CONFIG_REVERIFY, DEFAULT_REVERIFY_S)
        && now.wrapping_sub(seen) < seconds(CONFIG_IDLE, DEFAULT_IDLE_S)
}

/// Lookup only (XDP): true if the packet's flow is admitted and it may take the fast path now
/// (its packet is counted in the flow). Anything else is left to [`admit`] in tcx ingress.
#[inline(always)]
pub fn admitted(f: &Flow) -> bool {
    if f.ctl {
        return false;
    }
    let Some(st) = VFP_FLOWS.get_ptr_mut(&f.key) else {
        return false;
    };
    take_fast(f, st)
}

/// [`admitted`] once the flow's entry `st` is found (the caller checked `f.ctl`).
#[inline(always)]
fn take_fast(f: &Flow, st: *mut FlowState) -> bool {
    let t = now();
    if !fast(f, flags_of(st).load()) || !fresh(st, t) {
        return false;
    }
    // SAFETY: map value pointer; a lost update of these statistics between CPUs is harmless.
    // last_seen moves once per jiffy (coarse clock): written only then, so the two directions'
    // CPUs do not bounce the cache line on it for every packet.
    unsafe {
        if (*st).last_seen != t {
            (*st).last_seen = t;
        }
        (*st).packets += 1;
    }
    true
}

/// May a packet of a flow with these flags take the fast path (freshness aside)?
#[inline(always)]
fn fast(f: &Flow, fl: u64) -> bool {
    fl & FLOW_ADMITTED == FLOW_ADMITTED
        && (!f.handoff || fl & FLOW_LIBERAL != 0)
        && fl & (FLOW_FIN[0] | FLOW_FIN[1]) == 0
}

/// The ingress decision for a fast-path candidate whose kernel path would leave on
/// `egress_ifindex`: true = fast path. Otherwise the packet goes to the kernel and this
/// direction is noted as pending (TCP: a FIN marks the flow closing, the last ACK or a RST
/// removes it, a SYN on an admitted or closing flow starts it over).
#[inline(always)]
pub fn admit(f: &Flow, egress_ifindex: u32) -> bool {
    let fin = f.bits & TCP_FIN != 0;
    let rst = f.bits & TCP_RST != 0;
    // One lookup for both questions (is it admitted; if not, what to note): a flow on the
    // kernel path pays for one hash lookup per packet, not two.
    let Some(st) = VFP_FLOWS.get_ptr_mut(&f.key) else {
        if fin || rst {
            return false; // nothing to tear down; a close never opens an entry
        }
        let mut v = FlowState {
            flags: pending(f.dir),
            last_seen: now(),
            ..FlowState::default()
        };
        v.egress_ifindex = if f.dir == 0 {
            [egress_ifindex, 0]
        } else {
            [0, egress_ifindex]
        };
        match VFP_FLOWS.insert(&f.key, &v, BPF_NOEXIST) {
            Ok(()) => stat(FS_CREATED),
            Err(_) => stat(FS_INSERT_FAILED), // a race with another CPU, or no memory
        }
        return false;
    };
    if !f.ctl && take_fast(f, st) {
        return true;
    }
    let flags = flags_of(st);
    let cur = flags.load();
    let closing = cur & (FLOW_FIN[0] | FLOW_FIN[1]);
    if rst || (closing == FLOW_FIN[0] | FLOW_FIN[1] && !fin && f.bits & TCP_SYN == 0) {
        // A reset, or the last ACK after both FINs: the connection is over.
        let _ = VFP_FLOWS.remove(&f.key);
        stat(FS_TORN_DOWN);
        return false;
    }
    if f.bits & TCP_SYN != 0 {
        if cur & (FLOW_ADMITTED | FLOW_LIBERAL) != 0 || closing != 0 {
            // A new connection on this tuple (or a SYN on a live one): admitted afresh.
            let mut v = FlowState {
                flags: pending(f.dir),
                last_seen: now(),
                ..FlowState::default()
            };
            v.egress_ifindex = if f.dir == 0 {
                [egress_ifindex, 0]
            } else {
                [0, egress_ifindex]
            };
            let _ = VFP_FLOWS.insert(&f.key, &v, BPF_EXIST);
            stat(FS_EXPIRED);
            return false;
        }
    } else if fin {
        if closing == 0 && cur & FLOW_ADMITTED == FLOW_ADMITTED {
            stat(FS_TORN_DOWN);
        }
        flags.or(fin_bit(f.dir));
        return false;
    } else if closing != 0 {
        return false; // half-closed: the kernel's, nothing to write
    }
    if cur & FLOW_ADMITTED == FLOW_ADMITTED {
        if f.handoff && cur & FLOW_LIBERAL == 0 && fresh(st, now()) {
            // Waiting for the agent's hand-off: counted until reported, then nothing to write.
            if cur & FLOW_REPORTED == 0 {
                // SAFETY: map value pointer; a lost update between CPUs only delays the report.
                let n = unsafe {
                    (*st).packets += 1;
                    (*st).packets
                };
                if n >= HANDOFF_AFTER_PACKETS {
                    report(f, &flags);
                }
            }
            return false;
        }
        // Expired: the kernel must confirm the flow again (a handed-off flow keeps
        // FLOW_LIBERAL: its conntrack entry stays liberal).
        flags.clear(FLOW_ADMITTED | FLOW_REPORTED);
        stat(FS_EXPIRED);
    }
    let slot = egress_slot(st, f.dir);
    // SAFETY: map value pointer.
    unsafe {
        if *slot != egress_ifindex {
            *slot = egress_ifindex;
        }
    }
    if cur & pending(f.dir) == 0 {
        flags.or(pending(f.dir));
    }
    false
}

/// An egress hook saw the kernel send this packet out of `ifindex`: if its direction is
/// pending there with the same tuple, it is confirmed; both directions confirmed = admitted
/// (counted once, by whichever CPU set the second bit; a TCP flow that needs the hand-off is
/// reported to the agent by [`admit`] a few packets later). False if the flow has no entry.
#[inline(always)]
pub fn confirm(f: &Flow, ifindex: u32) -> bool {
    let Some(st) = VFP_FLOWS.get_ptr_mut(&f.key) else {
        return false;
    };
    if f.ctl {
        return true;
    }
    let flags = flags_of(st);
    let cur = flags.load();
    // SAFETY: map value pointer.
    let expected = unsafe { *egress_slot(st, f.dir) };
    if cur & pending(f.dir) == 0
        || cur & confirmed(f.dir) != 0
        || cur & (FLOW_FIN[0] | FLOW_FIN[1]) != 0
        || expected != ifindex
    {
        return true;
    }
    let other = confirmed(1 - f.dir);
    if cur & other != 0 {
        // This bit completes the flow: make its timestamps valid before anyone can see it.
        let t = now();
        // SAFETY: map value pointer.
        unsafe {
            (*st).admitted_at = t;
            (*st).last_seen = t;
            (*st).packets = 0;
        }
    }
    let old = flags.or(confirmed(f.dir));
    if old & FLOW_ADMITTED != FLOW_ADMITTED
        && (old | confirmed(f.dir)) & FLOW_ADMITTED == FLOW_ADMITTED
    {
        stat(FS_ADMITTED);
    }
    true
}

/// Tells the agent about a TCP flow to hand off. A full ring loses the report (counted); the
/// agent's periodic check finds the flow in the table.
#[inline(always)]
fn report(f: &Flow, flags: &Flags) {
    let ev = HandoffEvent {
        key: f.key,
        _pad: 0,
        // SAFETY: plain helper call.
        at_ns: unsafe { bpf_ktime_get_ns() },
    };
    match VFP_HANDOFF.output(&ev, 0) {
        Ok(()) => {
            flags.or(FLOW_REPORTED);
            stat(FS_REPORTED);
        }
        Err(_) => stat(FS_REPORT_LOST),
    }
}

#[inline(always)]
fn fin_bit(dir: usize) -> u64 {
    if dir == 0 { FLOW_FIN[0] } else { FLOW_FIN[1] }
}

#[inline(always)]
fn pending(dir: usize) -> u64 {
    if dir == 0 {
        FLOW_PENDING[0]
    } else {
        FLOW_PENDING[1]
    }
}

#[inline(always)]
fn confirmed(dir: usize) -> u64 {
    if dir == 0 {
        FLOW_CONFIRMED[0]
    } else {
        FLOW_CONFIRMED[1]
    }
}

#[inline(always)]
fn egress_slot(st: *mut FlowState, dir: usize) -> *mut u32 {
    // SAFETY: map value pointer; both fields exist.
    unsafe {
        if dir == 0 {
            &raw mut (*st).egress_ifindex[0]
        } else {
            &raw mut (*st).egress_ifindex[1]
        }
    }
}
