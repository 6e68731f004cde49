//! Same-host device-to-device fast path of the UCX agent.
//!
//! Every transport operation through UCX's `cuda_ipc` costs 5-8 us, so a
//! paged KV request of thousands of 4-32 KiB blocks is posting-bound. When
//! both sides are device memory on one host, the agent instead maps the
//! peer's `cuMemAlloc` regions through CUDA IPC (handles travel in the agent
//! descriptor's optional IPC section), coalesces contiguous descriptors and
//! moves the whole request with one batched copy (`cuda::batch`); the sync
//! message is sent only after the copy's event has completed, so the data is
//! visible before the notification. Anything else (host memory, VMM memory
//! without IPC handles, peers on other hosts or in this process, a handle
//! that fails to open, an invalid request) takes the transport path, which
//! also produces the error messages. `KVX_UCX_IPC=0` disables this path.

use super::{post_notification, LocalRegion, RemoteAgent, TransferShared, UcxAgent, UcxTransfer};
use crate::backend::ucx::ops::Op;
use crate::backend::ucx::worker::Worker;
use crate::core::error::{Error, Result};
use crate::core::memory::{kvx_memory_type, RegionMap, Registered};
use crate::core::request::Bounds;
use crate::core::stats::{kvx_xfer_path, TransferRecord};
use crate::core::wire::{AgentDescriptor, IpcRegion, IpcSection};
use crate::core::{coalesce, parallel};
use crate::cuda::{batch, ipc as cuda_ipc};
use crate::dispatch::{kvx_transfer_op, TransferRequest};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::ffi::CString;
use std::sync::mpsc;
use std::sync::Arc;

const VRAM: kvx_memory_type = kvx_memory_type::KVX_MEMORY_VRAM;

fn enabled() -> bool {
    static ON: Lazy<bool> = Lazy::new(|| std::env::var("KVX_UCX_IPC").map_or(true, |v| v != "0"));
    *ON && crate::cuda::driver_available()
}

/// The IPC export of a newly registered region (device memory only).
pub(super) fn export_region(mem_type: kvx_memory_type, addr: u64, len: u64, device: u32) -> Option<cuda_ipc::Export> {
    if mem_type != VRAM || !enabled() {
        return None;
    }
    cuda_ipc::export(addr, len, device)
}

/// The descriptor's IPC section: None when no region is exported, so
/// host-only agents keep writing version-1 descriptors.
pub(super) fn export_section(local: &RegionMap<Registered<LocalRegion>>) -> Option<IpcSection> {
    let regions: Vec<IpcRegion> = local
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| {
            r.native.ipc.map(|e| IpcRegion { region: i as u32, handle: e.handle, offset: e.offset })
        })
        .collect();
    if regions.is_empty() {
        return None;
    }
    Some(IpcSection { host: cuda_ipc::host_identity(), pid: std::process::id(), regions })
}

/// A peer region reachable through IPC, mapped on first use.
struct PeerRegion {
    len: u64,
    end: u64,
    handle: [u8; cuda_ipc::HANDLE_LEN],
    offset: u64,
    /// Mappings per local device that used it.
    mapped: Mutex<Vec<(u32, Arc<cuda_ipc::Mapping>)>>,
}

/// The peer's IPC-reachable regions, when the peer is another process on this host.
pub(super) struct PeerIpc {
    regions: RegionMap<PeerRegion>,
}

impl PeerIpc {
    pub(super) fn from_descriptor(desc: &AgentDescriptor) -> Option<PeerIpc> {
        let ipc = desc.ipc.as_ref()?;
        let host = cuda_ipc::host_identity();
        if !enabled() || host.is_empty() || ipc.host != host || ipc.pid == std::process::id() {
            return None;
        }
        let mut regions = RegionMap::default();
        for e in &ipc.regions {
            let r = &desc.regions[e.region as usize];
            if r.mem_type == VRAM {
                regions.insert(
                    r.addr,
                    r.len,
                    PeerRegion {
                        len: r.len,
                        end: r.addr + r.len,
                        handle: e.handle,
                        offset: e.offset,
                        mapped: Mutex::new(Vec::new()),
                    },
                );
            }
        }
        Some(PeerIpc { regions })
    }
}

impl PeerRegion {
    /// This region's address in this process, as seen from `device`.
    fn mapping(&self, device: u32) -> Result<Arc<cuda_ipc::Mapping>> {
        let mut mapped = self.mapped.lock();
        if let Some((_, m)) = mapped.iter().find(|(d, _)| *d == device) {
            return Ok(m.clone());
        }
        let m = cuda_ipc::open(&self.handle, device)?;
        // The descriptor is untrusted: a region that overruns the allocation the
        // handle maps would make the copy kernel fault; never use it.
        if self.offset.checked_add(self.len).map_or(true, |end| end > m.size) {
            return Err(Error::malformed(format!(
                "peer region of {} bytes at offset {} overruns its {}-byte allocation",
                self.len, self.offset, m.size
            )));
        }
        mapped.push((device, m.clone()));
        Ok(m)
    }
}

