//! A node (a network namespace + its private bpffs) that runs the real `vethfp` binary, the
//! containers it makes, and the counters it reports.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::ns::{Bpffs, Netns, open_netns};

/// The `vethfp` binary: `$VETHFP_BIN`, else `vethfp` next to the test executable's `deps/`.
pub fn vethfp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VETHFP_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "VETHFP_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("vethfp");
    assert!(
        p.is_file(),
        "vethfp binary not found at {}: build it first: cargo build -p veth-user \
         (or set VETHFP_BIN)",
        p.display()
    );
    p
}

/// How long one vethfp call may take before the test kills it and fails.
const VETHFP_TIMEOUT: Duration = Duration::from_secs(60);

/// Run a command to completion with a deadline, collecting stdout and stderr.
fn output_with_deadline(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        so.read_to_end(&mut v).ok();
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        se.read_to_end(&mut v).ok();
        v
    });
    let deadline = Instant::now() + VETHFP_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{what} did not finish within {VETHFP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// Packets and bytes of one counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    pub fn new(packets: u64, bytes: u64) -> Count {
        Count { packets, bytes }
    }
}

/// Every verdict `stats --json` reports, per direction.
pub const VERDICTS: [&str; 7] = [
    "fast",
    "fast_uplink",
    "stack",
    "drop_spoof_ip",
    "drop_spoof_mac",
    "drop_policy",
    "drop_error",
];

/// One endpoint of `stats --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStats {
    pub host_if: String,
    pub host_ifindex: u64,
    pub from_container: BTreeMap<String, Count>,
    pub to_container: BTreeMap<String, Count>,
}

impl EndpointStats {
    /// Parse one object of `stats --json`, insisting on every field.
    pub fn parse(v: &Value) -> EndpointStats {
        let dir = |name: &str| -> BTreeMap<String, Count> {
            let d = &v[name];
            VERDICTS
                .iter()
                .map(|verdict| {
                    let c = &d[*verdict];
                    let num = |f: &str| {
                        c[f].as_u64().unwrap_or_else(|| {
                            panic!("stats: {name}.{verdict}.{f} missing or not a number in {v}")
                        })
                    };
                    (
                        verdict.to_string(),
                        Count::new(num("packets"), num("bytes")),
                    )
                })
                .collect()
        };
        EndpointStats {
            host_if: v["host_if"].as_str().expect("stats: host_if").to_string(),
            host_ifindex: v["host_ifindex"].as_u64().expect("stats: host_ifindex"),
            from_container: dir("from_container"),
            to_container: dir("to_container"),
        }
    }

    pub fn from(&self, verdict: &str) -> Count {
        self.from_container[verdict]
    }
    pub fn to(&self, verdict: &str) -> Count {
        self.to_container[verdict]
    }

    /// `self - before`, per counter (panics if a counter went backwards).
    pub fn since(&self, before: &EndpointStats) -> EndpointStats {
        let sub = |a: &BTreeMap<String, Count>, b: &BTreeMap<String, Count>, dir: &str| {
            a.iter()
                .map(|(k, x)| {
                    let y = b[k];
                    assert!(
                        x.packets >= y.packets && x.bytes >= y.bytes,
                        "{}: counter {dir}.{k} went backwards: {y:?} -> {x:?}",
                        self.host_if
                    );
                    (
                        k.clone(),
                        Count::new(x.packets - y.packets, x.bytes - y.bytes),
                    )
                })
                .collect()
        };
        EndpointStats {
            host_if: self.host_if.clone(),
            host_ifindex: self.host_ifindex,
            from_container: sub(&self.from_container, &before.from_container, "from"),
            to_container: sub(&self.to_container, &before.to_container, "to"),
        }
    }
}

/// Everything a failed command must leave as it was: node links, routes, permanent
/// neighbours, `pair list`, and the files under the bpffs.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: BTreeSet<String>,
    pub routes4: String,
    pub routes6: String,
    pub neigh: String,
    pub list: Value,
    pub pins: BTreeSet<String>,
}

/// The node: a network namespace with forwarding off, node addresses on `lo`
/// (10.X.255.1/32 and fd00:X::ffff/128), and a private bpffs for vethfp's state.
pub struct Node {
    // Field order is drop order: the namespace (and with it the host ends) goes first.
    pub ns: Netns,
    pub bpffs: Bpffs,
    x: u8,
}

