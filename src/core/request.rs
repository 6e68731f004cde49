//! The validated forms of what a caller asks for: transfer direction and
//! state, agent and manager settings, transfer requests. Core validates C
//! arguments into these (`config`); the dispatch contract and the backends
//! take them as they are.

use super::auth::PeerAuth;
use super::error::{Error, Result};
use super::memory::{kvx_file_desc, kvx_memory_desc, kvx_memory_type};

/// Transfer direction, as TensorRT-LLM's `TransferOp`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kvx_transfer_op {
    /// Pull remote memory (`dst_descs`) into local memory (`src_descs`).
    KVX_OP_READ = 0,
    /// Push local memory (`src_descs`) into remote memory (`dst_descs`).
    KVX_OP_WRITE = 1,
}

impl kvx_transfer_op {
    pub fn from_raw(raw: u32) -> Result<Self> {
        match raw {
            0 => Ok(Self::KVX_OP_READ),
            1 => Ok(Self::KVX_OP_WRITE),
            other => Err(Error::invalid(format!("transfer op {other} is unknown (0 = READ, 1 = WRITE)"))),
        }
    }
}

/// State of a transfer, as TensorRT-LLM's `TransferState`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kvx_transfer_state {
    KVX_TRANSFER_IN_PROGRESS = 0,
    KVX_TRANSFER_SUCCESS = 1,
    KVX_TRANSFER_FAILURE = 2,
}

/// A validated memory-to-file copy (TensorRT-LLM's loopback request): entry
/// `i` of `memory` and of `files` have the same length, every range is
/// representable, every descriptor is open.
#[derive(Debug, Clone)]
pub struct FileCopy<'a> {
    pub mem_type: kvx_memory_type,
    pub memory: &'a [kvx_memory_desc],
    pub files: &'a [kvx_file_desc],
    /// True: memory to files (offload); false: files to memory.
    pub to_file: bool,
    /// TensorRT-LLM's `multiThread`: the storage path may use several threads.
    pub multi_thread: bool,
    pub deadline: Option<std::time::Instant>,
}

/// Settings of a transfer agent after validation.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub name: String,
    pub use_listener: bool,
    pub listen_ip: Option<String>,
    pub listen_port: u16,
    /// Default bound for blocking calls and for transfers waited on without a timeout.
    pub timeout_ms: u64,
    /// NIXL only: None = automatic.
    pub progress_thread: Option<bool>,
    /// NIXL only: 0 = default.
    pub num_workers: u32,
    /// NIXL only: plugin parameter overrides.
    pub backend_params: Vec<(String, String)>,
    /// How peers' descriptors and control messages are authenticated.
    pub auth: PeerAuth,
}

/// Settings of a connection manager after validation.
#[derive(Debug, Clone)]
pub struct ConnectionManagerSettings {
    pub listen_ip: Option<String>,
    pub listen_port: u16,
    pub timeout_ms: u64,
    pub auth: PeerAuth,
}

/// A validated transfer request: equal counts, pairwise equal lengths, no overflow.
pub struct TransferRequest<'a> {
    pub op: kvx_transfer_op,
    pub local_type: kvx_memory_type,
    pub local: &'a [kvx_memory_desc],
    pub remote_type: kvx_memory_type,
    pub remote: &'a [kvx_memory_desc],
    pub remote_name: &'a str,
    pub sync_message: Option<&'a [u8]>,
    /// Where the descriptors lie, found while checking them, so a backend
    /// can place a whole request in its registrations without another pass.
    pub bounds: Bounds,
}

/// The lowest address and highest end the descriptors touch on each side
/// (`(u64::MAX, 0)` for an empty request), the longest descriptor and the
/// bytes of all of them (saturating), which the transfer's record counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub local: (u64, u64),
    pub remote: (u64, u64),
    pub max_len: u64,
    pub bytes: u64,
}

impl Bounds {
    pub const EMPTY: Bounds = Bounds { local: (u64::MAX, 0), remote: (u64::MAX, 0), max_len: 0, bytes: 0 };

    /// Both bounds together.
    pub fn union(self, other: Bounds) -> Bounds {
        Bounds {
            local: (self.local.0.min(other.local.0), self.local.1.max(other.local.1)),
            remote: (self.remote.0.min(other.remote.0), self.remote.1.max(other.remote.1)),
            max_len: self.max_len.max(other.max_len),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Empty slice for a NULL pointer with zero length (the C ABI allows both).
///
/// # Safety
/// `ptr` must point to `len` valid elements when `len > 0`.
pub unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// Mutable counterpart of `slice`.
///
/// # Safety
/// `ptr` must point to `len` valid, writable elements when `len > 0`.
pub unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if len == 0 || ptr.is_null() {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(ptr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_union_saturates_the_byte_count() {
        let half = Bounds { local: (0, 1 << 63), remote: (0, 1 << 63), max_len: 1 << 63, bytes: 1 << 63 };
        let both = half.union(half);
        assert_eq!(both.bytes, u64::MAX, "a request's bytes never wrap to a small number");
        assert_eq!(Bounds::EMPTY.union(half), half);
    }
}
