//! One NIXL agent with its transport plugin, wrapped so the rest of the
//! backend calls NIXL through checked, owned Rust methods. Agents and
//! connection managers each own one.

use super::loader::{self, LoadedNixl};
use super::sys::*;
use crate::core::error::{kvx_status, Error, Result};
use crate::core::memory::{kvx_memory_desc, kvx_memory_type};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ffi::{c_void, CStr, CString};

/// How to build a NIXL agent, resolved from the caller's settings and the environment.
#[derive(Debug, Clone)]
pub struct NixlOptions {
    pub plugin: String,
    pub progress_thread: bool,
    /// Run NIXL's listener thread on this port (0 = ephemeral); None = no listener.
    pub listen_port: Option<u16>,
    pub params: BTreeMap<String, String>,
}

/// Plugins TensorRT-LLM accepts in `TRTLLM_NIXL_KVCACHE_BACKEND`; anything else falls back to UCX with a warning.
const PLUGINS: [&str; 2] = ["UCX", "LIBFABRIC"];

impl NixlOptions {
    pub fn resolve(
        progress_thread: Option<bool>,
        num_workers: u32,
        caller_params: &[(String, String)],
        listen_port: Option<u16>,
    ) -> NixlOptions {
        let plugin = plugin_from(std::env::var("TRTLLM_NIXL_KVCACHE_BACKEND").ok().as_deref());
        // NIXL's progress thread spins; on a small host it takes the core the
        // transfer needs (half the bandwidth on 2 cores), so kvxfer's own
        // backing-off poller is the default there.
        let progress_thread = progress_thread
            .or_else(|| std::env::var("KVX_NIXL_PROGRESS_THREAD").ok().map(|v| v == "1"))
            .unwrap_or_else(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 4));
        let mut params = BTreeMap::new();
        let workers = if num_workers > 0 {
            num_workers
        } else {
            std::env::var("TRTLLM_NIXL_NUM_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
        };
        params.insert("num_workers".to_owned(), workers.to_string());
        if plugin == "UCX" && shared_memory_only(std::env::var("UCX_TLS").ok().as_deref()) {
            // NIXL's UCX plugin asks for peer error handling, which shared-memory-only transports cannot give.
            params.insert("ucx_error_handling_mode".to_owned(), "none".to_owned());
        }
        if let Ok(extra) = std::env::var("KVX_NIXL_BACKEND_PARAMS") {
            params.extend(crate::core::config::parse_params(&extra));
        }
        params.extend(caller_params.iter().cloned());
        NixlOptions { plugin, progress_thread, listen_port, params }
    }
}

/// Whether descriptors are coalesced: on unless `TRTLLM_NIXL_DISABLE_COALESCE`
/// (newer TensorRT-LLM) is true or `TRTLLM_NIXL_ENABLE_COALESCE` (its older
/// opt-in name) is explicitly false; the newer name wins when both are set.
pub fn coalescing_from_env() -> bool {
    coalesce_from(|v| std::env::var(v).ok())
}

fn coalesce_from(get: impl Fn(&str) -> Option<String>) -> bool {
    let flag = |var: &str| {
        let value = get(var)?;
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Some(true),
            "0" | "false" | "off" | "no" | "" => Some(false),
            _ => {
                crate::log_at!(Warn, "{var}={value:?} is not a boolean; ignored");
                None
            }
        }
    };
    match (flag("TRTLLM_NIXL_DISABLE_COALESCE"), flag("TRTLLM_NIXL_ENABLE_COALESCE")) {
        (Some(disable), _) => !disable,
        (None, Some(enable)) => enable,
        (None, None) => true,
    }
}

/// The plugin `TRTLLM_NIXL_KVCACHE_BACKEND` names, as TensorRT-LLM reads it.
fn plugin_from(value: Option<&str>) -> String {
    match value {
        Some(v) if PLUGINS.contains(&v) => v.to_owned(),
        Some(v) if !v.is_empty() => {
            crate::log_at!(Warn, "TRTLLM_NIXL_KVCACHE_BACKEND={v:?} is not UCX or LIBFABRIC; using UCX");
            "UCX".into()
        }
        _ => "UCX".into(),
    }
}

