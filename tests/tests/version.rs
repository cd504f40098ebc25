//! Versions that mean something: `vethfp --version` names the version and the git commit it
//! was built from; a state records the vethfp that created or last upgraded it (the symlink
//! `DIR/version`); `status` shows it (and this vethfp's, when they differ); a state of another
//! map ABI is refused naming the vethfp that made it, its record untouched.

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use veth_common::{ABI_VERSION, CONFIG_ABI, MAP_CONFIG};
use vethfp_tests::{Node, check_ok, vethfp_bin};

/// `vethfp --version` → "0.2.0-dev (commit 0123456789ab)" (the part after "vethfp ").
fn long_version() -> String {
    let out = std::process::Command::new(vethfp_bin())
        .arg("--version")
        .output()
        .expect("run vethfp --version");
    let text = check_ok(&out, &["--version"]);
    let line = text.strip_suffix('\n').expect("one line");
    let v = line.strip_prefix("vethfp ").expect("starts with 'vethfp '");
    v.to_string()
}

fn recorded(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("version"))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

fn set_abi(dir: &Path, abi: u32) {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).unwrap();
    let mut cfg: Array<MapData, u32> = Array::try_from(Map::Array(data)).unwrap();
    cfg.set(CONFIG_ABI, abi, 0).unwrap();
}

fn record(dir: &Path, v: &str) {
    let _ = std::fs::remove_file(dir.join("version"));
    std::os::unix::fs::symlink(v, dir.join("version")).expect("symlink");
}

#[test]
fn version_names_the_release_and_the_commit() {
    let v = long_version();
    let want = env!("CARGO_PKG_VERSION");
    assert_eq!(want, "0.2.0-dev", "the workspace version");
    let commit = v
        .strip_prefix(&format!("{want} (commit "))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--version: {v}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit: {commit}"
    );
}

/// A new state records this vethfp; status shows it and no second line.
#[test]
fn a_new_state_records_its_version() {
    let v = long_version();
    let node = Node::new();
    let dir = node.bpffs_dir();
    assert_eq!(recorded(&dir).as_deref(), Some(v.as_str()));
    let st = node.status_json();
    assert_eq!(st["datapath_version"], v.as_str());
    assert_eq!(st["version"], v.as_str());
    let text = node.ok(&["status"]);
    assert!(text.contains(&format!("datapath:  vethfp {v}\n")), "{text}");
    assert!(!text.contains("\nvethfp: "), "no second version: {text}");
}

/// A state of 0.1.0 (map ABI 3, no record) is migrated by the first call, which records the
/// version that upgraded it (here everything else of this build is already there: the state
/// a call killed right before its migration's ABI stamp leaves, deterministically); a record lost after that (a call killed between its migration
/// and its record) is written by the next call; a record of another vethfp is shown next to
/// this one's.
#[test]
fn old_and_other_records() {
    let v = long_version();
    let node = Node::new();
    let dir = node.bpffs_dir();
    std::fs::remove_file(dir.join("version")).unwrap();
    set_abi(&dir, 3);
    let st = node.status_json();
    assert_eq!(st["datapath_version"], v.as_str(), "{st}");
    assert_eq!(recorded(&dir).as_deref(), Some(v.as_str()));
    std::fs::remove_file(dir.join("version")).unwrap();
    node.ok(&["pair", "list"]);
    assert_eq!(recorded(&dir).as_deref(), Some(v.as_str()));

    // Another vethfp upgraded it last.
    record(&dir, "0.1.9 (commit 0123456789ab)");
    let st = node.status_json();
    assert_eq!(st["datapath_version"], "0.1.9 (commit 0123456789ab)");
    assert_eq!(st["version"], v.as_str());
    let text = node.ok(&["status"]);
    assert!(
        text.contains("datapath:  vethfp 0.1.9 (commit 0123456789ab)\n"),
        "{text}"
    );
    assert!(text.contains(&format!("vethfp:    {v}")), "{text}");

    // This build's programs gone (a state of another build): the open that loads them
    // is an upgrade, and records this vethfp.
    for e in std::fs::read_dir(dir.join("progs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    node.ok(&["pair", "list"]);
    assert_eq!(recorded(&dir).as_deref(), Some(v.as_str()));
}

/// A state of a newer map ABI is refused naming the vethfp that made it; its record stays.
#[test]
fn refusal_names_the_state_version_and_keeps_it() {
    let node = Node::new();
    let dir = node.bpffs_dir();
    record(&dir, "0.9.0 (commit 0123456789ab)");
    let newer = ABI_VERSION + 1;
    set_abi(&dir, newer);
    let msg = node.fails(&["status"]);
    assert!(
        msg.contains(&format!(
            "newer vethfp 0.9.0 (commit 0123456789ab) (map ABI {newer}"
        )),
        "{msg}"
    );
    assert_eq!(
        recorded(&dir).as_deref(),
        Some("0.9.0 (commit 0123456789ab)")
    );
}
