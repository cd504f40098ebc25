//! Read-only queries of what is really configured in the kernel, for verification (CNI CHECK):
//! addresses on an interface and the programs attached to a host end.

use std::{net::IpAddr, path::Path};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, LinkType, PinnedLink},
};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;

use crate::{
    datapath::{DatapathError, PROG_L2_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS},
    sys::netlink::{NetlinkError, nl_err, run},
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

/// What the kernel reports attached to one host end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// Names of the programs on the tcx ingress hook, in order.
    pub tcx_ingress: Vec<String>,
    /// Names of the programs on the tcx egress hook, in order.
    pub tcx_egress: Vec<String>,
}

impl Attached {
    /// Both vethfp tcx programs are attached (routed or, on a bridge port, L2 ingress).
    pub fn has_fast_path(&self) -> bool {
        self.tcx_ingress
            .iter()
            .any(|n| n == PROG_TC_INGRESS || n == PROG_L2_INGRESS)
            && self.tcx_egress.iter().any(|n| n == PROG_TC_EGRESS)
    }
}

/// Programs attached to the tcx hooks of interface `iface` (in the calling thread's netns).
pub fn attached(iface: &str) -> Result<Attached, DatapathError> {
    let names = |kind: TcAttachType| -> Result<Vec<String>, DatapathError> {
        let (_, infos) =
            SchedClassifier::query_tcx(iface, kind).map_err(|source| DatapathError::Attach {
                prog: "query",
                iface: iface.into(),
                source,
            })?;
        Ok(infos
            .iter()
            .map(|i| i.name_as_str().unwrap_or("").to_string())
            .collect())
    };
    Ok(Attached {
        tcx_ingress: names(TcAttachType::Ingress)?,
        tcx_egress: names(TcAttachType::Egress)?,
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