/// True when `UCX_TLS` names no transport that supports peer failure detection.
fn shared_memory_only(tls: Option<&str>) -> bool {
    let Some(tls) = tls else { return false };
    let tls = tls.trim_start_matches('^');
    !tls.split(',')
        .any(|t| ["all", "tcp", "rc", "rc_x", "rc_v", "dc", "dc_x", "ud", "ud_x", "ud_v", "ib"].contains(&t.trim()))
}

fn check(status: nixl_capi_status_t, what: &str) -> Result<()> {
    match status {
        NIXL_CAPI_SUCCESS => Ok(()),
        s => Err(nixl_error(s, what)),
    }
}

pub fn nixl_error(status: nixl_capi_status_t, what: &str) -> Error {
    let code = match status {
        NIXL_CAPI_ERROR_INVALID_PARAM => kvx_status::KVX_ERR_INVALID_ARGUMENT,
        NIXL_CAPI_ERROR_NOT_FOUND => kvx_status::KVX_ERR_NOT_FOUND,
        _ => kvx_status::KVX_ERR_TRANSPORT,
    };
    Error::new(code, format!("{what}: NIXL returned {status} ({})", status_name(status)))
}

/// Requests are checked before NIXL sees them, so NIXL's transport failing one means the peer did.
fn peer_if_backend(e: Error) -> Error {
    if e.status == kvx_status::KVX_ERR_TRANSPORT {
        Error::peer(e.message)
    } else {
        e
    }
}

/// What a NIXL descriptor list holds: memory, or (for the storage plugins)
/// file pieces, whose descriptors carry the offset as address and the file
/// descriptor as device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Memory(kvx_memory_type),
    File,
}

impl From<kvx_memory_type> for Segment {
    fn from(t: kvx_memory_type) -> Self {
        Segment::Memory(t)
    }
}

fn nixl_mem_type(segment: impl Into<Segment>) -> nixl_capi_mem_type_t {
    match segment.into() {
        Segment::Memory(kvx_memory_type::KVX_MEMORY_DRAM) => NIXL_CAPI_MEM_DRAM,
        Segment::Memory(kvx_memory_type::KVX_MEMORY_VRAM) => NIXL_CAPI_MEM_VRAM,
        Segment::File => NIXL_CAPI_MEM_FILE,
    }
}

pub fn c_string(text: &str, what: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}

/// A C-API list or argument object, destroyed when dropped.
struct Owned {
    ptr: *mut c_void,
    destroy: unsafe extern "C" fn(*mut c_void) -> nixl_capi_status_t,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: created by the matching create call and not used after this.
            unsafe { (self.destroy)(self.ptr) };
        }
    }
}

pub struct NixlHandle {
    pub nixl: &'static LoadedNixl,
    agent: nixl_capi_agent_t,
    backend: nixl_capi_backend_t,
    pub name: String,
    /// NIXL's transport plugin ("UCX", "LIBFABRIC").
    pub plugin: String,
    pub progress_thread: bool,
    /// Reused between polls; NIXL fills it and we copy out.
    notif_map: Mutex<Owned>,
    /// Arguments naming only the backend, made once: NIXL reads them and never
    /// changes them, and making them per request costs as much as a small transfer.
    backend_args: Owned,
}

// SAFETY: the agent is created with NIXL's strict thread-sync mode, so its
// calls may come from any thread; the notification map is behind a lock.
unsafe impl Send for NixlHandle {}
unsafe impl Sync for NixlHandle {}

