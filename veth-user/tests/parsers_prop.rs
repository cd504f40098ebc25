//! Property tests of every parser of user input: CIDR, MAC and interface name `FromStr`, and
//! the CLI's argument parser (the real binary, on arbitrary argv). None may panic; valid
//! values round-trip through their text form.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::{ffi::OsStringExt, process::CommandExt},
    process::{Command, Stdio},
};

use proptest::prelude::*;
use vethfp::{Cidr, IfName, Mac};

fn acceptable(ip: IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_loopback()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast() || v4.is_link_local())
        || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

/// Strings that look a bit like the real thing, and plain arbitrary ones.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F:./\\-% ]{0,48}",
        "[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}/[0-9+\\-]{0,5}",
        "([0-9a-fA-F]{0,3}[:\\-]){0,8}[0-9a-fA-F]{0,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn cidr_never_panics_and_reparses(s in texty()) {
        if let Ok(c) = s.parse::<Cidr>() {
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
            prop_assert!(c.prefix <= c.host_prefix());
        }
    }

    #[test]
    fn cidr_valid_round_trips(ip in any_ip(), p in 0u8..=128) {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let text = format!("{ip}/{p}");
        let r = text.parse::<Cidr>();
        if p <= max && acceptable(ip) {
            prop_assert_eq!(r, Ok(Cidr { addr: ip, prefix: p }));
            prop_assert_eq!(Cidr { addr: ip, prefix: p }.to_string(), text);
        } else {
            prop_assert!(r.is_err(), "{} accepted", text);
        }
    }

    #[test]
    fn mac_never_panics_and_reparses(s in texty()) {
        if let Ok(m) = s.parse::<Mac>() {
            prop_assert!(m.is_unicast());
            prop_assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
        }
    }

    #[test]
    fn mac_valid_round_trips(b in any::<[u8; 6]>(), upper in any::<bool>(), dash in any::<bool>()) {
        let m = Mac(b);
        let mut text = m.to_string();
        if upper { text = text.to_uppercase(); }
        if dash { text = text.replace(':', "-"); }
        let r = text.parse::<Mac>();
        if m.is_unicast() {
            prop_assert_eq!(r, Ok(m));
        } else {
            prop_assert!(r.is_err(), "{} accepted", text);
        }
    }

    #[test]
    fn ifname_never_panics_and_round_trips(s in prop_oneof![any::<String>(), "[a-z0-9./: \\-]{0,20}"]) {
        match s.parse::<IfName>() {
            Ok(n) => {
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert!(!s.is_empty() && s.len() <= 15);
                prop_assert!(!s.contains('/') && !s.contains(':') && s != "." && s != "..");
                prop_assert_eq!(n.to_string().parse::<IfName>(), Ok(n));
            }
            Err(e) => prop_assert!(e.to_string().contains("invalid interface name")),
        }
    }
}

fn bin() -> std::path::PathBuf {
    std::env::var_os("VETHFP_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_vethfp").into())
}

/// argv words: the CLI's own vocabulary mixed with arbitrary text and bytes.
fn word() -> impl Strategy<Value = OsString> {
    let vocab = [
        "pair",
        "add",
        "del",
        "mode",
        "list",
        "stats",
        "status",
        "uplink",
        "attach",
        "detach",
        "--netns",
        "--addr",
        "--mtu",
        "--mac",
        "--mode",
        "--network",
        "--spoof",
        "--ifname",
        "--json",
        "--bpffs",
        "--egress",
        "tc",
        "xdp",
        "enforce",
        "audit",
        "off",
        "fast",
        "kernel",
        "10.0.0.2/24",
        "fd00::2/64",
        "02:00:0a:00:00:02",
        "eth0",
        "-",
        "--",
        "",
        "--help",
        "-h",
        "--version",
        "=",
        "--addr=",
        "--mtu=99999999999999999999",
    ];
    prop_oneof![
        3 => proptest::sample::select(vocab.to_vec()).prop_map(OsString::from),
        1 => any::<String>().prop_map(|s| OsString::from(s.replace('\0', ""))),
        1 => proptest::collection::vec(1u8..=255, 0..24).prop_map(OsString::from_vec),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The CLI on arbitrary argv: never a panic (exit 101 / "panicked"), never a signal;
    /// success or exit 1 with one `vethfp: error:` line. Run as uid 65534 in a fresh
    /// network namespace, so a valid command can do nothing at all.
    #[test]
    fn cli_never_panics(argv in proptest::collection::vec(word(), 0..8)) {
        let mut cmd = Command::new(bin());
        cmd.args(&argv)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: async-signal-safe calls only between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run vethfp");
        let err = String::from_utf8_lossy(&out.stderr);
        prop_assert!(out.status.code().is_some(), "killed by a signal: {:?} {}", argv, err);
        prop_assert!(out.status.code() != Some(101) && !err.contains("panicked"), "panic on {:?}: {}", argv, err);
        if !out.status.success() {
            prop_assert_eq!(out.status.code(), Some(1), "{:?}: {}", argv, err);
            let line = err.strip_suffix('\n').unwrap_or(&err);
            prop_assert!(line.starts_with("vethfp: error: ") && !line.contains('\n'), "{:?}: {:?}", argv, err);
        }
    }
}
