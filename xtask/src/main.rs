//! Project automation: `cargo xtask setup | test | e2e | image | prev-release | demo | bench`.

mod bench;
mod ci;
mod demo;
mod e2e;
mod image;
mod prev_release;
mod public_api;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "vethfp project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (toolchains, bpf-linker, Debian packages).
    Setup,
    /// fmt, clippy, build, tests and a quick bench: exactly what CI runs.
    Test,
    /// Only the end-to-end tests: containerd (CRI) and podman driving vethfp as their CNI.
    E2e,
    /// Build the container image of the Kubernetes DaemonSet (Debian minbase + vethfp) and
    /// load it into podman's and containerd's image stores.
    Image(image::Args),
    /// Build the previous release's vethfp from git (cached by commit) for the upgrade tests;
    /// prints its path (pass it as VETHFP_PREV_BIN). `cargo xtask test` does this itself.
    PrevRelease,
    /// Three containers on a throwaway node, wired by vethfp; pings, a UDP burst, counters.
    Demo,
    /// Compare vethfp with direct veth, bridge, docker-like bridge and kernel routing.
    Bench(bench::Args),
    /// Check the vethfp library's public API against veth-user/public-api.txt (--bless
    /// writes it). Needs the nightly toolchain (rustdoc JSON).
    PublicApi {
        #[arg(long)]
        bless: bool,
    },
    /// Internal: send a burst of UDP datagrams (used by the demo inside a container).
    #[command(hide = true)]
    UdpBurst {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
}

fn main() {
    util::install_signal_handlers();
    let cli = Cli::parse();
    let res: Result<()> = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Test => ci::test(),
        Cmd::E2e => e2e::e2e(),
        Cmd::Image(args) => image::image(args),
        Cmd::PrevRelease => prev_release::build().map(|p| println!("{}", p.display())),
        Cmd::Demo => demo::demo(),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::PublicApi { bless } => public_api::public_api(bless),
        Cmd::UdpBurst { to, count } => demo::udp_burst(to, count),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
