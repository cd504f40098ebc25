//! The command line's stdout. Everything a command prints goes through [`outln!`] (or
//! [`bytes`]), never `println!`/`print!`: those panic when the reader has gone away.
//!
//! A reader that stops early (`vethfp flows | head -5`, `vethfp pair list | true`) closes the
//! pipe; the next write fails with EPIPE and the command ends as if SIGPIPE had killed it —
//! quietly (no panic, no message) and with the status shells report as 141 (128 + SIGPIPE),
//! like any other Unix filter. SIGPIPE itself stays ignored for the process (Rust's default):
//! the same binary runs the agent, whose /metrics server must survive a scraper hanging up,
//! and the CNI plugin. Only this output path turns EPIPE into the signal.
//!
//! Any other write error (a full disk behind `> file`) is reported on stderr, status 1.

use std::io::{self, Write};

/// `println!` for the CLI: a closed stdout ends the command quietly (see the module docs).
macro_rules! outln {
    () => {
        $crate::cli::out::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Writes formatted text to stdout; see [`outln!`].
pub fn write_fmt(args: std::fmt::Arguments) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        fail(e)
    }
}

/// Writes bytes to stdout and flushes them.
pub fn bytes(b: &[u8]) {
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_all(b).and_then(|()| o.flush()) {
        fail(e)
    }
}

/// Whether stdout is a terminal.
pub fn is_terminal() -> bool {
    io::IsTerminal::is_terminal(&io::stdout())
}

/// Stdout as a writer, for code that writes to any `Write` (`stats --watch`); its write
/// errors go to [`fail`].
pub fn writer() -> io::StdoutLock<'static> {
    io::stdout().lock()
}

/// Flushes what is still buffered (called before a command reports success).
pub fn flush() {
    if let Err(e) = io::stdout().flush() {
        fail(e)
    }
}

/// Ends the process after a failed write to stdout: by SIGPIPE if the reader is gone, else
/// with an error message and status 1.
pub fn fail(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        sigpipe()
    }
    // Not eprintln!: it panics if stderr is closed too.
    let _ = writeln!(io::stderr(), "vethfp: error: writing to stdout: {e}");
    std::process::exit(1)
}

/// Dies of SIGPIPE: the default action is restored for this one signal, at the very end of
/// this process, and raised. If it cannot be (blocked), exits 141 as a shell would report it.
fn sigpipe() -> ! {
    // SAFETY: restoring a default disposition and raising a signal; nothing else runs after.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

#[cfg(test)]
mod tests {
    /// The CLI front end prints only through this module: `println!`/`print!` panic on a
    /// closed stdout (exit 101 with a backtrace instead of a quiet SIGPIPE end).
    #[test]
    fn no_println_in_the_cli() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![root.join("main.rs")];
        for e in std::fs::read_dir(root.join("cli")).expect("src/cli") {
            files.push(e.expect("readdir").path());
        }
        let mut bad = Vec::new();
        for f in &files {
            if f.ends_with("out.rs") {
                continue;
            }
            let text = std::fs::read_to_string(f).expect("read source");
            for (i, line) in text.lines().enumerate() {
                // eprintln! is fine (stderr); the check is on what is left without it.
                let code = line.split("//").next().unwrap_or("").replace("eprint", "");
                if ["println!", "print!", "stdout()"]
                    .iter()
                    .any(|m| code.contains(m))
                {
                    bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "print through cli::out (outln!), not println!/print!/stdout():\n{}",
            bad.join("\n")
        );
    }
}
