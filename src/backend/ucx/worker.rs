//! One UCP context and worker with its progress thread. Every UCX call on a
//! worker happens under `Worker::lock` (the worker runs in SERIALIZED mode),
//! so any thread may post; completion callbacks run inside progress, under
//! the same lock, and must not block.
//!
//! Progress: a thread drives the worker and sleeps on UCX's event fd
//! (`ucp_worker_arm`) when a round finds nothing to do (after a burst of
//! work, once nothing came for a moment: `linger`), also while operations are
//! outstanding: a receive or transfer waiting on a peer costs no wake-ups
//! until the peer's bytes arrive. Threads waiting on an operation drive
//! progress briefly before sleeping (no hand-off on the fast path).

use super::loader::{self, LoadedUcx};
use super::sys::*;
use crate::core::error::{kvx_status, Error, Result};
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The longest sleep on the event fd: the bound on a wake-up UCX never
/// signals. Right after activity the thread looks again within `FIRST_POLL_MS`,
/// doubling the sleep with each quiet round up to this.
const MAX_POLL_MS: i32 = 100;
const FIRST_POLL_MS: i32 = 1;

/// How long the progress thread keeps looking after it last found work in a
/// burst (`Burst`) before it sleeps on the event fd: a peer's emulated puts and
/// gets (UCX emulates RMA where peer error handling is on) need this side's
/// progress, so a thread that sleeps after each one adds a wake-up to every
/// request. It costs a core for that long after a burst, never while idle.
/// `KVX_UCX_LINGER_US` sets it (0: sleep at once).
fn linger() -> std::time::Duration {
    static LINGER: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *LINGER.get_or_init(|| linger_from(std::env::var("KVX_UCX_LINGER_US").ok().as_deref()))
}
const DEFAULT_LINGER_US: u64 = 50;

fn linger_from(value: Option<&str>) -> std::time::Duration {
    let us = match value.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(us)) => us,
        Some(Err(_)) => {
            crate::log_at!(
                Warn,
                "KVX_UCX_LINGER_US={value:?} is not a number of microseconds; using {DEFAULT_LINGER_US}"
            );
            DEFAULT_LINGER_US
        }
        None => DEFAULT_LINGER_US,
    };
    std::time::Duration::from_micros(us)
}

/// When the progress thread lingers: only after work that followed earlier work
/// within the linger time, so a lone event (a connection's handshake message, a
/// notification now and then) is handled and slept after as before, and only
/// bursts (requests back to back, a request's many emulated puts) keep it awake.
struct Burst {
    linger: std::time::Duration,
    last_work: Option<std::time::Instant>,
    until: Option<std::time::Instant>,
}

impl Burst {
    fn new(linger: std::time::Duration) -> Burst {
        Burst { linger, last_work: None, until: None }
    }

    fn worked(&mut self) {
        if self.linger.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        if self.last_work.is_some_and(|last| now.saturating_duration_since(last) < self.linger) {
            self.until = Some(now + self.linger);
        }
        self.last_work = Some(now);
    }

    fn lingering(&mut self) -> bool {
        match self.until {
            Some(until) if std::time::Instant::now() < until => true,
            Some(_) => {
                self.until = None;
                false
            }
            None => false,
        }
    }
}

type Deferred = Box<dyn FnOnce(&Worker) + Send>;

pub struct Worker {
    pub ucx: &'static LoadedUcx,
    context: ucp_context_h,
    pub handle: ucp_worker_h,
    /// Re-entrant: dropping the last reference to a peer (which closes its
    /// endpoint) may happen in deferred work that already holds the lock.
    lock: ReentrantMutex<()>,
    address: Vec<u8>,
    efd: i32,
    deferred: Mutex<Vec<Deferred>>,
    stop: AtomicBool,
    /// Operations in flight (a release waits for them to settle).
    pub busy: AtomicUsize,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// UCX's worker and context are destroyed: every later UCX call on them is skipped.
    released: AtomicBool,
}

// SAFETY: the raw UCX handles are only used under `lock` (SERIALIZED mode).
unsafe impl Send for Worker {}
unsafe impl Sync for Worker {}

