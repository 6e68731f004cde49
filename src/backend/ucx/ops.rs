//! Non-blocking UCX operations with completion callbacks. An `Op` is shared
//! between the poster and UCX (as the callback's user data); whichever of
//! "posted and finished at once" or "callback ran" happens settles it.

use super::sys::*;
use super::worker::{ucx_error, Worker};
use crate::core::completion::Completion;
use crate::core::error::Result;
use parking_lot::Mutex;
use std::any::Any;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Sender tag and length of a completed receive (zero for sends).
pub type OpInfo = (u64, usize);
type Continuation = Box<dyn FnOnce(&Worker, Result<OpInfo>) + Send>;

pub struct Op {
    pub worker: Arc<Worker>,
    pub done: Completion<OpInfo>,
    what: &'static str,
    /// The UCX request while it is in flight (for cancel); null otherwise.
    request: AtomicPtr<c_void>,
    /// Buffers UCX reads from until completion.
    _keep: Mutex<Option<Box<dyn Any + Send>>>,
    /// Work to run (deferred, under the worker lock) once the op completes.
    then: Mutex<Option<Continuation>>,
}

impl Op {
    pub fn new(worker: &Arc<Worker>, what: &'static str) -> Arc<Op> {
        worker.busy.fetch_add(1, Ordering::Relaxed);
        Arc::new(Op {
            worker: worker.clone(),
            done: Completion::default(),
            what,
            request: AtomicPtr::new(std::ptr::null_mut()),
            _keep: Mutex::new(None),
            then: Mutex::new(None),
        })
    }

    pub fn keep(self: &Arc<Self>, value: Box<dyn Any + Send>) -> Arc<Self> {
        *self._keep.lock() = Some(value);
        self.clone()
    }

    pub fn then(self: &Arc<Self>, f: impl FnOnce(&Worker, Result<OpInfo>) + Send + 'static) -> Arc<Self> {
        *self.then.lock() = Some(Box::new(f));
        self.clone()
    }

    /// Request parameters whose callback settles this op. `recv` selects the
    /// tag-receive callback signature.
    pub fn param(self: &Arc<Self>, recv: bool) -> ucp_request_param_t {
        let mut p: ucp_request_param_t = zeroed();
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        if recv {
            // Receives always report through the callback, which carries the sender tag and length.
            p.op_attr_mask |= UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
        }
        p.cb = if recv { recv_callback as *const c_void } else { send_callback as *const c_void };
        p.user_data = Arc::into_raw(self.clone()) as *mut c_void;
        p
    }

    /// Account for what a `*_nbx` call returned, given the param made by `param`.
    /// Must be called under the worker lock, right after posting.
    pub fn posted(self: &Arc<Self>, param: &ucp_request_param_t, returned: *mut c_void) {
        match classify(returned) {
            Posted::Pending(req) => self.request.store(req, Ordering::Release),
            Posted::Done => {
                // SAFETY: UCX will not call back: reclaim the reference made in `param`.
                unsafe { drop(Arc::from_raw(param.user_data as *const Op)) };
                self.settle(Ok((0, 0)));
            }
            Posted::Failed(st) => {
                // SAFETY: as above.
                unsafe { drop(Arc::from_raw(param.user_data as *const Op)) };
                self.settle(Err(ucx_error(self.worker.ucx, self.what, st)));
            }
        }
    }

    /// Settle an op that could not be posted at all.
    pub fn fail_unposted(self: &Arc<Self>, error: crate::core::error::Error) {
        self.settle(Err(error));
    }

    fn settle(self: &Arc<Self>, outcome: Result<OpInfo>) {
        self.worker.busy.fetch_sub(1, Ordering::Relaxed);
        let then = self.then.lock().take();
        match then {
            Some(f) => {
                let outcome2 = outcome.clone();
                let me = self.clone();
                self.worker.defer(move |w| {
                    f(w, outcome2);
                    me.done.complete(outcome);
                });
            }
            None => {
                self.done.complete(outcome);
            }
        }
    }

    /// Cancel an in-flight receive (under the worker lock); its callback
    /// then reports UCS_ERR_CANCELED.
    pub fn cancel_locked(&self) {
        let req = self.request.load(Ordering::Acquire);
        if !req.is_null() && !self.done.is_done() && !self.worker.is_released() {
            // SAFETY: the request is live: its callback (which clears it) has not run, and we hold the lock.
            unsafe { (self.worker.api().ucp_request_cancel)(self.worker.handle, req) };
        }
    }

    /// Wait for completion, driving progress meanwhile; on timeout cancel
    /// (receives) and return a timeout error once UCX has let go of the buffer.
    pub fn wait(&self, deadline: Option<Instant>) -> Result<OpInfo> {
        if let Some(r) = self.done.wait(deadline, || self.worker.pump()) {
            return r;
        }
        {
            let _g = self.worker.lock();
            self.cancel_locked();
        }
        self.worker.wake();
        let grace = Instant::now() + std::time::Duration::from_secs(2);
        match self.done.wait(Some(grace), || self.worker.pump()) {
            Some(Ok(info)) => Ok(info),
            _ => Err(crate::core::error::Error::timeout(format!("{} did not complete in time", self.what))),
        }
    }
}

unsafe fn complete_from_callback(request: *mut c_void, status: ucs_status_t, info: OpInfo, user_data: *mut c_void) {
    let op = Arc::from_raw(user_data as *const Op);
    op.request.store(std::ptr::null_mut(), Ordering::Release);
    (op.worker.api().ucp_request_free)(request);
    let outcome = if status == UCS_OK { Ok(info) } else { Err(ucx_error(op.worker.ucx, op.what, status)) };
    op.settle(outcome);
}

unsafe extern "C" fn send_callback(request: *mut c_void, status: ucs_status_t, user_data: *mut c_void) {
    complete_from_callback(request, status, (0, 0), user_data);
}

unsafe extern "C" fn recv_callback(
    request: *mut c_void,
    status: ucs_status_t,
    info: *const ucp_tag_recv_info_t,
    user_data: *mut c_void,
) {
    let info = if info.is_null() { (0, 0) } else { ((*info).sender_tag, (*info).length) };
    complete_from_callback(request, status, info, user_data);
}
