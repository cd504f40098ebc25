//! CNI DEL: remove only what this container ID was added with; idempotent.

use super::*;

impl Call<'_> {
    pub(super) fn del(&self) -> Result<()> {
        // The IPAM plugin's DEL (a process of its own, ~4 ms) runs while the veth delete
        // (~20 ms in the kernel) does, not after it. Releasing the address first is the order
        // the reference plugins use; an IPAM DEL is idempotent, so one that ran before a
        // failed endpoint removal is simply repeated by the runtime's retry.
        std::thread::scope(|s| {
            let ipam = self
                .conf
                .ipam
                .as_ref()
                .map(|ipam| s.spawn(move || self.ipam_exec(&ipam.kind, "DEL")));
            let ours = self.del_endpoints();
            let ipam = match ipam {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
                    .map(|_| ()),
                None => Ok(()),
            };
            ours.and(ipam)
        })
    }

    /// Removes the endpoints this container ID (and ifname) was added with.
    fn del_endpoints(&self) -> Result<()> {
        let ifname = self.ifname();
        let derived = host_name(self.container_id(), ifname);
        // prevResult is optional for DEL and may be anything; only its names are used.
        let prev_hosts: BTreeSet<String> = self
            .prev_result()
            .ok()
            .flatten()
            .map(|p| p.host_ifaces().map(|i| i.name.clone()).collect())
            .unwrap_or_default();
        match Registry::open(&self.conf.bpffs_dir()) {
            Ok(mut reg) => {
                let list = reg.list().map_err(endpoint_err)?;
                // Only what this container ID (and ifname) was added with: a DEL of another
                // container (a stale DEL whose /proc/PID/ns/net path was reused) leaves a
                // live endpoint alone. Endpoints made before owners were recorded match by
                // the name derived from the container ID, or prevResult's host interface.
                let id = truncated(self.container_id(), veth_common::CONTAINER_ID_LEN - 1);
                let mut mine = Vec::new();
                for e in &list {
                    let is_mine = match reg.cni_owner(e.host_ifindex).map_err(endpoint_err)? {
                        Some((owner_id, owner_if)) => owner_id == id && owner_if == ifname,
                        None => {
                            e.host_if == derived
                                || (e.ifname == ifname && prev_hosts.contains(&e.host_if))
                        }
                    };
                    if is_mine {
                        mine.push(e);
                    } else if e.ifname == ifname
                        && self.env.netns.as_deref() == Some(e.netns.as_str())
                    {
                        log::info!(
                            "DEL of container {}: {} in the same netns belongs to another container; left alone",
                            self.container_id(),
                            e.host_if
                        );
                    }
                }
                for e in mine {
                    match reg.del(&e.host_if) {
                        Ok(()) | Err(EndpointError::NotFound(_)) => {}
                        Err(err) => return Err(endpoint_err(err)),
                    }
                }
            }
            // No bpffs there: nothing can be registered, so nothing to remove.
            Err(EndpointError::Datapath(
                DatapathError::NotBpffs(_) | DatapathError::PrivateMounts,
            )) => {}
            Err(e) => return Err(endpoint_err(e)),
        }
        Ok(())
    }
}
