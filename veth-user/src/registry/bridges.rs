//! Bridge bypass helpers: finding the namespaces behind a bridge's veth ports, deciding
//! whether netfilter would see (and could drop or change) traffic between the ports, and
//! keeping an accelerated bridge accelerated while its ports come and go (container churn).
//!
//! Which bridges are accelerated is state: a directory `bridges/NAME` in the state directory
//! (bpffs holds only pins and directories), with a subdirectory `forced` when `--force` was
//! given. `bridge accelerate` writes it, `bridge release` removes it; the agent follows link
//! events of the ports of every bridge listed there.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;

use crate::types::Mode;
use veth_common::{EP_ADOPTED, EP_BRIDGE_PORT, MAX_ADDRS, Target};

use super::{
    error::Result,
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
        .ok_or_else(|| EndpointError::NoSuchBridge(bridge.into()))
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
            Err(EndpointError::BridgeRefused(reason)) => {
                let br = bridge_link(bridge)?;
                let kept: Vec<String> = port_endpoints(self, &br)?
                    .into_iter()
                    .map(|v| v.host_if)
                    .collect();
                if kept.is_empty() {
                    Err(EndpointError::BridgeRefused(reason))
                } else {
                    Err(EndpointError::BridgeRefusedKept {
                        bridge: bridge.into(),
                        reason,
                        kept: kept.join(", "),
                    })
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
            Err(EndpointError::NoSuchBridge(_)) if recorded => {
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
            .ok_or_else(|| EndpointError::NoSuchBridge(bridge.into()))?;
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
                return Err(EndpointError::BridgeRefused(format!(
                    "{bridge} has vlan_filtering on; the fast path does not apply VLAN membership"
                )));
            }
            if let Some(p) = ports.iter().find(|p| p.port_isolated == Some(true)) {
                return Err(EndpointError::BridgeRefused(format!(
                    "port {} of {bridge} is isolated; the fast path would join it to the other ports",
                    p.name
                )));
            }
            // Under netfilter admission the bridge's own path (br_netfilter included) admits
            // every flow first: its rules are not skipped, so they are no reason to refuse.
            if self.dp.flags()? & veth_common::CFG_ADMIT_ALWAYS != 0 {
                crate::registry::bridges::netfilter_check(bridge)
                    .map_err(EndpointError::BridgeRefused)?;
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
            .ok_or_else(|| EndpointError::NoSuchBridge(bridge.into()))?;
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

/// With br_netfilter passing bridged traffic through iptables/ip6tables in this namespace, a
/// rule could drop or change traffic between the bridge's ports (Docker's icc=false, rules in
/// DOCKER-USER): the fast path would skip it. Err names the reason.
///
/// The rules are read with `iptables-save`/`ip6tables-save` (read-only); if they cannot be
/// read, we refuse rather than guess.
pub fn netfilter_check(bridge: &str) -> Result<(), String> {
    let on = |f: &str| {
        fs::read_to_string(format!("/proc/sys/net/bridge/{f}"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    };
    for (sysctl, tool) in [
        ("bridge-nf-call-iptables", "iptables-save"),
        ("bridge-nf-call-ip6tables", "ip6tables-save"),
    ] {
        if !on(sysctl) {
            continue;
        }
        let out = Command::new(tool)
            .args(["-t", "filter"])
            .output()
            .map_err(|e| {
                format!("{sysctl}=1 sends bridged traffic through netfilter and {tool} could not be run to check the rules ({e})")
            })?;
        if !out.status.success() {
            return Err(format!(
                "{sysctl}=1 sends bridged traffic through netfilter and {tool} failed to list the rules"
            ));
        }
        let rules = String::from_utf8_lossy(&out.stdout);
        if let Some(rule) = blocking_rule(&rules, bridge) {
            return Err(format!(
                "{sysctl}=1 and the netfilter rule `{rule}` can drop or change traffic between ports of {bridge}"
            ));
        }
        // Hairpin NAT (Docker with --userland-proxy=false): a container's connection to a
        // published port is DNAT'd to another port of the bridge, whose replies are bridged
        // back and un-NAT'd by br_netfilter's conntrack. The fast path would hand the replies
        // over untranslated.
        let nat = Command::new(tool).args(["-t", "nat"]).output().map_err(|e| {
            format!("{sysctl}=1 sends bridged traffic through netfilter and {tool} -t nat could not be run to check the rules ({e})")
        })?;
        if !nat.status.success() {
            return Err(format!(
                "{sysctl}=1 sends bridged traffic through netfilter and {tool} -t nat failed to list the rules"
            ));
        }
        if let Some(rule) = hairpin_dnat_rule(&String::from_utf8_lossy(&nat.stdout), bridge) {
            return Err(format!(
                "{sysctl}=1 and the NAT rule `{rule}` can translate connections from ports of {bridge} to other ports of it (hairpin NAT; Docker's --userland-proxy=false), whose replies the fast path would deliver untranslated"
            ));
        }
    }
    Ok(())
}

/// A DNAT rule of the nat table that can take packets coming in from `bridge` (no `-i`, `-i`
/// the bridge or a wildcard covering it, or `! -i` another interface).
fn hairpin_dnat_rule<'a>(rules: &'a str, bridge: &str) -> Option<&'a str> {
    rules.lines().find(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() != Some(&"-A") || !w.windows(2).any(|p| p == ["-j", "DNAT"]) {
            return false;
        }
        w.iter().position(|x| *x == "-i").is_none_or(|i| {
            let negated = i > 0 && w[i - 1] == "!";
            let same = w.get(i + 1).is_some_and(|v| {
                *v == bridge || v.ends_with('+') && bridge.starts_with(&v[..v.len() - 1])
            });
            same != negated
        })
    })
}

/// A rule that could drop traffic between two ports of `bridge`: walking the filter table
/// from FORWARD for a packet with in = out = `bridge`, following jumps to user chains, the
/// first DROP/REJECT whose interface matches could apply to such a packet. The walk stops at
/// an ACCEPT that takes every such packet (no match but the interfaces); falling off the end
/// of FORWARD means its policy decides, so a DROP policy (Docker sets one) counts as a rule,
/// shown as `-P FORWARD DROP`.
fn blocking_rule<'a>(rules: &'a str, bridge: &str) -> Option<&'a str> {
    let mut chains: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut forward_drops = false;
    for line in rules.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("-A") => {
                if let Some(chain) = w.next() {
                    chains.entry(chain).or_default().push(line);
                }
            }
            Some(":FORWARD") => forward_drops = w.next() == Some("DROP"),
            _ => {}
        }
    }
    let mut seen = Vec::new();
    match walk("FORWARD", &chains, bridge, &mut seen) {
        Walk::Drop(rule) => Some(rule),
        Walk::Accept => None,
        Walk::Return if forward_drops => Some("-P FORWARD DROP"),
        Walk::Return => None,
    }
}

