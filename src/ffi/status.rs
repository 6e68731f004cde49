//! The panic boundary, status names and the thread-local last error.

use crate::core::error::{kvx_status, last_error_message, set_last_error, Error, Result};
use std::ffi::{c_char, CString};
use std::panic::AssertUnwindSafe;

/// Run an entry point's body: panics become `KVX_ERR_PANIC`, errors are
/// recorded for `kvx_last_error`. No unwinding ever crosses the C boundary.
pub fn guard(body: impl FnOnce() -> Result<()>) -> kvx_status {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => kvx_status::KVX_OK,
        Ok(Err(e)) => set_last_error(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(Error::new(kvx_status::KVX_ERR_PANIC, format!("internal panic: {what}")))
        }
    }
}

/// Like `guard` for calls that return no status (destructors, getters).
pub fn guard_void(body: impl FnOnce()) {
    let _ = guard(|| {
        body();
        Ok(())
    });
}

/// A status returned through the dispatch table, as a `Result` (the table
/// entry has already recorded the message).
pub fn from_table(status: kvx_status) -> Result<()> {
    if status == kvx_status::KVX_OK {
        Ok(())
    } else {
        Err(Error::new(status, strip_status_prefix(&last_error_message(), status)))
    }
}

fn strip_status_prefix(message: &str, status: kvx_status) -> String {
    message.strip_prefix(&format!("{}: ", status.name())).unwrap_or(message).to_string()
}

/// Fail with a clear message when a required pointer is NULL.
pub fn non_null<T>(ptr: *const T, what: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    Ok(())
}

/// Name of a status code, e.g. `"KVX_ERR_TIMEOUT"`; `"KVX_UNKNOWN_STATUS"`
/// for values this version does not know. The string is static.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn kvx_status_str(status: i32) -> *const c_char {
    static NAMES: once_cell::sync::Lazy<Vec<(i32, CString)>> = once_cell::sync::Lazy::new(|| {
        kvx_status::ALL.iter().map(|s| (*s as i32, CString::new(s.name()).unwrap())).collect()
    });
    NAMES
        .iter()
        .find(|(code, _)| *code == status)
        .map(|(_, name)| name.as_ptr())
        .unwrap_or(c"KVX_UNKNOWN_STATUS".as_ptr())
}

/// Detail of the last failed `kvx_*` call on the calling thread ("" if none).
/// The pointer stays valid until the next failing `kvx_*` call on this thread.
///
/// Thread safety: per thread; each thread has its own last error.
#[no_mangle]
pub extern "C" fn kvx_last_error() -> *const c_char {
    crate::core::error::last_error_ptr()
}
