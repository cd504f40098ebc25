//! The Kubernetes deployment (deploy/): every manifest passes the Kubernetes schema
//! (kubernetes-validate, strict, for the current release); the manifests agree with the
//! install step and the agent (paths, ConfigMap key, bpffs, probes, metrics address); the
//! install step reads this node's pod CIDRs from a stand-in API server with the
//! ServiceAccount token, or from POD_CIDRS, installs idempotently and never overwrites another
//! plugin's conflist; the agent runs with only the capabilities the DaemonSet grants.

use std::{
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::fs::MetadataExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vethfp_tests::{
    Bpffs, Netns, Node,
    agent::http_get,
    cni::{CNI_PLUGIN_DIR, TempDir},
    deploy::{self, Mount},
    ns::open_netns,
    ping, vethfp_bin,
};

/// The Kubernetes release the manifests are checked against (kubernetes-validate's newest).
const KUBERNETES: &str = "1.37.0";

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(deploy::venv().join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn manifests_pass_the_kubernetes_schema() {
    let files = deploy::manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["configmap.yaml", "daemonset.yaml", "rbac.yaml"]);
    let (ok, out) = validate(&files);
    assert!(ok, "kubernetes-validate:\n{out}");
    // One "passed" line per object: 5 objects in 3 files.
    assert_eq!(
        out.lines().filter(|l| l.contains(" passed ")).count(),
        5,
        "{out}"
    );

    // The check can fail: a wrong type and an unknown field are refused.
    let dir = TempDir::new("k8s");
    let ds = std::fs::read_to_string(deploy::manifest_dir().join("daemonset.yaml")).unwrap();
    for (from, to) in [
        ("hostNetwork: true", "hostNetwork: \"yes\""),
        (
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetworking: true",
        ),
    ] {
        assert!(ds.contains(from));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, ds.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(&[bad]);
        assert!(!ok, "a broken DaemonSet ({to}) passed:\n{out}");
    }
}

#[test]
fn manifests_agree_with_the_install_step_and_the_agent() {
    let ds = deploy::daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    // ServiceAccount with get on nodes (the install step's API read).
    let sa = spec["serviceAccountName"].as_str().unwrap();
    deploy::object("ServiceAccount", sa);
    let binding = deploy::object("ClusterRoleBinding", "vethfp");
    assert_eq!(binding["subjects"][0]["name"], sa);
    let role = deploy::object("ClusterRole", binding["roleRef"]["name"].as_str().unwrap());
    assert_eq!(
        role["rules"],
        json!([{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }]),
        "least RBAC: get nodes only"
    );

    // Both containers run the image `cargo xtask image` builds: tagged with this version.
    let image = concat!("localhost/vethfp:", env!("CARGO_PKG_VERSION"));
    for c in ["install-cni", "agent"] {
        assert_eq!(
            deploy::container(&ds, c)["image"],
            image,
            "{c}: the image of this release (bump the manifest with the version)"
        );
    }

    // Install step: the script's default dirs are where the host's dirs are mounted.
    let init = deploy::container(&ds, "install-cni");
    assert_eq!(
        init["command"],
        json!(["/usr/local/bin/vethfp-install-cni"])
    );
    let m = deploy::mounts(&ds, &init);
    let at = |mounts: &[Mount], path: &str| -> Mount {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .cloned()
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"))
    };
    assert_eq!(
        at(&m, "/host/opt/cni/bin").host_path.as_deref(),
        Some("/opt/cni/bin")
    );
    assert_eq!(
        at(&m, "/host/etc/cni/net.d").host_path.as_deref(),
        Some("/etc/cni/net.d")
    );
    assert_eq!(
        at(&m, "/etc/vethfp").config_map.as_deref(),
        Some("vethfp-cni")
    );
    let script = std::fs::read_to_string(deploy::install_script()).unwrap();
    for default in [
        "CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}",
        "CNI_CONF_DIR=${CNI_CONF_DIR:-/host/etc/cni/net.d}",
        "TEMPLATE=${TEMPLATE:-/etc/vethfp/conflist.json}",
        "BPFFS=${BPFFS:-/sys/fs/bpf}",
    ] {
        assert!(script.contains(default), "the script's default {default}");
    }
    assert!(init["securityContext"]["capabilities"]["add"].is_null());
    assert!(
        init["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );

    // Agent: same bpffs as the conflist; probes on the address the agent serves; not
    // privileged; bpffs and the runtime's netns dir from the host with propagation.
    let agent = deploy::container(&ds, "agent");
    let args: Vec<&str> = agent["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let conflist = deploy::conflist_template();
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "vethfp");
    assert_eq!(plugin["ipam"]["type"], "host-local");
    assert!(args.contains(&format!("--bpffs={}", plugin["bpffs"].as_str().unwrap()).as_str()));
    let addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-addr="))
        .expect("--metrics-addr");
    assert!(
        addr.starts_with("127.0.0.1:"),
        "metrics stay on the node: {addr}"
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let g = &agent[probe]["httpGet"];
        assert_eq!(g["path"], path, "{probe}");
        assert_eq!(
            format!("{}:{}", g["host"].as_str().unwrap(), g["port"]),
            addr,
            "{probe}"
        );
    }
    assert!(agent["securityContext"]["privileged"].is_null());
    assert_eq!(agent["securityContext"]["allowPrivilegeEscalation"], false);
    let m = deploy::mounts(&ds, &agent);
    for (path, host) in [("/sys/fs/bpf", "/sys/fs/bpf"), ("/run/netns", "/run/netns")] {
        let mnt = at(&m, path);
        assert_eq!(mnt.host_path.as_deref(), Some(host));
        assert_eq!(mnt.propagation.as_deref(), Some("HostToContainer"));
        assert!(!mnt.read_only);
    }
}

/// A stand-in for the API server: HTTPS with a self-signed certificate, GET
/// /api/v1/nodes/NAME answered from `nodes` when the bearer token is right (403 otherwise,
/// as RBAC would), inside network namespace `ns`. Prints each request on stdout.
struct ApiStandIn {
    child: Child,
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const STAND_IN: &str = r#"
import http.server, json, ssl, sys
token, nodes, cert, key = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization") == "Bearer " + token
        print("GET %s auth=%s" % (self.path, auth), flush=True)
        name = self.path[len("/api/v1/nodes/"):] if self.path.startswith("/api/v1/nodes/") else None
        if not auth:
            code, body = 403, {"kind": "Status", "message": "nodes is forbidden"}
        elif name not in nodes:
            code, body = 404, {"kind": "Status", "message": "nodes %r not found" % name}
        else:
            code, body = 200, nodes[name]
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl ApiStandIn {
    fn start(ns: &Netns, dir: &Path, token: &str, nodes: &Value) -> ApiStandIn {
        let (cert, key) = (dir.join("ca.crt"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=kubernetes",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (xtask setup installs it)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes_file = dir.join("nodes.json");
        std::fs::write(&nodes_file, nodes.to_string()).unwrap();
        let nsf = open_netns(ns.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", STAND_IN, token])
            .arg(&nodes_file)
            .arg(&cert)
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port: u16 = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.trim().parse().ok())
            .expect("the stand-in prints its port");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                r.lock().unwrap().push(l);
            }
        });
        ApiStandIn {
            child,
            port,
            requests,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ApiStandIn {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// What the init container sees, made under a temp dir: the host's CNI dirs, the ConfigMap's
/// template, the ServiceAccount dir, a bpffs.
struct InstallEnv {
    dir: TempDir,
    bpffs: Bpffs,
}

impl InstallEnv {
    fn new() -> InstallEnv {
        let dir = TempDir::new("inst");
        for d in ["bin", "net.d", "sa", "cm"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("cm/conflist.json"),
            serde_json::to_string_pretty(&deploy::conflist_template()).unwrap(),
        )
        .unwrap();
        InstallEnv {
            dir,
            bpffs: Bpffs::new(),
        }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// Runs the install step inside `ns` (the stand-in's namespace) with `extra` env.
    fn run(&self, ns: &Netns, extra: &[(&str, &str)]) -> (bool, String) {
        let bin = std::fs::canonicalize(vethfp_bin()).expect("VETHFP_BIN");
        let (b, c, t, s) = (
            self.p("bin"),
            self.p("net.d"),
            self.p("cm/conflist.json"),
            self.p("sa"),
        );
        let bpffs = self.bpffs.mount_point().display().to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("CNI_BIN_DIR", b.as_str()),
            ("CNI_CONF_DIR", c.as_str()),
            ("TEMPLATE", t.as_str()),
            ("SA_DIR", s.as_str()),
            ("BPFFS", bpffs.as_str()),
            ("VETHFP", bin.to_str().unwrap()),
            ("PLUGIN_SRC", CNI_PLUGIN_DIR),
        ];
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend_from_slice(extra);
        let nsf = open_netns(ns.name());
        let fd = nsf.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.arg(deploy::install_script())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied());
        // SAFETY: only setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run vethfp-install-cni");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn conflist(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("net.d/10-vethfp.conflist"))
                .expect("the conflist was written"),
        )
        .expect("the written conflist is JSON")
    }

    fn ranges(&self) -> Value {
        self.conflist()["plugins"][0]["ipam"]["ranges"].clone()
    }
}

fn node_object(name: &str, cidrs: &[&str]) -> Value {
    let mut spec = json!({ "providerID": "stand-in" });
    if let Some(first) = cidrs.first() {
        spec["podCIDR"] = json!(first);
        spec["podCIDRs"] = json!(cidrs);
    }
    json!({ "kind": "Node", "apiVersion": "v1", "metadata": { "name": name }, "spec": spec })
}

#[test]
fn install_step_reads_the_pod_cidrs_from_the_api_server() {
    let ns = Netns::new("vk8s");
    let env = InstallEnv::new();
    let token = "stand-in-token-0123";
    std::fs::write(env.dir.path().join("sa/token"), token).unwrap();
    let nodes = json!({
        "node-a": node_object("node-a", &["10.244.1.0/24", "fd00:10:244:1::/64"]),
        "node-b": node_object("node-b", &[]),
    });
    let api = ApiStandIn::start(&ns, env.dir.path(), token, &nodes);
    std::fs::copy(
        env.dir.path().join("ca.crt"),
        env.dir.path().join("sa/ca.crt"),
    )
    .unwrap();
    let port = api.port.to_string();
    let k8s = |node: &'static str| {
        vec![
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", port.as_str()),
            ("NODE_NAME", node),
        ]
    };

    let (ok, log) = env.run(&ns, &k8s("node-a"));
    assert!(ok, "{log}");
    assert!(
        log.contains("pod CIDRs from Node node-a spec.podCIDRs"),
        "{log}"
    );
    assert_eq!(
        env.ranges(),
        json!([[{ "subnet": "10.244.1.0/24" }], [{ "subnet": "fd00:10:244:1::/64" }]])
    );
    // The rest of the template is unchanged.
    let mut want = deploy::conflist_template();
    want["plugins"][0]["ipam"]["ranges"] = env.ranges();
    assert_eq!(env.conflist(), want);
    assert_eq!(
        api.requests(),
        ["GET /api/v1/nodes/node-a auth=True"],
        "one GET of this node with the ServiceAccount token"
    );
    // The binary and the plugins the conflist needs.
    assert_eq!(
        std::fs::read(env.dir.path().join("bin/vethfp")).unwrap(),
        std::fs::read(std::fs::canonicalize(vethfp_bin()).unwrap()).unwrap()
    );
    for p in ["host-local", "portmap", "loopback"] {
        let md = std::fs::metadata(env.dir.path().join("bin").join(p)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o755, "{p}");
    }

    // A node without pod CIDRs, a wrong token (RBAC refuses), a CA that does not match:
    // the step fails, says why, and leaves the conflist as it was.
    let before = env.conflist();
    let (ok, log) = env.run(&ns, &k8s("node-b"));
    assert!(!ok);
    assert!(log.contains("no pod CIDRs for this node"), "{log}");
    assert!(log.contains("--allocate-node-cidrs"), "{log}");
    std::fs::write(env.dir.path().join("sa/token"), "wrong").unwrap();
    let (ok, log) = env.run(&ns, &k8s("node-a"));
    assert!(!ok);
    assert!(log.contains("403") || log.contains("forbidden"), "{log}");
    assert!(log.contains("RBAC"), "{log}");
    std::fs::write(env.dir.path().join("sa/token"), token).unwrap();
    std::fs::write(env.dir.path().join("sa/ca.crt"), "").unwrap();
    let (ok, log) = env.run(&ns, &k8s("node-a"));
    assert!(
        !ok,
        "a server the CA does not vouch for is not trusted: {log}"
    );
    assert_eq!(env.conflist(), before);
}

#[test]
fn install_step_is_idempotent_and_leaves_other_conflists_alone() {
    let ns = Netns::new("vk8s");
    let env = InstallEnv::new();
    // Per-node value, no API server at all.
    let cidrs = [("POD_CIDRS", "10.244.7.0/24, fd00:10:244:7::/64")];
    let (ok, log) = env.run(&ns, &cidrs);
    assert!(ok, "{log}");
    assert!(log.contains("pod CIDRs from POD_CIDRS"), "{log}");
    assert_eq!(
        env.ranges(),
        json!([[{ "subnet": "10.244.7.0/24" }], [{ "subnet": "fd00:10:244:7::/64" }]])
    );
    let ino = |rel: &str| {
        std::fs::metadata(env.dir.path().join(rel))
            .map(|m| (m.ino(), m.mtime_nsec(), m.mtime()))
            .unwrap()
    };
    let files = ["net.d/10-vethfp.conflist", "bin/vethfp", "bin/host-local"];
    let before: Vec<_> = files.iter().map(|f| ino(f)).collect();

    // Again: nothing rewritten (same inode and mtime: no reload by the runtime).
    let (ok, log) = env.run(&ns, &cidrs);
    assert!(ok, "{log}");
    assert!(log.contains("10-vethfp.conflist is up to date"), "{log}");
    assert_eq!(files.iter().map(|f| ino(f)).collect::<Vec<_>>(), before);

    // The node's own host-local is kept; a new CIDR rewrites our conflist only.
    std::fs::remove_file(env.dir.path().join("bin/host-local")).unwrap();
    std::fs::write(env.dir.path().join("bin/host-local"), "#!/bin/sh\n").unwrap();
    let other =
        json!({ "cniVersion": "1.0.0", "name": "other", "plugins": [{ "type": "bridge" }] });
    std::fs::write(
        env.dir.path().join("net.d/05-other.conflist"),
        other.to_string(),
    )
    .unwrap();
    let (ok, log) = env.run(&ns, &[("POD_CIDRS", "10.244.8.0/24")]);
    assert!(ok, "{log}");
    assert_eq!(env.ranges(), json!([[{ "subnet": "10.244.8.0/24" }]]));
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("bin/host-local")).unwrap(),
        "#!/bin/sh\n"
    );
    assert!(
        log.contains("05-other.conflist sorts before 10-vethfp.conflist"),
        "warns that the runtime takes the other one: {log}"
    );
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("net.d/05-other.conflist")).unwrap(),
        other.to_string()
    );

    // A file under our name that is not vethfp's is never overwritten.
    std::fs::write(
        env.dir.path().join("net.d/10-vethfp.conflist"),
        other.to_string(),
    )
    .unwrap();
    let (ok, log) = env.run(&ns, &cidrs);
    assert!(!ok);
    assert!(log.contains("is not a vethfp conflist"), "{log}");
    assert_eq!(env.conflist(), other);
    // No temp file is left behind in either dir.
    for d in ["bin", "net.d"] {
        for e in std::fs::read_dir(env.dir.path().join(d)).unwrap() {
            let n = e.unwrap().file_name();
            assert!(!n.to_string_lossy().contains("vethfp-tmp"), "{n:?}");
        }
    }

    // Not a bpffs: the state would vanish with the container; refused.
    let not_bpf = env.p("cm");
    let (ok, log) = env.run(&ns, &[cidrs[0], ("BPFFS", not_bpf.as_str())]);
    assert!(!ok);
    assert!(log.contains("is not a bpffs"), "{log}");
}