/// How a walk through a chain ends for a packet with in = out = the bridge.
enum Walk<'a> {
    /// This DROP/REJECT rule could apply.
    Drop(&'a str),
    /// Every such packet is accepted here: nothing after counts.
    Accept,
    /// The chain returns (or ends) for some packets: the caller goes on.
    Return,
}

fn walk<'a>(
    chain: &str,
    chains: &HashMap<&str, Vec<&'a str>>,
    bridge: &str,
    seen: &mut Vec<String>,
) -> Walk<'a> {
    if seen.iter().any(|c| c == chain) {
        return Walk::Return;
    }
    seen.push(chain.to_string());
    for line in chains.get(chain).into_iter().flatten() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // Can an interface condition hold for in = out = bridge?
        let holds = |flag: &str| {
            w.iter().position(|x| *x == flag).is_none_or(|i| {
                let negated = i > 0 && w[i - 1] == "!";
                let same = w.get(i + 1).is_some_and(|v| {
                    *v == bridge || v.ends_with('+') && bridge.starts_with(&v[..v.len() - 1])
                });
                same != negated
            })
        };
        if !holds("-i") || !holds("-o") {
            continue;
        }
        let target = w
            .iter()
            .position(|x| *x == "-j" || *x == "-g")
            .and_then(|i| w.get(i + 1))
            .copied();
        // Nothing but `-A CHAIN`, the interfaces (possibly negated) and the target: the rule
        // takes every packet that got this far.
        let unconditional = {
            let mut rest = w.iter().skip(2);
            let mut only = true;
            while let Some(x) = rest.next() {
                match *x {
                    "!" => {}
                    "-i" | "-o" | "-j" | "-g" => {
                        rest.next();
                    }
                    _ => only = false,
                }
            }
            only
        };
        match target {
            Some("DROP") | Some("REJECT") => return Walk::Drop(line),
            Some("ACCEPT") if unconditional => return Walk::Accept,
            Some("RETURN") if unconditional => return Walk::Return,
            Some(t) if chains.contains_key(t) => match walk(t, chains, bridge, seen) {
                Walk::Return => {}
                end => return end,
            },
            _ => {}
        }
    }
    Walk::Return
}

