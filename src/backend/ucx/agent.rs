//! Transfer agent over UCX: memory registered with `ucp_mem_map`, peers
//! reached through their worker address with rkeys from their descriptor,
//! READ/WRITE as `ucp_get_nbx`/`ucp_put_nbx` closed by one endpoint flush,
//! notifications as active messages sent after that flush.

use super::ops::Op;
use super::sys::*;
use super::worker::{ucx_error, Endpoint, Worker, WorkerOwner};
use crate::core::auth::PeerAuth;
use crate::core::coalesce;
use crate::core::completion::Completion;
use crate::core::control::ControlServer;
use crate::core::descriptor_service::{self, DescribedAgent};
use crate::core::error::{kvx_status, Error, Result};
use crate::core::memory::{kvx_memory_desc, kvx_memory_type, RegionLookup, RegionMap, Registrations};
use crate::core::notify::NotificationQueue;
use crate::core::select::kvx_backend;
use crate::core::stats::{kvx_xfer_path, PeerStats, Scope, ScopeKind, TrackedCompletion, TransferRecord};
use crate::core::wire::{self, AgentDescriptor, RemoteRegion};
use crate::dispatch::{kvx_transfer_op, kvx_transfer_state, AgentSettings, Transfer, TransferAgent, TransferRequest};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

#[path = "ipc.rs"]
mod ipc;

/// Active-message id of notifications (sync messages).
const AM_NOTIFY: u32 = 0x6b76;

/// UCX's part of a local registration (`Registrations` keeps type, device and references).
struct LocalRegion {
    memh: ucp_mem_h,
    packed_key: Vec<u8>,
    end: u64,
    ipc: Option<crate::cuda::ipc::Export>,
}

struct RemoteKey {
    rkey: ucp_rkey_h,
    mem_type: kvx_memory_type,
}

/// A loaded peer: its endpoint and the keys to its regions. Transfers hold
/// it while in flight, so keys outlive every operation that uses them.
struct RemoteAgent {
    name: String,
    descriptor: Vec<u8>,
    regions: RegionMap<RemoteKey>,
    endpoint: Endpoint,
    ipc: Option<ipc::PeerIpc>,
    /// Transfers in flight to this peer, failed together when the peer fails.
    pending: Mutex<Vec<Weak<TransferShared>>>,
    stats: Arc<PeerStats>,
    /// The transports UCX selected for this peer's endpoint.
    transport: Arc<CString>,
}

unsafe impl Send for RemoteAgent {}
unsafe impl Sync for RemoteAgent {}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        let worker = self.endpoint.worker.clone();
        let _g = worker.lock();
        if worker.is_released() {
            return; // the keys went with the worker
        }
        for (_, key) in self.regions.drain() {
            // SAFETY: the key was unpacked on this endpoint; no operation uses it any more.
            unsafe { (worker.api().ucp_rkey_destroy)(key.rkey) };
        }
    }
}

struct AgentCore {
    name: String,
    /// Every notification's header names this agent: encoded once.
    notification_header: Vec<u8>,
    worker: WorkerOwner,
    timeout: Duration,
    local: Mutex<Registrations<LocalRegion>>,
    remotes: RwLock<HashMap<String, Arc<RemoteAgent>>>,
    notifications: Arc<NotificationQueue>,
    auth: PeerAuth,
    stats: Arc<Scope>,
}

unsafe impl Send for AgentCore {}
unsafe impl Sync for AgentCore {}

pub struct UcxAgent {
    // Field order is drop order: stop serving peers, then forget them, then the worker.
    listener: Option<ControlServer>,
    core: Arc<AgentCore>,
}

unsafe extern "C" fn notification_arrived(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const ucp_am_recv_param_t,
) -> ucs_status_t {
    let queue = &*(arg as *const NotificationQueue);
    if !param.is_null() && (*param).recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV != 0 {
        crate::log_at!(Error, "notification dropped: rendezvous delivery is not expected");
        return UCS_OK;
    }
    let header = std::slice::from_raw_parts(header as *const u8, header_length);
    match wire::decode_notification_header(header) {
        Ok(sender) if length <= wire::MAX_NOTIFICATION => {
            let message =
                if length == 0 { Vec::new() } else { std::slice::from_raw_parts(data as *const u8, length).to_vec() };
            queue.push(sender, message);
        }
        Ok(sender) => crate::log_at!(Error, "notification from {sender:?} dropped: {length} bytes is too large"),
        Err(e) => crate::log_at!(Error, "malformed notification dropped: {e}"),
    }
    UCS_OK
}

