//! The state directory's file system: a mounted bpffs (mounted at /sys/fs/bpf on a bare
//! node), the directories a call makes (and takes back when it fails), root-only modes.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{DatapathError, Result, io};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Ensures `dir` can hold pins: it is (or will be created) inside a mounted bpffs. If nothing is
/// mounted at /sys/fs/bpf and `dir` is under it, bpffs is mounted there first.
pub fn prepare_bpffs(dir: &Path) -> Result<()> {
    prepare_bpffs_made(dir).map(drop)
}

/// [`prepare_bpffs`], returning the directories it created (outermost first), so that a
/// caller that then fails can take them away again ([`remove_made_dirs`]).
pub(crate) fn prepare_bpffs_made(dir: &Path) -> Result<Vec<PathBuf>> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| DatapathError::NotBpffs(dir.into()))?;
    if is_bpffs(existing) {
        return make_dir(dir);
    }
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && sys.is_dir() && !is_bpffs(sys) && existing == sys {
        // Mounting is right on a bare node; in a private mount namespace the mount, and the
        // state with it, would be gone when this process exits.
        if private_mounts() {
            return Err(DatapathError::PrivateMounts);
        }
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| DatapathError::Mount(e.to_string()))?;
        return make_dir(dir);
    }
    Err(DatapathError::NotBpffs(dir.into()))
}

/// Is this process in a mount namespace of its own: another than its parent's (`ip netns
/// exec` and `unshare -m` make one and exec the command in it) or PID 1's? A namespace that
/// cannot be read does not count (PID 1's often cannot, in a container).
fn private_mounts() -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(me) = id("/proc/self/ns/mnt") else {
        return false;
    };
    let parent = format!("/proc/{}/ns/mnt", std::os::unix::process::parent_id());
    [parent.as_str(), "/proc/1/ns/mnt"]
        .into_iter()
        .filter_map(id)
        .any(|other| other != me)
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn make_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    // The missing ancestors of `dir` too: all of them are this call's to take back.
    let mut made: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    made.reverse();
    made.extend(
        [dir.join("progs"), dir.join("links")]
            .into_iter()
            .filter(|p| !p.exists()),
    );
    for d in [dir.to_path_buf(), dir.join("progs"), dir.join("links")] {
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(&d) {
            Ok(()) => {}
            Err(source) => {
                remove_made_dirs(&made);
                return Err(DatapathError::StateDir { path: d, source });
            }
        }
    }
    for d in [dir.to_path_buf(), dir.join("progs"), dir.join("links")] {
        if let Err(e) = restrict(&d, 0o700) {
            remove_made_dirs(&made);
            return Err(e);
        }
    }
    Ok(made)
}

/// Removes directories a failed call created ([`prepare_bpffs_made`]), innermost first; only
/// empty ones go (`rmdir`): whatever another process put there meanwhile stays.
pub(crate) fn remove_made_dirs(made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// Pins and state directories are root's alone: whoever can open a pinned map can change the
/// datapath, whoever can read one learns every endpoint. The mode is set explicitly (not left
/// to the umask), also on pins and directories an earlier version made.
pub(crate) fn restrict(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {mode:o} {}", path.display())))
}
