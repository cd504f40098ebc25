//! Uplinks: the node's interfaces whose traffic to local endpoints takes the fast path.

use veth_common::{CFG_EGRESS_FAST, NAME_LEN, Uplink};

use crate::sys::netlink::{self};

use super::{
    Registry,
    endpoint::Undo,
    error::{Result, UplinkError, map_err},
    record::{get_str, put_str},
    view::UplinkView,
};

impl Registry {
    /// Attaches the uplink fast path to `name` (an interface of the node): packets from
    /// outside for local endpoints are delivered straight into the container; with
    /// `egress_fast`, container traffic the FIB routes out of this uplink goes straight out.
    pub fn uplink_attach(&mut self, name: &str, egress_fast: bool) -> Result<UplinkView> {
        let link =
            netlink::link_by_name(name)?.ok_or_else(|| UplinkError::NoSuchUplink(name.into()))?;
        if self
            .records()?
            .iter()
            .any(|r| r.target.ifindex == link.ifindex)
        {
            return Err(UplinkError::UplinkIsEndpoint(name.into()).into());
        }
        let mut up = Uplink {
            ifindex: link.ifindex,
            flags: 0,
            slot: self.free_slot()?,
            name: [0; NAME_LEN],
        };
        put_str(&mut up.name, name);
        let mut undo = vec![Undo::Uplink(link.ifindex)];
        let r: Result<()> = (|| {
            self.dp.reset_counters(up.slot)?;
            self.dp
                .uplinks()?
                .insert(link.ifindex, up, 0)
                .map_err(map_err("VFP_UPLINKS"))?;
            self.dp.attach_uplink(name, link.ifindex)?;
            Ok(())
        })();
        if let Err(e) = r {
            undo.push(Undo::UplinkLink(link.ifindex));
            self.rollback(undo);
            return Err(e);
        }
        self.set_egress_fast(egress_fast)?;
        Ok(UplinkView::from(&up))
    }

    /// Detaches the uplink fast path from `name`.
    pub fn uplink_detach(&mut self, name: &str) -> Result<()> {
        let up = self
            .uplink_records()?
            .into_iter()
            .find(|u| get_str(&u.name) == name)
            .ok_or_else(|| UplinkError::NoSuchUplink(name.into()))?;
        self.rollback(vec![Undo::Uplink(up.ifindex), Undo::UplinkLink(up.ifindex)]);
        Ok(())
    }

    pub(super) fn uplink_records(&mut self) -> Result<Vec<Uplink>> {
        let map = self.dp.uplinks()?;
        let mut out = Vec::new();
        for item in map.iter() {
            out.push(item.map_err(map_err("VFP_UPLINKS"))?.1);
        }
        out.sort_by_key(|u| u.name);
        Ok(out)
    }

    pub fn uplinks(&mut self) -> Result<Vec<UplinkView>> {
        Ok(self
            .uplink_records()?
            .iter()
            .map(UplinkView::from)
            .collect())
    }

    /// `--egress fast|kernel`: node-wide switch for container → outside traffic.
    pub fn set_egress_fast(&mut self, fast: bool) -> Result<()> {
        let flags = self.dp.flags()?;
        let flags = if fast {
            flags | CFG_EGRESS_FAST
        } else {
            flags & !CFG_EGRESS_FAST
        };
        Ok(self.dp.set_flags(flags)?)
    }
}
