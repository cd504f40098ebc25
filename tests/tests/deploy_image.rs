//! The image of `cargo xtask image` run the way kubelet runs the DaemonSet's containers, under
//! podman, in a test node's network namespace: the init container, then the agent, each with
//! the command, environment, mounts (hostPath dirs mapped to this test's dirs, propagation,
//! read-only), capabilities and read-only root of deploy/kubernetes/daemonset.yaml — read
//! from the manifest, so the two cannot drift. Then the plugin the image installed adds two
//! pods with the conflist it wrote (CNI ADD as a runtime runs it, with CNI_PATH = the
//! installed bin dir, so the image's host-local too), pod-to-pod traffic is counted fast, the
//! agent's probes answer, and stopping the container (SIGTERM) leaves the pods working.

use std::{
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vethfp_tests::{
    Node,
    agent::http_get,
    cni::{CniEnv, TempDir, container_id, container_ns, exec_plugin},
    cri::{CriNode, have},
    deploy::{self, Mount},
    ns::{open_netns, unique_name},
    ping, udp_transfer,
};

/// The image the DaemonSet names (`cargo xtask image` builds and loads it).
fn image(ds: &Value) -> String {
    deploy::container(ds, "agent")["image"]
        .as_str()
        .unwrap()
        .to_string()
}

fn podman(node: &str, args: &[String]) -> Output {
    let nsf = open_netns(node);
    let fd = nsf.as_raw_fd();
    // podman's default sysctls (net.ipv4.ping_group_range) are for a pod network namespace;
    // runc refuses them in a host one, and kubelet sets none for a hostNetwork pod.
    let conf = std::env::temp_dir().join(format!("vethfp-it-{}.conf", unique_name("pod")));
    // Limits within what this kind of machine allows (as cni_podman.rs), runc, no systemd.
    std::fs::write(
        &conf,
        "[containers]\ndefault_sysctls = []\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf).args(args);
    // SAFETY: only setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run podman");
    std::fs::remove_file(&conf).ok();
    out
}

/// `podman run` arguments for container `c` of the DaemonSet, hostPath dirs mapped by `host`
/// and configMap volumes by `config_map`.
fn run_args(
    ds: &Value,
    c: &Value,
    node: &Node,
    host: &dyn Fn(&str) -> PathBuf,
    config_map: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&Value) -> String,
) -> Vec<String> {
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let mut a: Vec<String> = vec![
        "--runtime".into(),
        "runc".into(),
        "--network".into(),
        format!("ns:/run/netns/{}", node.name()),
        "--pull".into(),
        "never".into(),
    ];
    let sc = &c["securityContext"];
    assert!(sc["privileged"].is_null(), "not privileged");
    a.extend(["--cap-drop".into(), "all".into()]);
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        a.extend(["--cap-add".into(), cap.as_str().unwrap().to_lowercase()]);
    }
    if sc["readOnlyRootFilesystem"] == true {
        a.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        a.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if let Some(u) = sc["runAsUser"].as_u64() {
        a.extend(["--user".into(), u.to_string()]);
    }
    for Mount {
        mount_path,
        host_path,
        config_map: cm,
        read_only,
        propagation,
        ..
    } in deploy::mounts(ds, c)
    {
        let src = match (&host_path, &cm) {
            (Some(h), _) => host(h),
            (_, Some(n)) => config_map(n),
            _ => panic!("{mount_path}: only hostPath and configMap volumes"),
        };
        let mut opts = vec![if read_only { "ro" } else { "rw" }];
        match propagation.as_deref() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => opts.push("rshared"),
            _ => opts.push("rprivate"),
        }
        a.extend([
            "-v".into(),
            format!("{}:{mount_path}:{}", src.display(), opts.join(",")),
        ]);
    }
    for e in c["env"].as_array().into_iter().flatten() {
        a.extend([
            "-e".into(),
            format!("{}={}", e["name"].as_str().unwrap(), env(e)),
        ]);
    }
    let cmd: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    a.extend(["--entrypoint".into(), cmd[0].clone(), image(ds)]);
    a.extend(cmd[1..].iter().cloned());
    a
}

struct Running {
    node: String,
    name: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        podman(&self.node, &["rm".into(), "-f".into(), self.name.clone()]);
    }
}

