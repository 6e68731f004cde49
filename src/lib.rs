//! kvxfer: KV-cache transfer between LLM prefill and decode workers, with a
//! C ABI (`kvx_*`, header `include/kvxfer.h`) that mirrors TensorRT-LLM's
//! transfer-agent and connection-manager contracts, over UCX or NIXL chosen
//! at run time.
//!
//! Layers, each importing only the ones below it (`tests/layers.rs` checks):
//! `ffi` (C ABI: checks, panic boundary, handles) → `backend` (the choice of
//! a backend's table) → `backend::{ucx, nixl}` → `backend::locate` (finding
//! and loading native libraries) → `dispatch` (the `#[repr(C)]` table and the
//! traits a backend implements) → `cuda` → `core` (what every layer shares:
//! errors, the memory model, validated requests, wire formats, control channel).

pub mod backend;
pub mod core;
pub mod cuda;
pub mod dispatch;
pub mod ffi;

#[doc(hidden)]
pub mod harness;

pub use crate::core::error::{kvx_status, Error, Result};
