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

use super::{Datapath, DatapathError, PROGRAMS, Result, bpffs::restrict, io, object_hash};
use crate::sys::bpf::unpin_and_detach;
use veth_common::{Hook, Program};

pub(super) fn prog_pin(dir: &Path, prog: Program) -> PathBuf {
    dir.join("progs")
        .join(format!("{}-{:016x}", prog.name(), object_hash()))
}

impl Datapath {
    /// Pin path of this build's `prog` (re-pinning all programs if it vanished).
    pub(crate) fn pinned_program(&mut self, prog: Program) -> Result<PathBuf> {
        let pin = prog_pin(&self.dir, prog);
        if !pin.exists() {
            self.maps = Self::load_and_pin(&self.dir, self.flow_table_size)?;
        }
        Ok(pin)
    }

    /// Loads (verifies) and pins every program of this build unless an earlier call did:
    /// proves the kernel accepts them (CNI STATUS).
    pub fn load_programs(&mut self) -> Result<()> {
        for prog in PROGRAMS {
            self.pinned_program(prog)?;
        }
        Ok(())
    }

    pub(super) fn classifier(&mut self, prog: Program) -> Result<SchedClassifier> {
        let pin = self.pinned_program(prog)?;
        SchedClassifier::from_pin(&pin).map_err(|source| DatapathError::Program {
            name: prog.name(),
            source,
        })
    }

    /// Pin path of the link of `hook` on `ifindex` (`links/<hook>-<ifindex>`).
    pub fn link_pin(&self, hook: Hook, ifindex: u32) -> PathBuf {
        self.pin_named(hook.name(), ifindex)
    }

    /// Pin path of a link by its pin prefix: a hook's name, or a legacy one no [`Hook`] has
    /// any more (`filters::LEGACY_TCX_INGRESS`, …).
    pub(super) fn pin_named(&self, prefix: &str, ifindex: u32) -> PathBuf {
        self.dir.join("links").join(format!("{prefix}-{ifindex}"))
    }

    /// Attaches `prog` at `hook` of `iface` and pins the link: XDP (native mode) for
    /// [`Hook::Xdp`], tcx in the hook's direction for the others. A stale pin of an earlier
    /// interface with the same ifindex is dropped first.
    pub(crate) fn attach(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: Hook,
        prog: Program,
    ) -> Result<()> {
        let pin = self.link_pin(hook, ifindex);
        // A pin left by an earlier interface with the same ifindex is stale: drop it.
        let _ = unpin_and_detach(&pin);
        let name = prog.name();
        let attach_err = |source| DatapathError::Attach {
            prog: name,
            iface: iface.into(),
            source,
        };
        let link: FdLink = if hook == Hook::Xdp {
            let path = self.pinned_program(prog)?;
            let mut p = Xdp::from_pin(&path, XdpAttachType::Interface)
                .map_err(|source| DatapathError::Program { name, source })?;
            let id = p
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .map_err(attach_err)?;
            p.take_link(id).map_err(attach_err)?.try_into()
        } else {
            let kind = match hook {
                Hook::TcEgress | Hook::UplinkEgress => TcAttachType::Egress,
                _ => TcAttachType::Ingress,
            };
            let mut p = self.classifier(prog)?;
            let id = p
                .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(attach_err)?;
            p.take_link(id).map_err(attach_err)?.try_into()
        }
        .map_err(|source| DatapathError::Link {
            iface: iface.into(),
            source,
        })?;
        pin_link(link, &pin)
    }

    /// Attaches the uplink ingress and egress programs to `iface` (tcx) and pins the links.
    /// On failure nothing stays attached.
    pub fn attach_uplink(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach(iface, ifindex, Hook::UplinkIngress, Program::UplinkIngress)?;
        if let Err(e) = self.attach_uplink_egress(iface, ifindex) {
            let _ = unpin_and_detach(&self.link_pin(Hook::UplinkIngress, ifindex));
            return Err(e);
        }
        Ok(())
    }

    /// Attaches the uplink egress program (admission confirmation) to `iface`.
    pub fn attach_uplink_egress(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach(iface, ifindex, Hook::UplinkEgress, Program::UplinkEgress)
    }

    /// Detaches the uplink programs of `ifindex`. True if the ingress one was attached.
    pub fn detach_uplink(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(Hook::UplinkEgress, ifindex)).map_err(io(format!(
            "detaching the uplink egress link of ifindex {ifindex}"
        )))?;
        unpin_and_detach(&self.link_pin(Hook::UplinkIngress, ifindex)).map_err(io(format!(
            "detaching the uplink link of ifindex {ifindex}"
        )))
    }

    /// Attaches the XDP program (native mode) to host end `ifindex` and pins the link.
    pub fn attach_xdp(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        self.attach(iface, ifindex, Hook::Xdp, Program::Xdp)
    }

    /// Detaches the XDP program of `ifindex` (removes its link pin). True if it was attached.
    pub fn detach_xdp(&self, ifindex: u32) -> Result<bool> {
        unpin_and_detach(&self.link_pin(Hook::Xdp, ifindex))
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
