//! kvxfer: KV-cache transfer between LLM prefill and decode workers, with a
//! C ABI (`kvx_*`, header `include/kvxfer.h`) that mirrors TensorRT-LLM's
//! transfer-agent and connection-manager contracts, over UCX or NIXL chosen
//! at run time.
//!
//! Layers: `ffi` (C ABI: checks, panic boundary, handles) → `dispatch` (one
//! `#[repr(C)]` table per backend) → `backend::{ucx, nixl}`; `core` holds
//! what every backend shares (memory model, wire formats, control channel).

pub mod backend;
pub mod core;
pub mod cuda;
pub mod dispatch;
pub mod ffi;

#[doc(hidden)]
pub mod harness;

pub use crate::core::error::{kvx_status, Error, Result};