impl NixlHandle {
    pub fn create(name: &str, options: &NixlOptions) -> Result<NixlHandle> {
        let nixl = loader::load()?;
        loader::check_plugin(nixl, &options.plugin)?;
        let api = &nixl.api;
        let cname = c_string(name, "agent name")?;
        let config = nixl_capi_agent_config_t {
            enable_prog_thread: options.progress_thread,
            enable_listen_thread: options.listen_port.is_some(),
            listen_port: options.listen_port.unwrap_or(0) as i32,
            thread_sync: NIXL_CAPI_THREAD_SYNC_STRICT,
            num_workers: 1,
            pthr_delay_us: 0,
            // How often NIXL's listener looks for metadata requests (TensorRT-LLM uses 10 ms).
            lthr_delay_us: 10_000,
            capture_telemetry: false,
        };
        let mut agent = std::ptr::null_mut();
        // SAFETY: valid name and config; `agent` is an out-parameter.
        check(
            unsafe { (api.nixl_capi_create_configured_agent)(cname.as_ptr(), &config, &mut agent) },
            "creating a NIXL agent",
        )?;
        let mut handle = NixlHandle {
            nixl,
            agent,
            backend: std::ptr::null_mut(),
            name: name.to_owned(),
            plugin: options.plugin.clone(),
            progress_thread: options.progress_thread,
            notif_map: Mutex::new(Owned { ptr: std::ptr::null_mut(), destroy: api.nixl_capi_destroy_notif_map }),
            backend_args: Owned { ptr: std::ptr::null_mut(), destroy: api.nixl_capi_destroy_opt_args },
        };
        handle.backend = handle.create_backend(options)?;
        handle.backend_args = handle.opt_args()?;
        let mut map = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check(unsafe { (api.nixl_capi_create_notif_map)(&mut map) }, "creating a notification map")?;
        handle.notif_map.lock().ptr = map;
        Ok(handle)
    }

    fn create_backend(&self, options: &NixlOptions) -> Result<nixl_capi_backend_t> {
        let api = &self.nixl.api;
        let plugin = c_string(&options.plugin, "plugin")?;
        let mut params = self.plugin_defaults(&plugin)?;
        params.extend(options.params.clone());
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check(unsafe { (api.nixl_capi_create_params)(&mut raw) }, "creating plugin parameters")?;
        let owned = Owned { ptr: raw, destroy: api.nixl_capi_destroy_params };
        for (k, v) in &params {
            let (k, v) = (c_string(k, "parameter name")?, c_string(v, "parameter value")?);
            // SAFETY: valid strings; NIXL copies them.
            check(
                unsafe { (api.nixl_capi_params_add)(owned.ptr, k.as_ptr(), v.as_ptr()) },
                "adding a plugin parameter",
            )?;
        }
        let mut backend = std::ptr::null_mut();
        // SAFETY: valid agent, plugin name and parameters.
        let status = unsafe { (api.nixl_capi_create_backend)(self.agent, plugin.as_ptr(), owned.ptr, &mut backend) };
        check(status, &format!("creating NIXL's {} backend with {params:?}", options.plugin))
            .map_err(|e| Error::new(kvx_status::KVX_ERR_BACKEND_UNAVAILABLE, e.message))?;
        crate::log_at!(
            Debug,
            "NIXL agent {:?}: {} plugin, parameters {params:?}, progress thread {}",
            self.name,
            options.plugin,
            options.progress_thread
        );
        Ok(backend)
    }

    /// The plugin's own default parameters, so ours are overrides, not replacements.
    fn plugin_defaults(&self, plugin: &CStr) -> Result<BTreeMap<String, String>> {
        let api = &self.nixl.api;
        let (mut mems, mut params) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: out-parameters.
        let status = unsafe { (api.nixl_capi_get_plugin_params)(self.agent, plugin.as_ptr(), &mut mems, &mut params) };
        let _mems = Owned { ptr: mems, destroy: api.nixl_capi_destroy_mem_list };
        let params = Owned { ptr: params, destroy: api.nixl_capi_destroy_params };
        check(status, &format!("reading NIXL plugin {plugin:?}'s parameters")).map_err(|e| {
            Error::new(
                kvx_status::KVX_ERR_BACKEND_UNAVAILABLE,
                format!(
                    "{} (NIXL could not load the plugin: its own libraries may be missing on this host)",
                    e.message
                ),
            )
        })?;
        let mut out = BTreeMap::new();
        let mut empty = true;
        // SAFETY: valid params object.
        check(unsafe { (api.nixl_capi_params_is_empty)(params.ptr, &mut empty) }, "reading plugin parameters")?;
        if empty {
            return Ok(out);
        }
        let mut iter = std::ptr::null_mut();
        // SAFETY: valid params object; out-parameter.
        check(unsafe { (api.nixl_capi_params_create_iterator)(params.ptr, &mut iter) }, "reading plugin parameters")?;
        let iter = Owned { ptr: iter, destroy: api.nixl_capi_params_destroy_iterator };
        loop {
            let (mut k, mut v, mut more) = (std::ptr::null(), std::ptr::null(), false);
            // SAFETY: valid iterator; the strings live as long as `params`.
            check(
                unsafe { (api.nixl_capi_params_iterator_next)(iter.ptr, &mut k, &mut v, &mut more) },
                "reading plugin parameters",
            )?;
            if !k.is_null() && !v.is_null() {
                // SAFETY: NUL-terminated strings owned by `params`.
                unsafe {
                    out.insert(
                        CStr::from_ptr(k).to_string_lossy().into_owned(),
                        CStr::from_ptr(v).to_string_lossy().into_owned(),
                    )
                };
            }
            if !more {
                return Ok(out);
            }
        }
    }

