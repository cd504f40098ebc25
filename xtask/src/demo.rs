//! `cargo xtask demo`: a throwaway node namespace with three containers wired by vethfp,
//! pings between them (v4 and v6), a UDP burst, and the counters that saw it all.

use crate::bench::{Vethfp, VethfpPairs};
use crate::util::{DirGuard, Netns, cargo_cmd, output, raw_output, run, step, vethfp_bin};
use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;

const BURST: u32 = 1000;

pub fn demo() -> Result<()> {
    step("setup");
    crate::setup::setup()?;
    if let Some(b) = std::env::var_os("VETHFP_BIN") {
        step(&format!(
            "using VETHFP_BIN={} (no build)",
            b.to_string_lossy()
        ));
    } else {
        step("cargo build --release -p veth-user");
        run(cargo_cmd().args(["build", "--release", "-p", "veth-user"]))?;
    }
    let bin = vethfp_bin("release")?;
    let help = raw_output(Command::new(&bin).arg("--help"))?;
    if !help.status.success() || !String::from_utf8_lossy(&help.stdout).contains("pair") {
        bail!(
            "{} has no `pair` command yet: the demo needs a working vethfp (build it from main, \
             or point VETHFP_BIN at one)",
            bin.display()
        );
    }
    let pid = std::process::id();
    let v = Vethfp {
        bin,
        bpffs: PathBuf::from(format!("/sys/fs/bpf/vethfp-demo-{pid}")),
    };

    // Declaration order is the reverse of drop order: pairs go first, then the pin directory,
    // then the containers, then the node.
    step(&format!(
        "creating node namespace vfdemo{pid}-node and containers vfdemo{pid}-c1..3"
    ));
    let node = Netns::new(format!("vfdemo{pid}-node"))?;
    node.ip(&["addr", "add", "10.200.255.1/32", "dev", "lo"])?;
    node.ip(&["addr", "add", "fd00:200::ffff/128", "dev", "lo"])?;
    let cs = (1..=3)
        .map(|n| Netns::new(format!("vfdemo{pid}-c{n}")))
        .collect::<Result<Vec<_>>>()?;
    let _pins = DirGuard(v.bpffs.clone());
    let mut pairs = VethfpPairs::new(&v, &node);
    // Forwarding is off in the demo node: only the unconditional fast path can carry the
    // traffic, which is what the demo shows (the default, `netfilter`, needs forwarding on).
    step("vethfp admission always");
    pairs.admission("always")?;

    for (i, c) in cs.iter().enumerate() {
        let n = i + 1;
        let (a4, a6) = (format!("10.200.0.{n}/24"), format!("fd00:200::{n}/64"));
        step(&format!(
            "vethfp pair add vfdemo{n} --netns {} --addr {a4} --addr {a6}",
            c.name
        ));
        pairs.add(&format!("vfdemo{n}"), &c.name, &[&a4, &a6])?;
    }
    step("vethfp pair list");
    print!("{}", v.run(&node, &["pair", "list"])?);

    for (from, to) in [(0usize, 1usize), (1, 2)] {
        for addr in [
            format!("10.200.0.{}", to + 1),
            format!("fd00:200::{}", to + 1),
        ] {
            step(&format!("ping c{} -> c{} ({addr})", from + 1, to + 1));
            // -w: IPv6 addresses may still be in duplicate address detection for a moment.
            let out = output(
                cs[from]
                    .cmd("ping")
                    .args(["-c", "3", "-i", "0.2", "-w", "10", &addr]),
            )
            .with_context(|| format!("c{} cannot reach {addr} through vethfp", from + 1))?;
            if let Some(l) = out.lines().find(|l| l.contains("packets transmitted")) {
                println!("    {l}");
            }
        }
    }

    step(&format!(
        "UDP burst: {BURST} packets c1 -> c3 (10.200.0.3:9999)"
    ));
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    run(cs[0]
        .cmd(exe.to_str().context("xtask path is not UTF-8")?)
        .args([
            "udp-burst",
            "--to",
            "10.200.0.3:9999",
            "--count",
            &BURST.to_string(),
        ]))?;

    step("vethfp stats");
    print!("{}", v.run(&node, &["stats"])?);

    step("vethfp pair del (each)");
    pairs.del_all()?;
    step("removing namespaces and the demo pin directory");
    Ok(())
}

/// Hidden helper run inside a container namespace: send `count` 64-byte UDP datagrams.
pub fn udp_burst(to: SocketAddr, count: u32) -> Result<()> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let sock = UdpSocket::bind(bind)?;
    let payload = [0x5au8; 64];
    let mut sent = 0;
    for _ in 0..count {
        // The receiver has no socket; ICMP port-unreachables may surface as send errors.
        if sock.send_to(&payload, to).is_ok() {
            sent += 1;
        }
    }
    println!("    sent {sent} of {count} datagrams to {to}");
    Ok(())
}
