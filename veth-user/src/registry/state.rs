//! Opening a state directory: the state lock, the binding of a state to its node namespace,
//! clearing a stale state, and running kernel work without the lock.

use std::path::Path;

use crate::{
    datapath::{
        Datapath, OpsLock, StateLock, current_netns_cookie, prepare_bpffs_made, remove_made_dirs,
    },
    sys::netlink::{self},
};

use super::{
    Registry,
    error::{OwnershipError, Result, map_err},
};

/// Options for [`Registry::open_with`]; they apply when a state's maps are first created (an
/// existing state keeps its sizes).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Capacity of the admission flow table (LRU).
    pub flow_table_size: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            flow_table_size: veth_common::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

impl Registry {
    /// Opens for changes: the state lock is held until the registry is dropped, so concurrent
    /// processes (CLI calls, the agent) never interleave their updates.
    pub fn open(dir: &Path) -> Result<Registry> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// [`Registry::open`] with options that apply when the state's maps are first created.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Registry> {
        // A refused or failed open leaves no directory it made behind (nor any pin: see
        // Datapath::open_checked).
        let made = prepare_bpffs_made(dir)?;
        let r = Self::open_locked(dir, opts.flow_table_size);
        if r.is_err() {
            remove_made_dirs(&made);
        }
        r
    }

    pub(super) fn open_locked(dir: &Path, flow_table_size: u32) -> Result<Registry> {
        // One-time work that needs no lock, done before it: concurrent writers queue for it.
        crate::datapath::detect_features();
        if let Err(e) = netlink::warm() {
            log::debug!("netlink session: {e}"); // the first real call reports it
        }
        let lock = StateLock::acquire(dir)?;
        let dp = Datapath::open_checked(dir, flow_table_size, Self::check_owner)?;
        let mut reg = Registry {
            dp,
            lock: Some(lock),
            _ops: None,
            snapshot: None,
        };
        reg.bind(true)?;
        // Every write operation re-reads the node's conntrack TCP policy (see admission.rs).
        crate::registry::flows::sync_tcp(&mut reg.dp)?;
        for (name, what) in reg.recover()? {
            log::warn!("{name}: {what}");
        }
        // From here on this process is an operation in flight: nobody recovers its intents.
        // Never blocks: whoever holds it exclusively holds the state lock too, and we do.
        reg._ops = Some(OpsLock::shared(dir)?);
        Ok(reg)
    }

    /// Opens for reading only (list, stats): no lock, so a long `stats --watch` never blocks
    /// writers. Each map read is atomic per entry.
    pub fn open_read(dir: &Path) -> Result<Registry> {
        Self::open_read_with(dir, &OpenOptions::default())
    }

    /// [`Registry::open_read`] with options that apply if this call creates the state.
    pub fn open_read_with(dir: &Path, opts: &OpenOptions) -> Result<Registry> {
        let dp = Datapath::open_checked(dir, opts.flow_table_size, Self::check_owner)?;
        let mut reg = Registry {
            dp,
            lock: None,
            _ops: None,
            snapshot: None,
        };
        reg.bind(false)?;
        Ok(reg)
    }

    /// Binds the state to the node namespace it is used from (netns cookie in config slots
    /// 6–7). A call from another namespace is refused while the owner is alive (any pinned
    /// link still attached to a device); once every recorded interface is gone, the first
    /// write clears the stale state and binds it to the caller.
    pub(crate) fn bind(&mut self, write: bool) -> Result<()> {
        let here = current_netns_cookie().map_err(OwnershipError::Cookie)?;
        let bound = self.dp.netns_cookie()?;
        if bound == here {
            if write && self.dp.state_id()? == 0 {
                self.dp.new_state_id()?;
            }
            return Ok(());
        }
        if bound == 0 {
            if write {
                // A state made before the binding existed: it is this node's from now on.
                self.dp.set_netns_cookie(here)?;
                if self.dp.state_id()? == 0 {
                    self.dp.new_state_id()?;
                }
            }
            return Ok(());
        }
        Self::check_owner(&mut self.dp)?;
        let dir = self.dp.dir().display().to_string();
        if !write {
            log::warn!(
                "state {dir} was made in network namespace cookie {bound}, which has none of its \
                 interfaces any more (this is cookie {here}): its records are stale; the next \
                 write clears them"
            );
            return Ok(());
        }
        let n = self.clear_stale()?;
        self.dp.set_netns_cookie(here)?;
        let id = self.dp.new_state_id()?;
        log::warn!(
            "state {dir} belonged to network namespace cookie {bound}, whose interfaces are all \
             gone: cleared its {n} stale endpoint record(s); now bound to this namespace \
             (cookie {here}, state id {id:016x})"
        );
        Ok(())
    }

    /// Refuses a state bound to another node namespace that is still alive (any of its
    /// interfaces still attached). Reads only: run on the state as found, before anything is
    /// loaded or pinned ([`Datapath::open_checked`]).
    pub(super) fn check_owner(dp: &mut Datapath) -> Result<()> {
        let here = current_netns_cookie().map_err(OwnershipError::Cookie)?;
        let bound = dp.netns_cookie()?;
        if bound == 0 || bound == here {
            return Ok(());
        }
        let live = dp.attached_link_ifindexes().len();
        if live > 0 {
            return Err(OwnershipError::OtherNamespace {
                dir: dp.dir().display().to_string(),
                owner: bound,
                here,
                live,
            }
            .into());
        }
        Ok(())
    }

    /// Empties every map of a state whose node namespace is gone and removes its (detached)
    /// link pins. Never touches a link: the ifindexes in there mean other devices here.
    pub(super) fn clear_stale(&mut self) -> Result<usize> {
        let n = self.records()?.len();
        self.snapshot = None;
        macro_rules! clear {
            ($m:ident, $what:literal) => {{
                let keys: Vec<_> = self
                    .dp
                    .$m()?
                    .keys()
                    .collect::<std::result::Result<_, _>>()
                    .map_err(map_err($what))?;
                let mut m = self.dp.$m()?;
                for k in keys {
                    let _ = m.remove(&k);
                }
            }};
        }
        clear!(ep4, "VFP_EP4");
        clear!(ep6, "VFP_EP6");
        clear!(l2, "VFP_L2");
        clear!(endpoints, "VFP_ENDPOINTS");
        clear!(uplinks, "VFP_UPLINKS");
        clear!(journal, "VFP_JOURNAL");
        clear!(cni_owners, "VFP_CNI_OWNERS");
        let keys: Vec<u32> = self
            .dp
            .devmap()?
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VFP_DEVMAP"))?;
        for k in keys {
            let _ = self.dp.devmap()?.remove(k);
        }
        let _ = self.dp.prune_pins(&Default::default());
        Ok(n)
    }

    pub(crate) fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Runs `f` without the state lock (kernel work: veth create and delete, addresses,
    /// routes), then takes the lock again. The operation's journal intent, written under the
    /// lock before, marks what `f` creates as ours; the ops lock keeps recovery away from it.
    /// A registry opened without the lock just runs `f`.
    pub(crate) fn unlocked<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T> {
        let held = self.lock.take().is_some();
        let r = f(self);
        if held {
            self.snapshot = None;
            self.lock = Some(StateLock::acquire(self.dp.dir())?);
        }
        Ok(r)
    }
}
