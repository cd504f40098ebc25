//! The datapath as the control plane sees it: the embedded BPF object, its pinned maps,
//! programs and links under `--bpffs DIR`, and typed access to the maps.
//!
//! Layout of DIR (directories 0700, every pin 0600: only root may read or change the state):
//! ```text
//! DIR/VFP_EP4, VFP_EP6, VFP_ENDPOINTS, VFP_COUNTERS, VFP_CONFIG   maps, by name
//! DIR/progs/<program>-<object hash>                                 loaded programs
//! DIR/links/xdp-<ifindex>, uplink-ingress-<ifindex>, uplink-egress-<ifindex>   pinned links
//! DIR/version -> "VERSION (commit C)"     the vethfp that created or last upgraded the state
//! ```
//! Endpoint host ends carry no pinned link for their tc hooks: those are cls_bpf filters on
//! the device's clsact qdisc ([`filters`]), which live with the device.
//! Programs are pinned per object hash: a CLI call reuses the programs an earlier call loaded
//! from the same binary (no verification per endpoint), and a new binary loads its own.

mod attach;
mod bpffs;
pub mod filters;
pub mod inspect;
pub mod links;
mod locks;
mod maps;
pub mod migrate;

pub use bpffs::prepare_bpffs;
pub(crate) use bpffs::{prepare_bpffs_made, remove_made_dirs};
pub use locks::{OPS_DIR, OpsLock, StateLock};
use {attach::prog_pin, bpffs::restrict, maps::map_err, maps::map_from_pin};

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use crate::sys::bpf::pinned_link_ifindex;
pub use crate::sys::{netns::current_netns_cookie, random::random_u64};

use aya::{Ebpf, EbpfLoader, programs::ProgramError};
use veth_common::{ABI_VERSION, CONFIG_ABI, DEFAULT_FLOW_TABLE_SIZE, MAP_CONFIG, MAP_FLOWS, MAPS};

/// The BPF object built from `veth-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veth-ebpf"));

/// The symlink in the state dir whose target is the version (`LONG_VERSION`) of the vethfp
/// that created the state or last upgraded it (loaded its programs or maps into it).
pub const VERSION_LINK: &str = "version";

/// Default state directory.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vethfp";