/// The agent under the DaemonSet's capability set only (bounding set = the manifest's
/// `capabilities.add`, as runc sets it for a root container): starts, becomes ready, and
/// repairs an endpoint after its host end went down and up (routes and neighbours restored).
#[test]
fn agent_runs_with_only_the_daemonsets_capabilities() {
    let ds = deploy::daemonset();
    let caps = deploy::added_capabilities(&deploy::container(&ds, "agent"));
    let node = Node::new();
    let c1 = node.add_container("vcap1", &["10.1.0.2/24"]);
    let c2 = node.add_container("vcap2", &["10.1.0.3/24"]);
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let nsf = open_netns(node.name());
    let fd = nsf.as_raw_fd();
    let tmp = TempDir::new("cap");
    let log = tmp.path().join("agent.log");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
        .arg(vethfp_bin())
        .arg("--bpffs")
        .arg(node.bpffs_dir())
        .args(["agent", "--metrics-addr", "127.0.0.1:9750"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: only setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
    let mut agent = Kill(cmd.spawn().expect("setpriv"));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _, _)) = http_get(node.name(), "/readyz") {
            break;
        }
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited under capabilities {caps:?}:\n{}",
            logs()
        );
        assert!(Instant::now() < deadline, "not ready in 60 s:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The process really runs with no more than the manifest's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        eff.count_ones() as usize,
        caps.len(),
        "CapEff {eff:x}: {caps:?}"
    );

    node.ns.ip(&["link", "set", "vcap1", "down"]);
    node.ns.ip(&["link", "set", "vcap1", "up"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.ns.ip(&["route", "show", "10.1.0.2"]).contains("vcap1") {
        assert!(Instant::now() < deadline, "route not repaired:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping(c1.name(), c2.v4()), "{}", logs());
    assert!(
        !logs().contains("Operation not permitted"),
        "a permission error:\n{}",
        logs()
    );
    drop(nsf);
}

/// Labels Prometheus adds to every series of a target (not in /metrics).
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// The PromQL of the dashboard: every panel target's `expr` and every templating query.
fn dashboard_queries() -> Vec<String> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy::repo_root().join("deploy/grafana/vethfp.json"))
            .expect("deploy/grafana/vethfp.json"),
    )
    .expect("the dashboard is JSON");
    let mut q = Vec::new();
    let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            q.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(s) = v["query"]["query"].as_str() {
            q.push(s.to_string());
        }
    }
    q
}

