//! Migrations of a pinned state made by an older vethfp to this build's map ABI, run by
//! [`Datapath::open_checked`] once the state was accepted (ownership, namespace) and the maps
//! this build adds were created beside the old ones.
//!
//! Every map ABI change ships one [`Step`] from the ABI before it. A step:
//! - creates what the new ABI adds beside what exists (a map whose layout changes gets a new
//!   pin name; the old map stays until no program of the old build uses it),
//! - converts entries from the old maps into the new ones (counters included: they must go on
//!   from where they were),
//! - is idempotent: it may be run again from the start, over its own partial work, any
//!   number of times.
//!
//! The step's last act is to stamp the next ABI in `VFP_CONFIG[CONFIG_ABI]` (one map write, so
//! atomic). A process killed in the middle of a step (SIGKILL, power loss) leaves the old ABI
//! stamped; the next open of any vethfp of this build or later runs the step again and
//! completes it. A step that fails returns the error: the open fails, removes the pins it
//! created, and the state stays at the old ABI (rolled back to what it was).
//!
//! Programs are not swapped here: the agent replaces each endpoint's program in place
//! (`NLM_F_REPLACE` for a filter, `BPF_LINK_UPDATE` for a link) and removes the old build's
//! program pins once nothing runs them (see `registry::reconcile`; a step that leaves an old
//! map beside its replacement must teach `prune_pins` to remove it the same way). Until then
//! the old programs keep running against the same maps, which is why a step may only add
//! beside, never remove or reinterpret in place.

use veth_common::{ABI_VERSION, CONFIG_ABI, MAP_CONFIG, MAP_HANDOFF};

use super::{Datapath, DatapathError, map_err};

/// The oldest map ABI this build takes over in place: 3, the ABI of 0.1.0, the first release.
/// States of older ABIs (development builds before 0.1.0) are refused.
pub const OLDEST_MIGRATABLE_ABI: u32 = 3;

/// One migration: from map ABI `from` to `from + 1`.
struct Step {
    from: u32,
    what: &'static str,
    run: fn(&mut Datapath) -> Result<(), DatapathError>,
}

/// Every step, oldest first; `STEPS[i].from == OLDEST_MIGRATABLE_ABI + i`.
const STEPS: &[Step] = &[Step {
    from: 3,
    what: "TCP hand-off (the VFP_HANDOFF ring buffer, flow flag FLOW_LIBERAL)",
    run: abi3_to_4,
}];

/// 3 → 4 (0.1.0 → 0.2.0): TCP per-flow hand-off. No layout changed: the step adds the
/// `VFP_HANDOFF` map (created beside the others by the open before migrating) and gives the
/// new flow flag bits and config bits their meaning. Nothing to convert; the ABI is bumped so
/// that 0.1.0, whose programs ignore `FLOW_LIBERAL` and whose control plane knows no
/// hand-off, refuses the state instead of using it.
fn abi3_to_4(dp: &mut Datapath) -> Result<(), DatapathError> {
    if !dp.maps.contains_key(MAP_HANDOFF) {
        return Err(DatapathError::Map {
            name: MAP_HANDOFF,
            source: aya::maps::MapError::InvalidName {
                name: MAP_HANDOFF.into(),
            },
        });
    }
    Ok(())
}

/// Runs every step from `found` (an accepted ABI below this build's) to [`ABI_VERSION`].
/// Returns true if anything was migrated.
pub(super) fn migrate(dp: &mut Datapath, found: u32) -> Result<bool, DatapathError> {
    let mut abi = found;
    while abi < ABI_VERSION {
        let Some(step) = STEPS.iter().find(|s| s.from == abi) else {
            // Unreachable when `check_abi` accepted the state: a missing step is a bug.
            return Err(DatapathError::Abi {
                dir: dp.dir.clone(),
                found: abi,
                want: ABI_VERSION,
            });
        };
        (step.run)(dp)?;
        dp.config()?
            .set(CONFIG_ABI, abi + 1, 0)
            .map_err(map_err(MAP_CONFIG))?;
        log::info!(
            "state {}: migrated map ABI {abi} to {}: {}",
            dp.dir.display(),
            abi + 1,
            step.what
        );
        abi += 1;
    }
    Ok(abi != found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_abi_from_the_oldest_has_one_step_to_the_next() {
        assert_eq!(
            STEPS.len() as u32,
            ABI_VERSION - OLDEST_MIGRATABLE_ABI,
            "an ABI change ships its migration step"
        );
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.from, OLDEST_MIGRATABLE_ABI + i as u32);
        }
    }
}
