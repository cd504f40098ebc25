//! The Kubernetes deployment under `deploy/`: its manifests read as JSON (so tests check the
//! same values a cluster gets), the kubernetes-validate venv `cargo xtask setup` installs, and
//! the install step (`deploy/image/vethfp-install-cni`) run as the init container runs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// `deploy/kubernetes`.
pub fn manifest_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// Every manifest (`*.yaml`) under `deploy/kubernetes`, sorted.
pub fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// The venv with kubernetes-validate (and PyYAML, its dependency) that `cargo xtask setup`
/// makes under the target dir.
pub fn venv() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let v = target.join("kubernetes-validate");
    assert!(
        v.join("bin/kubernetes-validate").is_file(),
        "{} has no kubernetes-validate: run `cargo xtask setup`",
        v.display()
    );
    v
}

/// The objects of a YAML file (all documents), as JSON, parsed by PyYAML from the venv.
pub fn load_yaml(path: &Path) -> Vec<Value> {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "parsing {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(v) => v,
        v => panic!("not a list: {v}"),
    }
}

/// Every object of every manifest.
pub fn objects() -> Vec<Value> {
    manifests().iter().flat_map(|p| load_yaml(p)).collect()
}

/// The object of `kind` named `name`.
pub fn object(kind: &str, name: &str) -> Value {
    objects()
        .into_iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// The DaemonSet.
pub fn daemonset() -> Value {
    object("DaemonSet", "vethfp")
}

/// The container (or init container) `name` of the DaemonSet's pod template.
pub fn container(ds: &Value, name: &str) -> Value {
    let spec = &ds["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("the DaemonSet has no container {name}"))
}

/// A volume mount of a container, resolved against the pod's volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    /// Path inside the container.
    pub mount_path: String,
    /// `Some(path)` for a hostPath volume.
    pub host_path: Option<String>,
    /// `Some(name)` for a configMap volume.
    pub config_map: Option<String>,
    pub read_only: bool,
    pub propagation: Option<String>,
}

/// The volume mounts of `container` in the DaemonSet `ds`.
pub fn mounts(ds: &Value, container: &Value) -> Vec<Mount> {
    let vols = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    container["volumeMounts"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_string();
            let vol = vols
                .iter()
                .find(|v| v["name"] == name.as_str())
                .unwrap_or_else(|| panic!("volume {name} is mounted but not defined"));
            Mount {
                mount_path: m["mountPath"].as_str().unwrap().to_string(),
                host_path: vol["hostPath"]["path"].as_str().map(String::from),
                config_map: vol["configMap"]["name"].as_str().map(String::from),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                propagation: m["mountPropagation"].as_str().map(String::from),
                volume: name,
            }
        })
        .collect()
}

/// The capabilities a container adds (after dropping ALL), lower case without `CAP_`.
pub fn added_capabilities(container: &Value) -> Vec<String> {
    let caps = &container["securityContext"]["capabilities"];
    assert_eq!(
        caps["drop"],
        serde_json::json!(["ALL"]),
        "{}: drops ALL first",
        container["name"]
    );
    caps["add"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_str().unwrap().to_lowercase())
        .collect()
}

/// The conflist template of the ConfigMap the DaemonSet mounts.
pub fn conflist_template() -> Value {
    let cm = object("ConfigMap", "vethfp-cni");
    serde_json::from_str(cm["data"]["conflist.json"].as_str().expect("conflist.json"))
        .expect("the ConfigMap's conflist.json is JSON")
}

/// The install step's script.
pub fn install_script() -> PathBuf {
    repo_root().join("deploy/image/vethfp-install-cni")
}
