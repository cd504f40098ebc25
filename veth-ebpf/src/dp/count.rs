//! Counting: every path through every program ends in exactly one counted verdict, by the hook
//! that decided (a fast-path packet is counted on the sender and on the receiver, since the
//! receiver's hooks never see it).

use veth_common::{Dir, Verdict};

use crate::dp::maps::VFP_COUNTERS;

/// Adds one packet of `bytes` to the counters in `slot`. `dir` and `verdict` are constants at
/// almost every call site, so the indexing compiles to fixed offsets; the per-CPU array lookup
/// is inlined by the verifier (no helper call).
#[inline(always)]
pub fn count(slot: u32, dir: Dir, verdict: Verdict, bytes: u32) {
    if let Some(c) = VFP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value; programs on one CPU do not nest (softirq or BH disabled).
        unsafe {
            let pb = &mut (*c).c[dir.index()][verdict.index()];
            pb.packets += 1;
            pb.bytes += bytes as u64;
        }
    }
}
