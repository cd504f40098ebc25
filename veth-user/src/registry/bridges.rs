//! Bridge bypass helpers: finding the namespaces behind a bridge's veth ports and keeping an
//! accelerated bridge accelerated while its ports come and go (container churn). Whether
//! netfilter would see (and could drop or change) traffic between the ports is
//! `netfilter.rs`.
//!
//! Which bridges are accelerated is state: a directory `bridges/NAME` in the state directory
//! (bpffs holds only pins and directories), with a subdirectory `forced` when `--force` was
//! given. `bridge accelerate` writes it, `bridge release` removes it; the agent follows link
//! events of the ports of every bridge listed there.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::types::Mode;
use veth_common::{EP_ADOPTED, EP_BRIDGE_PORT, MAX_ADDRS, Target};

use super::{
    error::{BridgeError, Result},
    record::{get_str, make_record, put_str},
};
use crate::{
    registry::{EndpointError, EndpointView, Registry},
    sys::netlink::{self, NetlinkError, Netns},
    types::Mac,
};

fn bridges_dir(state: &Path) -> PathBuf {
    state.join("bridges")
}

/// The accelerated bridges recorded in `state`: (name, forced).
pub fn accelerated(state: &Path) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = fs::read_dir(bridges_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let forced = e.path().join("forced").is_dir();
            (e.file_name().to_string_lossy().into_owned(), forced)
        })
        .collect();
    out.sort();
    out
}

fn remember(state: &Path, bridge: &str, forced: bool) -> Result<(), EndpointError> {
    let dir = bridges_dir(state).join(bridge);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EndpointError::State { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let f = dir.join("forced");
    if forced {
        fs::create_dir_all(&f).map_err(io(&f))?;
    } else if f.is_dir() {
        fs::remove_dir(&f).map_err(io(&f))?;
    }
    Ok(())
}

/// Forgets that `bridge` is accelerated (after `bridge release`).
pub fn forget(state: &Path, bridge: &str) {
    let dir = bridges_dir(state).join(bridge);
    let _ = fs::remove_dir(dir.join("forced"));
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_dir(bridges_dir(state));
}

/// What one `bridge accelerate` (or the agent, after a link event) changed.
#[derive(Debug, Default, Serialize)]
pub struct BridgeSync {
    /// Ports accelerated now.
    pub added: Vec<EndpointView>,
    /// Endpoints removed because their port is not that port any more (gone, left the
    /// bridge, its container end has another MAC).
    pub removed: Vec<String>,
    /// Ports not accelerated, with the reason (never reported as success).
    pub skipped: Vec<(String, String)>,
}

/// One port of a bridge as `bridge status` shows it.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: String,
    pub ifindex: u32,
    pub accelerated: bool,
    /// The container MAC the fast path delivers to (accelerated ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_mac: Option<Mac>,
    /// Why the port is not accelerated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `bridge status BR`.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    pub bridge: String,
    pub ifindex: u32,
    /// Recorded as accelerated (`bridge accelerate` ran and was not released).
    pub accelerated: bool,
    pub forced: bool,
    pub ports: Vec<PortStatus>,
    /// Endpoints still registered for ports that are gone (pruned by the next `bridge
    /// accelerate` or by the agent; the datapath never delivers to them).
    pub stale: Vec<String>,
}

fn bridge_link(bridge: &str) -> Result<netlink::Link, EndpointError> {
    netlink::link_by_name(bridge)?
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| BridgeError::NoSuchBridge(bridge.into()).into())
}

/// The bridge-port endpoints registered for `br` (by ifindex, or by name for a bridge that
/// was deleted and made again).
fn port_endpoints(
    reg: &mut Registry,
    br: &netlink::Link,
) -> Result<Vec<EndpointView>, EndpointError> {
    Ok(reg
        .list()?
        .into_iter()
        .filter(|v| v.mode == Mode::Bridge && (v.network_id == br.ifindex || v.network == br.name))
        .collect())
}

