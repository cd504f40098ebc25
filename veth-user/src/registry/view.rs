//! What callers hand in (requests) and get back (views, stats, status), with their JSON
//! form, and the reads that build the views.

use std::collections::BTreeMap;

use serde::Serialize;
use veth_common::{
    CFG_EGRESS_FAST, CFG_FASTPATH_OFF, Counters, DIR_FROM_CONTAINER, DIR_TO_CONTAINER, Dir,
    EP_ADOPTED, EP_BRIDGE_PORT, EndpointRecord, MAX_ADDRS, PacketBytes, Uplink, V_FAST_UPLINK,
    V_STACK, Verdict,
};

use crate::types::{Cidr, IfName, Mac, Mode, Spoof};

use super::{
    Registry,
    error::{EndpointError, Result},
    record::{cidr_of, get_str, spoof_flags},
};

/// What `pair add` asks for.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub host: IfName,
    pub netns: String,
    pub ifname: IfName,
    pub addrs: Vec<Cidr>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Network (isolation domain) name; "default" if empty.
    pub network: String,
    /// Anti-spoofing of the container's source addresses.
    pub spoof: Spoof,
    /// [`Mode::Tc`] or [`Mode::Xdp`].
    pub mode: Mode,
    /// Extra `EP_*` record flags (e.g. `EP_CNI`).
    pub(crate) flags: u32,
    /// CNI (container ID, ifname) this endpoint is added for; recorded in `VFP_CNI_OWNERS`.
    pub(crate) cni_owner: Option<(String, String)>,
}

impl AddRequest {
    /// A request with the defaults of `vethfp pair add`: container end `eth0`, kernel MTU,
    /// random MAC, network `default`, spoofing enforced, TC mode.
    pub fn new(host: IfName, netns: impl Into<String>, addrs: Vec<Cidr>) -> AddRequest {
        AddRequest {
            host,
            netns: netns.into(),
            ifname: "eth0".parse().expect("eth0 is a valid interface name"),
            addrs,
            mtu: None,
            mac: None,
            network: "default".into(),
            spoof: Spoof::Enforce,
            mode: Mode::Tc,
            flags: 0,
            cni_owner: None,
        }
    }

    pub(super) fn record_flags(&self) -> u32 {
        self.flags | spoof_flags(self.spoof)
    }
}

impl AdoptRequest {
    /// Adopt the veth pair `host` (node) ↔ `ifname` (in `netns`), spoofing enforced, network
    /// `default`.
    pub fn new(
        host: IfName,
        netns: impl Into<String>,
        ifname: impl Into<String>,
        container_mac: Mac,
        addrs: Vec<Cidr>,
    ) -> AdoptRequest {
        AdoptRequest {
            host,
            netns: netns.into(),
            ifname: ifname.into(),
            container_mac,
            addrs,
            network: "default".into(),
            spoof: Spoof::Enforce,
            flags: 0,
            cni_owner: None,
        }
    }
}

/// What `adopt` asks for: an existing veth pair made by someone else.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    /// Host end, in the node.
    pub host: IfName,
    /// Container netns (name under /run/netns or path).
    pub netns: String,
    /// Container end name inside the netns.
    pub ifname: String,
    pub container_mac: Mac,
    pub addrs: Vec<Cidr>,
    /// Network (isolation domain) name; "default" if empty.
    pub network: String,
    /// Anti-spoofing of the container's source addresses.
    pub spoof: Spoof,
    /// Extra `EP_*` record flags (e.g. `EP_CNI`).
    pub(crate) flags: u32,
    /// CNI (container ID, ifname) this endpoint is added for; recorded in `VFP_CNI_OWNERS`.
    pub(crate) cni_owner: Option<(String, String)>,
}

/// One endpoint as `pair list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointView {
    pub host_if: String,
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub netns: String,
    pub ifname: String,
    pub container_mac: Mac,
    pub addrs: Vec<Cidr>,
    pub mtu: u32,
    pub mode: Mode,
    pub network: String,
    pub network_id: u32,
    pub spoof: Spoof,
    /// Made by someone else and adopted (CNI chaining, bridge bypass).
    pub adopted: bool,
}

/// An attached uplink.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UplinkView {
    pub name: String,
    pub ifindex: u32,
}

impl From<&Uplink> for UplinkView {
    fn from(u: &Uplink) -> Self {
        UplinkView {
            name: get_str(&u.name),
            ifindex: u.ifindex,
        }
    }
}

/// An uplink with its counters: `received_fast` went straight into a container,
/// `received_stack` to the node's stack, `sent_fast` came straight from a container.
#[derive(Debug, Clone)]
pub struct UplinkStatus {
    pub uplink: UplinkView,
    pub counters: Counters,
}

impl Serialize for UplinkStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = &self.counters.c;
        let pb = |d: usize, v: usize| serde_json::json!({"packets": c[d][v].packets, "bytes": c[d][v].bytes});
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("name", &self.uplink.name)?;
        m.serialize_entry("ifindex", &self.uplink.ifindex)?;
        m.serialize_entry("received_fast", &pb(DIR_TO_CONTAINER, V_FAST_UPLINK))?;
        m.serialize_entry("received_stack", &pb(DIR_TO_CONTAINER, V_STACK))?;
        m.serialize_entry("sent_fast", &pb(DIR_FROM_CONTAINER, V_FAST_UPLINK))?;
        m.end()
    }
}

