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

pub mod filters;
pub mod inspect;
pub mod links;
pub mod migrate;

use std::{
    fs,
    io::ErrorKind,
    os::{
        fd::OwnedFd,
        unix::fs::{DirBuilderExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use crate::sys::{
    bpf::{pinned_link_ifindex, unpin_and_detach},
    lock,
};
pub use crate::sys::{netns::current_netns_cookie, random::random_u64};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, Program, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use aya_obj::programs::XdpAttachType;
use veth_common::{
    ABI_VERSION, CONFIG_ABI, CONFIG_FLAGS, CONFIG_NETNS_COOKIE_HI, CONFIG_NETNS_COOKIE_LO,
    CONFIG_STATE_ID_HI, CONFIG_STATE_ID_LO, CniOwner, Counters, DEFAULT_FLOW_TABLE_SIZE,
    EndpointRecord, FlowKey, FlowState, FlowStats, Intent, MAP_CNI_OWNERS, MAP_CONFIG,
    MAP_COUNTERS, MAP_DEVMAP, MAP_ENDPOINTS, MAP_EP4, MAP_EP6, MAP_FLOW_STATS, MAP_FLOWS,
    MAP_HANDOFF, MAP_JOURNAL, MAP_L2, MAP_UPLINKS, MAPS, NAME_LEN, Target, Uplink,
};

/// The BPF object built from `veth-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veth-ebpf"));

/// The symlink in the state dir whose target is the version (`LONG_VERSION`) of the vethfp
/// that created the state or last upgraded it (loaded its programs or maps into it).
pub const VERSION_LINK: &str = "version";

/// Default state directory.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vethfp";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// Program and hook names come from the typed ABI (veth-common), the one place for them.
pub const PROG_TC_INGRESS: &str = veth_common::Program::TcIngress.name();
pub const PROG_TC_EGRESS: &str = veth_common::Program::TcEgress.name();
pub const PROG_XDP: &str = veth_common::Program::Xdp.name();
pub const PROG_UPLINK_INGRESS: &str = veth_common::Program::UplinkIngress.name();
pub const PROG_L2_INGRESS: &str = veth_common::Program::L2Ingress.name();
pub const PROG_UPLINK_EGRESS: &str = veth_common::Program::UplinkEgress.name();
/// Endpoint hooks: cls_bpf filters on the host end's clsact qdisc (see [`filters`]).
pub const HOOK_TC_INGRESS: &str = veth_common::Hook::TcIngress.name();
pub const HOOK_TC_EGRESS: &str = veth_common::Hook::TcEgress.name();
pub const HOOK_XDP: &str = veth_common::Hook::Xdp.name();
pub const HOOK_UPLINK: &str = veth_common::Hook::UplinkIngress.name();
pub const HOOK_UPLINK_EGRESS: &str = veth_common::Hook::UplinkEgress.name();

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{0} is not inside a mounted bpffs: mount one (`mount -t bpf bpf DIR`) and pass \
         --bpffs DIR/vethfp, or use a directory under /sys/fs/bpf"
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
         namespace alone (`nsenter --net=/run/netns/NAME vethfp …`), or pass --bpffs on a \
         bpffs that outlives this process"
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
             pass another --bpffs directory"
        )
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Ensures `dir` can hold pins: it is (or will be created) inside a mounted bpffs. If nothing is
/// mounted at /sys/fs/bpf and `dir` is under it, bpffs is mounted there first.
pub fn prepare_bpffs(dir: &Path) -> Result<()> {
    prepare_bpffs_made(dir).map(drop)
}

/// [`prepare_bpffs`], returning the directories it created (outermost first), so that a
/// caller that then fails can take them away again ([`remove_made_dirs`]).
pub(crate) fn prepare_bpffs_made(dir: &Path) -> Result<Vec<PathBuf>> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| DatapathError::NotBpffs(dir.into()))?;
    if is_bpffs(existing) {
        return make_dir(dir);
    }
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && sys.is_dir() && !is_bpffs(sys) && existing == sys {
        // Mounting is right on a bare node; in a private mount namespace the mount, and the
        // state with it, would be gone when this process exits.
        if private_mounts() {
            return Err(DatapathError::PrivateMounts);
        }
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| DatapathError::Mount(e.to_string()))?;
        return make_dir(dir);
    }
    Err(DatapathError::NotBpffs(dir.into()))
}

