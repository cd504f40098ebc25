//! `cargo xtask setup`: toolchains, bpf-linker and Debian packages. Idempotent; each step
//! checks first and only installs what is missing, so a second run takes about a second.

use crate::util::{output, raw_output, run};
use anyhow::{Context, Result};
use std::process::Command;

const BPF_LINKER_VERSION: &str = "0.10.2";
const DEB_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "iperf3",
    "sockperf",
    "bpftool",
    "tcpdump",
    "iptables",
    // Netfilter admission tests (tests/tests/admission.rs): kube-proxy's nftables mode.
    "nftables",
    // TCP hand-off tests (tests/tests/tcp_handoff.rs): list, flush and delete conntrack
    // entries under live connections.
    "conntrack",
    // The bench reads the stock-node agent's /metrics (hand-off delay).
    "curl",
    "containernetworking-plugins",
    // CNI end to end (tests/tests/cni_podman.rs): podman with the CNI backend, runc (crun
    // fails on this kind of machine's cgroups), and a static busybox for the image.
    "podman",
    "runc",
    "busybox-static",
    // Kubernetes node end to end (tests/tests/cri_*.rs): containerd's CRI drives vethfp.
    // (The CRI gRPC types are checked in, tests/src/cri/runtime.v1.rs: no protoc.)
    "containerd",
    // The Kubernetes deployment (deploy/, tests/tests/deploy.rs): a venv for the
    // kubernetes-validate schema check, openssl for the API stand-in's certificate, jq as
    // the install step uses it; debootstrap builds the image (`cargo xtask image`).
    "python3-venv",
    "openssl",
    "jq",
    "debootstrap",
    // Docker end to end (tests/tests/docker_e2e.rs): the daemon and client of Debian's
    // docker.io (20.10), run as /usr/sbin/dockerd and /usr/bin/docker.
    "docker.io",
];
/// Installed if the archive has it; its absence only costs the perf-based CPU figures.
const OPTIONAL_DEB_PACKAGES: &[&str] = &["linux-perf"];

fn line(what: &str, state: &str) {
    println!("setup: {what:<40} {state}");
}

pub fn setup() -> Result<()> {
    rust_toolchains()?;
    bpf_linker()?;
    debian_packages()?;
    kubernetes_validate()?;
    Ok(())
}

/// The Kubernetes schema check of deploy/kubernetes (tests/tests/deploy.rs), from PyPI.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Where `kubernetes-validate` is installed: a venv under the target dir.
pub fn kubernetes_validate_venv() -> Result<std::path::PathBuf> {
    Ok(crate::util::target_dir()?.join("kubernetes-validate"))
}

fn kubernetes_validate() -> Result<()> {
    let what = format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (venv)");
    let venv = kubernetes_validate_venv()?;
    let bin = venv.join("bin/kubernetes-validate");
    let current = raw_output(Command::new(&bin).arg("--version"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if current
        .as_deref()
        .is_some_and(|v| v.split_whitespace().last() == Some(KUBERNETES_VALIDATE_VERSION))
    {
        line(&what, "already present");
        return Ok(());
    }
    // Debian's python (python3-venv installed above), not whichever python3 is first in PATH.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
        .unwrap_or("python3");
    run(Command::new(python)
        .arg("-m")
        .arg("venv")
        .arg("--clear")
        .arg(&venv))
    .context("creating the kubernetes-validate venv failed: apt-get install python3-venv")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))
    .context("pip install kubernetes-validate failed: it needs network access to PyPI")?;
    line(&what, "installed");
    Ok(())
}

fn installed_components(toolchain: &str) -> Result<String> {
    output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .context("is rustup installed? see https://rustup.rs")
}

fn rust_toolchains() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed: install it from https://rustup.rs")?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        line("rust nightly toolchain", "already present");
    } else {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        line("rust nightly toolchain", "installed");
    }
    let nightly = installed_components("nightly")?;
    if nightly.lines().any(|l| l.starts_with("rust-src")) {
        line("rust-src (nightly)", "already present");
    } else {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        line("rust-src (nightly)", "installed");
    }
    let stable = installed_components("stable")?;
    for comp in ["clippy", "rustfmt"] {
        let what = format!("{comp} (stable)");
        if stable.lines().any(|l| l.starts_with(comp)) {
            line(&what, "already present");
        } else {
            run(Command::new("rustup").args(["component", "add", comp, "--toolchain", "stable"]))?;
            line(&what, "installed");
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    let current = raw_output(Command::new("bpf-linker").arg("--version"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if current
        .as_deref()
        .is_some_and(|v| v.split_whitespace().last() == Some(BPF_LINKER_VERSION))
    {
        line(&what, "already present");
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context(
        "installing bpf-linker failed; it needs network access to crates.io and a C toolchain",
    )?;
    line(&what, "installed");
    Ok(())
}

fn deb_installed(pkg: &str) -> bool {
    raw_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn debian_packages() -> Result<()> {
    let mut updated = false;
    let apt_update = |updated: &mut bool| -> Result<()> {
        if !*updated {
            run(Command::new("apt-get").args(["update", "-q"]))
                .context("apt-get update failed: run as root with access to the Debian mirrors")?;
            *updated = true;
        }
        Ok(())
    };
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    for p in DEB_PACKAGES.iter().filter(|p| !missing.contains(p)) {
        line(&format!("deb {p}"), "already present");
    }
    if !missing.is_empty() {
        apt_update(&mut updated)?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("apt-get install {} failed", missing.join(" ")))?;
        for p in &missing {
            line(&format!("deb {p}"), "installed");
        }
    }
    for p in OPTIONAL_DEB_PACKAGES {
        let what = format!("deb {p} (optional)");
        if deb_installed(p) {
            line(&what, "already present");
            continue;
        }
        apt_update(&mut updated)?;
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", p])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        line(
            &what,
            if ok {
                "installed"
            } else {
                "not available (skipped)"
            },
        );
    }
    Ok(())
}
