//! Endpoint hooks: vethfp's programs as cls_bpf direct-action filters on the host end's
//! clsact qdisc (uplinks keep pinned tcx links, XDP keeps its link). docs/ARCHITECTURE.md,
//! "Hooks", says why: a tcx attach or detach waits for an RCU grace period (~12–16 ms each,
//! serialised under rtnl), a cls_bpf add or delete does not (~0.01–0.08 ms).
//!
//! Every filter of ours sits at ([`FILTER_PRIO`], [`FILTER_HANDLE`]) of its direction.
//! A filter is ours only if it runs a program pinned in this state (`progs/*`, any build):
//! a filter at our place running anything else is never replaced or deleted.

use std::{collections::BTreeSet, fs, os::fd::AsFd};

use aya::programs::{ProgramInfo, SchedClassifier};

use super::*;
use crate::sys::bpf::unpin_and_detach;
use crate::sys::tc_filter::{BpfFilter, Dir, TcError, TcSession};

/// Priority of vethfp's filters in each clsact direction. Filters run in ascending prio
/// order; 0xfff0 puts ours after anything added with tc's default prio (0xc000 and down for
/// each further filter) or an explicit smaller one, as the tcx links we used to append ran
/// after other tcx programs. Not 0xffff, so a tool that must run last still can.
pub const FILTER_PRIO: u16 = 0xfff0;
/// Handle of vethfp's filters ("vfp" in ASCII): fixed, so that an in-place replace and an
/// owner-checked delete can name the filter without asking the kernel for it first.
pub const FILTER_HANDLE: u32 = 0x0076_6670;

/// Link pins of endpoint tcx hooks made by builds before cls_bpf; removed on sight (the
/// filters replace them, see [`Datapath::ensure_link`] and [`Datapath::prune_pins`]).
pub const LEGACY_TCX_INGRESS: &str = "tcx-ingress";
pub const LEGACY_TCX_EGRESS: &str = "tcx-egress";

/// The clsact direction of an endpoint hook (None: the hook is a pinned link).
pub fn hook_dir(hook: Hook) -> Option<Dir> {
    match hook {
        Hook::TcIngress => Some(Dir::Ingress),
        Hook::TcEgress => Some(Dir::Egress),
        Hook::Xdp | Hook::UplinkIngress | Hook::UplinkEgress => None,
    }
}

fn tc_err(iface: &str) -> impl FnOnce(TcError) -> DatapathError + '_ {
    move |e| DatapathError::Filter {
        iface: iface.to_string(),
        what: e.to_string(),
    }
}

fn ours(filters: &[BpfFilter]) -> Option<&BpfFilter> {
    filters
        .iter()
        .find(|f| f.prio == FILTER_PRIO && f.handle == FILTER_HANDLE)
}

