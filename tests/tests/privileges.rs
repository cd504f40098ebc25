//! Privileges: the state under the bpffs is root's alone (directories 0700, pins 0600), and
//! the CLI refuses clearly without root.

use std::{os::unix::fs::MetadataExt, path::Path};

use vethfp_tests::{Node, check_fails};

fn walk(dir: &Path, out: &mut Vec<(String, bool, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        if md.file_type().is_symlink() {
            // DIR/version: a symlink whose target is the version string (a symlink's own mode
            // is always 0777 and means nothing; it is inside the 0700 directory).
            continue;
        }
        out.push((
            e.path().display().to_string(),
            md.is_dir(),
            md.mode() & 0o7777,
        ));
        if md.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn state_is_root_only() {
    let node = Node::new();
    let _c1 = node.add_container("vc1", &["10.1.0.2/24"]);
    let _c2 = node.add_container_with("vc2", &["10.1.0.3/24"], &["--mode", "xdp"]);
    let dir = node.bpffs_dir();
    let md = std::fs::metadata(&dir).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700, "{}", dir.display());
    let mut all = Vec::new();
    walk(&dir, &mut all);
    assert!(
        all.iter().any(|(p, _, _)| p.contains("/links/xdp-")),
        "{all:?}"
    );
    assert!(
        all.iter().any(|(p, _, _)| p.contains("/progs/vfp_xdp-")),
        "{all:?}"
    );
    for (p, is_dir, mode) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{p}: mode {mode:o}");
        assert_eq!(std::fs::metadata(p).unwrap().uid(), 0, "{p}: owner");
    }
    println!(
        "privileges: {} entries under {}: dirs 0700, pins 0600",
        all.len(),
        dir.display()
    );
}

#[test]
fn unprivileged_user_is_refused_and_cannot_reach_the_state() {
    let node = Node::new();
    let _c1 = node.add_container("vc1", &["10.1.0.2/24"]);
    let pins_before = node.bpffs.files();
    for args in [
        &["pair", "list"][..],
        &["stats", "--json"],
        &["pair", "del", "vc1"],
    ] {
        let out = node.vethfp_as(65534, args);
        let msg = check_fails(&out, args);
        assert!(
            msg.to_lowercase().contains("root"),
            "{args:?}: should mention root: {msg}"
        );
    }
    // Even going around the CLI: nobody cannot open a pinned map or list the state dir.
    let dir = node.bpffs_dir();
    let probe = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(dir.join("VFP_EP4"))
        .output()
        .expect("setpriv (util-linux)");
    assert!(!probe.status.success(), "uid 65534 could open a pinned map");
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert_eq!(node.bpffs.files(), pins_before);
    assert!(node.list_entry("vc1").is_some());
}
