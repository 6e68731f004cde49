//! NIXL's C API (`libnixl_capi.so`), bound at run time. Only the calls kvxfer
//! uses are declared; signatures and the config layout follow NIXL 1.5's
//! `nixl_capi` header (the layout was checked against the 1.5.1 wheel's
//! machine code: `num_workers` is not read there, so it goes to the plugin
//! as a backend parameter instead).
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, c_void};

pub type nixl_capi_status_t = c_int;
pub const NIXL_CAPI_SUCCESS: c_int = 0;
pub const NIXL_CAPI_IN_PROG: c_int = 1;
pub const NIXL_CAPI_ERROR_INVALID_PARAM: c_int = -1;
pub const NIXL_CAPI_ERROR_BACKEND: c_int = -2;
pub const NIXL_CAPI_ERROR_INVALID_STATE: c_int = -3;
pub const NIXL_CAPI_ERROR_EXCEPTION: c_int = -4;
pub const NIXL_CAPI_ERROR_NOT_FOUND: c_int = -6;

pub type nixl_capi_mem_type_t = c_int;
pub const NIXL_CAPI_MEM_DRAM: c_int = 0;
pub const NIXL_CAPI_MEM_VRAM: c_int = 1;
/// Pieces of open files (the storage plugins: POSIX, GDS, GDS_MT).
pub const NIXL_CAPI_MEM_FILE: c_int = 4;

pub type nixl_capi_xfer_op_t = c_int;
pub const NIXL_CAPI_XFER_OP_READ: c_int = 0;
pub const NIXL_CAPI_XFER_OP_WRITE: c_int = 1;

pub const NIXL_CAPI_THREAD_SYNC_STRICT: c_int = 1;

pub type nixl_capi_agent_t = *mut c_void;
pub type nixl_capi_params_t = *mut c_void;
pub type nixl_capi_mem_list_t = *mut c_void;
pub type nixl_capi_backend_t = *mut c_void;
pub type nixl_capi_opt_args_t = *mut c_void;
pub type nixl_capi_param_iter_t = *mut c_void;
pub type nixl_capi_xfer_dlist_t = *mut c_void;
pub type nixl_capi_reg_dlist_t = *mut c_void;
pub type nixl_capi_xfer_req_t = *mut c_void;
pub type nixl_capi_notif_map_t = *mut c_void;

#[repr(C)]
pub struct nixl_capi_agent_config_t {
    pub enable_prog_thread: bool,
    pub enable_listen_thread: bool,
    pub listen_port: c_int,
    pub thread_sync: c_int,
    pub num_workers: c_uint,
    pub pthr_delay_us: u64,
    pub lthr_delay_us: u64,
    pub capture_telemetry: bool,
}