/// Last region hit on each side: paged requests hit one pool region
/// descriptor after descriptor, so lookups are a bounds check.
struct Resolver<'a> {
    local: &'a RegionMap<Registered<LocalRegion>>,
    peer: &'a PeerIpc,
    device: Option<u32>,
    last_local: Option<(u64, u64)>,
    last_remote: Option<(u64, u64, u64)>,
    mappings: Vec<Arc<cuda_ipc::Mapping>>,
}

impl Resolver<'_> {
    /// The local address and the peer address mapped here, or None when this
    /// pair cannot take the IPC path.
    fn resolve(&mut self, local: u64, remote: u64, len: u64) -> Option<(u64, u64)> {
        let in_local =
            self.last_local.is_some_and(|(s, e)| local >= s && local.checked_add(len).is_some_and(|end| end <= e));
        if !in_local {
            let (start, region) = self.local.find_containing(local, len)?;
            if region.mem_type != VRAM || *self.device.get_or_insert(region.device_id) != region.device_id {
                return None;
            }
            self.last_local = Some((start, region.native.end));
        }
        let hit =
            self.last_remote.filter(|&(s, e, _)| remote >= s && remote.checked_add(len).is_some_and(|end| end <= e));
        let (start, _, base) = match hit {
            Some(h) => h,
            None => {
                let (start, region) = self.peer.regions.find_containing(remote, len)?;
                let mapping = region
                    .mapping(self.device?)
                    .map_err(|e| crate::log_at!(Warn, "CUDA IPC path not taken: {e}"))
                    .ok()?;
                let base = mapping.base + region.offset;
                if !self.mappings.iter().any(|m| Arc::ptr_eq(m, &mapping)) {
                    self.mappings.push(mapping);
                }
                self.last_remote = Some((start, region.end, base));
                (start, region.end, base)
            }
        };
        Some((local, base + (remote - start)))
    }
}

/// When every local descriptor lies in one local region and every remote one
/// in one peer region (a registered KV pool), peer addresses map by one
/// constant and no descriptor needs a lookup: (device, remote-to-mapped shift).
/// The request's bounds were found while its descriptors were checked.
fn single_region(resolver: &mut Resolver<'_>, bounds: &Bounds) -> Option<(u32, u64)> {
    let ((llo, lhi), (rlo, rhi)) = (bounds.local, bounds.remote);
    let (_, local) = resolver.local.find_containing(llo, lhi.checked_sub(llo)?)?;
    if local.mem_type != VRAM {
        return None;
    }
    let (start, region) = resolver.peer.regions.find_containing(rlo, rhi.checked_sub(rlo)?)?;
    let mapping =
        region.mapping(local.device_id).map_err(|e| crate::log_at!(Warn, "CUDA IPC path not taken: {e}")).ok()?;
    let shift = (mapping.base + region.offset).wrapping_sub(start);
    resolver.mappings.push(mapping);
    Some((local.device_id, shift))
}

/// Copies waiting for their event, then for the sync message.
struct Job {
    pending: batch::Pending,
    shared: Arc<TransferShared>,
    worker: Arc<Worker>,
    remote: Arc<RemoteAgent>,
    /// The encoded notification header and the sync message.
    sync: Option<(Vec<u8>, Vec<u8>)>,
    /// Keeps the peer mappings open until the copy is done.
    _mappings: Vec<Arc<cuda_ipc::Mapping>>,
}

unsafe impl Send for Job {}

/// One thread per process completes batched copies in submission order (one
/// stream per device completes in order too).
static COMPLETER: Lazy<Mutex<mpsc::Sender<Job>>> = Lazy::new(|| {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("kvx-ipc-complete".into())
        .spawn(move || {
            // Its 20 us sleeps between event checks would otherwise take the
            // default 50 us of timer slack on top: up to 70 us added to a
            // 1 ms request. The thread only sleeps while copies are in flight.
            // SAFETY: sets this thread's own timer slack; no pointers.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            while let Ok(job) = rx.recv() {
                complete(job);
            }
        })
        .expect("cannot start the CUDA IPC completion thread");
    Mutex::new(tx)
});

