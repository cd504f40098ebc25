//! Routes: vethfp's protocol stamp, the main table's unicast routes, and the node view
//! (routes and permanent neighbours dumped once per reconciliation pass).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType},
};
use rtnetlink::RouteMessageBuilder;

use super::{NetlinkError, RTPROT_VETHFP, neigh::permanent_neighbours, nl_err, run};

pub(super) fn vethfp_route<T>(b: RouteMessageBuilder<T>) -> RouteMessageBuilder<T> {
    b.protocol(RouteProtocol::Other(RTPROT_VETHFP))
}

/// Unicast routes of the main table in the current netns whose output device is `ifindex`,
/// as (destination, prefix length); a default route shows as (0.0.0.0 or ::, 0). Includes
/// routes the kernel adds itself (e.g. fe80::/64 on an up interface).
pub fn routes_via(ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    Ok(main_routes()?
        .into_iter()
        .filter(|(oif, _, _)| *oif == ifindex)
        .map(|(_, dst, len)| (dst, len))
        .collect())
}

/// Unicast routes of the main table in the node: (output ifindex, destination, prefix length).
fn main_routes() -> Result<Vec<(u32, IpAddr, u8)>, NetlinkError> {
    run(|h| async move {
        let all: Vec<RouteMessage> = h
            .route()
            .get(RouteMessageBuilder::<IpAddr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("listing routes", e))?;
        let mut out = Vec::new();
        for r in all {
            let family = r.header.address_family;
            if !matches!(family, AddressFamily::Inet | AddressFamily::Inet6)
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let mut oif = None;
            let mut dst = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some((*v4).into()),
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                        dst = Some((*v6).into())
                    }
                    _ => {}
                }
            }
            let Some(oif) = oif else { continue };
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let dst = dst.unwrap_or(if family == AddressFamily::Inet {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            });
            out.push((oif, dst, r.header.destination_prefix_length));
        }
        Ok(out)
    })
}

/// The node's main-table routes and permanent neighbours, dumped once for a whole
/// reconciliation pass (one dump per endpoint would be quadratic in the endpoint count).
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// Indexed: (oif, destination, prefix length) and (ifindex, address) → lladdr.
    pub(super) route_set: std::collections::HashSet<(u32, IpAddr, u8)>,
    pub(super) neigh_map: std::collections::HashMap<(u32, IpAddr), Vec<u8>>,
}

impl NodeView {
    pub fn dump() -> Result<NodeView, NetlinkError> {
        Ok(NodeView {
            route_set: main_routes()?.into_iter().collect(),
            neigh_map: permanent_neighbours()?
                .into_iter()
                .map(|(i, ip, ll)| ((i, ip), ll))
                .collect(),
        })
    }
}