/// `vethfp status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub bpffs: String,
    /// The version of the vethfp that created or last upgraded the state (its datapath);
    /// None if that vethfp did not record it (0.1.0).
    pub datapath_version: Option<String>,
    /// This vethfp's version.
    pub version: &'static str,
    pub endpoints: usize,
    pub fast_path: bool,
    /// "fast" or "kernel".
    pub egress: &'static str,
    /// `netfilter` or `always` in JSON.
    pub admission: crate::registry::flows::Admission,
    /// Whether TCP flows may be admitted under `netfilter` (in the flags now).
    pub tcp_admitted: bool,
    /// How TCP is accelerated under `netfilter`: per flow by the agent, node-wide, or not.
    pub tcp: crate::registry::flows::TcpMode,
    /// The node's conntrack TCP policy as read now.
    pub tcp_conntrack: crate::registry::flows::TcpAdmission,
    pub flow_table: crate::registry::flows::FlowTable,
    pub uplinks: Vec<UplinkStatus>,
}

/// Counters of one endpoint, summed over CPUs.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub host_if: String,
    pub host_ifindex: u32,
    pub counters: Counters,
}

impl Serialize for EndpointStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Pb {
            packets: u64,
            bytes: u64,
        }
        let mut m = s.serialize_map(Some(2 + Dir::ALL.len()))?;
        m.serialize_entry("host_if", &self.host_if)?;
        m.serialize_entry("host_ifindex", &self.host_ifindex)?;
        for dir in Dir::ALL {
            let by_verdict: BTreeMap<&str, Pb> = Verdict::ALL
                .into_iter()
                .filter(|v| *v != Verdict::Reserved)
                .map(|v| {
                    let PacketBytes { packets, bytes } = self.counters.get(dir, v);
                    (v.name(), Pb { packets, bytes })
                })
                .collect();
            m.serialize_entry(dir.name(), &by_verdict)?;
        }
        m.end()
    }
}

impl Registry {
    /// Node-wide view: uplinks, switches, endpoint count.
    pub fn status(&mut self) -> Result<Status> {
        let flags = self.dp.flags()?;
        let mut uplinks = Vec::new();
        for u in self.uplink_records()? {
            let counters = self.dp.read_counters(u.slot)?;
            uplinks.push(UplinkStatus {
                uplink: UplinkView::from(&u),
                counters,
            });
        }
        Ok(Status {
            bpffs: self.dp.dir().display().to_string(),
            datapath_version: self.dp.state_version(),
            version: crate::version::LONG_VERSION,
            endpoints: self.records()?.len(),
            fast_path: flags & CFG_FASTPATH_OFF == 0,
            egress: if flags & CFG_EGRESS_FAST != 0 {
                "fast"
            } else {
                "kernel"
            },
            admission: crate::registry::flows::Admission::of_flags(flags),
            tcp_admitted: flags & (veth_common::CFG_ADMIT_TCP | veth_common::CFG_TCP_HANDOFF) != 0,
            tcp: crate::registry::flows::TcpMode::of(
                flags,
                crate::registry::flows::agent_running(self.dp.dir()),
            ),
            tcp_conntrack: crate::registry::flows::tcp_admissible(),
            flow_table: crate::registry::flows::table(&mut self.dp)?,
            uplinks,
        })
    }

    /// How many endpoints are recorded (keys only: no record is copied out).
    pub(crate) fn list_len(&mut self) -> Result<usize> {
        let map = self.dp.endpoints()?;
        Ok(map.keys().filter(|k| k.is_ok()).count())
    }

    pub fn list(&mut self) -> Result<Vec<EndpointView>> {
        Ok(self
            .records()?
            .iter()
            .map(EndpointView::from_record)
            .collect())
    }

    /// Counters of every endpoint with its namespace: one pass over the records (the
    /// metrics encoder's read; [`Registry::stats`] and [`Registry::list`] would read them
    /// twice and leave the caller to join them).
    pub(crate) fn stats_with_netns(&mut self) -> Result<Vec<(EndpointStats, String)>> {
        let recs = self.records()?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            let counters = self.dp.read_counters(r.target.slot)?;
            out.push((
                EndpointStats {
                    host_if: get_str(&r.host_name),
                    host_ifindex: r.target.ifindex,
                    counters,
                },
                get_str(&r.netns),
            ));
        }
        Ok(out)
    }

    /// Counters of every endpoint, or of `name` only.
    pub fn stats(&mut self, name: Option<&str>) -> Result<Vec<EndpointStats>> {
        let recs = self.records()?;
        if let Some(n) = name
            && !recs.iter().any(|r| get_str(&r.host_name) == n)
        {
            return Err(EndpointError::NotFound(n.into()));
        }
        let mut out = Vec::new();
        for r in recs {
            let host_if = get_str(&r.host_name);
            if name.is_some_and(|n| n != host_if) {
                continue;
            }
            let counters = self.dp.read_counters(r.target.slot)?;
            out.push(EndpointStats {
                host_if,
                host_ifindex: r.target.ifindex,
                counters,
            });
        }
        Ok(out)
    }
}

impl EndpointView {
    /// The view of a record.
    pub(super) fn from_record(r: &EndpointRecord) -> EndpointView {
        EndpointView {
            host_if: get_str(&r.host_name),
            host_ifindex: r.target.ifindex,
            host_mac: Mac(r.target.host_mac),
            netns: get_str(&r.netns),
            ifname: get_str(&r.peer_name),
            container_mac: Mac(r.target.container_mac),
            addrs: r.addrs[..(r.naddrs as usize).min(MAX_ADDRS)]
                .iter()
                .filter_map(cidr_of)
                .collect(),
            mtu: r.target.mtu,
            mode: Mode::of_record(r.target.mode, r.flags & EP_BRIDGE_PORT != 0),
            network: get_str(&r.network_name),
            network_id: r.target.network,
            spoof: Spoof::from_abi(veth_common::Spoof::from_flags(r.flags)),
            adopted: r.flags & EP_ADOPTED != 0,
        }
    }
}
