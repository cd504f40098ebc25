//! The node as the front ends may see it: the state directory's identity and lock, whether an
//! interface is present, and the link event stream. Thin wrappers over `datapath` and `sys`,
//! so that the agent and the CNI plugin depend on the registry alone (data flows one way:
//! front end → registry → datapath/sys → kernel).

use std::path::Path;

pub(crate) use crate::datapath::StateLock;
pub(crate) use crate::sys::events::{LinkEvent, LinkTable, watch as watch_links};
pub(crate) use crate::sys::netlink::{Link, Netns, may_block_here};

use super::{EndpointError, Registry};
use crate::{
    datapath::{Datapath, prepare_bpffs},
    sys::netlink,
};

/// Identity of the state pinned in `dir` (device and inode of its config map pin): changes
/// when the state directory is removed or replaced behind a process's back.
pub(crate) fn state_identity(dir: &Path) -> Option<(u64, u64)> {
    Datapath::pin_identity(dir)
}

/// Takes the state lock of `dir` (mounting a bpffs there first if needed): writers of one
/// state never interleave.
pub(crate) fn lock_state(dir: &Path) -> Result<StateLock, EndpointError> {
    prepare_bpffs(dir)?;
    Ok(StateLock::acquire(dir)?)
}

/// Mounts a bpffs at `dir` if it is not on one yet.
pub(crate) fn prepare_state_dir(dir: &Path) -> Result<(), EndpointError> {
    Ok(prepare_bpffs(dir)?)
}

/// Is an interface with this index present in the node?
pub(crate) fn link_present(ifindex: u32) -> Result<bool, EndpointError> {
    Ok(netlink::link_by_index(ifindex)?.is_some())
}

/// The node's interface with this index.
pub(crate) fn link_by_index(ifindex: u32) -> Result<Option<Link>, EndpointError> {
    Ok(netlink::link_by_index(ifindex)?)
}

/// The node's interface with this name.
pub(crate) fn link_by_name(name: &str) -> Result<Option<Link>, EndpointError> {
    Ok(netlink::link_by_name(name)?)
}

/// An interface inside another network namespace, with its addresses and the destinations
/// routed through it.
pub(crate) struct Observed {
    pub link: Link,
    pub addrs: Vec<(std::net::IpAddr, u8)>,
    pub routes: Vec<(std::net::IpAddr, u8)>,
}

/// Looks `name` up inside `ns` (addresses and routes only with `details`).
pub(crate) fn observe_in(
    ns: &Netns,
    name: &str,
    details: bool,
) -> Result<Option<Observed>, EndpointError> {
    let name = name.to_string();
    Ok(netlink::in_netns(ns, move || {
        let Some(link) = netlink::link_by_name(&name)? else {
            return Ok(None);
        };
        let (addrs, routes) = if details {
            (
                crate::datapath::inspect::addresses(link.ifindex)?,
                netlink::routes_via(link.ifindex)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Some(Observed {
            link,
            addrs,
            routes,
        }))
    })?)
}

/// What the kernel says is attached to an endpoint's host end.
pub(crate) struct FastPathSeen {
    /// Both of our filters are attached and run this state's programs.
    pub fast_path: bool,
    /// "name#prog_id@prio" of every cls_bpf filter on ingress and on egress.
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub xdp_link: bool,
}

impl Registry {
    /// The fast path of host end `ifindex` as the kernel shows it (CNI CHECK): its filters
    /// and their owner, and whether an XDP link is pinned.
    pub(crate) fn fast_path_seen(&mut self, ifindex: u32) -> Result<FastPathSeen, EndpointError> {
        let attached = crate::datapath::inspect::attached(&self.dp, ifindex)?;
        let xdp = self.dp.link_pin(crate::datapath::Hook::Xdp, ifindex);
        use crate::datapath::inspect::Attached;
        Ok(FastPathSeen {
            fast_path: attached.has_fast_path(),
            ingress: Attached::describe(&attached.ingress),
            egress: Attached::describe(&attached.egress),
            xdp_link: crate::datapath::inspect::is_xdp_link(&xdp),
        })
    }

    /// What the kernel lacks of the description an endpoint was made from (its container
    /// side and node side, [`super::desired`]), counted, nothing changed: CNI CHECK compares
    /// with the same description that `add` created and repair restores. None: no endpoint
    /// with that host end. An adopted endpoint or a bridge port has no description (vethfp
    /// did not make its sides): nothing missing.
    pub(crate) fn desired_missing(
        &mut self,
        host_ifindex: u32,
    ) -> Result<Option<DesiredMissing>, EndpointError> {
        use veth_common::{EP_ADOPTED, EP_BRIDGE_PORT};
        let Some(rec) = self.record_by_ifindex(host_ifindex)? else {
            return Ok(None);
        };
        let mut missing = DesiredMissing::default();
        if rec.flags & (EP_ADOPTED | EP_BRIDGE_PORT) != 0 {
            return Ok(Some(missing));
        }
        let addrs: Vec<crate::types::Cidr> = super::record::record_addrs(&rec).collect();
        let mac = |m: [u8; 6]| crate::types::Mac(m);
        let node = super::desired::node_side(&addrs, mac(rec.target.container_mac));
        missing.node = netlink::apply(
            netlink::At::Node(host_ifindex),
            &node,
            netlink::Apply::Count,
            None,
        )?;
        let ns = Netns::open(&super::record::get_str(&rec.netns))?;
        let peer = super::record::get_str(&rec.peer_name);
        let container = super::desired::container_side(&addrs, mac(rec.target.host_mac));
        missing.container = netlink::apply(
            netlink::At::Container(&ns, &peer),
            &container,
            netlink::Apply::Count,
            None,
        )?;
        Ok(Some(missing))
    }

    /// Turns the BPF debug events (aya-log) on or off.
    pub(crate) fn set_bpf_log(&mut self, on: bool) -> Result<(), EndpointError> {
        let flags = self.dp.flags()?;
        let bit = veth_common::CFG_BPF_LOG;
        let want = if on { flags | bit } else { flags & !bit };
        if want != flags {
            self.dp.set_flags(want)?;
        }
        Ok(())
    }

    /// The id of the loaded tc ingress program (its aya-log ring buffer is the log source).
    pub(crate) fn log_program_id(&mut self) -> Result<u32, EndpointError> {
        Ok(self.dp.program_id(crate::datapath::Program::TcIngress)?)
    }

    /// Checks that the state in `dir` opens and its programs load (CNI STATUS). Errors say
    /// which step failed; the bool is true if the failure is of an existing state.
    pub(crate) fn probe(dir: &Path) -> Result<(), (&'static str, String, bool)> {
        let in_use = dir.join(veth_common::MAP_ENDPOINTS).exists();
        prepare_bpffs(dir).map_err(|e| ("bpffs is not usable", e.to_string(), in_use))?;
        let mut dp = Datapath::open(dir).map_err(|e| {
            let limited = in_use || matches!(e, crate::datapath::DatapathError::Abi { .. });
            (
                "the pinned datapath state cannot be opened",
                e.to_string(),
                limited,
            )
        })?;
        dp.load_programs()
            .map_err(|e| ("the BPF programs do not load", e.to_string(), false))?;
        Ok(())
    }
}

/// What the kernel lacks of an endpoint's description, per side (see
/// [`Registry::desired_missing`]).
#[derive(Debug, Default)]
pub(crate) struct DesiredMissing {
    pub container: netlink::Applied,
    pub node: netlink::Applied,
}
