//! Batched device copies: a request's (src, dst, len) list goes to the GPU
//! in pinned memory and one kernel launch per size class (`copy_kernel.cu`,
//! committed as PTX and JIT-compiled by the driver at first use) copies every
//! entry: entries up to `SMALL_MAX` one warp each, longer ones several blocks
//! each, and entries of at least `COPY_ENGINE_MIN` bytes go to the copy
//! engines. Every copy is one list entry (nothing is split on the host), so a
//! list needs exactly as many entries as copies. Work is issued in chunks
//! while the list is being built (the first chunk small, so the GPU starts at
//! once), and each batch takes one of a few streams, so concurrent requests
//! do not queue behind each other. Completion is an event.
//! `KVX_COPY_KERNEL_PTX=<file>` loads another build of the same kernels (used
//! on the GPU machine to try nvcc's output before committing it).

use super::{check, primary_context, ContextScope};
use crate::core::error::{Error, Result};
use cudarc::driver::sys;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

const PTX: &str = concat!(include_str!("copy_kernel.ptx"), "\0");
/// Entries issued in the first launch of a writer (16 MiB of 4 KiB blocks:
/// the GPU starts at once); later launches double up to `CHUNK`, as each
/// launch and list upload costs the host a few microseconds.
const FIRST_CHUNK: usize = 4 * 1024;
/// Entries issued per kernel launch at most while the rest of the list is built.
const CHUNK: usize = 32 * 1024;
/// Entries this large are copied by the copy engines (as cudaMemcpyPeer is).
pub const COPY_ENGINE_MIN: u64 = 4 << 20;
/// Entries up to this size are copied by one warp each (`kvx_copy_batch`);
/// longer ones by up to `MAX_BLOCKS_PER_ENTRY` blocks each (`kvx_copy_large`).
pub const SMALL_MAX: u64 = 64 << 10;
/// Bytes one block of `kvx_copy_large` takes of an entry.
const BLOCK_SHARE: u64 = 64 << 10;
const MAX_BLOCKS_PER_ENTRY: u32 = (COPY_ENGINE_MIN / BLOCK_SHARE) as u32;
const BLOCK_THREADS: u32 = 256;
const WARPS_PER_BLOCK: u32 = BLOCK_THREADS / 32;
const MAX_BLOCKS: u32 = 8192;
/// Streams per device: batches take them in turn.
const STREAMS: usize = 4;

/// One copy, laid out as the kernel's `KvxCopy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Copy {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

/// Pinned host list + device list + completion event, reused across requests.
struct Slot {
    host: *mut Copy,
    device: u64,
    capacity: usize,
    event: sys::CUevent,
}

unsafe impl Send for Slot {}

/// Per-device state: the loaded kernels, the streams and the free slots.
struct Engine {
    device: u32,
    small: sys::CUfunction,
    large: sys::CUfunction,
    streams: Vec<sys::CUstream>,
    next_stream: AtomicUsize,
    free: Mutex<Vec<Slot>>,
}

unsafe impl Send for Engine {}
unsafe impl Sync for Engine {}

static ENGINES: Lazy<Mutex<HashMap<u32, Arc<Engine>>>> = Lazy::new(Default::default);