    fn opt_args(&self) -> Result<Owned> {
        let api = &self.nixl.api;
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check(unsafe { (api.nixl_capi_create_opt_args)(&mut raw) }, "creating NIXL arguments")?;
        let args = Owned { ptr: raw, destroy: api.nixl_capi_destroy_opt_args };
        // SAFETY: valid arguments object and backend.
        check(unsafe { (api.nixl_capi_opt_args_add_backend)(args.ptr, self.backend) }, "selecting the NIXL backend")?;
        Ok(args)
    }

    fn xfer_dlist(&self, mem_type: impl Into<Segment>, descs: &[kvx_memory_desc]) -> Result<Owned> {
        let api = &self.nixl.api;
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check(
            unsafe { (api.nixl_capi_create_xfer_dlist)(nixl_mem_type(mem_type), &mut raw) },
            "creating a descriptor list",
        )?;
        let list = Owned { ptr: raw, destroy: api.nixl_capi_destroy_xfer_dlist };
        for d in descs {
            // SAFETY: valid list; plain values.
            check(
                unsafe {
                    (api.nixl_capi_xfer_dlist_add_desc)(list.ptr, d.addr as usize, d.len as usize, d.device_id as u64)
                },
                "adding a descriptor",
            )?;
        }
        Ok(list)
    }

    pub fn register(&self, mem_type: impl Into<Segment>, descs: &[kvx_memory_desc], register: bool) -> Result<()> {
        let api = &self.nixl.api;
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check(
            unsafe { (api.nixl_capi_create_reg_dlist)(nixl_mem_type(mem_type), &mut raw) },
            "creating a registration list",
        )?;
        let list = Owned { ptr: raw, destroy: api.nixl_capi_destroy_reg_dlist };
        for d in descs {
            // SAFETY: valid list; no per-descriptor metadata.
            check(
                unsafe {
                    (api.nixl_capi_reg_dlist_add_desc)(
                        list.ptr,
                        d.addr as usize,
                        d.len as usize,
                        d.device_id as u64,
                        std::ptr::null(),
                        0,
                    )
                },
                "adding a registration",
            )?;
        }
        let args = self.opt_args()?;
        // SAFETY: valid agent, list and arguments; NIXL keeps its own copy of the list.
        let status = unsafe {
            if register {
                (api.nixl_capi_register_mem)(self.agent, list.ptr, args.ptr)
            } else {
                (api.nixl_capi_deregister_mem)(self.agent, list.ptr, args.ptr)
            }
        };
        check(status, if register { "registering memory with NIXL" } else { "deregistering memory from NIXL" })
    }

