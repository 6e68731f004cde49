//! C ABI of memory-to-file copies (TensorRT-LLM's `BaseLoopbackAgent`).

use super::status::{from_table, guard, non_null};
use crate::core::config::kvx_file_copy_request;
use crate::core::error::{kvx_status, Error};
use crate::core::select::kvx_backend;
use std::ffi::c_char;

/// Copy `request->count` pairs between memory of `request->mem_type` and
/// files, blocking: `to_file` true writes `memory[i]` to `files[i]`, false
/// reads `files[i]` into `memory[i]`. The copy goes through `backend`'s
/// storage path (a `kvx_backend`; AUTO chooses from the environment as
/// `kvx_agent_create` does): on NIXL, its POSIX plugin for host memory and
/// GDS (GDS_MT first when `multi_thread`) for device memory. `*out_path` then
/// names the path ("POSIX", "GDS", "GDS_MT"; static).
/// `KVX_ERR_UNSUPPORTED` when the backend has no storage path or none of its
/// plugins loads (`kvx_last_error` says why): nothing was copied and the
/// caller may copy by other means. Bad pairs are refused on every backend
/// first (`KVX_ERR_INVALID_ARGUMENT`, `KVX_ERR_SIZE_MISMATCH`): a descriptor
/// that is not open, unequal lengths, an empty or wrapping range, a read past
/// the end of its file. `KVX_ERR_TIMEOUT` after `timeout_ms`; the copy is
/// aborted first. No agent is needed: a backend keeps one per plugin for the
/// process.
///
/// # Safety
/// `request` is NULL (refused) or valid; its `memory` and `files` point to
/// `count` readable elements (NULL allowed when `count` is 0), the memory is
/// valid for the copy's direction and the descriptors stay open until the
/// call returns. `out_path` is NULL (refused) or valid for writing one pointer.
///
/// Thread safety: any thread; copies through one plugin run one at a time.
#[no_mangle]
pub unsafe extern "C" fn kvx_file_copy(
    backend: u32,
    request: *const kvx_file_copy_request,
    out_path: *mut *const c_char,
) -> kvx_status {
    guard(|| {
        non_null(request, "request")?;
        non_null(out_path, "out_path")?;
        let table = crate::backend::table_for(kvx_backend::from_raw(backend)?)?;
        from_table((table.file_copy)(request, out_path))
            .map_err(|e| Error::new(e.status, format!("{} backend: {}", table.backend.name(), e.message)))
    })
}
