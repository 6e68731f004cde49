//! The part of UCP's C API that kvxfer uses, bound at run time.
//!
//! Hand-written from the UCX 1.14+ headers (the oldest API this binding
//! supports; checked against 1.22) instead of generated, so builds need
//! neither UCX headers nor libclang. Parameter structs are built zeroed with
//! only the fields named in `field_mask` set, the mechanism UCX uses to keep
//! newer libraries compatible with older callers; each struct below is at
//! least as large as its newest known layout.
#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};

pub type ucs_status_t = i8;
pub type ucp_context_h = *mut c_void;
pub type ucp_worker_h = *mut c_void;
pub type ucp_ep_h = *mut c_void;
pub type ucp_mem_h = *mut c_void;
pub type ucp_rkey_h = *mut c_void;
pub type ucp_config_t = c_void;
pub type ucp_address_t = c_void;
pub type ucp_tag_t = u64;

pub const UCS_OK: ucs_status_t = 0;
pub const UCS_INPROGRESS: ucs_status_t = 1;
pub const UCS_ERR_BUSY: ucs_status_t = -15;
pub const UCS_ERR_CANCELED: ucs_status_t = -16;
pub const UCS_ERR_SHMEM_SEGMENT: ucs_status_t = -17;
pub const UCS_ERR_MESSAGE_TRUNCATED: ucs_status_t = -9;
pub const UCS_ERR_NO_MEMORY: ucs_status_t = -4;
pub const UCS_ERR_LAST: isize = -100;

pub const UCP_PARAM_FIELD_FEATURES: u64 = 1 << 0;
pub const UCP_PARAM_FIELD_MT_WORKERS_SHARED: u64 = 1 << 5;
pub const UCP_PARAM_FIELD_NAME: u64 = 1 << 8;
pub const UCP_FEATURE_TAG: u64 = 1 << 0;
pub const UCP_FEATURE_RMA: u64 = 1 << 1;
pub const UCP_FEATURE_WAKEUP: u64 = 1 << 4;
pub const UCP_FEATURE_AM: u64 = 1 << 6;

pub const UCP_WORKER_PARAM_FIELD_THREAD_MODE: u64 = 1 << 0;
pub const UCS_THREAD_MODE_SERIALIZED: c_int = 1;

pub const UCP_EP_PARAM_FIELD_REMOTE_ADDRESS: u64 = 1 << 0;
pub const UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE: u64 = 1 << 1;
pub const UCP_EP_PARAM_FIELD_ERR_HANDLER: u64 = 1 << 2;
pub const UCP_ERR_HANDLING_MODE_PEER: c_int = 1;

pub const UCP_MEM_MAP_PARAM_FIELD_ADDRESS: u64 = 1 << 0;
pub const UCP_MEM_MAP_PARAM_FIELD_LENGTH: u64 = 1 << 1;
pub const UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE: u64 = 1 << 4;
pub const UCS_MEMORY_TYPE_HOST: c_int = 0;
pub const UCS_MEMORY_TYPE_CUDA: c_int = 1;

pub const UCP_OP_ATTR_FIELD_CALLBACK: u32 = 1 << 1;
pub const UCP_OP_ATTR_FIELD_USER_DATA: u32 = 1 << 2;
pub const UCP_OP_ATTR_FIELD_FLAGS: u32 = 1 << 4;
pub const UCP_OP_ATTR_FIELD_MEMORY_TYPE: u32 = 1 << 6;
pub const UCP_OP_ATTR_FIELD_MEMH: u32 = 1 << 8;
pub const UCP_OP_ATTR_FLAG_NO_IMM_CMPL: u32 = 1 << 16;
pub const UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL: u32 = 1 << 18;
pub const UCP_EP_CLOSE_FLAG_FORCE: u32 = 1;

pub const UCP_AM_HANDLER_PARAM_FIELD_ID: u64 = 1 << 0;
pub const UCP_AM_HANDLER_PARAM_FIELD_FLAGS: u64 = 1 << 1;
pub const UCP_AM_HANDLER_PARAM_FIELD_CB: u64 = 1 << 2;
pub const UCP_AM_HANDLER_PARAM_FIELD_ARG: u64 = 1 << 3;
pub const UCP_AM_FLAG_WHOLE_MSG: u32 = 1;
pub const UCP_AM_SEND_FLAG_EAGER: u32 = 2;
pub const UCP_AM_RECV_ATTR_FLAG_RNDV: u64 = 1 << 17;

pub type ucp_send_nbx_callback_t =
    unsafe extern "C" fn(request: *mut c_void, status: ucs_status_t, user_data: *mut c_void);
pub type ucp_tag_recv_nbx_callback_t = unsafe extern "C" fn(
    request: *mut c_void,
    status: ucs_status_t,
    info: *const ucp_tag_recv_info_t,
    user_data: *mut c_void,
);
pub type ucp_err_handler_cb_t = unsafe extern "C" fn(arg: *mut c_void, ep: ucp_ep_h, status: ucs_status_t);
pub type ucp_am_recv_callback_t = unsafe extern "C" fn(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const ucp_am_recv_param_t,
) -> ucs_status_t;

