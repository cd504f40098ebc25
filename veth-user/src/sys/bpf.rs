//! bpf(2) where aya 0.14 has no call: a plain fd for a pin (BPF_OBJ_GET), a link's info
//! (BPF_OBJ_GET_INFO_BY_FD), detaching a link now (BPF_LINK_DETACH). Hand-written attrs: the
//! command numbers and layouts are the kernel's UAPI (linux/bpf.h).

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

/// Opens the BPF object pinned at `path` (raw BPF_OBJ_GET: aya 0.14 opens pins only as typed
/// maps, programs or links, and we need a plain fd for bpf_link_info and BPF_LINK_DETACH);
/// None if nothing is pinned there.
pub(crate) fn pinned_fd(path: &Path) -> std::io::Result<Option<OwnedFd>> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: bpf(2) with a valid, fully initialised attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>() as u32,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: a fresh fd returned by BPF_OBJ_GET, owned here.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The ifindex a pinned tcx/XDP link is attached to (bpf_link_info; 0 once its device is
/// gone); None if nothing is pinned at `path`. Raw bpf(2): aya 0.14 does not expose it.
pub(crate) fn pinned_link_ifindex(path: &Path) -> std::io::Result<Option<u32>> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let Some(fd) = pinned_fd(path)? else {
        return Ok(None);
    };
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 whose tcx and xdp
    // members start with the ifindex (offset 16).
    let mut info = [0u64; 32];
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) with a valid attr; the kernel writes at most info_len bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFd,
            std::mem::size_of::<InfoByFd>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(info[2] as u32))
}

/// Detaches the link pinned at `path` now (BPF_LINK_DETACH) and removes the pin; Ok(false) if
/// nothing is pinned there. Removing only the pin frees the link asynchronously, so attaching
/// to the same hook right after (e.g. `pair mode … xdp` after `pair mode … tc`) could still
/// find it busy (EBUSY).
pub(crate) fn unpin_and_detach(path: &Path) -> std::io::Result<bool> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
        pad: [u32; 3],
    }
    let Some(fd) = pinned_fd(path)? else {
        return Ok(false);
    };
    let detach = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
        pad: [0; 3],
    };
    // SAFETY: bpf(2) with a valid attr. Failure means already detached (its interface went
    // away) or a link type without detach: removing the pin below still releases it.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            std::mem::size_of::<LinkDetach>() as u32,
        )
    };
    fs::remove_file(path)?;
    Ok(true)
}
