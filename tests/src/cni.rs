//! Driving CNI plugins the way a runtime does: `CNI_*` environment, the config on stdin, the
//! result (or the spec's error object) on stdout, inside a node namespace.

use std::{
    io::{Read, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    node::{Node, vethfp_bin},
    ns::{Netns, open_netns, unique_name},
};

/// Where Debian's containernetworking-plugins live.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Path of a reference plugin (host-local, ptp, ...); panics with the fix if it is missing.
pub fn cni_plugin(name: &str) -> PathBuf {
    let p = Path::new(CNI_PLUGIN_DIR).join(name);
    assert!(
        p.is_file(),
        "{} is missing: install containernetworking-plugins (`cargo xtask setup`, or \
         apt-get install containernetworking-plugins)",
        p.display()
    );
    p
}

/// What one plugin call returned.
#[derive(Debug)]
pub struct CniOut {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOut {
    /// Asserts success; the result JSON (Null for an empty stdout, as DEL/CHECK print nothing).
    pub fn ok(&self, what: &str) -> Value {
        assert!(
            self.status.success(),
            "{what}: failed ({}): stdout {} stderr {}",
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        );
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Asserts failure with a well-formed spec error object on stdout; returns it.
    pub fn err(&self, what: &str) -> Value {
        assert!(
            !self.status.success(),
            "{what}: succeeded but should have failed: {}",
            self.stdout.trim()
        );
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: error output is not JSON ({e}): stdout {:?} stderr {:?}",
                self.stdout, self.stderr
            )
        });
        assert!(v["code"].is_u64(), "{what}: no numeric code: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg: {v}"
        );
        assert!(v["cniVersion"].is_string(), "{what}: no cniVersion: {v}");
        v
    }

    /// Asserts failure with error `code`; returns the error object.
    pub fn err_code(&self, code: u64, what: &str) -> Value {
        let v = self.err(what);
        assert_eq!(v["code"], code, "{what}: wrong code: {v}");
        v
    }
}

/// The `CNI_*` variables of one call; unset ones are removed from the child's environment.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// Everything set, as a runtime would for ADD of `container_id` in `netns` (a name under
    /// /run/netns).
    pub fn full(command: &str, container_id: &str, netns: &str, ifname: &str) -> CniEnv {
        CniEnv {
            command: Some(command.into()),
            container_id: Some(container_id.into()),
            netns: Some(format!("/run/netns/{netns}")),
            ifname: Some(ifname.into()),
            args: Some("IgnoreUnknown=1".into()),
            path: Some(CNI_PLUGIN_DIR.into()),
        }
    }

    pub fn with_command(mut self, command: &str) -> CniEnv {
        self.command = Some(command.into());
        self
    }
}

/// Runs `plugin` inside namespace `node_ns` (setns in the child only) with `env` and `stdin`.
pub fn exec_plugin(node_ns: &str, plugin: &Path, env: &CniEnv, stdin: &[u8]) -> CniOut {
    let nsf = open_netns(node_ns);
    let fd = nsf.as_raw_fd();
    let mut cmd = Command::new(plugin);
    for (k, v) in [
        ("CNI_COMMAND", &env.command),
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setns (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    drop(nsf);
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let te = std::thread::spawn(move || {
        let mut v = String::new();
        se.read_to_string(&mut v).ok();
        v
    });
    let mut stdout = String::new();
    so.read_to_string(&mut stdout).ok();
    let status = child.wait().expect("wait for plugin");
    let elapsed = start.elapsed();
    writer.join().ok();
    CniOut {
        status,
        stdout,
        stderr: te.join().unwrap(),
        elapsed,
    }
}

/// A temporary directory removed on Drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vethfp-it-{}", unique_name(prefix)));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cleanup: rm {:?}: {e}", self.0);
        }
    }
}

/// A CNI network on a fresh [`Node`]: a name, host-local IPAM with its own data dir
/// (10.1.0.0/24 and fd00:1::/64), and the node's private bpffs in the config.
pub struct CniNet {
    // Field order is drop order: containers made by tests go before the node.
    pub node: Node,
    pub ipam_dir: TempDir,
    pub name: String,
}

impl Default for CniNet {
    fn default() -> Self {
        Self::new()
    }
}

impl CniNet {
    pub fn new() -> CniNet {
        cni_plugin("host-local");
        CniNet {
            node: Node::new(),
            ipam_dir: TempDir::new("i"),
            name: unique_name("net"),
        }
    }

    pub fn ipam(&self) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
            "dataDir": self.ipam_dir.path(),
        })
    }

    /// The standalone vethfp config at `version`.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "vethfp",
            "bpffs": self.node.bpffs_dir(),
            "ipam": self.ipam(),
        })
    }

    /// Runs the vethfp binary as a CNI plugin inside the node.
    pub fn vethfp(&self, env: &CniEnv, conf: &Value) -> CniOut {
        exec_plugin(
            self.node.name(),
            &vethfp_bin(),
            env,
            conf.to_string().as_bytes(),
        )
    }

    /// Runs another plugin (from /usr/lib/cni) inside the node.
    pub fn plugin(&self, name: &str, env: &CniEnv, conf: &Value) -> CniOut {
        exec_plugin(
            self.node.name(),
            &cni_plugin(name),
            env,
            conf.to_string().as_bytes(),
        )
    }

    /// Addresses host-local still has allocated (its files named by address).
    pub fn allocated(&self) -> Vec<String> {
        let dir = self.ipam_dir.path().join(&self.name);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// Links in the node other than lo.
    pub fn node_links(&self) -> Vec<String> {
        self.node
            .ns
            .link_names()
            .into_iter()
            .filter(|l| l != "lo")
            .collect()
    }
}

/// `conf` with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// A container namespace for CNI tests (quiet IPv6, so counters settle).
pub fn container_ns() -> Netns {
    let ns = Netns::new("vcc");
    ns.quiet_ipv6();
    ns
}

/// A container id unique across test processes.
pub fn container_id() -> String {
    format!("ctr{}", unique_name("c"))
}

/// The MAC of `ifname` in namespace `ns` (as `ip` reports it).
pub fn link_mac(ns: &Netns, ifname: &str) -> String {
    ns.link(ifname)
        .unwrap_or_else(|| panic!("no {ifname} in {}", ns.name()))["address"]
        .as_str()
        .expect("address")
        .to_string()
}