/// Is this process in a mount namespace of its own: another than its parent's (`ip netns
/// exec` and `unshare -m` make one and exec the command in it) or PID 1's? A namespace that
/// cannot be read does not count (PID 1's often cannot, in a container).
fn private_mounts() -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(me) = id("/proc/self/ns/mnt") else {
        return false;
    };
    let parent = format!("/proc/{}/ns/mnt", std::os::unix::process::parent_id());
    [parent.as_str(), "/proc/1/ns/mnt"]
        .into_iter()
        .filter_map(id)
        .any(|other| other != me)
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn make_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    // The missing ancestors of `dir` too: all of them are this call's to take back.
    let mut made: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    made.reverse();
    made.extend(
        [dir.join("progs"), dir.join("links")]
            .into_iter()
            .filter(|p| !p.exists()),
    );
    for d in [dir.to_path_buf(), dir.join("progs"), dir.join("links")] {
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(&d) {
            Ok(()) => {}
            Err(source) => {
                remove_made_dirs(&made);
                return Err(DatapathError::StateDir { path: d, source });
            }
        }
    }
    for d in [dir.to_path_buf(), dir.join("progs"), dir.join("links")] {
        if let Err(e) = restrict(&d, 0o700) {
            remove_made_dirs(&made);
            return Err(e);
        }
    }
    Ok(made)
}

