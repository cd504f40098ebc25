//! `--bpffs DIR`: any directory inside a mounted bpffs works; anything else is refused
//! with a clear message, before anything is created.

use std::path::PathBuf;

use vethfp_tests::{Netns, Node, check_fails, check_ok, is_bpffs, unique_name};

/// A plain directory (not on a bpffs) under the temp dir, removed on Drop.
struct PlainDir(PathBuf);

impl PlainDir {
    fn new() -> PlainDir {
        let p = std::env::temp_dir().join(format!("vethfp-plain-{}", unique_name("p")));
        std::fs::create_dir_all(&p).unwrap();
        assert!(!is_bpffs(&p), "{p:?} is unexpectedly on a bpffs");
        PlainDir(p)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for PlainDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn dir_not_on_bpffs_is_refused() {
    let node = Node::new();
    let c = Netns::new("vfc");
    let plain = PlainDir::new();
    for dir in [plain.0.join("vethfp"), plain.0.clone()] {
        let d = dir.to_str().unwrap();
        let links = node.ns.link_names();
        for args in [
            &["--bpffs", d, "pair", "list"][..],
            &["--bpffs", d, "stats", "--json"],
            &[
                "--bpffs",
                d,
                "pair",
                "add",
                "vc1",
                "--netns",
                c.name(),
                "--addr",
                "10.1.0.2/24",
            ],
        ] {
            let msg = check_fails(&node.vethfp_raw(args), args);
            assert!(
                msg.to_lowercase().contains("bpf"),
                "refusal should say the dir is not on a bpffs: {msg}"
            );
            assert!(
                msg.contains(d) || msg.contains(plain.0.to_str().unwrap()),
                "{msg}"
            );
        }
        assert_eq!(node.ns.link_names(), links, "links created in the node");
        assert_eq!(c.link_names().into_iter().collect::<Vec<_>>(), ["lo"]);
        assert!(plain.entries().is_empty(), "created {:?}", plain.entries());
    }
}

#[test]
fn any_dir_inside_a_bpffs_works() {
    let node = Node::new();
    let c = Netns::new("vfc");
    c.quiet_ipv6();
    // An existing directory two levels down; vethfp makes its state dir in it, as it
    // does under /sys/fs/bpf by default.
    std::fs::create_dir_all(node.bpffs.mount_point().join("a/b")).unwrap();
    let nested = node.bpffs.mount_point().join("a/b/vethfp");
    let d = nested.to_str().unwrap();
    let add = [
        "--bpffs",
        d,
        "pair",
        "add",
        "vc1",
        "--netns",
        c.name(),
        "--addr",
        "10.1.0.2/24",
    ];
    check_ok(&node.vethfp_raw(&add), &add);
    assert!(nested.is_dir(), "state dir {d} not created");
    assert!(
        std::fs::read_dir(&nested).unwrap().next().is_some(),
        "nothing pinned under {d}"
    );
    let list = ["--bpffs", d, "pair", "list", "--json"];
    let out = check_ok(&node.vethfp_raw(&list), &list);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["host_if"], "vc1", "{v}");
    // The default state dir of this node's bpffs knows nothing of it.
    assert!(node.list_json().is_empty());
    let del = ["--bpffs", d, "pair", "del", "vc1"];
    check_ok(&node.vethfp_raw(&del), &del);
    assert!(node.ns.link("vc1").is_none());
}

/// `ip netns exec NODE vethfp …` with the default state dir: that command runs in a mount
/// namespace of its own with a fresh /sys, where /sys/fs/bpf is no bpffs. The old code mounted
/// one there and "added" the endpoint into a state that vanished with the process: the veth
/// and its programs stayed, and no later call could find or delete them. Now refused, with
/// the way out, before anything is created.
#[test]
fn a_private_mount_namespace_is_refused_not_given_a_throwaway_state() {
    let node = Node::new();
    let c = Netns::new("vfc");
    let dir = format!("/sys/fs/bpf/{}", unique_name("vfpm"));
    let links = node.ns.link_names();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", node.ns.name()])
        .arg(vethfp_tests::vethfp_bin())
        .args([
            "--bpffs",
            &dir,
            "pair",
            "add",
            "vpm1",
            "--netns",
            c.name(),
            "--addr",
            "10.1.0.2/24",
        ])
        .output()
        .expect("ip netns exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "pair add under `ip netns exec` succeeded into a throwaway state: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("ip netns") && stderr.contains("nsenter --net="),
        "the refusal says why and what to do: {stderr}"
    );
    assert_eq!(node.ns.link_names(), links, "links created in the node");
    assert_eq!(c.link_names().into_iter().collect::<Vec<_>>(), ["lo"]);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} made in the real bpffs"
    );
}