fn engine(device: u32) -> Result<Arc<Engine>> {
    let mut engines = ENGINES.lock();
    if let Some(e) = engines.get(&device) {
        return Ok(e.clone());
    }
    primary_context(device)?;
    let _scope = ContextScope::enter(device)?;
    let mut module: sys::CUmodule = std::ptr::null_mut();
    let mut small: sys::CUfunction = std::ptr::null_mut();
    let mut large: sys::CUfunction = std::ptr::null_mut();
    let replacement = std::env::var_os("KVX_COPY_KERNEL_PTX").map(|path| {
        let mut text = std::fs::read(&path).map_err(|e| Error::system(&format!("reading {path:?}"), e))?;
        text.push(0);
        Ok::<_, Error>(text)
    });
    let ptx: Vec<u8> = match replacement {
        Some(text) => text?,
        None => PTX.as_bytes().to_vec(),
    };
    let mut streams = Vec::with_capacity(STREAMS);
    // SAFETY: NUL-terminated PTX; out-parameters.
    unsafe {
        check(sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const _), "loading the batched-copy kernels")?;
        check(
            sys::cuModuleGetFunction(&mut small, module, c"kvx_copy_batch".as_ptr()),
            "finding the batched-copy kernel",
        )?;
        check(
            sys::cuModuleGetFunction(&mut large, module, c"kvx_copy_large".as_ptr()),
            "finding the large-entry copy kernel",
        )?;
        for _ in 0..STREAMS {
            let mut stream: sys::CUstream = std::ptr::null_mut();
            check(
                sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
                "creating a copy stream",
            )?;
            streams.push(stream);
        }
    }
    let e = Arc::new(Engine {
        device,
        small,
        large,
        streams,
        next_stream: AtomicUsize::new(0),
        free: Mutex::new(Vec::new()),
    });
    engines.insert(device, e.clone());
    Ok(e)
}

impl Engine {
    fn take_slot(&self, entries: usize) -> Result<Slot> {
        {
            let mut free = self.free.lock();
            // The smallest free slot that fits, so one huge request does not take every small one's slot.
            let best = free.iter().enumerate().filter(|(_, s)| s.capacity >= entries).min_by_key(|(_, s)| s.capacity);
            if let Some((i, _)) = best {
                return Ok(free.swap_remove(i));
            }
        }
        let capacity = entries.next_power_of_two().max(1024);
        let bytes = capacity * std::mem::size_of::<Copy>();
        let mut host: *mut std::ffi::c_void = std::ptr::null_mut();
        let mut device = 0u64;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: out-parameters; freed together if a later step fails.
        unsafe {
            check(sys::cuMemHostAlloc(&mut host, bytes, 0), "pinned copy list")?;
            if let Err(e) = check(sys::cuMemAlloc_v2(&mut device, bytes), "device copy list") {
                sys::cuMemFreeHost(host);
                return Err(e);
            }
            if let Err(e) =
                check(sys::cuEventCreate(&mut event, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32), "copy event")
            {
                sys::cuMemFreeHost(host);
                sys::cuMemFree_v2(device);
                return Err(e);
            }
        }
        Ok(Slot { host: host as *mut Copy, device, capacity, event })
    }

    /// Upload list entries `from..to` of `slot` and launch `function` over
    /// them on `stream` with `grid` blocks.
    ///
    /// # Safety
    /// Entries `from..to` were written and stay untouched until the slot's event fires.
    unsafe fn launch(
        &self,
        stream: sys::CUstream,
        slot: &Slot,
        (from, to): (usize, usize),
        function: sys::CUfunction,
        grid: (u32, u32),
    ) -> Result<()> {
        let bytes = (to - from) * std::mem::size_of::<Copy>();
        let offset = (from * std::mem::size_of::<Copy>()) as u64;
        check(
            sys::cuMemcpyHtoDAsync_v2(slot.device + offset, slot.host.add(from) as *const _, bytes, stream),
            "uploading the copy list",
        )?;
        self.launch_only(stream, slot.device, (from, to), function, grid)
    }

    /// Launch `function` over list entries `from..to` of `slot`, read from `source`.
    ///
    /// # Safety
    /// As `launch`; with `ListSource::Device` the entries were uploaded.
    unsafe fn issue(
        &self,
        stream: sys::CUstream,
        slot: &Slot,
        source: ListSource,
        range: (usize, usize),
        function: sys::CUfunction,
        grid: (u32, u32),
    ) -> Result<()> {
        match source {
            ListSource::Uploaded => self.launch(stream, slot, range, function, grid),
            ListSource::Device => self.launch_only(stream, slot.device, range, function, grid),
            ListSource::Host => self.launch_only(stream, slot.host as u64, range, function, grid),
        }
    }

