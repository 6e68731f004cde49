//! The memory and descriptor model shared by every backend: what a region is,
//! how memory types map to TensorRT-LLM's `MemoryType`, and range lookup.

use super::error::{Error, Result};
use std::collections::BTreeMap;

/// Kind of memory a descriptor names. Values equal TensorRT-LLM's
/// `MemoryType` (`kDRAM` = 0, `kVRAM` = 1); file and object kinds are not
/// transfer targets and are refused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum kvx_memory_type {
    KVX_MEMORY_DRAM = 0,
    KVX_MEMORY_VRAM = 1,
}

impl kvx_memory_type {
    /// Validate a raw value received through the C ABI or from a peer.
    pub fn from_raw(raw: u32) -> Result<Self> {
        match raw {
            0 => Ok(Self::KVX_MEMORY_DRAM),
            1 => Ok(Self::KVX_MEMORY_VRAM),
            other => Err(Error::invalid(format!(
                "memory type {other} is not supported (0 = DRAM, 1 = VRAM)"
            ))),
        }
    }
}

/// One contiguous piece of memory: `addr` and `len` in bytes, `device_id` the
/// CUDA device ordinal for VRAM (ignored for DRAM). Same fields as
/// TensorRT-LLM's `MemoryDesc`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct kvx_memory_desc {
    pub addr: u64,
    pub len: u64,
    pub device_id: u32,
}

impl kvx_memory_desc {
    pub fn end(&self) -> Result<u64> {
        self.addr
            .checked_add(self.len)
            .ok_or_else(|| Error::invalid(format!("range {:#x}+{} overflows", self.addr, self.len)))
    }
}

/// Regions keyed by (address, length); a lookup finds a region that fully
/// contains a range. Overlapping regions are allowed (TensorRT-LLM registers
/// the same buffer from several agents, and sub-ranges happen).
#[derive(Debug)]
pub struct RegionMap<T> {
    regions: BTreeMap<(u64, u64), T>,
    /// Longest region, so a failed lookup stops scanning early.
    max_len: u64,
}

impl<T> Default for RegionMap<T> {
    fn default() -> Self {
        RegionMap { regions: BTreeMap::new(), max_len: 0 }
    }
}

impl<T> RegionMap<T> {
    pub fn insert(&mut self, addr: u64, len: u64, value: T) -> Option<T> {
        self.max_len = self.max_len.max(len);
        self.regions.insert((addr, len), value)
    }
    pub fn get(&self, addr: u64, len: u64) -> Option<&T> {
        self.regions.get(&(addr, len))
    }
    pub fn get_mut(&mut self, addr: u64, len: u64) -> Option<&mut T> {
        self.regions.get_mut(&(addr, len))
    }
    pub fn remove(&mut self, addr: u64, len: u64) -> Option<T> {
        let removed = self.regions.remove(&(addr, len));
        if self.regions.is_empty() {
            self.max_len = 0;
        }
        removed
    }
    pub fn iter(&self) -> impl Iterator<Item = (&(u64, u64), &T)> {
        self.regions.iter()
    }
    pub fn drain(&mut self) -> impl Iterator<Item = ((u64, u64), T)> {
        self.max_len = 0;
        std::mem::take(&mut self.regions).into_iter()
    }

    /// The region containing `[addr, addr + len)`, with its start address.
    /// A zero-length range is contained by a region that contains `addr`.
    pub fn find_containing(&self, addr: u64, len: u64) -> Option<(u64, &T)> {
        self.find_region(addr, len).map(|(start, _, value)| (start, value))
    }

    /// Like `find_containing`, also giving the region's length.
    pub fn find_region(&self, addr: u64, len: u64) -> Option<(u64, u64, &T)> {
        let end = addr.checked_add(len)?;
        for (&(start, rlen), value) in self.regions.range(..=(addr, u64::MAX)).rev() {
            // Regions further left cannot reach `end` once even the longest is too short.
            if start.saturating_add(self.max_len) < end {
                break;
            }
            let rend = start.saturating_add(rlen);
            if start <= addr && end <= rend && (len > 0 || addr < rend) {
                return Some((start, rlen, value));
            }
        }
        None
    }
}

/// Repeated lookups into one `RegionMap`, remembering the last region hit:
/// a request's descriptors mostly fall in the region of the one before, so
/// most lookups skip the tree search.
pub struct RegionLookup<'m, T> {
    map: &'m RegionMap<T>,
    last: Option<(u64, u64, &'m T)>,
}

impl<'m, T> RegionLookup<'m, T> {
    pub fn new(map: &'m RegionMap<T>) -> Self {
        RegionLookup { map, last: None }
    }

    /// A region containing the range, found whenever `find_containing` finds
    /// one (where regions overlap, possibly another region that also contains it).
    pub fn find(&mut self, addr: u64, len: u64) -> Option<&'m T> {
        if let Some((start, end, value)) = self.last {
            if let Some(range_end) = addr.checked_add(len) {
                if start <= addr && range_end <= end && (len > 0 || addr < end) {
                    return Some(value);
                }
            }
        }
        let (start, rlen, value) = self.map.find_region(addr, len)?;
        self.last = Some((start, start + rlen, value));
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_containing_region_and_refuses_outside() {
        let mut map = RegionMap::default();
        map.insert(1000, 100, "a");
        map.insert(5000, 10, "b");
        map.insert(1050, 10, "inner");
        assert_eq!(map.find_containing(1000, 100).map(|r| *r.1), Some("a"));
        assert_eq!(map.find_containing(1090, 10).map(|r| *r.1), Some("a"));
        assert!(map.find_containing(1090, 11).is_none());
        assert!(map.find_containing(999, 2).is_none());
        assert_eq!(map.find_containing(5009, 1).map(|r| r.0), Some(5000));
        assert!(map.find_containing(5010, 0).is_none());
        assert!(map.find_containing(u64::MAX, 2).is_none());
        assert_eq!(map.find_containing(1055, 2).map(|r| r.0), Some(1050));
        assert_eq!(map.find_region(1090, 10).map(|r| (r.0, r.1)), Some((1000, 100)));
    }

    #[test]
    fn cached_lookup_answers_like_the_map() {
        let mut map = RegionMap::default();
        for (addr, len) in [(1000, 100), (1100, 100), (5000, 10), (1050, 10)] {
            map.insert(addr, len, (addr, len));
        }
        let mut lookup = RegionLookup::new(&map);
        let probes = [(1000, 10), (1010, 90), (1090, 20), (1100, 0), (1199, 1), (1199, 2), (1200, 0), (5000, 10), (5009, 2), (1050, 5), (1000, 100), (999, 1), (1055, 0)];
        for round in 0..2 {
            for &(addr, len) in &probes {
                let found = lookup.find(addr, len);
                assert_eq!(found.is_some(), map.find_containing(addr, len).is_some(), "round {round} {addr}+{len}");
                if let Some(&(start, rlen)) = found {
                    assert!(start <= addr && addr + len <= start + rlen && (len > 0 || addr < start + rlen), "{addr}+{len} not in {start}+{rlen}");
                }
            }
        }
    }
}