pub fn status_text(ucx: &LoadedUcx, status: ucs_status_t) -> String {
    // SAFETY: ucs_status_string returns a static string for any status.
    unsafe { CStr::from_ptr((ucx.api.ucs_status_string)(status)).to_string_lossy().into_owned() }
}

/// Map a UCX failure to a kvxfer error.
pub fn ucx_error(ucx: &LoadedUcx, what: &str, status: ucs_status_t) -> Error {
    let kind = match status {
        -25 | -80 | -6 | -20 | -21 | -22 | -23 | -24 | -26 => kvx_status::KVX_ERR_PEER, // reset, timeout, unreachable, ...
        UCS_ERR_CANCELED => kvx_status::KVX_ERR_CANCELED,
        UCS_ERR_MESSAGE_TRUNCATED => kvx_status::KVX_ERR_SIZE_MISMATCH,
        _ => kvx_status::KVX_ERR_TRANSPORT,
    };
    Error::new(kind, format!("{what}: UCX {}", status_text(ucx, status)))
}

/// Options kvxfer sets unless the user's `UCX_*` environment sets them.
///
/// Every transport but the shared-memory FIFOs (`posix`, `sysv`, `xpmem`):
/// a peer killed inside a send leaves a half-written element in the FIFO of
/// the process it sent to, and UCX reads that FIFO in order, so the survivor
/// never again receives a message over shared memory, from any peer, until it
/// restarts (tests/faults.rs `kill_mid_transfer` wedged 10 of 60 rounds).
/// Messages then go over TCP (loopback within a node) and bulk host memory
/// still moves zero-copy (`cma`), device memory over `cuda_ipc`;
/// docs/failure-model.md has the measured cost.
/// TCP connects without blocking: a blocking connect that fails (a peer that
/// has exited) makes `ucp_ep_create` fail but leaves its socket open until the
/// worker goes, one per attempt; connected in the background, the failure
/// reaches the endpoint's error handler and the socket is closed with it.
/// Error handling on shared memory (for a user's `UCX_TLS` that names it) and
/// a short keepalive make a dead peer fail its operations in about a second
/// instead of hanging; `cuda_ipc` GET keeps device-memory READs off the emulated path.
const DEFAULT_OPTIONS: [(&str, &str); 5] = [
    ("TLS", "^posix,sysv,xpmem"),
    ("TCP_CONN_NB", "y"),
    ("KEEPALIVE_INTERVAL", "1s"),
    ("MM_ERROR_HANDLING", "y"),
    crate::backend::locate::UCX_CUDA_IPC_GET,
];