/// (metric names, label names) one PromQL expression uses: metric names are the `vethfp_*`
/// identifiers; labels are those in `{…}` matchers, `by (…)`/`without (…)` and
/// `label_values(…, label)`.
fn metrics_and_labels(expr: &str) -> (Vec<String>, Vec<String>) {
    let ident = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let metrics: Vec<String> = ident(expr)
        .into_iter()
        .filter(|w| w.starts_with("vethfp_"))
        .collect();
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find('{') {
        let j = rest[i..].find('}').expect("closing }") + i;
        for m in rest[i + 1..j].split(',') {
            let name = m.split(['=', '!']).next().unwrap().trim();
            if !name.is_empty() {
                labels.push(name.to_string());
            }
        }
        rest = &rest[j + 1..];
    }
    for kw in ["by (", "without ("] {
        let mut rest = expr;
        while let Some(i) = rest.find(kw) {
            let j = rest[i..].find(')').unwrap() + i;
            labels.extend(ident(&rest[i + kw.len()..j]));
            rest = &rest[j..];
        }
    }
    if let Some(a) = expr.strip_prefix("label_values(") {
        labels.extend(ident(a.rsplit(',').next().unwrap()));
    }
    (metrics, labels)
}

/// Every metric and label the Grafana dashboard queries is in the agent's /metrics output,
/// on a node where each family has samples: endpoints with traffic and drops, a TCP flow
/// handed off then demoted (conntrack entry deleted), a hand-off refused (no conntrack entry), an
/// endpoint repaired after its host end went down and up.
#[test]
fn dashboard_queries_only_what_the_agent_serves() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    for m in [
        "vethfp_tcp_handoffs_total",
        "vethfp_tcp_handoff_refusals_total",
        "vethfp_tcp_demotions_total",
        "vethfp_tcp_handoff_delay_seconds",
        "vethfp_flow_table_flows",
        "vethfp_endpoint_drops_total",
        "vethfp_agent_repairs_total",
    ] {
        assert!(
            queries.iter().any(|q| q.contains(m)),
            "the dashboard shows {m}"
        );
    }

    let node = Node::netfilter(143);
    let a = node.add_container("vdash1", &["10.143.0.2/24"]);
    let b = node.add_container("vdash2", &["10.143.0.3/24"]);
    let agent = vethfp_tests::Agent::start(&node, &[]);
    assert!(ping(a.name(), b.v4()));
    let ipt = |args: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", node.name(), "iptables", "-w"])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "iptables {args}: {out:?}");
    };
    let wait = |what: &str, f: &dyn Fn(&vethfp_tests::Metrics) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&agent.scrape()) {
            assert!(Instant::now() < deadline, "{what}:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let sum =
        |m: &vethfp_tests::Metrics, name: &str| -> f64 { m.all(name).iter().map(|(_, v)| v).sum() };
    // Before anything in the node uses conntrack, no TCP flow has an entry: refused.
    let flow = vethfp_tests::tcp_flow(a.name(), b.name(), b.v4());
    assert!(flow.wait_echoed(1 << 20, Duration::from_secs(20)));
    wait("a refusal", &|m| {
        sum(m, "vethfp_tcp_handoff_refusals_total") >= 1.0
    });
    flow.finish().expect("the flow completes");
    // With kube-proxy's INVALID rule conntrack tracks the node's flows: a TCP flow is handed
    // off; deleting its conntrack entry demotes it.
    ipt("-A FORWARD -m conntrack --ctstate INVALID -j DROP");
    let flow = vethfp_tests::tcp_flow(a.name(), b.name(), b.v4());
    assert!(flow.wait_echoed(1 << 20, Duration::from_secs(20)));
    wait("a hand-off", &|m| {
        sum(m, "vethfp_tcp_handoffs_total") >= 1.0
    });
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), "conntrack", "-D", "-p", "tcp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "conntrack -D: {out:?}");
    wait("a demotion", &|m| {
        sum(m, "vethfp_tcp_demotions_total") >= 1.0
    });
    flow.finish().expect("the flow completes");
    // A repair.
    node.ns.ip(&["link", "set", "vdash1", "down"]);
    node.ns.ip(&["link", "set", "vdash1", "up"]);
    wait("a repair", &|m| sum(m, "vethfp_agent_repairs_total") >= 1.0);

    let m = agent.scrape();
    let mut checked = 0;
    for q in &queries {
        let (metrics, labels) = metrics_and_labels(q);
        assert!(!metrics.is_empty(), "no vethfp metric in {q}");
        for name in &metrics {
            let samples = m.all(name);
            assert!(!samples.is_empty(), "{name} (in `{q}`) is not in /metrics");
            for l in labels
                .iter()
                .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
            {
                assert!(
                    samples.iter().any(|(ls, _)| ls.contains_key(l)),
                    "label {l} of {name} (in `{q}`) is not in /metrics: {samples:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} labels checked");
}
