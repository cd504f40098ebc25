//! `cargo xtask image`: the container image the Kubernetes DaemonSet runs
//! (deploy/kubernetes/daemonset.yaml), built from Debian packages only — no registry:
//!
//! 1. a Debian root file system made by `debootstrap --variant=minbase` with what the image
//!    runs (iptables and nftables for the agent's bridge checks, curl and jq for the install
//!    step, the reference host-local/portmap/loopback plugins), trimmed (docs, man pages,
//!    locales, apt lists, the other reference plugins) and cached as a tarball under
//!    `target/image/` (keyed by suite, mirror and package list: reruns skip debootstrap);
//! 2. the release `vethfp` and `vethfp-install-cni` added under /usr/local/bin;
//! 3. imported into podman's image store (`podman import`), saved as a docker-archive
//!    tarball, and imported into containerd's `k8s.io` namespace (`ctr images import`, the
//!    namespace kubelet's CRI uses) when containerd runs.
//!
//! The size of the image is printed at the end.

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{cargo_cmd, have, output, run, step, target_dir, workspace_root};

/// The image's name in both stores; the DaemonSet refers to it (imagePullPolicy: Never).
pub const IMAGE: &str = concat!("localhost/vethfp:", env!("CARGO_PKG_VERSION"));
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Debian packages of the image on top of minbase.
const PACKAGES: &[&str] = &[
    "iptables",
    "nftables",
    "curl",
    "jq",
    "containernetworking-plugins",
];
/// Reference CNI plugins kept from containernetworking-plugins (the conflist's IPAM and
/// portmap, and the loopback plugin runtimes call): installed on a node only if it has none.
const KEEP_PLUGINS: &[&str] = &["host-local", "portmap", "loopback"];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// containerd socket to import into (default: /run/containerd/containerd.sock if present).
    #[arg(long)]
    containerd: Option<PathBuf>,
    /// Do not import into podman's and containerd's stores; only write the archive.
    #[arg(long)]
    no_load: bool,
    /// Import into podman's store only, not into containerd's.
    #[arg(long)]
    podman_only: bool,
}

/// The image for tests/tests/deploy_image.rs, in podman's store (containerd is not
/// touched). About 20 minutes the first time on 2 cores (release build ~6, debootstrap ~14),
/// about 1 minute with the root file system cached and the release build current.
pub fn build_for_tests() -> Result<()> {
    step("cargo xtask image --podman-only (for tests/tests/deploy_image.rs)");
    image(Args {
        containerd: None,
        no_load: false,
        podman_only: true,
    })
}