    pub fn local_metadata(&self) -> Result<Vec<u8>> {
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: out-parameters; NIXL mallocs the blob and we free it.
        check(
            unsafe { (self.nixl.api.nixl_capi_get_local_md)(self.agent, &mut data, &mut len) },
            "reading local NIXL metadata",
        )?;
        if data.is_null() {
            return Err(Error::new(kvx_status::KVX_ERR_TRANSPORT, "NIXL returned no metadata"));
        }
        // SAFETY: NIXL returned `len` bytes at `data`, allocated with malloc.
        let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, len).to_vec() };
        unsafe { libc::free(data) };
        Ok(bytes)
    }

    /// Load a peer's metadata; returns the agent name it carries.
    pub fn load_metadata(&self, metadata: &[u8]) -> Result<String> {
        let mut name = std::ptr::null_mut();
        // SAFETY: valid bytes; NIXL mallocs the returned name and we free it.
        let status = unsafe {
            (self.nixl.api.nixl_capi_load_remote_md)(
                self.agent,
                metadata.as_ptr() as *const c_void,
                metadata.len(),
                &mut name,
            )
        };
        // NIXL rejects bad bytes as invalid parameters; its transport failing to reach
        // the peer the metadata names is a backend error.
        check(status, "loading remote NIXL metadata").map_err(|e| match status {
            NIXL_CAPI_ERROR_BACKEND => Error::peer(format!("{} (the peer it names could not be reached)", e.message)),
            _ => Error::malformed(e.message),
        })?;
        if name.is_null() {
            return Err(Error::malformed("NIXL loaded metadata without an agent name"));
        }
        // SAFETY: NUL-terminated, malloc'd by NIXL.
        let text = unsafe { CStr::from_ptr(name).to_string_lossy().into_owned() };
        unsafe { libc::free(name as *mut c_void) };
        Ok(text)
    }

    pub fn invalidate(&self, name: &str) -> Result<()> {
        let cname = c_string(name, "agent name")?;
        // SAFETY: valid agent and name.
        check(
            unsafe { (self.nixl.api.nixl_capi_invalidate_remote_md)(self.agent, cname.as_ptr()) },
            &format!("forgetting agent {name:?}"),
        )
    }

    /// True when `name` is loaded and `descs` lie in memory it registered.
    pub fn check_remote(&self, name: &str, mem_type: kvx_memory_type, descs: &[kvx_memory_desc]) -> Result<bool> {
        let cname = c_string(name, "agent name")?;
        let list = self.xfer_dlist(mem_type, descs)?;
        // SAFETY: valid agent, name and list.
        match unsafe { (self.nixl.api.nixl_capi_check_remote_md)(self.agent, cname.as_ptr(), list.ptr) } {
            NIXL_CAPI_SUCCESS => Ok(true),
            NIXL_CAPI_ERROR_NOT_FOUND => Ok(false),
            s => Err(nixl_error(s, &format!("checking agent {name:?}'s memory"))),
        }
    }

    /// Ask the listener at `ip:port` for agent `name`'s metadata; it loads asynchronously.
    pub fn fetch_metadata(&self, name: &str, ip: &str, port: u16) -> Result<()> {
        let api = &self.nixl.api;
        let (cname, cip) = (c_string(name, "agent name")?, c_string(ip, "address")?);
        let args = self.opt_args()?;
        // SAFETY: valid arguments object and strings (copied by NIXL).
        check(unsafe { (api.nixl_capi_opt_args_set_ip_addr)(args.ptr, cip.as_ptr()) }, "setting the peer address")?;
        check(unsafe { (api.nixl_capi_opt_args_set_port)(args.ptr, port) }, "setting the peer port")?;
        check(
            unsafe { (api.nixl_capi_fetch_remote_md)(self.agent, cname.as_ptr(), args.ptr) },
            &format!("fetching agent {name:?}'s metadata from {ip}:{port}"),
        )
    }

    /// Open the transport connection to a loaded peer now rather than on first use.
    pub fn make_connection(&self, name: &str) -> Result<()> {
        let cname = c_string(name, "agent name")?;
        let args = self.opt_args()?;
        // SAFETY: valid agent, name and arguments.
        check(
            unsafe { (self.nixl.api.nixl_capi_agent_make_connection)(self.agent, cname.as_ptr(), args.ptr) },
            &format!("connecting to agent {name:?}"),
        )
    }

    pub fn send_notification(&self, name: &str, message: &[u8]) -> Result<()> {
        let cname = c_string(name, "agent name")?;
        let args = &self.backend_args;
        // SAFETY: valid agent, name, bytes and arguments; NIXL copies the message.
        let status = unsafe {
            (self.nixl.api.nixl_capi_gen_notif)(
                self.agent,
                cname.as_ptr(),
                message.as_ptr() as *const c_void,
                message.len(),
                args.ptr,
            )
        };
        check(status, &format!("notifying agent {name:?}")).map_err(|e| {
            if e.status == kvx_status::KVX_ERR_NOT_FOUND {
                e
            } else {
                Error::peer(e.message)
            }
        })
    }

    /// Collect what NIXL received since the last call, calling `each(sender, message)`
    /// in arrival order per sender. Also drives NIXL's progress when its thread is off.
    pub fn poll_notifications(&self, mut each: impl FnMut(&str, &[u8])) -> Result<()> {
        let api = &self.nixl.api;
        let map = self.notif_map.lock();
        // SAFETY: valid agent and map (serialised by the lock).
        check(
            unsafe { (api.nixl_capi_get_notifs)(self.agent, map.ptr, std::ptr::null_mut()) },
            "reading notifications",
        )?;
        let mut agents = 0usize;
        // SAFETY: valid map; the strings and bytes stay valid until the map is cleared.
        unsafe {
            check((api.nixl_capi_notif_map_size)(map.ptr, &mut agents), "reading notifications")?;
            for i in 0..agents {
                let mut sender = std::ptr::null();
                check((api.nixl_capi_notif_map_get_agent_at)(map.ptr, i, &mut sender), "reading notifications")?;
                let mut count = 0usize;
                check((api.nixl_capi_notif_map_get_notifs_size)(map.ptr, sender, &mut count), "reading notifications")?;
                let sender_name = CStr::from_ptr(sender).to_string_lossy();
                for j in 0..count {
                    let (mut data, mut len) = (std::ptr::null(), 0usize);
                    check(
                        (api.nixl_capi_notif_map_get_notif)(map.ptr, sender, j, &mut data, &mut len),
                        "reading notifications",
                    )?;
                    let bytes = if len == 0 || data.is_null() {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(data as *const u8, len)
                    };
                    each(&sender_name, bytes);
                }
            }
            (api.nixl_capi_notif_map_clear)(map.ptr);
        }
        Ok(())
    }

    /// Create and post one transfer; NIXL returns SUCCESS (done already) or IN_PROG.
    pub fn post(
        &self,
        op: nixl_capi_xfer_op_t,
        local: (impl Into<Segment>, &[kvx_memory_desc]),
        remote: (impl Into<Segment>, &[kvx_memory_desc]),
        remote_name: &str,
        message: Option<&[u8]>,
    ) -> Result<(nixl_capi_xfer_req_t, nixl_capi_status_t)> {
        self.prepare(op, local, remote, remote_name, message)?.post()
    }

    /// Create one transfer without posting it. NIXL refuses here, among other
    /// reasons, a remote range outside the peer's memory (its C API reports
    /// that as a backend error, like any other refusal).
    pub fn prepare<'a>(
        &'a self,
        op: nixl_capi_xfer_op_t,
        local: (impl Into<Segment>, &[kvx_memory_desc]),
        remote: (impl Into<Segment>, &[kvx_memory_desc]),
        remote_name: &'a str,
        message: Option<&[u8]>,
    ) -> Result<Prepared<'a>> {
        let api = &self.nixl.api;
        let cname = c_string(remote_name, "remote name")?;
        let local_list = self.xfer_dlist(local.0, local.1)?;
        let remote_list = self.xfer_dlist(remote.0, remote.1)?;
        let with_message = message.map(|_| self.opt_args()).transpose()?;
        if let (Some(m), Some(args)) = (message, &with_message) {
            // SAFETY: valid arguments object; NIXL copies the message.
            unsafe {
                check(
                    (api.nixl_capi_opt_args_set_notif_msg)(args.ptr, m.as_ptr() as *const c_void, m.len()),
                    "attaching the sync message",
                )?;
                check((api.nixl_capi_opt_args_set_has_notif)(args.ptr, true), "attaching the sync message")?;
            }
        }
        let args = with_message.as_ref().unwrap_or(&self.backend_args);
        let mut req = std::ptr::null_mut();
        // SAFETY: valid agent, lists, name and arguments.
        let status = unsafe {
            (api.nixl_capi_create_xfer_req)(
                self.agent,
                op,
                local_list.ptr,
                remote_list.ptr,
                cname.as_ptr(),
                &mut req,
                args.ptr,
            )
        };
        if status != NIXL_CAPI_SUCCESS {
            return Err(peer_if_backend(nixl_error(
                status,
                &format!("preparing a transfer with agent {remote_name:?}"),
            )));
        }
        Ok(Prepared { handle: self, remote_name, req: Some(req), with_message })
    }

    /// NIXL's status of a request (asking also progresses it).
    ///
    /// # Safety
    /// `req` was made by `post` on this handle and not yet passed to `release`.
    pub unsafe fn transfer_status(&self, req: nixl_capi_xfer_req_t) -> nixl_capi_status_t {
        (self.nixl.api.nixl_capi_get_xfer_status)(self.agent, req)
    }

    /// Release a request (NIXL aborts it if still running) and free its handle.
    ///
    /// # Safety
    /// `req` was made by `post` on this handle and not yet released; it is not used afterwards.
    pub unsafe fn release(&self, req: nixl_capi_xfer_req_t) -> nixl_capi_status_t {
        let status = (self.nixl.api.nixl_capi_release_xfer_req)(self.agent, req);
        (self.nixl.api.nixl_capi_destroy_xfer_req)(req);
        status
    }
}

