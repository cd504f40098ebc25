//! `cargo xtask test`: the project's one test command (CI runs exactly this).

use crate::util::{cargo_cmd, run, step, target_dir};
use anyhow::{Context, Result};

pub fn test() -> Result<()> {
    step("setup");
    crate::setup::setup()?;
    step("cargo fmt --all --check");
    run(cargo_cmd().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    step("cargo clippy --workspace --all-targets -- -D warnings");
    run(cargo_cmd().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems: fix them (see above)")?;
    step("public API of the vethfp library against veth-user/public-api.txt");
    crate::public_api::public_api(false)?;
    step("cargo build --workspace --bins");
    run(cargo_cmd().args(["build", "--workspace", "--bins"]))?;
    crate::image::build_for_tests()?;
    let prev = crate::prev_release::build()?;
    let bin = target_dir()?.join("debug").join("vethfp");
    step(&format!(
        "cargo test --workspace (VETHFP_BIN={}, {}={})",
        bin.display(),
        crate::prev_release::ENV,
        prev.display()
    ));
    run(cargo_cmd()
        .args(["test", "--workspace"])
        .env("VETHFP_BIN", &bin)
        .env(crate::prev_release::ENV, &prev))
    .context("tests failed (see above)")?;
    let out = std::env::temp_dir().join(format!("vethfp-bench-smoke-{}", std::process::id()));
    step(&format!(
        "bench --quick --out {} (smoke test of the bench harness)",
        out.display()
    ));
    // In-process: `cargo build --workspace` may just have replaced our own executable.
    let res = crate::bench::bench(crate::bench::Args::quick(out.clone(), bin));
    let _ = std::fs::remove_dir_all(&out);
    res.context("the bench smoke test failed (see above)")?;
    step("all checks passed");
    Ok(())
}