impl AgentCore {
    fn descriptor(&self) -> AgentDescriptor {
        let local = self.local.lock();
        let regions = local
            .iter()
            .map(|(&(addr, len), r)| RemoteRegion {
                addr,
                len,
                mem_type: r.mem_type,
                device_id: r.device_id,
                key: r.native.packed_key.clone(),
            })
            .collect();
        AgentDescriptor {
            backend: kvx_backend::KVX_BACKEND_UCX as u8,
            name: self.name.clone(),
            endpoint: self.worker.address().to_vec(),
            regions,
            ipc: ipc::export_section(local.regions()),
        }
    }

    fn remote(&self, name: &str) -> Result<Arc<RemoteAgent>> {
        if let Some(r) = self.remotes.read().get(name) {
            return Ok(r.clone());
        }
        if name == self.name {
            // Loop-back transfers and self-notifications need no explicit load.
            self.load(name, &self.descriptor().encode(), Instant::now())?;
            return self.remote(name);
        }
        Err(Error::not_found(format!("remote agent {name:?} is not loaded")))
    }

    /// The loop-back view of this agent is derived from its registrations:
    /// drop it whenever they change, and `remote` rebuilds it on next use.
    fn forget_self_view(&self) {
        let stale = self.remotes.write().remove(&self.name);
        drop(stale);
    }

    /// Load a peer from its descriptor; `started` is when its setup began (for the setup time).
    fn load(&self, name: &str, bytes: &[u8], started: Instant) -> Result<()> {
        let desc = AgentDescriptor::decode(bytes)?;
        if desc.backend != kvx_backend::KVX_BACKEND_UCX as u8 {
            return Err(Error::invalid(format!(
                "descriptor of {:?} comes from backend {} but this agent uses UCX",
                desc.name, desc.backend
            )));
        }
        if desc.name != name {
            return Err(Error::invalid(format!("descriptor belongs to agent {:?}, not {name:?}", desc.name)));
        }
        if let Some(existing) = self.remotes.read().get(name) {
            if existing.descriptor == bytes
                && !existing.endpoint.state.failed.load(std::sync::atomic::Ordering::Acquire)
            {
                return Ok(());
            }
        }
        let peer = self.stats.peer(name);
        let endpoint = Endpoint::connect(&self.worker, &desc.endpoint).inspect_err(|e| {
            self.stats.connection_setup(&peer, started, false);
            peer.log_failure(crate::core::log::Level::Warn, "load_failed", e.status, &e.message, Vec::new());
        })?;
        let mut regions: RegionMap<RemoteKey> = RegionMap::default();
        {
            let _g = self.worker.lock();
            for r in &desc.regions {
                let mut rkey: ucp_rkey_h = std::ptr::null_mut();
                // SAFETY: the packed key bytes are only parsed by UCX, which validates them.
                let st = unsafe {
                    (self.worker.api().ucp_ep_rkey_unpack)(
                        endpoint.handle_locked(name)?,
                        r.key.as_ptr() as *const c_void,
                        &mut rkey,
                    )
                };
                if st != UCS_OK {
                    for (_, k) in regions.drain() {
                        // SAFETY: keys unpacked above on this endpoint.
                        unsafe { (self.worker.api().ucp_rkey_destroy)(k.rkey) };
                    }
                    return Err(Error::malformed(format!(
                        "remote key of region {:#x}+{} is invalid: {}",
                        r.addr,
                        r.len,
                        ucx_error(self.worker.ucx, "rkey", st).message
                    )));
                }
                regions.insert(r.addr, r.len, RemoteKey { rkey, mem_type: r.mem_type });
            }
        }
        let transports = endpoint.transports().unwrap_or_default();
        let ipc = ipc::PeerIpc::from_descriptor(&desc);
        let device_memory = desc.regions.iter().any(|r| r.mem_type == kvx_memory_type::KVX_MEMORY_VRAM)
            || self.local.lock().iter().any(|(_, r)| r.mem_type == kvx_memory_type::KVX_MEMORY_VRAM);
        if let Some(why) = staging_warning(&transports, device_memory, ipc.is_some()) {
            // Once per peer and process: a reload of the same peer says nothing new.
            if peer.transport() != transports {
                peer.log_failure(
                    crate::core::log::Level::Warn,
                    "device_memory_staged",
                    kvx_status::KVX_ERR_TRANSPORT,
                    &why,
                    vec![("transports", serde_json::Value::from(transports.as_str()))],
                );
            }
        }
        peer.set_transport(&transports);
        peer.loaded();
        self.stats.connection_setup(&peer, started, true);
        let remote = Arc::new(RemoteAgent {
            name: name.to_owned(),
            descriptor: bytes.to_vec(),
            regions,
            endpoint,
            ipc,
            pending: Mutex::new(Vec::new()),
            stats: peer,
            transport: Arc::new(CString::new(transports.replace('\0', "")).unwrap_or_default()),
        });
        // When the peer fails (or is invalidated), force-close its endpoint so UCX
        // lets go of every buffer, then fail whatever UCX did not complete itself.
        let weak = Arc::downgrade(&remote);
        let worker = self.worker.0.clone();
        remote.endpoint.state.on_failure.lock().push(Box::new(move || {
            let weak = weak.clone();
            worker.defer(move |_| {
                if let Some(remote) = weak.upgrade() {
                    remote.endpoint.close(true);
                    let reason = remote.endpoint.state.check(&remote.name).err();
                    if let Some(why) = &reason {
                        remote.stats.failed(&why.message);
                    }
                    for shared in remote.pending.lock().drain(..).filter_map(|w| w.upgrade()) {
                        let why =
                            reason.clone().unwrap_or_else(|| Error::peer(format!("peer {}: failed", remote.name)));
                        shared.done.complete(Err(why));
                    }
                }
            });
        }));
        self.remotes.write().insert(name.to_owned(), remote);
        Ok(())
    }
}

