//! `vethfp completions bash|zsh|fish`: a script for each shell that knows the commands, and a
//! reader that stops early (`| head`) is not a crash.

use std::{
    io::Read,
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_vethfp");

#[test]
fn every_shell_gets_a_script_naming_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run vethfp");
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8 script");
        for word in ["pair", "uplink", "bridge", "admission", "flows", "bpffs"] {
            assert!(text.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "powershell"])
        .output()
        .expect("run vethfp");
    assert!(!out.status.success(), "only bash, zsh and fish are offered");
}

#[test]
fn a_reader_that_stops_early_is_not_a_crash() {
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vethfp");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("first bytes");
    // stdout is closed here (dropped), before the script is written out in full.
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{out:?}");
}