impl Node {
    /// A node numbered X = 1 (addresses 10.1.255.1, fd00:1::ffff).
    pub fn new() -> Node {
        Node::with_x(1)
    }

    /// Node X with admission `always`: the forwarding-off proofs of the fast path (with
    /// forwarding off, `netfilter` admission would never admit anything: the kernel drops).
    pub fn with_x(x: u8) -> Node {
        let node = Node::bare(x);
        node.ok(&["admission", "always"]);
        node
    }

    /// Node X under the default admission (`netfilter`) with forwarding ON, as a real
    /// container host: the kernel forwards (and may NAT or filter) each flow first.
    pub fn netfilter(x: u8) -> Node {
        Node::netfilter_with(x, None)
    }

    /// [`Node::netfilter`] whose state is made with `--flow-table-size N`.
    pub fn netfilter_with(x: u8, flow_table_size: Option<u32>) -> Node {
        let node = Node::bare(x);
        node.ns.sysctl("net.ipv4.ip_forward", "1");
        node.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let size = flow_table_size.map(|n| n.to_string());
        let mut args = vec!["admission"];
        if let Some(n) = &size {
            args = vec!["--flow-table-size", n, "admission"];
        }
        assert_eq!(node.ok(&args).trim(), "netfilter");
        node
    }

    /// Node X (forwarding off) whose state no vethfp has made yet: for a test that makes it
    /// with another binary ([`Node::vethfp_bin`]).
    pub fn without_state(x: u8) -> Node {
        Node::bare(x)
    }