crate::native_api! {
    /// Function pointers resolved from `libnixl_capi.so`.
    NixlApi;
    nixl_capi_create_configured_agent: fn(*const c_char, *const nixl_capi_agent_config_t, *mut nixl_capi_agent_t) -> nixl_capi_status_t;
    nixl_capi_destroy_agent: fn(nixl_capi_agent_t) -> nixl_capi_status_t;
    nixl_capi_get_local_md: fn(nixl_capi_agent_t, *mut *mut c_void, *mut usize) -> nixl_capi_status_t;
    nixl_capi_load_remote_md: fn(nixl_capi_agent_t, *const c_void, usize, *mut *mut c_char) -> nixl_capi_status_t;
    nixl_capi_invalidate_remote_md: fn(nixl_capi_agent_t, *const c_char) -> nixl_capi_status_t;
    nixl_capi_check_remote_md: fn(nixl_capi_agent_t, *const c_char, nixl_capi_xfer_dlist_t) -> nixl_capi_status_t;
    nixl_capi_fetch_remote_md: fn(nixl_capi_agent_t, *const c_char, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_get_plugin_params: fn(nixl_capi_agent_t, *const c_char, *mut nixl_capi_mem_list_t, *mut nixl_capi_params_t) -> nixl_capi_status_t;
    nixl_capi_destroy_mem_list: fn(nixl_capi_mem_list_t) -> nixl_capi_status_t;
    nixl_capi_create_params: fn(*mut nixl_capi_params_t) -> nixl_capi_status_t;
    nixl_capi_params_add: fn(nixl_capi_params_t, *const c_char, *const c_char) -> nixl_capi_status_t;
    nixl_capi_params_is_empty: fn(nixl_capi_params_t, *mut bool) -> nixl_capi_status_t;
    nixl_capi_params_create_iterator: fn(nixl_capi_params_t, *mut nixl_capi_param_iter_t) -> nixl_capi_status_t;
    nixl_capi_params_iterator_next: fn(nixl_capi_param_iter_t, *mut *const c_char, *mut *const c_char, *mut bool) -> nixl_capi_status_t;
    nixl_capi_params_destroy_iterator: fn(nixl_capi_param_iter_t) -> nixl_capi_status_t;
    nixl_capi_destroy_params: fn(nixl_capi_params_t) -> nixl_capi_status_t;
    nixl_capi_create_backend: fn(nixl_capi_agent_t, *const c_char, nixl_capi_params_t, *mut nixl_capi_backend_t) -> nixl_capi_status_t;
    nixl_capi_destroy_backend: fn(nixl_capi_backend_t) -> nixl_capi_status_t;
    nixl_capi_create_opt_args: fn(*mut nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_destroy_opt_args: fn(nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_opt_args_add_backend: fn(nixl_capi_opt_args_t, nixl_capi_backend_t) -> nixl_capi_status_t;
    nixl_capi_opt_args_set_notif_msg: fn(nixl_capi_opt_args_t, *const c_void, usize) -> nixl_capi_status_t;
    nixl_capi_opt_args_set_has_notif: fn(nixl_capi_opt_args_t, bool) -> nixl_capi_status_t;
    nixl_capi_opt_args_set_ip_addr: fn(nixl_capi_opt_args_t, *const c_char) -> nixl_capi_status_t;
    nixl_capi_opt_args_set_port: fn(nixl_capi_opt_args_t, u16) -> nixl_capi_status_t;
    nixl_capi_register_mem: fn(nixl_capi_agent_t, nixl_capi_reg_dlist_t, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_deregister_mem: fn(nixl_capi_agent_t, nixl_capi_reg_dlist_t, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_agent_make_connection: fn(nixl_capi_agent_t, *const c_char, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_get_notifs: fn(nixl_capi_agent_t, nixl_capi_notif_map_t, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_create_notif_map: fn(*mut nixl_capi_notif_map_t) -> nixl_capi_status_t;
    nixl_capi_destroy_notif_map: fn(nixl_capi_notif_map_t) -> nixl_capi_status_t;
    nixl_capi_notif_map_size: fn(nixl_capi_notif_map_t, *mut usize) -> nixl_capi_status_t;
    nixl_capi_notif_map_get_agent_at: fn(nixl_capi_notif_map_t, usize, *mut *const c_char) -> nixl_capi_status_t;
    nixl_capi_notif_map_get_notifs_size: fn(nixl_capi_notif_map_t, *const c_char, *mut usize) -> nixl_capi_status_t;
    nixl_capi_notif_map_get_notif: fn(nixl_capi_notif_map_t, *const c_char, usize, *mut *const c_void, *mut usize) -> nixl_capi_status_t;
    nixl_capi_notif_map_clear: fn(nixl_capi_notif_map_t) -> nixl_capi_status_t;
    nixl_capi_gen_notif: fn(nixl_capi_agent_t, *const c_char, *const c_void, usize, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_create_xfer_req: fn(nixl_capi_agent_t, nixl_capi_xfer_op_t, nixl_capi_xfer_dlist_t, nixl_capi_xfer_dlist_t, *const c_char, *mut nixl_capi_xfer_req_t, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_post_xfer_req: fn(nixl_capi_agent_t, nixl_capi_xfer_req_t, nixl_capi_opt_args_t) -> nixl_capi_status_t;
    nixl_capi_get_xfer_status: fn(nixl_capi_agent_t, nixl_capi_xfer_req_t) -> nixl_capi_status_t;
    nixl_capi_release_xfer_req: fn(nixl_capi_agent_t, nixl_capi_xfer_req_t) -> nixl_capi_status_t;
    nixl_capi_destroy_xfer_req: fn(nixl_capi_xfer_req_t) -> nixl_capi_status_t;
    nixl_capi_create_xfer_dlist: fn(nixl_capi_mem_type_t, *mut nixl_capi_xfer_dlist_t) -> nixl_capi_status_t;
    nixl_capi_destroy_xfer_dlist: fn(nixl_capi_xfer_dlist_t) -> nixl_capi_status_t;
    nixl_capi_xfer_dlist_add_desc: fn(nixl_capi_xfer_dlist_t, usize, usize, u64) -> nixl_capi_status_t;
    nixl_capi_create_reg_dlist: fn(nixl_capi_mem_type_t, *mut nixl_capi_reg_dlist_t) -> nixl_capi_status_t;
    nixl_capi_destroy_reg_dlist: fn(nixl_capi_reg_dlist_t) -> nixl_capi_status_t;
    nixl_capi_reg_dlist_add_desc: fn(nixl_capi_reg_dlist_t, usize, usize, u64, *const c_void, usize) -> nixl_capi_status_t;
}

pub fn status_name(status: nixl_capi_status_t) -> &'static str {
    match status {
        NIXL_CAPI_SUCCESS => "success",
        NIXL_CAPI_IN_PROG => "in progress",
        NIXL_CAPI_ERROR_INVALID_PARAM => "invalid parameter",
        NIXL_CAPI_ERROR_BACKEND => "backend error",
        NIXL_CAPI_ERROR_INVALID_STATE => "invalid state",
        NIXL_CAPI_ERROR_EXCEPTION => "exception inside NIXL",
        NIXL_CAPI_ERROR_NOT_FOUND => "not found",
        _ => "unknown NIXL status",
    }
}
