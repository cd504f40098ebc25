//! Network namespaces: opening one by name or path, entering it on a dedicated thread, the
//! calling thread's own, and the id the node gives another.

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use nix::{fcntl::OFlag, sched::CloneFlags, sys::stat::Mode};

use super::{NetlinkError, Place, nl_err, run};

const NETNS_DIR: &str = "/run/netns";
/// `_IO(NSIO, 0x3)`: returns the CLONE_NEW* type of a namespace file.
const NS_GET_NSTYPE: u32 = 0xb703;

/// An open network namespace file (`/run/netns/NAME` or e.g. `/proc/PID/ns/net`).
pub struct Netns {
    fd: OwnedFd,
    spec: String,
    ino: u64,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("spec", &self.spec)
            .field("ino", &self.ino)
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl Netns {
    /// spec: a bare name means /run/netns/NAME; anything containing '/' is a path
    /// (e.g. /proc/PID/ns/net). Fails unless the file really is a network namespace.
    pub fn open(spec: &str) -> Result<Netns, NetlinkError> {
        let path = if spec.contains('/') {
            spec.to_string()
        } else {
            format!("{NETNS_DIR}/{spec}")
        };
        let not_netns = || NetlinkError::NotANetns {
            spec: spec.into(),
            path: path.clone(),
        };
        if spec.is_empty() || spec == "." || spec == ".." {
            return Err(not_netns());
        }
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ENOENT | nix::Error::ENOTDIR => NetlinkError::NoSuchNetns {
                spec: spec.into(),
                path: path.clone(),
            },
            nix::Error::EISDIR => not_netns(),
            e => NetlinkError::OpenNetns {
                spec: spec.into(),
                path: path.clone(),
                source: e.into(),
            },
        })?;
        // SAFETY: plain ioctl without argument on a valid fd.
        let ty = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty != libc::CLONE_NEWNET {
            return Err(not_netns());
        }
        let st = nix::sys::stat::fstat(&fd).map_err(|e| NetlinkError::OpenNetns {
            spec: spec.into(),
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Netns {
            fd,
            spec: spec.into(),
            ino: st.st_ino,
        })
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Inode number of the namespace (identifies it; same as `stat -L` of the file).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(super) fn place(&self) -> Place {
        Place::Netns(self.spec.clone())
    }
}

/// Inode of the calling thread's network namespace.
pub fn current_netns_ino() -> Result<u64, NetlinkError> {
    nix::sys::stat::stat("/proc/thread-self/ns/net")
        .map(|st| st.st_ino)
        .map_err(|e| NetlinkError::Io {
            op: "reading /proc/thread-self/ns/net".into(),
            source: e.into(),
        })
}

/// Runs `f` on a dedicated new OS thread that first enters `ns`; the caller's thread never
/// changes namespace. A panic in `f` is propagated to the caller.
pub fn in_netns<T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("vethfp-netns".into())
            .spawn_scoped(s, || {
                nix::sched::setns(ns.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::EnterNetns {
                        spec: ns.spec.clone(),
                        source: e.into(),
                    }
                })?;
                f()
            })
            .map_err(|e| NetlinkError::Io {
                op: format!("starting a thread to enter network namespace '{}'", ns.spec),
                source: e,
            })?;
        worker
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The id (`IFLA_LINK_NETNSID` numbering) the current netns gives the namespace behind
/// `ns`, if it has assigned one.
pub fn netns_id(ns: &Netns) -> Result<Option<i32>, NetlinkError> {
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        nsid::{NsidAttribute, NsidMessage},
    };
    let fd = ns.fd().as_raw_fd() as u32;
    run(|mut h| async move {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(fd)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut resp = h
            .request(req)
            .map_err(|e| nl_err("asking for a namespace id", e))?;
        while let Some(m) = futures::StreamExt::next(&mut resp).await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(n)) => {
                    for a in n.attributes {
                        if let NsidAttribute::Id(id) = a {
                            return Ok((id >= 0).then_some(id));
                        }
                    }
                }
                NetlinkPayload::Error(e) => {
                    return Err(NetlinkError::Netlink {
                        op: "asking for a namespace id".into(),
                        msg: e.to_string(),
                        errno: e.code.map(|c| c.get().abs()),
                    });
                }
                _ => {}
            }
        }
        Ok(None)
    })
}