impl Datapath {
    /// Runs `f` on this datapath's netlink session (opened on first use, in the calling
    /// thread's network namespace, and reused by every later call).
    fn tc<R>(
        &self,
        iface: &str,
        f: impl FnOnce(&mut TcSession) -> Result<R, TcError>,
    ) -> Result<R> {
        let mut guard = self.tc.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(TcSession::new().map_err(tc_err(iface))?);
        }
        let s = guard.as_mut().expect("session opened above");
        f(s).map_err(tc_err(iface))
    }

    /// Kernel ids of every program pinned in this state (`progs/*`, this build's and older
    /// ones'): the programs whose filters this state owns.
    pub fn owned_program_ids(&self) -> Result<BTreeSet<u32>> {
        let dir = self.dir.join("progs");
        let rd = fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| ProgramInfo::from_pin(e.path()).ok())
            .map(|i| i.id())
            .collect())
    }

    /// The filter at vethfp's place on `dir` of `ifindex`, whoever's it is; None if there is
    /// none (or no clsact qdisc, or no such device).
    pub fn our_slot(&self, ifindex: u32, dir: Dir) -> Result<Option<BpfFilter>> {
        let what = format!("ifindex {ifindex}");
        let all = self.tc(&what, |s| s.list(ifindex, dir))?;
        Ok(ours(&all).cloned())
    }

    /// Every cls_bpf filter on `dir` of `ifindex` (ours and others').
    pub fn filters(&self, ifindex: u32, dir: Dir) -> Result<Vec<BpfFilter>> {
        let what = format!("ifindex {ifindex}");
        self.tc(&what, |s| s.list(ifindex, dir))
    }

    fn foreign(iface: &str, dir: Dir, f: &BpfFilter) -> DatapathError {
        DatapathError::ForeignFilter {
            iface: iface.to_string(),
            dir: dir.to_string(),
            prio: f.prio,
            handle: f.handle,
            prog_id: f.prog_id,
            name: f.name.clone(),
        }
    }

    /// Attaches the endpoint programs to host end `iface` as cls_bpf direct-action filters
    /// on its clsact qdisc (created if missing): `l2` selects the bridge-bypass ingress
    /// program instead of the routed one. One netlink round trip per step, no grace period.
    ///
    /// A filter already at vethfp's place is replaced if it runs a program of this state
    /// (a leftover of an interrupted call) and refused if it runs anyone else's. On failure
    /// the filters this call added are deleted again; the clsact qdisc is left in place
    /// (empty, it changes nothing; and another tool may have started using it meanwhile).
    pub fn attach_tc(&mut self, iface: &str, ifindex: u32, l2: bool) -> Result<()> {
        let progs = [
            (Dir::Ingress, Hook::TcIngress.program_for(l2)),
            (Dir::Egress, Hook::TcEgress.program_for(l2)),
        ];
        let mut fds = Vec::with_capacity(2);
        for (dir, prog) in progs {
            fds.push((dir, prog.name(), self.classifier(prog)?));
        }
        // Pins of tcx links an older build made on an earlier interface with this ifindex.
        for prefix in [LEGACY_TCX_INGRESS, LEGACY_TCX_EGRESS] {
            let _ = fs::remove_file(self.pin_named(prefix, ifindex));
        }
        let created = self.tc(iface, |s| s.ensure_clsact(ifindex))?;
        let owned = if created {
            BTreeSet::new() // a clsact qdisc of our own has no filters yet
        } else {
            self.owned_program_ids()?
        };
        let mut added: Vec<Dir> = Vec::new();
        let r = (|| -> Result<()> {
            for (dir, name, prog) in &fds {
                let mut fresh = true;
                if !created && let Some(f) = self.our_slot(ifindex, *dir)? {
                    if !owned.contains(&f.prog_id) {
                        return Err(Self::foreign(iface, *dir, &f));
                    }
                    fresh = false;
                }
                let fd = prog
                    .fd()
                    .map_err(|source| DatapathError::Program { name, source })?;
                let fd = fd.as_fd();
                self.tc(iface, |s| {
                    s.add_or_replace_bpf(ifindex, *dir, FILTER_PRIO, FILTER_HANDLE, fd, name)
                })?;
                if fresh {
                    added.push(*dir);
                }
            }
            Ok(())
        })();
        if r.is_err() {
            for dir in added {
                let _ = self.tc(iface, |s| {
                    s.delete(ifindex, dir, FILTER_PRIO, FILTER_HANDLE)
                });
            }
        }
        r
    }

    /// Deletes vethfp's filter on `dir` of `ifindex` if it runs a program of this state
    /// (`owned`). A foreign filter at our place is left alone (logged at info). True if
    /// deleted.
    fn delete_owned(&self, ifindex: u32, dir: Dir, owned: &BTreeSet<u32>) -> Result<bool> {
        let what = format!("ifindex {ifindex}");
        let Some(f) = self.our_slot(ifindex, dir)? else {
            return Ok(false);
        };
        if !owned.contains(&f.prog_id) {
            // Not ours (someone replaced it, or it was there before and refused us): stays.
            log::info!("left in place: {}", Self::foreign(&what, dir, &f));
            return Ok(false);
        }
        self.tc(&what, |s| {
            s.delete(ifindex, dir, FILTER_PRIO, FILTER_HANDLE)
        })
    }

    /// Removes the fast path from host end `ifindex`: deletes our two filters (owner-checked:
    /// a filter running someone else's program stays), detaches the XDP link and any link an
    /// older build pinned. The clsact qdisc stays (others may use it). Returns how many hooks
    /// were removed.
    pub fn detach(&self, ifindex: u32) -> Result<usize> {
        let mut n = 0;
        let owned = self.owned_program_ids()?;
        for dir in [Dir::Ingress, Dir::Egress] {
            if self.delete_owned(ifindex, dir, &owned)? {
                n += 1;
            }
        }
        for hook in [LEGACY_TCX_INGRESS, LEGACY_TCX_EGRESS, Hook::Xdp.name()] {
            if unpin_and_detach(&self.pin_named(hook, ifindex)).map_err(io(format!(
                "detaching the {hook} link of ifindex {ifindex}"
            )))? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// For a host end whose veth is deleted right after: its filters and links go with the
    /// device, so only the pins are removed (no detach: a detach waits for a grace period,
    /// the veth delete does the same work anyway). Returns how many pins were removed.
    pub fn detach_with_veth(&self, ifindex: u32) -> Result<usize> {
        let mut n = 0;
        for hook in [LEGACY_TCX_INGRESS, LEGACY_TCX_EGRESS, Hook::Xdp.name()] {
            match fs::remove_file(self.pin_named(hook, ifindex)) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DatapathError::Io {
                        what: format!("removing the {hook} pin of ifindex {ifindex}"),
                        source: e,
                    });
                }
            }
        }
        Ok(n)
    }

    /// Makes sure `dir` of host end `iface` has our filter running this build's `name`:
    /// adds it (and the clsact qdisc) if missing, switches an owned filter running another
    /// program (an older build's) in place. A foreign filter at our place is an error.
    pub(crate) fn ensure_filter(
        &mut self,
        iface: &str,
        ifindex: u32,
        dir: Dir,
        want_prog: Program,
    ) -> Result<links::LinkAction> {
        use links::LinkAction;
        let name = want_prog.name();
        let want = self.program_id(want_prog)?;
        let prog = self.classifier(want_prog)?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd = fd.as_fd();
        let action = match self.our_slot(ifindex, dir)? {
            Some(f) if f.prog_id == want => return Ok(LinkAction::Kept),
            Some(f) => {
                if !self.owned_program_ids()?.contains(&f.prog_id) {
                    return Err(Self::foreign(iface, dir, &f));
                }
                LinkAction::Replaced {
                    link_id: f.handle,
                    old_prog: f.prog_id,
                    new_prog: want,
                }
            }
            None => {
                self.tc(iface, |s| s.ensure_clsact(ifindex))?;
                LinkAction::Attached
            }
        };
        self.tc(iface, |s| {
            s.add_or_replace_bpf(ifindex, dir, FILTER_PRIO, FILTER_HANDLE, fd, name)
        })?;
        Ok(action)
    }

    /// Swaps the program of our filter on `dir` of `ifindex` for the one pinned at
    /// `prog_pin`, in place (same prio and handle: packets see either program).
    pub(crate) fn replace_filter_program(
        &mut self,
        ifindex: u32,
        dir: Dir,
        prog_pin: &Path,
        prog: Program,
    ) -> Result<()> {
        let name = prog.name();
        let prog = SchedClassifier::from_pin(prog_pin)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd = fd.as_fd();
        let what = format!("ifindex {ifindex}");
        self.tc(&what, |s| {
            s.add_or_replace_bpf(ifindex, dir, FILTER_PRIO, FILTER_HANDLE, fd, name)
        })
    }

    /// Program ids our filters on these host ends run (for pruning program pins).
    pub(crate) fn filter_program_ids(&self, ifindexes: &[u32]) -> BTreeSet<u32> {
        let mut ids = BTreeSet::new();
        for i in ifindexes {
            for dir in [Dir::Ingress, Dir::Egress] {
                if let Ok(Some(f)) = self.our_slot(*i, dir) {
                    ids.insert(f.prog_id);
                }
            }
        }
        ids
    }

    /// Recorded host ends carrying our filters, in the namespace this state is bound to.
    pub(crate) fn filtered_endpoints_in_bound_netns(&mut self) -> Vec<u32> {
        let eps: Vec<u32> = match self.endpoints() {
            Ok(m) => m.keys().filter_map(|k| k.ok()).collect(),
            Err(_) => return Vec::new(),
        };
        if eps.is_empty() {
            return Vec::new();
        }
        let bound = self.netns_cookie().unwrap_or(0);
        let Ok(owned) = self.owned_program_ids() else {
            return Vec::new();
        };
        let check = move || -> Result<Vec<u32>, crate::sys::netlink::NetlinkError> {
            let Ok(mut s) = TcSession::new() else {
                return Ok(Vec::new());
            };
            Ok(eps
                .into_iter()
                .filter(|i| {
                    [Dir::Ingress, Dir::Egress].iter().all(|d| {
                        s.list(*i, *d)
                            .ok()
                            .and_then(|fs| ours(&fs).map(|f| owned.contains(&f.prog_id)))
                            .unwrap_or(false)
                    })
                })
                .collect())
        };
        if bound == 0 || current_netns_cookie().ok() == Some(bound) {
            return check().unwrap_or_default();
        }
        match netns_by_cookie(bound) {
            Some(ns) => crate::sys::netlink::in_netns(&ns, check).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// The network namespace with netns cookie `cookie`, among the named ones (/run/netns) and
/// those of running processes; None if none of them has it (the namespace is gone).
fn netns_by_cookie(cookie: u64) -> Option<crate::sys::netlink::Netns> {
    use crate::sys::netlink::{Netns, in_netns};
    let mut paths: Vec<String> = Vec::new();
    for d in ["/run/netns", "/var/run/netns"] {
        if let Ok(rd) = fs::read_dir(d) {
            paths.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path().display().to_string()),
            );
        }
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        paths.extend(
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| format!("{}/ns/net", e.path().display())),
        );
    }
    let mut seen = BTreeSet::new();
    for p in paths {
        let Ok(ns) = Netns::open(&p) else { continue };
        if !seen.insert(ns.ino()) {
            continue;
        }
        if in_netns(&ns, || Ok(current_netns_cookie().ok()))
            .ok()
            .flatten()
            == Some(cookie)
        {
            return Some(ns);
        }
    }
    None
}
