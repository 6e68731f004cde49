//! Transport backends, each filling one `dispatch::kvx_backend_table`, and
//! the choice between them. The choice sits above the backends (only the C
//! ABI calls it); the backends themselves know nothing of each other.

pub mod locate;
pub mod nixl;
pub mod ucx;

use crate::core::error::{kvx_status, Error, Result};
use crate::core::select::{self, kvx_backend};
use crate::dispatch::kvx_backend_table;

/// The table for `backend` (resolved from the environment when AUTO), loading
/// that backend's native library first; no other backend's library is loaded.
pub fn table_for(backend: kvx_backend) -> Result<&'static kvx_backend_table> {
    match select::resolve(backend)? {
        kvx_backend::KVX_BACKEND_UCX => ucx::table(),
        kvx_backend::KVX_BACKEND_NIXL => nixl::table(),
        kvx_backend::KVX_BACKEND_AUTO => Err(Error::new(kvx_status::KVX_ERR_INTERNAL, "backend left unresolved")),
    }
}

/// Path and version of a resolved backend's native library, loading it.
pub fn library(backend: kvx_backend) -> Result<(String, String)> {
    match backend {
        kvx_backend::KVX_BACKEND_UCX => ucx::library(),
        _ => nixl::library(),
    }
}