impl Worker {
    pub fn new(name: &str) -> Result<Arc<Worker>> {
        let ucx = loader::load()?;
        let api = &ucx.api;
        // SAFETY: standard UCP initialisation with zeroed, masked parameter structs.
        unsafe {
            let mut config: *mut ucp_config_t = std::ptr::null_mut();
            let st = (api.ucp_config_read)(std::ptr::null(), std::ptr::null(), &mut config);
            if st != UCS_OK {
                return Err(ucx_error(ucx, "ucp_config_read", st));
            }
            for (key, value) in DEFAULT_OPTIONS {
                if std::env::var_os(format!("UCX_{key}")).is_none() {
                    let k = CString::new(key).unwrap();
                    let v = CString::new(value).unwrap();
                    let st = (api.ucp_config_modify)(config, k.as_ptr(), v.as_ptr());
                    if st != UCS_OK {
                        crate::log_at!(Debug, "UCX option {key}={value} not applied: {}", status_text(ucx, st));
                    }
                }
            }
            let cname = CString::new(name.replace('\0', "")).unwrap_or_default();
            let mut params: ucp_params_t = zeroed();
            params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
            params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
            params.name = cname.as_ptr();
            let mut context: ucp_context_h = std::ptr::null_mut();
            let st = (api.ucp_init_version)(1, 14, &params, config, &mut context);
            (api.ucp_config_release)(config);
            if st != UCS_OK {
                return Err(ucx_error(ucx, "ucp_init", st));
            }

            let mut wparams: ucp_worker_params_t = zeroed();
            wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
            wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
            let mut handle: ucp_worker_h = std::ptr::null_mut();
            let st = (api.ucp_worker_create)(context, &wparams, &mut handle);
            if st != UCS_OK {
                (api.ucp_cleanup)(context);
                return Err(ucx_error(ucx, "ucp_worker_create", st));
            }
            let cleanup = |e: Error| {
                (api.ucp_worker_destroy)(handle);
                (api.ucp_cleanup)(context);
                e
            };
            let mut addr: *mut ucp_address_t = std::ptr::null_mut();
            let mut addr_len = 0usize;
            let st = (api.ucp_worker_get_address)(handle, &mut addr, &mut addr_len);
            if st != UCS_OK {
                return Err(cleanup(ucx_error(ucx, "ucp_worker_get_address", st)));
            }
            let address = std::slice::from_raw_parts(addr as *const u8, addr_len).to_vec();
            (api.ucp_worker_release_address)(handle, addr);
            let mut efd = -1;
            let st = (api.ucp_worker_get_efd)(handle, &mut efd);
            if st != UCS_OK {
                return Err(cleanup(ucx_error(ucx, "ucp_worker_get_efd", st)));
            }
            let worker = Arc::new(Worker {
                ucx,
                context,
                handle,
                lock: ReentrantMutex::new(()),
                address,
                efd,
                deferred: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                busy: AtomicUsize::new(0),
                thread: Mutex::new(None),
                released: AtomicBool::new(false),
            });
            let w = worker.clone();
            let thread = std::thread::Builder::new()
                .name("kvx-ucx-progress".into())
                .spawn(move || w.progress_thread())
                .map_err(|e| Error::system("cannot start UCX progress thread", e))?;
            *worker.thread.lock() = Some(thread);
            Ok(worker)
        }
    }

