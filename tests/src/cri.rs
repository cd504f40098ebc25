//! A Kubernetes node in a box: Debian's containerd (CRI plugin, runc) with vethfp as its CNI,
//! driven through the CRI v1 gRPC API as kubelet drives it.
//!
//! Everything containerd touches is private to one [`CriNode`]:
//! - its network namespace is a fresh harness [`Node`] (vethfp's state binds to it), with the
//!   node's own bpffs passed through the conflist;
//! - its mount namespace is held by a small `unshare --mount` process that puts tmpfs over
//!   `/run` (runc state, shim sockets, pod netns mounts, xtables lock) and `/var/lib`, and binds
//!   a temp dir onto `/var/lib/cni` (libcni's cache, so the test can inspect it); containerd is
//!   (re)started inside that namespace, so a restart finds the pods again;
//! - config, socket, root, state, CNI bin/conf dirs, host-local leases and pod logs live under
//!   one temp dir; every pod's cgroups under a unique cgroup parent.
//!
//! Drop removes every pod through CRI, stops containerd, then kills by pid whatever is left in
//! the mount namespace or the pods' cgroups, and removes those cgroups: nothing survives a
//! failed test.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cri_v1::{
    self as cri, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    cni::{CNI_PLUGIN_DIR, TempDir},
    node::{Node, vethfp_bin},
    ns::{open_netns, unique_name},
};

/// The image every pod uses (sandbox and containers), imported from a tarball built here.
pub const IMAGE: &str = "localhost/vethfp-busybox:1";
/// What the web container's httpd serves at `/`.
pub const WEB_BODY: &str = "vethfp-cri-ok";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "sleep", "httpd", "wget", "ping", "ip", "cat", "grep", "hostname", "ls", "echo", "true",
];

/// Whether containerd can run here; `Err` says what is missing (the caller skips the test).
pub fn containerd_available() -> Result<(), String> {
    for (bin, pkg) in [
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("unshare", "util-linux"),
    ] {
        if !have(bin) {
            return Err(format!(
                "{bin} is not installed: `cargo xtask setup` or apt-get install {pkg}"
            ));
        }
    }
    Ok(())
}

/// Whether `bin` is in PATH.
pub fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Which CNI network containerd gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// vethfp standalone, tc mode, then portmap.
    Tc,
    /// vethfp standalone, xdp mode, then portmap.
    Xdp,
    /// ptp (with host-local) first, vethfp chained after it, then portmap.
    ChainedPtp,
    /// ptp and portmap only: no vethfp (the bench's baseline).
    PtpOnly,
}

/// Pod CIDRs of every [`CriNode`].
pub const POD_V4: &str = "10.1.0.0/24";
pub const POD_V6: &str = "fd00:1::/64";

/// The nameserver every pod's sandbox config names (a ClusterIP, as kubelet passes).
pub const POD_DNS: &str = "10.96.0.10";

/// A pod sandbox and its addresses (from PodSandboxStatus).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub v4: String,
    pub v6: String,
}

/// Result of ExecSync.
#[derive(Debug)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// containerd with its CRI plugin, in a node of its own (see the module docs).
pub struct CriNode {
    pub node: Node,
    pub dir: TempDir,
    pub mode: NetMode,
    /// Pod addresses from both pod CIDRs (else IPv4 only).
    pub dual_stack: bool,
    pub network: String,
    cgroup_parent: String,
    holder: Option<Child>,
    containerd: Option<Child>,
    rt: tokio::runtime::Runtime,
    runtime: Option<RuntimeServiceClient<Channel>>,
    images: Option<ImageServiceClient<Channel>>,
    /// The CNI bin and conf dirs were filled by someone else ([`CriNode::start_installed`]);
    /// the node's bpffs is bound onto /sys/fs/bpf in containerd's mount namespace.
    installed: bool,
}

impl CriNode {
    /// A node running containerd with the conflist of `mode`, the image imported, the CRI
    /// network ready.
    pub fn start(mode: NetMode) -> CriNode {
        CriNode::start_with(mode, true)
    }

    /// [`CriNode::start`], IPv4-only pods unless `dual_stack`.
    pub fn start_with(mode: NetMode, dual_stack: bool) -> CriNode {
        CriNode::start_inner(mode, dual_stack, None)
    }

