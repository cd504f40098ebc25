//! `cargo xtask e2e`: the end-to-end test targets only (real runtimes driving vethfp as their
//! CNI plugin). `cargo xtask test` runs them too, as part of `cargo test --workspace`.

use crate::util::{cargo_cmd, run, step, target_dir};
use anyhow::{Context, Result};

/// Test targets of the `vethfp-tests` crate that run a real container runtime. Add new ones
/// here (one `--test` each).
pub const E2E_TESTS: &[&str] = &[
    // containerd's CRI (a Kubernetes node) in tc, xdp and chained-after-ptp modes.
    "cri_node",
    // podman 4.3 with the CNI backend.
    "cni_podman",
    // The DaemonSet's image (`cargo xtask image`) run as kubelet would, under podman.
    "deploy_image",
];

pub fn e2e() -> Result<()> {
    step("setup");
    crate::setup::setup()?;
    step("cargo build -p veth-user");
    run(cargo_cmd().args(["build", "-p", "veth-user"]))?;
    crate::image::build_for_tests()?;
    let bin = target_dir()?.join("debug").join("vethfp");
    let mut cmd = cargo_cmd();
    cmd.args(["test", "-p", "vethfp-tests"]);
    for t in E2E_TESTS {
        cmd.args(["--test", t]);
    }
    step(&format!(
        "cargo test -p vethfp-tests --test {} (VETHFP_BIN={})",
        E2E_TESTS.join(" --test "),
        bin.display()
    ));
    run(cmd.env("VETHFP_BIN", &bin)).context("end-to-end tests failed (see above)")?;
    step("end-to-end tests passed");
    Ok(())
}