#[cfg(test)]
mod tests {
    use super::blocking_rule;

    const DOCKER: &str = "*filter
:FORWARD DROP [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

    #[test]
    fn hairpin_dnat_only_without_the_userland_proxy() {
        use super::hairpin_dnat_rule;
        // Docker's published port with the userland proxy: not from docker0.
        let proxy = "*nat\n-A DOCKER -i docker0 -j RETURN\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\nCOMMIT\n";
        assert_eq!(hairpin_dnat_rule(proxy, "docker0"), None);
        // Without it (--userland-proxy=false): from every interface, docker0 included.
        let hairpin = "*nat\n-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\nCOMMIT\n";
        assert!(hairpin_dnat_rule(hairpin, "docker0").is_some());
        // A DNAT for traffic from another bridge is irrelevant.
        let other = "-A PREROUTING -i br-1 -j DNAT --to-destination 10.0.0.1\n";
        assert_eq!(hairpin_dnat_rule(other, "docker0"), None);
        assert!(hairpin_dnat_rule(other, "br-1").is_some());
    }

    #[test]
    fn docker_default_allows_intra_bridge() {
        assert_eq!(blocking_rule(DOCKER, "docker0"), None);
    }

    #[test]
    fn docker_icc_false_and_user_rules_refuse() {
        let icc = DOCKER.replace(
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j DROP",
        );
        assert_eq!(
            blocking_rule(&icc, "docker0"),
            Some("-A FORWARD -i docker0 -o docker0 -j DROP")
        );
        let user = DOCKER.replace(
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -s 10.0.0.0/8 -j REJECT\n-A DOCKER-USER -j RETURN",
        );
        assert!(blocking_rule(&user, "docker0").is_some());
        // A drop that only applies to another bridge is irrelevant.
        let other = format!("{DOCKER}-A FORWARD -i br-1 -o br-1 -j DROP\n");
        assert_eq!(blocking_rule(&other, "docker0"), None);
        // Policy-free FORWARD with a plain DROP catches everything.
        assert!(blocking_rule("-A FORWARD -j DROP\n", "docker0").is_some());
    }

    #[test]
    fn forward_drop_policy_refuses_unless_the_bridge_is_accepted() {
        // No rule at all, policy DROP: the bridge drops everything between its ports.
        let bare = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n";
        assert_eq!(blocking_rule(bare, "br0"), Some("-P FORWARD DROP"));
        let accept = ":FORWARD ACCEPT [0:0]\n";
        assert_eq!(blocking_rule(accept, "br0"), None);
        // On a Docker host (policy DROP), a bridge Docker does not manage is dropped...
        assert_eq!(blocking_rule(DOCKER, "br0"), Some("-P FORWARD DROP"));
        // ...unless something accepts it; a conditional ACCEPT (only TCP) is not enough.
        let tcp = format!("{DOCKER}-A FORWARD -i br0 -o br0 -p tcp -j ACCEPT\n");
        assert_eq!(blocking_rule(&tcp, "br0"), Some("-P FORWARD DROP"));
        let all = format!("{DOCKER}-A FORWARD -i br0 -o br0 -j ACCEPT\n");
        assert_eq!(blocking_rule(&all, "br0"), None);
        let wildcard = format!("{DOCKER}-A FORWARD -i br+ -j ACCEPT\n");
        assert_eq!(blocking_rule(&wildcard, "br0"), None);
        // An unconditional RETURN in a user chain returns to FORWARD, which goes on.
        let ret = ":FORWARD DROP [0:0]\n-A FORWARD -j U\n-A U -j RETURN\n-A U -j ACCEPT\n";
        assert_eq!(blocking_rule(ret, "br0"), Some("-P FORWARD DROP"));
        // An ACCEPT in a user chain ends the walk.
        let acc = ":FORWARD DROP [0:0]\n-A FORWARD -j U\n-A U -o br0 -j ACCEPT\n";
        assert_eq!(blocking_rule(acc, "br0"), None);
    }
}
