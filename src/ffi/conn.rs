//! C ABI of the connection manager (TensorRT-LLM's `ConnectionManager` and
//! `Connection`): tag-matched two-sided messages between peers.

use super::status::{from_table, guard, guard_void, non_null};
use crate::core::buffer::kvx_bytes;
use crate::core::config::{self, kvx_cm_config};
use crate::core::error::{kvx_status, Error};
use crate::core::select::kvx_backend;
use crate::dispatch::kvx_backend_table;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};

/// A connection manager. Create with `kvx_cm_create`, free with `kvx_cm_destroy`.
#[allow(non_camel_case_types)]
pub struct kvx_cm {
    pub(super) table: &'static kvx_backend_table,
    pub(super) object: *mut c_void,
    /// One stable handle per backend connection, so the same peer always
    /// yields the same `kvx_conn` pointer.
    handles: Mutex<HashMap<usize, Box<kvx_conn>>>,
}

/// A connection to one peer, owned by its manager: valid until the manager
/// is destroyed, never freed by the caller.
#[allow(non_camel_case_types)]
pub struct kvx_conn {
    pub(super) table: &'static kvx_backend_table,
    object: *const c_void,
}

// SAFETY: backend objects are Send + Sync (required by the dispatch traits).
unsafe impl Send for kvx_cm {}
unsafe impl Sync for kvx_cm {}
unsafe impl Send for kvx_conn {}
unsafe impl Sync for kvx_conn {}

impl kvx_cm {
    fn handle_for(&self, object: *const c_void) -> *const kvx_conn {
        let mut handles = self.handles.lock();
        let entry = handles.entry(object as usize).or_insert_with(|| Box::new(kvx_conn { table: self.table, object }));
        &**entry as *const kvx_conn
    }
}

/// Fill `config` with defaults: backend AUTO, any IP and port, default timeout.
///
/// # Safety
/// `config` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_config_init(config: *mut kvx_cm_config) -> kvx_status {
    guard(|| {
        non_null(config, "config")?;
        config.write(config::cm_config_defaults());
        Ok(())
    })
}

/// Create a connection manager listening for peers. Free with `kvx_cm_destroy`.
///
/// # Safety
/// `config` is NULL (refused) or points to a `kvx_cm_config` set up by `kvx_cm_config_init` (its `struct_size` tells the version); its strings are NUL-terminated or NULL.
/// `out_cm` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_create(config: *const kvx_cm_config, out_cm: *mut *mut kvx_cm) -> kvx_status {
    guard(|| {
        non_null(config, "config")?;
        non_null(out_cm, "out_cm")?;
        let cfg = config::read_versioned(config, config::cm_config_defaults(), &[config::CM_CONFIG_V1_SIZE])?;
        let table = crate::backend::table_for(kvx_backend::from_raw(cfg.backend)?)?;
        let mut object = std::ptr::null_mut();
        from_table((table.cm_create)(&cfg, &mut object))?;
        *out_cm = Box::into_raw(Box::new(kvx_cm { table, object, handles: Mutex::new(HashMap::new()) }));
        Ok(())
    })
}

/// Destroy a manager and all its connections; blocked calls on them fail.
/// NULL is ignored.
///
/// # Safety
/// `cm` is NULL (ignored) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
///
/// Thread safety: no other call may use `cm` or its connections concurrently or afterwards.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_destroy(cm: *mut kvx_cm) {
    guard_void(|| {
        if !cm.is_null() {
            let cm = Box::from_raw(cm);
            (cm.table.cm_destroy)(cm.object);
        }
    })
}

unsafe fn cm_ref<'a>(cm: *const kvx_cm) -> Result<&'a kvx_cm, Error> {
    non_null(cm, "cm")?;
    Ok(&*cm)
}

/// The concrete backend (a `kvx_backend` value) this manager uses.
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
/// `out_backend` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_backend(cm: *const kvx_cm, out_backend: *mut u32) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        non_null(out_backend, "out_backend")?;
        *out_backend = m.table.backend as u32;
        Ok(())
    })
}

/// This manager's address ("ip:port"), the one peers pass to
/// `kvx_cm_get_connections`. Free with `kvx_bytes_free`.
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_get_local_address(cm: *const kvx_cm, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        non_null(out, "out")?;
        *out = kvx_bytes::EMPTY;
        from_table((m.table.cm_local_address)(m.object, out))
    })
}

/// One connection per address in `addresses` (same order) into
/// `out_conns[0..count]`, connecting where needed. The same peer always
/// gives the same pointer. Fails within `timeout_ms` (negative: default).
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
/// `addresses` points to `count` NUL-terminated strings (NULL allowed when `count` is 0).
/// `out_conns` is NULL (refused) or points to `count` writable elements.
///
/// Thread safety: any thread; concurrent calls for one peer share one connection.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_get_connections(
    cm: *mut kvx_cm,
    addresses: *const *const c_char,
    count: usize,
    timeout_ms: i64,
    out_conns: *mut *const kvx_conn,
) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        if count == 0 {
            return Ok(());
        }
        non_null(addresses, "addresses")?;
        non_null(out_conns, "out_conns")?;
        let mut objects = vec![std::ptr::null::<c_void>(); count];
        from_table((m.table.cm_get_connections)(m.object, addresses, count, timeout_ms, objects.as_mut_ptr()))?;
        for (i, object) in objects.into_iter().enumerate() {
            *out_conns.add(i) = m.handle_for(object);
        }
        Ok(())
    })
}

