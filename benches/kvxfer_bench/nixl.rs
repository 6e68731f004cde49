//! NIXL used directly through its C API (`libnixl_capi.so` from the
//! `nixl-cu12` wheel), for the baseline columns: the calls the benchmark
//! needs, including prepared lists (`prep_xfer_dlist`/`make_xfer_req`) that
//! kvxfer's backend does not bind. Progress thread off (it halves bandwidth
//! on two cores), so the target keeps polling notifications.

use libloading::Library;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

type Status = i32;
type Handle = *mut c_void;
const SUCCESS: Status = 0;
const IN_PROG: Status = 1;
const MEM_DRAM: u32 = 0;

#[repr(C)]
struct AgentConfig {
    enable_prog_thread: bool,
    enable_listen_thread: bool,
    listen_port: i32,
    thread_sync: u32,
    num_workers: u32,
    pthr_delay_us: u64,
    lthr_delay_us: u64,
    capture_telemetry: bool,
}

macro_rules! nixl_api {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        #[allow(non_snake_case)]
        struct Api { $($name: unsafe extern "C" fn($($arg),*) -> $ret,)* }
        impl Api {
            unsafe fn load(lib: &Library) -> Result<Api, String> {
                Ok(Api { $($name: *lib.get(concat!("nixl_capi_", stringify!($name), "\0").as_bytes()).map_err(|e| format!("{e}"))?,)* })
            }
        }
    };
}

nixl_api! {
    create_configured_agent: fn(*const c_char, *const AgentConfig, *mut Handle) -> Status;
    destroy_agent: fn(Handle) -> Status;
    get_plugin_params: fn(Handle, *const c_char, *mut Handle, *mut Handle) -> Status;
    destroy_mem_list: fn(Handle) -> Status;
    destroy_params: fn(Handle) -> Status;
    params_add: fn(Handle, *const c_char, *const c_char) -> Status;
    create_backend: fn(Handle, *const c_char, Handle, *mut Handle) -> Status;
    create_reg_dlist: fn(u32, *mut Handle) -> Status;
    destroy_reg_dlist: fn(Handle) -> Status;
    reg_dlist_add_desc: fn(Handle, usize, usize, u64, *const c_void, usize) -> Status;
    register_mem: fn(Handle, Handle, Handle) -> Status;
    deregister_mem: fn(Handle, Handle, Handle) -> Status;
    get_local_md: fn(Handle, *mut *mut c_void, *mut usize) -> Status;
    load_remote_md: fn(Handle, *const c_void, usize, *mut *mut c_char) -> Status;
    create_xfer_dlist: fn(u32, *mut Handle) -> Status;
    destroy_xfer_dlist: fn(Handle) -> Status;
    xfer_dlist_add_desc: fn(Handle, usize, usize, u64) -> Status;
    prep_xfer_dlist: fn(Handle, *const c_char, Handle, *mut Handle, Handle) -> Status;
    release_xfer_dlist_handle: fn(Handle, Handle) -> Status;
    make_xfer_req: fn(Handle, u32, Handle, *const i32, usize, Handle, *const i32, usize, *mut Handle, Handle) -> Status;
    create_xfer_req: fn(Handle, u32, Handle, Handle, *const c_char, *mut Handle, Handle) -> Status;
    post_xfer_req: fn(Handle, Handle, Handle) -> Status;
    get_xfer_status: fn(Handle, Handle) -> Status;
    release_xfer_req: fn(Handle, Handle) -> Status;
    destroy_xfer_req: fn(Handle) -> Status;
    create_notif_map: fn(*mut Handle) -> Status;
    destroy_notif_map: fn(Handle) -> Status;
    get_notifs: fn(Handle, Handle, Handle) -> Status;
    notif_map_size: fn(Handle, *mut usize) -> Status;
    notif_map_get_agent_at: fn(Handle, usize, *const *const c_char) -> Status;
    notif_map_get_notifs_size: fn(Handle, *const c_char, *mut usize) -> Status;
    notif_map_clear: fn(Handle) -> Status;
    gen_notif: fn(Handle, *const c_char, *const c_void, usize, Handle) -> Status;
}

/// `libnixl_capi.so` as kvxfer's NIXL backend finds it (`KVX_NIXL_LIB`, the
/// library path, the `nixl-cu12`/`-cu13` wheels), so both columns use one copy.
pub fn library_path() -> Result<PathBuf, String> {
    kvxfer::backend::nixl::loader::load().map(|l| PathBuf::from(&l.path)).map_err(|e| e.to_string())
}

pub struct Nixl {
    api: Api,
    pub agent: Handle,
    notifs: Handle,
    _lib: Library,
}

