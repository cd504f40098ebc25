//! End to end under a real runtime: podman (Debian's 4.3, CNI backend, runc) runs two
//! busybox containers on a vethfp network; they reach each other, `vethfp stats` shows the
//! fast path carried it, and `podman rm` leaves nothing behind.
//!
//! Everything podman uses is private to the test: containers.conf (CONTAINERS_CONF), storage
//! (--root/--runroot, vfs), the CNI config dir, the plugin dir, a node network namespace
//! (podman runs inside it via setns, so host ends never appear in the machine's namespace)
//! and the node's own bpffs. The image is busybox-static imported from a tarball built here:
//! no registry. Three machine paths podman insists on (libcni's cache /var/lib/cni, the image
//! blob cache under /var/lib/containers, runc's state /run/runc) are removed afterwards if
//! this test created them.
//!
//! Needs: podman, runc, busybox-static, containernetworking-plugins (`cargo xtask setup`).

use std::{
    ffi::OsStr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use serde_json::{Value, json};
use vethfp_tests::{
    cni::{CniNet, TempDir},
    unique_name, vethfp_bin,
};

const MACHINE_PATHS: [&str; 3] = ["/var/lib/cni", "/var/lib/containers", "/run/runc"];
const BUSYBOX: &str = "/bin/busybox";

/// Removes, on Drop, the machine paths podman created during the test.
struct MachinePaths(Vec<PathBuf>);

impl MachinePaths {
    fn snapshot() -> MachinePaths {
        MachinePaths(
            MACHINE_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
        )
    }
}

impl Drop for MachinePaths {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.exists()
                && let Err(e) = std::fs::remove_dir_all(p)
            {
                eprintln!("cleanup: rm {}: {e}", p.display());
            }
        }
    }
}

/// A private podman: its config, storage and CNI dirs under one temp dir, run in the node.
struct Podman<'a> {
    net: &'a CniNet,
    dir: TempDir,
}

impl Podman<'_> {
    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    fn cmd<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let nsf = std::fs::File::open(Path::new("/run/netns").join(self.net.node.name()))
            .expect("open node netns");
        let fd = nsf.as_raw_fd();
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.conf_path())
            .env_remove("CONTAINERS_STORAGE_CONF")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().expect("run podman")
    }

    fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        let shown: Vec<String> = args
            .clone()
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Containers first (unmounts their shm, runs CNI DEL), then the storage.
        let out = self.cmd(["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: podman rm --all: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = self.cmd(["system", "reset", "--force"]);
    }
}

fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// A rootfs tarball: busybox-static and the applets the test uses.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "ping", "ip", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar rootfs");
    tar
}