pub fn image(args: Args) -> Result<()> {
    for (tool, pkg) in [("debootstrap", "debootstrap"), ("podman", "podman")] {
        if !have(tool) {
            bail!("{tool} is not installed: run `cargo xtask setup` (or apt-get install {pkg})");
        }
    }
    let dir = target_dir()?.join("image");
    std::fs::create_dir_all(&dir)?;

    step("cargo build --release -p veth-user");
    run(cargo_cmd().args(["build", "--release", "-p", "veth-user"]))?;
    let bin = target_dir()?.join("release/vethfp");

    let rootfs = rootfs(&dir)?;

    step("adding vethfp and vethfp-install-cni under /usr/local/bin");
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    let local = stage.join("usr/local/bin");
    std::fs::create_dir_all(&local)?;
    std::fs::copy(&bin, local.join("vethfp")).context("copying the release vethfp")?;
    std::fs::copy(
        workspace_root().join("deploy/image/vethfp-install-cni"),
        local.join("vethfp-install-cni"),
    )
    .context("copying deploy/image/vethfp-install-cni")?;
    for f in ["vethfp", "vethfp-install-cni"] {
        run(Command::new("chmod").arg("0755").arg(local.join(f)))?;
    }
    let layer = dir.join("vethfp-rootfs.tar");
    std::fs::copy(&rootfs, &layer)?;
    run(Command::new("tar")
        .args([
            "--append",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-f",
        ])
        .arg(&layer)
        .arg("-C")
        .arg(&stage)
        .arg("./usr/local/bin/vethfp")
        .arg("./usr/local/bin/vethfp-install-cni"))?;

    step(&format!("podman import {IMAGE}"));
    let image_id = || {
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", IMAGE]))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let previous = image_id();
    run(Command::new("podman")
        .arg("import")
        .args(["--change", "CMD [\"/usr/local/bin/vethfp\", \"--help\"]"])
        .args(["--change", "WORKDIR /"])
        .args([
            "--change",
            "LABEL org.opencontainers.image.title=vethfp org.opencontainers.image.source=https://github.com/vethfp/vethfp",
        ])
        .args(["--message", "vethfp: Debian minbase + vethfp (cargo xtask image)"])
        .arg(&layer)
        .arg(IMAGE))?;
    // The previous build under this name would stay behind as a dangling image.
    if let Some(old) = previous.filter(|old| Some(old) != image_id().as_ref()) {
        let _ = output(Command::new("podman").args(["rmi", &old]));
    }
    let archive = dir.join(format!(
        "vethfp-{}.docker-archive.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let _ = std::fs::remove_file(&archive);
    run(Command::new("podman")
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(IMAGE))?;
    std::fs::remove_file(&layer).ok();
    std::fs::remove_dir_all(&stage).ok();

    let size: u64 =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", IMAGE]))?
            .trim()
            .parse()
            .context("podman image inspect: size")?;

    let mut loaded = vec!["podman (`podman images localhost/vethfp`)".to_string()];
    if args.no_load {
        // podman import already stored it; remove it again so --no-load means what it says.
        run(Command::new("podman").args(["rmi", IMAGE]))?;
        loaded.clear();
    } else {
        let sock = args
            .containerd
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"));
        if args.podman_only {
            println!("image: not imported into containerd (--podman-only)");
        } else if sock.exists() {
            step(&format!("ctr -n k8s.io images import ({})", sock.display()));
            import_containerd(&sock, &archive)?;
            loaded.push(format!(
                "containerd at {} (namespace k8s.io)",
                sock.display()
            ));
        } else {
            println!(
                "image: containerd is not running here ({} is missing); on a node run:\n  \
                 ctr -n k8s.io images import {}",
                sock.display(),
                archive.display()
            );
        }
    }
    step(&format!(
        "image {IMAGE}: {:.1} MiB (uncompressed), archive {} ({:.1} MiB); loaded into: {}",
        size as f64 / (1 << 20) as f64,
        archive.display(),
        std::fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64,
        if loaded.is_empty() {
            "nothing (--no-load)".to_string()
        } else {
            loaded.join(", ")
        }
    ));
    Ok(())
}

/// `ctr --address SOCK -n k8s.io images import ARCHIVE` (the namespace kubelet's CRI uses).
pub fn import_containerd(sock: &Path, archive: &Path) -> Result<()> {
    run(Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive))
    .context("ctr images import failed")
}

/// The cached, trimmed minbase root file system tarball; made with debootstrap if missing.
fn rootfs(dir: &Path) -> Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (SUITE, MIRROR, PACKAGES, KEEP_PLUGINS, 1u32).hash(&mut h);
    let tarball = dir.join(format!("rootfs-{SUITE}-{:016x}.tar", h.finish()));
    if tarball.is_file() {
        step(&format!(
            "Debian root file system: cached {}",
            tarball.display()
        ));
        return Ok(tarball);
    }
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    step(&format!(
        "debootstrap --variant=minbase {SUITE} (first time ~15 min; cached afterwards)"
    ));
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(MIRROR))
    .context("debootstrap failed: it needs root and access to the Debian mirror")?;
    step("trimming the root file system");
    for p in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "debootstrap",
    ] {
        let _ = std::fs::remove_dir_all(root.join(p));
    }
    for p in ["var/cache/apt", "var/lib/apt/lists/partial", "var/log"] {
        std::fs::create_dir_all(root.join(p))?;
    }
    let cni = root.join("usr/lib/cni");
    for e in std::fs::read_dir(&cni).with_context(|| format!("{}", cni.display()))? {
        let e = e?;
        let name = e.file_name();
        if !KEEP_PLUGINS.iter().any(|k| name == *k) {
            std::fs::remove_file(e.path())?;
        }
    }
    let tmp = tarball.with_extension("tar.tmp");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&tmp)
        .arg("."))?;
    std::fs::rename(&tmp, &tarball)?;
    std::fs::remove_dir_all(&root).ok();
    Ok(tarball)
}
