//! Endpoint operations: add (kernel part unlocked, map part locked, rollback of everything
//! made when a step fails), adopt, del, set_mode.

use std::net::IpAddr;

use veth_common::{
    CONTAINER_ID_LEN, CniOwner, EP_ADOPTED, EP_BRIDGE_PORT, EP_SPOOF_AUDIT, EP_SPOOF_ENFORCE,
    EndpointRecord, INTENT_ADD, INTENT_DEL, MAX_ADDRS, MAX_SLOTS, MODE_XDP, NAME_LEN, NETNS_LEN,
    Target,
};

use crate::{
    sys::netlink::{self, Apply, At, NetlinkError, Netns, VethRequest},
    types::{Cidr, Mac, Mode},
};

use super::{
    Registry, desired,
    error::{EndpointError, OwnershipError, RequestError, Result, map_err},
    record::{get_str, make_record, mode_raw, put_str, record_addrs, set_network, spoof_flags},
    repair::container_gro,
    view::{AddRequest, AdoptRequest, EndpointView},
};

pub(super) fn set_container_tx_csum(
    ns: &Netns,
    ifname: &str,
    on: bool,
) -> Result<(), NetlinkError> {
    netlink::in_netns(ns, || {
        crate::sys::ethtool::set_tx_csum(ifname, on).map_err(|e| NetlinkError::Io {
            op: format!(
                "turning TX checksum offload {} on {ifname}",
                if on { "on" } else { "off" }
            ),
            source: e,
        })
    })
}

/// What the kernel part of `add` made.
pub(super) struct Made {
    host_ifindex: u32,
    container_mac: Mac,
    mtu: u32,
}

/// Something `add` created, undone in reverse order if a later step fails.
pub(super) enum Undo {
    Link(u32),
    Record(u32),
    Links(u32),
    Addr(IpAddr),
    Devmap(u32),
    Uplink(u32),
    UplinkLink(u32),
    L2([u8; 6]),
    CniOwner(u32),
}

impl Registry {
    pub(super) fn set_cni_owner(
        &mut self,
        ifindex: u32,
        owner: &Option<(String, String)>,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let Some((id, ifname)) = owner else {
            return Ok(());
        };
        let mut o = CniOwner::default();
        put_str(&mut o.container_id[..CONTAINER_ID_LEN], id);
        put_str(&mut o.ifname, ifname);
        self.dp
            .cni_owners()?
            .insert(ifindex, o, 0)
            .map_err(map_err("VFP_CNI_OWNERS"))?;
        undo.push(Undo::CniOwner(ifindex));
        Ok(())
    }

