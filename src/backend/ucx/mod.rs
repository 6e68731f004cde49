//! The UCX backend: `libucp` bound at run time, one worker per agent or
//! connection manager, and the whole dispatch table.

pub mod agent;
pub mod conn;
pub mod loader;
pub mod ops;
pub mod sys;
pub mod worker;

use crate::core::error::Result;
use crate::core::select::kvx_backend;
use crate::dispatch::kvx_backend_table;

static TABLE: kvx_backend_table =
    crate::backend_table!(kvx_backend::KVX_BACKEND_UCX, agent::UcxAgent, conn::UcxConnectionManager);

/// The UCX table, once `libucp` is loaded.
pub fn table() -> Result<&'static kvx_backend_table> {
    loader::load()?;
    Ok(&TABLE)
}

/// Path and version of the loaded `libucp`.
pub fn library() -> Result<(String, String)> {
    let ucx = loader::load()?;
    Ok((ucx.path.clone(), ucx.version.clone()))
}
