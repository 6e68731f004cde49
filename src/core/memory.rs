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
            other => Err(Error::invalid(format!("memory type {other} is not supported (0 = DRAM, 1 = VRAM)"))),
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

/// One file piece for memory-to-file copies (TensorRT-LLM's `FileDesc`):
/// an open descriptor `fd`, read or written from byte `offset` for `len` bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct kvx_file_desc {
    pub fd: i32,
    pub offset: u64,
    pub len: u64,
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

/// One registered region: the backend's handle plus what every backend tracks.
#[derive(Debug)]
pub struct Registered<T> {
    pub native: T,
    pub mem_type: kvx_memory_type,
    pub device_id: u32,
    references: usize,
}

/// An agent's local registrations. The same `(addr, len)` registered twice
/// needs two deregistrations (TensorRT-LLM registers shared pools from
/// several places); a call either registers every descriptor or none.
#[derive(Debug)]
pub struct Registrations<T> {
    regions: RegionMap<Registered<T>>,
    locate: PointerLocator,
    host_check: HostCheck,
}

/// Refuses host ranges this process cannot read (unmapped or `PROT_NONE`).
pub type HostCheck = fn(&[kvx_memory_desc]) -> Result<()>;

/// Every range lies in mappings this process may read, as `/proc/self/maps`
/// lists them; where that file cannot be read the platform cannot tell, and
/// the transport's own registration is the only check.
pub fn check_host_readable(descs: &[kvx_memory_desc]) -> Result<()> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Ok(()) };
    let mut readable: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines() {
        let mut words = line.split_whitespace();
        let (Some(range), Some(perms)) = (words.next(), words.next()) else { continue };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
        if perms.starts_with('r') {
            match readable.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => readable.push((start, end)),
            }
        }
    }
    for d in descs {
        let end = d.end()?;
        // The readable run containing the start must reach the end (runs are merged above).
        let i = readable.partition_point(|&(_, e)| e <= d.addr);
        if !readable.get(i).is_some_and(|&(s, e)| s <= d.addr && end <= e) {
            return Err(Error::invalid(format!(
                "host region {:#x}+{} is not mapped readable in this process (unmapped or PROT_NONE)",
                d.addr, d.len
            )));
        }
    }
    Ok(())
}

/// Refuses a range with a page this process has not mapped at all (`mincore`),
/// before anything reads or writes it: a length past the end of the caller's
/// buffer into a hole fails here with a clear error instead of a crash inside
/// the transport. Protections are not checked (device memory is a `PROT_NONE`
/// reservation on the host side, and must pass), nor can it see a length that
/// runs on into a neighbouring mapping.
pub fn check_mapped(addr: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or_else(|| Error::invalid(format!("range {addr:#x}+{len} overflows")))?;
    // SAFETY: sysconf has no preconditions.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64;
    // Bounded work per call: the residency vector covers at most this many pages.
    const PAGES_PER_CALL: u64 = 4096;
    let mut start = addr / page * page;
    let pages = (end - start).div_ceil(page);
    let mut residency = vec![0u8; pages.min(PAGES_PER_CALL) as usize];
    while start < end {
        let span = (end - start).min(PAGES_PER_CALL * page);
        // SAFETY: mincore only reports on the range; `residency` holds one byte per page of `span`.
        if unsafe { libc::mincore(start as *mut libc::c_void, span as usize, residency.as_mut_ptr()) } != 0 {
            return Err(Error::invalid(format!(
                "range {addr:#x}+{len} is not mapped in this process (a length past the end of the buffer?)"
            )));
        }
        start += span;
    }
    Ok(())
}

/// Memory type and device of a pointer as a driver reports it; `None` where
/// no driver can tell, and every pointer is then taken as the caller says.
/// A function given by the layer that owns the driver, so core needs none.
pub type PointerLocator = fn(u64) -> Option<(kvx_memory_type, u32)>;

impl<T> Registrations<T> {
    pub fn new(locate: PointerLocator) -> Self {
        Self::with_host_check(locate, check_host_readable)
    }

    pub fn with_host_check(locate: PointerLocator, host_check: HostCheck) -> Self {
        Registrations { regions: RegionMap::default(), locate, host_check }
    }