// Programs and hooks are the typed ABI's (veth-common), the one place for them: the datapath
// takes them as values, their names (pins, ELF symbols, logs) come from `name()`. Endpoint
// hooks (`Hook::TcIngress`, `Hook::TcEgress`) are cls_bpf filters on the host end's clsact
// qdisc (see [`filters`]); the others are pinned links.
pub use veth_common::{Hook, Program};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{0} is not inside a mounted bpffs: mount one (`mount -t bpf bpf DIR`) and use a \
         directory in it (e.g. DIR/vethfp), or use a directory under /sys/fs/bpf"
    )]
    NotBpffs(PathBuf),
    #[error(
        "could not mount bpffs at /sys/fs/bpf ({0}): mount it yourself with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    Mount(String),
    #[error(
        "/sys/fs/bpf is not a bpffs in this mount namespace, which is not the system's (`ip netns \
         exec` makes one and remounts /sys, hiding /sys/fs/bpf): a state made here would vanish \
         with this process and its endpoints could not be found again. Enter the node's network \
         namespace alone (`nsenter --net=/run/netns/NAME vethfp …`), or use a state directory \
         on a bpffs that outlives this process"
    )]
    PrivateMounts,
    #[error("could not create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", abi_message(dir, *found, *want))]
    Abi { dir: PathBuf, found: u32, want: u32 },
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching {prog} to {iface}: {source}")]
    Attach {
        prog: &'static str,
        iface: String,
        source: ProgramError,
    },
    #[error("tcx link on {iface}: {source}")]
    Link {
        iface: String,
        source: aya::programs::links::LinkError,
    },
    #[error("tc filter on {iface}: {what}")]
    Filter { iface: String, what: String },
    #[error(
        "{iface} already has a filter at vethfp's place on {dir} (prio {prio:#x} handle \
         {handle:#x}) running program id {prog_id} ({name:?}), which is not a program of this \
         state: vethfp never replaces or deletes another's filter; remove it (`tc filter del \
         dev {iface} {dir} prio {prio}`) if it is stale, or use another interface"
    )]
    ForeignFilter {
        iface: String,
        dir: String,
        prio: u16,
        handle: u32,
        prog_id: u32,
        name: String,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// What a refused state of another map ABI is, and what to do about it (nothing was changed).
fn abi_message(dir: &Path, found: u32, want: u32) -> String {
    let by = fs::read_link(dir.join(VERSION_LINK))
        .map(|t| format!(" {}", t.to_string_lossy()))
        .unwrap_or_default();
    let dir = dir.display();
    if found < want {
        format!(
            "pinned state in {dir} was made by an older vethfp{by} (map ABI {found}; this \
             vethfp uses {want}, and upgrades states of ABI {oldest} (0.1.0) and later in place) \
             and is left as it is: remove its endpoints, uplinks and bridges with the vethfp \
             that made them, then delete {dir} (or keep using that vethfp)",
            oldest = migrate::OLDEST_MIGRATABLE_ABI
        )
    } else {
        format!(
            "pinned state in {dir} was made by a newer vethfp{by} (map ABI {found}; this \
             vethfp uses {want}) and is left as it is: use that vethfp (or a newer one) on it, or \
             another state directory"
        )
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// aya detects the kernel's BPF features once per process, on the first use of some maps (a
/// devmap): ten BTF loads, four test programs, three maps. Done here, before a writer takes
/// the state lock, instead of inside its first locked step.
pub fn detect_features() {
    let _ = aya::features();
}

/// FNV-1a of the embedded object: names the pinned programs of this build. Computed at build
/// time (build.rs), so no CLI call spends time hashing the object.
pub fn object_hash() -> u64 {
    include!(concat!(env!("OUT_DIR"), "/object_hash.rs"))
}

/// Every program of the datapath; all are loaded and pinned together, once per build.
pub const PROGRAMS: [Program; 6] = Program::ALL;

/// The opened datapath: maps (pinned, shared by every process) and the means to attach.
pub struct Datapath {
    dir: PathBuf,
    maps: std::collections::HashMap<&'static str, aya::maps::Map>,
    /// The netlink session for clsact/cls_bpf work, opened on first use.
    tc: std::sync::Mutex<Option<crate::sys::tc_filter::TcSession>>,
    /// Capacity of `VFP_FLOWS` if this process creates it (`--flow-table-size`).
    flow_table_size: u32,
}

impl Datapath {
    /// Opens (creating on first use) the pinned datapath state in `dir`.
    ///
    /// The first call with a given build loads the object (creating or reusing the pinned
    /// maps), verifies every program and pins it. Later calls open maps and programs from their
    /// pins and never parse the object or the kernel's BTF: that is most of a CLI call's cost.
    pub fn open(dir: &Path) -> Result<Datapath> {
        Self::open_checked(
            dir,
            DEFAULT_FLOW_TABLE_SIZE,
            |_| Ok::<(), DatapathError>(()),
        )
    }

    /// [`Datapath::open`] that first runs `check` on the state as it was found (its pinned
    /// maps; not run on a state without a config map, i.e. a new one). Nothing is loaded,
    /// pinned or written before the map ABI and `check` accept the state, and a call that
    /// fails for any reason removes the pins and directories it created: a refused state is
    /// left exactly as it was. A state missing only what a newer build added (a map, this
    /// build's programs) is completed: that is an upgrade. `flow_table_size`: the capacity of
    /// `VFP_FLOWS` if this call creates it (an existing state keeps the size it was made with).
    pub fn open_checked<E: From<DatapathError>>(
        dir: &Path,
        flow_table_size: u32,
        check: impl FnOnce(&mut Datapath) -> Result<(), E>,
    ) -> Result<Datapath, E> {
        let made = prepare_bpffs_made(dir)?;
        // Map and program pins missing now: whatever of them exists after a failure is ours.
        let missing: Vec<PathBuf> = MAPS
            .iter()
            .map(|m| dir.join(m))
            .chain(PROGRAMS.iter().map(|p| prog_pin(dir, *p)))
            .filter(|p| !p.exists())
            .collect();
        let r = Self::open_found(dir, flow_table_size, &missing, check);
        if r.is_err() {
            for p in &missing {
                match fs::remove_file(p) {
                    Ok(()) => log::debug!("removed {} (made by this failed open)", p.display()),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => log::warn!("removing {}: {e}", p.display()),
                }
            }
            remove_made_dirs(&made);
        }
        r
    }

    fn open_found<E: From<DatapathError>>(
        dir: &Path,
        flow_table_size: u32,
        missing: &[PathBuf],
        check: impl FnOnce(&mut Datapath) -> Result<(), E>,
    ) -> Result<Datapath, E> {
        // The state as found: its pinned maps only.
        let maps = MAPS
            .into_iter()
            .filter(|m| dir.join(m).exists())
            .map(|m| Ok((m, map_from_pin(dir, m)?)))
            .collect::<Result<_>>()?;
        let mut dp = Datapath {
            dir: dir.to_path_buf(),
            maps,
            tc: Default::default(),
            flow_table_size,
        };
        let mut found = 0;
        if dp.maps.contains_key(MAP_CONFIG) {
            found = dp.check_abi()?;
            check(&mut dp)?;
        }
        if !missing.is_empty() {
            // What this build adds (maps, its programs) is created beside what exists.
            dp.maps = Self::load_and_pin(dir, flow_table_size)?;
        }
        // A state of an older map ABI (an earlier release) is migrated in place, one
        // idempotent step per ABI (see [`migrate`]); 0 is a new state.
        let migrated = found != 0 && migrate::migrate(&mut dp, found)?;
        dp.stamp_abi()?;
        // Also when the link is missing although nothing else was: an earlier open that did
        // the work was killed before it got here.
        if !missing.is_empty() || migrated || dp.state_version().is_none() {
            // Last, once nothing can fail: a refused or failed open never records itself.
            dp.record_version();
        }
        Ok(dp)
    }

    fn load_and_pin(
        dir: &Path,
        flow_table_size: u32,
    ) -> Result<std::collections::HashMap<&'static str, aya::maps::Map>> {
        let mut loader = EbpfLoader::new();
        loader.btf(None); // no CO-RE relocations in our programs
        loader.map_max_entries(MAP_FLOWS, flow_table_size);
        for name in MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in MAPS {
            restrict(&dir.join(name), 0o600)?;
        }
        for p in PROGRAMS {
            let pin = prog_pin(dir, p);
            let name = p.name();
            if pin.exists() {
                continue;
            }
            let perr = |source| DatapathError::Program { name, source };
            let prog = ebpf
                .program_mut(name)
                .ok_or(perr(ProgramError::NotLoaded))?;
            match prog {
                aya::programs::Program::SchedClassifier(p) => {
                    p.load().map_err(perr)?;
                    p.pin(&pin)
                }
                aya::programs::Program::Xdp(p) => {
                    p.load().map_err(perr)?;
                    p.pin(&pin)
                }
                _ => return Err(perr(ProgramError::NotLoaded)),
            }
            .map_err(|source| DatapathError::Pin {
                path: pin.clone(),
                source,
            })?;
            restrict(&pin, 0o600)?;
        }
        MAPS.into_iter()
            .map(|m| {
                let map = ebpf.take_map(m).ok_or(DatapathError::Map {
                    name: m,
                    source: aya::maps::MapError::InvalidName { name: m.into() },
                })?;
                Ok((m, map))
            })
            .collect()
    }

    /// Loads the object without pins: private maps, for BPF_PROG_TEST_RUN unit tests.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn unpinned() -> Result<Ebpf> {
        Ok(EbpfLoader::new().btf(None).load(EBPF_OBJECT)?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version that created or last upgraded this state ([`VERSION_LINK`]); None for a
    /// state made by a vethfp that did not record it (0.1.0).
    pub fn state_version(&self) -> Option<String> {
        fs::read_link(self.dir.join(VERSION_LINK))
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    /// Records this build as the state's version (atomically: a new link renamed over the
    /// old). A failure is logged, not fatal: the record is informational.
    fn record_version(&self) {
        let link = self.dir.join(VERSION_LINK);
        let tmp = self
            .dir
            .join(format!("{VERSION_LINK}-new-{}", std::process::id())); // bpffs: no dots
        let _ = fs::remove_file(&tmp);
        if let Err(e) = std::os::unix::fs::symlink(crate::version::LONG_VERSION, &tmp)
            .and_then(|()| fs::rename(&tmp, &link))
        {
            let _ = fs::remove_file(&tmp);
            log::warn!("recording the state's version in {}: {e}", link.display());
        }
    }

    /// Refuses a state of a map ABI this build cannot use: newer than this build's, or older
    /// than the oldest it migrates ([`migrate::OLDEST_MIGRATABLE_ABI`]). Reads only; returns
    /// the ABI found (0: none stamped yet).
    fn check_abi(&mut self) -> Result<u32> {
        let found = self.config_slot(CONFIG_ABI)?;
        if found != 0 && !(migrate::OLDEST_MIGRATABLE_ABI..=ABI_VERSION).contains(&found) {
            return Err(DatapathError::Abi {
                dir: self.dir.clone(),
                found,
                want: ABI_VERSION,
            });
        }
        Ok(found)
    }

    /// Records this build's map ABI in a state that has none yet (a new one).
    fn stamp_abi(&mut self) -> Result<()> {
        if self.config_slot(CONFIG_ABI)? == 0 {
            self.config()?
                .set(CONFIG_ABI, ABI_VERSION, 0)
                .map_err(map_err(MAP_CONFIG))?;
        }
        Ok(())
    }

    /// Interfaces of this state that are alive right now, in whichever namespace they are:
    /// the ifindexes pinned links are attached to, and the recorded host ends that still
    /// carry our filters in the namespace the state is bound to (found by its netns cookie
    /// among the named and the processes' network namespaces: filters have no pin that
    /// would tell from here).
    pub fn attached_link_ifindexes(&mut self) -> Vec<u32> {
        let mut out: Vec<u32> = match fs::read_dir(self.dir.join("links")) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| pinned_link_ifindex(&e.path()).ok().flatten())
                .filter(|i| *i != 0)
                .collect(),
            Err(_) => Vec::new(),
        };
        out.extend(self.filtered_endpoints_in_bound_netns());
        out
    }
}

#[cfg(test)]
mod object_hash_tests {
    #[test]
    fn the_build_time_hash_is_the_objects_fnv1a() {
        assert_eq!(
            super::object_hash(),
            crate::types::fnv1a64(super::EBPF_OBJECT.iter().copied())
        );
    }
}
