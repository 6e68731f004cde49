//! Batched device copies: a request's (src, dst, len) list goes to the GPU
//! in pinned memory and one kernel (`copy_kernel.cu`, committed as PTX and
//! JIT-compiled by the driver at first use) copies every entry; entries of
//! at least `COPY_ENGINE_MIN` bytes go to the copy engines instead. Work is
//! issued in chunks while the list is being built, so the GPU starts copying
//! before the host has finished a long list. Completion is an event.
//! `KVX_COPY_KERNEL_PTX=<file>` loads another build of the same kernel (used
//! on the GPU machine to try nvcc's output before committing it).

use super::{check, primary_context, ContextScope};
use crate::core::error::{Error, Result};
use cudarc::driver::sys;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

const PTX: &str = concat!(include_str!("copy_kernel.ptx"), "\0");
/// Entries issued per kernel launch while the rest of the list is built.
const CHUNK: usize = 16 * 1024;
/// Entries this large are copied by the copy engines (as cudaMemcpyPeer is).
pub const COPY_ENGINE_MIN: u64 = 4 << 20;
/// Kernel entries longer than this are split, so one warp never copies far
/// more than its neighbours (the kernel gives each entry one warp).
const PIECE: u64 = 64 << 10;
const BLOCK_THREADS: u32 = 256;
const WARPS_PER_BLOCK: u32 = BLOCK_THREADS / 32;
const MAX_BLOCKS: u32 = 8192;

/// List entries that a copy of `len` bytes takes (callers size batches with it).
pub fn entries_for(len: u64) -> usize {
    if len >= COPY_ENGINE_MIN {
        1
    } else {
        len.div_ceil(PIECE).max(1) as usize
    }
}

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

/// Per-device state: the loaded kernel, one stream and the free slots.
struct Engine {
    device: u32,
    function: sys::CUfunction,
    stream: sys::CUstream,
    free: Mutex<Vec<Slot>>,
    /// Orders whole submissions on the stream.
    issue: Mutex<()>,
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
    let mut function: sys::CUfunction = std::ptr::null_mut();
    let mut stream: sys::CUstream = std::ptr::null_mut();
    let replacement = std::env::var_os("KVX_COPY_KERNEL_PTX").map(|path| {
        let mut text = std::fs::read(&path).map_err(|e| Error::system(&format!("reading {path:?}"), e))?;
        text.push(0);
        Ok::<_, Error>(text)
    });
    let ptx: Vec<u8> = match replacement {
        Some(text) => text?,
        None => PTX.as_bytes().to_vec(),
    };
    // SAFETY: NUL-terminated PTX; out-parameters.
    unsafe {
        check(sys::cuModuleLoadData(&mut module, ptx.as_ptr() as *const _), "loading the batched-copy kernel")?;
        check(
            sys::cuModuleGetFunction(&mut function, module, c"kvx_copy_batch".as_ptr()),
            "finding the batched-copy kernel",
        )?;
        check(
            sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
            "creating a copy stream",
        )?;
    }
    let e = Arc::new(Engine { device, function, stream, free: Mutex::new(Vec::new()), issue: Mutex::new(()) });
    engines.insert(device, e.clone());
    Ok(e)
}

