//! The dispatch table: one `#[repr(C)]` table of function pointers per
//! backend, with C types only. The C ABI layer checks pointers and calls
//! through the table a handle was made with; a backend fills its table by
//! implementing the Rust traits below, and `backend_table!` generates the
//! entries, which validate C arguments into Rust types once for all backends.
//!
//! Layout rules (as NCCL's net plugins): `size` and `version` come first, and
//! entries are only ever appended, so a table built for an older version is
//! still readable up to its `size`.

use crate::core::buffer::{kvx_bytes, kvx_notification_list};
use crate::core::config::{kvx_agent_config, kvx_cm_config, kvx_file_copy_request, kvx_transfer_request};
use crate::core::error::{kvx_status, Result};
use crate::core::memory::{kvx_memory_desc, kvx_memory_type};
use crate::core::select::kvx_backend;
use crate::core::stats::{kvx_xfer_info, PeerStats, Scope, TransferRecord};
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Instant;

// The validated forms of the C arguments are core's; the contract speaks in them.
pub use crate::core::request::{
    kvx_transfer_op, kvx_transfer_state, slice, slice_mut, AgentSettings, ConnectionManagerSettings, FileCopy,
    TransferRequest,
};

/// Version of the table layout below; bump when appending entries.
pub const TABLE_VERSION: u32 = 5;

