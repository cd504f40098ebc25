//! Repair of a live endpoint: whatever map entry, hook, node route or neighbour, or container
//! side configuration is missing is restored.

use std::net::IpAddr;

use veth_common::{EP_ADOPTED, EP_BRIDGE_PORT, EndpointRecord};

use crate::{
    sys::netlink::{self, Apply, At, NetlinkError, Netns},
    types::{Cidr, Mac},
};

use super::{
    Registry,
    desired::{self, wants_gro},
    error::{EndpointError, Result, map_err},
    record::{get_str, record_addrs},
};

/// GRO (and with it NAPI) on the container end of an `xdp` endpoint, so XDP-mode senders can
/// redirect into it; off on a `tc` endpoint's, whose frames from XDP senders go through tcx
/// (see sys/ethtool.rs for why GRO costs the kernel path). Returns whether it changed
/// anything; `dry` only compares.
pub(crate) fn container_gro(
    ns: &Netns,
    ifname: &str,
    on: bool,
    dry: bool,
) -> Result<bool, NetlinkError> {
    netlink::in_netns(ns, || {
        let io = |op: &str, e| NetlinkError::Io {
            op: format!("{op} GRO on {ifname}"),
            source: e,
        };
        if crate::sys::ethtool::gro(ifname).map_err(|e| io("reading", e))? == on {
            return Ok(false);
        }
        if !dry {
            crate::sys::ethtool::set_gro(ifname, on)
                .map_err(|e| io(if on { "enabling" } else { "disabling" }, e))?;
        }
        Ok(true)
    })
}

impl Registry {
    /// Attaches whatever link of the endpoint is missing (see [`Datapath::ensure_link`]).
    pub(super) fn ensure_links(&mut self, rec: &EndpointRecord) {
        let name = get_str(&rec.host_name);
        let ifindex = rec.target.ifindex;
        for (hook, prog) in desired::hooks(rec) {
            if let Err(e) = self.dp.ensure_link(&name, ifindex, hook, prog) {
                log::warn!("{name}: {hook} link: {e}");
            }
        }
    }

    /// Checks every map entry and node-side kernel object of a live endpoint and restores
    /// what is missing or wrong: its devmap entry, each address in `VFP_EP4`/`VFP_EP6` with
    /// the record's target (L2 entry for bridge ports), the node's /32 and /128 routes and
    /// permanent neighbours, and (pairs vethfp made) the container side
    /// ([`desired::container_side`]). Returns the parts repaired (one name per repair).
    pub(crate) fn repair_endpoint(&mut self, rec: &EndpointRecord) -> Result<Vec<&'static str>> {
        self.repair_endpoint_with(rec, None)
    }

    /// [`Registry::repair_endpoint`] with the node's routes and neighbours dumped once for a
    /// whole pass.
    pub(crate) fn repair_endpoint_with(
        &mut self,
        rec: &EndpointRecord,
        view: Option<&netlink::NodeView>,
    ) -> Result<Vec<&'static str>> {
        self.check_endpoint(rec, view, Apply::Repair)
    }

    /// The parts [`Registry::repair_endpoint`] would restore, changing nothing: what the
    /// agent looks at without the state lock before it takes the lock to repair.
    pub(crate) fn endpoint_missing(&mut self, rec: &EndpointRecord) -> Result<Vec<&'static str>> {
        self.check_endpoint(rec, None, Apply::Count)
    }

    /// [`Registry::repair_endpoint_with`] (`Apply::Repair`) or its dry run (`Apply::Count`).
    fn check_endpoint(
        &mut self,
        rec: &EndpointRecord,
        view: Option<&netlink::NodeView>,
        how: Apply,
    ) -> Result<Vec<&'static str>> {
        let write = how != Apply::Count;
        let mut parts = Vec::new();
        let ifindex = rec.target.ifindex;
        let name = get_str(&rec.host_name);
        let Some(link) = netlink::link_by_index(ifindex)? else {
            return Ok(parts);
        };
        if link.name != name {
            return Ok(parts);
        }
        if self.dp.devmap()?.get(ifindex, 0).is_err() {
            if write {
                self.dp
                    .devmap()?
                    .insert(ifindex, ifindex, None, 0)
                    .map_err(|e| EndpointError::Devmap(e.to_string()))?;
            }
            parts.push("devmap");
        }
        if rec.flags & EP_BRIDGE_PORT != 0 {
            let l2 = self.dp.l2()?.get(&rec.target.container_mac, 0).ok();
            if l2 != Some(rec.target) {
                if write {
                    self.dp
                        .l2()?
                        .insert(rec.target.container_mac, rec.target, 0)
                        .map_err(map_err("VFP_L2"))?;
                }
                parts.push("l2");
            }
            return Ok(parts);
        }
        let records = self.records()?;
        let addrs: Vec<Cidr> = record_addrs(rec).collect();
        for a in &addrs {
            let current = match a.addr {
                IpAddr::V4(v4) => self.dp.ep4()?.get(&v4.octets(), 0).ok(),
                IpAddr::V6(v6) => self.dp.ep6()?.get(&v6.octets(), 0).ok(),
            };
            if current == Some(rec.target) {
                continue;
            }
            if let Some(t) = current
                && t.ifindex != ifindex
                && records.iter().any(|r| r.target.ifindex == t.ifindex)
            {
                log::warn!(
                    "{name}: address {} is published for ifindex {} (another endpoint): left alone",
                    a.addr,
                    t.ifindex
                );
                continue;
            }
            if write {
                self.publish(a.addr, rec.target)?;
            }
            parts.push(if a.is_v4() { "addr_v4" } else { "addr_v6" });
        }
        if rec.flags & EP_ADOPTED == 0 {
            let node = desired::node_side(&addrs, Mac(rec.target.container_mac));
            let r = netlink::apply(At::Node(ifindex), &node, how, view)?;
            parts.extend(std::iter::repeat_n("route", r.routes));
            parts.extend(std::iter::repeat_n("neighbour", r.neighbours));
            if let Some(mac) = link.mac {
                let n = self.container_side(rec, &addrs, mac, how)?;
                parts.extend(std::iter::repeat_n("container", n));
            }
        }
        Ok(parts)
    }

    /// The container side of an endpoint vethfp made: restores (`Apply::Repair`) or counts
    /// (`Apply::Count`) what is missing of its container end's addresses, gateway neighbours
    /// and routes ([`desired::container_side`]) and GRO. Skipped when the namespace is gone
    /// or is not the one the endpoint was made in (its inode differs).
    fn container_side(
        &mut self,
        rec: &EndpointRecord,
        addrs: &[Cidr],
        host_mac: Mac,
        how: Apply,
    ) -> Result<usize> {
        let spec = get_str(&rec.netns);
        let Ok(ns) = Netns::open(&spec) else {
            return Ok(0);
        };
        if ns.ino() != rec.netns_ino {
            return Ok(0);
        }
        let peer = get_str(&rec.peer_name);
        let container = desired::container_side(addrs, host_mac);
        let mut n = netlink::apply(At::Container(&ns, &peer), &container, how, None)?.total();
        // A state made before GRO followed the mode has it on for every container end.
        match container_gro(&ns, &peer, wants_gro(rec), how == Apply::Count) {
            Ok(changed) => n += usize::from(changed),
            Err(e) => log::debug!("{peer}: GRO left as it is: {e}"),
        }
        Ok(n)
    }
}