    pub fn api(&self) -> &'static UcpApi {
        &self.ucx.api
    }

    pub fn context(&self) -> ucp_context_h {
        self.context
    }

    pub fn address(&self) -> &[u8] {
        &self.address
    }

    /// Hold the worker for a sequence of UCX calls.
    pub fn lock(&self) -> ReentrantMutexGuard<'_, ()> {
        self.lock.lock()
    }

    /// Run `job` under the worker lock at the next progress round. Used by
    /// callbacks, which must not post from inside UCX.
    pub fn defer(&self, job: impl FnOnce(&Worker) + Send + 'static) {
        self.deferred.lock().push(Box::new(job));
        self.wake();
    }

    /// Wake the progress thread (thread-safe without the lock).
    pub fn wake(&self) {
        // Released only when the owner is dropped, which no call may race (documented).
        if !self.is_released() {
            // SAFETY: ucp_worker_signal may be called from any thread.
            unsafe { (self.api().ucp_worker_signal)(self.handle) };
        }
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Destroy UCX's worker and context now (once). Operations UCX never
    /// completed are abandoned with it; their callbacks will not run.
    fn release_ucx(&self) {
        let _g = self.lock.lock();
        if !self.released.swap(true, Ordering::AcqRel) {
            // SAFETY: under the lock, once; every later UCX call checks `released`.
            unsafe {
                (self.api().ucp_worker_destroy)(self.handle);
                (self.api().ucp_cleanup)(self.context);
            }
        }
    }

    /// Progress until idle and run deferred jobs; whether anything happened. Caller holds the lock.
    fn progress_locked(&self) -> bool {
        let mut any = false;
        loop {
            if self.is_released() {
                return any;
            }
            // SAFETY: the caller holds the worker lock.
            let mut events = 0;
            while unsafe { (self.api().ucp_worker_progress)(self.handle) } != 0 {
                events += 1;
            }
            let jobs = std::mem::take(&mut *self.deferred.lock());
            if jobs.is_empty() && events == 0 {
                return any;
            }
            any = true;
            for job in jobs {
                job(self);
            }
        }
    }

    /// Drive progress from a waiting thread if nobody else is.
    pub fn pump(&self) {
        if let Some(_guard) = self.lock.try_lock() {
            self.progress_locked();
        }
    }

    fn progress_thread(self: Arc<Self>) {
        let mut timeout = FIRST_POLL_MS;
        let mut burst = Burst::new(linger());
        while !self.stop.load(Ordering::Acquire) {
            if burst.lingering() {
                // Work came in a burst: keep looking instead of sleeping (see `linger`).
                // A thread posting or waiting holds the lock meanwhile and progresses itself.
                if let Some(_guard) = self.lock.try_lock() {
                    if self.progress_locked() {
                        burst.worked();
                    }
                }
                std::hint::spin_loop();
                continue;
            }
            let (progressed, armed) = {
                let _guard = self.lock.lock();
                let progressed = self.progress_locked();
                // SAFETY: under the lock; arm returns BUSY if events are pending.
                let st = unsafe { (self.api().ucp_worker_arm)(self.handle) };
                (progressed, st == UCS_OK)
            };
            if progressed {
                burst.worked();
            }
            if !armed {
                std::thread::yield_now();
                continue;
            }
            timeout = if progressed { FIRST_POLL_MS } else { (timeout * 2).min(MAX_POLL_MS) };
            if burst.lingering() {
                continue;
            }
            let mut pfd = libc::pollfd { fd: self.efd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, timeout) } > 0 {
                timeout = FIRST_POLL_MS;
            }
        }
    }

    /// Stop the progress thread; the owner then closes endpoints and drops the worker.
    pub fn stop_progress(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Close an endpoint: flush politely for a moment, then force it.
    ///
    /// # Safety
    /// `ep` was created on this worker and is not closed yet; it is not used afterwards.
    pub unsafe fn close_endpoint(&self, ep: ucp_ep_h, force: bool) {
        if self.is_released() {
            return; // destroyed with the worker
        }
        let api = self.api();
        let mut param: ucp_request_param_t = zeroed();
        param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = if force { UCP_EP_CLOSE_FLAG_FORCE } else { 0 };
        let request = {
            let _g = self.lock();
            // SAFETY: ep belongs to this worker (the caller's promise); under the lock.
            classify((api.ucp_ep_close_nbx)(ep, &param))
        };
        let Posted::Pending(req) = request else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(if force { 2000 } else { 1000 });
        loop {
            let _g = self.lock();
            self.progress_locked();
            // SAFETY: the request is ours until freed below.
            let st = unsafe { (api.ucp_request_check_status)(req) };
            if st != UCS_INPROGRESS || std::time::Instant::now() > deadline {
                if st == UCS_INPROGRESS {
                    crate::log_at!(Debug, "endpoint close still in progress; leaving it to UCX");
                }
                // SAFETY: freeing a request we own; UCX releases it when done.
                unsafe { (api.ucp_request_free)(req) };
                if st == UCS_INPROGRESS && !force {
                    drop(_g);
                    return self.close_endpoint(ep, true);
                }
                return;
            }
            drop(_g);
            std::thread::yield_now();
        }
    }
}

/// The owning handle of a worker: dropping it stops the progress thread;
/// the worker itself goes when its last endpoint does.
pub struct WorkerOwner(pub Arc<Worker>);

impl std::ops::Deref for WorkerOwner {
    type Target = Arc<Worker>;
    fn deref(&self) -> &Arc<Worker> {
        &self.0
    }
}

impl Drop for WorkerOwner {
    fn drop(&mut self) {
        self.0.stop_progress();
        // Operations still in UCX hold the worker through their callbacks' references:
        // progress until UCX has completed (or cancelled) them, so the worker can go.
        // Deferred work holds references too: progress (which runs it) at least once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            {
                let _g = self.0.lock();
                self.0.progress_locked();
            }
            let settled = self.0.busy.load(Ordering::Acquire) == 0 && self.0.deferred.lock().is_empty();
            if settled || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let left = self.0.busy.load(Ordering::Acquire);
        if left > 0 {
            // UCX 1.22 can leave a flush to a peer that died unfinished forever, even after the
            // endpoint is closed; waiting for it would keep the worker (and its sockets) for good.
            crate::log_at!(Info, "UCX worker destroyed with {left} operation(s) UCX never completed");
            self.0.release_ucx();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.release_ucx();
    }
}

