//! Hooks as the kernel sees them, and the operations reconciliation needs on them: find a
//! hook's state (a pinned tcx/XDP link, or an endpoint's cls_bpf filter), attach a missing
//! one, switch it to this build's program in place (`BPF_LINK_UPDATE`, or `NLM_F_REPLACE` at
//! the same prio and handle for a filter), and prune pins nothing owns.

use std::{collections::BTreeSet, fs, io::ErrorKind, path::Path};

use aya::programs::{
    ProgramInfo, SchedClassifier, Xdp,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use aya_obj::programs::XdpAttachType;

use super::*;
use veth_common::MAP_ENDPOINTS;

/// A hook as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// The link id; for an endpoint's cls_bpf filter its handle (what an in-place replace
    /// keeps, as it keeps a link id).
    pub link_id: u32,
    pub prog_id: u32,
}

/// What [`Datapath::ensure_link`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Present and running this build's program.
    Kept,
    /// The pin was missing: attached and pinned anew.
    Attached,
    /// Switched in place (same link) from an older program to this build's.
    Replaced {
        link_id: u32,
        old_prog: u32,
        new_prog: u32,
    },
}

/// A name for the program behind a hook, for error messages (tc ingress runs one of two).
fn hook_program(hook: Hook) -> &'static str {
    match hook {
        Hook::TcIngress => "tc ingress program",
        h => h.program().name(),
    }
}

/// Is `name` (`<hook>-<ifindex>` under links/) the pin of a live link hook? Endpoint tc
/// hooks have no pin: a pin named after one is a leftover.
fn is_live_pin(name: &str, live: &BTreeSet<(Hook, u32)>) -> bool {
    name.rsplit_once('-').is_some_and(|(hook, idx)| {
        let hook = [Hook::Xdp, Hook::UplinkIngress, Hook::UplinkEgress]
            .into_iter()
            .find(|h| h.name() == hook);
        matches!((hook, idx.parse::<u32>()), (Some(h), Ok(i)) if live.contains(&(h, i)))
    })
}

fn link_err(iface: String) -> impl FnOnce(LinkError) -> DatapathError {
    move |source| DatapathError::Link { iface, source }
}

impl Datapath {
    /// The pinned link of `hook` on `ifindex`, if its pin exists; for the endpoint hooks
    /// ([`Hook::TcIngress`], [`Hook::TcEgress`]) the filter at vethfp's place, whoever's it
    /// is (compare `prog_id` with [`Datapath::owned_program_ids`]).
    pub fn link_state(&self, hook: Hook, ifindex: u32) -> Result<Option<LinkState>, DatapathError> {
        if let Some(dir) = filters::hook_dir(hook) {
            return Ok(self.our_slot(ifindex, dir)?.map(|f| LinkState {
                link_id: f.handle,
                prog_id: f.prog_id,
            }));
        }
        let pin = self.link_pin(hook, ifindex);
        let link: FdLink = match PinnedLink::from_pin(&pin) {
            Ok(l) => l.into(),
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(link_err(format!("ifindex {ifindex}"))(e)),
        };
        let info = link
            .info()
            .map_err(link_err(format!("ifindex {ifindex}")))?;
        Ok(Some(LinkState {
            link_id: info.id(),
            prog_id: info.program_id(),
        }))
    }

    /// Kernel id of this build's `prog` (loading and pinning it first if needed).
    pub fn program_id(&mut self, prog: Program) -> Result<u32, DatapathError> {
        let pin = self.pinned_program(prog)?;
        ProgramInfo::from_pin(&pin)
            .map(|i| i.id())
            .map_err(|source| DatapathError::Program {
                name: prog.name(),
                source,
            })
    }

    /// Atomically replaces the program of the pinned link of `hook` on `ifindex` with the
    /// program pinned at `prog_pin` (`BPF_LINK_UPDATE`): the link stays, and so does its
    /// place in the tcx chain; packets see either the old or the new program.
    pub fn replace_program(
        &mut self,
        hook: Hook,
        ifindex: u32,
        prog_pin: &Path,
    ) -> Result<(), DatapathError> {
        let name = hook_program(hook);
        if let Some(dir) = filters::hook_dir(hook) {
            return self.replace_filter_program(ifindex, dir, prog_pin, hook.program());
        }
        let iface = format!("ifindex {ifindex}");
        let link: FdLink = PinnedLink::from_pin(self.link_pin(hook, ifindex))
            .map_err(link_err(iface.clone()))?
            .into();
        let perr = |source| DatapathError::Program { name, source };
        if hook == Hook::Xdp {
            let mut prog = Xdp::from_pin(prog_pin, XdpAttachType::Interface).map_err(perr)?;
            let link = XdpLink::try_from(link).map_err(link_err(iface))?;
            let id = prog.attach_to_link(link).map_err(perr)?;
            // Our fd only: the pin keeps the link (and the program) attached.
            drop(prog.take_link(id).map_err(perr)?);
        } else {
            let mut prog = SchedClassifier::from_pin(prog_pin).map_err(perr)?;
            let link = SchedClassifierLink::try_from(link).map_err(link_err(iface))?;
            let id = prog.attach_to_link(link).map_err(perr)?;
            drop(prog.take_link(id).map_err(perr)?);
        }
        Ok(())
    }