    /// A node whose CNI bin dir (`bin`) and conf dir (`net.d`) are empty until
    /// `install(node, bin, conf)` fills them — as a DaemonSet's init container does on a real
    /// node — before containerd starts. In containerd's mount namespace the node's bpffs is
    /// bound onto /sys/fs/bpf, so a conflist naming `/sys/fs/bpf/vethfp` reaches the node's
    /// state. IPv4 pods; `mode` is only what [`CriNode::conflist`] would return.
    pub fn start_installed(install: impl FnOnce(&Node, &Path, &Path)) -> CriNode {
        CriNode::start_inner(NetMode::Tc, false, Some(Box::new(install)))
    }

    #[allow(clippy::type_complexity)]
    fn start_inner(
        mode: NetMode,
        dual_stack: bool,
        install: Option<Box<dyn FnOnce(&Node, &Path, &Path) + '_>>,
    ) -> CriNode {
        let node = Node::new();
        let dir = TempDir::new("cri");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut n = CriNode {
            node,
            dir,
            mode,
            dual_stack,
            network: unique_name("k8s"),
            cgroup_parent: format!("/vethfp-it-{}", unique_name("cg")),
            holder: None,
            containerd: None,
            rt,
            runtime: None,
            images: None,
            installed: install.is_some(),
        };
        n.prepare();
        if let Some(install) = install {
            install(&n.node, &n.d("bin"), &n.d("net.d"));
        }
        n.start_holder();
        n.start_containerd();
        n.import_image();
        n
    }