/// An endpoint to a peer worker, with error handling on: when UCX reports
/// the peer failed, `failed` is set and the hooks run (outside UCX).
pub struct Endpoint {
    pub worker: Arc<Worker>,
    /// Null once closed, so a closed endpoint is never used or closed twice.
    handle: AtomicPtr<c_void>,
    pub state: Arc<EndpointState>,
    /// Raw `Arc<EndpointState>` handed to UCX as the error-handler argument.
    handler_arg: *const EndpointState,
}

unsafe impl Send for Endpoint {}
unsafe impl Sync for Endpoint {}

#[derive(Default)]
pub struct EndpointState {
    pub failed: AtomicBool,
    pub reason: Mutex<Option<String>>,
    pub on_failure: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl EndpointState {
    pub fn check(&self, peer: &str) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            let why = self.reason.lock().clone().unwrap_or_else(|| "failed".into());
            return Err(Error::peer(format!("peer {peer}: {why}")));
        }
        Ok(())
    }

    /// Mark failed and run the hooks once. Hooks must not call UCX directly
    /// (this may run inside progress): they use `Worker::defer`.
    pub fn fail(&self, reason: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            *self.reason.lock() = Some(reason);
            for hook in self.on_failure.lock().iter() {
                hook();
            }
        }
    }
}

unsafe extern "C" fn endpoint_error(arg: *mut c_void, _ep: ucp_ep_h, status: ucs_status_t) {
    // Runs inside progress under the worker lock: only record and defer.
    let state = &*(arg as *const EndpointState);
    let reason = match loader::load() {
        Ok(ucx) => format!("connection failed (UCX {})", status_text(ucx, status)),
        Err(_) => format!("connection failed (UCX status {status})"),
    };
    crate::log_at!(Info, "{reason}");
    state.fail(reason);
}

impl Endpoint {
    pub fn connect(worker: &Arc<Worker>, remote_address: &[u8]) -> Result<Endpoint> {
        crate::core::wire::check_ucx_worker_address(remote_address)?;
        let state = Arc::new(EndpointState::default());
        let handler_arg = Arc::into_raw(state.clone());
        let mut params: ucp_ep_params_t = zeroed();
        params.field_mask =
            UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
        params.address = remote_address.as_ptr() as *const c_void;
        params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        params.err_handler = ucp_err_handler_t { cb: Some(endpoint_error), arg: handler_arg as *mut c_void };
        let mut handle: ucp_ep_h = std::ptr::null_mut();
        let st = {
            let _g = worker.lock();
            // SAFETY: valid params; the address bytes outlive the call (UCX copies what it needs).
            unsafe { (worker.api().ucp_ep_create)(worker.handle, &params, &mut handle) }
        };
        if st != UCS_OK {
            // SAFETY: reclaim the reference UCX never took.
            unsafe { drop(Arc::from_raw(handler_arg)) };
            // The address passed its checksum, so a shared-memory segment that
            // cannot be attached belongs to a peer that has exited since.
            if st == UCS_ERR_SHMEM_SEGMENT {
                return Err(Error::peer(format!(
                    "cannot create endpoint to peer: its shared memory is gone (peer exited?): UCX {}",
                    status_text(worker.ucx, st)
                )));
            }
            return Err(ucx_error(worker.ucx, "cannot create endpoint to peer (bad or foreign address?)", st));
        }
        worker.wake();
        Ok(Endpoint { worker: worker.clone(), handle: AtomicPtr::new(handle), state, handler_arg })
    }
}

impl Endpoint {
    /// The UCX endpoint to post on, or a peer error once it was closed.
    /// Call with the worker lock held, so a concurrent `close` cannot free it meanwhile.
    pub fn handle_locked(&self, peer: &str) -> Result<ucp_ep_h> {
        let handle = self.handle.load(Ordering::Acquire);
        if handle.is_null() {
            self.state.check(peer)?;
            return Err(Error::peer(format!("peer {peer}: endpoint closed")));
        }
        Ok(handle)
    }