    fn bare(x: u8) -> Node {
        let node = Node {
            ns: Netns::new("vfn"),
            bpffs: Bpffs::new(),
            x,
        };
        // Explicitly off: container-to-container traffic can then only be carried by vethfp.
        node.ns.sysctl("net.ipv4.ip_forward", "0");
        node.ns.sysctl("net.ipv6.conf.all.forwarding", "0");
        node.ns.quiet_ipv6();
        node.ns
            .ip(&["addr", "add", &format!("{}/32", node.v4()), "dev", "lo"]);
        node.ns.ip(&[
            "addr",
            "add",
            &format!("{}/128", node.v6()),
            "dev",
            "lo",
            "nodad",
        ]);
        node
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The node's IPv4 address (on lo): 10.X.255.1.
    pub fn v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.x, 255, 1))
    }

    /// The node's IPv6 address (on lo): fd00:X::ffff.
    pub fn v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, self.x as u16, 0, 0, 0, 0, 0, 0xffff))
    }

    /// The state dir passed as `--bpffs`.
    pub fn bpffs_dir(&self) -> PathBuf {
        self.bpffs.state_dir()
    }

    fn command(&self, args: &[OsString], uid: Option<u32>) -> Output {
        self.command_bin(&vethfp_bin(), args, uid)
    }

    fn command_bin(&self, bin: &Path, args: &[OsString], uid: Option<u32>) -> Output {
        let nsf = open_netns(self.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.args(args).env("RUST_BACKTRACE", "0");
        // SAFETY: only async-signal-safe libc calls between fork and exec. setns (not
        // `ip netns exec`, which remounts /sys) enters the node for this process only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(uid) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = format!("vethfp {args:?} in {}", self.name());
        let out = output_with_deadline(cmd, &what);
        drop(nsf);
        out
    }

    /// Start `vethfp --bpffs DIR ARGS...` inside the node without waiting (stdout and stderr
    /// discarded); the caller waits for, stops or kills the child.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let nsf = open_netns(self.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new(vethfp_bin());
        cmd.arg("--bpffs")
            .arg(self.bpffs_dir())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting vethfp");
        drop(nsf);
        child
    }

    /// `vethfp --bpffs DIR ARGS...` inside the node as a [`Command`] whose stdio the caller
    /// sets (e.g. a pipe it closes early); the caller spawns it and waits for it.
    pub fn vethfp_command(&self, args: &[&str]) -> Command {
        let nsf = open_netns(self.name());
        let mut cmd = Command::new(vethfp_bin());
        cmd.arg("--bpffs").arg(self.bpffs_dir()).args(args);
        // SAFETY: only setns (async-signal-safe) between fork and exec; the namespace file
        // lives in the closure, so as long as the Command.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Run `vethfp --bpffs DIR ARGS...` inside the node.
    pub fn vethfp(&self, args: &[&str]) -> Output {
        let mut a: Vec<OsString> = vec!["--bpffs".into(), self.bpffs_dir().into()];
        a.extend(args.iter().map(OsString::from));
        self.command(&a, None)
    }

    /// Run another `vethfp` binary `bin` (e.g. the previous release, for upgrade tests) as
    /// `bin --bpffs DIR ARGS...` inside the node.
    pub fn vethfp_with(&self, bin: &Path, args: &[&str]) -> Output {
        let mut a: Vec<OsString> = vec!["--bpffs".into(), self.bpffs_dir().into()];
        a.extend(args.iter().map(OsString::from));
        self.command_bin(bin, &a, None)
    }

    /// Run `vethfp ARGS...` inside the node with exactly the arguments given (no --bpffs).
    pub fn vethfp_raw(&self, args: &[&str]) -> Output {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.command(&a, None)
    }

    /// Run `vethfp --bpffs DIR ARGS...` inside the node as user `uid` (gid = uid).
    pub fn vethfp_as(&self, uid: u32, args: &[&str]) -> Output {
        let mut a: Vec<OsString> = vec!["--bpffs".into(), self.bpffs_dir().into()];
        a.extend(args.iter().map(OsString::from));
        self.command(&a, Some(uid))
    }

    /// Run vethfp, assert exit 0, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        check_ok(&self.vethfp(args), args)
    }

    /// Run vethfp, assert it failed (non-zero exit, exactly one stderr line starting
    /// `vethfp: error: `); return that line.
    pub fn fails(&self, args: &[&str]) -> String {
        check_fails(&self.vethfp(args), args)
    }

    /// `pair list --json`, parsed.
    pub fn list_json(&self) -> Vec<Value> {
        let out = self.ok(&["pair", "list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("pair list --json: bad JSON ({e}): {out}"))
            .as_array()
            .unwrap_or_else(|| panic!("pair list --json: not an array: {out}"))
            .clone()
    }

    /// The `pair list --json` entry for `host_if`, if any.
    pub fn list_entry(&self, host_if: &str) -> Option<Value> {
        self.list_json()
            .into_iter()
            .find(|e| e["host_if"] == host_if)
    }

    /// `stats --json`, parsed (raw JSON).
    pub fn stats_json(&self) -> Vec<Value> {
        let out = self.ok(&["stats", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("stats --json: bad JSON ({e}): {out}"))
            .as_array()
            .unwrap_or_else(|| panic!("stats --json: not an array: {out}"))
            .clone()
    }

    /// All endpoints' counters, by host interface.
    pub fn all_stats(&self) -> BTreeMap<String, EndpointStats> {
        self.stats_json()
            .iter()
            .map(|v| {
                let s = EndpointStats::parse(v);
                (s.host_if.clone(), s)
            })
            .collect()
    }

    /// Counters of one endpoint (`stats HOST_IF --json`).
    pub fn stats(&self, host_if: &str) -> EndpointStats {
        let out = self.ok(&["stats", host_if, "--json"]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("stats {host_if} --json: bad JSON ({e}): {out}"));
        let arr = v.as_array().expect("stats --json: array");
        assert_eq!(
            arr.len(),
            1,
            "stats {host_if} --json: one entry expected: {out}"
        );
        let s = EndpointStats::parse(&arr[0]);
        assert_eq!(s.host_if, host_if);
        s
    }

    /// Wait until the endpoint's counters stop moving (no packet for `quiet`), so that a
    /// following measurement is not polluted by what the kernel sends by itself after a
    /// link comes up (DAD, MLD). Polls with a deadline.
    pub fn wait_quiet(&self, host_if: &str) {
        let quiet = Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = self.stats(host_if);
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.stats(host_if);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host_if}: counters still moving after 15 s"
            );
        }
    }

    /// Poll `stats HOST_IF` until `done` holds for it (counters are updated in softirq,
    /// possibly on another CPU, after a send returns); panics after 15 s with the last value.
    pub fn wait_stats(
        &self,
        host_if: &str,
        done: impl Fn(&EndpointStats) -> bool,
    ) -> EndpointStats {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.stats(host_if);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{host_if}: counters did not reach the expected state within 15 s: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Create a container namespace and `pair add HOST_IF --netns C --addr ... EXTRA...`;
    /// waits until the container's and the host end's addresses have finished DAD.
    pub fn add_container_with(&self, host_if: &str, addrs: &[&str], extra: &[&str]) -> Container {
        self.add_container_bin(&vethfp_bin(), host_if, addrs, extra)
    }

    /// [`Node::add_container_with`] by another `vethfp` binary `bin` (the previous release).
    pub fn add_container_bin(
        &self,
        bin: &Path,
        host_if: &str,
        addrs: &[&str],
        extra: &[&str],
    ) -> Container {
        let ns = Netns::new("vfc");
        ns.quiet_ipv6();
        let mut args = vec!["pair", "add", host_if, "--netns", ns.name()];
        for a in addrs {
            args.extend(["--addr", a]);
        }
        args.extend_from_slice(extra);
        check_ok(&self.vethfp_with(bin, &args), &args);
        let ifname = extra
            .iter()
            .position(|a| *a == "--ifname")
            .map(|i| extra[i + 1].to_string())
            .unwrap_or_else(|| "eth0".to_string());
        ns.wait_addrs_ready(Duration::from_secs(10));
        self.ns.wait_addrs_ready(Duration::from_secs(10));
        Container {
            ns,
            host_if: host_if.to_string(),
            ifname,
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// [`Node::add_container_with`] without extra options.
    pub fn add_container(&self, host_if: &str, addrs: &[&str]) -> Container {
        self.add_container_with(host_if, addrs, &[])
    }

    /// What a failed command must not change.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            links: self.ns.link_names(),
            routes4: self.ns.ip(&["-4", "route", "show", "table", "all"]),
            routes6: self.ns.ip(&["-6", "route", "show", "table", "all"]),
            neigh: self.ns.ip(&["neigh", "show", "nud", "permanent"]),
            list: Value::Array(self.list_json()),
            pins: self.bpffs.files(),
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// Assert a vethfp run succeeded; return its stdout.
pub fn check_ok(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "vethfp {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// Assert a vethfp run failed: a non-zero exit (not a signal) and exactly one stderr line
/// starting `vethfp: error: `; return that line. (That the code is exactly 1, as
/// docs/CLI.md says, is checked by its own test in errors.rs.)
pub fn check_fails(out: &Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(c) if c != 0),
        "vethfp {args:?} should fail with a non-zero exit, got {}; stderr: {stderr}",
        out.status
    );
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !line.contains('\n') && line.starts_with("vethfp: error: "),
        "vethfp {args:?}: stderr must be one line starting 'vethfp: error: ', got: {stderr:?}"
    );
    assert!(
        line.len() > "vethfp: error: ".len(),
        "vethfp {args:?}: empty error message"
    );
    line.to_string()
}

/// A container: its namespace and the endpoint vethfp made for it.
pub struct Container {
    pub ns: Netns,
    pub host_if: String,
    pub ifname: String,
    pub addrs: Vec<String>,
}

impl Container {
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    fn addr(&self, v4: bool) -> IpAddr {
        self.addrs
            .iter()
            .map(|c| c.split('/').next().unwrap().parse::<IpAddr>().unwrap())
            .find(|a| a.is_ipv4() == v4)
            .unwrap_or_else(|| panic!("container {} has no v4={v4} address", self.name()))
    }

    /// First IPv4 address given to `pair add`.
    pub fn v4(&self) -> IpAddr {
        self.addr(true)
    }

    /// First IPv6 address given to `pair add`.
    pub fn v6(&self) -> IpAddr {
        self.addr(false)
    }
}

/// One uplink of `status --json`: its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkStats {
    pub name: String,
    pub ifindex: u64,
    pub received_fast: Count,
    pub received_stack: Count,
    pub sent_fast: Count,
}