impl DescribedAgent for AgentCore {
    fn agent_name(&self) -> &str {
        &self.name
    }
    fn describe(&self) -> Result<Vec<u8>> {
        Ok(descriptor_service::seal(&self.auth, self.descriptor().encode()))
    }
}

/// One posted RMA operation (a run of descriptors contiguous on both
/// sides), resolved before anything is posted.
struct RmaOp {
    local: u64,
    len: u64,
    remote: u64,
    rkey: ucp_rkey_h,
    memh: ucp_mem_h,
}

/// Operations whose space a thread keeps between submissions (64 K x 40 B).
const MAX_KEPT_OPS: usize = 1 << 16;

thread_local! {
    /// Per-thread operation list reused across submissions, so the hot path
    /// allocates nothing per descriptor (nor per request once warm).
    static RMA_OPS: std::cell::RefCell<Vec<RmaOp>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl UcxAgent {
    /// Check every descriptor and fill `ops` with one operation per run of
    /// descriptors contiguous on both sides. A run that crosses from one
    /// registered region into another is split back into its descriptors.
    fn resolve_ops(&self, req: &TransferRequest<'_>, remote: &RemoteAgent, ops: &mut Vec<RmaOp>) -> Result<()> {
        let local = self.core.local.lock();
        let mut locals = RegionLookup::new(local.regions());
        let mut remotes = RegionLookup::new(&remote.regions);
        let mut resolve = |i: usize, l: &kvx_memory_desc, r: &kvx_memory_desc, ops: &mut Vec<RmaOp>| -> Result<()> {
            let region = locals.find(l.addr, l.len).ok_or_else(|| {
                Error::new(
                    kvx_status::KVX_ERR_NOT_REGISTERED,
                    format!("descriptor {i}: local range {:#x}+{} is not registered with this agent", l.addr, l.len),
                )
            })?;
            if region.mem_type != req.local_type {
                return Err(Error::invalid(format!(
                    "descriptor {i}: local range is registered as {:?}, request says {:?}",
                    region.mem_type, req.local_type
                )));
            }
            let key = remotes.find(r.addr, r.len).ok_or_else(|| {
                Error::new(
                    kvx_status::KVX_ERR_NOT_REGISTERED,
                    format!(
                        "descriptor {i}: remote range {:#x}+{} is outside the memory {:?} registered",
                        r.addr, r.len, remote.name
                    ),
                )
            })?;
            if key.mem_type != req.remote_type {
                return Err(Error::invalid(format!(
                    "descriptor {i}: remote range is registered as {:?}, request says {:?}",
                    key.mem_type, req.remote_type
                )));
            }
            if l.len > 0 {
                ops.push(RmaOp { local: l.addr, len: l.len, remote: r.addr, rkey: key.rkey, memh: region.native.memh });
            }
            Ok(())
        };
        for run in coalesce::runs(req.local, req.remote) {
            let merged = resolve(run.first, &run.local, &run.remote, ops);
            if merged.is_err() && run.count > 1 {
                for i in run.first..run.first + run.count {
                    resolve(i, &req.local[i], &req.remote[i], ops)?;
                }
            } else {
                merged?;
            }
        }
        Ok(())
    }

    /// Post a resolved request: every operation, then one endpoint flush whose
    /// completion (after the sync message, if any) completes the transfer.
    fn post(&self, req: &TransferRequest<'_>, remote: &Arc<RemoteAgent>, ops: &[RmaOp]) -> Result<UcxTransfer> {
        let worker = self.core.worker.0.clone();
        let record = TransferRecord::start(
            &remote.stats,
            req.op,
            req.bounds.bytes,
            req.local.len(),
            ops.len(),
            kvx_xfer_path::KVX_PATH_UCX,
            remote.transport.clone(),
        );
        let shared = TransferShared::tracked(remote, self.core.timeout, record);
        let api = worker.api();
        let _g = worker.lock();
        let ep = remote.endpoint.handle_locked(&remote.name)?;
        let mut param: ucp_request_param_t = zeroed();
        for op in ops {
            param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
            param.memh = op.memh;
            // SAFETY: ranges were checked against registrations; requests complete before the flush does.
            let ret = unsafe {
                match req.op {
                    kvx_transfer_op::KVX_OP_WRITE => {
                        (api.ucp_put_nbx)(ep, op.local as *const c_void, op.len as usize, op.remote, op.rkey, &param)
                    }
                    kvx_transfer_op::KVX_OP_READ => {
                        (api.ucp_get_nbx)(ep, op.local as *mut c_void, op.len as usize, op.remote, op.rkey, &param)
                    }
                }
            };
            match classify(ret) {
                Posted::Done => {}
                // SAFETY: we do not track individual requests; the flush covers them.
                Posted::Pending(r) => unsafe { (api.ucp_request_free)(r) },
                Posted::Failed(st) => {
                    let e = ucx_error(worker.ucx, "posting transfer", st);
                    fail_closed(remote, &e);
                    shared.done.complete(Err(e.clone()));
                    shared.quiet.complete(Ok(()));
                    return Ok(UcxTransfer { shared, worker: worker.clone() });
                }
            }
        }
        // One flush completes when every operation above is complete at the target.
        let flush = Op::new(&worker, "transfer flush");
        let sync = req.sync_message.map(|m| m.to_vec());
        let header = self.core.notification_header.clone();
        let after = shared.clone();
        let remote_for_sync = remote.clone();
        let worker_for_sync = worker.clone();
        flush.then(move |w, outcome| {
            // Everything posted has ended: the local memory is the caller's again.
            after.quiet.complete(Ok(()));
            match (outcome, sync) {
                // Cancelled meanwhile: the peer must not be told the data is there.
                (Ok(_), Some(_)) if after.done.is_done() => {}
                (Ok(_), Some(message)) => {
                    // Data is visible at the target: now the sync message.
                    let note = Op::new(&worker_for_sync, "sync message");
                    let done = after.clone();
                    note.then(move |_, r| {
                        done.done.complete(r.map(|_| ()));
                    });
                    post_notification(w, &remote_for_sync, header, message, &note);
                }
                (outcome, _) => {
                    if let Err(e) = &outcome {
                        fail_closed(&remote_for_sync, e);
                    }
                    after.done.complete(outcome.map(|_| ()));
                }
            }
        });
        let fparam = flush.param(false);
        // SAFETY: under the worker lock.
        let ret = unsafe { (api.ucp_ep_flush_nbx)(ep, &fparam) };
        flush.posted(&fparam, ret);
        drop(_g);
        worker.wake();
        Ok(UcxTransfer { shared, worker })
    }
}

/// A transfer that failed because of its peer fails the peer closed, even
/// before UCX reports the endpoint: later calls are refused, not posted to an
/// endpoint UCX may never complete anything on.
fn fail_closed(remote: &RemoteAgent, error: &Error) {
    if error.status == kvx_status::KVX_ERR_PEER {
        remote.endpoint.state.fail(format!("a transfer to this peer failed: {error}"));
    }
}

/// Send a notification only if UCX can finish it inside this call (a small
/// message over a transport with room), from the caller's buffers: no request,
/// no copies. False when it could not, and nothing was sent; the caller then
/// posts it as an operation, which also reports any error. Caller holds the lock.
fn notification_sent_now(worker: &Worker, remote: &RemoteAgent, header: &[u8], message: &[u8]) -> bool {
    let Ok(ep) = remote.endpoint.handle_locked(&remote.name) else { return false };
    let mut param: ucp_request_param_t = zeroed();
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    // SAFETY: the buffers outlive the call, which either completes or fails without a request.
    let ret = unsafe {
        (worker.api().ucp_am_send_nbx)(
            ep,
            AM_NOTIFY,
            header.as_ptr() as *const c_void,
            header.len(),
            message.as_ptr() as *const c_void,
            message.len(),
            &param,
        )
    };
    match classify(ret) {
        Posted::Done => true,
        Posted::Failed(_) => false,
        // Not expected with FORCE_IMM_CMPL. UCX reads the caller's buffers
        // until the request ends, so drive it to its end before returning.
        Posted::Pending(req) => {
            // SAFETY: the request is live until freed; the caller holds the worker lock.
            unsafe {
                while (worker.api().ucp_request_check_status)(req) == UCS_INPROGRESS {
                    (worker.api().ucp_worker_progress)(worker.handle);
                }
                let done = (worker.api().ucp_request_check_status)(req) == UCS_OK;
                (worker.api().ucp_request_free)(req);
                done
            }
        }
    }
}

/// Send one notification to `remote` as an eager active message (caller holds the worker lock).
fn post_notification(worker: &Worker, remote: &RemoteAgent, header: Vec<u8>, message: Vec<u8>, op: &Arc<Op>) {
    let ep = match remote.endpoint.handle_locked(&remote.name) {
        Ok(ep) => ep,
        Err(e) => return op.fail_unposted(e),
    };
    let mut param = op.param(false);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    let (hp, hl, mp, ml) = (header.as_ptr(), header.len(), message.as_ptr(), message.len());
    op.keep(Box::new((header, message)));
    // SAFETY: buffers are kept alive by the op until completion; caller holds the lock.
    let ret = unsafe {
        (worker.api().ucp_am_send_nbx)(ep, AM_NOTIFY, hp as *const c_void, hl, mp as *const c_void, ml, &param)
    };
    op.posted(&param, ret);
}

impl TransferAgent for UcxAgent {
    type Transfer = UcxTransfer;

    fn create(settings: &AgentSettings) -> Result<Self> {
        let worker = WorkerOwner(Worker::new(&settings.name)?);
        let notifications = Arc::new(NotificationQueue::default());
        {
            let mut p: ucp_am_handler_param_t = zeroed();
            p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID
                | UCP_AM_HANDLER_PARAM_FIELD_CB
                | UCP_AM_HANDLER_PARAM_FIELD_ARG
                | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
            p.id = AM_NOTIFY;
            p.flags = UCP_AM_FLAG_WHOLE_MSG;
            p.cb = Some(notification_arrived);
            p.arg = Arc::as_ptr(&notifications) as *mut c_void;
            let _g = worker.lock();
            // SAFETY: the queue outlives the worker's handler (both owned by the core).
            let st = unsafe { (worker.api().ucp_worker_set_am_recv_handler)(worker.handle, &p) };
            if st != UCS_OK {
                return Err(ucx_error(worker.ucx, "cannot install notification handler", st));
            }
        }
        let core = Arc::new(AgentCore {
            name: settings.name.clone(),
            notification_header: wire::encode_notification_header(&settings.name),
            worker,
            timeout: Duration::from_millis(settings.timeout_ms),
            local: Mutex::new(Registrations::new(crate::cuda::locate_pointer)),
            remotes: RwLock::new(HashMap::new()),
            notifications,
            auth: settings.auth.clone(),
            stats: Scope::new(ScopeKind::Agent, "UCX", &settings.name),
        });
        let listener = descriptor_service::serve(settings, &core)?;
        Ok(UcxAgent { listener, core })
    }

    fn timeout_ms(&self) -> u64 {
        self.core.timeout.as_millis() as u64
    }

    fn register_memory(&self, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()> {
        let worker = &self.core.worker;
        let result = self.core.local.lock().register(mem_type, descs, |new| {
            let mut mapped: Vec<LocalRegion> = Vec::with_capacity(new.len());
            for d in new {
                match map_region(worker, mem_type, d) {
                    Ok(region) => mapped.push(region),
                    Err(e) => {
                        // All or nothing: undo this call's mappings.
                        for region in mapped {
                            unmap_region(worker, region);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(mapped)
        });
        self.core.forget_self_view();
        result
    }

    fn deregister_memory(&self, _mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()> {
        let worker = &self.core.worker;
        let result = self.core.local.lock().deregister(descs, |_, region| unmap_region(worker, region.native));
        self.core.forget_self_view();
        result
    }

    fn local_descriptor(&self) -> Result<Vec<u8>> {
        self.core.describe()
    }

    fn connection_info(&self) -> Result<String> {
        Ok(descriptor_service::connection_info(self.listener.as_ref()))
    }

    fn load_remote(&self, name: &str, descriptor: &[u8]) -> Result<()> {
        self.core.load(name, descriptor_service::open(&self.core.auth, name, descriptor)?, Instant::now())
    }

    fn load_remote_by_connection_info(
        &self,
        name: &str,
        connection_info: &str,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let started = Instant::now();
        let timeout = deadline.map_or(self.core.timeout, |d| d.saturating_duration_since(started));
        let descriptor =
            descriptor_service::fetch(name, connection_info, &self.core.auth, timeout).inspect_err(|e| {
                let peer = self.core.stats.peer(name);
                self.core.stats.connection_setup(&peer, started, false);
                peer.log_failure(crate::core::log::Level::Warn, "load_failed", e.status, &e.message, Vec::new());
            })?;
        self.core.load(name, descriptor_service::open(&self.core.auth, name, &descriptor)?, started)
    }

    fn invalidate_remote(&self, name: &str) -> Result<()> {
        let removed = self.core.remotes.write().remove(name);
        match removed {
            Some(remote) => {
                remote.stats.invalidated();
                remote.endpoint.state.fail(format!("agent {name:?} was invalidated"));
                Ok(())
            }
            None => Err(Error::not_found(format!("remote agent {name:?} is not loaded"))),
        }
    }

    fn check_remote_descs(&self, name: &str, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<bool> {
        let remote = match self.core.remote(name) {
            Ok(r) => r,
            Err(e) if e.status == kvx_status::KVX_ERR_NOT_FOUND => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(descs
            .iter()
            .all(|d| remote.regions.find_containing(d.addr, d.len).is_some_and(|(_, k)| k.mem_type == mem_type)))
    }

    fn submit(&self, req: &TransferRequest<'_>) -> Result<UcxTransfer> {
        let remote = self.core.remote(req.remote_name)?;
        remote.endpoint.state.check(&remote.name)?;
        if let Some(batched) = ipc::try_submit(self, req, &remote)? {
            return Ok(batched);
        }
        RMA_OPS.with(|ops| {
            // A fresh list if this thread is somehow already inside a submission.
            let mut fresh = Vec::new();
            let mut reused = ops.try_borrow_mut();
            let ops = match reused.as_mut() {
                Ok(list) => &mut **list,
                Err(_) => &mut fresh,
            };
            ops.clear();
            let result = self.resolve_ops(req, &remote, ops).and_then(|()| self.post(req, &remote, ops));
            ops.clear();
            // Keep the list warm for typical requests without pinning a huge one's memory.
            ops.shrink_to(MAX_KEPT_OPS);
            result
        })
    }

    fn notify(&self, name: &str, message: &[u8]) -> Result<()> {
        if message.len() > wire::MAX_NOTIFICATION {
            return Err(Error::invalid(format!("notification exceeds {} bytes", wire::MAX_NOTIFICATION)));
        }
        if name == self.core.name {
            self.core.notifications.push(name.to_owned(), message.to_vec());
            return Ok(());
        }
        let remote = self.core.remote(name)?;
        remote.endpoint.state.check(name)?;
        let worker = self.core.worker.0.clone();
        {
            let _g = worker.lock();
            if notification_sent_now(&worker, &remote, &self.core.notification_header, message) {
                return Ok(());
            }
        }
        let op = Op::new(&worker, "notification");
        {
            let _g = worker.lock();
            post_notification(&worker, &remote, self.core.notification_header.clone(), message.to_vec(), &op);
        }
        worker.wake();
        // A peer that failed or was invalidated meanwhile cancels the message:
        // report why, as its transfers do, rather than UCX's bare cancel.
        op.wait(Some(Instant::now() + self.core.timeout))
            .map(|_| ())
            .map_err(|e| remote.endpoint.state.check(name).err().unwrap_or(e))
    }

    fn take_notifications(&self) -> Result<Vec<(String, Vec<u8>)>> {
        // Deliver anything already arrived before reporting.
        self.core.worker.pump();
        let arrived = self.core.notifications.drain();
        self.core.stats.notifications_drained(&arrived);
        Ok(arrived)
    }

    fn stats(&self) -> &Arc<Scope> {
        &self.core.stats
    }
}

/// Why device memory to a peer would be staged through host memory or TCP,
/// or None when it travels as expected (CUDA IPC, RDMA, or kvxfer's own
/// batched CUDA IPC path, which bypasses UCX's transports).
fn staging_warning(transports: &str, device_memory: bool, batched_ipc: bool) -> Option<String> {
    if !device_memory || batched_ipc || transports.is_empty() {
        return None;
    }
    let names: Vec<&str> = transports.split(',').map(|t| t.split('/').next().unwrap_or(t)).collect();
    let direct =
        |t: &str| t == "cuda_ipc" || t == "gdr_copy" || ["rc", "dc", "ud", "ib"].iter().any(|p| t.starts_with(p));
    if names.iter().any(|t| direct(t)) {
        return None;
    }
    let shared_memory = |t: &&str| ["cma", "posix", "sysv", "xpmem", "knem"].contains(t);
    let how = if names.iter().any(shared_memory) { "host staging (cuda_copy over shared memory)" } else { "TCP" };
    Some(format!(
        "device memory to this peer would travel through {how}: UCX selected {transports}, not CUDA IPC or RDMA (UCX_TLS={})",
        std::env::var("UCX_TLS").unwrap_or_else(|_| "unset".into())
    ))
}

/// Map one region with UCX and pack its remote key (and CUDA IPC handle, for device memory).
fn map_region(worker: &Worker, mem_type: kvx_memory_type, d: &kvx_memory_desc) -> Result<LocalRegion> {
    let mut params: ucp_mem_map_params_t = zeroed();
    params.field_mask =
        UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = d.addr as *mut c_void;
    params.length = d.len as usize;
    params.memory_type =
        if mem_type == kvx_memory_type::KVX_MEMORY_VRAM { UCS_MEMORY_TYPE_CUDA } else { UCS_MEMORY_TYPE_HOST };
    let mut memh: ucp_mem_h = std::ptr::null_mut();
    let _g = worker.lock();
    // SAFETY: the caller promises the range is valid memory of this type.
    let st = unsafe { (worker.api().ucp_mem_map)(worker.context(), &params, &mut memh) };
    if st != UCS_OK {
        return Err(ucx_error(worker.ucx, &format!("cannot register {:#x}+{}", d.addr, d.len), st));
    }
    let mut buf: *mut c_void = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: memh was just mapped on this context.
    let st = unsafe { (worker.api().ucp_rkey_pack)(worker.context(), memh, &mut buf, &mut size) };
    if st != UCS_OK {
        unsafe { (worker.api().ucp_mem_unmap)(worker.context(), memh) };
        return Err(ucx_error(worker.ucx, "cannot pack remote key", st));
    }
    // SAFETY: UCX returned `size` bytes at `buf`, released right after copying.
    let packed_key = unsafe { std::slice::from_raw_parts(buf as *const u8, size).to_vec() };
    unsafe { (worker.api().ucp_rkey_buffer_release)(buf) };
    let ipc = ipc::export_region(mem_type, d.addr, d.len, d.device_id);
    Ok(LocalRegion { memh, packed_key, end: d.addr + d.len, ipc })
}

fn unmap_region(worker: &Worker, region: LocalRegion) {
    let _g = worker.lock();
    // SAFETY: mapped on this context; peers holding the old key get errors, not our memory.
    unsafe { (worker.api().ucp_mem_unmap)(worker.context(), region.memh) };
}

impl Drop for UcxAgent {
    fn drop(&mut self) {
        self.listener.take();
        let remotes: Vec<_> = self.core.remotes.write().drain().map(|(_, r)| r).collect();
        drop(remotes);
        let regions: Vec<_> = self.core.local.lock().drain().collect();
        for (_, region) in regions {
            unmap_region(&self.core.worker, region.native);
        }
    }
}

struct TransferShared {
    done: TrackedCompletion,
    /// Set once UCX (or the GPU) no longer touches the local memory: the
    /// flush or the batched copy ended, or nothing was posted.
    quiet: Completion<()>,
    /// What a cancel did, shown after the transfer's outcome.
    cancel_note: Mutex<Option<String>>,
    deadline: Instant,
    remote: Mutex<Option<Arc<RemoteAgent>>>,
}

impl TransferShared {
    /// A new transfer to `remote`, listed among the peer's pending transfers so a peer failure fails it.
    fn tracked(remote: &Arc<RemoteAgent>, timeout: Duration, record: TransferRecord) -> Arc<TransferShared> {
        let shared = Arc::new(TransferShared {
            done: TrackedCompletion::new(record),
            quiet: Completion::default(),
            cancel_note: Mutex::new(None),
            deadline: Instant::now() + timeout,
            remote: Mutex::new(Some(remote.clone())),
        });
        let mut pending = remote.pending.lock();
        pending.retain(|w| w.upgrade().is_some_and(|t| !t.done.is_done()));
        pending.push(Arc::downgrade(&shared));
        drop(pending);
        shared
    }
}

pub struct UcxTransfer {
    shared: Arc<TransferShared>,
    worker: Arc<Worker>,
}

impl UcxTransfer {
    /// Past its deadline a transfer fails closed: the peer's endpoint is
    /// marked failed so nothing more from it is trusted.
    fn expire_if_late(&self) {
        if Instant::now() >= self.shared.deadline && !self.shared.done.is_done() {
            let won =
                self.shared.done.complete(Err(Error::timeout("transfer did not complete within the agent's timeout")));
            if won {
                if let Some(remote) = self.shared.remote.lock().as_ref() {
                    remote.endpoint.state.fail("a transfer to this peer timed out".into());
                }
            }
        }
    }
}

impl Transfer for UcxTransfer {
    fn is_completed(&self) -> bool {
        self.worker.pump();
        self.expire_if_late();
        matches!(self.shared.done.peek(), Some(Ok(())))
    }

    fn wait(&self, deadline: Option<Instant>) -> kvx_transfer_state {
        let limit = deadline.map_or(self.shared.deadline, |d| d.min(self.shared.deadline));
        let outcome = self.shared.done.wait(Some(limit), || self.worker.pump());
        if outcome.is_none() {
            // The timed wait ends only at `limit`: when that is the transfer's deadline, this expires it.
            self.expire_if_late();
        }
        match self.shared.done.peek() {
            None => kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS,
            Some(Ok(())) => kvx_transfer_state::KVX_TRANSFER_SUCCESS,
            Some(Err(_)) => kvx_transfer_state::KVX_TRANSFER_FAILURE,
        }
    }

    fn release(&self) -> bool {
        if !self.shared.done.is_done() {
            return false;
        }
        self.shared.remote.lock().take();
        true
    }

    fn last_status(&self) -> String {
        let outcome = match self.shared.done.peek() {
            None => "in progress".into(),
            Some(Ok(())) => "success".into(),
            Some(Err(e)) => e.to_string(),
        };
        match self.shared.cancel_note.lock().as_ref() {
            Some(note) => format!("{outcome}; {note}"),
            None => outcome,
        }
    }

    fn record(&self) -> &TransferRecord {
        &self.shared.done.record
    }

    fn cancel(&self) -> bool {
        let canceled = self
            .shared
            .done
            .complete(Err(Error::new(kvx_status::KVX_ERR_CANCELED, "transfer canceled by release() while in flight")));
        let note = match self.quiesce() {
            Ok(how) if canceled => how,
            Ok(_) => {
                self.shared.remote.lock().take();
                return true;
            }
            Err(why) => {
                *self.shared.cancel_note.lock() = Some(why);
                return false;
            }
        };
        *self.shared.cancel_note.lock() = Some(note.into());
        self.shared.remote.lock().take();
        true
    }
}

/// How long a cancel lets posted operations drain before it closes the peer's endpoint, and then again after.
const CANCEL_DRAIN: Duration = Duration::from_secs(2);

impl UcxTransfer {
    /// Wait until UCX lets go of the local memory. RMA operations cannot be
    /// cancelled one by one: let them drain (the peer stays usable), and
    /// only if they do not, close the endpoint, which ends them all.
    fn quiesce(&self) -> std::result::Result<&'static str, String> {
        let pump = || self.worker.pump();
        if self.shared.quiet.wait(Some(Instant::now() + CANCEL_DRAIN), pump).is_some() {
            return Ok("what was already posted finished; no sync message was sent; the peer stays usable");
        }
        let Some(remote) = self.shared.remote.lock().clone() else {
            return Err("cancel: the transfer's peer is gone but UCX still holds the local memory".into());
        };
        remote.endpoint.state.fail("a transfer to this peer was canceled and did not drain".into());
        self.worker.wake();
        if self.shared.quiet.wait(Some(Instant::now() + CANCEL_DRAIN), pump).is_some() {
            return Ok("posted operations did not drain: the peer's endpoint was closed and the peer marked failed (load it again)");
        }
        Err("cancel: UCX did not let go of the local memory even after the peer's endpoint was closed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::staging_warning;

    #[test]
    fn device_memory_over_tcp_or_host_staging_is_named() {
        let tcp = staging_warning("tcp/lo,cuda_copy/cuda", true, false).unwrap();
        assert!(tcp.contains("TCP") && tcp.contains("tcp/lo"), "{tcp}");
        let staged = staging_warning("sysv/memory,cma/memory,cuda_copy/cuda", true, false).unwrap();
        assert!(staged.contains("host staging"), "{staged}");
        let default_tls = staging_warning("tcp/lo,cma/memory,cuda_copy/cuda", true, false).unwrap();
        assert!(default_tls.contains("host staging"), "{default_tls}");
        assert_eq!(staging_warning("cuda_ipc/cuda,sysv/memory", true, false), None);
        assert_eq!(staging_warning("rc_mlx5/mlx5_0:1,tcp/eth0", true, false), None);
        assert_eq!(staging_warning("tcp/lo", false, false), None, "host memory: nothing to say");
        assert_eq!(staging_warning("tcp/lo", true, true), None, "kvxfer's batched IPC path carries it");
    }
}
