//! Programs and their hooks: this build's pinned programs (loaded and pinned on first use),
//! attaching them by tcx or XDP with a pinned link, detaching by removing the pin.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::TcAttachOptions,
};
use aya_obj::programs::XdpAttachType;

use super::{
    Datapath, DatapathError, HOOK_UPLINK, HOOK_UPLINK_EGRESS, HOOK_XDP, PROG_UPLINK_EGRESS,
    PROG_UPLINK_INGRESS, PROG_XDP, PROGRAMS, Result, bpffs::restrict, io, object_hash,
};
use crate::sys::bpf::unpin_and_detach;

pub(super) fn prog_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join("progs")
        .join(format!("{name}-{:016x}", object_hash()))
}

impl Datapath {
    /// Pin path of program `name` of this build (re-pinning all programs if it vanished).
    pub(crate) fn pinned_program(&mut self, name: &'static str) -> Result<PathBuf> {
        let pin = prog_pin(&self.dir, name);
        if !pin.exists() {
            self.maps = Self::load_and_pin(&self.dir, self.flow_table_size)?;
        }
        Ok(pin)
    }

    /// Loads (verifies) and pins every program of this build unless an earlier call did:
    /// proves the kernel accepts them (CNI STATUS).
    pub fn load_programs(&mut self) -> Result<()> {
        for name in PROGRAMS {
            self.pinned_program(name)?;
        }
        Ok(())
    }

    pub(super) fn classifier(&mut self, name: &'static str) -> Result<SchedClassifier> {
        let pin = self.pinned_program(name)?;
        SchedClassifier::from_pin(&pin).map_err(|source| DatapathError::Program { name, source })
    }

    pub fn link_pin(&self, hook: &str, ifindex: u32) -> PathBuf {
        self.dir.join("links").join(format!("{hook}-{ifindex}"))
    }

    pub(crate) fn attach_one(
        &mut self,
        iface: &str,
        ifindex: u32,
        prog_name: &'static str,
        kind: TcAttachType,
        hook: &str,
    ) -> Result<()> {
        let pin = self.link_pin(hook, ifindex);
        // A pin left by an earlier interface with the same ifindex is stale: drop it.
        let _ = unpin_and_detach(&pin);
        let mut prog = self.classifier(prog_name)?;
        let attach_err = |source| DatapathError::Attach {
            prog: prog_name,
            iface: iface.into(),
            source,
        };
        let id = prog
            .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
            iface: iface.into(),
            source,
        })?;
        pin_link(fd_link, &pin)
    }

    /// Attaches the uplink ingress and egress programs to `iface` (tcx) and pins the links.
    /// On failure nothing stays attached.
    pub fn attach_uplink(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach_one(
            iface,
            ifindex,
            PROG_UPLINK_INGRESS,
            TcAttachType::Ingress,
            HOOK_UPLINK,
        )?;
        if let Err(e) = self.attach_uplink_egress(iface, ifindex) {
            let _ = unpin_and_detach(&self.link_pin(HOOK_UPLINK, ifindex));
            return Err(e);
        }
        Ok(())
    }

    /// Attaches the uplink egress program (admission confirmation) to `iface`.
    pub fn attach_uplink_egress(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach_one(
            iface,
            ifindex,
            PROG_UPLINK_EGRESS,
            TcAttachType::Egress,
            HOOK_UPLINK_EGRESS,
        )
    }

    /// Detaches the uplink programs of `ifindex`. True if the ingress one was attached.
    pub fn detach_uplink(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(HOOK_UPLINK_EGRESS, ifindex)).map_err(io(format!(
            "detaching the uplink egress link of ifindex {ifindex}"
        )))?;
        unpin_and_detach(&self.link_pin(HOOK_UPLINK, ifindex)).map_err(io(format!(
            "detaching the uplink link of ifindex {ifindex}"
        )))
    }

    /// Attaches the XDP program (native mode) to host end `ifindex` and pins the link.
    pub fn attach_xdp(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        let pin = self.link_pin(HOOK_XDP, ifindex);
        let _ = unpin_and_detach(&pin);
        let path = self.pinned_program(PROG_XDP)?;
        let mut prog = Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|source| {
            DatapathError::Program {
                name: PROG_XDP,
                source,
            }
        })?;
        let attach_err = |source| DatapathError::Attach {
            prog: PROG_XDP,
            iface: iface.into(),
            source,
        };
        let id = prog
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link: FdLink = link.try_into().map_err(|source| DatapathError::Link {
            iface: iface.into(),
            source,
        })?;
        pin_link(fd_link, &pin)
    }

    /// Detaches the XDP program of `ifindex` (removes its link pin). True if it was attached.
    pub fn detach_xdp(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(HOOK_XDP, ifindex))
            .map_err(io(format!("detaching the XDP link of ifindex {ifindex}")))
    }
}

/// Pins an attached link at `pin`, 0600; on failure nothing stays attached.
fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    let _: PinnedLink = link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source,
    })?;
    if let Err(e) = restrict(pin, 0o600) {
        let _ = fs::remove_file(pin); // detaches
        return Err(e);
    }
    Ok(())
}