fn check(what: &str, st: Status) -> Result<(), String> {
    if st == SUCCESS {
        Ok(())
    } else {
        Err(format!("NIXL {what} failed: status {st}"))
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

impl Nixl {
    /// An agent with the UCX backend, no progress or listener thread.
    pub fn new(name: &str) -> Result<Nixl, String> {
        let path = library_path()?;
        // SAFETY: loading a shared library by absolute path (its own RUNPATH finds libnixl.so).
        let lib = unsafe { Library::new(&path) }.map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: symbol types follow nixl-sys 1.5.2's wrapper.h.
        let api = unsafe { Api::load(&lib)? };
        let cfg = AgentConfig {
            enable_prog_thread: false,
            enable_listen_thread: false,
            listen_port: 0,
            thread_sync: 0,
            num_workers: 1,
            pthr_delay_us: 0,
            lthr_delay_us: 0,
            capture_telemetry: false,
        };
        let mut agent: Handle = std::ptr::null_mut();
        let mut notifs: Handle = std::ptr::null_mut();
        // SAFETY: plain C API calls with valid out-pointers.
        unsafe {
            check("create agent", (api.create_configured_agent)(cstr(name).as_ptr(), &cfg, &mut agent))?;
            let (mut mems, mut params): (Handle, Handle) = (std::ptr::null_mut(), std::ptr::null_mut());
            check("get UCX params", (api.get_plugin_params)(agent, cstr("UCX").as_ptr(), &mut mems, &mut params))?;
            // NIXL's UCX backend fails on shared memory with peer error handling on.
            if std::env::var("UCX_TLS").is_ok_and(|t| t.contains("sm")) {
                check(
                    "set params",
                    (api.params_add)(params, cstr("ucx_error_handling_mode").as_ptr(), cstr("none").as_ptr()),
                )?;
            }
            let mut backend: Handle = std::ptr::null_mut();
            let st = (api.create_backend)(agent, cstr("UCX").as_ptr(), params, &mut backend);
            (api.destroy_mem_list)(mems);
            (api.destroy_params)(params);
            check("create UCX backend", st)?;
            check("notif map", (api.create_notif_map)(&mut notifs))?;
        }
        Ok(Nixl { api, agent, notifs, _lib: lib })
    }

    fn reg_list(&self, regions: &[(u64, u64)]) -> Result<Handle, String> {
        let mut list: Handle = std::ptr::null_mut();
        // SAFETY: list calls on a list we own.
        unsafe {
            check("reg dlist", (self.api.create_reg_dlist)(MEM_DRAM, &mut list))?;
            for &(addr, len) in regions {
                check(
                    "reg dlist add",
                    (self.api.reg_dlist_add_desc)(list, addr as usize, len as usize, 0, std::ptr::null(), 0),
                )?;
            }
        }
        Ok(list)
    }

    pub fn register(&self, regions: &[(u64, u64)]) -> Result<(), String> {
        let list = self.reg_list(regions)?;
        // SAFETY: registering memory the caller owns.
        let st = unsafe { (self.api.register_mem)(self.agent, list, std::ptr::null_mut()) };
        unsafe { (self.api.destroy_reg_dlist)(list) };
        check("register", st)
    }

    pub fn deregister(&self, regions: &[(u64, u64)]) -> Result<(), String> {
        let list = self.reg_list(regions)?;
        // SAFETY: as above.
        let st = unsafe { (self.api.deregister_mem)(self.agent, list, std::ptr::null_mut()) };
        unsafe { (self.api.destroy_reg_dlist)(list) };
        check("deregister", st)
    }

    pub fn metadata(&self) -> Result<Vec<u8>, String> {
        let (mut data, mut len): (*mut c_void, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: NIXL mallocs the blob; we copy and free it.
        unsafe {
            check("get local md", (self.api.get_local_md)(self.agent, &mut data, &mut len))?;
            let v = std::slice::from_raw_parts(data as *const u8, len).to_vec();
            libc::free(data);
            Ok(v)
        }
    }

    pub fn load_remote(&self, md: &[u8]) -> Result<String, String> {
        let mut name: *mut c_char = std::ptr::null_mut();
        // SAFETY: NIXL strdup()s the name.
        unsafe {
            check(
                "load remote md",
                (self.api.load_remote_md)(self.agent, md.as_ptr() as *const c_void, md.len(), &mut name),
            )?;
            let s = CStr::from_ptr(name).to_string_lossy().into_owned();
            libc::free(name as *mut c_void);
            Ok(s)
        }
    }

    pub fn xfer_list(&self, descs: impl Iterator<Item = (u64, u64)>) -> Result<XferList<'_>, String> {
        let mut list: Handle = std::ptr::null_mut();
        // SAFETY: list calls on a list we own.
        unsafe {
            check("xfer dlist", (self.api.create_xfer_dlist)(MEM_DRAM, &mut list))?;
            for (addr, len) in descs {
                check("xfer dlist add", (self.api.xfer_dlist_add_desc)(list, addr as usize, len as usize, 0))?;
            }
        }
        Ok(XferList { nixl: self, list })
    }

    /// Create and post one request; returns the handle once posted.
    pub fn post(&self, write: bool, local: &XferList, remote: &XferList, peer: &CStr) -> Result<Handle, String> {
        let mut req: Handle = std::ptr::null_mut();
        // SAFETY: lists and peer are valid; NIXL validates descriptors against registrations.
        unsafe {
            check(
                "create xfer",
                (self.api.create_xfer_req)(
                    self.agent,
                    write as u32,
                    local.list,
                    remote.list,
                    peer.as_ptr(),
                    &mut req,
                    std::ptr::null_mut(),
                ),
            )?;
            let st = (self.api.post_xfer_req)(self.agent, req, std::ptr::null_mut());
            if st != SUCCESS && st != IN_PROG {
                self.finish(req);
                return Err(format!("NIXL post failed: status {st}"));
            }
        }
        Ok(req)
    }

    /// Prepare a descriptor list once (vLLM's `prep_xfer_dlist`): `peer`
    /// None for local memory, else the remote agent's name.
    pub fn prep(&self, peer: Option<&CStr>, list: &XferList) -> Result<Prepped<'_>, String> {
        let local = cstr("");
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a list of ours; NIXL copies what it keeps.
        check("prep xfer dlist", unsafe {
            (self.api.prep_xfer_dlist)(
                self.agent,
                peer.unwrap_or(&local).as_ptr(),
                list.list,
                &mut handle,
                std::ptr::null_mut(),
            )
        })?;
        Ok(Prepped { nixl: self, handle })
    }

    /// Make a request from prepared lists and indices (vLLM's `make_prepped_xfer`) and post it.
    pub fn post_prepped(
        &self,
        write: bool,
        local: &Prepped,
        remote: &Prepped,
        indices: &[i32],
    ) -> Result<Handle, String> {
        let mut req: Handle = std::ptr::null_mut();
        // SAFETY: prepared handles of this agent; indices are in range.
        unsafe {
            check(
                "make xfer",
                (self.api.make_xfer_req)(
                    self.agent,
                    write as u32,
                    local.handle,
                    indices.as_ptr(),
                    indices.len(),
                    remote.handle,
                    indices.as_ptr(),
                    indices.len(),
                    &mut req,
                    std::ptr::null_mut(),
                ),
            )?;
            let st = (self.api.post_xfer_req)(self.agent, req, std::ptr::null_mut());
            if st != SUCCESS && st != IN_PROG {
                self.finish(req);
                return Err(format!("NIXL post failed: status {st}"));
            }
        }
        Ok(req)
    }

    /// Poll a posted request until it is done (this drives NIXL's progress).
    pub fn wait(&self, req: Handle, deadline: std::time::Instant) -> Result<(), String> {
        loop {
            // SAFETY: a live request of this agent.
            let st = unsafe { (self.api.get_xfer_status)(self.agent, req) };
            match st {
                SUCCESS => {
                    self.finish(req);
                    return Ok(());
                }
                IN_PROG if std::time::Instant::now() < deadline => std::hint::spin_loop(),
                IN_PROG => return Err("NIXL transfer timed out".into()),
                other => {
                    self.finish(req);
                    return Err(format!("NIXL transfer failed: status {other}"));
                }
            }
        }
    }

    fn finish(&self, req: Handle) {
        // SAFETY: a request of this agent, released once.
        unsafe {
            (self.api.release_xfer_req)(self.agent, req);
            (self.api.destroy_xfer_req)(req);
        }
    }

    pub fn notify(&self, peer: &CStr, msg: &[u8]) -> Result<(), String> {
        // SAFETY: valid peer name and message.
        check("gen notif", unsafe {
            (self.api.gen_notif)(
                self.agent,
                peer.as_ptr(),
                msg.as_ptr() as *const c_void,
                msg.len(),
                std::ptr::null_mut(),
            )
        })
    }

    /// Poll once for notifications (also progresses the agent); returns how many arrived.
    pub fn poll_notifications(&self) -> usize {
        let mut total = 0;
        // SAFETY: our notification map, cleared after counting.
        unsafe {
            if (self.api.get_notifs)(self.agent, self.notifs, std::ptr::null_mut()) != SUCCESS {
                return 0;
            }
            let mut agents = 0usize;
            (self.api.notif_map_size)(self.notifs, &mut agents);
            for i in 0..agents {
                let mut name: *const c_char = std::ptr::null();
                if (self.api.notif_map_get_agent_at)(self.notifs, i, &mut name) == SUCCESS {
                    let mut n = 0usize;
                    (self.api.notif_map_get_notifs_size)(self.notifs, name, &mut n);
                    total += n;
                }
            }
            if agents > 0 {
                (self.api.notif_map_clear)(self.notifs);
            }
        }
        total
    }
}

impl Drop for Nixl {
    fn drop(&mut self) {
        // SAFETY: last use of the agent.
        unsafe {
            (self.api.destroy_notif_map)(self.notifs);
            (self.api.destroy_agent)(self.agent);
        }
    }
}

pub struct XferList<'a> {
    nixl: &'a Nixl,
    list: Handle,
}

impl Drop for XferList<'_> {
    fn drop(&mut self) {
        // SAFETY: a list we own.
        unsafe { (self.nixl.api.destroy_xfer_dlist)(self.list) };
    }
}

pub struct Prepped<'a> {
    nixl: &'a Nixl,
    handle: Handle,
}

impl Drop for Prepped<'_> {
    fn drop(&mut self) {
        // SAFETY: a handle this agent prepared.
        unsafe { (self.nixl.api.release_xfer_dlist_handle)(self.nixl.agent, self.handle) };
    }
}