/// A transfer NIXL has prepared and nothing has posted yet; dropped unposted, it is released.
pub struct Prepared<'a> {
    handle: &'a NixlHandle,
    remote_name: &'a str,
    /// Taken out when posted.
    req: Option<nixl_capi_xfer_req_t>,
    /// The arguments carrying the sync message, if any (else the handle's own).
    with_message: Option<Owned>,
}

impl Prepared<'_> {
    /// Post it; NIXL returns SUCCESS (done already) or IN_PROG.
    pub fn post(mut self) -> Result<(nixl_capi_xfer_req_t, nixl_capi_status_t)> {
        let handle = self.handle;
        let Some(req) = self.req.take() else {
            return Err(Error::invalid("transfer already posted"));
        };
        let args = self.with_message.as_ref().unwrap_or(&handle.backend_args);
        // SAFETY: `req` was created on this agent and not posted yet.
        let posted = unsafe { (handle.nixl.api.nixl_capi_post_xfer_req)(handle.agent, req, args.ptr) };
        if posted != NIXL_CAPI_SUCCESS && posted != NIXL_CAPI_IN_PROG {
            // SAFETY: `req` was just created on this agent and is dropped here.
            unsafe { handle.release(req) };
            let what = format!("posting a transfer to agent {:?}", self.remote_name);
            return Err(peer_if_backend(nixl_error(posted, &what)));
        }
        Ok((req, posted))
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            // SAFETY: the request was never posted, so this is its only and last use.
            unsafe { self.handle.release(req) };
        }
    }
}