#[repr(C)]
pub struct ucp_params_t {
    pub field_mask: u64,
    pub features: u64,
    pub request_size: usize,
    pub request_init: *mut c_void,
    pub request_cleanup: *mut c_void,
    pub tag_sender_mask: u64,
    pub mt_workers_shared: c_int,
    pub estimated_num_eps: usize,
    pub estimated_num_ppn: usize,
    pub name: *const c_char,
    pub node_local_id: usize,
    /// Room for fields newer UCX releases append.
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_worker_params_t {
    pub field_mask: u64,
    pub thread_mode: c_int,
    pub cpu_mask: [u64; 16],
    pub events: c_uint,
    pub user_data: *mut c_void,
    pub event_fd: c_int,
    pub flags: u64,
    pub name: *const c_char,
    pub am_alignment: usize,
    pub client_id: u64,
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_err_handler_t {
    pub cb: Option<ucp_err_handler_cb_t>,
    pub arg: *mut c_void,
}

#[repr(C)]
pub struct ucp_ep_params_t {
    pub field_mask: u64,
    pub address: *const ucp_address_t,
    pub err_mode: c_int,
    pub err_handler: ucp_err_handler_t,
    pub user_data: *mut c_void,
    pub flags: c_uint,
    pub sockaddr: [u64; 2],
    pub conn_request: *mut c_void,
    pub name: *const c_char,
    pub local_sockaddr: [u64; 2],
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_mem_map_params_t {
    pub field_mask: u64,
    pub address: *mut c_void,
    pub length: usize,
    pub flags: c_uint,
    pub prot: c_uint,
    pub memory_type: c_int,
    pub exported_memh_buffer: *const c_void,
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_request_param_t {
    pub op_attr_mask: u32,
    pub flags: u32,
    pub request: *mut c_void,
    pub cb: *const c_void,
    pub datatype: u64,
    pub user_data: *mut c_void,
    pub reply_buffer: *mut c_void,
    pub memory_type: c_int,
    pub recv_info: *mut c_void,
    pub memh: ucp_mem_h,
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_tag_recv_info_t {
    pub sender_tag: ucp_tag_t,
    pub length: usize,
}

#[repr(C)]
pub struct ucp_am_handler_param_t {
    pub field_mask: u64,
    pub id: c_uint,
    pub flags: u32,
    pub cb: Option<ucp_am_recv_callback_t>,
    pub arg: *mut c_void,
    pub _reserved: [u64; 8],
}

pub const UCP_EP_ATTR_FIELD_TRANSPORTS: u64 = 1 << 3;

#[repr(C)]
pub struct ucp_transport_entry_t {
    pub transport_name: *const c_char,
    pub device_name: *const c_char,
}

#[repr(C)]
pub struct ucp_transports_t {
    pub entries: *mut ucp_transport_entry_t,
    pub num_entries: c_uint,
    pub entry_size: usize,
}

#[repr(C)]
pub struct ucp_ep_attr_t {
    pub field_mask: u64,
    pub name: [c_char; 32],
    /// Two `struct sockaddr_storage`.
    pub local_sockaddr: [u64; 16],
    pub remote_sockaddr: [u64; 16],
    pub transports: ucp_transports_t,
    pub user_data: *mut c_void,
    pub _reserved: [u64; 16],
}

#[repr(C)]
pub struct ucp_am_recv_param_t {
    pub recv_attr: u64,
    pub reply_ep: ucp_ep_h,
}

crate::native_api! {
    /// Function pointers resolved from `libucp` (and its `libucs` dependency).
    UcpApi;
    ucp_get_version: fn(*mut c_uint, *mut c_uint, *mut c_uint);
    ucp_get_version_string: fn() -> *const c_char;
    ucp_config_read: fn(*const c_char, *const c_char, *mut *mut ucp_config_t) -> ucs_status_t;
    ucp_config_modify: fn(*mut ucp_config_t, *const c_char, *const c_char) -> ucs_status_t;
    ucp_config_release: fn(*mut ucp_config_t);
    ucp_init_version: fn(c_uint, c_uint, *const ucp_params_t, *const ucp_config_t, *mut ucp_context_h) -> ucs_status_t;
    ucp_cleanup: fn(ucp_context_h);
    ucp_worker_create: fn(ucp_context_h, *const ucp_worker_params_t, *mut ucp_worker_h) -> ucs_status_t;
    ucp_worker_destroy: fn(ucp_worker_h);
    ucp_worker_get_address: fn(ucp_worker_h, *mut *mut ucp_address_t, *mut usize) -> ucs_status_t;
    ucp_worker_release_address: fn(ucp_worker_h, *mut ucp_address_t);
    ucp_worker_progress: fn(ucp_worker_h) -> c_uint;
    ucp_worker_get_efd: fn(ucp_worker_h, *mut c_int) -> ucs_status_t;
    ucp_worker_arm: fn(ucp_worker_h) -> ucs_status_t;
    ucp_worker_signal: fn(ucp_worker_h) -> ucs_status_t;
    ucp_worker_set_am_recv_handler: fn(ucp_worker_h, *const ucp_am_handler_param_t) -> ucs_status_t;
    ucp_ep_create: fn(ucp_worker_h, *const ucp_ep_params_t, *mut ucp_ep_h) -> ucs_status_t;
    ucp_ep_close_nbx: fn(ucp_ep_h, *const ucp_request_param_t) -> *mut c_void;
    ucp_ep_flush_nbx: fn(ucp_ep_h, *const ucp_request_param_t) -> *mut c_void;
    ucp_ep_query: fn(ucp_ep_h, *mut ucp_ep_attr_t) -> ucs_status_t;
    ucp_mem_map: fn(ucp_context_h, *const ucp_mem_map_params_t, *mut ucp_mem_h) -> ucs_status_t;
    ucp_mem_unmap: fn(ucp_context_h, ucp_mem_h) -> ucs_status_t;
    ucp_rkey_pack: fn(ucp_context_h, ucp_mem_h, *mut *mut c_void, *mut usize) -> ucs_status_t;
    ucp_rkey_buffer_release: fn(*mut c_void);
    ucp_ep_rkey_unpack: fn(ucp_ep_h, *const c_void, *mut ucp_rkey_h) -> ucs_status_t;
    ucp_rkey_destroy: fn(ucp_rkey_h);
    ucp_put_nbx: fn(ucp_ep_h, *const c_void, usize, u64, ucp_rkey_h, *const ucp_request_param_t) -> *mut c_void;
    ucp_get_nbx: fn(ucp_ep_h, *mut c_void, usize, u64, ucp_rkey_h, *const ucp_request_param_t) -> *mut c_void;
    ucp_tag_send_nbx: fn(ucp_ep_h, *const c_void, usize, ucp_tag_t, *const ucp_request_param_t) -> *mut c_void;
    ucp_tag_recv_nbx: fn(ucp_worker_h, *mut c_void, usize, ucp_tag_t, ucp_tag_t, *const ucp_request_param_t) -> *mut c_void;
    ucp_am_send_nbx: fn(ucp_ep_h, c_uint, *const c_void, usize, *const c_void, usize, *const ucp_request_param_t) -> *mut c_void;
    ucp_request_check_status: fn(*mut c_void) -> ucs_status_t;
    ucp_request_cancel: fn(ucp_worker_h, *mut c_void);
    ucp_request_free: fn(*mut c_void);
    ucs_status_string: fn(ucs_status_t) -> *const c_char;
}

/// What a `*_nbx` call returned: done, failed, or a request to wait on.
/// Mirrors the `UCS_PTR_IS_ERR` / `UCS_PTR_STATUS` macros.
pub enum Posted {
    Done,
    Failed(ucs_status_t),
    Pending(*mut c_void),
}

pub fn classify(ptr: *mut c_void) -> Posted {
    let value = ptr as isize;
    if ptr.is_null() {
        Posted::Done
    } else if (UCS_ERR_LAST..0).contains(&value) {
        Posted::Failed(value as ucs_status_t)
    } else {
        Posted::Pending(ptr)
    }
}

/// A zeroed parameter struct; UCX reads only the fields named in its mask.
pub fn zeroed<T>() -> T {
    // SAFETY: every struct here is plain data (integers, raw pointers, Option<fn>) for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Offsets measured from the UCX 1.22 headers with offsetof().
    #[test]
    fn layouts_match_ucx_headers() {
        assert_eq!(offset_of!(ucp_params_t, tag_sender_mask), 40);
        assert_eq!(offset_of!(ucp_params_t, name), 72);
        assert_eq!(offset_of!(ucp_worker_params_t, events), 144);
        assert_eq!(offset_of!(ucp_worker_params_t, name), 176);
        assert_eq!(offset_of!(ucp_ep_params_t, err_handler), 24);
        assert_eq!(offset_of!(ucp_ep_params_t, sockaddr), 56);
        assert_eq!(offset_of!(ucp_ep_params_t, name), 80);
        assert_eq!(offset_of!(ucp_mem_map_params_t, memory_type), 32);
        assert_eq!(offset_of!(ucp_request_param_t, datatype), 24);
        assert_eq!(offset_of!(ucp_request_param_t, memory_type), 48);
        assert_eq!(offset_of!(ucp_request_param_t, memh), 64);
        assert!(size_of::<ucp_request_param_t>() >= 96);
        assert_eq!(offset_of!(ucp_am_handler_param_t, cb), 16);
        assert_eq!(size_of::<ucp_tag_recv_info_t>(), 16);
        assert_eq!(offset_of!(ucp_ep_attr_t, transports), 296);
        assert_eq!(offset_of!(ucp_transports_t, entry_size), 16);
    }
}
