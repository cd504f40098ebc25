//! Read-only queries of what is really configured in the kernel, for verification (CNI CHECK):
//! addresses on an interface and the filters attached to a host end.

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use aya::programs::links::{FdLink, LinkType, PinnedLink};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;

use crate::{
    datapath::{
        Datapath, DatapathError, Program,
        filters::{FILTER_HANDLE, FILTER_PRIO},
    },
    sys::{
        netlink::{NetlinkError, nl_err, run},
        tc_filter::{BpfFilter, Dir},
    },
};

/// Addresses (address, prefix length) on `ifindex` in the calling thread's network namespace,
/// including link-local ones the kernel adds.
pub fn addresses(ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    run(|h| async move {
        let msgs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("listing addresses of interface index {ifindex}"), e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == ifindex)
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
                // otherwise. Prefer LOCAL when present.
                let mut addr = None;
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(ip) => addr = Some(*ip),
                        AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                        _ => {}
                    }
                }
                addr.map(|a| (a, prefix))
            })
            .collect())
    })
}

/// What the kernel reports attached to one host end: its cls_bpf filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// The cls_bpf filters on clsact ingress, in the kernel's order.
    pub ingress: Vec<BpfFilter>,
    /// The cls_bpf filters on clsact egress.
    pub egress: Vec<BpfFilter>,
    /// Ids of the programs pinned in this state (the ones whose filters are ours).
    pub owned: BTreeSet<u32>,
}

impl Attached {
    /// Both vethfp filters are in place, direct-action, running programs of this state under
    /// the expected names (routed or, on a bridge port, L2 ingress).
    pub fn has_fast_path(&self) -> bool {
        // The kernel reports a filter's program by name: parsed into the ABI's Program.
        let ok = |fs: &[BpfFilter], progs: &[Program]| {
            fs.iter().any(|f| {
                f.prio == FILTER_PRIO
                    && f.handle == FILTER_HANDLE
                    && f.direct_action
                    && self.owned.contains(&f.prog_id)
                    && Program::from_name(&f.name).is_some_and(|p| progs.contains(&p))
            })
        };
        ok(&self.ingress, &[Program::TcIngress, Program::L2Ingress])
            && ok(&self.egress, &[Program::TcEgress])
    }

    /// "name#prog_id@prio" of each filter on `dir`, for messages.
    pub fn describe(fs: &[BpfFilter]) -> Vec<String> {
        fs.iter()
            .map(|f| format!("{}#{}@{:#x}", f.name, f.prog_id, f.prio))
            .collect()
    }
}

/// The filters on host end `ifindex` (in the calling thread's netns), asked from the kernel.
pub fn attached(dp: &Datapath, ifindex: u32) -> Result<Attached, DatapathError> {
    Ok(Attached {
        ingress: dp.filters(ifindex, Dir::Ingress)?,
        egress: dp.filters(ifindex, Dir::Egress)?,
        owned: dp.owned_program_ids()?,
    })
}

/// True if `pin` is a pinned XDP link (the XDP fast path of an endpoint in xdp mode).
pub fn is_xdp_link(pin: &Path) -> bool {
    PinnedLink::from_pin(pin)
        .map(FdLink::from)
        .ok()
        .and_then(|l| l.info().ok())
        .and_then(|i| i.link_type().ok())
        == Some(LinkType::Xdp)
}