/// Is `v` still the port it was registered for: the same interface, on `br`, with its peer in
/// a namespace that still has the container end with the registered MAC?
fn still_the_port(v: &EndpointView, br: &netlink::Link, links: &[netlink::Link]) -> bool {
    let Some(link) = links.iter().find(|l| l.ifindex == v.host_ifindex) else {
        return false;
    };
    if link.name != v.host_if
        || link.master != Some(br.ifindex)
        || v.network_id != br.ifindex
        || link.link_netnsid.is_none()
    {
        return false;
    }
    let (Some(peer), Ok(ns)) = (link.peer_ifindex, Netns::open(&v.netns)) else {
        return false;
    };
    matches!(
        netlink::in_netns(&ns, || netlink::link_by_index(peer)),
        Ok(Some(p)) if p.mac == Some(v.container_mac)
    )
}

impl Registry {
    /// Removes the endpoints of `bridge`'s ports that are not that port any more. Returns their
    /// host interface names.
    pub(crate) fn bridge_prune(&mut self, bridge: &str) -> Result<Vec<String>, EndpointError> {
        let br = bridge_link(bridge)?;
        let links = netlink::links()?;
        let mut removed = Vec::new();
        for v in port_endpoints(self, &br)? {
            if !still_the_port(&v, &br, &links) {
                self.remove_by_ifindex(v.host_ifindex)?;
                removed.push(v.host_if);
            }
        }
        Ok(removed)
    }

    /// Are `br`'s ports (by ifindex and name) exactly its registered port endpoints?
    fn bridge_unchanged(&mut self, br: &netlink::Link) -> Result<bool, EndpointError> {
        let ports: std::collections::BTreeSet<(u32, String)> = netlink::links()?
            .into_iter()
            .filter(|l| l.master == Some(br.ifindex))
            .map(|l| (l.ifindex, l.name))
            .collect();
        let registered: std::collections::BTreeSet<(u32, String)> = port_endpoints(self, br)?
            .into_iter()
            .filter(|v| v.network_id == br.ifindex)
            .map(|v| (v.host_ifindex, v.host_if))
            .collect();
        Ok(ports == registered)
    }

