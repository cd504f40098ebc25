//! Compiles `veth-ebpf` for the BPF target (nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `datapath.rs` embeds it with `include_bytes_aligned!`.
use std::path::Path;

/// The git commit this is built from (12 hex digits): `$VETHFP_GIT_COMMIT` if set (builds from
/// a source tarball), else `git rev-parse`, else "unknown" (no git, no .git).
fn git_commit(manifest_dir: &str) -> String {
    println!("cargo:rerun-if-env-changed=VETHFP_GIT_COMMIT");
    if let Ok(c) = std::env::var("VETHFP_GIT_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_string();
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // Built again when HEAD moves: HEAD itself, the branch it names, packed refs.
    if let Some(head) = git(&["rev-parse", "--path-format=absolute", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &r])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(p) = git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-path",
        "packed-refs",
    ]) {
        println!("cargo:rerun-if-changed={p}");
    }
    commit
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    println!(
        "cargo:rustc-env=VETHFP_GIT_COMMIT={}",
        git_commit(&manifest_dir)
    );
    let root = Path::new(&manifest_dir).join("../veth-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed=../veth-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "veth-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    // The object's FNV-1a names this build's program pins. Hashed here once, not by every
    // CLI call at run time (the object is ~0.7 MB; a debug build took milliseconds per call).
    let out = std::env::var("OUT_DIR")?;
    let object = std::fs::read(Path::new(&out).join("veth-ebpf"))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    std::fs::write(
        Path::new(&out).join("object_hash.rs"),
        format!("{h:#018x}_u64\n"),
    )?;
    Ok(())
}
