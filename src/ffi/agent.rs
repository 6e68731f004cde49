//! C ABI of the transfer agent (TensorRT-LLM's `BaseTransferAgent` and
//! `TransferStatus`). Every function checks its pointers, catches panics and
//! returns a status; details go to `kvx_last_error`.

use super::status::{from_table, guard, guard_void, non_null};
use crate::core::buffer::{kvx_bytes, kvx_notification_list};
use crate::core::config::{self, kvx_agent_config, kvx_transfer_request};
use crate::core::error::{kvx_status, Error};
use crate::core::memory::kvx_memory_desc;
use crate::core::select::kvx_backend;
use crate::dispatch::{kvx_backend_table, kvx_transfer_state};
use std::ffi::{c_char, c_void};

/// A transfer agent. Create with `kvx_agent_create`, free with `kvx_agent_destroy`.
#[allow(non_camel_case_types)]
pub struct kvx_agent {
    pub(super) table: &'static kvx_backend_table,
    pub(super) object: *mut c_void,
}

/// One submitted transfer (TensorRT-LLM's `TransferStatus`). Free with `kvx_xfer_destroy`.
#[allow(non_camel_case_types)]
pub struct kvx_xfer {
    pub(super) table: &'static kvx_backend_table,
    pub(super) object: *mut c_void,
}

// SAFETY: backend objects are Send + Sync (required by the dispatch traits).
unsafe impl Send for kvx_agent {}
unsafe impl Sync for kvx_agent {}
unsafe impl Send for kvx_xfer {}
unsafe impl Sync for kvx_xfer {}

/// Fill `config` with defaults: no name, backend AUTO, listener on, any
/// port, default timeout. Call before setting fields.
///
/// # Safety
/// `config` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_config_init(config: *mut kvx_agent_config) -> kvx_status {
    guard(|| {
        non_null(config, "config")?;
        config.write(config::agent_config_defaults());
        Ok(())
    })
}

/// Create an agent on the configured (or environment-chosen) backend; loads
/// that backend's library on first use. On success `*out_agent` owns the
/// agent: free it with `kvx_agent_destroy`.
///
/// # Safety
/// `config` is NULL (refused) or points to a `kvx_agent_config` set up by `kvx_agent_config_init` (its `struct_size` tells the version); its strings are NUL-terminated or NULL.
/// `out_agent` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_create(
    config: *const kvx_agent_config,
    out_agent: *mut *mut kvx_agent,
) -> kvx_status {
    guard(|| {
        non_null(config, "config")?;
        non_null(out_agent, "out_agent")?;
        let cfg = config::read_versioned(config, config::agent_config_defaults(), &[config::AGENT_CONFIG_V1_SIZE])?;
        let table = crate::backend::table_for(kvx_backend::from_raw(cfg.backend)?)?;
        let mut object = std::ptr::null_mut();
        from_table((table.agent_create)(&cfg, &mut object))?;
        *out_agent = Box::into_raw(Box::new(kvx_agent { table, object }));
        Ok(())
    })
}

/// Destroy an agent: closes its listener and connections and deregisters
/// its memory. Transfers still in flight fail. NULL is ignored.
///
/// # Safety
/// `agent` is NULL (ignored) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
///
/// Thread safety: no other call may use `agent` concurrently or afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_destroy(agent: *mut kvx_agent) {
    guard_void(|| {
        if !agent.is_null() {
            let agent = Box::from_raw(agent);
            (agent.table.agent_destroy)(agent.object);
        }
    })
}

unsafe fn agent_ref<'a>(agent: *const kvx_agent) -> Result<&'a kvx_agent, Error> {
    non_null(agent, "agent")?;
    Ok(&*agent)
}

/// The concrete backend (a `kvx_backend` value) this agent uses.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `out_backend` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_backend(agent: *const kvx_agent, out_backend: *mut u32) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(out_backend, "out_backend")?;
        *out_backend = a.table.backend as u32;
        Ok(())
    })
}

