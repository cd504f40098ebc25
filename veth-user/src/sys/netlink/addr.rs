//! Addresses: what an interface carries (the ones vethfp adds are set by `apply`).

use std::{net::IpAddr, pin::pin};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

use super::{NetlinkError, nl_err, run};
use crate::types::Cidr;

/// Every address (with prefix) on `ifindex` in the handle's netns.
pub(super) async fn link_addrs(
    h: &Handle,
    ifindex: u32,
    what: &str,
) -> Result<Vec<Cidr>, NetlinkError> {
    let mut out = Vec::new();
    let mut s = pin!(h.address().get().set_link_index_filter(ifindex).execute());
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| nl_err(format!("listing addresses of {what}"), e))?
    {
        if m.header.index != ifindex {
            continue;
        }
        for a in m.attributes {
            if let AddressAttribute::Address(addr) = a {
                out.push(Cidr {
                    addr,
                    prefix: m.header.prefix_len,
                });
            }
        }
    }
    Ok(out)
}

/// Addresses (with prefix) on `ifindex` in the current netns, link-local excluded.
pub fn addresses(ifindex: u32) -> Result<Vec<Cidr>, NetlinkError> {
    run(|h| async move {
        let mut out = link_addrs(&h, ifindex, &format!("ifindex {ifindex}")).await?;
        out.retain(|c| match c.addr {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        });
        Ok(out)
    })
}
