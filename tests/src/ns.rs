//! Network namespaces, private bpffs mounts, threads that run inside a namespace, and `ip`.
//!
//! Every guard removes what it made on Drop, so cleanup also happens when a test panics.
//! Nothing here ever enters or changes the machine's own network namespace: every namespace
//! is checked against PID 1's before it is used.

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across processes and within this one: `prefix` + pid + `x` + counter.
/// At most 15 bytes, so it is also valid as an interface name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id());
    assert!(
        name.len() <= 15,
        "unique name {name:?} longer than 15 bytes: use a shorter prefix"
    );
    name
}

/// Inode of the machine's own network namespace, to refuse ever entering it: the one this
/// process started in (its main thread never changes namespace), and PID 1's where readable.
fn init_netns_ino() -> u64 {
    std::fs::metadata("/proc/self/ns/net")
        .expect("stat /proc/self/ns/net")
        .ino()
}

fn is_machine_netns(ino: u64) -> bool {
    ino == init_netns_ino() || std::fs::metadata("/proc/1/ns/net").is_ok_and(|m| m.ino() == ino)
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Open a named namespace, refusing the machine's own.
pub fn open_netns(name: &str) -> File {
    let path = netns_path(name);
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let ino = f.metadata().expect("stat netns").ino();
    assert!(
        !is_machine_netns(ino),
        "{} is the machine's own network namespace: refusing to use it",
        path.display()
    );
    f
}

/// Run `ip` with the given arguments; panics with its stderr on failure; returns stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), with `lo` up. Deleted on Drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `prefix` + pid + counter (≤ 15 bytes).
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        if !out.status.success() {
            // Same pid + counter can only be a leftover of a killed earlier run: replace it.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("exists"),
                "ip netns add {name}: {}",
                err.trim()
            );
            ip(&["netns", "del", &name]);
            ip(&["netns", "add", &name]);
        }
        let ns = Netns { name };
        drop(open_netns(&ns.name)); // check it is not the machine's own
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`; panics on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// `tc -n NAME args...`; panics on failure; returns stdout.
    pub fn tc(&self, args: &[&str]) -> String {
        let out = Command::new("tc")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n NAME args...` parsed as JSON (an empty output is an empty array).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j", "-n", &self.name];
        a.extend_from_slice(args);
        let out = ip(&a);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {a:?}: bad JSON {e}: {out}"))
    }

    /// Names of all links in the namespace, sorted.
    /// `ip link add HOST type veth peer name PEER netns OTHER` run in this namespace: veth
    /// `host` here, its peer `peer` in `other` (both down).
    pub fn add_veth(&self, host: &str, peer: &str, other: &Netns) {
        self.ip(&[
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            other.name(),
        ]);
    }

    pub fn link_names(&self) -> BTreeSet<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .expect("ip link JSON array")
            .iter()
            .map(|l| l["ifname"].as_str().expect("ifname").to_string())
            .collect()
    }

    /// One link as `ip -j link show dev IFNAME` reports it, or None if it does not exist.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        self.ip_json(&["link", "show"])
            .as_array()
            .expect("ip link JSON array")
            .iter()
            .find(|l| l["ifname"] == ifname)
            .cloned()
    }

    /// Write a sysctl inside the namespace (`net.ipv4.ip_forward`, ...) and read it back.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let v = value.to_string();
        let got = run_in_netns(&self.name, move || {
            std::fs::write(&path, &v).unwrap_or_else(|e| panic!("write {path}: {e}"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        });
        assert_eq!(
            got.trim(),
            value,
            "sysctl {key} in {} did not stick",
            self.name
        );
    }

    /// Read a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run_in_netns(&self.name, move || {
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        })
        .trim()
        .to_string()
    }

    /// Cut down the chatter the kernel sends by itself on new links (no router
    /// solicitations; MLD report repeats within milliseconds instead of a second) so the
    /// counters settle right after a link comes up. DAD stays on.
    pub fn quiet_ipv6(&self) {
        for scope in ["all", "default"] {
            let k = |s: &str| format!("net.ipv6.conf.{scope}.{s}");
            self.sysctl(&k("router_solicitations"), "0");
            self.sysctl(&k("accept_ra"), "0");
            self.sysctl(&k("mldv1_unsolicited_report_interval"), "20");
            self.sysctl(&k("mldv2_unsolicited_report_interval"), "20");
        }
    }

    /// Wait (poll with a deadline) until no address in the namespace is tentative (DAD done).
    pub fn wait_addrs_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let links = self.ip_json(&["addr", "show"]);
            let tentative: Vec<String> = links
                .as_array()
                .expect("ip addr JSON array")
                .iter()
                .flat_map(|l| {
                    l["addr_info"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| a["tentative"] == true || a["dadfailed"] == true)
                        .map(|a| format!("{}: {}", l["ifname"], a["local"]))
                })
                .collect();
            if tentative.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "addresses in {} still tentative after {timeout:?}: {tentative:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