    /// `bridge accelerate`: prunes what is gone, accelerates the ports not yet accelerated and
    /// records the bridge as accelerated, so the agent keeps it so. A refusal while ports of
    /// the bridge are accelerated from before says that their fast path stays.
    pub fn bridge_sync(&mut self, bridge: &str, force: bool) -> Result<BridgeSync, EndpointError> {
        let removed = self.bridge_prune(bridge)?;
        match self.bridge_accelerate(bridge, force) {
            Ok((added, skipped)) => {
                remember(self.datapath().dir(), bridge, force)?;
                Ok(BridgeSync {
                    added,
                    removed,
                    skipped,
                })
            }
            Err(EndpointError::Bridge(BridgeError::BridgeRefused(reason))) => {
                let br = bridge_link(bridge)?;
                let kept: Vec<String> = port_endpoints(self, &br)?
                    .into_iter()
                    .map(|v| v.host_if)
                    .collect();
                if kept.is_empty() {
                    Err(BridgeError::BridgeRefused(reason).into())
                } else {
                    Err(BridgeError::BridgeRefusedKept {
                        bridge: bridge.into(),
                        reason,
                        kept: kept.join(", "),
                    }
                    .into())
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `bridge release`: every port back on the bridge path, and the bridge no longer followed.
    /// A bridge that is gone (`docker network rm`) but recorded is released too: its
    /// endpoints are removed and the record forgotten.
    pub fn bridge_release_all(&mut self, bridge: &str) -> Result<Vec<String>, EndpointError> {
        let recorded = accelerated(self.datapath().dir())
            .iter()
            .any(|(n, _)| n == bridge);
        let names = match self.bridge_release(bridge) {
            Err(EndpointError::Bridge(BridgeError::NoSuchBridge(_))) if recorded => {
                let mut names = Vec::new();
                for v in self.list()? {
                    if v.mode == Mode::Bridge && v.network == bridge {
                        self.remove_by_ifindex(v.host_ifindex)?;
                        names.push(v.host_if);
                    }
                }
                names
            }
            r => r?,
        };
        forget(self.datapath().dir(), bridge);
        Ok(names)
    }

    /// `bridge status BR`: which ports are accelerated and which are not (yet), and why.
    pub fn bridge_status(&mut self, bridge: &str) -> Result<BridgeStatus, EndpointError> {
        let br = bridge_link(bridge)?;
        let links = netlink::links()?;
        let eps = port_endpoints(self, &br)?;
        let state = accelerated(self.datapath().dir());
        let recorded = state.iter().find(|(n, _)| n == bridge);
        let mut ports = Vec::new();
        for l in links.iter().filter(|l| l.master == Some(br.ifindex)) {
            // Accelerated = the datapath delivers to it: registered, still that port, and its
            // MAC published in VFP_L2 (the last step of registering, so a port being
            // registered right now is not shown as accelerated yet).
            let ep = eps.iter().find(|v| {
                v.host_ifindex == l.ifindex
                    && still_the_port(v, &br, &links)
                    && self
                        .datapath()
                        .l2()
                        .ok()
                        .and_then(|m| m.get(&v.container_mac.0, 0).ok())
                        .is_some_and(|t| t.ifindex == v.host_ifindex)
            });
            let reason = if ep.is_some() {
                None
            } else if l.kind.as_deref() != Some("veth") {
                Some("not a veth: always on the bridge path".to_string())
            } else if l.link_netnsid.is_none() {
                Some("its peer is in the node namespace: always on the bridge path".to_string())
            } else if recorded.is_some() {
                Some(format!(
                    "not yet: the agent accelerates it, or run `vethfp bridge accelerate {bridge}`"
                ))
            } else {
                Some(format!("run `vethfp bridge accelerate {bridge}`"))
            };
            ports.push(PortStatus {
                port: l.name.clone(),
                ifindex: l.ifindex,
                accelerated: ep.is_some(),
                container_mac: ep.map(|v| v.container_mac),
                reason,
            });
        }
        let stale = eps
            .iter()
            .filter(|v| !still_the_port(v, &br, &links))
            .map(|v| v.host_if.clone())
            .collect();
        Ok(BridgeStatus {
            bridge: bridge.into(),
            ifindex: br.ifindex,
            accelerated: recorded.is_some(),
            forced: recorded.is_some_and(|(_, f)| *f),
            ports,
            stale,
        })
    }
}

/// One bridge the agent followed, with what syncing it did.
pub(crate) type Followed = (String, Result<BridgeSync, EndpointError>);

impl Registry {
    /// The agent's part of following bridges: for each recorded bridge (`state`, from
    /// [`accelerated`]) that is present and, unless `all`, is the master of one of
    /// `masters`, prunes and accelerates it. One result per bridge visited.
    /// The accelerated bridges of `state` (as [`bridges::accelerated`] lists them) that a
    /// periodic pass must sync: present, and with ports other than the accelerated ones.
    /// Reads only; the caller needs no state lock.
    pub(crate) fn bridges_changed(
        &mut self,
        state: Vec<(String, bool)>,
    ) -> Result<Vec<(String, bool)>, EndpointError> {
        let mut out = Vec::new();
        for (bridge, forced) in state {
            if let Some(br) = netlink::link_by_name(&bridge)?
                && !self.bridge_unchanged(&br)?
            {
                out.push((bridge, forced));
            }
        }
        Ok(out)
    }

    pub(crate) fn follow_bridges(
        &mut self,
        state: Vec<(String, bool)>,
        masters: &[u32],
        all: bool,
    ) -> Result<Vec<Followed>, EndpointError> {
        let mut out = Vec::new();
        for (bridge, forced) in state {
            let Some(br) = netlink::link_by_name(&bridge)? else {
                continue; // gone for now; a bridge made again under the name is followed
            };
            if !all && !masters.contains(&br.ifindex) {
                continue;
            }
            // The periodic safety net: a bridge whose ports are exactly the accelerated ones
            // needs no walk of /proc and no iptables-save (a change of one of them arrives as
            // a link event, which syncs that bridge in full).
            if all && self.bridge_unchanged(&br)? {
                continue;
            }
            let r = self.bridge_sync(&bridge, forced);
            out.push((bridge, r));
        }
        Ok(out)
    }
}

impl Registry {
    /// Accelerates an existing Linux bridge in place: every veth port whose peer lives in
    /// another namespace gets the L2 fast path; the bridge stays the slow path. Refuses (unless
    /// `force`) where the bridge enforces something the fast path would skip.
    ///
    /// Returns the ports accelerated by this call and those skipped, each with the reason.
    #[allow(clippy::type_complexity)]
    pub(crate) fn bridge_accelerate(
        &mut self,
        bridge: &str,
        force: bool,
    ) -> Result<(Vec<EndpointView>, Vec<(String, String)>)> {
        let br = netlink::link_by_name(bridge)?
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| BridgeError::NoSuchBridge(bridge.into()))?;
        let ports: Vec<netlink::Link> = netlink::links()?
            .into_iter()
            .filter(|l| {
                l.master == Some(br.ifindex)
                    && l.kind.as_deref() == Some("veth")
                    && l.link_netnsid.is_some()
            })
            .collect();
        if !force {
            if br.vlan_filtering == Some(true) {
                return Err(BridgeError::BridgeRefused(format!(
                    "{bridge} has vlan_filtering on; the fast path does not apply VLAN membership"
                ))
                .into());
            }
            if let Some(p) = ports.iter().find(|p| p.port_isolated == Some(true)) {
                return Err(BridgeError::BridgeRefused(format!(
                    "port {} of {bridge} is isolated; the fast path would join it to the other ports",
                    p.name
                )).into());
            }
            // Under netfilter admission the bridge's own path (br_netfilter included) admits
            // every flow first: its rules are not skipped, so they are no reason to refuse.
            if self.dp.flags()? & veth_common::CFG_ADMIT_ALWAYS != 0 {
                super::netfilter::netfilter_check(bridge).map_err(BridgeError::BridgeRefused)?;
            }
        }
        let namespaces = crate::registry::bridges::namespaces_by_id()?;
        let known: Vec<(u32, String)> = self
            .records()?
            .iter()
            .map(|r| (r.target.ifindex, get_str(&r.host_name)))
            .collect();
        let mut added = Vec::new();
        let mut skipped = Vec::new();
        let mut todo: Vec<&netlink::Link> = Vec::new();
        for p in &ports {
            match known.iter().find(|(i, _)| *i == p.ifindex) {
                Some((_, n)) if *n == p.name => {
                    skipped.push((p.name.clone(), "already accelerated".to_string()))
                }
                Some((_, n)) => skipped.push((
                    p.name.clone(),
                    format!(
                        "its ifindex {} is recorded for endpoint {n} of this state (stale record?)",
                        p.ifindex
                    ),
                )),
                None => todo.push(p),
            }
        }
        if let Err(e) = self.accelerate_ports(
            bridge,
            br.ifindex,
            &todo,
            &namespaces,
            &mut added,
            &mut skipped,
        ) {
            // All or nothing: ports accelerated by this call go back to the plain bridge.
            for v in &added {
                let _ = self.del(&v.host_if);
            }
            return Err(e);
        }
        Ok((added, skipped))
    }

    pub(super) fn accelerate_ports(
        &mut self,
        bridge: &str,
        bridge_ifindex: u32,
        ports: &[&netlink::Link],
        namespaces: &std::collections::HashMap<i32, (String, Netns)>,
        added: &mut Vec<EndpointView>,
        skipped: &mut Vec<(String, String)>,
    ) -> Result<()> {
        for port in ports {
            let (Some(nsid), Some(peer_index)) = (port.link_netnsid, port.peer_ifindex) else {
                skipped.push((port.name.clone(), "its veth peer is unknown".into()));
                continue;
            };
            let Some((spec, ns)) = namespaces.get(&nsid) else {
                skipped.push((
                    port.name.clone(),
                    format!("cannot find the namespace of its peer (nsid {nsid})"),
                ));
                continue;
            };
            let (peer, mut addrs) = netlink::in_netns(ns, || {
                let peer = netlink::link_by_index(peer_index)?;
                let addrs = netlink::addresses(peer_index)?;
                Ok((peer, addrs))
            })?;
            let Some(peer) = peer else {
                skipped.push((port.name.clone(), "its veth peer vanished".into()));
                continue;
            };
            let (Some(container_mac), Some(host_mac)) = (peer.mac, port.mac) else {
                skipped.push((port.name.clone(), "it or its peer has no MAC".into()));
                continue;
            };
            addrs.truncate(MAX_ADDRS);
            let mut rec = make_record(
                Target {
                    ifindex: port.ifindex,
                    mtu: port.mtu,
                    network: 0,
                    mode: veth_common::MODE_TC,
                    slot: 0, // assigned by register
                    container_mac: container_mac.0,
                    host_mac: host_mac.0,
                },
                ns.ino(),
                &port.name,
                &peer.name,
                spec,
                &addrs,
                EP_ADOPTED | EP_BRIDGE_PORT,
            );
            put_str(&mut rec.network_name, bridge);
            rec.target.network = bridge_ifindex;
            let mut undo = Vec::new();
            if let Err(e) = self.register(&mut rec, &addrs, &mut undo) {
                self.rollback(undo);
                return Err(e);
            }
            added.push(EndpointView::from_record(&rec));
        }
        Ok(())
    }

    /// Removes the fast path from every port of `bridge`: plain bridge behaviour again.
    pub(crate) fn bridge_release(&mut self, bridge: &str) -> Result<Vec<String>> {
        let br = netlink::link_by_name(bridge)?
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| BridgeError::NoSuchBridge(bridge.into()))?;
        let names: Vec<String> = self
            .records()?
            .iter()
            .filter(|r| r.flags & EP_BRIDGE_PORT != 0 && r.target.network == br.ifindex)
            .map(|r| get_str(&r.host_name))
            .collect();
        for n in &names {
            self.del(n)?;
        }
        Ok(names)
    }
}

/// Every network namespace we can open, keyed by the id the node gives it (`link-netnsid`),
/// with the spec to show for it: names under /run/netns, Docker's /run/docker/netns, and
/// /proc/PID/ns/net of running processes (first spec found wins).
pub fn namespaces_by_id() -> Result<HashMap<i32, (String, Netns)>, NetlinkError> {
    let mut specs: Vec<String> = Vec::new();
    for (dir, bare) in [("/run/netns", true), ("/run/docker/netns", false)] {
        if let Ok(rd) = fs::read_dir(dir) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                specs.push(if bare { n } else { format!("{dir}/{n}") });
            }
        }
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        let mut pids: Vec<u32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort();
        specs.extend(pids.into_iter().map(|p| format!("/proc/{p}/ns/net")));
    }
    let mut seen = Vec::new();
    let mut out = HashMap::new();
    for spec in specs {
        let Ok(ns) = Netns::open(&spec) else { continue };
        if seen.contains(&ns.ino()) {
            continue;
        }
        seen.push(ns.ino());
        if let Some(id) = netlink::netns_id(&ns)? {
            out.entry(id).or_insert((spec, ns));
        }
    }
    Ok(out)
}