    /// Makes sure `hook` on host end `iface` (`ifindex`) has a pinned link (endpoint hooks:
    /// our filter) running this build's `prog`: attaches it if missing, replaces another
    /// program of this state (an older build's) in place.
    pub fn ensure_link(
        &mut self,
        iface: &str,
        ifindex: u32,
        hook: Hook,
        prog: Program,
    ) -> Result<LinkAction, DatapathError> {
        if let Some(dir) = filters::hook_dir(hook) {
            return self.ensure_filter(iface, ifindex, dir, prog);
        }
        match self.link_state(hook, ifindex)? {
            None => {
                self.attach(iface, ifindex, hook, prog)?;
                Ok(LinkAction::Attached)
            }
            Some(st) => {
                let want = self.program_id(prog)?;
                if st.prog_id == want {
                    return Ok(LinkAction::Kept);
                }
                let pin = self.pinned_program(prog)?;
                self.replace_program(hook, ifindex, &pin)?;
                Ok(LinkAction::Replaced {
                    link_id: st.link_id,
                    old_prog: st.prog_id,
                    new_prog: want,
                })
            }
        }
    }

    /// Whether a program pin of another build is in this state (an upgrade not finished
    /// yet, or a pin to prune): the programs every hook runs then matter to pruning.
    pub fn other_builds_pinned(&self) -> Result<bool, DatapathError> {
        let dir = self.dir().join("progs");
        let suffix = format!("-{:016x}", object_hash());
        let entries = fs::read_dir(&dir).map_err(|source| DatapathError::Io {
            what: dir.display().to_string(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| DatapathError::Io {
                what: dir.display().to_string(),
                source,
            })?;
            if !e.file_name().to_string_lossy().ends_with(&suffix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True if [`Datapath::prune_pins`] would remove something: a link pin whose (hook,
    /// ifindex) is not in `live`, or a program pin of another build whose id is not in
    /// `in_use` (the programs the caller saw running). Reads directories only.
    pub fn would_prune(
        &self,
        live: &BTreeSet<(Hook, u32)>,
        in_use: &BTreeSet<u32>,
    ) -> Result<bool, DatapathError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| DatapathError::Io { what, source }
        };
        let dir = self.dir().join("links");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let name = e
                .map_err(io(&dir))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let keep = is_live_pin(&name, live);
            if !keep {
                return Ok(true);
            }
        }
        let suffix = format!("-{:016x}", object_hash());
        let dir = self.dir().join("progs");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if e.file_name().to_string_lossy().ends_with(&suffix) {
                continue;
            }
            if !ProgramInfo::from_pin(e.path()).is_ok_and(|i| in_use.contains(&i.id())) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes link pins whose (hook, ifindex) is not in `live` (endpoint tcx link pins of
    /// builds before cls_bpf among them), and program pins of other builds that no kept link
    /// and no filter of a recorded endpoint runs any more. Returns (link pins removed,
    /// program pins removed).
    pub fn prune_pins(
        &mut self,
        live: &BTreeSet<(Hook, u32)>,
    ) -> Result<(usize, usize), DatapathError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| DatapathError::Io { what, source }
        };
        let mut links = 0;
        let dir = self.dir().join("links");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = is_live_pin(&name, live);
            if !keep {
                match fs::remove_file(e.path()) {
                    Ok(()) => links += 1,
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&e.path())(err)),
                }
            }
        }
        // Programs still running somewhere: kept links, and our filters on recorded endpoints.
        let mut in_use = BTreeSet::new();
        for (hook, i) in live {
            if let Ok(Some(st)) = self.link_state(*hook, *i) {
                in_use.insert(st.prog_id);
            }
        }
        let eps: Vec<u32> =
            self.endpoints()?
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| DatapathError::Map {
                    name: MAP_ENDPOINTS,
                    source,
                })?;
        in_use.extend(self.filter_program_ids(&eps));
        let mut progs = 0;
        let suffix = format!("-{:016x}", object_hash());
        let dir = self.dir().join("progs");
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let used = ProgramInfo::from_pin(e.path()).is_ok_and(|i| in_use.contains(&i.id()));
            if !e.file_name().to_string_lossy().ends_with(&suffix) && !used {
                match fs::remove_file(e.path()) {
                    Ok(()) => progs += 1,
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&e.path())(err)),
                }
            }
        }
        Ok((links, progs))
    }
}