impl Drop for NixlHandle {
    fn drop(&mut self) {
        let api = &self.nixl.api;
        drop(std::mem::replace(
            &mut *self.notif_map.lock(),
            Owned { ptr: std::ptr::null_mut(), destroy: api.nixl_capi_destroy_notif_map },
        ));
        // The arguments name the backend: gone before it.
        drop(std::mem::replace(
            &mut self.backend_args,
            Owned { ptr: std::ptr::null_mut(), destroy: api.nixl_capi_destroy_opt_args },
        ));
        // SAFETY: nothing uses the agent after this; NIXL tears down its backends with it.
        unsafe {
            if !self.backend.is_null() {
                (api.nixl_capi_destroy_backend)(self.backend);
            }
            (api.nixl_capi_destroy_agent)(self.agent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_follows_trtllm_variable() {
        assert_eq!(plugin_from(None), "UCX");
        assert_eq!(plugin_from(Some("LIBFABRIC")), "LIBFABRIC");
        assert_eq!(plugin_from(Some("ucx")), "UCX", "names are exact, anything else falls back to UCX");
        assert_eq!(plugin_from(Some("GDS")), "UCX");
    }

    #[test]
    fn coalescing_follows_both_trtllm_variables() {
        let env = |disable: Option<&str>, enable: Option<&str>| {
            coalesce_from(|v| match v {
                "TRTLLM_NIXL_DISABLE_COALESCE" => disable.map(String::from),
                "TRTLLM_NIXL_ENABLE_COALESCE" => enable.map(String::from),
                _ => None,
            })
        };
        assert!(env(None, None), "on by default, as in the newest TensorRT-LLM");
        assert!(!env(Some("1"), None));
        assert!(env(Some("0"), None));
        assert!(!env(None, Some("0")));
        assert!(env(None, Some("1")));
        assert!(!env(Some("true"), Some("1")), "the newer variable wins");
        assert!(env(Some("maybe"), None), "an unreadable value is ignored");
    }

    #[test]
    fn shared_memory_only_transports_are_recognised() {
        assert!(shared_memory_only(Some("sm,self")));
        assert!(shared_memory_only(Some("posix,cma,self")));
        assert!(!shared_memory_only(Some("tcp,self")));
        assert!(!shared_memory_only(Some("sm,rc")));
        assert!(!shared_memory_only(None));
    }
}
