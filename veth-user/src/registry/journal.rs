//! The journal (see docs/ARCHITECTURE.md, "Ownership"): an intent per operation in flight,
//! written under the lock before the kernel work, so whoever finds a half-made endpoint
//! completes or rolls it back.

use std::collections::BTreeSet;

use veth_common::{INTENT_ADD, Intent, NAME_LEN};

use crate::{
    datapath::OpsLock,
    sys::netlink::{self},
    types::Mac,
};

use super::{
    Registry,
    error::{Result, map_err},
    record::{get_str, name_key},
};

impl Registry {
    pub(super) fn intend(
        &mut self,
        op: u32,
        name: &str,
        mac: Mac,
        ifindex: u32,
        netns_ino: u64,
    ) -> Result<()> {
        let intent = Intent {
            op,
            ifindex,
            mac: mac.0,
            _pad: [0; 2],
            netns_ino,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.dp
            .journal()?
            .insert(name_key(name), intent, 0)
            .map_err(map_err("VFP_JOURNAL"))
    }

    /// Host names with a journal entry: after [`Registry::recover`] ran, operations in flight
    /// in other processes (between their locked steps). Their endpoints are theirs to finish:
    /// a repair would republish what a running `pair del` just took out of the fast path.
    pub(crate) fn in_flight(&mut self) -> Result<BTreeSet<String>> {
        self.dp
            .journal()?
            .keys()
            .map(|k| k.map(|k| get_str(&k)))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_JOURNAL"))
    }

    pub(super) fn done(&mut self, name: &str) {
        match self.dp.journal() {
            Ok(mut j) => {
                let _ = j.remove(&name_key(name));
            }
            Err(e) => log::warn!("{name}: clearing its journal entry: {e}"),
        }
    }

    /// Completes or rolls back every operation the journal holds (a process killed half-way;
    /// live operations hold the state lock, so whatever is in there was interrupted):
    /// - an add whose record exists is completed (links, devmap, addresses repaired);
    /// - an add without record is rolled back: its link (same name AND exact MAC) is deleted;
    /// - a del is completed.
    ///
    /// Returns (host name, what was done).
    pub(crate) fn recover(&mut self) -> Result<Vec<(String, String)>> {
        // Operations in flight (other processes between their locked steps) own their
        // intents: recover only when none is running; the next writer retries.
        let Some(_quiet) = OpsLock::try_exclusive(self.dp.dir())? else {
            return Ok(Vec::new());
        };
        let entries: Vec<([u8; NAME_LEN], Intent)> = self
            .dp
            .journal()?
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_JOURNAL"))?;
        let mut out = Vec::new();
        for (key, intent) in entries {
            let name = get_str(&key);
            let rec = self
                .record_by_name(&name)?
                .filter(|r| r.target.host_mac == intent.mac);
            let link =
                netlink::link_by_name(&name)?.filter(|l| l.mac.is_some_and(|m| m.0 == intent.mac));
            let what = match (intent.op, rec) {
                (INTENT_ADD, Some(rec)) => {
                    let parts = self.repair_endpoint(&rec)?;
                    self.ensure_links(&rec);
                    format!("completed an interrupted pair add (repaired: {parts:?})")
                }
                (_, Some(rec)) => {
                    self.remove_record(&rec)?;
                    "completed an interrupted pair del".to_string()
                }
                (op, None) => {
                    if let Some(link) = &link {
                        self.remove_leftover(link)?;
                    } else if intent.ifindex != 0 {
                        self.dp.detach(intent.ifindex)?;
                    }
                    if op == INTENT_ADD {
                        "rolled back an interrupted pair add".to_string()
                    } else {
                        "completed an interrupted pair del".to_string()
                    }
                }
            };
            self.done(&name);
            out.push((name, what));
        }
        Ok(out)
    }
}