impl UplinkStats {
    /// Parse one element of `status --json`'s `uplinks`, insisting on every field.
    pub fn parse(v: &Value) -> UplinkStats {
        let c = |f: &str| {
            let num = |k: &str| {
                v[f][k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("status: uplink {f}.{k} missing in {v}"))
            };
            Count::new(num("packets"), num("bytes"))
        };
        UplinkStats {
            name: v["name"].as_str().expect("status: uplink name").to_string(),
            ifindex: v["ifindex"].as_u64().expect("status: uplink ifindex"),
            received_fast: c("received_fast"),
            received_stack: c("received_stack"),
            sent_fast: c("sent_fast"),
        }
    }

    /// `self - before`, per counter (panics if a counter went backwards).
    pub fn since(&self, before: &UplinkStats) -> UplinkStats {
        let sub = |a: Count, b: Count, what: &str| {
            assert!(
                a.packets >= b.packets && a.bytes >= b.bytes,
                "uplink {}: {what} went backwards: {b:?} -> {a:?}",
                self.name
            );
            Count::new(a.packets - b.packets, a.bytes - b.bytes)
        };
        UplinkStats {
            name: self.name.clone(),
            ifindex: self.ifindex,
            received_fast: sub(self.received_fast, before.received_fast, "received_fast"),
            received_stack: sub(self.received_stack, before.received_stack, "received_stack"),
            sent_fast: sub(self.sent_fast, before.sent_fast, "sent_fast"),
        }
    }
}