    pub(super) fn validate(&mut self, req: &AddRequest) -> Result<()> {
        if let Some(m) = req.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(RequestError::Mtu(m).into());
        }
        if req.netns.len() >= NETNS_LEN {
            return Err(RequestError::NetnsTooLong(req.netns.clone()).into());
        }
        self.check_addrs(&req.addrs)?;
        // Leftovers of interrupted operations were completed or rolled back when the
        // registry was opened (the journal): whatever has this name now is not ours.
        if netlink::link_by_name(req.host.as_str())?.is_some() {
            return Err(RequestError::HostExists(req.host.to_string()).into());
        }
        Ok(())
    }

    /// Why `link` (no record, no intent of this state) is not ours, for the refusal.
    pub(super) fn not_ours(&self, link: &netlink::Link) -> EndpointError {
        let marked = link.alias.as_deref() == Some(netlink::OWNER_ALIAS)
            || link.mac.is_some_and(|m| m.is_owned());
        let why = if marked {
            format!(
                "it looks like a vethfp host end (MAC {}) but no record or intent of this state \
                 names it with that MAC: another state directory or someone else owns it",
                link.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into())
            )
        } else {
            format!(
                "this state has no record or intent for it (kind {}, MAC {})",
                link.kind.as_deref().unwrap_or("unknown"),
                link.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into())
            )
        };
        OwnershipError::NotOurs {
            name: link.name.clone(),
            dir: self.dp.dir().display().to_string(),
            why,
        }
        .into()
    }

    pub(super) fn remove_leftover(&mut self, link: &netlink::Link) -> Result<()> {
        self.dp.detach_with_veth(link.ifindex)?; // its filters go with the veth
        let _ = self.dp.devmap()?.remove(link.ifindex);
        netlink::delete_link(link.ifindex)?;
        Ok(())
    }

    pub(super) fn check_addrs(&mut self, addrs: &[Cidr]) -> Result<()> {
        if addrs.is_empty() {
            return Err(RequestError::NoAddr.into());
        }
        if addrs.len() > MAX_ADDRS {
            return Err(RequestError::TooManyAddrs(addrs.len()).into());
        }
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].iter().any(|b| b.addr == a.addr) {
                return Err(RequestError::DuplicateAddr(a.addr).into());
            }
        }
        let records = self.records()?;
        for a in addrs {
            if let Some(owner) = self.owner_of(a.addr)?
                && !records.iter().any(|r| r.target.ifindex == owner)
            {
                // Published by an endpoint that no longer exists (interrupted del): stale.
                self.unpublish(a.addr)?;
            }
            if let Some(owner) = self.owner_of(a.addr)? {
                let owner = self
                    .records()?
                    .into_iter()
                    .find(|r| r.target.ifindex == owner)
                    .map(|r| get_str(&r.host_name))
                    .unwrap_or_else(|| format!("ifindex {owner}"));
                return Err(RequestError::AddrInUse {
                    addr: a.addr,
                    owner,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Creates the pair, configures routed mode on both sides, registers the endpoint and
    /// attaches the fast path. All or nothing.
    pub fn add(&mut self, req: &AddRequest) -> Result<EndpointView> {
        self.validate(req)?;
        let ns = Netns::open(&req.netns)?;
        if ns.ino() == netlink::current_netns_ino()? {
            return Err(OwnershipError::NodeNetns(req.netns.clone()).into());
        }
        // Record before create: the exact MAC is chosen now and journaled with the name, so
        // whoever finds this half-made (a later call, the agent) knows the link is ours.
        let host_mac = Mac::random_owned();
        let name = req.host.as_str();
        self.intend(INTENT_ADD, name, host_mac, 0, ns.ino())?;
        let mut undo = Vec::new();
        // The kernel work runs unlocked (concurrent ADDs overlap it); the map updates that
        // make the endpoint visible are done under the lock again.
        let made = self
            .unlocked(|me| me.add_kernel(req, &ns, host_mac, &mut undo))
            .and_then(|r| r);
        let r = made.and_then(|k| self.add_register(req, &ns, host_mac, k, &mut undo));
        if r.is_err() {
            self.rollback(undo);
            // A rollback that could not delete the link keeps the intent: the next write
            // (or the agent) retries, and still knows the link is ours.
            if netlink::link_by_name(name)
                .ok()
                .flatten()
                .is_some_and(|l| l.mac == Some(host_mac))
            {
                return r;
            }
        }
        self.done(name);
        r
    }

    /// The kernel part of `add`: the pair, the container's and the node's configuration.
    pub(super) fn add_kernel(
        &mut self,
        req: &AddRequest,
        ns: &Netns,
        host_mac: Mac,
        undo: &mut Vec<Undo>,
    ) -> Result<Made> {
        let container_mac = req.mac.unwrap_or_else(Mac::random);
        let host_ifindex = netlink::create_veth(&VethRequest {
            host_name: req.host.as_str(),
            host_mac,
            peer_name: req.ifname.as_str(),
            peer_mac: container_mac,
            peer_netns: ns,
            mtu: req.mtu,
        })?;
        undo.push(Undo::Link(host_ifindex));
        let container = At::Container(ns, req.ifname.as_str());
        netlink::apply(
            container,
            &desired::container_side(&req.addrs, host_mac),
            Apply::Create,
            None,
        )?;
        // A new veth end has GRO off; only an XDP endpoint's needs it on.
        if req.mode == Mode::Xdp {
            container_gro(ns, req.ifname.as_str(), true, false)?;
            set_container_tx_csum(ns, req.ifname.as_str(), false)?;
        }
        let node = desired::node_side(&req.addrs, container_mac);
        netlink::apply(At::Node(host_ifindex), &node, Apply::Create, None)?;
        let mtu = match req.mtu {
            Some(m) => m,
            None => netlink::link_by_index(host_ifindex)?
                .map(|l| l.mtu)
                .unwrap_or(1500),
        };
        Ok(Made {
            host_ifindex,
            container_mac,
            mtu,
        })
    }

    /// The map part of `add` (under the lock): record, counters, links, devmap, addresses.
    pub(super) fn add_register(
        &mut self,
        req: &AddRequest,
        ns: &Netns,
        host_mac: Mac,
        made: Made,
        undo: &mut Vec<Undo>,
    ) -> Result<EndpointView> {
        let Made {
            host_ifindex,
            container_mac,
            mtu,
        } = made;
        // Another operation may have published one of these addresses meanwhile.
        self.check_addrs(&req.addrs)?;
        let target = Target {
            ifindex: host_ifindex,
            mtu,
            network: 0, // set_network
            mode: mode_raw(req.mode)?,
            slot: 0, // assigned by register
            container_mac: container_mac.0,
            host_mac: host_mac.0,
        };
        let mut rec = make_record(
            target,
            ns.ino(),
            req.host.as_str(),
            req.ifname.as_str(),
            &req.netns,
            &req.addrs,
            req.record_flags(),
        );
        set_network(&mut rec, &req.network);
        self.set_cni_owner(host_ifindex, &req.cni_owner, undo)?;
        self.register(&mut rec, &req.addrs, undo)?;
        Ok(EndpointView::from_record(&rec))
    }

    /// Registers an endpoint whose veth exists already: counters, record, links, devmap and,
    /// last, its addresses in the fast path.
    pub(super) fn register(
        &mut self,
        rec: &mut EndpointRecord,
        addrs: &[Cidr],
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let host_ifindex = rec.target.ifindex;
        let host = get_str(&rec.host_name);
        // Zeroed counters exist before any program can see a packet of this endpoint.
        rec.target.slot = self.free_slot()?;
        self.dp.reset_counters(rec.target.slot)?;
        let target = rec.target;
        self.endpoint_map()?
            .insert(host_ifindex, *rec, 0)
            .map_err(map_err("VFP_ENDPOINTS"))?;
        undo.push(Undo::Record(host_ifindex));
        undo.push(Undo::Links(host_ifindex));
        let bridge_port = rec.flags & EP_BRIDGE_PORT != 0;
        self.dp.attach_tc(&host, host_ifindex, bridge_port)?;
        self.dp
            .devmap()?
            .insert(host_ifindex, host_ifindex, None, 0)
            .map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(source) => EndpointError::Map {
                    what: "VFP_DEVMAP",
                    source,
                },
                other => EndpointError::Devmap(other.to_string()),
            })?;
        undo.push(Undo::Devmap(host_ifindex));
        if target.mode == MODE_XDP {
            self.dp.attach_xdp(&host, host_ifindex)?;
        }
        // Publish last: from here on other endpoints redirect into this one. Bridge ports are
        // reached by MAC (L2), never by address: the bridge's semantics stay intact.
        if bridge_port {
            self.dp
                .l2()?
                .insert(target.container_mac, target, 0)
                .map_err(map_err("VFP_L2"))?;
            undo.push(Undo::L2(target.container_mac));
            return Ok(());
        }
        for a in addrs {
            self.publish(a.addr, target)?;
            undo.push(Undo::Addr(a.addr));
        }
        Ok(())
    }

    /// Publishes `addr` → `target` in the fast path's address maps.
    pub(super) fn publish(&mut self, addr: IpAddr, target: Target) -> Result<()> {
        match addr {
            IpAddr::V4(v4) => self.dp.ep4()?.insert(v4.octets(), target, 0),
            IpAddr::V6(v6) => self.dp.ep6()?.insert(v6.octets(), target, 0),
        }
        .map_err(map_err("VFP_EP4/6"))
    }

    /// Removes `addr` from the fast path's address maps.
    pub(super) fn unpublish(&mut self, addr: IpAddr) -> Result<()> {
        match addr {
            IpAddr::V4(v4) => self.dp.ep4()?.remove(&v4.octets()),
            IpAddr::V6(v6) => self.dp.ep6()?.remove(&v6.octets()),
        }
        .map_err(map_err("VFP_EP4/6"))
    }

    /// The lowest counter slot no endpoint or uplink uses.
    pub(super) fn free_slot(&mut self) -> Result<u32> {
        let mut used: Vec<u32> = self.records()?.iter().map(|r| r.target.slot).collect();
        used.extend(self.uplink_records()?.iter().map(|u| u.slot));
        used.sort_unstable();
        let mut slot = 0;
        for u in used {
            if u == slot {
                slot += 1;
            } else if u > slot {
                break;
            }
        }
        if slot as usize >= MAX_SLOTS {
            return Err(EndpointError::Full(MAX_SLOTS));
        }
        Ok(slot)
    }

    /// Registers an existing veth pair made by someone else (a chained CNI plugin, a bridge)
    /// and attaches the fast path to its host end. Routes and addresses are left as they are;
    /// `del` later detaches and unregisters but does not delete the link.
    pub fn adopt(&mut self, req: &AdoptRequest) -> Result<EndpointView> {
        self.check_addrs(&req.addrs)?;
        if req.netns.len() >= NETNS_LEN {
            return Err(RequestError::NetnsTooLong(req.netns.clone()).into());
        }
        if self.record_by_name(req.host.as_str())?.is_some() {
            return Err(RequestError::HostExists(req.host.to_string()).into());
        }
        let link = netlink::link_by_name(req.host.as_str())?
            .ok_or_else(|| EndpointError::NotFound(req.host.to_string()))?;
        if link.kind.as_deref() != Some("veth") {
            return Err(RequestError::NotVeth(req.host.to_string()).into());
        }
        let host_mac = link
            .mac
            .ok_or_else(|| RequestError::NotVeth(req.host.to_string()))?;
        let ns = Netns::open(&req.netns)?;
        let target = Target {
            ifindex: link.ifindex,
            mtu: link.mtu,
            network: 0, // set_network
            mode: veth_common::MODE_TC,
            slot: 0, // assigned by register
            container_mac: req.container_mac.0,
            host_mac: host_mac.0,
        };
        let mut rec = make_record(
            target,
            ns.ino(),
            req.host.as_str(),
            req.ifname.as_str(),
            &req.netns,
            &req.addrs,
            EP_ADOPTED | req.flags | spoof_flags(req.spoof),
        );
        set_network(&mut rec, &req.network);
        // A port of a Linux bridge (CNI `bridge` plugin before us): L2 semantics, like
        // `bridge accelerate`; the routed program would only ever pass its traffic on.
        if let Some(master) = link.master
            && let Some(br) = netlink::link_by_index(master)?
            && br.kind.as_deref() == Some("bridge")
        {
            rec.flags |= EP_BRIDGE_PORT;
            rec.flags &= !(EP_SPOOF_ENFORCE | EP_SPOOF_AUDIT);
            rec.target.network = br.ifindex;
            rec.network_name = [0; NAME_LEN];
            put_str(&mut rec.network_name, &br.name);
        }
        let mut undo = Vec::new();
        let r = self
            .set_cni_owner(link.ifindex, &req.cni_owner, &mut undo)
            .and_then(|()| self.register(&mut rec, &req.addrs, &mut undo));
        match r {
            Ok(()) => Ok(EndpointView::from_record(&rec)),
            Err(e) => {
                self.rollback(undo);
                Err(e)
            }
        }
    }

    pub(super) fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let r: Result<()> = (|| {
                match u {
                    Undo::Addr(a) => {
                        let _ = self.unpublish(a);
                    }
                    Undo::Links(i) => {
                        self.dp.detach(i)?;
                    }
                    Undo::Record(i) => {
                        let _ = self.endpoint_map()?.remove(&i);
                    }
                    Undo::L2(mac) => {
                        let _ = self.dp.l2()?.remove(&mac);
                    }
                    Undo::Uplink(i) => {
                        let _ = self.dp.uplinks()?.remove(&i);
                    }
                    Undo::UplinkLink(i) => {
                        self.dp.detach_uplink(i)?;
                    }
                    Undo::Devmap(i) => {
                        let _ = self.dp.devmap()?.remove(i);
                    }
                    Undo::Link(i) => {
                        netlink::delete_link(i)?;
                    }
                    Undo::CniOwner(i) => {
                        let _ = self.dp.cni_owners()?.remove(&i);
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                log::warn!("rollback step failed: {e}");
            }
        }
    }

    /// Removes the endpoint: its addresses from the fast path first, then links, the pair
    /// (which takes its routes and neighbour entries with it), and its map entries.
    /// Works also when the interface was already deleted by someone else.
    pub fn del(&mut self, name: &str) -> Result<()> {
        let Some(rec) = self.record_by_name(name)? else {
            // Interrupted operations were completed or rolled back when the registry was
            // opened; a link of this name without record is someone else's.
            if let Some(link) = netlink::link_by_name(name)? {
                return Err(self.not_ours(&link));
            }
            return Err(EndpointError::NotFound(name.into()));
        };
        self.intend(
            INTENT_DEL,
            name,
            Mac(rec.target.host_mac),
            rec.target.ifindex,
            rec.netns_ino,
        )?;
        // The veth delete (~20 ms, an RCU grace period) runs without the state lock.
        self.remove_record_with(&rec, true)?;
        self.done(name);
        Ok(())
    }

    /// Removes the endpoint registered under host ifindex `ifindex` (the agent does this when
    /// the interface vanished). Returns its host interface name; None if there is none.
    pub fn remove_by_ifindex(&mut self, ifindex: u32) -> Result<Option<String>> {
        let rec = match self.endpoint_map()?.get(&ifindex, 0) {
            Ok(rec) => rec,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err("VFP_ENDPOINTS")(e)),
        };
        self.remove_record(&rec)?;
        Ok(Some(get_str(&rec.host_name)))
    }

    pub(super) fn remove_record(&mut self, rec: &EndpointRecord) -> Result<()> {
        self.remove_record_with(rec, false)
    }

    /// Removes the endpoint: addresses out of the fast path first, hooks, the pair, its flows
    /// (with `unlock`: the pair and the flows without holding the state lock; the record, and
    /// with it the counter slot and the ifindex, stays reserved until the pair is gone), then
    /// its records.
    pub(super) fn remove_record_with(&mut self, rec: &EndpointRecord, unlock: bool) -> Result<()> {
        let name = get_str(&rec.host_name);
        let ifindex = rec.target.ifindex;
        let adopted = rec.flags & EP_ADOPTED != 0;
        self.unpublish_endpoint(rec)?;
        if adopted {
            self.dp.detach(ifindex)?;
        } else {
            self.dp.detach_with_veth(ifindex)?; // the veth delete below takes the filters
        }
        let host_mac = rec.target.host_mac;
        let addrs: Vec<IpAddr> = record_addrs(rec).map(|a| a.addr).collect();
        let kernel = |reg: &mut Self| -> Result<()> {
            // Only the link this record describes: same ifindex, name and host MAC.
            if !adopted
                && let Some(link) = netlink::link_by_index(ifindex)?
                && link.name == name
                && link.mac.is_some_and(|m| m.0 == host_mac)
            {
                netlink::delete_link(ifindex)?;
            }
            // Its flows go too, once no packet of the pair can make new ones: a later
            // endpoint with one of these addresses starts unadmitted. A walk of the whole
            // flow table (65536 entries by default), so never under the lock. Removing a
            // flow is always safe: the kernel admits it again.
            if let Err(e) = crate::registry::flows::forget(&mut reg.dp, &addrs) {
                log::warn!("removing the flows of {name}: {e}");
            }
            Ok(())
        };
        if unlock {
            self.unlocked(kernel)??;
            // Locked again: whatever republished a part meanwhile (an older agent) goes too.
            self.unpublish_endpoint(rec)?;
        } else {
            kernel(self)?;
        }
        let _ = self.dp.cni_owners()?.remove(&ifindex);
        let _ = self.endpoint_map()?.remove(&ifindex);
        Ok(())
    }

    /// Takes the endpoint out of the fast path: its addresses (those it still owns), its L2
    /// entry (bridge ports), its devmap entry. Idempotent.
    pub(super) fn unpublish_endpoint(&mut self, rec: &EndpointRecord) -> Result<()> {
        let ifindex = rec.target.ifindex;
        for a in record_addrs(rec) {
            if self.owner_of(a.addr)? == Some(ifindex) {
                self.unpublish(a.addr)?;
            }
        }
        if rec.flags & EP_BRIDGE_PORT != 0
            && let Ok(t) = self.dp.l2()?.get(&rec.target.container_mac, 0)
            && t.ifindex == ifindex
        {
            let _ = self.dp.l2()?.remove(&rec.target.container_mac);
        }
        let _ = self.dp.devmap()?.remove(ifindex);
        Ok(())
    }

    /// Switches a live endpoint between TC and XDP mode. Established connections survive:
    /// only a program is attached or detached; the tcx programs stay in both modes.
    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<EndpointView> {
        let mode = mode_raw(mode)?;
        let mut rec = self
            .record_by_name(name)?
            .ok_or_else(|| EndpointError::NotFound(name.into()))?;
        let ifindex = rec.target.ifindex;
        // Checksums computed by the container's stack before XDP may redirect its frames, and
        // offloaded again only once XDP no longer sees them (see ethtool::set_tx_csum).
        let ns = Netns::open(&get_str(&rec.netns))?;
        let peer = get_str(&rec.peer_name);
        let owned = rec.flags & EP_ADOPTED == 0;
        if mode == MODE_XDP {
            // NAPI on the container end before any XDP sender learns (from the published
            // target) that it may redirect into it.
            container_gro(&ns, &peer, true, false)?;
            set_container_tx_csum(&ns, &peer, false)?;
            self.dp.attach_xdp(name, ifindex)?;
            rec.target.mode = mode;
            self.publish_record(&rec)?;
        } else {
            // XDP senders stop redirecting into it first; the XDP detach then waits for an
            // RCU grace period, after which no redirect chosen under the old target is in
            // flight, and GRO can go (on ends vethfp made; an adopted end keeps its owner's).
            rec.target.mode = mode;
            self.publish_record(&rec)?;
            self.dp.detach_xdp(ifindex)?;
            set_container_tx_csum(&ns, &peer, true)?;
            if owned {
                container_gro(&ns, &peer, false, false)?;
            }
        }
        Ok(EndpointView::from_record(&rec))
    }

    /// Writes `rec` and republishes its target under every address it owns.
    pub(super) fn publish_record(&mut self, rec: &EndpointRecord) -> Result<()> {
        let ifindex = rec.target.ifindex;
        self.endpoint_map()?
            .insert(ifindex, *rec, 0)
            .map_err(map_err("VFP_ENDPOINTS"))?;
        for a in record_addrs(rec) {
            if self.owner_of(a.addr)? == Some(ifindex) {
                self.publish(a.addr, rec.target)?;
            }
        }
        Ok(())
    }
}