/// Removes directories a failed call created ([`prepare_bpffs_made`]), innermost first; only
/// empty ones go (`rmdir`): whatever another process put there meanwhile stays.
pub(crate) fn remove_made_dirs(made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// Pins and state directories are root's alone: whoever can open a pinned map can change the
/// datapath, whoever can read one learns every endpoint. The mode is set explicitly (not left
/// to the umask), also on pins and directories an earlier version made.
fn restrict(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {mode:o} {}", path.display())))
}

/// An exclusive lock on the state directory for the duration of one registry operation, so
/// concurrent CLI calls (and the agent) never interleave their map and link updates.
pub struct StateLock {
    _fd: OwnedFd,
    /// When it was taken, and how long taking it waited (for the debug log on release).
    taken: std::time::Instant,
    waited: std::time::Duration,
}

impl StateLock {
    pub fn acquire(dir: &Path) -> Result<StateLock> {
        let asked = std::time::Instant::now();
        let f = fs::File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
        let fd: OwnedFd = f.into();
        lock::flock(&fd, lock::LOCK_EX).map_err(|source| DatapathError::Io {
            what: format!("locking {}", dir.display()),
            source,
        })?;
        let taken = std::time::Instant::now();
        Ok(StateLock {
            _fd: fd,
            taken,
            waited: taken - asked,
        })
    }
}

impl Drop for StateLock {
    /// `RUST_LOG=vethfp=debug` shows every locked step: what concurrent writers wait for.
    fn drop(&mut self) {
        log::debug!(
            "state lock: waited {} µs, held {} µs",
            self.waited.as_micros(),
            self.taken.elapsed().as_micros()
        );
    }
}

/// Operations in flight: every writer holds `DIR/ops` shared for its whole life, including
/// the kernel work it does between its short, exclusive map updates (the state lock is not
/// held meanwhile, so concurrent CNI ADDs overlap their netlink work). Journal recovery needs
/// it exclusive: an intent it sees then belongs to an operation that is no longer running,
/// never to one that is still working.
pub struct OpsLock {
    _fd: OwnedFd,
}

/// The subdirectory whose flock is the [`OpsLock`].
pub const OPS_DIR: &str = "ops";

impl OpsLock {
    fn open(dir: &Path) -> Result<OwnedFd> {
        let path = dir.join(OPS_DIR);
        match fs::create_dir(&path) {
            // Root only, like everything else in the state dir.
            Ok(()) => restrict(&path, 0o700)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
        }
        let f = fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        Ok(f.into())
    }

    fn flock(dir: &Path, fd: &OwnedFd, op: libc::c_int) -> Result<bool> {
        let Err(e) = lock::flock(fd, op) else {
            return Ok(true);
        };
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(DatapathError::Io {
            what: format!("locking {}/{OPS_DIR}", dir.display()),
            source: e,
        })
    }

    /// Held by a writer for its lifetime.
    pub fn shared(dir: &Path) -> Result<OpsLock> {
        let fd = Self::open(dir)?;
        Self::flock(dir, &fd, libc::LOCK_SH)?;
        Ok(OpsLock { _fd: fd })
    }

    /// Some if no operation is in flight (then none can start while it is held).
    pub fn try_exclusive(dir: &Path) -> Result<Option<OpsLock>> {
        let fd = Self::open(dir)?;
        Ok(Self::flock(dir, &fd, libc::LOCK_EX | libc::LOCK_NB)?.then_some(OpsLock { _fd: fd }))
    }
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
pub const PROGRAMS: [&str; 6] = [
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_XDP,
    PROG_UPLINK_INGRESS,
    PROG_L2_INGRESS,
    PROG_UPLINK_EGRESS,
];

/// The opened datapath: maps (pinned, shared by every process) and the means to attach.
pub struct Datapath {
    dir: PathBuf,
    maps: std::collections::HashMap<&'static str, aya::maps::Map>,
    /// The netlink session for clsact/cls_bpf work, opened on first use.
    tc: std::sync::Mutex<Option<crate::sys::tc_filter::TcSession>>,
    /// Capacity of `VFP_FLOWS` if this process creates it (`--flow-table-size`).
    flow_table_size: u32,
}

fn prog_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join("progs")
        .join(format!("{name}-{:016x}", object_hash()))
}

/// A pinned map opened as the variant its name has in the object.
fn map_from_pin(dir: &Path, name: &'static str) -> Result<aya::maps::Map> {
    use aya::maps::Map;
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    Ok(match name {
        MAP_COUNTERS | MAP_FLOW_STATS => Map::PerCpuArray(data),
        MAP_FLOWS => Map::LruHashMap(data),
        MAP_CONFIG => Map::Array(data),
        MAP_DEVMAP => Map::DevMapHash(data),
        MAP_HANDOFF => Map::RingBuf(data),
        _ => Map::HashMap(data),
    })
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
            .chain(PROGRAMS.iter().map(|p| prog_pin(dir, p)))
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
        for name in PROGRAMS {
            let pin = prog_pin(dir, name);
            if pin.exists() {
                continue;
            }
            let perr = |source| DatapathError::Program { name, source };
            let prog = ebpf
                .program_mut(name)
                .ok_or(perr(ProgramError::NotLoaded))?;
            match prog {
                Program::SchedClassifier(p) => {
                    p.load().map_err(perr)?;
                    p.pin(&pin)
                }
                Program::Xdp(p) => {
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

    pub fn ep4(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], Target>> {
        typed(&mut self.maps, MAP_EP4)
    }
    pub fn ep6(&mut self) -> Result<HashMap<&mut MapData, [u8; 16], Target>> {
        typed(&mut self.maps, MAP_EP6)
    }
    pub fn endpoints(&mut self) -> Result<HashMap<&mut MapData, u32, EndpointRecord>> {
        typed(&mut self.maps, MAP_ENDPOINTS)
    }
    pub fn counters(&mut self) -> Result<PerCpuArray<&mut MapData, Counters>> {
        typed(&mut self.maps, MAP_COUNTERS)
    }
    pub fn l2(&mut self) -> Result<HashMap<&mut MapData, [u8; 6], Target>> {
        typed(&mut self.maps, MAP_L2)
    }
    pub fn uplinks(&mut self) -> Result<HashMap<&mut MapData, u32, Uplink>> {
        typed(&mut self.maps, MAP_UPLINKS)
    }
    pub fn devmap(&mut self) -> Result<DevMapHash<&mut MapData>> {
        typed(&mut self.maps, MAP_DEVMAP)
    }
    pub fn config(&mut self) -> Result<Array<&mut MapData, u32>> {
        typed(&mut self.maps, MAP_CONFIG)
    }
    pub fn flows(&mut self) -> Result<HashMap<&mut MapData, FlowKey, FlowState>> {
        typed(&mut self.maps, MAP_FLOWS)
    }

    /// Capacity of the flow table of this state.
    pub fn flow_table_size(&self) -> u32 {
        match self.maps.get(MAP_FLOWS) {
            Some(aya::maps::Map::LruHashMap(d)) => d.info().map(|i| i.max_entries()).unwrap_or(0),
            _ => 0,
        }
    }

    /// Node flow counters, summed over CPUs.
    pub fn flow_stats(&mut self) -> Result<FlowStats> {
        let m: PerCpuArray<&mut MapData, FlowStats> = typed(&mut self.maps, MAP_FLOW_STATS)?;
        let per_cpu = m.get(&0, 0).map_err(map_err(MAP_FLOW_STATS))?;
        let mut sum = FlowStats::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Config slot `slot` (u32).
    pub fn config_slot(&mut self, slot: u32) -> Result<u32> {
        self.config()?.get(&slot, 0).map_err(map_err(MAP_CONFIG))
    }

    pub fn journal(&mut self) -> Result<HashMap<&mut MapData, [u8; NAME_LEN], Intent>> {
        typed(&mut self.maps, MAP_JOURNAL)
    }
    pub fn cni_owners(&mut self) -> Result<HashMap<&mut MapData, u32, CniOwner>> {
        typed(&mut self.maps, MAP_CNI_OWNERS)
    }

    fn config_u64(&mut self, lo: u32, hi: u32) -> Result<u64> {
        let cfg = self.config()?;
        let l = cfg.get(&lo, 0).map_err(map_err(MAP_CONFIG))?;
        let h = cfg.get(&hi, 0).map_err(map_err(MAP_CONFIG))?;
        Ok((h as u64) << 32 | l as u64)
    }

    fn set_config_u64(&mut self, lo: u32, hi: u32, v: u64) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.set(lo, v as u32, 0).map_err(map_err(MAP_CONFIG))?;
        cfg.set(hi, (v >> 32) as u32, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// The identity of this state (config slots 4–5); 0 for a state made before it existed.
    pub fn state_id(&mut self) -> Result<u64> {
        self.config_u64(CONFIG_STATE_ID_LO, CONFIG_STATE_ID_HI)
    }

    /// Gives the state a new random identity.
    pub fn new_state_id(&mut self) -> Result<u64> {
        let id = random_u64().max(1);
        self.set_config_u64(CONFIG_STATE_ID_LO, CONFIG_STATE_ID_HI, id)?;
        Ok(id)
    }

    /// Netns cookie of the node namespace the state is bound to (config slots 6–7); 0: none.
    pub fn netns_cookie(&mut self) -> Result<u64> {
        self.config_u64(CONFIG_NETNS_COOKIE_LO, CONFIG_NETNS_COOKIE_HI)
    }

    pub fn set_netns_cookie(&mut self, cookie: u64) -> Result<()> {
        self.set_config_u64(CONFIG_NETNS_COOKIE_LO, CONFIG_NETNS_COOKIE_HI, cookie)
    }

    /// Device and inode of the pinned config map: changes when the state dir is removed and
    /// made again, so a long-running process can tell its map fds are stale.
    pub fn pin_identity(dir: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(MAP_CONFIG))
            .ok()
            .map(|m| (m.dev(), m.ino()))
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

    pub fn flags(&mut self) -> Result<u32> {
        self.config()?
            .get(&CONFIG_FLAGS, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    pub fn set_flags(&mut self, flags: u32) -> Result<()> {
        self.config()?
            .set(CONFIG_FLAGS, flags, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Zeroes counter slot `slot` (before a new endpoint or uplink uses it).
    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::Io {
            what: what.into(),
            source: e,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); n]).map_err(io("per-CPU values"))?;
        self.counters()?
            .set(slot, zeros, 0)
            .map_err(map_err(MAP_COUNTERS))
    }

    /// Counters in `slot`, summed over CPUs.
    pub fn read_counters(&mut self, slot: u32) -> Result<Counters> {
        let per_cpu = self
            .counters()?
            .get(&slot, 0)
            .map_err(map_err(MAP_COUNTERS))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Pin path of program `name` of this build (re-pinning all programs if it vanished).
    pub(crate) fn pinned_program(&mut self, name: &'static str) -> Result<PathBuf> {
        let pin = prog_pin(&self.dir, name);
        if !pin.exists() {
            self.maps = Self::load_and_pin(&self.dir, self.flow_table_size)?;
        }
        Ok(pin)
    }

    /// Loads (verifies) and pins every program of this build unless an earlier call did:
    /// proves the kernel accepts them (CNI STATUS).
    pub fn load_programs(&mut self) -> Result<()> {
        for name in PROGRAMS {
            self.pinned_program(name)?;
        }
        Ok(())
    }

    fn classifier(&mut self, name: &'static str) -> Result<SchedClassifier> {
        let pin = self.pinned_program(name)?;
        SchedClassifier::from_pin(&pin).map_err(|source| DatapathError::Program { name, source })
    }

    pub fn link_pin(&self, hook: &str, ifindex: u32) -> PathBuf {
        self.dir.join("links").join(format!("{hook}-{ifindex}"))
    }

    pub(crate) fn attach_one(
        &mut self,
        iface: &str,
        ifindex: u32,
        prog_name: &'static str,
        kind: TcAttachType,
        hook: &str,
    ) -> Result<()> {
        let pin = self.link_pin(hook, ifindex);
        // A pin left by an earlier interface with the same ifindex is stale: drop it.
        let _ = unpin_and_detach(&pin);
        let mut prog = self.classifier(prog_name)?;
        let attach_err = |source| DatapathError::Attach {
            prog: prog_name,
            iface: iface.into(),
            source,
        };
        let id = prog
            .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
            iface: iface.into(),
            source,
        })?;
        pin_link(fd_link, &pin)
    }

    /// Attaches the uplink ingress and egress programs to `iface` (tcx) and pins the links.
    /// On failure nothing stays attached.
    pub fn attach_uplink(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach_one(
            iface,
            ifindex,
            PROG_UPLINK_INGRESS,
            TcAttachType::Ingress,
            HOOK_UPLINK,
        )?;
        if let Err(e) = self.attach_uplink_egress(iface, ifindex) {
            let _ = unpin_and_detach(&self.link_pin(HOOK_UPLINK, ifindex));
            return Err(e);
        }
        Ok(())
    }

    /// Attaches the uplink egress program (admission confirmation) to `iface`.
    pub fn attach_uplink_egress(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach_one(
            iface,
            ifindex,
            PROG_UPLINK_EGRESS,
            TcAttachType::Egress,
            HOOK_UPLINK_EGRESS,
        )
    }

    /// Detaches the uplink programs of `ifindex`. True if the ingress one was attached.
    pub fn detach_uplink(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(HOOK_UPLINK_EGRESS, ifindex)).map_err(io(format!(
            "detaching the uplink egress link of ifindex {ifindex}"
        )))?;
        unpin_and_detach(&self.link_pin(HOOK_UPLINK, ifindex)).map_err(io(format!(
            "detaching the uplink link of ifindex {ifindex}"
        )))
    }

    /// Attaches the XDP program (native mode) to host end `ifindex` and pins the link.
    pub fn attach_xdp(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        let pin = self.link_pin(HOOK_XDP, ifindex);
        let _ = unpin_and_detach(&pin);
        let path = self.pinned_program(PROG_XDP)?;
        let mut prog = Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|source| {
            DatapathError::Program {
                name: PROG_XDP,
                source,
            }
        })?;
        let attach_err = |source| DatapathError::Attach {
            prog: PROG_XDP,
            iface: iface.into(),
            source,
        };
        let id = prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
            iface: iface.into(),
            source,
        })?;
        pin_link(fd_link, &pin)
    }

    /// Detaches the XDP program of `ifindex` (removes its link pin). True if it was attached.
    pub fn detach_xdp(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(HOOK_XDP, ifindex))
            .map_err(io(format!("detaching the XDP link of ifindex {ifindex}")))
    }
}

/// Pins an attached link at `pin`, 0600; on failure nothing stays attached.
fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    let _: PinnedLink = link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    if let Err(e) = restrict(pin, 0o600) {
        let _ = fs::remove_file(pin); // detaches
        return Err(e);
    }
    Ok(())
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn typed<'a, T>(
    maps: &'a mut std::collections::HashMap<&'static str, aya::maps::Map>,
    name: &'static str,
) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = maps.get_mut(name).ok_or(DatapathError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(map).map_err(map_err(name))
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