/// Register `count` regions of `mem_type` (a `kvx_memory_type`) for remote
/// access. Registering the same region again counts a reference.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `descs` points to `count` readable elements (NULL allowed when `count` is 0).
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_register_memory(
    agent: *mut kvx_agent,
    mem_type: u32,
    descs: *const kvx_memory_desc,
    count: usize,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        if count > 0 {
            non_null(descs, "descs")?;
        }
        from_table((a.table.agent_register_memory)(a.object, mem_type, descs, count))
    })
}

/// Deregister regions exactly as registered. Fails, changing nothing, if
/// any region is not registered.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `descs` points to `count` readable elements (NULL allowed when `count` is 0).
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_deregister_memory(
    agent: *mut kvx_agent,
    mem_type: u32,
    descs: *const kvx_memory_desc,
    count: usize,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        if count > 0 {
            non_null(descs, "descs")?;
        }
        from_table((a.table.agent_deregister_memory)(a.object, mem_type, descs, count))
    })
}

/// This agent's descriptor (opaque bytes a peer passes to
/// `kvx_agent_load_remote`), reflecting the current registrations.
/// Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_get_local_desc(agent: *mut kvx_agent, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(out, "out")?;
        *out = kvx_bytes::EMPTY;
        from_table((a.table.agent_local_descriptor)(a.object, out))
    })
}

/// This agent's listener address as "ip:port" (empty when created without a
/// listener). Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_get_connection_info(agent: *mut kvx_agent, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(out, "out")?;
        *out = kvx_bytes::EMPTY;
        from_table((a.table.agent_connection_info)(a.object, out))
    })
}

/// Load peer `name` from its descriptor bytes (untrusted: validated before
/// use). The name must match the descriptor's. Loading again replaces it.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `name` is NULL (refused) or a NUL-terminated string.
/// `desc` points to `desc_len` readable bytes (NULL is refused).
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_load_remote(
    agent: *mut kvx_agent,
    name: *const c_char,
    desc: *const u8,
    desc_len: usize,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(name, "name")?;
        non_null(desc, "desc")?;
        from_table((a.table.agent_load_remote)(a.object, name, desc, desc_len))
    })
}

/// Load peer `name` by contacting its listener at `connection_info`
/// ("ip:port"). Returns once the peer is usable, or fails within
/// `timeout_ms` (negative = the agent's default timeout).
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `name` is NULL (refused) or a NUL-terminated string.
/// `connection_info` is NULL (refused) or a NUL-terminated string.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_load_remote_by_connection_info(
    agent: *mut kvx_agent,
    name: *const c_char,
    connection_info: *const c_char,
    timeout_ms: i64,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(name, "name")?;
        non_null(connection_info, "connection_info")?;
        from_table((a.table.agent_load_remote_by_connection_info)(a.object, name, connection_info, timeout_ms))
    })
}

/// Forget peer `name`; its in-flight transfers fail. `KVX_ERR_NOT_FOUND` if
/// it was not loaded.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `name` is NULL (refused) or a NUL-terminated string.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_invalidate_remote(agent: *mut kvx_agent, name: *const c_char) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(name, "name")?;
        from_table((a.table.agent_invalidate_remote)(a.object, name))
    })
}

/// `*out_ok` = whether peer `name` is loaded and every descriptor lies
/// inside memory it registered with type `mem_type`.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `name` is NULL (refused) or a NUL-terminated string.
/// `descs` points to `count` readable elements (NULL allowed when `count` is 0).
/// `out_ok` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_check_remote_descs(
    agent: *mut kvx_agent,
    name: *const c_char,
    mem_type: u32,
    descs: *const kvx_memory_desc,
    count: usize,
    out_ok: *mut bool,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(name, "name")?;
        non_null(out_ok, "out_ok")?;
        if count > 0 {
            non_null(descs, "descs")?;
        }
        from_table((a.table.agent_check_remote_descs)(a.object, name, mem_type, descs, count, out_ok))
    })
}

