//! CNI CHECK: the endpoint, both ends, addresses, routes and the attached fast path as the
//! kernel shows them, against prevResult.

use super::*;

impl Call<'_> {
    pub(super) fn check(&self) -> Result<()> {
        let prev = self.prev_result()?.ok_or_else(|| {
            CniError::new(ERR_INVALID_CONFIG, "CHECK needs prevResult in the config")
        })?;
        let ifname = self.ifname();
        let cidx = prev.container_iface(ifname).ok_or_else(|| {
            check_fail(format!("prevResult has no interface {ifname} in a sandbox"))
        })?;
        let mut reg = Registry::open_read(&self.conf.bpffs_dir()).map_err(endpoint_err)?;
        let ep = self.endpoint_of(&mut reg, &prev)?;
        check_host_end(&ep, &prev)?;
        self.check_container_end(&ep, &prev, cidx)?;
        check_description(&mut reg, &ep)?;
        check_fast_path(&mut reg, &ep)
    }

    /// The endpoint this call's container interface was added as: by the host name derived
    /// from (CNI_CONTAINERID, CNI_IFNAME), or adopted under a host name prevResult lists.
    fn endpoint_of(&self, reg: &mut Registry, prev: &CniResult) -> Result<EndpointView> {
        let ifname = self.ifname();
        let derived = host_name(self.container_id(), ifname);
        let prev_hosts: Vec<&str> = prev.host_ifaces().map(|i| i.name.as_str()).collect();
        reg.list()
            .map_err(endpoint_err)?
            .into_iter()
            .find(|e| {
                e.host_if == derived || (e.ifname == ifname && prev_hosts.contains(&&*e.host_if))
            })
            .ok_or_else(|| {
                check_fail(format!(
                    "no vethfp endpoint for {ifname} of container {}",
                    self.container_id()
                ))
            })
    }

    /// The container end, its addresses and routes, seen from inside the sandbox.
    fn check_container_end(&self, ep: &EndpointView, prev: &CniResult, cidx: usize) -> Result<()> {
        let ifname = self.ifname();
        let fail = check_fail;
        let want_ns = prev.interfaces[cidx].sandbox.as_deref().unwrap_or_default();
        let ns = Netns::open(self.netns()).map_err(netlink_err)?;
        if want_ns != self.netns() && Netns::open(want_ns).map(|n| n.ino()).ok() != Some(ns.ino()) {
            return Err(fail(format!(
                "prevResult puts {ifname} in {want_ns}, not in CNI_NETNS {}",
                self.netns()
            )));
        }
        let name = ifname.to_string();
        let node::Observed {
            link,
            addrs,
            routes,
        } = node::observe_in(&ns, &name, true)
            .map_err(endpoint_err)?
            .ok_or_else(|| fail(format!("no interface {ifname} in {}", self.netns())))?;
        if link.peer_ifindex != Some(ep.host_ifindex) {
            return Err(fail(format!(
                "{ifname} is no longer the peer of host end {}",
                ep.host_if
            )));
        }
        let want_mac = &prev.interfaces[cidx].mac;
        if link.mac != Some(ep.container_mac)
            || (!want_mac.is_empty()
                && !want_mac.eq_ignore_ascii_case(&ep.container_mac.to_string()))
        {
            return Err(fail(format!(
                "{ifname} has MAC {}, prevResult says {want_mac}",
                link.mac.map(|m| m.to_string()).unwrap_or_default()
            )));
        }
        for ip in prev.ips_of(cidx) {
            let (a, p) = parse_prefix(&ip.address)
                .ok_or_else(|| fail(format!("prevResult address '{}' is invalid", ip.address)))?;
            if !addrs.contains(&(a, p)) {
                return Err(fail(format!("{ifname} lacks address {}", ip.address)));
            }
            if !ep.addrs.iter().any(|c| c.addr == a) {
                return Err(fail(format!(
                    "address {a} is not registered in the fast path of {}",
                    ep.host_if
                )));
            }
        }
        for r in &prev.routes {
            let dst = parse_prefix(&r.dst)
                .ok_or_else(|| fail(format!("prevResult route '{}' is invalid", r.dst)))?;
            if !routes.contains(&dst) {
                return Err(fail(format!("{ifname} lacks route {}", r.dst)));
            }
        }
        Ok(())
    }
}

fn check_fail(msg: String) -> CniError {
    CniError::new(ERR_CHECK, msg)
}

/// The host end: same interface as registered, and as listed in prevResult.
fn check_host_end(ep: &EndpointView, prev: &CniResult) -> Result<()> {
    let fail = check_fail;
    let host = node::link_by_index(ep.host_ifindex)
        .map_err(endpoint_err)?
        .filter(|l| l.name == ep.host_if)
        .ok_or_else(|| fail(format!("host end {} is gone", ep.host_if)))?;
    if host.mac != Some(ep.host_mac) {
        return Err(fail(format!("host end {} changed its MAC", ep.host_if)));
    }
    if let Some(i) = prev.host_ifaces().find(|i| i.name == ep.host_if)
        && !i.mac.is_empty()
        && !i.mac.eq_ignore_ascii_case(&ep.host_mac.to_string())
    {
        return Err(fail(format!(
            "host end {} has MAC {}, prevResult says {}",
            ep.host_if, ep.host_mac, i.mac
        )));
    }
    Ok(())
}

/// Both sides as the endpoint was made (registry/desired.rs: addresses, the gateway
/// neighbours, on-link and default routes in the container; host routes and neighbours on
/// the node): the same description `add` created and repair restores, beyond what
/// prevResult lists (it names no neighbours and no node routes).
fn check_description(reg: &mut Registry, ep: &EndpointView) -> Result<()> {
    let Some(m) = reg
        .desired_missing(ep.host_ifindex)
        .map_err(|e| check_fail(e.to_string()))?
    else {
        return Err(check_fail(format!("endpoint {} is gone", ep.host_if)));
    };
    for (side, a) in [("container", m.container), ("node", m.node)] {
        if a.total() > 0 {
            return Err(check_fail(format!(
                "the {side} side of {} lacks {} address(es), {} neighbour(s) and {} route(s) \
                 it was made with",
                ep.host_if, a.addrs, a.neighbours, a.routes
            )));
        }
    }
    Ok(())
}

/// The fast path: our filters attached and running this state's programs (asked from the
/// kernel; cls_bpf filters need no pin to stay).
fn check_fast_path(reg: &mut Registry, ep: &EndpointView) -> Result<()> {
    let fail = check_fail;
    let seen = reg
        .fast_path_seen(ep.host_ifindex)
        .map_err(|e| fail(e.to_string()))?;
    if !seen.fast_path {
        return Err(fail(format!(
            "the fast path programs are not attached to {} (ingress filters {:?}, egress \
             filters {:?})",
            ep.host_if, seen.ingress, seen.egress
        )));
    }
    if ep.mode == Mode::Xdp && !seen.xdp_link {
        return Err(fail(format!(
            "{} is in xdp mode but has no XDP link",
            ep.host_if
        )));
    }
    Ok(())
}
