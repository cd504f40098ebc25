//! A node agent embedding vethfp: two containers wired by the fast path, a few pings between
//! them, and their counters read back through the library's public API only.
//!
//! Run as root: `cargo run -p veth-user --example embed`. It makes a node namespace and two
//! container namespaces of its own (`vfpex-{n,a,b}-PID`), enters the node one (the machine's
//! own namespace is never touched), keeps its state in a private bpffs under /tmp, and removes
//! all of it at the end (also when a step fails).

use std::{path::PathBuf, process::Command};

use vethfp::{AddRequest, Dir, Registry, Verdict};

struct Cleanup {
    netns: Vec<String>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    if !st.success() {
        return Err(format!("{} failed ({st})", args.join(" ")).into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let (node, a, b) = (
        format!("vfpex-n-{pid}"),
        format!("vfpex-a-{pid}"),
        format!("vfpex-b-{pid}"),
    );
    let dir = std::env::temp_dir().join(format!("vfpex-{pid}"));
    let _cleanup = Cleanup {
        netns: vec![node.clone(), a.clone(), b.clone()],
        dir: dir.clone(),
    };
    for ns in [&node, &a, &b] {
        sh(&["ip", "netns", "add", ns])?;
    }
    // Become the node: every thread made from here on (vethfp's too) lives in its namespace.
    let f = std::fs::File::open(format!("/run/netns/{node}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
    std::fs::create_dir_all(&dir)?;
    sh(&[
        "mount",
        "-t",
        "bpf",
        "bpf",
        dir.to_str().unwrap_or_default(),
    ])?;
    let state = dir.join("state");

    // Endpoints: host end name, container netns, address.
    let mut reg = Registry::open(&state)?;
    // This node has no firewall to consult: accelerate every packet between the endpoints.
    reg.set_admission(vethfp::Admission::Always)?;
    for (host, ns, addr) in [
        ("vfpexa", &a, "10.77.0.2/24"),
        ("vfpexb", &b, "10.77.0.3/24"),
    ] {
        let view = reg.add(&AddRequest::new(
            host.parse()?,
            ns.as_str(),
            vec![addr.parse()?],
        ))?;
        println!(
            "added {} (ifindex {}) -> {} in {}",
            view.host_if, view.host_ifindex, view.ifname, view.netns
        );
    }
    drop(reg); // release the state lock while traffic runs

    sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-q",
        "10.77.0.3",
    ])?;

    let mut reg = Registry::open_read(&state)?;
    for s in reg.stats(None)? {
        let fast = s.counters.get(Dir::FromContainer, Verdict::Fast);
        let to = s.counters.get(Dir::ToContainer, Verdict::Fast);
        println!(
            "{}: from container {} fast packets ({} bytes), to container {} fast packets",
            s.host_if, fast.packets, fast.bytes, to.packets
        );
    }
    drop(reg);
    let mut reg = Registry::open(&state)?;
    reg.del("vfpexa")?;
    reg.del("vfpexb")?;
    println!("removed both endpoints");
    Ok(())
}