    /// Launch `function` over entries `from..to` of the list at `list_base`
    /// (the slot's device list, or its pinned host list, which the device
    /// reads through the unified address space).
    ///
    /// # Safety
    /// As `launch`, and the entries are in place at `list_base`.
    unsafe fn launch_only(
        &self,
        stream: sys::CUstream,
        list_base: u64,
        (from, to): (usize, usize),
        function: sys::CUfunction,
        grid: (u32, u32),
    ) -> Result<()> {
        let mut list = list_base + (from * std::mem::size_of::<Copy>()) as u64;
        let mut n = (to - from) as u32;
        let mut params = [&mut list as *mut u64 as *mut std::ffi::c_void, &mut n as *mut u32 as *mut std::ffi::c_void];
        check(
            sys::cuLaunchKernel(
                function,
                grid.0,
                grid.1,
                1,
                BLOCK_THREADS,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
            "launching the batched copy",
        )
    }
}

/// Grid of `kvx_copy_batch` for `entries` entries: one warp each, up to `MAX_BLOCKS` blocks.
fn small_grid(entries: usize) -> (u32, u32) {
    ((entries as u32).div_ceil(WARPS_PER_BLOCK).min(MAX_BLOCKS), 1)
}

/// Grid of `kvx_copy_large` for `entries` entries of at most `longest` bytes:
/// columns of blocks, one block per `BLOCK_SHARE` of the longest entry.
fn large_grid(entries: usize, longest: u64) -> (u32, u32) {
    let per_entry = (longest.div_ceil(BLOCK_SHARE) as u32).clamp(1, MAX_BLOCKS_PER_ENTRY);
    ((entries as u32).min(MAX_BLOCKS / per_entry).max(1), per_entry)
}

/// Where the copy kernels read their list from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListSource {
    /// Device memory, uploaded beforehand (`kernel_seconds` only: the kernels alone).
    Device,
    /// Device memory, each chunk uploaded on the stream before its launch.
    Uploaded,
    /// The pinned host list itself, read by the kernels through the unified
    /// address space: no upload to wait for, and no upload call per chunk.
    Host,
}

/// `KVX_COPY_LIST=upload` uploads each chunk of the list before its launch;
/// the default (`host`) lets the kernels read the pinned list in place.
static LIST_SOURCE: Lazy<ListSource> = Lazy::new(|| match std::env::var("KVX_COPY_LIST").as_deref() {
    Ok("upload") => ListSource::Uploaded,
    _ => ListSource::Host,
});

/// Nanoseconds per entry of writing `entries` list entries on this thread
/// (median of `reps`), into the pinned list of `device` and into pageable
/// memory: what the stores alone cost on this host, apart from the batch
/// layer's per-entry work. A diagnostic for `kvxfer-gpu kernels`.
pub fn list_write_ns(device: u32, entries: usize, reps: usize) -> Result<Vec<(&'static str, f64)>> {
    let engine = engine(device)?;
    let slot = {
        let _scope = ContextScope::enter(device)?;
        engine.take_slot(entries)?
    };
    let mut pageable = vec![Copy::default(); entries];
    let mut out = Vec::new();
    for (name, base) in [("pinned", slot.host), ("pageable", pageable.as_mut_ptr())] {
        let mut times: Vec<f64> = (0..reps.max(1) + 1)
            .map(|rep| {
                let t = Instant::now();
                for i in 0..entries {
                    // SAFETY: both lists hold `entries` entries; nothing else uses them now.
                    unsafe { base.add(i).write(Copy { src: i as u64, dst: rep as u64, len: 4096 }) };
                }
                std::hint::black_box(base);
                t.elapsed().as_secs_f64() * 1e9 / entries.max(1) as f64
            })
            .collect();
        times.remove(0);
        times.sort_by(|a, b| a.total_cmp(b));
        out.push((name, times[times.len() / 2]));
    }
    engine.free.lock().push(slot);
    Ok(out)
}

