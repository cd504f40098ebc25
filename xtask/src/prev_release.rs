//! `cargo xtask prev-release`: the `vethfp` of the previous release, built from git, for the
//! upgrade tests (tests/tests/upgrade.rs).
//!
//! The release and its commit are read from CHANGELOG.md, the one place they are recorded:
//! the first `## X.Y.Z — date` heading (not "Unreleased") and its `Commit <40 hex>.` line.
//! The commit is checked out as a detached git worktree under
//! `target/prev-release/<commit>/src` and built there with its own Cargo.lock (`--locked`) and
//! its own BPF build (aya-build), into `target/prev-release/<commit>/target`. The binary is
//! copied to `target/prev-release/<commit>/vethfp` last, so it exists only after a complete
//! build: a second run finds it and costs nothing. Needs the git history (a clone, tags not
//! needed) and what `cargo xtask setup` installs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, output, run, step, target_dir, workspace_root};

/// The env var the upgrade tests read the previous release's binary from.
pub const ENV: &str = "VETHFP_PREV_BIN";

/// (version, commit) of the newest release recorded in CHANGELOG.md.
pub fn previous_release() -> Result<(String, String)> {
    let path = workspace_root().join("CHANGELOG.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_changelog(&text).with_context(|| {
        format!(
            "{}: no release with a `Commit <40 hex digits>.` line under its `## X.Y.Z` heading",
            path.display()
        )
    })
}

fn parse_changelog(text: &str) -> Option<(String, String)> {
    let mut version = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let v = h.split_whitespace().next()?;
            if v.eq_ignore_ascii_case("unreleased") {
                continue;
            }
            if version.is_some() {
                return None; // the newest release has no commit line
            }
            version = Some(v.to_string());
        } else if let (Some(v), Some(c)) = (&version, line.strip_prefix("Commit ")) {
            let c = c.trim_end_matches('.');
            if c.len() == 40 && c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Some((v.clone(), c.to_string()));
            }
        }
    }
    None
}

/// Builds (or finds, cached) the previous release's `vethfp`; returns its path.
pub fn build() -> Result<PathBuf> {
    let (version, commit) = previous_release()?;
    let base = target_dir()?.join("prev-release").join(&commit);
    let bin = base.join("vethfp");
    if bin.is_file() {
        step(&format!(
            "previous release {version} ({commit}): {} (cached)",
            bin.display()
        ));
        return Ok(bin);
    }
    step(&format!(
        "building the previous release {version} ({commit}) from git for the upgrade tests"
    ));
    let root = workspace_root();
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.current_dir(&root).args(args);
        c
    };
    let have = git(&["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .context("running git")?;
    if !have.success() {
        bail!(
            "commit {commit} of release {version} is not in this clone: fetch the history \
             (`git fetch --unshallow`, or clone without --depth)"
        );
    }
    std::fs::create_dir_all(&base)?;
    let src = base.join("src");
    if !src.join("Cargo.toml").is_file() {
        // A worktree left registered by an earlier, removed target/ is pruned first.
        run(&mut git(&["worktree", "prune"]))?;
        let _ = std::fs::remove_dir_all(&src);
        run(&mut git(&[
            "worktree",
            "add",
            "--detach",
            path_str(&src)?,
            &commit,
        ]))?;
    }
    let head = output(
        Command::new("git")
            .current_dir(&src)
            .args(["rev-parse", "HEAD"]),
    )?;
    if head.trim() != commit {
        bail!(
            "{} is at {} instead of {commit}: remove it (`git worktree remove --force {0}`) \
             and run again",
            src.display(),
            head.trim()
        );
    }
    run(Command::new(cargo())
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .args(["build", "--locked", "-p", "veth-user", "--bin", "vethfp"]))
    .with_context(|| format!("building vethfp {version} in {}", src.display()))?;
    let built = base.join("target/debug/vethfp");
    let tmp = base.join("vethfp.tmp");
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &bin)?;
    step(&format!("previous release {version}: {}", bin.display()));
    Ok(bin)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 target directory")
}

#[cfg(test)]
mod tests {
    use super::parse_changelog;

    #[test]
    fn newest_release_and_its_commit() {
        let c = "# Changelog\n\n## Unreleased — 0.3.0-dev\n\nCommit 1111111111111111111111111111111111111111.\n\n\
                 ## 0.2.0 — 2027-01-01\n\nCommit abcdefabcdefabcdefabcdefabcdefabcdefabcd.\n\n\
                 ## 0.1.0 — 2026-12-01\n\nCommit e9a122ee17c7a302f220169e61d7cac181e9da1a.\n";
        assert_eq!(
            parse_changelog(c),
            Some((
                "0.2.0".into(),
                "abcdefabcdefabcdefabcdefabcdefabcdefabcd".into()
            ))
        );
        assert_eq!(parse_changelog("## 0.2.0\n\n## 0.1.0\nCommit abc.\n"), None);
    }
}
