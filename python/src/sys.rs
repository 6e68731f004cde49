//! The part of kvxfer's C ABI (include/kvxfer.h) these modules call, linked
//! dynamically against `libkvxfer.so.0` so Python, the TensorRT-LLM wrappers
//! and C callers in one process share one kvxfer. build.rs checks that every
//! function named here is declared in the header and that every struct has
//! the header's size, alignment and field offsets.

#![allow(non_camel_case_types)]

use std::ffi::c_char;

pub type kvx_status = i32;
pub const KVX_OK: kvx_status = 0;
pub const KVX_ERR_INVALID_ARGUMENT: kvx_status = -1;
pub const KVX_ERR_NOT_FOUND: kvx_status = -3;

pub const KVX_BACKEND_AUTO: u32 = 0;
pub const KVX_BACKEND_UCX: u32 = 1;
pub const KVX_BACKEND_NIXL: u32 = 2;

pub const KVX_MEMORY_DRAM: u32 = 0;
pub const KVX_MEMORY_VRAM: u32 = 1;

pub const KVX_OP_READ: u32 = 0;
pub const KVX_OP_WRITE: u32 = 1;

pub type kvx_transfer_state = u32;

#[repr(C)]
pub struct kvx_agent {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvx_cm {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvx_conn {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvx_xfer {
    _private: [u8; 0],
}
#[repr(C)]
pub struct kvx_notification_list {
    _private: [u8; 0],
}

#[repr(C)]
pub struct kvx_agent_config {
    pub struct_size: usize,
    pub name: *const c_char,
    pub backend: u32,
    pub use_listen_thread: bool,
    pub listen_ip: *const c_char,
    pub listen_port: u16,
    pub timeout_ms: u64,
    pub progress_thread: u32,
    pub num_workers: u32,
    pub backend_params: *const c_char,
    pub auth_key: *const u8,
    pub auth_key_len: usize,
    pub auth_key_file: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct kvx_memory_desc {
    pub addr: u64,
    pub len: u64,
    pub device_id: u32,
}

#[repr(C)]
pub struct kvx_bytes {
    pub data: *mut u8,
    pub len: usize,
}

#[repr(C)]
pub struct kvx_transfer_request {
    pub op: u32,
    pub src_type: u32,
    pub src_descs: *const kvx_memory_desc,
    pub dst_type: u32,
    pub dst_descs: *const kvx_memory_desc,
    pub count: usize,
    pub remote_name: *const c_char,
    pub sync_message: *const u8,
    pub sync_message_len: usize,
    pub has_sync_message: bool,
}

#[repr(C)]
pub struct kvx_cm_config {
    pub struct_size: usize,
    pub backend: u32,
    pub listen_ip: *const c_char,
    pub listen_port: u16,
    pub timeout_ms: u64,
    pub auth_key: *const u8,
    pub auth_key_len: usize,
    pub auth_key_file: *const c_char,
}

#[repr(C)]
pub struct kvx_backend_info {
    pub struct_size: usize,
    pub backend: u32,
    pub name: *const c_char,
    pub library_path: *const c_char,
    pub library_version: *const c_char,
}

// Linked as `-lkvxfer` by build.rs (which also compiles this file to check the struct layouts).
extern "C" {
    pub fn kvx_agent_config_init(config: *mut kvx_agent_config) -> kvx_status;
    pub fn kvx_agent_create(config: *const kvx_agent_config, out_agent: *mut *mut kvx_agent) -> kvx_status;
    pub fn kvx_agent_destroy(agent: *mut kvx_agent);
    pub fn kvx_agent_backend(agent: *const kvx_agent, out_backend: *mut u32) -> kvx_status;
    pub fn kvx_agent_register_memory(
        agent: *mut kvx_agent,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
    ) -> kvx_status;
    pub fn kvx_agent_deregister_memory(
        agent: *mut kvx_agent,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
    ) -> kvx_status;
    pub fn kvx_agent_get_local_desc(agent: *mut kvx_agent, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_agent_get_connection_info(agent: *mut kvx_agent, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_agent_load_remote(
        agent: *mut kvx_agent,
        name: *const c_char,
        desc: *const u8,
        desc_len: usize,
    ) -> kvx_status;
    pub fn kvx_agent_load_remote_by_connection_info(
        agent: *mut kvx_agent,
        name: *const c_char,
        connection_info: *const c_char,
        timeout_ms: i64,
    ) -> kvx_status;
    pub fn kvx_agent_invalidate_remote(agent: *mut kvx_agent, name: *const c_char) -> kvx_status;
    pub fn kvx_agent_check_remote_descs(
        agent: *mut kvx_agent,
        name: *const c_char,
        mem_type: u32,
        descs: *const kvx_memory_desc,
        count: usize,
        out_ok: *mut bool,
    ) -> kvx_status;
    pub fn kvx_agent_submit(
        agent: *mut kvx_agent,
        request: *const kvx_transfer_request,
        out_xfer: *mut *mut kvx_xfer,
    ) -> kvx_status;
    pub fn kvx_agent_notify(
        agent: *mut kvx_agent,
        name: *const c_char,
        message: *const u8,
        message_len: usize,
    ) -> kvx_status;
    pub fn kvx_agent_get_notifications(agent: *mut kvx_agent, out_list: *mut *mut kvx_notification_list) -> kvx_status;
    pub fn kvx_notification_list_len(list: *const kvx_notification_list) -> usize;
    pub fn kvx_notification_list_get(
        list: *const kvx_notification_list,
        index: usize,
        out_sender: *mut *const c_char,
        out_message: *mut *const u8,
        out_message_len: *mut usize,
    ) -> kvx_status;
    pub fn kvx_notification_list_free(list: *mut kvx_notification_list);
    pub fn kvx_xfer_is_completed(xfer: *const kvx_xfer, out_done: *mut bool) -> kvx_status;
    pub fn kvx_xfer_wait(xfer: *const kvx_xfer, timeout_ms: i64, out_state: *mut kvx_transfer_state) -> kvx_status;
    pub fn kvx_xfer_release(xfer: *mut kvx_xfer, out_released: *mut bool) -> kvx_status;
    pub fn kvx_xfer_last_status(xfer: *const kvx_xfer, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_xfer_destroy(xfer: *mut kvx_xfer);
    pub fn kvx_cm_config_init(config: *mut kvx_cm_config) -> kvx_status;
    pub fn kvx_cm_create(config: *const kvx_cm_config, out_cm: *mut *mut kvx_cm) -> kvx_status;
    pub fn kvx_cm_destroy(cm: *mut kvx_cm);
    pub fn kvx_cm_backend(cm: *const kvx_cm, out_backend: *mut u32) -> kvx_status;
    pub fn kvx_cm_get_local_address(cm: *const kvx_cm, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_cm_stats(cm: *const kvx_cm, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_agent_stats(agent: *const kvx_agent, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_stats_snapshot(out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_metrics_address(out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_cm_get_connections(
        cm: *mut kvx_cm,
        addresses: *const *const c_char,
        count: usize,
        timeout_ms: i64,
        out_conns: *mut *const kvx_conn,
    ) -> kvx_status;
    pub fn kvx_cm_recv_connect(
        cm: *mut kvx_cm,
        tag: u32,
        data: *mut std::ffi::c_void,
        size: usize,
        timeout_ms: i64,
        out_conn: *mut *const kvx_conn,
    ) -> kvx_status;
    pub fn kvx_cm_is_running(cm: *const kvx_cm, out_running: *mut bool) -> kvx_status;
    pub fn kvx_cm_shutdown(cm: *mut kvx_cm) -> kvx_status;
    pub fn kvx_conn_send(
        conn: *const kvx_conn,
        tag: u32,
        data: *const std::ffi::c_void,
        size: usize,
        timeout_ms: i64,
    ) -> kvx_status;
    pub fn kvx_conn_recv(
        conn: *const kvx_conn,
        tag: u32,
        data: *mut std::ffi::c_void,
        size: usize,
        timeout_ms: i64,
    ) -> kvx_status;
    pub fn kvx_conn_peer_address(conn: *const kvx_conn, out: *mut kvx_bytes) -> kvx_status;
    pub fn kvx_version() -> *const c_char;
    pub fn kvx_backend_resolve(requested: u32, out_backend: *mut u32) -> kvx_status;
    pub fn kvx_backend_info_get(requested: u32, out: *mut kvx_backend_info) -> kvx_status;
    pub fn kvx_bytes_free(bytes: *mut kvx_bytes);
    pub fn kvx_status_str(status: i32) -> *const c_char;
    pub fn kvx_last_error() -> *const c_char;
}