/// The GPU's own time for `copies` (median of `reps` runs, timed by events),
/// the list read from `source`; entries up to `small_max` go to the one-warp
/// kernel, longer ones to the block kernel. A diagnostic for `kvxfer-gpu
/// kernels`, which separates the kernels' rate from the host's listing;
/// copies of `COPY_ENGINE_MIN` and more are not taken.
pub fn kernel_seconds(device: u32, copies: &[Copy], small_max: u64, source: ListSource, reps: usize) -> Result<f64> {
    if copies.iter().any(|c| c.len >= COPY_ENGINE_MIN || c.len == 0) {
        return Err(Error::invalid("kernel_seconds takes kernel-sized copies only"));
    }
    let engine = engine(device)?;
    let _scope = ContextScope::enter(device)?;
    let slot = engine.take_slot(copies.len())?;
    let small: Vec<Copy> = copies.iter().filter(|c| c.len <= small_max).copied().collect();
    let large: Vec<Copy> = copies.iter().filter(|c| c.len > small_max).copied().collect();
    let longest = large.iter().map(|c| c.len).max().unwrap_or(0);
    let stream = engine.streams[0];
    let (mut start, mut end): (sys::CUevent, sys::CUevent) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut times = Vec::with_capacity(reps);
    // SAFETY: the slot holds `copies.len()` entries; every launch is synchronised before the slot goes back.
    let outcome = unsafe {
        std::ptr::copy_nonoverlapping(small.as_ptr(), slot.host, small.len());
        std::ptr::copy_nonoverlapping(large.as_ptr(), slot.host.add(small.len()), large.len());
        let ranges = [(0, small.len()), (small.len(), copies.len())];
        let run = |source: ListSource| -> Result<()> {
            for (i, &(from, to)) in ranges.iter().enumerate() {
                if to == from {
                    continue;
                }
                let (function, grid) = if i == 0 {
                    (engine.small, small_grid(to - from))
                } else {
                    (engine.large, large_grid(to - from, longest))
                };
                engine.issue(stream, &slot, source, (from, to), function, grid)?;
            }
            Ok(())
        };
        (|| -> Result<()> {
            check(sys::cuEventCreate(&mut start, 0), "timing event")?;
            check(sys::cuEventCreate(&mut end, 0), "timing event")?;
            run(ListSource::Uploaded)?;
            check(sys::cuStreamSynchronize(stream), "warm-up copy")?;
            for _ in 0..reps.max(1) {
                check(sys::cuEventRecord(start, stream), "timing event")?;
                run(source)?;
                check(sys::cuEventRecord(end, stream), "timing event")?;
                check(sys::cuEventSynchronize(end), "timed copy")?;
                let mut ms = 0f32;
                check(sys::cuEventElapsedTime(&mut ms, start, end), "event time")?;
                times.push(ms as f64 / 1e3);
            }
            Ok(())
        })()
    };
    // SAFETY: the stream is synchronised (or failed); events are ours.
    unsafe {
        sys::cuStreamSynchronize(stream);
        for e in [start, end] {
            if !e.is_null() {
                sys::cuEventDestroy_v2(e);
            }
        }
    }
    engine.free.lock().push(slot);
    outcome?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// A submitted batch; dropping it before completion waits for the GPU.
pub struct Pending {
    engine: Arc<Engine>,
    slot: Option<Slot>,
}

/// A batch being built: its list slot is cut into disjoint ranges, one per
/// `Writer`, so several threads can build and issue parts of one long list.
pub struct Batch {
    engine: Arc<Engine>,
    stream: sys::CUstream,
    slot: Slot,
    source: ListSource,
}

unsafe impl Sync for Batch {}

impl Batch {
    /// A batch on `device` with room for `entries` copies, its list read as `KVX_COPY_LIST` says.
    pub fn new(device: u32, entries: usize) -> Result<Batch> {
        Self::with_source(device, entries, *LIST_SOURCE)
    }

    /// A batch whose kernels read the list from `source` (`Uploaded` or `Host`).
    pub fn with_source(device: u32, entries: usize, source: ListSource) -> Result<Batch> {
        if source == ListSource::Device {
            return Err(Error::invalid("a batch's list is uploaded or read from host memory"));
        }
        let engine = engine(device)?;
        let slot = {
            let _scope = ContextScope::enter(device)?;
            engine.take_slot(entries)?
        };
        let stream = engine.streams[engine.next_stream.fetch_add(1, Ordering::Relaxed) % engine.streams.len()];
        Ok(Batch { engine, stream, slot, source })
    }

    /// Copy the copies of a request's descriptor `slices`: each slice on its
    /// own thread (the caller's included), into its own range of the list,
    /// issued while it is listed; `fill(range, writer)` pushes the copies of
    /// descriptors `range` (at most one per descriptor).
    pub fn submit_sliced(
        self,
        slices: &[std::ops::Range<usize>],
        fill: impl Fn(std::ops::Range<usize>, &mut Writer<'_>) -> Result<()> + Sync,
    ) -> Result<Pending> {
        let results = crate::core::parallel::on_threads(slices.len(), |i| {
            let range = slices[i].clone();
            let mut writer = self.writer(range.start, range.len())?;
            fill(range, &mut writer)?;
            writer.finish()
        });
        self.finish(results.into_iter().collect())
    }

    /// A writer for list entries `start..start + capacity` (ranges of different writers must not overlap).
    pub fn writer(&self, start: usize, capacity: usize) -> Result<Writer<'_>> {
        let end = start.checked_add(capacity).filter(|&end| end <= self.slot.capacity);
        let Some(end) = end else { return Err(Error::invalid("batch writer outside the list")) };
        Ok(Writer {
            batch: self,
            start,
            end,
            small_end: start,
            small_issued: start,
            large_start: end,
            large_issued: end,
            large_max: 0,
            engine_copies: Vec::new(),
            next_flush: FIRST_CHUNK,
        })
    }

    /// Close the batch: everything written was issued by its writer's `finish`.
    /// The event is recorded even after an error, so the list is reused only once the GPU is done with it.
    pub fn finish(self, outcome: Result<()>) -> Result<Pending> {
        let recorded = {
            let _scope = ContextScope::enter(self.engine.device)?;
            // SAFETY: event and stream belong to this engine.
            check(unsafe { sys::cuEventRecord(self.slot.event, self.stream) }, "recording the copy event")
        };
        let pending = Pending { engine: self.engine, slot: Some(self.slot) };
        outcome.and(recorded)?;
        Ok(pending)
    }
}

/// Builds one range of a batch's list: copies up to `SMALL_MAX` from the
/// front, longer ones from the back, so each size class is one run of
/// entries for its kernel; issues whenever enough entries are waiting.
pub struct Writer<'a> {
    batch: &'a Batch,
    start: usize,
    end: usize,
    small_end: usize,
    small_issued: usize,
    large_start: usize,
    large_issued: usize,
    /// Longest entry among the large ones not yet issued.
    large_max: u64,
    engine_copies: Vec<Copy>,
    next_flush: usize,
}

