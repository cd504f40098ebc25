//! flock(2): the state lock, the ops lock and the agent's lock are advisory locks on
//! directories of the state dir, dropped by the kernel with the descriptor (also on SIGKILL).

use std::os::fd::AsFd;

pub use libc::{LOCK_EX, LOCK_NB, LOCK_SH};

/// flock(2) on `fd` with `op` (`LOCK_SH`, `LOCK_EX`, `| LOCK_NB`).
pub fn flock(fd: impl AsFd, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid, borrowed descriptor; flock on a directory fd is allowed on every
    // filesystem.
    if unsafe { libc::flock(fd.as_fd().as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