/// Spawn a thread that enters namespace `ns` (only that thread) and runs `f`.
pub fn in_netns<T, F>(ns: &str, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = open_netns(ns);
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
            drop(fd);
            let me = std::fs::metadata("/proc/thread-self/ns/net")
                .expect("stat own netns")
                .ino();
            assert!(!is_machine_netns(me), "thread still in the machine's netns");
            f()
        })
        .expect("spawn thread")
}

/// [`in_netns`] and wait for the result; a panic in the thread is re-raised here.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    join(in_netns(ns, f))
}

/// Join a thread, re-raising its panic in the caller.
pub fn join<T>(h: JoinHandle<T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A private bpffs mounted on a fresh directory under the temp dir. Unmounted (lazily) and
/// removed on Drop. [`Bpffs::state_dir`] is the directory passed to `vethfp --bpffs`.
#[derive(Debug)]
pub struct Bpffs {
    mount: PathBuf,
}

impl Bpffs {
    pub fn new() -> Bpffs {
        let mount = std::env::temp_dir().join(format!("vethfp-it-{}", unique_name("b")));
        std::fs::create_dir_all(&mount).unwrap_or_else(|e| panic!("mkdir {mount:?}: {e}"));
        let fs = Bpffs { mount };
        nix::mount::mount(
            Some("bpf"),
            &fs.mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount -t bpf bpf {:?}: {e}", fs.mount));
        assert!(
            is_bpffs(&fs.mount),
            "{:?} is not a bpffs after mount",
            fs.mount
        );
        fs
    }

    /// The mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// `<mount>/vethfp`: vethfp's state dir (not created here: vethfp creates it).
    pub fn state_dir(&self) -> PathBuf {
        self.mount.join("vethfp")
    }

    /// Every file and directory under the mount, relative to it, sorted.
    pub fn files(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd {
                let e = e.expect("readdir");
                let p = e.path();
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.mount, &self.mount, &mut out);
        out
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `p` is on a bpffs.
pub fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cleanup: umount {:?}: {e}", self.mount);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.mount) {
            eprintln!("cleanup: rm {:?}: {e}", self.mount);
        }
    }
}

impl Netns {
    /// Turn GRO on or off on `ifname` in this namespace (the ethtool ioctl, via vethfp's own
    /// module: no `ethtool` binary needed).
    pub fn set_gro(&self, ifname: &str, on: bool) {
        let ifn = ifname.to_string();
        run_in_netns(&self.name, move || vethfp::sys::ethtool::set_gro(&ifn, on))
            .unwrap_or_else(|e| panic!("set GRO {on} on {ifname} in {}: {e}", self.name));
    }

    /// Whether GRO is on for `ifname` in this namespace.
    pub fn gro(&self, ifname: &str) -> bool {
        let ifn = ifname.to_string();
        run_in_netns(&self.name, move || vethfp::sys::ethtool::gro(&ifn))
            .unwrap_or_else(|e| panic!("read GRO of {ifname} in {}: {e}", self.name))
    }
}
