//! The endpoint record (`VFP_ENDPOINTS`) and its conversions: building one from a request,
//! reading names, addresses and the view back; the snapshot-cached reads of the map.

use std::net::IpAddr;

use veth_common::{AF_V4, AF_V6, EndpointAddr, EndpointRecord, MAX_ADDRS, NAME_LEN, Target};

use crate::{
    sys::netlink::{self},
    types::{Cidr, Mode, Spoof},
};

use super::{
    Registry,
    error::{EndpointError, RequestError, Result, map_err},
};

/// The ABI value of a mode a request may ask for.
pub(super) fn mode_raw(mode: Mode) -> Result<u32> {
    mode.to_abi()
        .map(veth_common::Mode::as_u32)
        .ok_or(EndpointError::Request(RequestError::BridgeMode))
}

pub(super) fn spoof_flags(s: Spoof) -> u32 {
    s.to_abi().flags()
}

pub(super) fn set_network(rec: &mut EndpointRecord, name: &str) {
    rec.target.network = network_id(name);
    put_str(&mut rec.network_name, network_name(name));
}

pub(super) fn network_name(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

/// The id of a network: 0 for "default", else FNV-1a of the name (never 0). Stable across
/// processes and versions, so no table of names is needed to compare networks in the datapath.
pub fn network_id(name: &str) -> u32 {
    let name = network_name(name);
    if name == "default" {
        return 0;
    }
    crate::types::fnv1a32(name.bytes()).max(1)
}

pub(super) fn make_record(
    target: Target,
    netns_ino: u64,
    host: &str,
    peer: &str,
    netns: &str,
    addrs: &[Cidr],
    flags: u32,
) -> EndpointRecord {
    let mut rec = EndpointRecord {
        netns_ino,
        target,
        naddrs: addrs.len() as u32,
        flags,
        ..Default::default()
    };
    put_str(&mut rec.host_name[..NAME_LEN], host);
    put_str(&mut rec.peer_name[..NAME_LEN], peer);
    put_str(&mut rec.netns, netns);
    for (slot, a) in rec.addrs.iter_mut().zip(addrs) {
        slot.prefix = a.prefix;
        match a.addr {
            IpAddr::V4(v4) => {
                slot.family = AF_V4;
                slot.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                slot.family = AF_V6;
                slot.addr = v6.octets();
            }
        }
    }
    rec
}

pub(super) fn name_key(name: &str) -> [u8; NAME_LEN] {
    let mut k = [0; NAME_LEN];
    put_str(&mut k, name);
    k
}

pub(super) fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub(crate) fn get_str(src: &[u8]) -> String {
    let n = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..n]).into_owned()
}

/// The addresses an endpoint record holds.
pub(crate) fn record_addrs(rec: &EndpointRecord) -> impl Iterator<Item = Cidr> + '_ {
    rec.addrs[..(rec.naddrs as usize).min(MAX_ADDRS)]
        .iter()
        .filter_map(cidr_of)
}

pub(super) fn cidr_of(a: &EndpointAddr) -> Option<Cidr> {
    let addr = match a.family {
        AF_V4 => IpAddr::from([a.addr[0], a.addr[1], a.addr[2], a.addr[3]]),
        AF_V6 => IpAddr::from(a.addr),
        _ => return None,
    };
    Some(Cidr {
        addr,
        prefix: a.prefix,
    })
}

impl Registry {
    /// The record of host ifindex `ifindex`, if any.
    pub(crate) fn record_by_ifindex(&mut self, ifindex: u32) -> Result<Option<EndpointRecord>> {
        match self.endpoint_map()?.get(&ifindex, 0) {
            Ok(r) => Ok(Some(r)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("VFP_ENDPOINTS")(e)),
        }
    }

    /// The CNI (container ID, ifname) recorded for host ifindex `ifindex`.
    pub(crate) fn cni_owner(&mut self, ifindex: u32) -> Result<Option<(String, String)>> {
        match self.dp.cni_owners()?.get(&ifindex, 0) {
            Ok(o) => Ok(Some((get_str(&o.container_id), get_str(&o.ifname)))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("VFP_CNI_OWNERS")(e)),
        }
    }

    pub(super) fn records(&mut self) -> Result<Vec<EndpointRecord>> {
        // Only a locked writer may trust a snapshot: nobody else changes the map meanwhile.
        if self.lock.is_some()
            && let Some(s) = &self.snapshot
        {
            return Ok(s.clone());
        }
        let map = self.dp.endpoints()?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (_, rec) = item.map_err(map_err("VFP_ENDPOINTS"))?;
            out.push(rec);
        }
        out.sort_by_key(|r| r.host_name);
        if self.lock.is_some() {
            self.snapshot = Some(out.clone());
        }
        Ok(out)
    }

    /// `VFP_ENDPOINTS` for a change (or a single lookup): drops the records snapshot.
    pub(super) fn endpoint_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, EndpointRecord>> {
        self.snapshot = None;
        Ok(self.dp.endpoints()?)
    }

    pub(super) fn record_by_name(&mut self, name: &str) -> Result<Option<EndpointRecord>> {
        // Usually the link of that name is the endpoint: one netlink lookup and one map
        // lookup instead of a walk of the whole endpoint map (2 syscalls per endpoint: 2 ms
        // at 1000 endpoints). Anything else (link gone, renamed, someone else's) walks.
        if self.snapshot.is_none()
            && let Ok(Some(link)) = netlink::link_by_name(name)
            && let Ok(rec) = self.dp.endpoints()?.get(&link.ifindex, 0)
            && get_str(&rec.host_name) == name
        {
            return Ok(Some(rec));
        }
        Ok(self
            .records()?
            .into_iter()
            .find(|r| get_str(&r.host_name) == name))
    }

    pub(super) fn owner_of(&mut self, addr: IpAddr) -> Result<Option<u32>> {
        let found = match addr {
            IpAddr::V4(a) => self.dp.ep4()?.get(&a.octets(), 0),
            IpAddr::V6(a) => self.dp.ep6()?.get(&a.octets(), 0),
        };
        match found {
            Ok(t) => Ok(Some(t.ifindex)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(EndpointError::Map {
                what: "endpoint address",
                source: e,
            }),
        }
    }
}
