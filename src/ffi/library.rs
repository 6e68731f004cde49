//! Library-wide entry points: version, backend choice and backend details.

use super::status::{guard, non_null};
use crate::core::buffer::kvx_bytes;
use crate::core::error::kvx_status;
use crate::core::select::{self, kvx_backend};
use std::ffi::{c_char, CString};

/// kvxfer's version as "MAJOR.MINOR.PATCH" (static string).
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn kvx_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Details of a backend after loading its native library.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct kvx_backend_info {
    /// Set by the caller to `sizeof(kvx_backend_info)`.
    pub struct_size: usize,
    /// The concrete backend (a `kvx_backend` value, never AUTO).
    pub backend: u32,
    /// "UCX" or "NIXL" (static string).
    pub name: *const c_char,
    /// Absolute path of the native library that was loaded (static string).
    pub library_path: *const c_char,
    /// Version of that library (static string).
    pub library_version: *const c_char,
}

/// Resolve `requested` (a `kvx_backend` value) to the backend kvxfer will
/// use: an explicit choice wins; AUTO follows `TRTLLM_USE_UCX_KVCACHE` /
/// `TRTLLM_USE_NIXL_KVCACHE` (exactly "1"; UCX first; neither = UCX).
/// `KVX_ERR_UNSUPPORTED` when `TRTLLM_USE_MOONCAKE_KVCACHE=1` is what selects:
/// kvxfer does not serve Mooncake. Loads nothing.
///
/// # Safety
/// `out_backend` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_backend_resolve(requested: u32, out_backend: *mut u32) -> kvx_status {
    guard(|| {
        non_null(out_backend, "out_backend")?;
        let chosen = select::resolve(kvx_backend::from_raw(requested)?)?;
        *out_backend = chosen as u32;
        Ok(())
    })
}

/// Load the backend `requested` resolves to and describe it. Fails with
/// `KVX_ERR_BACKEND_UNAVAILABLE` (and an install hint in `kvx_last_error`)
/// when its library cannot be found. `out->struct_size` must be set.
///
/// # Safety
/// `out` is NULL (refused) or points to a `kvx_backend_info` whose `struct_size` is set.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_backend_info_get(requested: u32, out: *mut kvx_backend_info) -> kvx_status {
    guard(|| {
        non_null(out, "out")?;
        if (*out).struct_size < std::mem::size_of::<kvx_backend_info>() {
            return Err(crate::core::error::Error::invalid("out->struct_size is smaller than kvx_backend_info"));
        }
        let chosen = select::resolve(kvx_backend::from_raw(requested)?)?;
        let (path, version) = crate::backend::library(chosen)?;
        (*out).backend = chosen as u32;
        (*out).name = static_str(chosen.name());
        (*out).library_path = static_str(&path);
        (*out).library_version = static_str(&version);
        Ok(())
    })
}

/// Intern a string for the life of the process (a handful of backend names and paths).
fn static_str(s: &str) -> *const c_char {
    static INTERNED: parking_lot::Mutex<Vec<CString>> = parking_lot::Mutex::new(Vec::new());
    let mut all = INTERNED.lock();
    if let Some(found) = all.iter().find(|c| c.to_bytes() == s.as_bytes()) {
        return found.as_ptr();
    }
    all.push(CString::new(s.replace('\0', "")).unwrap_or_default());
    all.last().unwrap().as_ptr()
}

/// Free bytes kvxfer handed out, and zero the struct. NULL and zeroed
/// structs are ignored; never free the same bytes twice.
///
/// # Safety
/// `bytes` is NULL (ignored) or points to `kvx_bytes` that kvxfer filled (or zeroed ones).
///
/// Thread safety: any thread, for bytes no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kvx_bytes_free(bytes: *mut kvx_bytes) {
    super::status::guard_void(|| {
        if !bytes.is_null() {
            (*bytes).free();
        }
    })
}
