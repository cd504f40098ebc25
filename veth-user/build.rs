//! Compiles `veth-ebpf` for the BPF target (nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `datapath.rs` embeds it with `include_bytes_aligned!`.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
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
    )
}
