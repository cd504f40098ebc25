//! Neighbours: the node's permanent entries (the ones vethfp adds are set by `apply`).

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::neighbour::NeighbourState;

use super::{NetlinkError, nl_err, run};

/// Permanent neighbour entries in the node: (ifindex, address, link-layer address).
pub(super) fn permanent_neighbours() -> Result<Vec<(u32, IpAddr, Vec<u8>)>, NetlinkError> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    run(|h| async move {
        let neigh: Vec<_> = h
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing neighbours", e))?;
        Ok(neigh
            .into_iter()
            .filter(|n| n.header.state == NeighbourState::Permanent)
            .filter_map(|n| {
                let ifindex = n.header.ifindex;
                let mut ip = None;
                let mut ll = None;
                for a in n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(v6))
                        }
                        NeighbourAttribute::LinkLayerAddress(m) => ll = Some(m),
                        _ => {}
                    }
                }
                Some((ifindex, ip?, ll?))
            })
            .collect())
    })
}
