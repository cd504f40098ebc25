//! Shared plumbing: running commands with readable errors, namespace and process guards,
//! Ctrl-C handling, and locating the workspace / target directory.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT/SIGTERM into a flag, so that the current step fails with an error and every
/// guard (namespaces, child processes, sysctls) runs its Drop on the way out instead of the
/// process dying with namespaces left behind. Children in the same process group still get
/// the SIGINT from the terminal and exit, which unblocks whatever we were waiting on.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Fail if Ctrl-C (or SIGTERM) arrived; call between steps.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C / SIGTERM); cleaning up");
    }
    Ok(())
}

/// Render a command for messages: program and arguments, space separated.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command with inherited stdio, fail with the command line if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    check_interrupted()?;
    let status = cmd.status().with_context(|| {
        format!(
            "could not start `{}`: is it installed? try `cargo xtask setup`",
            show(cmd)
        )
    })?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    check_interrupted()
}

/// Run a command capturing stdout and stderr; fail with both in the message if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    check_interrupted()?;
    let out = raw_output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    check_interrupted()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command capturing output, without judging its exit status.
pub fn raw_output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "could not start `{}`: is it installed? try `cargo xtask setup`",
            show(cmd)
        )
    })?;
    // A child killed by the terminal's SIGINT is not the child's fault: say what happened.
    check_interrupted()?;
    Ok(out)
}

/// `ip ARGS...` in the current (xtask's own) namespace. Only used for `ip netns ...`.
pub fn ip<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(Command::new("ip").args(args)).map(|_| ())
}

/// Does `prog` exist on PATH (or as a path)?
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A network namespace created with `ip netns add`, deleted (after killing whatever still runs
/// in it) when dropped. Every name carries our pid so parallel runs never collide.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        ip(["netns", "add", &name]).with_context(|| {
            format!("creating network namespace {name}: run as root (and `ip netns del {name}` if a stale one exists)")
        })?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace via `ip netns exec` (fine for tools that do
    /// not need /sys/fs/bpf).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// `ip ARGS` inside the namespace (`ip -n`), output captured.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        output(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        output(
            self.cmd("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")]),
        )
        .map(|_| ())
        .with_context(|| format!("setting {key}={value} in namespace {}", self.name))
    }

    /// A command that enters this namespace with setns(2) right before exec, without the
    /// /sys remount `ip netns exec` does (so /sys/fs/bpf stays visible).
    pub fn setns_cmd(&self, prog: impl AsRef<OsStr>) -> Result<Command> {
        setns_cmd(&self.path(), prog)
    }

    /// MAC address of a link in this namespace.
    pub fn mac(&self, dev: &str) -> Result<String> {
        let out = self.ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {dev} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill leftovers (servers) so the namespace really goes away.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a pid listed as living in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A command that runs `prog` in the network namespace at `ns_path` (setns(2) in pre_exec).
pub fn setns_cmd(ns_path: &Path, prog: impl AsRef<OsStr>) -> Result<Command> {
    let f = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    let mut c = Command::new(prog);
    // SAFETY: setns is async-signal-safe; the fd stays open because the closure owns it.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// A directory (e.g. a bpffs pin directory) removed with everything in it on drop.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A background child process killed and reaped on drop.
pub struct Bg {
    child: Child,
    what: String,
}

impl Bg {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        check_interrupted()?;
        let what = show(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start `{what}`: try `cargo xtask setup`"))?;
        Ok(Bg { child, what })
    }

    /// Fail if the process already exited (e.g. a server that could not bind).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("`{}` exited early ({st})", self.what);
        }
        Ok(())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workspace root (parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let out = output(Command::new(cargo()).current_dir(workspace_root()).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    Ok(PathBuf::from(
        v["target_directory"]
            .as_str()
            .context("cargo metadata has no target_directory")?,
    ))
}

/// The cargo that runs us (so `cargo xtask` under rustup uses the same toolchain).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A `cargo` command rooted at the workspace.
pub fn cargo_cmd() -> Command {
    let mut c = Command::new(cargo());
    c.current_dir(workspace_root());
    c
}

/// Print a step header.
pub fn step(msg: &str) {
    println!("==> {msg}");
}

/// Path of the vethfp binary: $VETHFP_BIN, or `target/<profile>/vethfp`.
pub fn vethfp_bin(profile: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var("VETHFP_BIN") {
        let p = PathBuf::from(p);
        return std::fs::canonicalize(&p)
            .with_context(|| format!("VETHFP_BIN={} does not exist", p.display()));
    }
    Ok(target_dir()?.join(profile).join("vethfp"))
}