impl Writer<'_> {
    /// Inlined into the listing loops: as a call, each entry costs several
    /// nanoseconds more (measured on an H200 host).
    #[inline(always)]
    pub fn push(&mut self, c: Copy) -> Result<()> {
        if c.len >= COPY_ENGINE_MIN {
            self.engine_copies.push(c);
            if self.engine_copies.len() == 64 {
                self.flush()?;
            }
            return Ok(());
        }
        if c.len == 0 {
            return Ok(());
        }
        if self.small_end == self.large_start {
            return Err(Error::invalid("more copies than announced"));
        }
        let slot = &self.batch.slot;
        if c.len <= SMALL_MAX {
            // SAFETY: within this writer's range of the slot (checked above); not yet handed to the GPU.
            unsafe { slot.host.add(self.small_end).write(c) };
            self.small_end += 1;
        } else {
            self.large_start -= 1;
            // SAFETY: as above.
            unsafe { slot.host.add(self.large_start).write(c) };
            self.large_max = self.large_max.max(c.len);
        }
        if (self.small_end - self.small_issued) + (self.large_issued - self.large_start) >= self.next_flush {
            self.flush()?;
            self.next_flush = (self.next_flush * 2).min(CHUNK);
        }
        Ok(())
    }

    #[inline(never)]
    fn flush(&mut self) -> Result<()> {
        let engine = &self.batch.engine;
        let stream = self.batch.stream;
        let slot = &self.batch.slot;
        let _scope = ContextScope::enter(engine.device)?;
        // SAFETY: the ranges issued were written by this writer and stay untouched until the event fires.
        unsafe {
            for c in &self.engine_copies {
                check(sys::cuMemcpyDtoDAsync_v2(c.dst, c.src, c.len as usize, stream), "copy-engine copy")?;
            }
            let source = self.batch.source;
            let small = self.small_end - self.small_issued;
            if small > 0 {
                engine.issue(
                    stream,
                    slot,
                    source,
                    (self.small_issued, self.small_end),
                    engine.small,
                    small_grid(small),
                )?;
            }
            let large = self.large_issued - self.large_start;
            if large > 0 {
                let grid = large_grid(large, self.large_max);
                engine.issue(stream, slot, source, (self.large_start, self.large_issued), engine.large, grid)?;
            }
        }
        self.engine_copies.clear();
        self.small_issued = self.small_end;
        self.large_issued = self.large_start;
        self.large_max = 0;
        Ok(())
    }

    /// Copies written so far (list entries and copy-engine copies).
    pub fn written(&self) -> usize {
        (self.small_end - self.start) + (self.end - self.large_start)
    }

    /// Issue what is left.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