    fn d(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The containerd socket.
    pub fn socket(&self) -> PathBuf {
        self.d("containerd.sock")
    }

    /// host-local's data dir.
    pub fn ipam_dir(&self) -> PathBuf {
        self.d("ipam")
    }

    /// libcni's cache (bound onto /var/lib/cni inside containerd's mount namespace).
    pub fn cni_cache(&self) -> PathBuf {
        self.d("cni-cache")
    }

    /// The conflist containerd uses.
    pub fn conflist(&self) -> Value {
        conflist(
            self.mode,
            self.dual_stack,
            &self.network,
            &self.node.bpffs_dir(),
            &self.ipam_dir(),
        )
    }

    fn prepare(&self) {
        for p in [
            "bin",
            "net.d",
            "ipam",
            "cni-cache",
            "root",
            "state",
            "logs",
            "opt",
        ] {
            std::fs::create_dir_all(self.d(p)).unwrap();
        }
        if self.installed {
            std::fs::write(self.d("config.toml"), self.config_toml()).unwrap();
            return;
        }
        // Installed as docs/CNI.md says: the binary under its type name in the CNI bin dir
        // (containerd 1.6 takes one bin dir, so the reference plugins are linked in too).
        // Absolute: VETHFP_BIN may be relative to the caller's working directory.
        let bin = vethfp_bin();
        let bin = std::fs::canonicalize(&bin).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it: cargo build -p veth-user)",
                bin.display()
            )
        });
        std::os::unix::fs::symlink(bin, self.d("bin/vethfp")).unwrap();
        for p in ["host-local", "portmap", "ptp", "loopback"] {
            let src = Path::new(CNI_PLUGIN_DIR).join(p);
            assert!(
                src.is_file(),
                "{} is missing: apt-get install containernetworking-plugins",
                src.display()
            );
            std::os::unix::fs::symlink(&src, self.d("bin").join(p)).unwrap();
        }
        std::fs::write(
            self.d("net.d/10-vethfp.conflist"),
            serde_json::to_string_pretty(&self.conflist()).unwrap(),
        )
        .unwrap();
        std::fs::write(self.d("config.toml"), self.config_toml()).unwrap();
    }

    fn config_toml(&self) -> String {
        let d = self.dir.path().display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # No CAP_SYS_RESOURCE on this kind of machine: never lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
        )
    }

    /// The process holding containerd's mount namespace: private tmpfs over /run and
    /// /var/lib, libcni's cache bound from the temp dir. Runs in the node's netns.
    fn start_holder(&mut self) {
        let bpffs = if self.installed {
            let m = self.node.bpffs_dir();
            format!(
                "mount --bind '{}' /sys/fs/bpf\n",
                m.parent().unwrap().display()
            )
        } else {
            String::new()
        };
        let script = format!(
            "set -e
{bpffs}mount -t tmpfs -o mode=0755 vethfp-cri-run /run
mkdir -p /run/netns
mount -t tmpfs -o mode=0755 vethfp-cri-lib /var/lib
mkdir -p /var/lib/cni
mount --bind '{}' /var/lib/cni
echo ready
exec sleep 2147483647",
            self.cni_cache().display()
        );
        let nsf = open_netns(self.node.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn unshare");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .ok();
        self.holder = Some(child);
        assert_eq!(
            line.trim(),
            "ready",
            "containerd's mount namespace could not be set up"
        );
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().expect("holder").id()
    }

    fn mnt_ns_ino(&self) -> u64 {
        std::fs::metadata(format!("/proc/{}/ns/mnt", self.holder_pid()))
            .expect("holder's mount namespace")
            .ino()
    }

    /// Starts containerd in the node (network and mount namespace) and waits until CRI
    /// answers with the network ready.
    pub fn start_containerd(&mut self) {
        assert!(self.containerd.is_none(), "containerd already running");
        let netf = open_netns(self.node.name());
        let mntf = std::fs::File::open(format!("/proc/{}/ns/mnt", self.holder_pid()))
            .expect("open holder's mount namespace");
        let (netfd, mntfd) = (netf.as_raw_fd(), mntf.as_raw_fd());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.d("containerd.log"))
            .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.d("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only setns between fork and exec (the child is single-threaded).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(mntfd, libc::CLONE_NEWNS) != 0
                    || libc::setns(netfd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.containerd = Some(cmd.spawn().expect("spawn containerd"));
        drop((netf, mntf));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.containerd.as_mut().unwrap().try_wait().unwrap() {
                self.containerd = None;
                panic!("containerd exited ({st}):\n{}", self.log_tail());
            }
            if let Some(()) = self.try_connect() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI not ready in 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_connect(&mut self) -> Option<()> {
        let sock = self.socket();
        if !sock.exists() {
            return None;
        }
        let ch = self.rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(sock).await?,
                        ))
                    }
                }))
                .await
        });
        let ch = ch.ok()?;
        let mut rs = RuntimeServiceClient::new(ch.clone());
        let st = self
            .rt
            .block_on(rs.status(cri::StatusRequest { verbose: false }))
            .ok()?
            .into_inner();
        let ready = st.status.is_some_and(|s| {
            ["RuntimeReady", "NetworkReady"]
                .iter()
                .all(|c| s.conditions.iter().any(|x| x.r#type == *c && x.status))
        });
        if !ready {
            return None;
        }
        self.runtime = Some(rs);
        self.images = Some(ImageServiceClient::new(ch));
        Some(())
    }

    /// SIGTERM to containerd and wait for it; pods (shims, containers) keep running.
    pub fn stop_containerd(&mut self) {
        self.runtime = None;
        self.images = None;
        if let Some(mut c) = self.containerd.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    c.kill().ok();
                    c.wait().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Whether containerd is running.
    pub fn containerd_running(&mut self) -> bool {
        self.containerd
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.d("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn rs(&mut self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone().expect("containerd is not running")
    }

    fn import_image(&mut self) {
        let tar = build_image(&self.d("image"));
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
            ])
            .arg(&tar)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr images import: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut is = self.images.clone().unwrap();
        let st = self
            .rt
            .block_on(is.image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            }))
            .expect("ImageStatus")
            .into_inner();
        assert!(st.image.is_some(), "CRI does not see {IMAGE} after import");
    }

    /// RunPodSandbox (with `port_mappings` as hostPort would give), then PodSandboxStatus for
    /// its addresses; asserts it has one from each pod CIDR (`v6` is empty unless dual-stack).
    pub fn run_pod(&mut self, name: &str, port_mappings: &[(i32, i32)]) -> Pod {
        let config = self.sandbox_config(name, port_mappings);
        let mut rs = self.rs();
        let id = self
            .rt
            .block_on(rs.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        let st = self
            .rt
            .block_on(rs.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            }))
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("sandbox status");
        assert_eq!(
            st.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{name} ready"
        );
        let net = st.network.expect("sandbox network status");
        let mut ips: Vec<String> = vec![net.ip];
        ips.extend(net.additional_ips.into_iter().map(|i| i.ip));
        let v4 = ips
            .iter()
            .find(|i| i.starts_with("10.1.0."))
            .unwrap_or_else(|| panic!("{name}: no IPv4 in {POD_V4}: {ips:?}"))
            .clone();
        let v6 = match ips.iter().find(|i| i.starts_with("fd00:1:")) {
            Some(v6) => v6.clone(),
            None if !self.dual_stack => String::new(),
            None => panic!("{name}: no IPv6 in {POD_V6}: {ips:?}"),
        };
        Pod {
            id,
            name: name.into(),
            v4,
            v6,
        }
    }

    fn sandbox_config(&self, name: &str, port_mappings: &[(i32, i32)]) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}-{}", self.network),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec![POD_DNS.into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec![],
            }),
            log_directory: self.d("logs").join(name).display().to_string(),
            port_mappings: port_mappings
                .iter()
                .map(|&(container_port, host_port)| cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port,
                    host_port,
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer + StartContainer in `pod` running `command` (the image's busybox).
    pub fn run_container(&mut self, pod: &Pod, name: &str, command: &[&str]) -> String {
        let sandbox_config = self.sandbox_config(&pod.name, &[]);
        let mut rs = self.rs();
        let id = self
            .rt
            .block_on(rs.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", self.log_tail()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(rs.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", self.log_tail()));
        id
    }

    /// ExecSync `cmd` in container `id` (timeout in seconds). A failed call (e.g. the
    /// timeout) is reported as exit code -1 with the gRPC status in `stderr`.
    pub fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> Exec {
        let mut rs = self.rs();
        let r = match self.rt.block_on(rs.exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })) {
            Ok(r) => r.into_inner(),
            Err(e) => {
                return Exec {
                    exit_code: -1,
                    stdout: String::new(),
                    stderr: format!("ExecSync failed: {e}"),
                };
            }
        };
        Exec {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        }
    }

    /// ExecSync that must exit 0; returns stdout.
    pub fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = self.exec(id, cmd, 30);
        assert_eq!(
            r.exit_code, 0,
            "exec {cmd:?}: exit {}: {}{}",
            r.exit_code, r.stdout, r.stderr
        );
        r.stdout
    }

    /// Runs `cmd` in `id` until it exits 0 (e.g. the first ping while IPv6 DAD finishes).
    pub fn exec_until_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.exec(id, cmd, 10);
            if r.exit_code == 0 {
                return r.stdout;
            }
            assert!(
                Instant::now() < deadline,
                "exec {cmd:?} did not succeed in 20 s: exit {}: {}{}",
                r.exit_code,
                r.stdout,
                r.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ids of the sandboxes CRI lists (any state).
    pub fn list_pods(&mut self) -> Vec<(String, i32)> {
        let mut rs = self.rs();
        self.rt
            .block_on(rs.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .expect("ListPodSandbox")
            .into_inner()
            .items
            .into_iter()
            .map(|p| (p.id, p.state))
            .collect()
    }

    /// StopPodSandbox then RemovePodSandbox (CNI DEL runs in the stop).
    pub fn remove_pod(&mut self, id: &str) {
        let mut rs = self.rs();
        self.rt
            .block_on(rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}\n{}", self.log_tail()));
        self.rt
            .block_on(rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}\n{}", self.log_tail()));
    }

    /// Files in libcni's cache (results of attachments it still knows).
    pub fn cni_cache_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.cni_cache(), &self.cni_cache(), &mut out);
        out
    }

    /// Addresses host-local still has allocated.
    pub fn leases(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(&self.network);
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

    /// The vethfp host end (`pair list`) holding `ip`.
    pub fn host_if_of(&self, ip: &str) -> String {
        let list = self.node.list_json();
        list.iter()
            .find(|e| {
                e["addrs"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.starts_with(&format!("{ip}/"))))
                })
            })
            .unwrap_or_else(|| panic!("no vethfp endpoint holds {ip}: {list:?}"))["host_if"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Routes in the node (v4 and v6) that mention `ip`.
    pub fn node_routes_to(&self, ip: &str) -> Vec<String> {
        let mut v = Vec::new();
        for fam in ["-4", "-6"] {
            v.extend(
                self.node
                    .ns
                    .ip(&[fam, "route", "show", "table", "all"])
                    .lines()
                    .filter(|l| {
                        l.split_whitespace()
                            .any(|w| w.split('/').next() == Some(ip))
                    })
                    .map(String::from),
            );
        }
        v
    }

    /// Runs `prog args` in the node's network namespace (setns in the child only); asserts
    /// success, returns stdout.
    pub fn in_node(&self, prog: &str, args: &[&str]) -> String {
        let nsf = open_netns(self.node.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new(prog);
        cmd.args(args);
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("run {prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} in the node: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// HTTP/1.0 GET / to `addr` from the node's network namespace; the response body.
    pub fn http_get_from_node(&self, addr: std::net::SocketAddr) -> Result<String, String> {
        crate::ns::run_in_netns(self.node.name(), move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            s.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read from {addr}: {e}"))?;
            resp.split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .ok_or_else(|| format!("no HTTP response from {addr}: {resp:?}"))
        })
    }

    /// Pids in containerd's mount namespace or in the pods' cgroups (not the holder).
    fn leftover_pids(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        let holder = self.holder.as_ref().map(|h| h.id() as i32);
        if holder.is_some() {
            let ino = self.mnt_ns_ino();
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.filter_map(|e| e.ok()) {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    if Some(pid) != holder
                        && std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                            .is_ok_and(|m| m.ino() == ino)
                    {
                        pids.insert(pid);
                    }
                }
            }
        }
        for cg in self.cgroup_dirs() {
            let mut files = Vec::new();
            walk(&cg, &cg, &mut files);
            for f in files.iter().filter(|f| f.ends_with("cgroup.procs")) {
                if let Ok(s) = std::fs::read_to_string(cg.join(f)) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        pids
    }

    /// This node's cgroup parent in every hierarchy that has it.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path().join(rel);
                if p.is_dir() {
                    v.push(p);
                }
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(rel);
        if unified.is_dir() {
            v.push(unified);
        }
        v
    }

    fn cleanup(&mut self) {
        if self.containerd_running() && self.runtime.is_some() {
            for (id, _) in self.list_pods() {
                let mut rs = self.rs();
                let r = self.rt.block_on(async {
                    rs.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await?;
                    rs.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                });
                if let Err(e) = r {
                    eprintln!("cleanup: remove pod {id}: {e}");
                }
            }
        }
        self.stop_containerd();
        // Whatever survived (shims, containers of a crashed containerd): SIGKILL by pid.
        for _ in 0..50 {
            let pids = self.leftover_pids();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                // SAFETY: kill(2) of processes this node started (its mount ns / cgroups).
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut h) = self.holder.take() {
            h.kill().ok();
            h.wait().ok();
        }
        for cg in self.cgroup_dirs() {
            remove_cgroup(&cg);
        }
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("cleanup: rmdir {}: {e}", dir.display());
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// The conflist of `mode` (cniVersion 1.0.0: containerd 1.6's libcni knows nothing newer).
pub fn conflist(
    mode: NetMode,
    dual_stack: bool,
    network: &str,
    bpffs: &Path,
    ipam_dir: &Path,
) -> Value {
    let ipam = |routes: bool| {
        let mut v = json!({
            "type": "host-local",
            "ranges": [[{"subnet": POD_V4}]],
            "dataDir": ipam_dir,
        });
        if dual_stack {
            v["ranges"] = json!([[{"subnet": POD_V4}], [{"subnet": POD_V6}]]);
        }
        if routes {
            v["routes"] = if dual_stack {
                json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
            } else {
                json!([{"dst": "0.0.0.0/0"}])
            };
        }
        v
    };
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let ptp = json!({"type": "ptp", "ipMasq": false, "ipam": ipam(true)});
    let plugins = match mode {
        NetMode::Tc | NetMode::Xdp => vec![
            json!({
                "type": "vethfp",
                "bpffs": bpffs,
                "mode": if mode == NetMode::Xdp { "xdp" } else { "tc" },
                "ipam": ipam(false),
            }),
            portmap,
        ],
        NetMode::ChainedPtp => vec![ptp, json!({"type": "vethfp", "bpffs": bpffs}), portmap],
        NetMode::PtpOnly => vec![ptp, portmap],
    };
    json!({"cniVersion": "1.0.0", "name": network, "plugins": plugins})
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn tar(dir: &Path, out: &Path, what: &[&str]) {
    let st = Command::new("tar")
        .arg("--numeric-owner")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(what)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar {}", out.display());
}

/// A docker-archive image tarball (what `ctr images import` reads): busybox-static with the
/// applets the tests use, `/www/index.html` for httpd, and `sleep` as the default command
/// (so it also serves as the pause image). Built locally: no registry.
pub fn build_image(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), WEB_BODY).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    tar(&root, &img.join("layer.tar"), &["."]);
    let diff_id = sha256_file(&img.join("layer.tar"));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Cmd": ["/bin/sleep", "2147483647"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(img.join("config.json"), config.to_string()).unwrap();
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(img.join("manifest.json"), manifest.to_string()).unwrap();
    let out = dir.join("image.tar");
    tar(&img, &out, &["manifest.json", "config.json", "layer.tar"]);
    out
}
