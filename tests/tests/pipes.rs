//! Every command that prints behaves in a pipe: when the reader goes away (`vethfp pair list |
//! true`, `vethfp flows | head -5`) the command ends quietly, as a Unix filter does, by
//! SIGPIPE (status 141 in a shell): no panic, no backtrace, nothing on stderr. And the agent,
//! the same binary, is not killed when a /metrics scraper hangs up on it.

use std::{
    fs::File,
    io::{BufReader, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use vethfp_tests::{Agent, Node, run_in_netns};

/// Every command that only reads and prints, text and JSON.
const READS: &[&[&str]] = &[
    &["pair", "list"],
    &["pair", "list", "--json"],
    &["stats"],
    &["stats", "--json"],
    &["stats", "vfp1"],
    &["stats", "vfp1", "--json"],
    &["status"],
    &["status", "--json"],
    &["flows"],
    &["flows", "--json"],
    &["admission"],
    &["stats", "--watch", "--interval", "0.05", "--count", "3"],
    &["completions", "bash"],
    &["--help"],
    &["--version"],
];

/// A node with six endpoints.
fn node() -> (Node, Vec<vethfp_tests::Container>) {
    let node = Node::new();
    let cs = (1..=6)
        .map(|i| node.add_container(&format!("vfp{i}"), &[&format!("10.1.0.{}/24", i + 1)]))
        .collect();
    (node, cs)
}

/// (read end, write end), both close-on-exec (the child gets the write end as its stdout).
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: two valid out-slots; on success both fds are ours.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Starts `vethfp ARGS` in the node with stdout = `out`, stderr captured.
fn spawn(node: &Node, args: &[&str], out: File) -> Child {
    node.vethfp_command(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(out)))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vethfp")
}

/// Waits (with a deadline) for the child; returns its status and stderr.
fn finish(mut child: Child, what: &str) -> (ExitStatus, String) {
    let mut se = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        se.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{what}: still running after 60 s with its reader gone");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, t.join().unwrap())
}

/// What a command whose reader went away must look like.
fn assert_sigpipe(what: &str, status: ExitStatus, stderr: &str) {
    assert!(
        status.signal() == Some(libc::SIGPIPE) || status.code() == Some(141),
        "{what}: should end by SIGPIPE (141), got {status}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    assert_eq!(stderr, "", "{what}: nothing on stderr");
}

/// Stdout is a pipe whose read end is closed before the command starts (`| true` that
/// already exited): its first write fails.
#[test]
fn reader_gone_before_the_first_write() {
    let (node, _cs) = node();
    for args in READS {
        let what = format!("vethfp {}", args.join(" "));
        // The control: in a pipe that is read, the command prints something and succeeds.
        let (r, w) = pipe();
        let child = spawn(&node, args, w);
        let mut text = String::new();
        BufReader::new(r).read_to_string(&mut text).unwrap();
        let (status, stderr) = finish(child, &what);
        assert!(status.success(), "{what}: {status}: {stderr}");
        assert!(!text.is_empty(), "{what}: printed nothing");

        let (r, w) = pipe();
        drop(r);
        let (status, stderr) = finish(spawn(&node, args, w), &what);
        assert_sigpipe(&what, status, &stderr);
    }
}

/// Smallest pipe buffer (one page): output larger than that cannot all be buffered.
fn small(f: &File) {
    // SAFETY: valid fd.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        r >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

/// `| head -c 1`: the reader takes the first byte and goes away while the command is still
/// writing (its output is larger than the pipe can hold), or, for `stats --watch`, between
/// two samples.
#[test]
fn reader_gone_while_writing() {
    let (node, _cs) = node();
    for args in [
        &["stats", "--json"][..],
        &["completions", "bash"],
        &["stats", "--watch", "--interval", "0.05"],
    ] {
        let what = format!("vethfp {}", args.join(" "));
        if !args.contains(&"--watch") {
            let full = node.ok(args);
            assert!(
                full.len() > 5120,
                "{what}: {} bytes is too little to outgrow the pipe",
                full.len()
            );
        }
        let (r, w) = pipe();
        small(&w);
        let child = spawn(&node, args, w);
        let mut first = [0u8; 1];
        let mut r = r;
        r.read_exact(&mut first).unwrap();
        drop(r);
        let (status, stderr) = finish(child, &what);
        assert_sigpipe(&what, status, &stderr);
    }
}

/// The agent keeps SIGPIPE ignored: scrapers that send a request and hang up before reading
/// the answer do not kill it, and the next scrape is served.
#[test]
fn agent_survives_scrapers_hanging_up() {
    let (node, _cs) = node();
    let agent = Agent::start(&node, &[]);
    run_in_netns(node.name(), || {
        for _ in 0..20 {
            let mut s = std::net::TcpStream::connect(vethfp_tests::agent::METRICS_ADDR)
                .expect("connect to /metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            // Reset on close (SO_LINGER 0): the agent's answer hits a dead socket.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid socket and option struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
        }
    });
    let m = agent.scrape();
    assert!(
        m.get("vethfp_endpoints", &[]).is_some(),
        "the agent still serves /metrics"
    );
}