/// Copy every entry `copies` yields on a stream of `device` (all pointers must
/// be reachable from that device: its own memory or mapped peer memory).
/// The list is built and issued chunk by chunk, so long lists overlap
/// building with copying. `entries` bounds the number of copies.
pub fn submit(device: u32, entries: usize, copies: impl Iterator<Item = Result<Copy>>) -> Result<Pending> {
    let batch = Batch::new(device, entries)?;
    let outcome = batch.writer(0, entries).and_then(|mut w| {
        for c in copies {
            w.push(c?)?;
        }
        w.finish()
    });
    batch.finish(outcome)
}

impl Pending {
    /// Whether the copies are complete (an error if the GPU reported one).
    pub fn poll(&self) -> Result<bool> {
        let Some(slot) = &self.slot else { return Ok(true) };
        let _scope = ContextScope::enter(self.engine.device)?;
        // SAFETY: a recorded event of this engine.
        match unsafe { sys::cuEventQuery(slot.event) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            st => check(st, "batched copy").map(|_| false),
        }
    }

    /// Wait until complete or `deadline`; Ok(false) on timeout.
    pub fn wait(&self, deadline: Instant) -> Result<bool> {
        let mut spins = 0u32;
        loop {
            if self.poll()? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Ok(_scope) = ContextScope::enter(self.engine.device) {
                // The GPU may still read the list: only a finished slot goes back to the pool.
                // SAFETY: a recorded event of this engine.
                unsafe { sys::cuEventSynchronize(slot.event) };
            }
            self.engine.free.lock().push(slot);
        }
    }
}

/// Copy `copies` on `device` and wait: for tools and tests.
pub fn copy_and_wait(device: u32, copies: &[Copy]) -> Result<()> {
    let pending = submit(device, copies.len(), copies.iter().map(|c| Ok(*c)))?;
    if !pending.wait(Instant::now() + std::time::Duration::from_secs(60))? {
        return Err(Error::timeout("batched copy did not finish within 60 s"));
    }
    Ok(())
}