#[test]
fn image_runs_as_the_daemonset_does() {
    for (bin, pkg) in [("podman", "podman"), ("runc", "runc")] {
        if !have(bin) {
            // A missing tool only: `cargo xtask setup` installs both.
            eprintln!("SKIPPED: {bin} is not installed (apt-get install {pkg})");
            return;
        }
    }
    let ds = deploy::daemonset();
    let img = image(&ds);
    let out = Command::new("podman")
        .args(["image", "exists", &img])
        .status()
        .unwrap();
    assert!(
        out.success(),
        "{img} is not in podman's store: run `cargo xtask image`"
    );

    let node = Node::new();
    let dir = TempDir::new("img");
    for d in ["bin", "net.d", "cm", "ipam"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(dir.path().join("xtables.lock"), "").unwrap();
    std::fs::write(
        dir.path().join("cm/conflist.json"),
        serde_json::to_string_pretty(&deploy::conflist_template()).unwrap(),
    )
    .unwrap();
    let bpffs_mount = node.bpffs_dir().parent().unwrap().to_path_buf();
    let d = dir.path().to_path_buf();
    let host = |p: &str| -> PathBuf {
        match p {
            "/sys/fs/bpf" => bpffs_mount.clone(),
            "/opt/cni/bin" => d.join("bin"),
            "/etc/cni/net.d" => d.join("net.d"),
            "/run/netns" => PathBuf::from("/run/netns"),
            "/run/xtables.lock" => d.join("xtables.lock"),
            other => panic!("hostPath {other} is not mapped by this test"),
        }
    };
    let cm = |n: &str| -> PathBuf {
        assert_eq!(n, "vethfp-cni");
        d.join("cm")
    };
    // This node's pod CIDR as a per-node value (the API path is tests/tests/deploy.rs').
    let env = |e: &Value| -> String {
        match e["name"].as_str().unwrap() {
            "NODE_NAME" => "test-node".into(),
            "POD_CIDRS" => "10.1.0.0/24".into(),
            _ => e["value"].as_str().unwrap_or_default().into(),
        }
    };

    // Init container: to completion, then the agent.
    let init = deploy::container(&ds, "install-cni");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(run_args(&ds, &init, &node, &host, &cm, &env));
    let out = podman(node.name(), &args);
    assert!(
        out.status.success(),
        "init container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = dir.path().join("bin/vethfp");
    assert!(installed.is_file());
    let mut conf: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("net.d/10-vethfp.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"],
        json!([[{ "subnet": "10.1.0.0/24" }]])
    );

    let agent = deploy::container(&ds, "agent");
    let name = unique_name("vfpag");
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(run_args(&ds, &agent, &node, &host, &cm, &env));
    // Removed on every exit, also when it was created but did not start.
    let running = Running {
        node: node.name().to_string(),
        name: name.clone(),
    };
    let out = podman(node.name(), &args);
    assert!(
        out.status.success(),
        "agent container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = || {
        let o = podman(node.name(), &["logs".into(), name.clone()]);
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _, body)) = http_get(node.name(), "/readyz") {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(Instant::now() < deadline, "agent not ready:\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(node.name(), "/healthz").unwrap().0, 200);

    // Two pods through the installed plugin and conflist, as a runtime on this node would
    // (the conflist's bpffs is the node's /sys/fs/bpf/vethfp; here that bpffs is the node's).
    conf["plugins"][0]["bpffs"] = json!(node.bpffs_dir());
    conf["plugins"][0]["ipam"]["dataDir"] = json!(dir.path().join("ipam"));
    let mut net = conf["plugins"][0].clone();
    net["cniVersion"] = conf["cniVersion"].clone();
    net["name"] = conf["name"].clone();
    let pods: Vec<_> = (0..2).map(|_| container_ns()).collect();
    let mut ips = Vec::new();
    for p in &pods {
        let mut env = CniEnv::full("ADD", &container_id(), p.name(), "eth0");
        env.path = Some(dir.path().join("bin").display().to_string());
        let r = exec_plugin(node.name(), &installed, &env, net.to_string().as_bytes())
            .ok("ADD with the installed plugin");
        let ip = r["ips"][0]["address"].as_str().unwrap();
        ips.push(
            ip.split('/')
                .next()
                .unwrap()
                .parse::<std::net::IpAddr>()
                .unwrap(),
        );
    }
    assert!(ping(pods[0].name(), ips[1]));
    let fast = |n: u64| {
        assert_eq!(
            udp_transfer(pods[0].name(), None, pods[1].name(), ips[1], n, 100),
            n
        );
    };
    let before: u64 = node
        .all_stats()
        .values()
        .map(|s| s.from("fast").packets)
        .sum();
    fast(500);
    let after: u64 = node
        .all_stats()
        .values()
        .map(|s| s.from("fast").packets)
        .sum();
    assert!(after - before >= 500, "fast {before} -> {after}");

    // SIGTERM (podman stop, as kubelet stops a container): the pods keep the fast path.
    let out = podman(
        node.name(),
        &["stop".into(), "-t".into(), "30".into(), name.clone()],
    );
    assert!(out.status.success());
    let log = logs();
    assert!(log.contains("the datapath stays in place"), "{log}");
    let before = after;
    fast(500);
    let after: u64 = node
        .all_stats()
        .values()
        .map(|s| s.from("fast").packets)
        .sum();
    assert!(
        after - before >= 500,
        "after stop: fast {before} -> {after}"
    );
    drop(running);
}

/// The same DaemonSet containers on a containerd node of the CRI harness (as in
/// tests/tests/cri_node.rs): the init container fills containerd's (empty) CNI bin and conf
/// dirs before containerd starts; containerd then creates pods with the plugin, conflist and
/// host-local the image installed (the conflist unchanged: its bpffs /sys/fs/bpf/vethfp is
/// the node's bpffs there); pod-to-pod pings are counted fast; the agent's probes answer;
/// after the agent container is stopped the pods keep working on the fast path.
#[test]
fn containerd_runs_pods_with_the_plugin_the_image_installed() {
    if let Err(why) = vethfp_tests::cri::containerd_available() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    for (bin, pkg) in [("podman", "podman"), ("runc", "runc")] {
        if !have(bin) {
            eprintln!("SKIPPED: {bin} is not installed (apt-get install {pkg})");
            return;
        }
    }
    let ds = deploy::daemonset();
    assert!(
        Command::new("podman")
            .args(["image", "exists", &image(&ds)])
            .status()
            .unwrap()
            .success(),
        "{} is not in podman's store: run `cargo xtask image`",
        image(&ds)
    );
    let dir = TempDir::new("imgk");
    std::fs::create_dir_all(dir.path().join("cm")).unwrap();
    std::fs::write(dir.path().join("xtables.lock"), "").unwrap();
    std::fs::write(
        dir.path().join("cm/conflist.json"),
        serde_json::to_string_pretty(&deploy::conflist_template()).unwrap(),
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let cm = |n: &str| -> PathBuf {
        assert_eq!(n, "vethfp-cni");
        d.join("cm")
    };
    let env = |e: &Value| -> String {
        match e["name"].as_str().unwrap() {
            "NODE_NAME" => "test-node".into(),
            "POD_CIDRS" => vethfp_tests::cri::POD_V4.into(),
            _ => e["value"].as_str().unwrap_or_default().into(),
        }
    };
    let mut k = CriNode::start_installed(|node, bin, conf| {
        let bpffs = node.bpffs_dir().parent().unwrap().to_path_buf();
        let host = |p: &str| -> PathBuf {
            match p {
                "/sys/fs/bpf" => bpffs.clone(),
                "/opt/cni/bin" => bin.to_path_buf(),
                "/etc/cni/net.d" => conf.to_path_buf(),
                other => panic!("hostPath {other} is not mapped for the init container"),
            }
        };
        let init = deploy::container(&ds, "install-cni");
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        args.extend(run_args(&ds, &init, node, &host, &cm, &env));
        let out = podman(node.name(), &args);
        assert!(
            out.status.success(),
            "init container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    // The agent. containerd's pod netns mounts live in the harness's private mount namespace
    // (a bind from another mount namespace is refused), so its /run/netns is an empty dir
    // here; nothing below needs the agent to enter a pod.
    let run_netns = d.join("netns");
    std::fs::create_dir_all(&run_netns).unwrap();
    let bpffs = k.node.bpffs_dir().parent().unwrap().to_path_buf();
    let host = |p: &str| -> PathBuf {
        match p {
            "/sys/fs/bpf" => bpffs.clone(),
            "/run/netns" => run_netns.clone(),
            "/run/xtables.lock" => d.join("xtables.lock"),
            other => panic!("hostPath {other} is not mapped for the agent"),
        }
    };
    let agent = deploy::container(&ds, "agent");
    let name = unique_name("vfpak");
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(run_args(&ds, &agent, &k.node, &host, &cm, &env));
    // Removed on every exit, also when it was created but did not start.
    let _running = Running {
        node: k.node.name().to_string(),
        name: name.clone(),
    };
    let out = podman(k.node.name(), &args);
    assert!(
        out.status.success(),
        "agent container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(k.node.name(), "/readyz").map(|r| r.0) != Ok(200) {
        assert!(Instant::now() < deadline, "agent not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(k.node.name(), "/healthz").unwrap().0, 200);

    let a = k.run_pod("pod-a", &[]);
    let b = k.run_pod("pod-b", &[]);
    let client = k.run_container(&a, "client", &["/bin/sleep", "2147483647"]);
    let _server = k.run_container(&b, "server", &["/bin/sleep", "2147483647"]);
    let fast = |k: &CriNode| -> u64 {
        k.node
            .all_stats()
            .values()
            .map(|s| s.from("fast").packets)
            .sum()
    };
    let pings = |k: &mut CriNode| {
        k.exec_ok(
            &client,
            &["/bin/ping", "-c", "20", "-i", "0.05", "-w", "10", &b.v4],
        );
    };
    let before = fast(&k);
    pings(&mut k);
    let after = fast(&k);
    assert!(after - before >= 30, "pod to pod fast: {before} -> {after}");

    let out = podman(
        k.node.name(),
        &["stop".into(), "-t".into(), "30".into(), name.clone()],
    );
    assert!(out.status.success());
    let before = fast(&k);
    pings(&mut k);
    let after = fast(&k);
    assert!(
        after - before >= 30,
        "after the agent stopped: {before} -> {after}"
    );
    drop(_running);
}
