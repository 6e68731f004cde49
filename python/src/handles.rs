//! Owned kvxfer handles with plain-Rust methods, shared by the `kvxfer`
//! module and the TensorRT-LLM binding. Every method makes C calls only and
//! is meant to run with the GIL released; a failure carries the status and
//! `kvx_last_error`'s text, read on the thread that made the call.

use crate::sys::*;
use parking_lot::RwLock;
use std::ffi::{c_char, CStr, CString};

#[derive(Debug, Clone)]
pub struct KvxError {
    pub code: kvx_status,
    pub detail: String,
}

impl KvxError {
    pub fn new(code: kvx_status, detail: impl Into<String>) -> Self {
        KvxError { code, detail: detail.into() }
    }
    pub fn status_name(&self) -> String {
        status_name(self.code)
    }
}

pub type KvxResult<T> = Result<T, KvxError>;

pub fn status_name(code: kvx_status) -> String {
    // SAFETY: kvx_status_str returns a static NUL-terminated string for any value.
    unsafe { cstr(kvx_status_str(code)) }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// A status as a result; on failure the calling thread's last error is the detail.
pub fn check(status: kvx_status) -> KvxResult<()> {
    if status == KVX_OK {
        Ok(())
    } else {
        // SAFETY: kvx_last_error returns a valid string until the next failing call on this thread.
        Err(KvxError::new(status, unsafe { cstr(kvx_last_error()) }))
    }
}

pub fn c_string(what: &str, s: &str) -> KvxResult<CString> {
    CString::new(s).map_err(|_| KvxError::new(KVX_ERR_INVALID_ARGUMENT, format!("{what} contains a NUL byte")))
}

fn closed(what: &str) -> KvxError {
    KvxError::new(KVX_ERR_INVALID_ARGUMENT, format!("the {what} is closed"))
}

/// Take ownership of bytes kvxfer handed out.
fn take_bytes(mut b: kvx_bytes) -> Vec<u8> {
    let out = if b.data.is_null() {
        Vec::new()
    } else {
        // SAFETY: kvxfer guarantees `len` readable bytes at `data`.
        unsafe { std::slice::from_raw_parts(b.data, b.len) }.to_vec()
    };
    // SAFETY: freed exactly once, here.
    unsafe { kvx_bytes_free(&mut b) };
    out
}

fn bytes_call(f: impl FnOnce(*mut kvx_bytes) -> kvx_status) -> KvxResult<Vec<u8>> {
    let mut b = kvx_bytes { data: std::ptr::null_mut(), len: 0 };
    check(f(&mut b))?;
    Ok(take_bytes(b))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn backend_name(backend: u32) -> &'static str {
    match backend {
        KVX_BACKEND_UCX => "ucx",
        KVX_BACKEND_NIXL => "nixl",
        _ => "auto",
    }
}

pub fn resolve_backend(requested: u32) -> KvxResult<u32> {
    let mut out = 0;
    // SAFETY: plain out-parameter.
    check(unsafe { kvx_backend_resolve(requested, &mut out) })?;
    Ok(out)
}

pub struct BackendInfo {
    pub backend: u32,
    pub name: String,
    pub library_path: String,
    pub library_version: String,
}

/// Every agent's and manager's counters in this process, as JSON text.
pub fn stats_snapshot() -> KvxResult<String> {
    // SAFETY: plain out-struct.
    bytes_call(|out| unsafe { kvx_stats_snapshot(out) }).map(text)
}

/// Where this process serves its metrics ("" when KVX_METRICS_ADDR is unset).
pub fn metrics_address() -> KvxResult<String> {
    // SAFETY: plain out-struct.
    bytes_call(|out| unsafe { kvx_metrics_address(out) }).map(text)
}

pub fn backend_info(requested: u32) -> KvxResult<BackendInfo> {
    let mut info = kvx_backend_info {
        struct_size: std::mem::size_of::<kvx_backend_info>(),
        backend: 0,
        name: std::ptr::null(),
        library_path: std::ptr::null(),
        library_version: std::ptr::null(),
    };
    // SAFETY: `info` is a correctly sized out-struct; the strings it receives are static.
    unsafe {
        check(kvx_backend_info_get(requested, &mut info))?;
        Ok(BackendInfo {
            backend: info.backend,
            name: cstr(info.name),
            library_path: cstr(info.library_path),
            library_version: cstr(info.library_version),
        })
    }
}

pub fn version() -> String {
    // SAFETY: static string.
    unsafe { cstr(kvx_version()) }
}

/// Everything `kvx_agent_create` takes, owned.
#[derive(Default, Clone)]
pub struct AgentSettings {
    pub name: String,
    pub backend: u32,
    pub use_listen_thread: bool,
    pub listen_ip: Option<String>,
    pub listen_port: u16,
    pub timeout_ms: u64,
    pub progress_thread: u32,
    pub num_workers: u32,
    pub backend_params: Option<String>,
}

/// A transfer agent. Calls share a read lock; `close` takes the write lock,
/// so destruction never overlaps a call (the C ABI's only exclusive function).
pub struct AgentHandle {
    ptr: RwLock<*mut kvx_agent>,
}

// SAFETY: every kvx_agent_* function except destroy may run on any thread concurrently; destroy
// runs under the write lock.
unsafe impl Send for AgentHandle {}
unsafe impl Sync for AgentHandle {}

pub struct Notification {
    pub sender: String,
    pub message: Vec<u8>,
}

impl AgentHandle {
    pub fn create(s: &AgentSettings) -> KvxResult<Self> {
        let name = c_string("name", &s.name)?;
        let ip = s.listen_ip.as_deref().map(|ip| c_string("listen_ip", ip)).transpose()?;
        let params = s.backend_params.as_deref().map(|p| c_string("backend_params", p)).transpose()?;
        // SAFETY: the config is initialised by kvxfer, then filled with strings that outlive the call.
        unsafe {
            let mut cfg: kvx_agent_config = std::mem::zeroed();
            check(kvx_agent_config_init(&mut cfg))?;
            cfg.name = name.as_ptr();
            cfg.backend = s.backend;
            cfg.use_listen_thread = s.use_listen_thread;
            cfg.listen_ip = ip.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            cfg.listen_port = s.listen_port;
            cfg.timeout_ms = s.timeout_ms;
            cfg.progress_thread = s.progress_thread;
            cfg.num_workers = s.num_workers;
            cfg.backend_params = params.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            let mut agent = std::ptr::null_mut();
            check(kvx_agent_create(&cfg, &mut agent))?;
            Ok(AgentHandle { ptr: RwLock::new(agent) })
        }
    }

    fn with<T>(&self, f: impl FnOnce(*mut kvx_agent) -> KvxResult<T>) -> KvxResult<T> {
        let guard = self.ptr.read();
        if guard.is_null() {
            return Err(closed("agent"));
        }
        f(*guard)
    }

    pub fn is_closed(&self) -> bool {
        self.ptr.read().is_null()
    }

    pub fn close(&self) {
        let mut guard = self.ptr.write();
        if !guard.is_null() {
            // SAFETY: the write lock excludes every other call; the pointer is cleared at once.
            unsafe { kvx_agent_destroy(*guard) };
            *guard = std::ptr::null_mut();
        }
    }

    pub fn backend(&self) -> KvxResult<u32> {
        self.with(|a| {
            let mut b = 0;
            // SAFETY: valid agent, plain out-parameter.
            check(unsafe { kvx_agent_backend(a, &mut b) })?;
            Ok(b)
        })
    }

    pub fn register(&self, mem_type: u32, descs: &[kvx_memory_desc]) -> KvxResult<()> {
        // SAFETY: `descs` is a valid slice for the call.
        self.with(|a| check(unsafe { kvx_agent_register_memory(a, mem_type, descs.as_ptr(), descs.len()) }))
    }

    pub fn deregister(&self, mem_type: u32, descs: &[kvx_memory_desc]) -> KvxResult<()> {
        // SAFETY: `descs` is a valid slice for the call.
        self.with(|a| check(unsafe { kvx_agent_deregister_memory(a, mem_type, descs.as_ptr(), descs.len()) }))
    }

    pub fn local_desc(&self) -> KvxResult<Vec<u8>> {
        // SAFETY: valid agent and out-struct.
        self.with(|a| bytes_call(|out| unsafe { kvx_agent_get_local_desc(a, out) }))
    }

    /// The agent's counters, as kvxfer's JSON snapshot text.
    pub fn stats(&self) -> KvxResult<String> {
        // SAFETY: valid agent and out-struct.
        self.with(|a| bytes_call(|out| unsafe { kvx_agent_stats(a, out) }).map(text))
    }

    pub fn connection_info(&self) -> KvxResult<String> {
        // SAFETY: valid agent and out-struct.
        self.with(|a| bytes_call(|out| unsafe { kvx_agent_get_connection_info(a, out) }).map(text))
    }

    pub fn load_remote(&self, name: &str, desc: &[u8]) -> KvxResult<()> {
        let name = c_string("name", name)?;
        // SAFETY: valid agent, string and slice.
        self.with(|a| check(unsafe { kvx_agent_load_remote(a, name.as_ptr(), desc.as_ptr(), desc.len()) }))
    }

    pub fn load_remote_by_connection(&self, name: &str, info: &str, timeout_ms: i64) -> KvxResult<()> {
        let name = c_string("name", name)?;
        let info = c_string("connection_info", info)?;
        self.with(|a| {
            // SAFETY: valid agent and strings.
            check(unsafe { kvx_agent_load_remote_by_connection_info(a, name.as_ptr(), info.as_ptr(), timeout_ms) })
        })
    }

    pub fn invalidate(&self, name: &str) -> KvxResult<()> {
        let name = c_string("name", name)?;
        // SAFETY: valid agent and string.
        self.with(|a| check(unsafe { kvx_agent_invalidate_remote(a, name.as_ptr()) }))
    }

    pub fn check_remote_descs(&self, name: &str, mem_type: u32, descs: &[kvx_memory_desc]) -> KvxResult<bool> {
        let name = c_string("name", name)?;
        self.with(|a| {
            let mut ok = false;
            // SAFETY: valid agent, string, slice and out-parameter.
            check(unsafe {
                kvx_agent_check_remote_descs(a, name.as_ptr(), mem_type, descs.as_ptr(), descs.len(), &mut ok)
            })?;
            Ok(ok)
        })
    }

    #[allow(clippy::too_many_arguments)] // one argument per field of kvx_transfer_request
    pub fn submit(
        &self,
        op: u32,
        src_type: u32,
        src: &[kvx_memory_desc],
        dst_type: u32,
        dst: &[kvx_memory_desc],
        remote_name: &str,
        sync_message: Option<&[u8]>,
    ) -> KvxResult<XferHandle> {
        if src.len() != dst.len() {
            return Err(KvxError::new(
                KVX_ERR_INVALID_ARGUMENT,
                format!("{} local descriptors but {} remote ones", src.len(), dst.len()),
            ));
        }
        let remote = c_string("remote_name", remote_name)?;
        let request = kvx_transfer_request {
            op,
            src_type,
            src_descs: src.as_ptr(),
            dst_type,
            dst_descs: dst.as_ptr(),
            count: src.len(),
            remote_name: remote.as_ptr(),
            sync_message: sync_message.map_or(std::ptr::null(), |m| m.as_ptr()),
            sync_message_len: sync_message.map_or(0, |m| m.len()),
            has_sync_message: sync_message.is_some(),
        };
        self.with(|a| {
            let mut x = std::ptr::null_mut();
            // SAFETY: the request points at buffers that outlive the call.
            check(unsafe { kvx_agent_submit(a, &request, &mut x) })?;
            Ok(XferHandle { ptr: RwLock::new(x) })
        })
    }

    pub fn notify(&self, name: &str, message: &[u8]) -> KvxResult<()> {
        let name = c_string("name", name)?;
        // SAFETY: valid agent, string and slice.
        self.with(|a| check(unsafe { kvx_agent_notify(a, name.as_ptr(), message.as_ptr(), message.len()) }))
    }

    pub fn notifications(&self) -> KvxResult<Vec<Notification>> {
        self.with(|a| {
            let mut list = std::ptr::null_mut();
            // SAFETY: valid agent, out-parameter; the list is read then freed once.
            unsafe {
                check(kvx_agent_get_notifications(a, &mut list))?;
                let mut out = Vec::new();
                for i in 0..kvx_notification_list_len(list) {
                    let (mut sender, mut msg, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
                    if let Err(e) = check(kvx_notification_list_get(list, i, &mut sender, &mut msg, &mut len)) {
                        kvx_notification_list_free(list);
                        return Err(e);
                    }
                    let message =
                        if msg.is_null() { Vec::new() } else { std::slice::from_raw_parts(msg, len).to_vec() };
                    out.push(Notification { sender: cstr(sender), message });
                }
                kvx_notification_list_free(list);
                Ok(out)
            }
        })
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.close();
    }
}

/// One submitted transfer.
pub struct XferHandle {
    ptr: RwLock<*mut kvx_xfer>,
}

// SAFETY: as AgentHandle: any-thread calls under the read lock, destroy under the write lock.
unsafe impl Send for XferHandle {}
unsafe impl Sync for XferHandle {}

impl XferHandle {
    fn with<T>(&self, f: impl FnOnce(*mut kvx_xfer) -> KvxResult<T>) -> KvxResult<T> {
        let guard = self.ptr.read();
        if guard.is_null() {
            return Err(closed("transfer"));
        }
        f(*guard)
    }

    pub fn wait(&self, timeout_ms: i64) -> KvxResult<kvx_transfer_state> {
        self.with(|x| {
            let mut state = 0;
            // SAFETY: valid transfer, plain out-parameter.
            check(unsafe { kvx_xfer_wait(x, timeout_ms, &mut state) })?;
            Ok(state)
        })
    }

    pub fn is_completed(&self) -> KvxResult<bool> {
        self.with(|x| {
            let mut done = false;
            // SAFETY: valid transfer, plain out-parameter.
            check(unsafe { kvx_xfer_is_completed(x, &mut done) })?;
            Ok(done)
        })
    }

    pub fn release(&self) -> KvxResult<bool> {
        self.with(|x| {
            let mut released = false;
            // SAFETY: valid transfer, plain out-parameter.
            check(unsafe { kvx_xfer_release(x, &mut released) })?;
            Ok(released)
        })
    }

    pub fn last_status(&self) -> KvxResult<String> {
        // SAFETY: valid transfer and out-struct.
        self.with(|x| bytes_call(|out| unsafe { kvx_xfer_last_status(x, out) }).map(text))
    }

    pub fn close(&self) {
        let mut guard = self.ptr.write();
        if !guard.is_null() {
            // SAFETY: exclusive under the write lock; cleared at once.
            unsafe { kvx_xfer_destroy(*guard) };
            *guard = std::ptr::null_mut();
        }
    }
}

impl Drop for XferHandle {
    fn drop(&mut self) {
        self.close();
    }
}

/// A connection manager; its connections stay valid until it is closed.
pub struct CmHandle {
    ptr: RwLock<*mut kvx_cm>,
}

// SAFETY: as AgentHandle.
unsafe impl Send for CmHandle {}
unsafe impl Sync for CmHandle {}

/// A connection, identified by the pointer its manager hands out (the same
/// peer always gives the same pointer).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub usize);

impl CmHandle {
    pub fn create(backend: u32, listen_ip: Option<&str>, listen_port: u16, timeout_ms: u64) -> KvxResult<Self> {
        let ip = listen_ip.map(|ip| c_string("listen_ip", ip)).transpose()?;
        // SAFETY: config initialised by kvxfer; the string outlives the call.
        unsafe {
            let mut cfg: kvx_cm_config = std::mem::zeroed();
            check(kvx_cm_config_init(&mut cfg))?;
            cfg.backend = backend;
            cfg.listen_ip = ip.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            cfg.listen_port = listen_port;
            cfg.timeout_ms = timeout_ms;
            let mut cm = std::ptr::null_mut();
            check(kvx_cm_create(&cfg, &mut cm))?;
            Ok(CmHandle { ptr: RwLock::new(cm) })
        }
    }

    fn with<T>(&self, f: impl FnOnce(*mut kvx_cm) -> KvxResult<T>) -> KvxResult<T> {
        let guard = self.ptr.read();
        if guard.is_null() {
            return Err(closed("connection manager"));
        }
        f(*guard)
    }

    pub fn close(&self) {
        let mut guard = self.ptr.write();
        if !guard.is_null() {
            // SAFETY: exclusive under the write lock; cleared at once.
            unsafe { kvx_cm_destroy(*guard) };
            *guard = std::ptr::null_mut();
        }
    }

    pub fn backend(&self) -> KvxResult<u32> {
        self.with(|cm| {
            let mut b = 0;
            // SAFETY: valid manager, plain out-parameter.
            check(unsafe { kvx_cm_backend(cm, &mut b) })?;
            Ok(b)
        })
    }

    /// The manager's counters, as kvxfer's JSON snapshot text.
    pub fn stats(&self) -> KvxResult<String> {
        // SAFETY: valid manager and out-struct.
        self.with(|cm| bytes_call(|out| unsafe { kvx_cm_stats(cm, out) }).map(text))
    }

    pub fn local_address(&self) -> KvxResult<String> {
        // SAFETY: valid manager and out-struct.
        self.with(|cm| bytes_call(|out| unsafe { kvx_cm_get_local_address(cm, out) }).map(text))
    }

    pub fn get_connections(&self, addresses: &[String], timeout_ms: i64) -> KvxResult<Vec<ConnId>> {
        let owned = addresses.iter().map(|a| c_string("address", a)).collect::<KvxResult<Vec<_>>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        self.with(|cm| {
            let mut out = vec![std::ptr::null::<kvx_conn>(); ptrs.len()];
            // SAFETY: `ptrs` and `out` have `len` entries each.
            check(unsafe { kvx_cm_get_connections(cm, ptrs.as_ptr(), ptrs.len(), timeout_ms, out.as_mut_ptr()) })?;
            Ok(out.into_iter().map(|c| ConnId(c as usize)).collect())
        })
    }

    /// # Safety
    /// `data` must be writable for `size` bytes.
    pub unsafe fn recv_connect(&self, tag: u32, data: *mut u8, size: usize, timeout_ms: i64) -> KvxResult<ConnId> {
        self.with(|cm| {
            let mut conn = std::ptr::null();
            check(kvx_cm_recv_connect(cm, tag, data.cast(), size, timeout_ms, &mut conn))?;
            Ok(ConnId(conn as usize))
        })
    }

    pub fn is_running(&self) -> KvxResult<bool> {
        self.with(|cm| {
            let mut running = false;
            // SAFETY: valid manager, plain out-parameter.
            check(unsafe { kvx_cm_is_running(cm, &mut running) })?;
            Ok(running)
        })
    }

    pub fn shutdown(&self) -> KvxResult<()> {
        // SAFETY: valid manager.
        self.with(|cm| check(unsafe { kvx_cm_shutdown(cm) }))
    }

    /// # Safety
    /// `data` must be readable for `size` bytes; `conn` came from this manager.
    pub unsafe fn send(&self, conn: ConnId, tag: u32, data: *const u8, size: usize, timeout_ms: i64) -> KvxResult<()> {
        self.with(|_| check(kvx_conn_send(conn.0 as *const kvx_conn, tag, data.cast(), size, timeout_ms)))
    }

    /// # Safety
    /// `data` must be writable for `size` bytes; `conn` came from this manager.
    pub unsafe fn recv(&self, conn: ConnId, tag: u32, data: *mut u8, size: usize, timeout_ms: i64) -> KvxResult<()> {
        self.with(|_| check(kvx_conn_recv(conn.0 as *const kvx_conn, tag, data.cast(), size, timeout_ms)))
    }

    pub fn peer_address(&self, conn: ConnId) -> KvxResult<String> {
        // SAFETY: `conn` came from this manager, which is open under the read lock.
        self.with(|_| bytes_call(|out| unsafe { kvx_conn_peer_address(conn.0 as *const kvx_conn, out) }).map(text))
    }
}

impl Drop for CmHandle {
    fn drop(&mut self) {
        self.close();
    }
}