    /// Register `descs`; `map` gets the descriptors not registered yet (each
    /// once) and returns one native handle per descriptor, or fails as a whole.
    pub fn register(
        &mut self,
        mem_type: kvx_memory_type,
        descs: &[kvx_memory_desc],
        map: impl FnOnce(&[kvx_memory_desc]) -> Result<Vec<T>>,
    ) -> Result<()> {
        let mut new: Vec<kvx_memory_desc> = Vec::new();
        // Set of the new ranges: a linear scan made registering 10,000 regions quadratic.
        let mut seen: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
        for d in descs {
            d.end()?;
            if d.len == 0 {
                return Err(Error::invalid(format!("region {:#x} has zero length", d.addr)));
            }
            if let Some(existing) = self.regions.get(d.addr, d.len) {
                if existing.mem_type != mem_type {
                    return Err(Error::invalid(format!(
                        "region {:#x}+{} is already registered as {:?}",
                        d.addr, d.len, existing.mem_type
                    )));
                }
                continue;
            }
            if !seen.insert((d.addr, d.len)) {
                continue;
            }
            let mut device_id = d.device_id;
            if let Some((found_type, device)) = (self.locate)(d.addr) {
                if found_type != mem_type {
                    return Err(Error::invalid(format!(
                        "region {:#x} is {found_type:?} memory, registered as {mem_type:?}",
                        d.addr
                    )));
                }
                if mem_type == kvx_memory_type::KVX_MEMORY_VRAM {
                    device_id = device;
                }
            }
            new.push(kvx_memory_desc { device_id, ..*d });
        }
        if mem_type == kvx_memory_type::KVX_MEMORY_DRAM {
            (self.host_check)(&new)?;
        }
        let natives = if new.is_empty() { Vec::new() } else { map(&new)? };
        if natives.len() != new.len() {
            return Err(Error::new(
                super::error::kvx_status::KVX_ERR_INTERNAL,
                "backend returned the wrong number of registrations",
            ));
        }
        for (d, native) in new.iter().zip(natives) {
            self.regions.insert(d.addr, d.len, Registered { native, mem_type, device_id: d.device_id, references: 0 });
        }
        for d in descs {
            if let Some(r) = self.regions.get_mut(d.addr, d.len) {
                r.references += 1;
            }
        }
        Ok(())
    }

    /// Drop one reference to each of `descs` (exactly as registered); `unmap`
    /// gets the regions whose last reference went. Unknown regions fail the
    /// whole call before anything changes.
    pub fn deregister(
        &mut self,
        descs: &[kvx_memory_desc],
        mut unmap: impl FnMut(kvx_memory_desc, Registered<T>),
    ) -> Result<()> {
        // References each range loses; counted in one pass (a scan per descriptor
        // made deregistering 10,000 regions take a third of a second).
        let mut wanted: std::collections::HashMap<(u64, u64), usize> = std::collections::HashMap::new();
        for d in descs {
            *wanted.entry((d.addr, d.len)).or_default() += 1;
        }
        for d in descs {
            match self.regions.get(d.addr, d.len) {
                Some(r) if r.references >= wanted[&(d.addr, d.len)] => {}
                _ => {
                    return Err(Error::not_found(format!(
                        "region {:#x}+{} is not registered (deregister exactly what was registered)",
                        d.addr, d.len
                    )))
                }
            }
        }
        for d in descs {
            let r = self.regions.get_mut(d.addr, d.len).expect("checked above");
            r.references -= 1;
            if r.references == 0 {
                let r = self.regions.remove(d.addr, d.len).expect("present");
                unmap(kvx_memory_desc { device_id: r.device_id, ..*d }, r);
            }
        }
        Ok(())
    }

    pub fn find_containing(&self, addr: u64, len: u64) -> Option<(u64, &Registered<T>)> {
        self.regions.find_containing(addr, len)
    }

    /// The regions themselves, for lookups that remember their last hit (`RegionLookup`).
    pub fn regions(&self) -> &RegionMap<Registered<T>> {
        &self.regions
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(u64, u64), &Registered<T>)> {
        self.regions.iter()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = ((u64, u64), Registered<T>)> {
        self.regions.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "mincore is outside Miri")]
    fn ranges_with_unmapped_pages_are_refused_before_use() {
        let buffer = [7u8; 16];
        let at = buffer.as_ptr() as u64;
        assert!(check_mapped(at, 16).is_ok());
        assert!(check_mapped(at, 0).is_ok());
        // The first pages of the address space are never mapped (mmap_min_addr).
        assert!(check_mapped(4096, 16).is_err());
        assert!(check_mapped(u64::MAX - 8, 16).is_err(), "wraps");
    }