/// Post a READ or WRITE. Everything is checked before anything is posted:
/// local ranges must be registered here, remote ranges registered by the
/// peer. On success `*out_xfer` tracks it; free with `kvx_xfer_destroy`.
/// The memory must stay valid until the transfer completes or fails.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `request` is NULL (refused) or points to a `kvx_transfer_request` whose descriptor arrays hold `count` elements, whose sync message holds `sync_message_len` bytes and whose `remote_name` is NUL-terminated.
/// `out_xfer` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_submit(
    agent: *mut kvx_agent,
    request: *const kvx_transfer_request,
    out_xfer: *mut *mut kvx_xfer,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(request, "request")?;
        non_null(out_xfer, "out_xfer")?;
        let mut object = std::ptr::null_mut();
        from_table((a.table.agent_submit)(a.object, request, &mut object))?;
        *out_xfer = Box::into_raw(Box::new(kvx_xfer { table: a.table, object }));
        Ok(())
    })
}

/// Send a binary message to agent `name` (this agent's own name included).
/// Returns once the message is handed to the transport.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `name` is NULL (refused) or a NUL-terminated string.
/// `message` points to `message_len` readable bytes (NULL allowed when `message_len` is 0).
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_notify(
    agent: *mut kvx_agent,
    name: *const c_char,
    message: *const u8,
    message_len: usize,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(name, "name")?;
        if message_len > 0 {
            non_null(message, "message")?;
        }
        from_table((a.table.agent_notify)(a.object, name, message, message_len))
    })
}

/// Take every notification received since the last call, oldest first, with
/// its sender. Free `*out_list` with `kvx_notification_list_free`.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`.
/// `out_list` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread; each notification goes to exactly one caller.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_get_notifications(
    agent: *mut kvx_agent,
    out_list: *mut *mut kvx_notification_list,
) -> kvx_status {
    guard(|| {
        let a = agent_ref(agent)?;
        non_null(out_list, "out_list")?;
        from_table((a.table.agent_take_notifications)(a.object, out_list))
    })
}

/// Number of notifications in a list (0 for NULL).
///
/// # Safety
/// `list` is NULL (refused) or a list from `kvx_agent_get_notifications` not yet freed.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_notification_list_len(list: *const kvx_notification_list) -> usize {
    if list.is_null() {
        0
    } else {
        (*list).items.len()
    }
}

/// Notification `index`: the sender's name (NUL-terminated) and the message
/// bytes (may contain NUL). Pointers stay valid until the list is freed.
///
/// # Safety
/// `list` is NULL (refused) or a list from `kvx_agent_get_notifications` not yet freed.
/// `out_sender` is NULL (refused) or valid for writing one value.
/// `out_message` is NULL (refused) or valid for writing one value.
/// `out_message_len` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_notification_list_get(
    list: *const kvx_notification_list,
    index: usize,
    out_sender: *mut *const c_char,
    out_message: *mut *const u8,
    out_message_len: *mut usize,
) -> kvx_status {
    guard(|| {
        non_null(list, "list")?;
        non_null(out_sender, "out_sender")?;
        non_null(out_message, "out_message")?;
        non_null(out_message_len, "out_message_len")?;
        let list = &*list;
        if index >= list.items.len() {
            return Err(Error::invalid(format!("index {index} out of range (list has {})", list.items.len())));
        }
        *out_sender = list.sender(index);
        *out_message = list.items[index].1.as_ptr();
        *out_message_len = list.items[index].1.len();
        Ok(())
    })
}

/// Free a notification list. NULL is ignored.
///
/// # Safety
/// `list` is NULL (ignored) or a list from `kvx_agent_get_notifications` not yet freed.
///
/// Thread safety: any thread, for a list no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kvx_notification_list_free(list: *mut kvx_notification_list) {
    guard_void(|| {
        if !list.is_null() {
            drop(Box::from_raw(list));
        }
    })
}

unsafe fn xfer_ref<'a>(xfer: *const kvx_xfer) -> Result<&'a kvx_xfer, Error> {
    non_null(xfer, "xfer")?;
    Ok(&*xfer)
}