#[test]
fn podman_two_containers_over_the_fast_path() {
    for (bin, pkg) in [("podman", "podman"), ("runc", "runc")] {
        assert!(
            have(bin),
            "{bin} is not installed: `cargo xtask setup` or apt-get install {pkg}"
        );
    }
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    let _machine = MachinePaths::snapshot();
    let net = CniNet::new();
    let podman = Podman {
        net: &net,
        dir: TempDir::new("p"),
    };
    let d = podman.dir.path().to_path_buf();
    let bin = d.join("bin");
    let cni = d.join("cni");
    for p in [&bin, &cni, &d.join("tmp")] {
        std::fs::create_dir_all(p).unwrap();
    }
    // Installed the way docs/CNI.md says: the binary under the type name in a plugin dir.
    std::os::unix::fs::symlink(vethfp_bin(), bin.join("vethfp")).unwrap();
    let network = unique_name("pn");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "vethfp",
            "bpffs": net.node.bpffs_dir(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.1.0.0/24"}]],
                "dataDir": net.ipam_dir.path(),
            },
        }],
    });
    std::fs::write(
        cni.join(format!("{network}.conflist")),
        serde_json::to_string_pretty(&conflist).unwrap(),
    )
    .unwrap();
    std::fs::write(
        podman.conf_path(),
        format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"

[network]
network_backend = "cni"
network_config_dir = "{cni}"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
"#,
            events = d.join("events.log").display(),
            tmp = d.join("tmp").display(),
            cni = cni.display(),
            bin = bin.display(),
        ),
    )
    .unwrap();

    let tar = busybox_tarball(&d);
    podman.ok([
        OsStr::new("import"),
        tar.as_os_str(),
        OsStr::new("localhost/vfp-busybox"),
    ]);
    let info = podman.ok(["info", "--format", "{{.Host.NetworkBackend}}"]);
    assert_eq!(info, "cni", "podman uses the CNI backend");

    let mut ids = Vec::new();
    for name in ["c1", "c2"] {
        let start = Instant::now();
        let id = podman.ok([
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &network,
            "localhost/vfp-busybox",
            "sleep",
            "3600",
        ]);
        eprintln!(
            "podman run {name} (with CNI ADD): {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        ids.push(id);
    }
    let inspect = |name: &str| -> Value {
        let out = podman.ok(["inspect", name]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    let ip_of = |name: &str| -> String {
        inspect(name)["NetworkSettings"]["Networks"][&network]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ip1, ip2) = (ip_of("c1"), ip_of("c2"));
    let sandboxes: Vec<String> = ["c1", "c2"]
        .iter()
        .map(|n| {
            inspect(n)["NetworkSettings"]["SandboxKey"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // Which host end is whose: by address, from `pair list`.
    let list = net.node.list_json();
    assert_eq!(list.len(), 2, "{list:?}");
    let host_of = |ip: &str| -> String {
        list.iter()
            .find(|e| {
                e["addrs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a.as_str().unwrap().starts_with(&format!("{ip}/")))
            })
            .unwrap_or_else(|| panic!("no endpoint with {ip}: {list:?}"))["host_if"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (h1, h2) = (host_of(&ip1), host_of(&ip2));
    // The MAC podman reports is the container end's real MAC (from the result).
    let mac1 = inspect("c1")["NetworkSettings"]["Networks"][&network]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        net.node.list_entry(&h1).unwrap()["container_mac"],
        mac1.as_str()
    );

    assert_eq!(net.node.ns.read_sysctl("net.ipv4.ip_forward"), "0");
    let before = net.node.all_stats();
    let n = 10;
    podman.ok([
        "exec",
        "c1",
        "ping",
        "-c",
        &n.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        &ip2,
    ]);
    podman.ok(["exec", "c2", "ping", "-c", "3", "-W", "2", &ip1]);
    let after = net.node.all_stats();
    let d1 = after[&h1].since(&before[&h1]);
    let d2 = after[&h2].since(&before[&h2]);
    eprintln!("c1 {h1}: {d1:?}\nc2 {h2}: {d2:?}");
    // Forwarding is off in the node: only the fast path can carry container to container.
    assert!(d1.from("fast").packets >= n + 3, "c1 sent fast: {d1:?}");
    assert!(d2.to("fast").packets >= n + 3, "c2 received fast: {d2:?}");
    assert!(d2.from("fast").packets >= n + 3, "c2 replied fast: {d2:?}");

    let start = Instant::now();
    podman.ok(["rm", "--force", "--time", "0", "c1", "c2"]);
    eprintln!(
        "podman rm c1 c2 (with CNI DEL): {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    assert!(net.node_links().is_empty(), "{:?}", net.node_links());
    assert!(net.node.list_json().is_empty());
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    for s in &sandboxes {
        assert!(!Path::new(s).exists(), "podman's netns {s} is gone");
    }
    if let Ok(rd) = std::fs::read_dir("/var/lib/cni/results") {
        let left: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| ids.iter().any(|id| f.contains(id.as_str())))
            .collect();
        assert!(left.is_empty(), "libcni cache entries left: {left:?}");
    }
    assert!(podman.ok(["ps", "-aq"]).is_empty());
}