    #[test]
    #[cfg_attr(miri, ignore = "mprotect and /proc/self/maps are outside Miri")]
    fn unmapped_and_unreadable_host_memory_is_refused() {
        let page = 4096usize;
        // SAFETY: a private anonymous mapping of three pages, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        let d = |offset: u64, len: u64| kvx_memory_desc { addr: base + offset, len, device_id: 0 };
        assert!(check_host_readable(&[d(0, 3 * page as u64)]).is_ok());
        // SAFETY: the middle page lies inside the mapping.
        unsafe { libc::mprotect((base + page as u64) as *mut libc::c_void, page, libc::PROT_NONE) };
        assert!(check_host_readable(&[d(0, page as u64)]).is_ok());
        assert!(check_host_readable(&[d(0, page as u64 + 1)]).is_err(), "runs into PROT_NONE");
        assert!(check_host_readable(&[d(page as u64, 16)]).is_err(), "inside PROT_NONE");
        // SAFETY: the last page lies inside the mapping.
        unsafe { libc::munmap((base + 2 * page as u64) as *mut libc::c_void, page) };
        assert!(check_host_readable(&[d(2 * page as u64, 16)]).is_err(), "unmapped");
        let mut regs: Registrations<u32> = Registrations::new(|_| None);
        let e = regs.register(kvx_memory_type::KVX_MEMORY_DRAM, &[d(page as u64, 64)], |_| panic!("refused first"));
        assert!(e.unwrap_err().message.contains("not mapped readable"));
        let ok = regs.register(kvx_memory_type::KVX_MEMORY_DRAM, &[d(0, 64)], |n| Ok(vec![0; n.len()]));
        assert!(ok.is_ok());
        // SAFETY: unmapping what is left of the mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, 2 * page) };
    }

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
        let probes = [
            (1000, 10),
            (1010, 90),
            (1090, 20),
            (1100, 0),
            (1199, 1),
            (1199, 2),
            (1200, 0),
            (5000, 10),
            (5009, 2),
            (1050, 5),
            (1000, 100),
            (999, 1),
            (1055, 0),
        ];
        for round in 0..2 {
            for &(addr, len) in &probes {
                let found = lookup.find(addr, len);
                assert_eq!(found.is_some(), map.find_containing(addr, len).is_some(), "round {round} {addr}+{len}");
                if let Some(&(start, rlen)) = found {
                    assert!(
                        start <= addr && addr + len <= start + rlen && (len > 0 || addr < start + rlen),
                        "{addr}+{len} not in {start}+{rlen}"
                    );
                }
            }
        }
    }

    #[test]
    fn registrations_count_references_and_are_all_or_nothing() {
        let dram = kvx_memory_type::KVX_MEMORY_DRAM;
        let buf = [0u8; 64];
        let a = kvx_memory_desc { addr: buf.as_ptr() as u64, len: 32, device_id: 0 };
        let b = kvx_memory_desc { addr: buf.as_ptr() as u64 + 32, len: 32, device_id: 0 };
        let mut regs: Registrations<u32> = Registrations::with_host_check(|_| None, |_| Ok(()));
        let mut mapped = 0;
        regs.register(dram, &[a, a, b], |new| {
            mapped += new.len();
            Ok((0..new.len() as u32).collect())
        })
        .unwrap();
        assert_eq!(mapped, 2, "a duplicate in one call is mapped once");
        assert!(regs.register(dram, &[a], |_| panic!("already mapped")).is_ok());
        let mut unmapped = Vec::new();
        assert!(regs.deregister(&[b, b], |d, _| unmapped.push(d)).is_err(), "b holds one reference");
        regs.deregister(&[a, a], |d, _| unmapped.push(d)).unwrap();
        assert!(unmapped.is_empty(), "a still holds a reference");
        regs.deregister(&[a, b], |d, _| unmapped.push(d)).unwrap();
        assert_eq!(unmapped.len(), 2);
        let zero = kvx_memory_desc { len: 0, ..a };
        assert!(regs.register(dram, &[a, zero], |_| panic!("refused before mapping")).is_err());
        assert!(regs.register(dram, &[a], |_| Err(Error::invalid("native failure"))).is_err());
        assert!(regs.find_containing(a.addr, 1).is_none(), "a failed call leaves nothing behind");
    }
}
