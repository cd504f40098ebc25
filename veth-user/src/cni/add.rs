//! CNI ADD: standalone (vethfp makes the pair, IPAM gives the addresses) or chained
//! (adopt the veth the previous plugin made).

use super::*;

impl Call<'_> {
    pub(super) fn add(&self) -> Result<Value> {
        if let Some(prev) = &self.conf.prev_result {
            return self.add_chained(prev);
        }
        let ipam = self.conf.ipam.as_ref().ok_or_else(|| {
            CniError::new(
                ERR_INVALID_CONFIG,
                "no \"ipam\" section: standalone vethfp needs one (e.g. {\"type\": \"host-local\", ...}); \
                 for chained mode put vethfp after ptp or bridge in a conflist",
            )
        })?;
        let ifname: IfName = self
            .ifname()
            .parse()
            .map_err(|e: crate::types::ParseError| CniError::new(ERR_INVALID_ENV, e.to_string()))?;
        let host = host_name(self.container_id(), ifname.as_str());
        // Opened (made, recovered) under the state lock, which is then released for the
        // duplicate check and the IPAM plugin (a process of its own, with its own lock): the
        // CNI spec forbids parallel operations on one container, and those of different
        // containers touch different host ends, so 32 concurrent ADDs no longer queue behind
        // each other's IPAM exec. `reg.add` takes the lock for its own map steps.
        // Opened (made, recovered) under the state lock, which is then released for the
        // duplicate check and the IPAM plugin (a process of its own, with its own lock);
        // `reg.add` takes the lock for its own map steps.
        let mut reg = self.open_registry()?;
        let out = self.ipam_add(&mut reg, &host, &ifname, &ipam.kind)?;
        let rollback = |e: CniError| -> CniError {
            if let Err(d) = self.ipam_exec(&ipam.kind, "DEL") {
                log::warn!("releasing the IPAM allocation after a failed ADD: {d}");
            }
            e
        };
        let (ipam_res, addrs) = ipam_addrs(&out, &ipam.kind).map_err(rollback)?;
        let req = self.standalone_request(&host, ifname, addrs)?;
        let view = reg.add(&req).map_err(|e| rollback(endpoint_err(e)))?;
        let dns = ipam_res
            .dns
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
            .or_else(|| self.conf.dns.clone());
        Ok(standalone_result(
            &self.conf.cni_version,
            &view,
            self.netns(),
            dns,
        ))
    }

    /// The duplicate check and the IPAM plugin's ADD, both without the state lock: the CNI
    /// spec forbids parallel operations on one container, and those of different containers
    /// touch different host ends, so 32 concurrent ADDs no longer queue behind each other's
    /// IPAM exec. Returns the plugin's output.
    fn ipam_add(
        &self,
        reg: &mut Registry,
        host: &str,
        ifname: &IfName,
        ipam: &str,
    ) -> Result<Vec<u8>> {
        reg.unlocked(|reg| -> Result<Vec<u8>> {
            let exists = reg
                .list()
                .map_err(endpoint_err)?
                .iter()
                .any(|e| e.host_if == host)
                || node::link_by_name(host).map_err(endpoint_err)?.is_some();
            if exists {
                return Err(CniError::new(
                    ERR_EXISTS,
                    format!(
                        "container {} already has {ifname} on this node (host end {host}): DEL it first",
                        self.container_id()
                    ),
                ));
            }
            self.ipam_exec(ipam, "ADD")
        })
        .map_err(endpoint_err)?
    }

    /// What standalone ADD asks the registry for, the addresses being IPAM's.
    fn standalone_request(
        &self,
        host: &str,
        ifname: IfName,
        addrs: Vec<Cidr>,
    ) -> Result<AddRequest> {
        Ok(AddRequest {
            host: host.parse().expect("host_name makes valid interface names"),
            netns: self.netns().to_string(),
            ifname,
            addrs,
            mtu: self.conf.mtu,
            mac: None,
            network: self.conf.network_name(),
            spoof: self.conf.spoof()?,
            mode: self.conf.mode()?,
            flags: EP_CNI,
            cni_owner: Some((self.container_id().to_string(), self.ifname().to_string())),
        })
    }

    pub(super) fn add_chained(&self, prev_raw: &Value) -> Result<Value> {
        if self.conf.ipam.is_some() {
            return Err(CniError::new(
                ERR_INVALID_CONFIG,
                "chained vethfp must not have an \"ipam\" section: the previous plugin owns the addresses",
            ));
        }
        let prev: CniResult = decode_value(prev_raw.clone(), "prevResult")?;
        let adopt = self.find_adoptable(&prev)?;
        let mut reg = self.open_registry()?;
        if reg
            .list()
            .map_err(endpoint_err)?
            .iter()
            .any(|e| e.host_if == adopt.host.as_str())
        {
            return Err(CniError::new(
                ERR_EXISTS,
                format!(
                    "{} (host end of {} in container {}) already has the fast path: DEL it first",
                    adopt.host,
                    self.ifname(),
                    self.container_id()
                ),
            ));
        }
        reg.adopt(&adopt).map_err(endpoint_err)?;
        let mut out = prev_raw.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("cniVersion".into(), json!(self.conf.cni_version));
        }
        Ok(out)
    }

    /// The host end of the container interface the previous plugin made: the veth peer of
    /// CNI_IFNAME in CNI_NETNS, cross-checked both ways (and against prevResult's interfaces).
    pub(super) fn find_adoptable(&self, prev: &CniResult) -> Result<AdoptRequest> {
        let ifname = self.ifname();
        let idx = prev.container_iface(ifname).ok_or_else(|| {
            CniError::new(
                ERR_CHAINED,
                format!(
                    "prevResult has no interface {ifname} in a sandbox: chained vethfp must follow a plugin that creates a veth (ptp, bridge)"
                ),
            )
        })?;
        let ns = Netns::open(self.netns()).map_err(netlink_err)?;
        let name = ifname.to_string();
        let cont = node::observe_in(&ns, &name, false)
            .map_err(endpoint_err)?
            .map(|o| o.link)
            .ok_or_else(|| {
                CniError::new(
                    ERR_CHAINED,
                    format!("no interface {ifname} in {}", self.netns()),
                )
            })?;
        let not_veth = || {
            CniError::new(
                ERR_CHAINED,
                format!(
                    "{ifname} in {} is not a veth whose peer is in this node's namespace",
                    self.netns()
                ),
            )
        };
        if cont.kind.as_deref() != Some("veth") {
            return Err(not_veth());
        }
        let host = cont
            .peer_ifindex
            .map(node::link_by_index)
            .transpose()
            .map_err(endpoint_err)?
            .flatten()
            .filter(|h| h.kind.as_deref() == Some("veth") && h.peer_ifindex == Some(cont.ifindex))
            .ok_or_else(not_veth)?;
        let listed: Vec<&str> = prev.host_ifaces().map(|i| i.name.as_str()).collect();
        if !listed.is_empty() && !listed.contains(&host.name.as_str()) {
            return Err(CniError::new(
                ERR_CHAINED,
                format!(
                    "the peer of {ifname} is {}, which prevResult does not list ({})",
                    host.name,
                    listed.join(", ")
                ),
            ));
        }
        let container_mac = cont.mac.ok_or_else(not_veth)?;
        let addrs = prev
            .ips_of(idx)
            .map(|ip| {
                ip.address
                    .parse::<Cidr>()
                    .map_err(|e| CniError::new(ERR_CHAINED, format!("prevResult address: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdoptRequest {
            host: host
                .name
                .parse()
                .map_err(|e: crate::types::ParseError| CniError::new(ERR_CHAINED, e.to_string()))?,
            netns: self.netns().to_string(),
            ifname: ifname.to_string(),
            container_mac,
            addrs,
            network: self.conf.network_name(),
            spoof: self.conf.spoof()?,
            flags: EP_CNI,
            cni_owner: Some((self.container_id().to_string(), ifname.to_string())),
        })
    }
}

/// The IPAM plugin's result and its addresses (at least one), or why they are unusable.
fn ipam_addrs(out: &[u8], ipam: &str) -> Result<(CniResult, Vec<Cidr>)> {
    let res: CniResult = decode(out, "IPAM result").map_err(|e| CniError::new(ERR_IPAM, e.msg))?;
    let addrs = res
        .ips
        .iter()
        .map(|ip| {
            ip.address
                .parse::<Cidr>()
                .map_err(|e| CniError::new(ERR_IPAM, format!("IPAM plugin {ipam} returned {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(CniError::new(
            ERR_IPAM,
            format!("IPAM plugin {ipam} returned no addresses"),
        ));
    }
    Ok((res, addrs))
}