pub trait TransferAgent: Send + Sync + Sized + 'static {
    type Transfer: Transfer;
    fn create(settings: &AgentSettings) -> Result<Self>;
    fn timeout_ms(&self) -> u64;
    fn register_memory(&self, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()>;
    fn deregister_memory(&self, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<()>;
    fn local_descriptor(&self) -> Result<Vec<u8>>;
    fn connection_info(&self) -> Result<String>;
    fn load_remote(&self, name: &str, descriptor: &[u8]) -> Result<()>;
    fn load_remote_by_connection_info(
        &self,
        name: &str,
        connection_info: &str,
        deadline: Option<Instant>,
    ) -> Result<()>;
    fn invalidate_remote(&self, name: &str) -> Result<()>;
    fn check_remote_descs(&self, name: &str, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<bool>;
    fn submit(&self, request: &TransferRequest<'_>) -> Result<Self::Transfer>;
    fn notify(&self, name: &str, message: &[u8]) -> Result<()>;
    fn take_notifications(&self) -> Result<Vec<(String, Vec<u8>)>>;
    /// This agent's counters (`core::stats`).
    fn stats(&self) -> &Arc<Scope>;
    /// Copy between memory and files (TensorRT-LLM's loopback agent) through
    /// the backend's own storage path, blocking until done or the deadline;
    /// returns the path's name. A backend without one refuses with
    /// `KVX_ERR_UNSUPPORTED`, and the caller copies by other means.
    fn copy_files(_request: &FileCopy<'_>) -> Result<&'static std::ffi::CStr> {
        Err(crate::core::error::Error::new(
            kvx_status::KVX_ERR_UNSUPPORTED,
            "this backend has no storage path for memory-to-file copies",
        ))
    }
}

pub trait Transfer: Send + Sync + 'static {
    fn is_completed(&self) -> bool;
    /// `deadline` None waits until the transfer's own deadline (the agent's timeout).
    fn wait(&self, deadline: Option<Instant>) -> kvx_transfer_state;
    fn release(&self) -> bool;
    fn last_status(&self) -> String;
    /// The transfer's facts (bytes, descriptors, path, times, outcome).
    fn record(&self) -> &TransferRecord;
    /// Release even while in flight (TensorRT-LLM's cancel path): a transfer
    /// still running ends as failed (`KVX_ERR_CANCELED`), never as a success,
    /// and true means the backend no longer touches the local memory. False
    /// only when that cannot be assured; `last_status` says why.
    fn cancel(&self) -> bool;
}

pub trait ConnectionManager: Send + Sync + Sized + 'static {
    type Connection: Connection;
    fn create(settings: &ConnectionManagerSettings) -> Result<Self>;
    fn timeout_ms(&self) -> u64;
    fn local_address(&self) -> Result<String>;
    /// Connections stay owned by the manager; the pointers stay valid until it is destroyed.
    fn get_connections(&self, addresses: &[&str], deadline: Option<Instant>) -> Result<Vec<*const Self::Connection>>;
    fn recv_connect(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<*const Self::Connection>;
    fn is_running(&self) -> bool;
    fn shutdown(&self);
    /// This manager's counters (`core::stats`).
    fn stats(&self) -> &Arc<Scope>;
}

pub trait Connection: Send + Sync + 'static {
    /// Largest message a send takes and a receive can get, in bytes. The C
    /// ABI refuses larger sizes on every backend the same way, before it
    /// touches the caller's memory.
    const MAX_MESSAGE: usize;
    fn timeout_ms(&self) -> u64;
    fn send(&self, tag: u32, data: &[u8], deadline: Option<Instant>) -> Result<()>;
    fn recv(&self, tag: u32, data: &mut [u8], deadline: Option<Instant>) -> Result<()>;
    fn peer_address(&self) -> String;
    /// The counters of this connection's peer.
    fn stats(&self) -> &Arc<PeerStats>;
}

/// Everything a backend provides, as the C ABI layer sees it. Opaque
/// pointers are the backend's own objects; strings are NUL-terminated;
/// timeouts are milliseconds where a negative value means "the handle's default".
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct kvx_backend_table {
    pub size: usize,
    pub version: u32,
    pub backend: kvx_backend,

    pub agent_create: unsafe extern "C" fn(config: *const kvx_agent_config, out: *mut *mut c_void) -> kvx_status,
    pub agent_destroy: unsafe extern "C" fn(agent: *mut c_void),
    pub agent_register_memory: unsafe extern "C" fn(
        agent: *mut c_void,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
    ) -> kvx_status,
    pub agent_deregister_memory: unsafe extern "C" fn(
        agent: *mut c_void,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
    ) -> kvx_status,
    pub agent_local_descriptor: unsafe extern "C" fn(agent: *mut c_void, out: *mut kvx_bytes) -> kvx_status,
    pub agent_connection_info: unsafe extern "C" fn(agent: *mut c_void, out: *mut kvx_bytes) -> kvx_status,
    pub agent_load_remote:
        unsafe extern "C" fn(agent: *mut c_void, name: *const c_char, desc: *const u8, len: usize) -> kvx_status,
    pub agent_load_remote_by_connection_info: unsafe extern "C" fn(
        agent: *mut c_void,
        name: *const c_char,
        info: *const c_char,
        timeout_ms: i64,
    ) -> kvx_status,
    pub agent_invalidate_remote: unsafe extern "C" fn(agent: *mut c_void, name: *const c_char) -> kvx_status,
    pub agent_check_remote_descs: unsafe extern "C" fn(
        agent: *mut c_void,
        name: *const c_char,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
        out: *mut bool,
    ) -> kvx_status,
    pub agent_submit: unsafe extern "C" fn(
        agent: *mut c_void,
        request: *const kvx_transfer_request,
        out: *mut *mut c_void,
    ) -> kvx_status,
    pub agent_notify:
        unsafe extern "C" fn(agent: *mut c_void, name: *const c_char, msg: *const u8, len: usize) -> kvx_status,
    pub agent_take_notifications:
        unsafe extern "C" fn(agent: *mut c_void, out: *mut *mut kvx_notification_list) -> kvx_status,

    pub xfer_destroy: unsafe extern "C" fn(xfer: *mut c_void),
    pub xfer_is_completed: unsafe extern "C" fn(xfer: *mut c_void) -> bool,
    pub xfer_wait: unsafe extern "C" fn(xfer: *mut c_void, timeout_ms: i64) -> kvx_transfer_state,
    pub xfer_release: unsafe extern "C" fn(xfer: *mut c_void) -> bool,
    pub xfer_last_status: unsafe extern "C" fn(xfer: *mut c_void, out: *mut kvx_bytes),

    pub cm_create: unsafe extern "C" fn(config: *const kvx_cm_config, out: *mut *mut c_void) -> kvx_status,
    pub cm_destroy: unsafe extern "C" fn(cm: *mut c_void),
    pub cm_local_address: unsafe extern "C" fn(cm: *mut c_void, out: *mut kvx_bytes) -> kvx_status,
    pub cm_get_connections: unsafe extern "C" fn(
        cm: *mut c_void,
        addrs: *const *const c_char,
        count: usize,
        timeout_ms: i64,
        out: *mut *const c_void,
    ) -> kvx_status,
    pub cm_recv_connect: unsafe extern "C" fn(
        cm: *mut c_void,
        tag: u32,
        data: *mut u8,
        len: usize,
        timeout_ms: i64,
        out: *mut *const c_void,
    ) -> kvx_status,
    pub cm_is_running: unsafe extern "C" fn(cm: *mut c_void) -> bool,
    pub cm_shutdown: unsafe extern "C" fn(cm: *mut c_void),

    pub conn_send:
        unsafe extern "C" fn(conn: *const c_void, tag: u32, data: *const u8, len: usize, timeout_ms: i64) -> kvx_status,
    pub conn_recv:
        unsafe extern "C" fn(conn: *const c_void, tag: u32, data: *mut u8, len: usize, timeout_ms: i64) -> kvx_status,
    pub conn_peer_address: unsafe extern "C" fn(conn: *const c_void, out: *mut kvx_bytes),

    // Version 2: observability (`core::stats`).
    pub xfer_info: unsafe extern "C" fn(xfer: *mut c_void, out: *mut kvx_xfer_info),
    /// JSON snapshot of the agent's counters.
    pub agent_stats: unsafe extern "C" fn(agent: *mut c_void, out: *mut kvx_bytes),
    /// JSON snapshot of the manager's counters.
    pub cm_stats: unsafe extern "C" fn(cm: *mut c_void, out: *mut kvx_bytes),

    // Version 3.
    pub xfer_cancel: unsafe extern "C" fn(xfer: *mut c_void) -> bool,

    // Version 4.
    /// `Connection::MAX_MESSAGE`.
    pub conn_max_message: usize,

    // Version 5.
    /// `TransferAgent::copy_files`; `out_path` receives the path's static name.
    pub file_copy:
        unsafe extern "C" fn(request: *const kvx_file_copy_request, out_path: *mut *const c_char) -> kvx_status,
}

impl kvx_backend_table {
    /// Whether the table reaches the entry at `offset` (tables of older versions end earlier).
    pub fn has(&self, offset: usize) -> bool {
        self.size >= offset + std::mem::size_of::<usize>()
    }
}

/// Turn a backend result into a status, recording the error for `kvx_last_error`.
pub fn report<T>(result: Result<T>, out: impl FnOnce(T)) -> kvx_status {
    match result {
        Ok(v) => {
            out(v);
            kvx_status::KVX_OK
        }
        Err(e) => crate::core::error::set_last_error(e),
    }
}

/// Generate a backend's table from its agent type (implementing
/// `TransferAgent`) and its manager type (implementing `ConnectionManager`).
#[macro_export]
macro_rules! backend_table {
    ($backend:expr, $agent:ty, $cm:ty) => {{
        use std::ffi::{c_char, c_void};
        use $crate::core::buffer::{kvx_bytes, kvx_notification_list};
        use $crate::core::config::{self as cfg, kvx_agent_config, kvx_cm_config, kvx_transfer_request};
        use $crate::core::error::kvx_status;
        use $crate::core::memory::{kvx_memory_desc, kvx_memory_type};
        use $crate::dispatch::*;
        type A = $agent;
        type X = <$agent as TransferAgent>::Transfer;
        type M = $cm;
        type C = <$cm as ConnectionManager>::Connection;

        unsafe extern "C" fn agent_create(c: *const kvx_agent_config, out: *mut *mut c_void) -> kvx_status {
            report(cfg::agent_settings(&*c).and_then(|s| A::create(&s)), |a| {
                *out = Box::into_raw(Box::new(a)) as *mut c_void
            })
        }
        unsafe extern "C" fn agent_destroy(a: *mut c_void) {
            drop(Box::from_raw(a as *mut A));
        }
        unsafe extern "C" fn agent_register_memory(
            a: *mut c_void,
            t: u32,
            d: *const kvx_memory_desc,
            n: usize,
        ) -> kvx_status {
            report(
                kvx_memory_type::from_raw(t).and_then(|t| (*(a as *const A)).register_memory(t, slice(d, n))),
                |_| (),
            )
        }
        unsafe extern "C" fn agent_deregister_memory(
            a: *mut c_void,
            t: u32,
            d: *const kvx_memory_desc,
            n: usize,
        ) -> kvx_status {
            report(
                kvx_memory_type::from_raw(t).and_then(|t| (*(a as *const A)).deregister_memory(t, slice(d, n))),
                |_| (),
            )
        }
        unsafe extern "C" fn agent_local_descriptor(a: *mut c_void, out: *mut kvx_bytes) -> kvx_status {
            report((*(a as *const A)).local_descriptor(), |v| *out = kvx_bytes::from_vec(v))
        }
        unsafe extern "C" fn agent_connection_info(a: *mut c_void, out: *mut kvx_bytes) -> kvx_status {
            report((*(a as *const A)).connection_info(), |v| *out = kvx_bytes::from_vec(v.into_bytes()))
        }
        unsafe extern "C" fn agent_load_remote(
            a: *mut c_void,
            name: *const c_char,
            d: *const u8,
            n: usize,
        ) -> kvx_status {
            report(cfg::text(name, "name").and_then(|name| (*(a as *const A)).load_remote(name, slice(d, n))), |_| ())
        }
        unsafe extern "C" fn agent_load_remote_by_connection_info(
            a: *mut c_void,
            name: *const c_char,
            info: *const c_char,
            timeout_ms: i64,
        ) -> kvx_status {
            let agent = &*(a as *const A);
            let result = cfg::text(name, "name").and_then(|name| {
                let info = cfg::text(info, "connection info")?;
                agent.load_remote_by_connection_info(name, info, cfg::deadline(timeout_ms, agent.timeout_ms()))
            });
            report(result, |_| ())
        }
        unsafe extern "C" fn agent_invalidate_remote(a: *mut c_void, name: *const c_char) -> kvx_status {
            report(cfg::text(name, "name").and_then(|name| (*(a as *const A)).invalidate_remote(name)), |_| ())
        }
        unsafe extern "C" fn agent_check_remote_descs(
            a: *mut c_void,
            name: *const c_char,
            t: u32,
            d: *const kvx_memory_desc,
            n: usize,
            out: *mut bool,
        ) -> kvx_status {
            let result = cfg::text(name, "name").and_then(|name| {
                let descs = slice(d, n);
                // A range that wraps the address space is registered nowhere: no backend needs to see it.
                if descs.iter().any(|x| x.end().is_err()) {
                    return Ok(false);
                }
                (*(a as *const A)).check_remote_descs(name, kvx_memory_type::from_raw(t)?, descs)
            });
            report(result, |v| *out = v)
        }
        unsafe extern "C" fn agent_submit(
            a: *mut c_void,
            r: *const kvx_transfer_request,
            out: *mut *mut c_void,
        ) -> kvx_status {
            let agent = &*(a as *const A);
            let result = cfg::transfer_request(&*r)
                .and_then(|r| agent.submit(&r).inspect_err(|e| agent.stats().peer(r.remote_name).submit_refused(e)));
            report(result, |x| *out = Box::into_raw(Box::new(x)) as *mut c_void)
        }
        unsafe extern "C" fn agent_notify(a: *mut c_void, name: *const c_char, m: *const u8, n: usize) -> kvx_status {
            let agent = &*(a as *const A);
            let result = cfg::text(name, "name").and_then(|name| {
                agent.notify(name, slice(m, n))?;
                agent.stats().peer(name).notification_sent();
                Ok(())
            });
            report(result, |_| ())
        }
        unsafe extern "C" fn agent_take_notifications(
            a: *mut c_void,
            out: *mut *mut kvx_notification_list,
        ) -> kvx_status {
            report((*(a as *const A)).take_notifications(), |v| {
                *out = Box::into_raw(Box::new(kvx_notification_list::new(v)))
            })
        }
        unsafe extern "C" fn xfer_destroy(x: *mut c_void) {
            drop(Box::from_raw(x as *mut X));
        }
        unsafe extern "C" fn xfer_is_completed(x: *mut c_void) -> bool {
            (*(x as *const X)).is_completed()
        }
        unsafe extern "C" fn xfer_wait(x: *mut c_void, timeout_ms: i64) -> kvx_transfer_state {
            (*(x as *const X)).wait($crate::core::completion::deadline_from_ms(timeout_ms))
        }
        unsafe extern "C" fn xfer_release(x: *mut c_void) -> bool {
            (*(x as *const X)).release()
        }
        unsafe extern "C" fn xfer_cancel(x: *mut c_void) -> bool {
            (*(x as *const X)).cancel()
        }
        unsafe extern "C" fn xfer_last_status(x: *mut c_void, out: *mut kvx_bytes) {
            *out = kvx_bytes::from_vec((*(x as *const X)).last_status().into_bytes())
        }
        unsafe extern "C" fn cm_create(c: *const kvx_cm_config, out: *mut *mut c_void) -> kvx_status {
            report(cfg::cm_settings(&*c).and_then(|s| M::create(&s)), |m| {
                *out = Box::into_raw(Box::new(m)) as *mut c_void
            })
        }
        unsafe extern "C" fn cm_destroy(m: *mut c_void) {
            drop(Box::from_raw(m as *mut M));
        }
        unsafe extern "C" fn cm_local_address(m: *mut c_void, out: *mut kvx_bytes) -> kvx_status {
            report((*(m as *const M)).local_address(), |v| *out = kvx_bytes::from_vec(v.into_bytes()))
        }
        unsafe extern "C" fn cm_get_connections(
            m: *mut c_void,
            addrs: *const *const c_char,
            n: usize,
            timeout_ms: i64,
            out: *mut *const c_void,
        ) -> kvx_status {
            let cm = &*(m as *const M);
            let result = slice(addrs, n)
                .iter()
                .map(|&p| cfg::text(p, "peer address"))
                .collect::<$crate::core::error::Result<Vec<&str>>>()
                .and_then(|list| cm.get_connections(&list, cfg::deadline(timeout_ms, cm.timeout_ms())));
            report(result, |conns| {
                for (i, c) in conns.into_iter().enumerate() {
                    *out.add(i) = c as *const c_void;
                }
            })
        }
        unsafe extern "C" fn cm_recv_connect(
            m: *mut c_void,
            tag: u32,
            d: *mut u8,
            n: usize,
            timeout_ms: i64,
            out: *mut *const c_void,
        ) -> kvx_status {
            let cm = &*(m as *const M);
            let result = cm.recv_connect(tag, slice_mut(d, n), cfg::deadline(timeout_ms, cm.timeout_ms()));
            // Counted on the connection it arrived on; a wait that ends without a message names no peer.
            if let Ok(c) = &result {
                (**c).stats().message(false, n, &Ok(()));
            }
            report(result, |c| *out = c as *const c_void)
        }
        unsafe extern "C" fn cm_is_running(m: *mut c_void) -> bool {
            (*(m as *const M)).is_running()
        }
        unsafe extern "C" fn cm_shutdown(m: *mut c_void) {
            (*(m as *const M)).shutdown()
        }
        unsafe extern "C" fn conn_send(
            c: *const c_void,
            tag: u32,
            d: *const u8,
            n: usize,
            timeout_ms: i64,
        ) -> kvx_status {
            let conn = &*(c as *const C);
            let result = conn.send(tag, slice(d, n), cfg::deadline(timeout_ms, conn.timeout_ms()));
            conn.stats().message(true, n, &result);
            report(result, |_| ())
        }
        unsafe extern "C" fn conn_recv(
            c: *const c_void,
            tag: u32,
            d: *mut u8,
            n: usize,
            timeout_ms: i64,
        ) -> kvx_status {
            let conn = &*(c as *const C);
            let result = conn.recv(tag, slice_mut(d, n), cfg::deadline(timeout_ms, conn.timeout_ms()));
            conn.stats().message(false, n, &result);
            report(result, |_| ())
        }
        unsafe extern "C" fn conn_peer_address(c: *const c_void, out: *mut kvx_bytes) {
            *out = kvx_bytes::from_vec((*(c as *const C)).peer_address().into_bytes())
        }
        unsafe extern "C" fn xfer_info(x: *mut c_void, out: *mut $crate::core::stats::kvx_xfer_info) {
            let x = &*(x as *const X);
            x.record().fill(&mut *out)
        }
        unsafe extern "C" fn agent_stats(a: *mut c_void, out: *mut kvx_bytes) {
            *out = kvx_bytes::from_vec((*(a as *const A)).stats().snapshot().to_string().into_bytes())
        }
        unsafe extern "C" fn cm_stats(m: *mut c_void, out: *mut kvx_bytes) {
            *out = kvx_bytes::from_vec((*(m as *const M)).stats().snapshot().to_string().into_bytes())
        }
        unsafe extern "C" fn file_copy(r: *const cfg::kvx_file_copy_request, out: *mut *const c_char) -> kvx_status {
            let result = cfg::file_copy(&*r).and_then(|request| A::copy_files(&request));
            report(result, |path: &'static std::ffi::CStr| *out = path.as_ptr())
        }
        kvx_backend_table {
            size: std::mem::size_of::<kvx_backend_table>(),
            version: TABLE_VERSION,
            backend: $backend,
            agent_create,
            agent_destroy,
            agent_register_memory,
            agent_deregister_memory,
            agent_local_descriptor,
            agent_connection_info,
            agent_load_remote,
            agent_load_remote_by_connection_info,
            agent_invalidate_remote,
            agent_check_remote_descs,
            agent_submit,
            agent_notify,
            agent_take_notifications,
            xfer_destroy,
            xfer_is_completed,
            xfer_wait,
            xfer_release,
            xfer_last_status,
            cm_create,
            cm_destroy,
            cm_local_address,
            cm_get_connections,
            cm_recv_connect,
            cm_is_running,
            cm_shutdown,
            conn_send,
            conn_recv,
            conn_peer_address,
            xfer_info,
            agent_stats,
            cm_stats,
            xfer_cancel,
            conn_max_message:
                <<$cm as $crate::dispatch::ConnectionManager>::Connection as $crate::dispatch::Connection>::MAX_MESSAGE,
            file_copy,
        }
    }};
}
