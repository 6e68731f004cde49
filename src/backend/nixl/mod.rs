//! The NIXL backend: NIXL's C API bound at run time (only when NIXL is
//! selected), one NIXL agent per kvxfer agent or connection manager, and
//! the whole dispatch table.

pub mod agent;
pub mod conn;
pub mod files;
pub mod handle;
pub mod loader;
pub mod poller;
pub mod sys;

use crate::core::error::Result;
use crate::core::select::kvx_backend;
use crate::dispatch::kvx_backend_table;

static TABLE: kvx_backend_table =
    crate::backend_table!(kvx_backend::KVX_BACKEND_NIXL, agent::NixlAgent, conn::NixlConnectionManager);

/// The NIXL table, once `libnixl_capi.so` is loaded.
pub fn table() -> Result<&'static kvx_backend_table> {
    loader::load()?;
    Ok(&TABLE)
}

/// Path and version of the loaded NIXL C API.
pub fn library() -> Result<(String, String)> {
    let nixl = loader::load()?;
    Ok((nixl.path.clone(), nixl.version.clone()))
}
