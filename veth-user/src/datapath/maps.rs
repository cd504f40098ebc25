//! Typed access to the pinned maps: each map as its aya type with the ABI's key and value,
//! the config slots (ABI, flags, state identity, netns binding), counters summed over CPUs.

use std::{fs, path::Path};

use aya::maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues};
use veth_common::{
    CONFIG_FLAGS, CONFIG_NETNS_COOKIE_HI, CONFIG_NETNS_COOKIE_LO, CONFIG_STATE_ID_HI,
    CONFIG_STATE_ID_LO, CniOwner, Counters, EndpointRecord, FlowKey, FlowState, FlowStats, Intent,
    MAP_CNI_OWNERS, MAP_CONFIG, MAP_COUNTERS, MAP_DEVMAP, MAP_ENDPOINTS, MAP_EP4, MAP_EP6,
    MAP_FLOW_STATS, MAP_FLOWS, MAP_HANDOFF, MAP_JOURNAL, MAP_L2, MAP_UPLINKS, NAME_LEN, Target,
    Uplink,
};

use super::{Datapath, DatapathError, Result, io, random_u64};

/// A pinned map opened as the variant its name has in the object.
pub(super) fn map_from_pin(dir: &Path, name: &'static str) -> Result<aya::maps::Map> {
    use aya::maps::Map;
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    Ok(match name {
        MAP_COUNTERS | MAP_FLOW_STATS => Map::PerCpuArray(data),
        MAP_FLOWS => Map::LruHashMap(data),
        MAP_CONFIG => Map::Array(data),
        MAP_DEVMAP => Map::DevMapHash(data),
        MAP_HANDOFF => Map::RingBuf(data),
        _ => Map::HashMap(data),
    })
}

impl Datapath {
    pub fn ep4(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], Target>> {
        typed(&mut self.maps, MAP_EP4)
    }
    pub fn ep6(&mut self) -> Result<HashMap<&mut MapData, [u8; 16], Target>> {
        typed(&mut self.maps, MAP_EP6)
    }
    pub fn endpoints(&mut self) -> Result<HashMap<&mut MapData, u32, EndpointRecord>> {
        typed(&mut self.maps, MAP_ENDPOINTS)
    }
    pub fn counters(&mut self) -> Result<PerCpuArray<&mut MapData, Counters>> {
        typed(&mut self.maps, MAP_COUNTERS)
    }
    pub fn l2(&mut self) -> Result<HashMap<&mut MapData, [u8; 6], Target>> {
        typed(&mut self.maps, MAP_L2)
    }
    pub fn uplinks(&mut self) -> Result<HashMap<&mut MapData, u32, Uplink>> {
        typed(&mut self.maps, MAP_UPLINKS)
    }
    pub fn devmap(&mut self) -> Result<DevMapHash<&mut MapData>> {
        typed(&mut self.maps, MAP_DEVMAP)
    }
    pub fn config(&mut self) -> Result<Array<&mut MapData, u32>> {
        typed(&mut self.maps, MAP_CONFIG)
    }
    pub fn flows(&mut self) -> Result<HashMap<&mut MapData, FlowKey, FlowState>> {
        typed(&mut self.maps, MAP_FLOWS)
    }

    /// Capacity of the flow table of this state.
    pub fn flow_table_size(&self) -> u32 {
        match self.maps.get(MAP_FLOWS) {
            Some(aya::maps::Map::LruHashMap(d)) => d.info().map(|i| i.max_entries()).unwrap_or(0),
            _ => 0,
        }
    }

    /// Node flow counters, summed over CPUs.
    pub fn flow_stats(&mut self) -> Result<FlowStats> {
        let m: PerCpuArray<&mut MapData, FlowStats> = typed(&mut self.maps, MAP_FLOW_STATS)?;
        let per_cpu = m.get(&0, 0).map_err(map_err(MAP_FLOW_STATS))?;
        let mut sum = FlowStats::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Config slot `slot` (u32).
    pub fn config_slot(&mut self, slot: u32) -> Result<u32> {
        self.config()?.get(&slot, 0).map_err(map_err(MAP_CONFIG))
    }

    pub fn journal(&mut self) -> Result<HashMap<&mut MapData, [u8; NAME_LEN], Intent>> {
        typed(&mut self.maps, MAP_JOURNAL)
    }
    pub fn cni_owners(&mut self) -> Result<HashMap<&mut MapData, u32, CniOwner>> {
        typed(&mut self.maps, MAP_CNI_OWNERS)
    }

    fn config_u64(&mut self, lo: u32, hi: u32) -> Result<u64> {
        let cfg = self.config()?;
        let l = cfg.get(&lo, 0).map_err(map_err(MAP_CONFIG))?;
        let h = cfg.get(&hi, 0).map_err(map_err(MAP_CONFIG))?;
        Ok((h as u64) << 32 | l as u64)
    }

    fn set_config_u64(&mut self, lo: u32, hi: u32, v: u64) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.set(lo, v as u32, 0).map_err(map_err(MAP_CONFIG))?;
        cfg.set(hi, (v >> 32) as u32, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// The identity of this state (config slots 4–5); 0 for a state made before it existed.
    pub fn state_id(&mut self) -> Result<u64> {
        self.config_u64(CONFIG_STATE_ID_LO, CONFIG_STATE_ID_HI)
    }

    /// Gives the state a new random identity.
    pub fn new_state_id(&mut self) -> Result<u64> {
        let id = random_u64().max(1);
        self.set_config_u64(CONFIG_STATE_ID_LO, CONFIG_STATE_ID_HI, id)?;
        Ok(id)
    }

    /// Netns cookie of the node namespace the state is bound to (config slots 6–7); 0: none.
    pub fn netns_cookie(&mut self) -> Result<u64> {
        self.config_u64(CONFIG_NETNS_COOKIE_LO, CONFIG_NETNS_COOKIE_HI)
    }

    pub fn set_netns_cookie(&mut self, cookie: u64) -> Result<()> {
        self.set_config_u64(CONFIG_NETNS_COOKIE_LO, CONFIG_NETNS_COOKIE_HI, cookie)
    }

    /// Device and inode of the pinned config map: changes when the state dir is removed and
    /// made again, so a long-running process can tell its map fds are stale.
    pub fn pin_identity(dir: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(MAP_CONFIG))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    pub fn flags(&mut self) -> Result<u32> {
        self.config()?
            .get(&CONFIG_FLAGS, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    pub fn set_flags(&mut self, flags: u32) -> Result<()> {
        self.config()?
            .set(CONFIG_FLAGS, flags, 0)
            .map_err(map_err(MAP_CONFIG))
    }

    /// Zeroes counter slot `slot` (before a new endpoint or uplink uses it).
    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(what, e)| DatapathError::Io {
            what: what.into(),
            source: e,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); n]).map_err(io("per-CPU values"))?;
        self.counters()?
            .set(slot, zeros, 0)
            .map_err(map_err(MAP_COUNTERS))
    }

    /// Counters in `slot`, summed over CPUs.
    pub fn read_counters(&mut self, slot: u32) -> Result<Counters> {
        let per_cpu = self
            .counters()?
            .get(&slot, 0)
            .map_err(map_err(MAP_COUNTERS))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn typed<'a, T>(
    maps: &'a mut std::collections::HashMap<&'static str, aya::maps::Map>,
    name: &'static str,
) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = maps.get_mut(name).ok_or(DatapathError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(map).map_err(map_err(name))
}
