//! Refusals change nothing. A state vethfp will not use — of another map ABI (older or newer
//! vethfp), owned by another live node namespace, not on a bpffs — is refused by every
//! command, and the refused call leaves the state dir exactly as it found it: the same names,
//! the same pins (inode, kernel map/program id), the same config map values. The error says
//! what to do. A state of the previous build that only lacks what this build adds (the
//! VFP_HANDOFF map, this build's programs) is not refused: it is upgraded in place.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use aya::maps::{Array, Map, MapData};
use veth_common::{ABI_VERSION, CONFIG_ABI, MAP_CONFIG, MAP_HANDOFF};
use vethfp_tests::{Netns, Node, ping, unique_name};

/// Program pins of "another build" (`progs/<name>-<hash>`).
const OTHER_HASH: &str = "00000000000000aa";

fn config(dir: &Path) -> Array<MapData, u32> {
    let data = MapData::from_pin(dir.join(MAP_CONFIG)).expect("open the config map pin");
    Array::try_from(Map::Array(data)).expect("the config map is an array")
}

/// Every slot of the config map.
fn config_values(dir: &Path) -> Vec<u32> {
    let m = config(dir);
    (0..m.len())
        .map(|i| m.get(&i, 0).expect("config slot"))
        .collect()
}

fn set_abi(dir: &Path, abi: u32) {
    config(dir).set(CONFIG_ABI, abi, 0).expect("write ABI");
}

/// Makes the state look like another build's: its programs pinned under another object hash
/// (this build would load and pin its own), and, if `drop_handoff`, no VFP_HANDOFF map (an
/// older build had none). The kernel objects stay (the running filters hold them).
fn other_build(dir: &Path, drop_handoff: bool) {
    let progs = dir.join("progs");
    for e in std::fs::read_dir(&progs).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let (prog, _) = name.rsplit_once('-').expect("progs/<name>-<hash>");
        std::fs::rename(&p, progs.join(format!("{prog}-{OTHER_HASH}"))).unwrap();
    }
    if drop_handoff {
        std::fs::remove_file(dir.join(MAP_HANDOFF)).unwrap();
    }
}

fn with_dir(node: &Node, dir: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--bpffs", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    node.vethfp_raw(&a)
}

/// Runs every command against `dir` from `node`; each must fail with an error that contains
/// every one of `says`, and leave the mount (names, pins, config values) and the node's
/// links exactly as they were.
fn assert_refused(node: &Node, dir: &Path, mount: &Path, says: &[&str]) {
    let c = Netns::new("vfc");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["pair", "list"],
        vec!["pair", "list", "--json"],
        vec!["stats"],
        vec!["flows"],
        vec!["flows", "flush"],
        vec!["admission"],
        vec!["admission", "netfilter"],
        vec![
            "pair",
            "add",
            "vfr9",
            "--netns",
            c.name(),
            "--addr",
            "10.1.0.9/24",
        ],
        vec!["pair", "del", "vfr1"],
        vec!["agent", "--metrics-addr", "127.0.0.1:9751"],
    ];
    let before = vethfp_tests::pin_listing(mount);
    let cfg = config_values(dir);
    let links = node.ns.link_names();
    for args in &cmds {
        let out = with_dir(node, dir, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if args[0] == "agent" {
            // The agent logs; its last line is the error.
            assert!(
                matches!(out.status.code(), Some(c) if c != 0),
                "{args:?}: refused, got {}: {stderr}",
                out.status
            );
        } else {
            vethfp_tests::check_fails(&out, args);
        }
        for s in says {
            assert!(
                stderr.contains(s),
                "{args:?}: the error says {s:?}: {stderr}"
            );
        }
        assert_eq!(
            vethfp_tests::pin_listing(mount),
            before,
            "{args:?}: the state dir is unchanged"
        );
        assert_eq!(
            config_values(dir),
            cfg,
            "{args:?}: the config map is unchanged"
        );
        assert_eq!(
            node.ns.link_names(),
            links,
            "{args:?}: the node's links are unchanged"
        );
    }
}

/// A state with one endpoint, made by an older vethfp (map ABI 2, no VFP_HANDOFF, older
/// programs): refused, untouched.
#[test]
fn older_abi_is_refused_and_left_alone() {
    let node = Node::new();
    let _c = node.add_container("vfr1", &["10.1.0.2/24"]);
    let dir = node.bpffs_dir();
    other_build(&dir, true);
    set_abi(&dir, 2);
    assert_refused(
        &node,
        &dir,
        node.bpffs.mount_point(),
        &["older vethfp", "map ABI 2", "delete"],
    );
    assert!(!dir.join(MAP_HANDOFF).exists(), "no map was added");
}

