//! CNI GC: remove endpoints of this network that the runtime's valid attachments no longer
//! name (nothing without the list).

use super::*;

impl Call<'_> {
    pub(super) fn gc(&self) -> Result<()> {
        // Without the list (cnitool and older runtimes send none) nothing is known to be
        // garbage: removing every endpoint would cut off running containers.
        let Some(valid) = self.conf.valid_attachments.as_ref() else {
            log::warn!(
                "GC without \"cni.dev/valid-attachments\" in the config: nothing removed \
                 (the runtime must list the attachments to keep)"
            );
            return Ok(());
        };
        let keep: BTreeSet<String> = valid
            .iter()
            .map(|a| host_name(&a.container_id, &a.ifname))
            .collect();
        let net = registry::network_id(&self.conf.network_name());
        match Registry::open(&self.conf.bpffs_dir()) {
            Ok(mut reg) => {
                let list = reg.list().map_err(endpoint_err)?;
                for e in list.iter().filter(|e| e.network_id == net) {
                    let stale = if is_plugin_host_name(&e.host_if) && !e.adopted {
                        !keep.contains(&e.host_if)
                    } else if !e.adopted {
                        false
                    } else {
                        // Adopted host ends carry the previous plugin's name: only ones whose
                        // interface is gone are known to be garbage.
                        node::link_by_index(e.host_ifindex)
                            .map_err(endpoint_err)?
                            .is_none_or(|l| l.name != e.host_if)
                    };
                    if stale {
                        match reg.del(&e.host_if) {
                            Ok(()) | Err(EndpointError::NotFound(_)) => {}
                            Err(err) => return Err(endpoint_err(err)),
                        }
                    }
                }
            }
            Err(EndpointError::Datapath(
                DatapathError::NotBpffs(_) | DatapathError::PrivateMounts,
            )) => {}
            Err(e) => return Err(endpoint_err(e)),
        }
        if let Some(ipam) = &self.conf.ipam {
            let plugin = self.find_plugin(&ipam.kind)?;
            if self.plugin_supports(&plugin, "1.1.0") {
                exec_plugin(&plugin, "GC", self.env, self.stdin)?;
            }
        }
        Ok(())
    }
}