/// Wait for the first message with `tag` from any peer, copy its `size`
/// bytes into `data`, and return the connection it came on. The message
/// must be exactly `size` bytes (`KVX_ERR_SIZE_MISMATCH` otherwise).
/// `KVX_ERR_TIMEOUT` after `timeout_ms` (negative: default).
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
/// `data` points to `size` writable bytes (NULL allowed when `size` is 0).
/// `out_conn` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_recv_connect(
    cm: *mut kvx_cm,
    tag: u32,
    data: *mut c_void,
    size: usize,
    timeout_ms: i64,
    out_conn: *mut *const kvx_conn,
) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        non_null(out_conn, "out_conn")?;
        if size > 0 {
            non_null(data, "data")?;
        }
        let mut object = std::ptr::null();
        from_table((m.table.cm_recv_connect)(m.object, tag, data as *mut u8, size, timeout_ms, &mut object))?;
        *out_conn = m.handle_for(object);
        Ok(())
    })
}

/// `*out_running` = false once the manager was shut down.
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
/// `out_running` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_is_running(cm: *const kvx_cm, out_running: *mut bool) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        non_null(out_running, "out_running")?;
        *out_running = (m.table.cm_is_running)(m.object);
        Ok(())
    })
}

/// Stop accepting peers and fail blocked and later calls with
/// `KVX_ERR_CANCELED`; the handle stays valid until `kvx_cm_destroy`.
///
/// # Safety
/// `cm` is NULL (refused) or a connection manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_shutdown(cm: *mut kvx_cm) -> kvx_status {
    guard(|| {
        let m = cm_ref(cm)?;
        (m.table.cm_shutdown)(m.object);
        Ok(())
    })
}

impl kvx_conn {
    /// Sizes past the backend's message limit are refused the same way on
    /// every backend, before the caller's memory is looked at.
    fn check_size(&self, size: usize) -> Result<(), Error> {
        let limit = self.table.conn_max_message;
        if size > limit {
            let backend = self.table.backend.name();
            return Err(Error::invalid(format!(
                "message of {size} bytes exceeds the {backend} connection limit of {limit}"
            )));
        }
        Ok(())
    }
}

unsafe fn conn_ref<'a>(conn: *const kvx_conn) -> Result<&'a kvx_conn, Error> {
    non_null(conn, "conn")?;
    Ok(&*conn)
}

/// Send `size` bytes (host or device memory) with `tag` to the peer;
/// returns when the buffer may be reused. Fails within `timeout_ms`
/// (negative: default); a timed-out send closes the connection.
///
/// # Safety
/// `conn` is NULL (refused) or a connection from its manager, which is not destroyed yet.
/// `data` points to `size` readable bytes (NULL allowed when `size` is 0).
///
/// Thread safety: any thread; concurrent sends on one connection are allowed.
#[no_mangle]
pub unsafe extern "C" fn kvx_conn_send(
    conn: *const kvx_conn,
    tag: u32,
    data: *const c_void,
    size: usize,
    timeout_ms: i64,
) -> kvx_status {
    guard(|| {
        let c = conn_ref(conn)?;
        c.check_size(size)?;
        if size > 0 {
            non_null(data, "data")?;
            crate::core::memory::check_mapped(data as u64, size as u64)?;
        }
        from_table((c.table.conn_send)(c.object, tag, data as *const u8, size, timeout_ms))
    })
}

/// Receive exactly `size` bytes with `tag` from this connection's peer only
/// (the same tag from another peer never matches). Fails within
/// `timeout_ms` (negative: default) and when the peer fails.
///
/// # Safety
/// `conn` is NULL (refused) or a connection from its manager, which is not destroyed yet.
/// `data` points to `size` writable bytes (NULL allowed when `size` is 0).
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_conn_recv(
    conn: *const kvx_conn,
    tag: u32,
    data: *mut c_void,
    size: usize,
    timeout_ms: i64,
) -> kvx_status {
    guard(|| {
        let c = conn_ref(conn)?;
        c.check_size(size)?;
        if size > 0 {
            non_null(data, "data")?;
            crate::core::memory::check_mapped(data as u64, size as u64)?;
        }
        from_table((c.table.conn_recv)(c.object, tag, data as *mut u8, size, timeout_ms))
    })
}

/// The peer's manager address ("ip:port"). Free with `kvx_bytes_free`.
///
/// # Safety
/// `conn` is NULL (refused) or a connection from its manager, which is not destroyed yet.
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_conn_peer_address(conn: *const kvx_conn, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        let c = conn_ref(conn)?;
        non_null(out, "out")?;
        (c.table.conn_peer_address)(c.object, out);
        Ok(())
    })
}