fn complete(job: Job) {
    let outcome = match job.pending.wait(job.shared.deadline) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::timeout("batched device copy did not complete within the agent's timeout")),
        Err(e) => Err(e),
    };
    drop(job.pending);
    // A copy that timed out may still run on the GPU; any other end leaves the memory alone.
    let still_copying = matches!(&outcome, Err(e) if e.status == crate::core::error::kvx_status::KVX_ERR_TIMEOUT);
    if !still_copying {
        job.shared.quiet.complete(Ok(()));
    }
    match (outcome, job.sync) {
        // Cancelled meanwhile: the peer must not be told the data is there.
        (Ok(()), Some(_)) if job.shared.done.is_done() => {}
        (Ok(()), Some((header, message))) => {
            // The copy is complete on the GPU: now the sync message.
            let note = Op::new(&job.worker, "sync message");
            let shared = job.shared.clone();
            note.then(move |_, r| {
                shared.done.complete(r.map(|_| ()));
            });
            {
                let _g = job.worker.lock();
                post_notification(&job.worker, &job.remote, header, message, &note);
            }
            job.worker.wake();
        }
        (outcome, _) => {
            job.shared.done.complete(outcome);
        }
    }
}

/// The request as one batched copy, or None when it must take the transport path.
pub(super) fn try_submit(
    agent: &UcxAgent,
    req: &TransferRequest<'_>,
    remote: &Arc<RemoteAgent>,
) -> Result<Option<UcxTransfer>> {
    let Some(peer) = remote.ipc.as_ref() else { return Ok(None) };
    if req.local_type != VRAM || req.remote_type != VRAM || req.local.is_empty() {
        return Ok(None);
    }
    let local = agent.core.local.lock();
    let mut resolver = Resolver {
        local: local.regions(),
        peer,
        device: None,
        last_local: None,
        last_remote: None,
        mappings: Vec::new(),
    };
    let write = req.op == kvx_transfer_op::KVX_OP_WRITE;
    let copy = |l: u64, r: u64, len: u64| {
        if write {
            batch::Copy { src: l, dst: r, len }
        } else {
            batch::Copy { src: r, dst: l, len }
        }
    };
    // The copy-list entries reserved (one per descriptor at most: runs merge them).
    let (pending, entries, mappings) = if let Some((device, shift)) = single_region(&mut resolver, &req.bounds) {
        // Listing needs no registry: every address is the descriptor's own or
        // shifted by one constant, and the peer mapping is held. Letting the
        // lock go first lets concurrent requests of this agent list at once
        // instead of one after the other.
        let mappings = std::mem::take(&mut resolver.mappings);
        drop(resolver);
        drop(local);
        // Each thread lists its slice of the request into its own range of one
        // batch (a run of merged descriptors takes one entry, so a slice's
        // length bounds its entries) and issues while it lists. Listing on one
        // thread was measured and not kept: at 4 KiB blocks it made the submit
        // call 4x longer (docs/gpu.md).
        let batch = batch::Batch::new(device, req.local.len())?;
        let pending = batch.submit_sliced(&parallel::slices(req.local.len()), |range, writer| {
            for run in coalesce::runs(&req.local[range.clone()], &req.remote[range]) {
                writer.push(copy(run.local.addr, run.remote.addr.wrapping_add(shift), run.len()))?;
            }
            Ok(())
        })?;
        (pending, req.local.len(), mappings)
    } else {
        // Several regions: check every descriptor before anything moves, and
        // list under the lock, as each descriptor is looked up again.
        let mut count = 0usize;
        for run in coalesce::runs(req.local, req.remote) {
            if resolver.resolve(run.local.addr, run.remote.addr, run.len()).is_none() {
                return Ok(None);
            }
            count += 1;
        }
        let Some(device) = resolver.device else { return Ok(None) };
        let copies = coalesce::runs(req.local, req.remote).map(|run| {
            let (l, r) = resolver
                .resolve(run.local.addr, run.remote.addr, run.len())
                .ok_or_else(|| Error::invalid("registrations changed during submit"))?;
            Ok(copy(l, r, run.len()))
        });
        let pending = batch::submit(device, count, copies)?;
        let mappings = std::mem::take(&mut resolver.mappings);
        drop(resolver);
        drop(local);
        (pending, count, mappings)
    };
    static ROUTE: Lazy<Arc<CString>> = Lazy::new(|| Arc::new(CString::new("cuda_ipc_batch").unwrap()));
    let record = TransferRecord::start(
        &remote.stats,
        req.op,
        req.bounds.bytes,
        req.local.len(),
        entries,
        kvx_xfer_path::KVX_PATH_CUDA_IPC_BATCH,
        ROUTE.clone(),
    );
    let shared = TransferShared::tracked(remote, agent.core.timeout, record);
    let worker = agent.core.worker.0.clone();
    let job = Job {
        pending,
        shared: shared.clone(),
        worker: worker.clone(),
        remote: remote.clone(),
        sync: req.sync_message.map(|m| (agent.core.notification_header.clone(), m.to_vec())),
        _mappings: mappings,
    };
    COMPLETER.lock().send(job).map_err(|_| {
        Error::new(crate::core::error::kvx_status::KVX_ERR_INTERNAL, "CUDA IPC completion thread is gone")
    })?;
    Ok(Some(UcxTransfer { shared, worker }))
}