/// `*out_done` = whether the transfer completed successfully.
///
/// # Safety
/// `xfer` is NULL (refused) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`.
/// `out_done` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_is_completed(xfer: *const kvx_xfer, out_done: *mut bool) -> kvx_status {
    guard(|| {
        let x = xfer_ref(xfer)?;
        non_null(out_done, "out_done")?;
        *out_done = (x.table.xfer_is_completed)(x.object);
        Ok(())
    })
}

/// Wait up to `timeout_ms` (negative: until the transfer's own deadline, the
/// agent's timeout after submission) and report its state in `*out_state`:
/// IN_PROGRESS on timeout, SUCCESS, or FAILURE (see `kvx_xfer_last_status`).
///
/// # Safety
/// `xfer` is NULL (refused) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`.
/// `out_state` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread; several threads may wait on one transfer.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_wait(
    xfer: *const kvx_xfer,
    timeout_ms: i64,
    out_state: *mut kvx_transfer_state,
) -> kvx_status {
    guard(|| {
        let x = xfer_ref(xfer)?;
        non_null(out_state, "out_state")?;
        *out_state = (x.table.xfer_wait)(x.object, timeout_ms);
        Ok(())
    })
}

/// Release the transport resources of a finished transfer early;
/// `*out_released` is false (and nothing changes) while it is in flight.
///
/// # Safety
/// `xfer` is NULL (refused) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`.
/// `out_released` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_release(xfer: *mut kvx_xfer, out_released: *mut bool) -> kvx_status {
    guard(|| {
        let x = xfer_ref(xfer)?;
        non_null(out_released, "out_released")?;
        *out_released = (x.table.xfer_release)(x.object);
        Ok(())
    })
}

/// Release a transfer even while it is in flight (TensorRT-LLM's cancel
/// path: `wait(short)` then `release()`). A finished transfer is released as
/// by `kvx_xfer_release`. One still running is cancelled: it ends as FAILURE
/// with `KVX_ERR_CANCELED` in `kvx_xfer_last_status` (never as SUCCESS), its
/// sync message is not sent where the backend still holds it, and
/// `*out_released` is true only once the backend no longer reads or writes
/// the local memory. What was posted may still have reached the peer's
/// memory. Operations that cannot be stopped are given up to 2 s to drain;
/// past that the peer is marked failed (load it again to reconnect). False
/// means the memory could not be freed from the transport in time; the
/// status text says why. Blocks for at most about 4 s.
///
/// Thread safety: any thread; the transfer may be waited on concurrently.
///
/// # Safety
/// `xfer` must be NULL or a live handle from `kvx_agent_submit`; `out_released` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_cancel(xfer: *mut kvx_xfer, out_released: *mut bool) -> kvx_status {
    guard(|| {
        let x = xfer_ref(xfer)?;
        non_null(out_released, "out_released")?;
        // Tables only grow: an older one has no cancel entry.
        if !x.table.has(std::mem::offset_of!(kvx_backend_table, xfer_cancel)) {
            return Err(Error::new(kvx_status::KVX_ERR_UNSUPPORTED, "this backend's table predates cancel"));
        }
        *out_released = (x.table.xfer_cancel)(x.object);
        Ok(())
    })
}

/// Text describing the transfer's state or failure. Free with `kvx_bytes_free`.
///
/// # Safety
/// `xfer` is NULL (refused) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`.
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_last_status(xfer: *const kvx_xfer, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        let x = xfer_ref(xfer)?;
        non_null(out, "out")?;
        (x.table.xfer_last_status)(x.object, out);
        Ok(())
    })
}

/// Free a transfer handle. A transfer still in flight keeps running to its
/// end; its memory must stay valid until then. NULL is ignored.
///
/// # Safety
/// `xfer` is NULL (ignored) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`.
///
/// Thread safety: no other call may use `xfer` concurrently or afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_destroy(xfer: *mut kvx_xfer) {
    guard_void(|| {
        if !xfer.is_null() {
            let x = Box::from_raw(xfer);
            (x.table.xfer_destroy)(x.object);
        }
    })
}