impl Node {
    /// `status --json`, parsed (raw JSON).
    pub fn status_json(&self) -> Value {
        let out = self.ok(&["status", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status --json: bad JSON ({e}): {out}"))
    }

    /// Counters of uplink `name` from `status --json` (panics if it is not attached).
    pub fn uplink(&self, name: &str) -> UplinkStats {
        let st = self.status_json();
        st["uplinks"]
            .as_array()
            .unwrap_or_else(|| panic!("status --json: uplinks not an array: {st}"))
            .iter()
            .find(|u| u["name"] == name)
            .map(UplinkStats::parse)
            .unwrap_or_else(|| panic!("status --json: no uplink {name}: {st}"))
    }

    /// Wait until the counters of every endpoint and uplink stop moving (nothing for 500 ms).
    pub fn wait_all_quiet(&self) {
        let quiet = Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs(20);
        let snap = || (self.stats_json(), self.status_json()["uplinks"].clone());
        let mut last = snap();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = snap();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: counters still moving after 20 s",
                self.name()
            );
        }
    }

    /// vethfp's cls_bpf filters on host end `dev` of this node, asked from the kernel inside
    /// the node's namespace: (ingress, egress) program names of the filters at vethfp's
    /// (prio, handle) that run a program pinned in this node's state. None: no such filter,
    /// or one running someone else's program.
    pub fn our_filters(&self, dev: &str) -> (Option<String>, Option<String>) {
        use vethfp::{datapath::Datapath, sys::tc_filter::Dir};
        let dir = self.bpffs_dir();
        let dev = dev.to_string();
        crate::ns::run_in_netns(self.name(), move || {
            let Some(ifindex) = nix::net::if_::if_nametoindex(dev.as_str()).ok() else {
                return (None, None);
            };
            let dp = Datapath::open(&dir).expect("open datapath");
            let owned = dp.owned_program_ids().expect("program ids");
            let get = |d| {
                dp.our_slot(ifindex, d)
                    .expect("list filters")
                    .filter(|f| owned.contains(&f.prog_id))
                    .map(|f| f.name)
            };
            (get(Dir::Ingress), get(Dir::Egress))
        })
    }

    /// True if both of vethfp's filters are on `dev` and run this node's programs.
    pub fn has_filters(&self, dev: &str) -> bool {
        matches!(self.our_filters(dev), (Some(_), Some(_)))
    }

    /// How many times the pinned program `name` (e.g. `vfp_xdp`) of this node has run since
    /// it was loaded (0 if it is not loaded yet: vethfp loads programs on first use). Only
    /// counts while run-time statistics are on: hold a [`bpf_stats`] guard.
    pub fn prog_run_count(&self, name: &str) -> u64 {
        let dir = self.bpffs_dir().join("progs");
        let prefix = format!("{name}-");
        let Some(pin) = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("readdir").path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
        else {
            return 0;
        };
        aya::programs::ProgramInfo::from_pin(&pin)
            .unwrap_or_else(|e| panic!("program info of {}: {e}", pin.display()))
            .run_count()
    }
}

/// Turns on BPF run-time statistics (run_cnt / run_time_ns of every program) for as long as
/// the returned fd lives. BPF_ENABLE_STATS is reference-counted by the kernel, so parallel
/// tests neither race nor need to restore the global `kernel.bpf_stats_enabled` sysctl.
pub fn bpf_stats() -> std::os::fd::OwnedFd {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS (root needed)")
}