/// A state made by a newer vethfp (the next map ABI, its own programs): refused, untouched.
#[test]
fn newer_abi_is_refused_and_left_alone() {
    let node = Node::new();
    let _c = node.add_container("vfr1", &["10.1.0.2/24"]);
    let dir = node.bpffs_dir();
    other_build(&dir, false);
    let newer = ABI_VERSION + 1;
    set_abi(&dir, newer);
    assert_refused(
        &node,
        &dir,
        node.bpffs.mount_point(),
        &[
            "newer vethfp",
            &format!("map ABI {newer}"),
            "use that vethfp",
        ],
    );
}

/// A state owned by another live node namespace, whose programs and maps this build would
/// complete (another build's programs, no VFP_HANDOFF): refused from here, untouched, and its
/// owner's endpoint keeps working.
#[test]
fn state_of_another_namespace_is_refused_and_left_alone() {
    let a = Node::new();
    let b = Node::with_x(2);
    let ca = a.add_container("vfr1", &["10.1.0.2/24"]);
    let dir = a.bpffs_dir();
    other_build(&dir, true);
    assert_refused(
        &b,
        &dir,
        a.bpffs.mount_point(),
        &["another live network namespace", "--bpffs"],
    );
    assert!(ping(ca.name(), a.v4()), "A's endpoint works");
}

/// `--bpffs` on a directory that is not on a bpffs: refused, and nothing is created there.
#[test]
fn not_a_bpffs_is_refused_and_nothing_made() {
    let node = Node::new();
    let base: PathBuf = std::env::temp_dir().join(format!("vethfp-plain-{}", unique_name("p")));
    std::fs::create_dir(&base).unwrap();
    let dir = base.join("vethfp");
    for args in [&["status"][..], &["pair", "list"], &["admission", "always"]] {
        let msg = vethfp_tests::check_fails(&with_dir(&node, &dir, args), args);
        assert!(
            msg.contains("not inside a mounted bpffs") && msg.contains("mount -t bpf"),
            "{args:?}: {msg}"
        );
        assert!(!dir.exists(), "{args:?}: {} was not created", dir.display());
    }
    std::fs::remove_dir(&base).unwrap();
}

/// A state of the previous release (map ABI 3 without VFP_HANDOFF, its own programs) is an
/// upgrade, not a refusal: it opens, gains the missing map and this build's programs, is
/// migrated to this build's map ABI, keeps its endpoint, and the endpoint keeps working.
/// (tests/tests/upgrade.rs does it with the real previous release.)
#[test]
fn previous_build_state_is_upgraded() {
    let node = Node::new();
    let c = node.add_container("vfr1", &["10.1.0.2/24"]);
    let dir = node.bpffs_dir();
    other_build(&dir, true);
    set_abi(&dir, 3);
    let old = vethfp_tests::pin_listing(node.bpffs.mount_point());
    let st = node.ok(&["status", "--json"]);
    assert!(st.contains("\"endpoints\": 1"), "{st}");
    assert!(dir.join(MAP_HANDOFF).exists(), "VFP_HANDOFF was added");
    assert_eq!(
        config(&dir).get(&CONFIG_ABI, 0).unwrap(),
        ABI_VERSION,
        "migrated"
    );
    let now = vethfp_tests::pin_listing(node.bpffs.mount_point());
    for (name, v) in &old {
        if name != "vethfp/version" {
            assert_eq!(now.get(name), Some(v), "{name} is kept as it was");
        }
    }
    assert!(
        std::fs::read_link(dir.join("version")).is_ok(),
        "the upgrade is recorded"
    );
    let ours = now
        .keys()
        .filter(|n| n.starts_with("vethfp/progs/") && !n.ends_with(OTHER_HASH))
        .count();
    assert_eq!(ours, 6, "this build's programs are pinned: {now:?}");
    assert_eq!(node.list_json().len(), 1);
    assert!(ping(c.name(), node.v4()), "the endpoint works");
    // And it stays usable for changes.
    let _c2 = node.add_container("vfr2", &["10.1.0.3/24"]);
    assert_eq!(node.list_json().len(), 2);
}
