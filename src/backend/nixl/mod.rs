//! NIXL backend placeholder: selecting NIXL is a clear error until the NIXL
//! backend lands. Nothing is loaded and nothing pretends to work.

use crate::core::error::{kvx_status, Error, Result};
use crate::dispatch::kvx_backend_table;

fn unavailable() -> Error {
    Error::new(
        kvx_status::KVX_ERR_BACKEND_UNAVAILABLE,
        "the NIXL backend is not available in this build of kvxfer; use UCX \
         (unset TRTLLM_USE_NIXL_KVCACHE or set TRTLLM_USE_UCX_KVCACHE=1)",
    )
}

pub fn table() -> Result<&'static kvx_backend_table> {
    Err(unavailable())
}

pub fn library() -> Result<(String, String)> {
    Err(unavailable())
}
