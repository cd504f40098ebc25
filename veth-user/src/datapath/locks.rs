//! The locks of a state directory: the state lock (one registry operation at a time) and
//! the ops lock (operations in flight, for journal recovery).

use std::{fs, io::ErrorKind, os::fd::OwnedFd, path::Path};

use super::{DatapathError, Result, bpffs::restrict, io};
use crate::sys::lock;

/// An exclusive lock on the state directory for the duration of one registry operation, so
/// concurrent CLI calls (and the agent) never interleave their map and link updates.
pub struct StateLock {
    _fd: OwnedFd,
    /// When it was taken, and how long taking it waited (for the debug log on release).
    taken: std::time::Instant,
    waited: std::time::Duration,
}

impl StateLock {
    pub fn acquire(dir: &Path) -> Result<StateLock> {
        let asked = std::time::Instant::now();
        let f = fs::File::open(dir).map_err(io(format!("opening {}", dir.display())))?;
        let fd: OwnedFd = f.into();
        lock::flock(&fd, lock::LOCK_EX).map_err(|source| DatapathError::Io {
            what: format!("locking {}", dir.display()),
            source,
        })?;
        let taken = std::time::Instant::now();
        Ok(StateLock {
            _fd: fd,
            taken,
            waited: taken - asked,
        })
    }
}

impl Drop for StateLock {
    /// `RUST_LOG=vethfp=debug` shows every locked step: what concurrent writers wait for.
    fn drop(&mut self) {
        log::debug!(
            "state lock: waited {} µs, held {} µs",
            self.waited.as_micros(),
            self.taken.elapsed().as_micros()
        );
    }
}

/// Operations in flight: every writer holds `DIR/ops` shared for its whole life, including
/// the kernel work it does between its short, exclusive map updates (the state lock is not
/// held meanwhile, so concurrent CNI ADDs overlap their netlink work). Journal recovery needs
/// it exclusive: an intent it sees then belongs to an operation that is no longer running,
/// never to one that is still working.
pub struct OpsLock {
    _fd: OwnedFd,
}

/// The subdirectory whose flock is the [`OpsLock`].
pub const OPS_DIR: &str = "ops";

impl OpsLock {
    fn open(dir: &Path) -> Result<OwnedFd> {
        let path = dir.join(OPS_DIR);
        match fs::create_dir(&path) {
            // Root only, like everything else in the state dir.
            Ok(()) => restrict(&path, 0o700)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
        }
        let f = fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        Ok(f.into())
    }

    fn flock(dir: &Path, fd: &OwnedFd, op: libc::c_int) -> Result<bool> {
        let Err(e) = lock::flock(fd, op) else {
            return Ok(true);
        };
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(DatapathError::Io {
            what: format!("locking {}/{OPS_DIR}", dir.display()),
            source: e,
        })
    }

    /// Held by a writer for its lifetime.
    pub fn shared(dir: &Path) -> Result<OpsLock> {
        let fd = Self::open(dir)?;
        Self::flock(dir, &fd, libc::LOCK_SH)?;
        Ok(OpsLock { _fd: fd })
    }

    /// Some if no operation is in flight (then none can start while it is held).
    pub fn try_exclusive(dir: &Path) -> Result<Option<OpsLock>> {
        let fd = Self::open(dir)?;
        Ok(Self::flock(dir, &fd, libc::LOCK_EX | libc::LOCK_NB)?.then_some(OpsLock { _fd: fd }))
    }
}