impl Engine {
    fn take_slot(&self, entries: usize) -> Result<Slot> {
        {
            let mut free = self.free.lock();
            if let Some(i) = free.iter().position(|s| s.capacity >= entries) {
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

    /// Issue entries `from..to` of the slot: small ones by one kernel launch, large ones by the copy engines.
    fn issue(&self, slot: &Slot, from: usize, to: usize, large: &[Copy]) -> Result<()> {
        let count = to - from;
        // SAFETY: entries from..to were written by the caller; the list stays untouched until the event fires.
        unsafe {
            for c in large {
                check(sys::cuMemcpyDtoDAsync_v2(c.dst, c.src, c.len as usize, self.stream), "copy-engine copy")?;
            }
            if count == 0 {
                return Ok(());
            }
            let bytes = count * std::mem::size_of::<Copy>();
            let offset = (from * std::mem::size_of::<Copy>()) as u64;
            check(
                sys::cuMemcpyHtoDAsync_v2(slot.device + offset, slot.host.add(from) as *const _, bytes, self.stream),
                "uploading the copy list",
            )?;
            let mut list = slot.device + offset;
            let mut n = count as u32;
            let mut params =
                [&mut list as *mut u64 as *mut std::ffi::c_void, &mut n as *mut u32 as *mut std::ffi::c_void];
            let blocks = n.div_ceil(WARPS_PER_BLOCK).min(MAX_BLOCKS);
            check(
                sys::cuLaunchKernel(
                    self.function,
                    blocks,
                    1,
                    1,
                    BLOCK_THREADS,
                    1,
                    1,
                    0,
                    self.stream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
                "launching the batched copy",
            )
        }
    }
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
    slot: Slot,
}

unsafe impl Sync for Batch {}

impl Batch {
    /// A batch on `device` with room for `entries` list entries.
    pub fn new(device: u32, entries: usize) -> Result<Batch> {
        let engine = engine(device)?;
        let slot = {
            let _scope = ContextScope::enter(device)?;
            engine.take_slot(entries)?
        };
        Ok(Batch { engine, slot })
    }

    /// A writer for list entries `start..start + capacity` (ranges of different writers must not overlap).
    pub fn writer(&self, start: usize, capacity: usize) -> Result<Writer<'_>> {
        if start.checked_add(capacity).map_or(true, |end| end > self.slot.capacity) {
            return Err(Error::invalid("batch writer outside the list"));
        }
        Ok(Writer { batch: self, end: start + capacity, written: start, issued: start, large: Vec::new() })
    }

    /// Close the batch: everything written was issued by its writer's `finish`.
    /// The event is recorded even after an error, so the list is reused only once the GPU is done with it.
    pub fn finish(self, outcome: Result<()>) -> Result<Pending> {
        let recorded = {
            let _scope = ContextScope::enter(self.engine.device)?;
            // SAFETY: event and stream belong to this engine.
            check(unsafe { sys::cuEventRecord(self.slot.event, self.engine.stream) }, "recording the copy event")
        };
        let pending = Pending { engine: self.engine, slot: Some(self.slot) };
        outcome.and(recorded)?;
        Ok(pending)
    }
}

/// Builds one range of a batch's list, issuing every `CHUNK` entries.
pub struct Writer<'a> {
    batch: &'a Batch,
    end: usize,
    written: usize,
    issued: usize,
    large: Vec<Copy>,
}

impl Writer<'_> {
    pub fn push(&mut self, c: Copy) -> Result<()> {
        let slot = &self.batch.slot;
        if c.len >= COPY_ENGINE_MIN {
            self.large.push(c);
        } else if c.len <= PIECE {
            // The common case (KV blocks): one entry, no splitting.
            if self.written == self.end {
                return Err(Error::invalid("more copies than announced"));
            }
            // SAFETY: within this writer's range of the slot; not yet handed to the GPU.
            unsafe { slot.host.add(self.written).write(c) };
            self.written += 1;
        } else {
            if self.written + entries_for(c.len) > self.end {
                return Err(Error::invalid("more copies than announced"));
            }
            let mut at = 0;
            while at < c.len {
                let len = PIECE.min(c.len - at);
                // SAFETY: within this writer's range (checked above); not yet handed to the GPU.
                unsafe { slot.host.add(self.written).write(Copy { src: c.src + at, dst: c.dst + at, len }) };
                self.written += 1;
                at += PIECE;
            }
        }
        if self.written - self.issued >= CHUNK || self.large.len() == 64 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let engine = &self.batch.engine;
        let _scope = ContextScope::enter(engine.device)?;
        {
            let _order = engine.issue.lock();
            engine.issue(&self.batch.slot, self.issued, self.written, &self.large)?;
        }
        self.issued = self.written;
        self.large.clear();
        Ok(())
    }

    /// Issue what is left.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

/// Copy every entry `copies` yields on `device`'s stream (all pointers must
/// be reachable from that device: its own memory or mapped peer memory).
/// The list is built and issued chunk by chunk, so long lists overlap
/// building with copying. `entries` bounds the list entries (`entries_for`).
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
    let entries = copies.iter().map(|c| entries_for(c.len)).sum();
    let pending = submit(device, entries, copies.iter().map(|c| Ok(*c)))?;
    if !pending.wait(Instant::now() + std::time::Duration::from_secs(60))? {
        return Err(Error::timeout("batched copy did not finish within 60 s"));
    }
    Ok(())
}
