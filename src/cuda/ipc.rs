//! CUDA IPC for registered regions: the owner exports a handle of the
//! allocation holding a region; a process on the same host opens it once and
//! reaches the peer's memory with plain loads, stores and copies.
//! Only `cuMemAlloc` memory has legacy IPC handles; VMM memory does not.

use super::{check, ContextScope};
use crate::core::error::Result;
use cudarc::driver::sys;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

pub const HANDLE_LEN: usize = 64;

/// What a peer needs to map a region: the allocation's IPC handle and where
/// the region starts inside that allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub handle: [u8; HANDLE_LEN],
    /// Region address minus the allocation's base address.
    pub offset: u64,
}

/// The IPC export of the device region `addr..addr+len` on `device`, or None
/// when it has none (VMM memory, or not one allocation).
pub fn export(addr: u64, len: u64, device: u32) -> Option<Export> {
    let _scope = ContextScope::enter(device).ok()?;
    let (mut base, mut size) = (0u64, 0usize);
    // SAFETY: out-parameters; the driver validates the pointer.
    unsafe {
        if sys::cuMemGetAddressRange_v2(&mut base, &mut size, addr) != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        if addr.checked_add(len)? > base + size as u64 {
            return None;
        }
        let mut handle: sys::CUipcMemHandle = std::mem::zeroed();
        if sys::cuIpcGetMemHandle(&mut handle, base) != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        let bytes: [u8; HANDLE_LEN] = std::mem::transmute(handle.reserved);
        Some(Export { handle: bytes, offset: addr - base })
    }
}

/// Identity of this host's running kernel: IPC handles only work between
/// processes that share it.
pub fn host_identity() -> Vec<u8> {
    static ID: Lazy<Vec<u8>> = Lazy::new(|| {
        std::fs::read("/proc/sys/kernel/random/boot_id").map(|b| b.trim_ascii().to_vec()).unwrap_or_default()
    });
    ID.clone()
}

/// A peer allocation mapped into this process (in the primary context of
/// `device`), closed when the last user drops it.
pub struct Mapping {
    pub base: u64,
    /// Size of the mapped allocation, as the driver reports it (not as the peer claims).
    pub size: u64,
    device: u32,
    key: MappingKey,
}

unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

/// A handle and the device whose context maps it.
type MappingKey = ([u8; HANDLE_LEN], u32);

/// Mappings are shared per process: the driver maps one handle once per context.
static OPEN: Lazy<Mutex<HashMap<MappingKey, Weak<Mapping>>>> = Lazy::new(Default::default);

/// Map a peer's allocation for use by kernels and copies on `device`.
pub fn open(handle: &[u8; HANDLE_LEN], device: u32) -> Result<Arc<Mapping>> {
    let key = (*handle, device);
    let mut open = OPEN.lock();
    if let Some(m) = open.get(&key).and_then(Weak::upgrade) {
        return Ok(m);
    }
    let _scope = ContextScope::enter(device)?;
    // SAFETY: the handle bytes are opaque to us and validated by the driver.
    let raw: sys::CUipcMemHandle = unsafe { std::mem::transmute(*handle) };
    let mut base = 0u64;
    check(
        unsafe {
            sys::cuIpcOpenMemHandle_v2(&mut base, raw, sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32)
        },
        "opening a peer's CUDA IPC handle",
    )?;
    let mut size = 0usize;
    // SAFETY: out-parameters for a pointer just mapped.
    let sized = check(
        unsafe { sys::cuMemGetAddressRange_v2(std::ptr::null_mut(), &mut size, base) },
        "sizing a peer's mapped allocation",
    );
    let mapping = Arc::new(Mapping { base, size: size as u64, device, key });
    sized?;
    open.insert(key, Arc::downgrade(&mapping));
    Ok(mapping)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let mut open = OPEN.lock();
        if open.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            open.remove(&self.key);
        }
        if let Ok(_scope) = ContextScope::enter(self.device) {
            // SAFETY: opened in this context; no copy uses it any more (users hold the Arc).
            unsafe { sys::cuIpcCloseMemHandle(self.base) };
        }
    }
}