    /// The transports UCX selected for this endpoint, as "transport/device"
    /// entries joined by ",", e.g. "tcp/eth0,cma/memory" (None when UCX cannot say).
    pub fn transports(&self) -> Option<String> {
        const MAX: usize = 32;
        let mut entries: Vec<ucp_transport_entry_t> = (0..MAX).map(|_| zeroed()).collect();
        let mut attr: ucp_ep_attr_t = zeroed();
        attr.field_mask = UCP_EP_ATTR_FIELD_TRANSPORTS;
        attr.transports.entries = entries.as_mut_ptr();
        attr.transports.num_entries = MAX as u32;
        attr.transports.entry_size = std::mem::size_of::<ucp_transport_entry_t>();
        let _g = self.worker.lock();
        let handle = self.handle.load(Ordering::Acquire);
        if handle.is_null() || self.worker.is_released() {
            return None;
        }
        // SAFETY: a live endpoint under the worker lock; UCX fills at most `num_entries` entries.
        if unsafe { (self.worker.api().ucp_ep_query)(handle, &mut attr) } != UCS_OK {
            return None;
        }
        let text = |p: *const std::ffi::c_char| {
            // SAFETY: UCX's static transport and device names.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let list: Vec<String> = entries[..(attr.transports.num_entries as usize).min(MAX)]
            .iter()
            .filter_map(|e| {
                let t = text(e.transport_name)?;
                Some(text(e.device_name).map_or(t.clone(), |d| format!("{t}/{d}")))
            })
            .collect();
        Some(list.join(","))
    }

    /// Close the endpoint once; later calls (and drop) do nothing.
    pub fn close(&self, force: bool) {
        let handle = {
            let _g = self.worker.lock();
            self.handle.swap(std::ptr::null_mut(), Ordering::AcqRel)
        };
        if !handle.is_null() {
            // SAFETY: swapping the handle out makes this its one close; the worker made it.
            unsafe { self.worker.close_endpoint(handle, force) };
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.close(self.state.failed.load(Ordering::Acquire));
        // SAFETY: after close UCX no longer calls the error handler with this argument.
        unsafe { drop(Arc::from_raw(self.handler_arg)) };
    }
}

#[cfg(test)]
mod tests {
    use super::{linger_from, Burst, DEFAULT_LINGER_US};
    use std::time::Duration;

    #[test]
    fn linger_follows_the_variable_and_keeps_the_default_for_nonsense() {
        assert_eq!(linger_from(None), Duration::from_micros(DEFAULT_LINGER_US));
        assert_eq!(linger_from(Some(" 200 ")), Duration::from_micros(200));
        assert_eq!(linger_from(Some("0")), Duration::ZERO, "0 sleeps at once");
        assert_eq!(linger_from(Some("fast")), Duration::from_micros(DEFAULT_LINGER_US));
        assert_eq!(linger_from(Some("-5")), Duration::from_micros(DEFAULT_LINGER_US));
    }

    #[test]
    fn lingers_only_in_a_burst() {
        let mut burst = Burst::new(Duration::from_secs(60));
        burst.worked();
        assert!(!burst.lingering(), "a lone event is slept after");
        burst.worked();
        assert!(burst.lingering(), "work right after work keeps the thread looking");

        // Wide margins: a preempted test thread must not make it flaky.
        let mut quick = Burst::new(Duration::from_millis(300));
        quick.worked();
        std::thread::sleep(Duration::from_millis(400));
        quick.worked();
        assert!(!quick.lingering(), "work long after the last is a lone event again");
        quick.worked();
        assert!(quick.lingering());
        std::thread::sleep(Duration::from_millis(400));
        assert!(!quick.lingering(), "the linger ends");
    }

    #[test]
    fn zero_never_lingers() {
        let mut off = Burst::new(Duration::ZERO);
        off.worked();
        off.worked();
        assert!(!off.lingering());
    }
}
